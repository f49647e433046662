//! The ingest function's service: an object created at `batch/{model}/{name}.jsonl` becomes a
//! `batch_embed` (embeddings models) or `batch_infer` job. S3 events repeat, so the job id is
//! derived from the object (bucket, key, ETag, sequencer, version) and created with
//! If-None-Match: the same event twice is one job.
//!
//! Events arrive straight from S3 or wrapped in SQS messages (S3 → SQS → this function, as the
//! local emulator and the deployed template wire it). For SQS the answer lists the messages to
//! retry (partial batch failures); S3's own test event is skipped.

use std::sync::Arc;

use lmaas_core::jobs::{default_output, Job, JobId, JobQueue, JobStatus, JobStore, JobType};
use lmaas_core::manifest::Task;
use lmaas_core::{Error, ModelRef, ModelResolver};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::jobs::{enqueue, store_error};

/// Whose work an ingested job is: the bucket's writers, on behalf of the model's owner.
pub const INGEST_PRINCIPAL: &str = "s3:ingest";

pub struct IngestService {
    resolver: ModelResolver,
    jobs: Arc<dyn JobStore>,
    queue: Arc<dyn JobQueue>,
    bucket: String,
}

#[derive(Deserialize)]
struct Records<T> {
    #[serde(rename = "Records", default = "Vec::new")]
    records: Vec<T>,
}

#[derive(Deserialize)]
struct SqsRecord {
    #[serde(rename = "messageId")]
    message_id: String,
    body: String,
}

/// One S3 event record. AWS sends more fields than these; the emulator sends fewer (no
/// `sequencer`), so everything past the key is optional.
#[derive(Debug, Deserialize)]
pub struct S3Record {
    #[serde(rename = "eventName", default)]
    event_name: String,
    s3: S3Entity,
}

#[derive(Debug, Deserialize)]
struct S3Entity {
    bucket: S3Bucket,
    object: S3Object,
}

#[derive(Debug, Deserialize)]
struct S3Bucket {
    name: String,
}

#[derive(Debug, Deserialize)]
struct S3Object {
    key: String,
    #[serde(rename = "eTag", default)]
    e_tag: Option<String>,
    #[serde(default)]
    sequencer: Option<String>,
    #[serde(rename = "versionId", default)]
    version_id: Option<String>,
}

impl IngestService {
    pub fn new(resolver: ModelResolver, jobs: Arc<dyn JobStore>, queue: Arc<dyn JobQueue>, bucket: String) -> Self {
        IngestService { resolver, jobs, queue, bucket }
    }

    /// The service over S3 and SQS, with clients built from the environment.
    pub async fn from_env(config: crate::IngestConfig) -> Self {
        let sdk = lmaas_aws::sdk_config().await;
        let s3 = lmaas_aws::config::s3_client(&sdk);
        let store = Arc::new(lmaas_aws::S3ModelStore::new(s3.clone(), config.bucket.clone()));
        let jobs = Arc::new(lmaas_aws::S3JobStore::new(s3, config.bucket.clone()));
        let queue = Arc::new(lmaas_aws::SqsJobQueue::new(lmaas_aws::config::sqs_client(&sdk), config.queue_url));
        IngestService::new(ModelResolver::new(store, config.alias_ttl), jobs, queue, config.bucket)
    }

    /// Handles a Lambda event: S3 notification records, or SQS records that carry them.
    /// `trace_id` (the invocation's X-Ray trace) is recorded in the jobs it creates.
    pub async fn handle(&self, event: Value, trace_id: Option<String>) -> Result<Value, Error> {
        let span = tracing::info_span!("ingest", trace_id = trace_id.as_deref().unwrap_or(""));
        self.handle_event(event, trace_id.as_deref()).instrument(span).await
    }

