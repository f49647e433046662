//! `S3KeyStore`: API key records at `auth/keys/{sha256 of the key}.json`.

use async_trait::async_trait;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::Client;
use lmaas_core::auth::{KeyRecord, KeyStore};
use lmaas_core::StoreError;

use crate::object::{get_json, put_json, Write};

const PREFIX: &str = "auth/keys/";

#[derive(Clone)]
pub struct S3KeyStore {
    client: Client,
    bucket: String,
}

impl S3KeyStore {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        S3KeyStore { client, bucket: bucket.into() }
    }
}

fn is_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

#[async_trait]
impl KeyStore for S3KeyStore {
    async fn key(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        if !is_hash(hash) {
            return Ok(None);
        }
        Ok(get_json(&self.client, &self.bucket, &format!("{PREFIX}{hash}.json")).await?.map(|(record, _)| record))
    }

    async fn put_key(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError> {
        if !is_hash(hash) {
            return Err(StoreError(format!("'{hash}' is not a sha256")));
        }
        put_json(&self.client, &self.bucket, &format!("{PREFIX}{hash}.json"), record, Write::Always).await.map(|_| ())
    }

    async fn list_keys(&self) -> Result<Vec<(String, KeyRecord)>, StoreError> {
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(PREFIX).into_paginator().send();
        let mut hashes = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StoreError(format!("listing key records: {}", DisplayErrorContext(&e))))?;
            for object in page.contents() {
                if let Some(hash) =
                    object.key().and_then(|k| k.strip_prefix(PREFIX)).and_then(|k| k.strip_suffix(".json"))
                {
                    hashes.push(hash.to_string());
                }
            }
        }
        let mut records = Vec::with_capacity(hashes.len());
        for hash in hashes {
            if let Some(record) = self.key(&hash).await? {
                records.push((hash, record));
            }
        }
        Ok(records)
    }
}
