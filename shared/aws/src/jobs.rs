//! `S3JobStore` (`jobs/{id}.json`, compare-and-swap on the ETag) and `SqsJobQueue`.

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;
use lmaas_core::jobs::{IdempotencyRecord, Job, JobId, JobQueue, JobStore, Revision};
use lmaas_core::StoreError;
use serde::de::DeserializeOwned;
use serde::Serialize;

const PREFIX: &str = "jobs/";
const IDEMPOTENCY_PREFIX: &str = "jobs/idempotency/";

#[derive(Clone)]
pub struct S3JobStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

/// How a conditional write ended.
enum Written {
    Yes,
    PreconditionFailed,
}

impl S3JobStore {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        S3JobStore { client, bucket: bucket.into() }
    }

    fn key(id: &JobId) -> String {
        format!("{PREFIX}{id}.json")
    }

    async fn put<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        if_none_match: bool,
        if_match: Option<&str>,
    ) -> Result<Written, StoreError> {
        let body = serde_json::to_vec_pretty(value).map_err(|e| StoreError(e.to_string()))?;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        if if_none_match {
            request = request.if_none_match("*");
        }
        if let Some(etag) = if_match {
            request = request.if_match(etag);
        }
        match request.send().await {
            Ok(_) => Ok(Written::Yes),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 412 => Ok(Written::PreconditionFailed),
            Err(e) => Err(StoreError(format!("writing s3://{}/{key}: {}", self.bucket, DisplayErrorContext(&e)))),
        }
    }

    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, Revision)>, StoreError> {
        match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(object) => {
                let etag = object.e_tag().unwrap_or_default().to_string();
                let body = object
                    .body
                    .collect()
                    .await
                    .map_err(|e| StoreError(format!("reading s3://{}/{key}: {e}", self.bucket)))?;
                let value = serde_json::from_slice(&body.into_bytes())
                    .map_err(|e| StoreError(format!("s3://{}/{key} is not a valid record: {e}", self.bucket)))?;
                Ok(Some((value, etag)))
            }
            Err(SdkError::ServiceError(e)) if matches!(e.err(), GetObjectError::NoSuchKey(_)) => Ok(None),
            Err(e) => Err(StoreError(format!("getting s3://{}/{key}: {}", self.bucket, DisplayErrorContext(&e)))),
        }
    }
}

#[async_trait]
impl JobStore for S3JobStore {
    async fn create(&self, job: &Job) -> Result<bool, StoreError> {
        Ok(matches!(self.put(&Self::key(&job.id), job, true, None).await?, Written::Yes))
    }

    async fn get(&self, id: &JobId) -> Result<Option<(Job, Revision)>, StoreError> {
        self.get_json(&Self::key(id)).await
    }

    async fn update(&self, job: &Job, revision: &Revision) -> Result<bool, StoreError> {
        Ok(matches!(self.put(&Self::key(&job.id), job, false, Some(revision)).await?, Written::Yes))
    }

    async fn list(&self) -> Result<Vec<Job>, StoreError> {
        let mut pages =
            self.client.list_objects_v2().bucket(&self.bucket).prefix(PREFIX).delimiter("/").into_paginator().send();
        let mut jobs = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StoreError(format!("listing jobs: {}", DisplayErrorContext(&e))))?;
            for key in page.contents().iter().filter_map(|o| o.key()) {
                if let Some((job, _)) = self.get_json::<Job>(key).await? {
                    jobs.push(job);
                }
            }
        }
        Ok(jobs)
    }

    async fn claim_idempotency_key(
        &self,
        key_hash: &str,
        record: &IdempotencyRecord,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let key = format!("{IDEMPOTENCY_PREFIX}{key_hash}.json");
        match self.put(&key, record, true, None).await? {
            Written::Yes => Ok(None),
            Written::PreconditionFailed => Ok(self.get_json(&key).await?.map(|(existing, _)| existing)),
        }
    }
}

/// The SQS jobs queue (`LMAAS_JOBS_QUEUE_URL`); a message is `{"job_id"}` and nothing else.
#[derive(Clone)]
pub struct SqsJobQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsJobQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        SqsJobQueue { client, queue_url: queue_url.into() }
    }
}

#[async_trait]
impl JobQueue for SqsJobQueue {
    async fn enqueue(&self, id: &JobId) -> Result<(), StoreError> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(serde_json::json!({ "job_id": id }).to_string())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StoreError(format!("enqueueing {id}: {}", aws_sdk_sqs::error::DisplayErrorContext(&e))))
    }
}