    async fn handle_event(&self, event: Value, trace_id: Option<&str>) -> Result<Value, Error> {
        let from_sqs = event["Records"][0]["eventSource"] == "aws:sqs";
        if !from_sqs {
            let records: Records<S3Record> = serde_json::from_value(event)
                .map_err(|e| Error::bad_request(format!("not an S3 event notification: {e}")))?;
            for record in &records.records {
                self.ingest(record, trace_id).await?;
            }
            return Ok(json!({}));
        }
        let records: Records<SqsRecord> =
            serde_json::from_value(event).map_err(|e| Error::bad_request(format!("not an SQS event: {e}")))?;
        let mut failures = Vec::new();
        for message in &records.records {
            if let Err(e) = self.ingest_message(&message.body, trace_id).await {
                tracing::error!(message_id = %message.message_id, error = %e, "ingesting an S3 event failed; SQS will retry it");
                failures.push(json!({ "itemIdentifier": message.message_id }));
            }
        }
        Ok(json!({ "batchItemFailures": failures }))
    }

    async fn ingest_message(&self, body: &str, trace_id: Option<&str>) -> Result<(), Error> {
        let value: Value =
            serde_json::from_str(body).map_err(|e| Error::bad_request(format!("message is not JSON: {e}")))?;
        if value["Event"] == "s3:TestEvent" {
            tracing::info!(bucket = %value["Bucket"], "skipping S3's test event");
            return Ok(());
        }
        let records: Records<S3Record> = serde_json::from_value(value)
            .map_err(|e| Error::bad_request(format!("message is not an S3 event notification: {e}")))?;
        for record in &records.records {
            self.ingest(record, trace_id).await?;
        }
        Ok(())
    }

    /// Turns one created object into a job; the job, or `None` when the object is not a batch
    /// input. Only store failures are errors: they are worth a retry.
    pub async fn ingest(&self, record: &S3Record, trace_id: Option<&str>) -> Result<Option<Job>, Error> {
        let key = decode_key(&record.s3.object.key);
        if !record.event_name.starts_with("ObjectCreated") {
            tracing::debug!(key, event = record.event_name, "not an object creation; skipped");
            return Ok(None);
        }
        if record.s3.bucket.name != self.bucket {
            tracing::warn!(bucket = record.s3.bucket.name, key, "event from another bucket; skipped");
            return Ok(None);
        }
        let Some(model) = batch_model(&key) else {
            tracing::info!(key, "not a batch input (batch/{{model}}/{{name}}.jsonl); skipped");
            return Ok(None);
        };
        let id = event_job_id(record, &key);
        let input = format!("s3://{}/{key}", self.bucket);
        let output = default_output(&self.bucket, &id);
        let job = match self.job_for(model, &id, &input, &output).await {
            Ok(mut job) => {
                job.trace_id = trace_id.map(str::to_string);
                job
            }
            Err(e @ (Error::Unavailable(_) | Error::Internal(_))) => return Err(e),
            Err(e) => {
                // Nobody is waiting on this upload to answer: record why it cannot run, where
                // `GET /v1/jobs?status=failed` shows it, instead of dropping it.
                tracing::warn!(job = %id, key, error = %e, "batch upload names a model that cannot run it");
                let mut job = Job::queued(
                    id.clone(),
                    JobType::BatchInfer,
                    model.to_string(),
                    input,
                    output,
                    Value::Null,
                    String::new(),
                    INGEST_PRINCIPAL.into(),
                );
                job.status = JobStatus::Failed;
                job.trace_id = trace_id.map(str::to_string);
                job.error = Some(format!("{key}: {e}"));
                job.finished_at = Some(job.created_at.clone());
                self.jobs.create(&job).await.map_err(store_error)?;
                return Ok(Some(job));
            }
        };
        if self.jobs.create(&job).await.map_err(store_error)? {
            enqueue(&*self.jobs, &*self.queue, &job).await?;
            tracing::info!(job = %id, key, "batch upload became a job");
            return Ok(Some(job));
        }
        let (existing, _) =
            self.jobs.get(&id).await.map_err(store_error)?.ok_or_else(|| Error::Internal(format!("{id} vanished")))?;
        // A repeated event. If the first delivery died between recording and queueing, queue it
        // now; a second message for a job a worker already holds is harmless (workers dedupe).
        if existing.status == JobStatus::Queued && existing.attempts == 0 {
            enqueue(&*self.jobs, &*self.queue, &existing).await?;
        }
        tracing::info!(job = %id, key, status = ?existing.status, "repeated S3 event; the job already exists");
        Ok(Some(existing))
    }

