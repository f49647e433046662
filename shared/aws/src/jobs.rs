//! `S3JobStore` (`jobs/{id}.json`, compare-and-swap on the ETag) and `SqsJobQueue`.

use async_trait::async_trait;
use aws_sdk_s3::error::DisplayErrorContext;
use lmaas_core::jobs::{IdempotencyRecord, Job, JobId, JobQueue, JobStore, Revision};
use lmaas_core::StoreError;

use crate::object::{get_json, put_json, Write};

const PREFIX: &str = "jobs/";
const IDEMPOTENCY_PREFIX: &str = "jobs/idempotency/";

#[derive(Clone)]
pub struct S3JobStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3JobStore {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        S3JobStore { client, bucket: bucket.into() }
    }

    fn key(id: &JobId) -> String {
        format!("{PREFIX}{id}.json")
    }
}

#[async_trait]
impl JobStore for S3JobStore {
    async fn create(&self, job: &Job) -> Result<bool, StoreError> {
        put_json(&self.client, &self.bucket, &Self::key(&job.id), job, Write::IfAbsent).await
    }

    async fn get(&self, id: &JobId) -> Result<Option<(Job, Revision)>, StoreError> {
        get_json(&self.client, &self.bucket, &Self::key(id)).await
    }

    async fn update(&self, job: &Job, revision: &Revision) -> Result<bool, StoreError> {
        put_json(&self.client, &self.bucket, &Self::key(&job.id), job, Write::IfUnchanged(revision)).await
    }

    async fn list(&self) -> Result<Vec<Job>, StoreError> {
        let mut pages =
            self.client.list_objects_v2().bucket(&self.bucket).prefix(PREFIX).delimiter("/").into_paginator().send();
        let mut jobs = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StoreError(format!("listing jobs: {}", DisplayErrorContext(&e))))?;
            for key in page.contents().iter().filter_map(|o| o.key()) {
                if let Some((job, _)) = get_json::<Job>(&self.client, &self.bucket, key).await? {
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
        if put_json(&self.client, &self.bucket, &key, record, Write::IfAbsent).await? {
            return Ok(None);
        }
        Ok(get_json(&self.client, &self.bucket, &key).await?.map(|(existing, _)| existing))
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
