//! Jobs: long work that goes through SQS to workers. The record in S3 (`jobs/{id}.json`) is the
//! truth; it changes only by conditional writes, so two writers can never both win.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::printable;
use crate::{Error, StoreError};

/// A job id: `job_` + 24 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// A new id from 12 random bytes.
    pub fn from_random(bytes: [u8; 12]) -> Self {
        JobId(format!("job_{}", hex::encode(bytes)))
    }

    pub fn parse(raw: &str) -> Result<Self, Error> {
        let valid = raw
            .strip_prefix("job_")
            .is_some_and(|h| h.len() == 24 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        if valid {
            Ok(JobId(raw.to_string()))
        } else {
            Err(Error::bad_request(format!("'{}' is not a job id", printable(raw))))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for JobId {
    type Error = Error;
    fn try_from(raw: String) -> Result<Self, Error> {
        JobId::parse(&raw)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    BatchEmbed,
    BatchInfer,
    Quantize,
    TrainClassifier,
    /// Chat answers for a JSONL of conversations, with continuous batching.
    BatchChat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobType {
    /// The type as the API and metrics name it (`batch_embed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::BatchEmbed => "batch_embed",
            JobType::BatchInfer => "batch_infer",
            JobType::Quantize => "quantize",
            JobType::TrainClassifier => "train_classifier",
            JobType::BatchChat => "batch_chat",
        }
    }
}

impl JobStatus {
    /// The status as the API and metrics name it (`queued`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled)
    }

    pub fn parse(raw: &str) -> Result<Self, Error> {
        serde_json::from_value(Value::String(raw.to_string())).map_err(|_| {
            Error::bad_request(format!(
                "'status' must be queued, running, succeeded, failed or cancelled, not '{}'",
                printable(raw)
            ))
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub done: u64,
    pub total: Option<u64>,
    /// Items that became `{"id", "error"}` lines so far.
    #[serde(default)]
    pub errors: u64,
}

/// The job record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    #[serde(rename = "type")]
    pub job_type: JobType,
    pub status: JobStatus,
    pub progress: Progress,
    pub model: String,
    pub input: String,
    pub output: String,
    #[serde(default)]
    pub params: Value,
    pub error: Option<String>,
    pub attempts: u32,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Asked to stop; a running job stops at its next chunk boundary.
    #[serde(default)]
    pub cancel_requested: bool,
    pub tenant: String,
    pub principal: String,
    /// The X-Ray trace id of the request or event that created the job: its worker logs carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl Job {
    /// A new job, waiting for a worker.
    #[allow(clippy::too_many_arguments)]
    pub fn queued(
        id: JobId,
        job_type: JobType,
        model: String,
        input: String,
        output: String,
        params: Value,
        tenant: String,
        principal: String,
    ) -> Job {
        Job {
            id,
            job_type,
            status: JobStatus::Queued,
            progress: Progress::default(),
            model,
            input,
            output,
            params,
            error: None,
            attempts: 0,
            created_at: crate::time::now_rfc3339_millis(),
            started_at: None,
            finished_at: None,
            cancel_requested: false,
            tenant,
            principal,
            trace_id: None,
        }
    }
}

/// Splits `s3://bucket/key` into its bucket and key.
pub fn split_s3_uri(uri: &str) -> Option<(&str, &str)> {
    uri.strip_prefix("s3://")?.split_once('/').filter(|(bucket, _)| !bucket.is_empty())
}

/// The default output folder of a job: `s3://{bucket}/results/{id}/`.
pub fn default_output(bucket: &str, id: &JobId) -> String {
    format!("s3://{bucket}/results/{id}/")
}

/// What an idempotency key maps to: the job it created and a hash of the request that did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub job_id: JobId,
    pub request_sha256: String,
}

/// An opaque version of a stored record, for compare-and-swap (S3's ETag).
pub type Revision = String;

/// Job records, with compare-and-swap updates.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Creates the record; `false` if one with this id exists (If-None-Match).
    async fn create(&self, job: &Job) -> Result<bool, StoreError>;
    async fn get(&self, id: &JobId) -> Result<Option<(Job, Revision)>, StoreError>;
    /// Replaces the record if it is still at `revision`; `false` if someone else wrote first.
    async fn update(&self, job: &Job, revision: &Revision) -> Result<bool, StoreError>;
    async fn list(&self) -> Result<Vec<Job>, StoreError>;
    /// Claims an idempotency key for a job; the existing claim if there is one.
    async fn claim_idempotency_key(
        &self,
        key_hash: &str,
        record: &IdempotencyRecord,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
}

/// The jobs queue: messages carry only the job id.
#[async_trait]
pub trait JobQueue: Send + Sync {
    async fn enqueue(&self, id: &JobId) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_checked() {
        let id = JobId::from_random([0xab; 12]);
        assert_eq!(JobId::parse(id.as_str()).unwrap(), id);
        for bad in ["job_", "job_XYZ", "../jobs/x", "job_abababababababababababab0"] {
            assert!(JobId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses_parse_and_know_when_they_are_final() {
        assert_eq!(JobStatus::parse("running").unwrap(), JobStatus::Running);
        assert!(JobStatus::parse("done").unwrap_err().to_string().contains("'status'"));
        assert!(JobStatus::Cancelled.is_terminal() && !JobStatus::Queued.is_terminal());
        assert_eq!(serde_json::to_value(JobType::BatchEmbed).unwrap(), JobType::BatchEmbed.as_str());
        assert_eq!(serde_json::to_value(JobStatus::Cancelled).unwrap(), JobStatus::Cancelled.as_str());
    }

    #[test]
    fn s3_uris_split_into_bucket_and_key() {
        assert_eq!(split_s3_uri("s3://b/batch/x.jsonl"), Some(("b", "batch/x.jsonl")));
        assert_eq!(split_s3_uri("s3:///x"), None);
        assert_eq!(split_s3_uri("https://b/x"), None);
    }
}
