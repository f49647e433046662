//! The jobs function's service: `POST /v1/jobs` (with `Idempotency-Key`), `GET /v1/jobs/{id}`,
//! `GET /v1/jobs?status=`, `POST /v1/jobs/{id}/cancel`. A job is recorded in S3, then its id is
//! sent to SQS; workers do the work.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use lmaas_core::acl::authorize;
use lmaas_core::auth::Authenticator;
use lmaas_core::jobs::{default_output, IdempotencyRecord, Job, JobId, JobQueue, JobStatus, JobStore, JobType};
use lmaas_core::manifest::Task;
use lmaas_core::{Error, ModelRef, ModelResolver, Principal, Scope};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::context::{serve, Call};
use crate::response::json;
use crate::routes::Route;

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Validates and records jobs, and hands them to the queue.
pub struct JobsService {
    authenticator: Authenticator,
    resolver: ModelResolver,
    jobs: Arc<dyn JobStore>,
    queue: Arc<dyn JobQueue>,
    bucket: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    #[serde(rename = "type")]
    job_type: JobType,
    /// Required, except for train_classifier on feature vectors (no base model).
    #[serde(default)]
    model: Option<String>,
    /// Required, except for quantize (its input is an optional calibration set).
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    params: Value,
}

impl JobsService {
    pub fn new(
        authenticator: Authenticator,
        resolver: ModelResolver,
        jobs: Arc<dyn JobStore>,
        queue: Arc<dyn JobQueue>,
        bucket: impl Into<String>,
    ) -> Self {
        JobsService { authenticator, resolver, jobs, queue, bucket: bucket.into() }
    }

    /// The service over S3 and SQS, with clients built from the environment.
    pub async fn from_env(config: crate::JobsConfig) -> Result<Self, crate::ConfigError> {
        let (store, authenticator) = crate::auth::s3_backends(&config.bucket, &config.auth).await?;
        let sdk = lmaas_aws::sdk_config().await;
        let jobs = Arc::new(lmaas_aws::S3JobStore::new(lmaas_aws::config::s3_client(&sdk), config.bucket.clone()));
        let queue = Arc::new(lmaas_aws::SqsJobQueue::new(lmaas_aws::config::sqs_client(&sdk), config.queue_url));
        let resolver = ModelResolver::new(store, config.alias_ttl);
        Ok(JobsService::new(authenticator, resolver, jobs, queue, config.bucket))
    }

    pub async fn handle(&self, request: Request<Bytes>) -> Response<Bytes> {
        serve(&self.authenticator, request, |call| async move {
            let principal = call.principal()?;
            match &call.route {
                Route::SubmitJob => self.submit(principal, &call).await,
                Route::GetJob(id) => Ok(json(StatusCode::OK, &json!(self.visible_job(principal, id).await?.0))),
                Route::ListJobs => self.list(principal, &call).await,
                Route::CancelJob(id) => self.cancel(principal, id).await,
                _ => Err(Error::not_found(format!("{} is not served by the jobs function", call.request.uri().path()))),
            }
        })
        .await
    }

