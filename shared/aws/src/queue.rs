//! `SqsJobQueue`: the jobs queue as the API and ingest see it (send only; workers receive through
//! their own adapters).

use async_trait::async_trait;
use lmaas_core::jobs::{JobId, JobQueue};
use lmaas_core::StoreError;

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
