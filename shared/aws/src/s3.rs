//! `S3ModelStore`: the model store port over one bucket, in the layout of DESIGN.md §4:
//! `models/{model}/versions/{version}/manifest.json`, `…/files/{file}`, `models/{model}/aliases/{alias}.json`.

use std::path::Path;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::Client;
use lmaas_core::{AliasName, Manifest, ModelName, ModelStore, StoreError, Version};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// Model versions stored in S3.
#[derive(Clone)]
pub struct S3ModelStore {
    client: Client,
    bucket: String,
}

#[derive(Deserialize)]
struct AliasRecord {
    version: Version,
}

/// The object's bytes, or `None` if there is no such key.
pub(crate) async fn get_bytes(client: &Client, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    match client.get_object().bucket(bucket).key(key).send().await {
        Ok(object) => {
            let body =
                object.body.collect().await.map_err(|e| StoreError(format!("reading s3://{bucket}/{key}: {e}")))?;
            Ok(Some(body.into_bytes().to_vec()))
        }
        Err(SdkError::ServiceError(e)) if matches!(e.err(), GetObjectError::NoSuchKey(_)) => Ok(None),
        Err(e) => Err(StoreError(format!("getting s3://{bucket}/{key}: {}", DisplayErrorContext(&e)))),
    }
}

impl S3ModelStore {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        S3ModelStore { client, bucket: bucket.into() }
    }

    pub fn manifest_key(name: &ModelName, version: Version) -> String {
        format!("models/{name}/versions/{version}/manifest.json")
    }

    pub fn file_key(name: &ModelName, version: Version, file: &str) -> String {
        format!("models/{name}/versions/{version}/files/{file}")
    }

    pub fn alias_key(name: &ModelName, alias: &AliasName) -> String {
        format!("models/{name}/aliases/{}.json", alias.as_str())
    }
}

#[async_trait]
impl ModelStore for S3ModelStore {
    async fn manifest(&self, name: &ModelName, version: Version) -> Result<Option<Manifest>, StoreError> {
        let key = Self::manifest_key(name, version);
        let Some(bytes) = get_bytes(&self.client, &self.bucket, &key).await? else { return Ok(None) };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError(format!("s3://{}/{key} is not a valid manifest: {e}", self.bucket)))
    }

    async fn alias(&self, name: &ModelName, alias: &AliasName) -> Result<Option<Version>, StoreError> {
        let key = Self::alias_key(name, alias);
        let Some(bytes) = get_bytes(&self.client, &self.bucket, &key).await? else { return Ok(None) };
        let record: AliasRecord = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError(format!("s3://{}/{key} is not a valid alias record: {e}", self.bucket)))?;
        Ok(Some(record.version))
    }

    async fn download(&self, name: &ModelName, version: Version, file: &str, dest: &Path) -> Result<(), StoreError> {
        let key = Self::file_key(name, version, file);
        let failed = |what: String| StoreError(format!("downloading s3://{}/{key}: {what}", self.bucket));
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| failed(DisplayErrorContext(&e).to_string()))?;
        // Streamed chunk by chunk: models can be larger than the function's memory.
        let mut body = object.body;
        let mut out = tokio::fs::File::create(dest).await.map_err(|e| failed(e.to_string()))?;
        while let Some(chunk) = body.try_next().await.map_err(|e| failed(e.to_string()))? {
            out.write_all(&chunk).await.map_err(|e| failed(e.to_string()))?;
        }
        out.flush().await.map_err(|e| failed(e.to_string()))?;
        out.sync_all().await.map_err(|e| failed(e.to_string()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StoreError(format!("bucket {} is not reachable: {}", self.bucket, DisplayErrorContext(&e))))
    }
}