    async fn submit(&self, principal: &Principal, call: &Call) -> Result<Response<Bytes>, Error> {
        let raw: Value = serde_json::from_slice(call.request.body())
            .map_err(|e| Error::bad_request(format!("invalid job request: {e}")))?;
        let body: SubmitBody =
            serde_json::from_value(raw.clone()).map_err(|e| Error::bad_request(format!("invalid job request: {e}")))?;
        let model_name = match (&body.model, body.job_type) {
            (Some(model), _) => {
                let reference = ModelRef::parse(model).map_err(|e| Error::bad_request(format!("'model': {e}")))?;
                let manifest = self.resolver.resolve(&reference).await?;
                authorize(principal, &manifest, lmaas_core::acl::Access::Invoke)?;
                let needs_embeddings = matches!(body.job_type, JobType::BatchEmbed | JobType::TrainClassifier);
                if needs_embeddings && manifest.task != Task::Embeddings {
                    return Err(Error::bad_request(format!(
                        "'model': {} needs an embeddings model; '{model}' is not one",
                        body.job_type.as_str()
                    )));
                }
                let generation = manifest.task == Task::Generation;
                if body.job_type == JobType::BatchChat && !generation {
                    return Err(Error::bad_request(format!(
                        "'model': batch_chat needs a text generation model; '{model}' is not one"
                    )));
                }
                if generation && matches!(body.job_type, JobType::BatchEmbed | JobType::BatchInfer) {
                    return Err(Error::bad_request(format!(
                        "'model': '{model}' is a text generation model; batch_chat is the batch job for it"
                    )));
                }
                model.clone()
            }
            (None, JobType::TrainClassifier) => String::new(),
            (None, _) => return Err(Error::bad_request("'model' is required")),
        };
        let input = match (&body.input, body.job_type) {
            (Some(input), _) => self.s3_uri("input", input, false)?,
            (None, JobType::Quantize) => String::new(),
            (None, _) => return Err(Error::bad_request("'input' is required: an s3:// URI of the job's input")),
        };
        if !(body.params.is_null() || body.params.is_object()) {
            return Err(Error::bad_request("'params' must be an object"));
        }
        if matches!(body.job_type, JobType::Quantize | JobType::TrainClassifier) {
            // These jobs publish a model version: the caller must be allowed to.
            if !principal.has(lmaas_core::Scope::ModelsWrite) {
                return Err(Error::Forbidden(format!(
                    "{} jobs publish a model version, which needs the models:write scope",
                    body.job_type.as_str()
                )));
            }
        }
        match body.job_type {
            JobType::Quantize => {
                lmaas_engine::optimize::QuantizeParams::parse(&body.params).map_err(Error::bad_request)?;
            }
            JobType::TrainClassifier => {
                lmaas_engine::train::TrainParams::parse(&body.params).map_err(Error::bad_request)?;
            }
            JobType::BatchChat => {
                crate::chat::max_concurrent(&body.params).map_err(Error::bad_request)?;
            }
            _ => {}
        }
        let mut id = new_job_id();
        if let Some(key) = idempotency_key(&call.request)? {
            let key_hash = hex::encode(Sha256::digest(format!("{}\0{key}", principal.tenant)));
            let request_sha256 = hex::encode(Sha256::digest(raw.to_string()));
            let claim = IdempotencyRecord { job_id: id.clone(), request_sha256: request_sha256.clone() };
            if let Some(existing) = self.jobs.claim_idempotency_key(&key_hash, &claim).await.map_err(store_error)? {
                if existing.request_sha256 != request_sha256 {
                    return Err(Error::Conflict(
                        "this Idempotency-Key was already used with a different request".into(),
                    ));
                }
                if let Some((job, _)) = self.jobs.get(&existing.job_id).await.map_err(store_error)? {
                    return Ok(json(StatusCode::ACCEPTED, &json!(job)));
                }
                // The first attempt claimed the key but stopped before recording its job: finish it.
                id = existing.job_id;
            }
        }
        let output = match &body.output {
            Some(output) => self.s3_uri("output", output, true)?,
            None => default_output(&self.bucket, &id),
        };
        let mut job = Job::queued(
            id.clone(),
            body.job_type,
            model_name,
            input,
            output,
            body.params,
            principal.tenant.clone(),
            principal.id.clone(),
        );
        job.trace_id = call.trace_id.clone();
        if !self.jobs.create(&job).await.map_err(store_error)? {
            let (existing, _) = self
                .jobs
                .get(&id)
                .await
                .map_err(store_error)?
                .ok_or_else(|| Error::Internal(format!("{id} vanished")))?;
            return Ok(json(StatusCode::ACCEPTED, &json!(existing)));
        }
        enqueue(&*self.jobs, &*self.queue, &job).await?;
        Ok(json(StatusCode::ACCEPTED, &json!(job)))
    }

    async fn list(&self, principal: &Principal, call: &Call) -> Result<Response<Bytes>, Error> {
        let status = match call.request.uri().query().and_then(|q| q.split('&').find_map(|p| p.strip_prefix("status=")))
        {
            Some(raw) => Some(JobStatus::parse(raw)?),
            None => None,
        };
        let mut jobs: Vec<Job> = self
            .jobs
            .list()
            .await
            .map_err(store_error)?
            .into_iter()
            .filter(|job| may_see(principal, job) && status.is_none_or(|s| job.status == s))
            .collect();
        jobs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
        Ok(json(StatusCode::OK, &json!({ "object": "list", "data": jobs })))
    }