    async fn job_for(&self, model: &str, id: &JobId, input: &str, output: &str) -> Result<Job, Error> {
        let reference = ModelRef::parse(model).map_err(|e| Error::bad_request(format!("model '{model}': {e}")))?;
        let manifest = self.resolver.resolve(&reference).await?;
        let job_type = match manifest.task {
            Task::Embeddings => JobType::BatchEmbed,
            Task::Generation => JobType::BatchChat,
            Task::Tensor => JobType::BatchInfer,
        };
        Ok(Job::queued(
            id.clone(),
            job_type,
            model.to_string(),
            input.to_string(),
            output.to_string(),
            Value::Null,
            manifest.tenant.clone().unwrap_or_default(),
            INGEST_PRINCIPAL.into(),
        ))
    }
}

/// S3 event keys are URL-encoded, with `+` for a space (the emulator even encodes `/`).
fn decode_key(raw: &str) -> String {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// The model a `batch/{model}/{name}.jsonl` key names.
fn batch_model(key: &str) -> Option<&str> {
    let (model, name) = key.strip_prefix("batch/")?.split_once('/')?;
    (!model.is_empty() && name.len() > ".jsonl".len() && name.ends_with(".jsonl")).then_some(model)
}

/// The same object version gives the same id, however often its event is delivered.
fn event_job_id(record: &S3Record, key: &str) -> JobId {
    let object = &record.s3.object;
    let identity = [
        record.s3.bucket.name.as_str(),
        key,
        object.e_tag.as_deref().unwrap_or(""),
        object.sequencer.as_deref().unwrap_or(""),
        object.version_id.as_deref().unwrap_or(""),
    ]
    .join("\0");
    let digest = Sha256::digest(identity.as_bytes());
    JobId::from_random(digest[..12].try_into().expect("12 bytes of a 32-byte digest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, etag: &str) -> S3Record {
        serde_json::from_value(json!({
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "b"}, "object": {"key": key, "eTag": etag}}
        }))
        .unwrap()
    }

    #[test]
    fn keys_are_decoded_like_s3_encodes_them() {
        assert_eq!(decode_key("batch%2Fminilm%3Aint8%2Fmy+file.jsonl"), "batch/minilm:int8/my file.jsonl");
        assert_eq!(decode_key("batch/a/b%2Bc.jsonl"), "batch/a/b+c.jsonl");
    }

    #[test]
    fn only_jsonl_files_under_a_model_folder_are_batch_inputs() {
        assert_eq!(batch_model("batch/minilm/x.jsonl"), Some("minilm"));
        assert_eq!(batch_model("batch/minilm:2/nested/x.jsonl"), Some("minilm:2"));
        for key in ["batch/x.jsonl", "batch//x.jsonl", "batch/minilm/.jsonl", "batch/minilm/x.json", "models/x.jsonl"] {
            assert_eq!(batch_model(key), None, "{key}");
        }
    }

    #[test]
    fn the_same_object_version_is_one_job_and_a_new_upload_another() {
        let first = event_job_id(&record("batch/m/x.jsonl", "e1"), "batch/m/x.jsonl");
        assert_eq!(first, event_job_id(&record("batch/m/x.jsonl", "e1"), "batch/m/x.jsonl"));
        assert_ne!(first, event_job_id(&record("batch/m/x.jsonl", "e2"), "batch/m/x.jsonl"));
        assert_ne!(first, event_job_id(&record("batch/m/y.jsonl", "e1"), "batch/m/y.jsonl"));
    }
}
