//! `S3ModelStore`: the model store port over one bucket, in the layout of DESIGN.md §4:
//! `models/{model}/versions/{version}/manifest.json`, `…/files/{file}`, `models/{model}/aliases/{alias}.json`.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::Client;
use lmaas_core::store::FileDigest;
use lmaas_core::{AliasName, Manifest, ModelName, ModelStore, RegistryStore, StoreError, Version};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::object::{get_json, put_json, Write};
use tokio::io::AsyncWriteExt;

/// Model versions stored in S3.
#[derive(Clone)]
pub struct S3ModelStore {
    client: Client,
    bucket: String,
}

#[derive(Serialize, Deserialize)]
struct AliasRecord {
    version: Version,
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
        Ok(get_json(&self.client, &self.bucket, &Self::manifest_key(name, version)).await?.map(|(m, _)| m))
    }

    async fn alias(&self, name: &ModelName, alias: &AliasName) -> Result<Option<Version>, StoreError> {
        let record = get_json::<AliasRecord>(&self.client, &self.bucket, &Self::alias_key(name, alias)).await?;
        Ok(record.map(|(r, _)| r.version))
    }

    async fn download(
        &self,
        name: &ModelName,
        version: Version,
        file: &str,
        dest: &Path,
    ) -> Result<FileDigest, StoreError> {
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
        // Streamed chunk by chunk (models can be larger than the function's memory) and hashed on
        // the way, so verifying costs no second read of the file. Not synced to disk: the model
        // cache needs no durability (it hashes a file it finds on disk again before trusting it),
        // and syncing MiniLM's 90 MB took 50-100 ms of every cold start.
        let mut body = object.body;
        let mut out = tokio::fs::File::create(dest).await.map_err(|e| failed(e.to_string()))?;
        let (mut hasher, mut size) = (Sha256::new(), 0u64);
        while let Some(chunk) = body.try_next().await.map_err(|e| failed(e.to_string()))? {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(|e| failed(e.to_string()))?;
        }
        out.flush().await.map_err(|e| failed(e.to_string()))?;
        Ok(FileDigest { size, sha256: hex::encode(hasher.finalize()) })
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

#[async_trait]
impl RegistryStore for S3ModelStore {
    async fn put_manifest(&self, manifest: &Manifest, create_only: bool) -> Result<bool, StoreError> {
        let key = Self::manifest_key(&manifest.name, manifest.version);
        let write = if create_only { Write::IfAbsent } else { Write::Always };
        put_json(&self.client, &self.bucket, &key, manifest, write).await
    }

    async fn models(&self) -> Result<Vec<ModelName>, StoreError> {
        Ok(self
            .list("models/", Some("/"))
            .await?
            .iter()
            .filter_map(|p| ModelName::parse(p.strip_prefix("models/")?.strip_suffix('/')?).ok())
            .collect())
    }

    async fn versions(&self, name: &ModelName) -> Result<Vec<Version>, StoreError> {
        let prefix = format!("models/{name}/versions/");
        let mut versions: Vec<Version> = self
            .list(&prefix, Some("/"))
            .await?
            .iter()
            .filter_map(|p| p.strip_prefix(&prefix)?.strip_suffix('/')?.parse::<u32>().ok())
            .filter_map(|n| Version::new(n).ok())
            .collect();
        versions.sort();
        Ok(versions)
    }

    async fn aliases(&self, name: &ModelName) -> Result<Vec<(AliasName, Version)>, StoreError> {
        let prefix = format!("models/{name}/aliases/");
        let mut aliases = Vec::new();
        for key in self.list(&prefix, None).await? {
            let Some(alias) = key.strip_prefix(&prefix).and_then(|k| k.strip_suffix(".json")) else { continue };
            let Ok(alias) = AliasName::parse(alias) else { continue };
            if let Some(version) = self.alias(name, &alias).await? {
                aliases.push((alias, version));
            }
        }
        Ok(aliases)
    }

    async fn put_alias(&self, name: &ModelName, alias: &AliasName, version: Version) -> Result<(), StoreError> {
        let record = AliasRecord { version };
        put_json(&self.client, &self.bucket, &Self::alias_key(name, alias), &record, Write::Always).await.map(|_| ())
    }

    async fn delete_alias(&self, name: &ModelName, alias: &AliasName) -> Result<(), StoreError> {
        self.delete(&Self::alias_key(name, alias)).await
    }

    async fn delete_version(&self, name: &ModelName, version: Version) -> Result<(), StoreError> {
        self.delete(&Self::manifest_key(name, version)).await?;
        for key in self.list(&format!("models/{name}/versions/{version}/"), None).await? {
            self.delete(&key).await?;
        }
        Ok(())
    }

    async fn file_size(&self, name: &ModelName, version: Version, file: &str) -> Result<Option<u64>, StoreError> {
        let key = Self::file_key(name, version, file);
        match self.client.head_object().bucket(&self.bucket).key(&key).send().await {
            Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(StoreError(format!("head s3://{}/{key}: {}", self.bucket, DisplayErrorContext(&e)))),
        }
    }

    async fn put_file(&self, name: &ModelName, version: Version, file: &str, source: &Path) -> Result<(), StoreError> {
        let key = Self::file_key(name, version, file);
        let failed = |what: String| StoreError(format!("uploading s3://{}/{key}: {what}", self.bucket));
        let body = aws_sdk_s3::primitives::ByteStream::from_path(source).await.map_err(|e| failed(e.to_string()))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| failed(DisplayErrorContext(&e).to_string()))
    }

    async fn presign_upload(
        &self,
        name: &ModelName,
        version: Version,
        file: &str,
        size: u64,
        expires_in: Duration,
    ) -> Result<String, StoreError> {
        let key = Self::file_key(name, version, file);
        let config = PresigningConfig::expires_in(expires_in).map_err(|e| StoreError(e.to_string()))?;
        let presigned = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_length(size as i64)
            .presigned(config)
            .await
            .map_err(|e| StoreError(format!("presigning s3://{}/{key}: {}", self.bucket, DisplayErrorContext(&e))))?;
        Ok(presigned.uri().to_string())
    }
}

impl S3ModelStore {
    /// Keys under `prefix`; with a delimiter, the common prefixes one level down instead.
    async fn list(&self, prefix: &str, delimiter: Option<&str>) -> Result<Vec<String>, StoreError> {
        let mut request = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix);
        if let Some(delimiter) = delimiter {
            request = request.delimiter(delimiter);
        }
        let mut pages = request.into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                StoreError(format!("listing s3://{}/{prefix}: {}", self.bucket, DisplayErrorContext(&e)))
            })?;
            if delimiter.is_some() {
                out.extend(page.common_prefixes().iter().filter_map(|p| p.prefix().map(str::to_string)));
            } else {
                out.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StoreError(format!("deleting s3://{}/{key}: {}", self.bucket, DisplayErrorContext(&e))))
    }
}