    /// Queued jobs are cancelled at once; running ones are asked to stop at their next chunk.
    async fn cancel(&self, principal: &Principal, id: &JobId) -> Result<Response<Bytes>, Error> {
        for _ in 0..5 {
            let (mut job, revision) = self.visible_job(principal, id).await?;
            if job.status.is_terminal() {
                return Err(Error::Conflict(format!("job {id} is already {}", job.status.as_str())));
            }
            job.cancel_requested = true;
            if job.status == JobStatus::Queued {
                job.status = JobStatus::Cancelled;
                job.finished_at = Some(lmaas_core::time::now_rfc3339_millis());
                job.error = Some("cancelled before it started".into());
            }
            if self.jobs.update(&job, &revision).await.map_err(store_error)? {
                tracing::info!(job = %id, status = ?job.status, "job cancel requested");
                return Ok(json(StatusCode::OK, &json!(job)));
            }
        }
        Err(Error::Conflict(format!("job {id} is changing too fast to cancel; try again")))
    }

    /// The job, if the caller may see it; another tenant's job is 404, like a missing one.
    async fn visible_job(&self, principal: &Principal, id: &JobId) -> Result<(Job, String), Error> {
        match self.jobs.get(id).await.map_err(store_error)? {
            Some((job, revision)) if may_see(principal, &job) => Ok((job, revision)),
            _ => Err(Error::not_found(format!("job {id} does not exist"))),
        }
    }

    /// `s3://{bucket}/{key}` inside the lmaas bucket; an output must be a folder (ends with `/`).
    fn s3_uri(&self, field: &str, raw: &str, folder: bool) -> Result<String, Error> {
        let key = raw
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .filter(|(bucket, _)| *bucket == self.bucket)
            .map(|(_, key)| key)
            .ok_or_else(|| Error::bad_request(format!("'{field}' must be an s3://{}/… URI", self.bucket)))?;
        if key.is_empty() || key.split('/').any(|part| part == "..") || key.contains(['\\', '\0']) {
            return Err(Error::bad_request(format!("'{field}' has an invalid key")));
        }
        if folder != key.ends_with('/') {
            let want = if folder { "a folder ending with '/'" } else { "an object, not a folder" };
            return Err(Error::bad_request(format!("'{field}' must name {want}")));
        }
        Ok(raw.to_string())
    }
}

/// Sends a recorded job to the queue. If SQS refuses, the record says so (failed, submit again)
/// rather than promising work nobody will do.
pub(crate) async fn enqueue(jobs: &dyn JobStore, queue: &dyn JobQueue, job: &Job) -> Result<(), Error> {
    let Err(e) = queue.enqueue(&job.id).await else {
        metrics::counter!(lmaas_core::metrics::JOBS, "type" => job.job_type.as_str(), "status" => "queued")
            .increment(1);
        tracing::info!(job = %job.id, job_type = ?job.job_type, model = %job.model, "job queued");
        return Ok(());
    };
    tracing::error!(job = %job.id, error = %e, "enqueueing the job failed");
    if let Some((mut failed, revision)) = jobs.get(&job.id).await.map_err(store_error)? {
        failed.status = JobStatus::Failed;
        failed.error = Some("the job could not be queued; submit it again".into());
        failed.finished_at = Some(lmaas_core::time::now_rfc3339_millis());
        jobs.update(&failed, &revision).await.map_err(store_error)?;
    }
    Err(Error::Unavailable("the jobs queue is unavailable right now".into()))
}

fn may_see(principal: &Principal, job: &Job) -> bool {
    principal.has(Scope::Admin) || (!principal.tenant.is_empty() && job.tenant == principal.tenant)
}

fn idempotency_key(request: &Request<Bytes>) -> Result<Option<String>, Error> {
    let Some(value) = request.headers().get(IDEMPOTENCY_KEY) else { return Ok(None) };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 255 => Ok(Some(key.to_string())),
        _ => Err(Error::bad_request("Idempotency-Key must be 1 to 255 visible characters")),
    }
}

pub(crate) fn new_job_id() -> JobId {
    let mut bytes = [0u8; 12];
    // Without entropy, ids from the clock still work; the If-None-Match create catches collisions.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        bytes.copy_from_slice(&nanos.to_le_bytes()[..12]);
    }
    JobId::from_random(bytes)
}

pub(crate) fn store_error(e: lmaas_core::StoreError) -> Error {
    tracing::error!(error = %e, "job store failed");
    Error::Unavailable("the job store is unavailable right now".into())
}
