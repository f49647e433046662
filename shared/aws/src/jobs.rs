//! `S3JobStore`: job records at `jobs/{id}.json`, compare-and-swap on the ETag.

use async_trait::async_trait;
use aws_sdk_s3::error::DisplayErrorContext;
use lmaas_core::jobs::{IdempotencyRecord, Job, JobId, JobStore, Revision};
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
