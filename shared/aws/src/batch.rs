//! Batch job files in S3: the JSONL input streamed line by line (never whole in memory), output
//! chunks written once each (If-None-Match), and the chunks assembled into one output object.

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use lmaas_core::StoreError;
use serde::Serialize;
use std::collections::VecDeque;
use std::future::Future;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Lines};
use tokio::task::JoinHandle;

use crate::object::{put_json, Write};

/// S3 allows at most 10,000 parts of at least 5 MiB each; 16 MiB parts cover 160 GB of output.
const PART_BYTES: usize = 16 << 20;

/// Chunk GETs sent ahead of the chunk being read (their bodies wait in their connections).
const CHUNKS_AHEAD: usize = 4;

/// Parts uploading while the next one fills: memory up to this many parts, plus the one filling.
const PARTS_IN_FLIGHT: usize = 2;

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

    /// Concatenates `chunks` (in order) into `destination` and adds up their counts. Small
    /// outputs are one PUT, large ones a multipart upload of 16 MiB parts. The next chunks' GETs
    /// are sent while one is read, and parts upload while the next are read: one request at a
    /// time waited a round trip per chunk and stopped reading for every part. Memory stays at a
    /// few parts (the chunks ahead wait in their connections). Writing it again gives the same
    /// object, so a redelivered job can repeat this step.
    pub async fn assemble(&self, chunks: &[String], destination: &str) -> Result<ChunkCounts, StoreError> {
        let mut totals = ChunkCounts { items: 0, errors: 0 };
        let mut buffer: Vec<u8> = Vec::new();
        let mut parts = PartUploads { upload_id: None, uploading: InOrder::default(), done: Vec::new() };
        let mut ahead = InOrder::default();
        let mut to_get = chunks.iter();
        for key in chunks {
            while ahead.len() < CHUNKS_AHEAD {
                let Some(next) = to_get.next() else { break };
                let (client, bucket, next) = (self.client.clone(), self.bucket.clone(), next.clone());
                ahead.push(async move {
                    client
                        .get_object()
                        .bucket(bucket)
                        .key(&next)
                        .send()
                        .await
                        .map_err(|e| StoreError(format!("getting {next}: {}", DisplayErrorContext(&e))))
                });
            }
            let object = ahead.next().await.expect("a GET was sent for every chunk")?;
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
                    parts.upload(self, destination, full).await?;
                }
            }
        }
        if parts.upload_id.is_none() {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(destination)
                .content_type("application/x-ndjson")
                .body(ByteStream::from(buffer))
                .send()
                .await
                .map_err(|e| StoreError(format!("writing {destination}: {}", DisplayErrorContext(&e))))?;
            return Ok(totals);
        }
        if !buffer.is_empty() {
            parts.upload(self, destination, buffer).await?;
        }
        while let Some(part) = parts.uploading.next().await {
            parts.done.push(part?);
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(destination)
            .upload_id(parts.upload_id.expect("started above"))
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts.done)).build())
            .send()
            .await
            .map_err(|e| StoreError(format!("completing {destination}: {}", DisplayErrorContext(&e))))?;
        Ok(totals)
    }

    /// Writes a small JSON document (a job's result manifest).
    pub async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        put_json(&self.client, &self.bucket, key, value, Write::Always).await.map(|_| ())
    }

    /// Deletes keys, best effort: what is left costs storage, not correctness. One request per
    /// 1,000 keys (S3's limit), not one per key: a large job has hundreds of chunks.
    pub async fn delete(&self, keys: &[String]) {
        for batch in keys.chunks(1000) {
            let objects: Result<Vec<_>, _> =
                batch.iter().map(|key| ObjectIdentifier::builder().key(key).build()).collect();
            let request =
                match objects.and_then(|objects| Delete::builder().set_objects(Some(objects)).quiet(true).build()) {
                    Ok(delete) => self.client.delete_objects().bucket(&self.bucket).delete(delete),
                    Err(e) => {
                        tracing::warn!(error = %e, first = batch[0], "deleting finished chunks failed");
                        continue;
                    }
                };
            match request.send().await {
                Ok(output) => {
                    for failed in output.errors() {
                        tracing::warn!(
                            key = failed.key(),
                            code = failed.code(),
                            message = failed.message(),
                            "deleting a finished chunk failed"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %DisplayErrorContext(&e), first = batch[0], count = batch.len(), "deleting finished chunks failed")
                }
            }
        }
    }
}

/// A multipart upload being written: started at its first part, parts uploading in order.
struct PartUploads {
    upload_id: Option<String>,
    uploading: InOrder<CompletedPart>,
    done: Vec<CompletedPart>,
}

impl PartUploads {
    /// Sends the next part, after waiting for the oldest one if `PARTS_IN_FLIGHT` are uploading.
    async fn upload(&mut self, objects: &BatchObjects, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let created = objects
                    .client
                    .create_multipart_upload()
                    .bucket(&objects.bucket)
                    .key(key)
                    .content_type("application/x-ndjson")
                    .send()
                    .await
                    .map_err(|e| StoreError(format!("starting an upload to {key}: {}", DisplayErrorContext(&e))))?;
                let id = created.upload_id().ok_or_else(|| StoreError(format!("no upload id for {key}")))?;
                self.upload_id.insert(id.to_string()).clone()
            }
        };
        if self.uploading.len() >= PARTS_IN_FLIGHT {
            let oldest = self.uploading.next().await.expect("parts are uploading");
            self.done.push(oldest?);
        }
        let number = i32::try_from(self.done.len() + self.uploading.len() + 1)
            .map_err(|_| StoreError("too many parts".into()))?;
        let (client, bucket, key) = (objects.client.clone(), objects.bucket.clone(), key.to_string());
        self.uploading.push(async move {
            let uploaded = client
                .upload_part()
                .bucket(bucket)
                .key(&key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| StoreError(format!("uploading part {number} of {key}: {}", DisplayErrorContext(&e))))?;
            Ok(CompletedPart::builder().part_number(number).set_e_tag(uploaded.e_tag().map(str::to_string)).build())
        });
        Ok(())
    }
}

/// S3 requests running as their own tasks, taken oldest first. Dropping it (an assembly that
/// failed part way) aborts those still running.
struct InOrder<T>(VecDeque<JoinHandle<Result<T, StoreError>>>);

impl<T> Default for InOrder<T> {
    fn default() -> Self {
        InOrder(VecDeque::new())
    }
}

impl<T: Send + 'static> InOrder<T> {
    fn push(&mut self, request: impl Future<Output = Result<T, StoreError>> + Send + 'static) {
        self.0.push_back(tokio::spawn(request));
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    async fn next(&mut self) -> Option<Result<T, StoreError>> {
        let oldest = self.0.pop_front()?;
        Some(oldest.await.unwrap_or_else(|e| Err(StoreError(format!("an S3 request's task failed: {e}")))))
    }
}

impl<T> Drop for InOrder<T> {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Sets its flag when dropped: the request it stands for was cancelled or finished.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn requests_come_back_in_the_order_sent_and_the_rest_stop_when_dropped() {
        let mut requests = InOrder::default();
        for (i, delay) in [30u64, 1, 10].into_iter().enumerate() {
            requests.push(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                Ok(i)
            });
        }
        let mut order = Vec::new();
        while let Some(done) = requests.next().await {
            order.push(done.unwrap());
        }
        assert_eq!(order, [0, 1, 2]);

        let stopped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(stopped.clone());
        requests.push(async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(99)
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!stopped.load(Ordering::SeqCst), "still running");
        drop(requests);
        for _ in 0..100 {
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("a request left running when its assembly was dropped");
    }
}
