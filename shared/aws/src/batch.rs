//! Batch job files in S3: the JSONL input streamed line by line (never whole in memory), output
//! chunks written once each (If-None-Match), and the chunks assembled into one output object.

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use lmaas_core::StoreError;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Lines};

use crate::object::{put_json, Write};

/// S3 allows at most 10,000 parts of at least 5 MiB each; 16 MiB parts cover 160 GB of output.
const PART_BYTES: usize = 16 << 20;

/// Counts carried as object metadata on every chunk, so assembling never parses output lines.
const ITEMS: &str = "lmaas-items";
const ERRORS: &str = "lmaas-errors";

/// Why reading an input failed: it is not there (the job is wrong) or S3 failed (try again).
#[derive(Debug)]
pub enum InputError {
    Missing(String),
    Store(StoreError),
}

/// A finished chunk of a job's output: its key and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkCounts {
    pub items: u64,
    pub errors: u64,
}

/// Batch files in one bucket.
#[derive(Clone)]
pub struct BatchObjects {
    client: Client,
    bucket: String,
}

pub type InputLines = Lines<BufReader<Box<dyn AsyncRead + Send + Unpin>>>;

impl BatchObjects {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        BatchObjects { client, bucket: bucket.into() }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object's lines, streamed from S3.
    pub async fn lines(&self, key: &str) -> Result<InputLines, InputError> {
        match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(object) => {
                let reader: Box<dyn AsyncRead + Send + Unpin> = Box::new(object.body.into_async_read());
                Ok(BufReader::with_capacity(1 << 16, reader).lines())
            }
            Err(SdkError::ServiceError(e)) if matches!(e.err(), GetObjectError::NoSuchKey(_)) => {
                Err(InputError::Missing(format!("s3://{}/{key} does not exist", self.bucket)))
            }
            Err(e) => Err(InputError::Store(StoreError(format!(
                "getting s3://{}/{key}: {}",
                self.bucket,
                DisplayErrorContext(&e)
            )))),
        }
    }

    /// Keys under `prefix`, sorted.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StoreError(format!("listing {prefix}: {}", DisplayErrorContext(&e))))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        }
        keys.sort();
        Ok(keys)
    }

    /// Writes a chunk unless one is already there; `false` when another attempt wrote it first
    /// (its content is the same: chunks are a pure function of the input lines they cover).
    pub async fn put_chunk(&self, key: &str, body: Vec<u8>, counts: &ChunkCounts) -> Result<bool, StoreError> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/x-ndjson")
            .metadata(ITEMS, counts.items.to_string())
            .metadata(ERRORS, counts.errors.to_string())
            .if_none_match("*")
            .body(ByteStream::from(body));
        match request.send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 412 => Ok(false),
            Err(e) => Err(StoreError(format!("writing s3://{}/{key}: {}", self.bucket, DisplayErrorContext(&e)))),
        }
    }

    /// Concatenates `chunks` (in order) into `destination` and adds up their counts. Memory stays
    /// at one part: small outputs are one PUT, large ones a multipart upload of 16 MiB parts.
    /// Writing it again gives the same object, so a redelivered job can repeat this step.
    pub async fn assemble(&self, chunks: &[String], destination: &str) -> Result<ChunkCounts, StoreError> {
        let mut totals = ChunkCounts { items: 0, errors: 0 };
        let mut buffer: Vec<u8> = Vec::new();
        let mut upload: Option<(String, Vec<CompletedPart>)> = None;
        for key in chunks {
            let object = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| StoreError(format!("getting {key}: {}", DisplayErrorContext(&e))))?;
            let count = |name: &str| object.metadata().and_then(|m| m.get(name)).and_then(|v| v.parse::<u64>().ok());
            match (count(ITEMS), count(ERRORS)) {
                (Some(items), Some(errors)) => {
                    totals.items += items;
                    totals.errors += errors;
                }
                _ => return Err(StoreError(format!("chunk {key} has no lmaas counts"))),
            }
            let mut body = object.body;
            while let Some(bytes) = body.try_next().await.map_err(|e| StoreError(format!("reading {key}: {e}")))? {
                buffer.extend_from_slice(&bytes);
                if buffer.len() >= PART_BYTES {
                    let part = buffer.split_off(PART_BYTES);
                    let full = std::mem::replace(&mut buffer, part);
                    self.upload_part(destination, &mut upload, full).await?;
                }
            }
        }
        match upload {
            None => {
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(destination)
                    .content_type("application/x-ndjson")
                    .body(ByteStream::from(buffer))
                    .send()
                    .await
                    .map_err(|e| StoreError(format!("writing {destination}: {}", DisplayErrorContext(&e))))?;
            }
            Some(_) => {
                if !buffer.is_empty() {
                    self.upload_part(destination, &mut upload, buffer).await?;
                }
                let (upload_id, parts) = upload.expect("started above");
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(destination)
                    .upload_id(upload_id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                    .send()
                    .await
                    .map_err(|e| StoreError(format!("completing {destination}: {}", DisplayErrorContext(&e))))?;
            }
        }
        Ok(totals)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload: &mut Option<(String, Vec<CompletedPart>)>,
        body: Vec<u8>,
    ) -> Result<(), StoreError> {
        if upload.is_none() {
            let created = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .content_type("application/x-ndjson")
                .send()
                .await
                .map_err(|e| StoreError(format!("starting an upload to {key}: {}", DisplayErrorContext(&e))))?;
            let id = created.upload_id().ok_or_else(|| StoreError(format!("no upload id for {key}")))?;
            *upload = Some((id.to_string(), Vec::new()));
        }
        let (upload_id, parts) = upload.as_mut().expect("set above");
        let number = i32::try_from(parts.len() + 1).map_err(|_| StoreError("too many parts".into()))?;
        let uploaded = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id.as_str())
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| StoreError(format!("uploading part {number} of {key}: {}", DisplayErrorContext(&e))))?;
        parts
            .push(CompletedPart::builder().part_number(number).set_e_tag(uploaded.e_tag().map(str::to_string)).build());
        Ok(())
    }

    /// Writes a small JSON document (a job's result manifest).
    pub async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        put_json(&self.client, &self.bucket, key, value, Write::Always).await.map(|_| ())
    }

    /// Deletes keys, best effort: what is left costs storage, not correctness.
    pub async fn delete(&self, keys: &[String]) {
        for key in keys {
            if let Err(e) = self.client.delete_object().bucket(&self.bucket).key(key).send().await {
                tracing::warn!(key, error = %DisplayErrorContext(&e), "deleting a finished chunk failed");
            }
        }
    }
}
