//! Runs one delivery of a job message, the same in both worker modes.
//!
//! Exactly-once results on at-least-once delivery: the input is cut into chunks of a fixed number
//! of lines (pinned in the job's params at its first claim), each chunk's output is a pure
//! function of its lines and is written once (If-None-Match), and a redelivered job skips the
//! chunks that exist. The final output is the chunks concatenated in order. Two workers racing on
//! one job (a visibility timeout that ran out) waste work but write the same bytes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use lmaas_aws::batch::{BatchObjects, InputError, InputLines};
use lmaas_core::jobs::{split_s3_uri, Job, JobId, JobStatus, JobStore, JobType};
use lmaas_core::manifest::Task;
use lmaas_core::metrics as metric;
use lmaas_core::{Error, Limits, ModelRef, ModelResolver, RegistryStore};
use lmaas_engine::{EmbeddingConfig, GenerationConfig, LoadedModel, ModelCache};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::chunk::{chat_chunk, embed_chunk, infer_chunk, BatchBudget, ChunkOutput, InputLine};

/// Lines per chunk unless the job's `params.chunk_items` says otherwise. A chunk is the unit of
/// checkpointing, progress and cancellation: small enough to finish inside a SIGTERM grace
/// period, large enough that its S3 writes are noise next to the inference.
pub const DEFAULT_CHUNK_ITEMS: u64 = 256;
const MAX_CHUNK_ITEMS: u64 = 100_000;

/// What happened to a delivery, which decides what becomes of its message.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The job is in a final state (or the message was meaningless): delete the message.
    Done(Option<JobStatus>),
    /// A transient failure: leave the message for a later attempt (or the DLQ).
    Retry(String),
    /// Stopped at a chunk boundary (shutdown or deadline): make the message visible again now.
    Released,
}

/// How this message has been delivered: SQS's receive count, and how many receives the queue
/// allows before its DLQ.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub receive_count: u32,
    pub max_receive: u32,
}

/// Why a job stopped before it finished.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The job itself is wrong (missing input, unknown model): retrying cannot help.
    Invalid(String),
    /// Something outside the job failed (S3, a model download): worth another attempt.
    Transient(String),
    Cancelled {
        done: u64,
        total: u64,
    },
    Released,
}

impl From<InputError> for Stop {
    fn from(e: InputError) -> Self {
        match e {
            InputError::Missing(message) => Stop::Invalid(format!("the input {message}")),
            InputError::Store(e) => Stop::Transient(e.to_string()),
        }
    }
}

pub(crate) fn transient(e: impl std::fmt::Display) -> Stop {
    Stop::Transient(e.to_string())
}

/// Errors from resolving or loading a model: a model that is not there is the job's fault; a
/// store or engine failure is not.
pub(crate) fn classify(e: Error) -> Stop {
    match e {
        Error::NotFound(m) | Error::BadRequest(m) | Error::Forbidden(m) => Stop::Invalid(m),
        other => Stop::Transient(other.to_string()),
    }
}

/// The model a batch job runs, resolved and loaded.
struct BatchModel {
    reference: String,
    loaded: Arc<LoadedModel>,
    manifest: Arc<lmaas_core::Manifest>,
    embeddings: Option<EmbeddingConfig>,
    /// batch_chat: the model's generation config and the sequences decoded together.
    generation: Option<(GenerationConfig, usize)>,
}

pub struct JobRunner {
    pub(crate) jobs: Arc<dyn JobStore>,
    /// Where jobs that produce models publish them (and read their sources from).
    pub(crate) registry: Arc<dyn RegistryStore>,
    pub(crate) resolver: ModelResolver,
    pub(crate) cache: ModelCache,
    pub(crate) objects: BatchObjects,
    limits: Limits,
    budget: BatchBudget,
    /// Scratch space for jobs that build files (a folder per job, removed after it).
    pub(crate) scratch: PathBuf,
}

impl JobRunner {
    pub fn new(
        jobs: Arc<dyn JobStore>,
        registry: Arc<dyn RegistryStore>,
        cache: ModelCache,
        objects: BatchObjects,
        budget: BatchBudget,
        alias_ttl: std::time::Duration,
    ) -> Self {
        let resolver = ModelResolver::new(registry.clone(), alias_ttl);
        let scratch = std::env::temp_dir().join("lmaas-jobs");
        JobRunner { jobs, registry, resolver, cache, objects, limits: Limits::default(), budget, scratch }
    }

    /// Loads models before any job needs them (a fleet host warms up before it polls).
    pub async fn preload(&self, references: &[ModelRef]) {
        self.cache.preload(&self.resolver, references, &[Task::Tensor, Task::Embeddings, Task::Generation]).await;
    }

    /// Runs the job until it finishes, fails, is cancelled, or `stop` asks it to let go.
    pub async fn run(&self, id: &JobId, delivery: Delivery, stop: &CancellationToken) -> Outcome {
        let job = match self.claim(id).await {
            Ok(Claim::Run(job)) => job,
            Ok(Claim::Finished(status)) => {
                tracing::info!(job = %id, ?status, "job already finished; message dropped");
                return Outcome::Done(Some(status));
            }
            Ok(Claim::Missing) => {
                tracing::error!(job = %id, "message names a job with no record; dropped");
                return Outcome::Done(None);
            }
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "claiming the job failed; it will be retried");
                return Outcome::Retry(e.to_string());
            }
        };
        // Every log line of the run carries the job and the trace of the request that created it.
        let span = tracing::info_span!("job", job = %id, trace_id = job.trace_id.as_deref().unwrap_or(""));
        self.run_claimed(*job, delivery, stop).instrument(span).await
    }

    async fn run_claimed(&self, job: Job, delivery: Delivery, stop: &CancellationToken) -> Outcome {
        let id = &job.id;
        let job_type = job.job_type.as_str();
        tracing::info!(job_type, model = %job.model, attempt = job.attempts, "job started");
        let started = Instant::now();
        let result = self.execute(&job, stop).await;
        let seconds = started.elapsed().as_secs_f64();
        metrics::histogram!(metric::JOB_RUN_DURATION, "type" => job_type).record(seconds);
        let outcome = match result {
            Ok(summary) => {
                let (items, errors) = (summary["items"].as_u64(), summary["errors"].as_u64());
                let finished = self
                    .modify(id, |job| {
                        finish(job, JobStatus::Succeeded, None);
                        // Batch jobs count items; model-producing jobs counted their steps.
                        if items.is_some() {
                            job.progress.done = items.unwrap_or(job.progress.done);
                            job.progress.total = items;
                            job.progress.errors = errors.unwrap_or(0);
                        }
                    })
                    .await;
                match finished {
                    Ok(_) => {
                        tracing::info!(job = %id, items, errors, seconds, "job succeeded");
                        Outcome::Done(Some(JobStatus::Succeeded))
                    }
                    Err(e) => Outcome::Retry(e),
                }
            }
            Err(Stop::Invalid(reason)) => {
                tracing::warn!(job = %id, reason, "job failed: it cannot run as submitted");
                self.settle(id, JobStatus::Failed, reason).await
            }
            Err(Stop::Cancelled { done, total }) => {
                let reason = format!("cancelled at a chunk boundary after {done} of {total} items");
                tracing::info!(job = %id, done, total, "job cancelled");
                self.settle(id, JobStatus::Cancelled, reason).await
            }
            Err(Stop::Released) => {
                tracing::info!(job = %id, "stopping at a chunk boundary; the job goes back to the queue");
                let released = self
                    .modify(id, |job| {
                        job.status = JobStatus::Queued;
                        job.error = Some("released by a stopping worker; it resumes after its last chunk".into());
                    })
                    .await;
                if let Err(e) = released {
                    tracing::warn!(job = %id, error = %e, "recording the release failed; the message is released anyway");
                }
                Outcome::Released
            }
            Err(Stop::Transient(reason)) if delivery.receive_count >= delivery.max_receive => {
                let reason = format!("gave up after {} attempts; the last error: {reason}", delivery.receive_count);
                tracing::error!(job = %id, reason, "job failed; its message goes to the dead-letter queue");
                match self.modify(id, |job| finish(job, JobStatus::Failed, Some(reason.clone()))).await {
                    Ok(_) => metrics::counter!(metric::JOBS, "type" => job_type, "status" => "failed").increment(1),
                    Err(e) => tracing::error!(job = %id, error = %e, "recording the failure failed"),
                }
                // Not deleted: the queue moves it to the DLQ on its next receive, for operators.
                return Outcome::Retry(reason);
            }
            Err(Stop::Transient(reason)) => {
                tracing::warn!(job = %id, attempt = delivery.receive_count, reason, "job attempt failed; it will be retried");
                let note = format!("attempt {} failed: {reason}; retrying", delivery.receive_count);
                if let Err(e) = self
                    .modify(id, |job| {
                        job.status = JobStatus::Queued;
                        job.error = Some(note.clone());
                    })
                    .await
                {
                    tracing::warn!(job = %id, error = %e, "recording the retry failed");
                }
                return Outcome::Retry(reason);
            }
        };
        if let Outcome::Done(Some(status)) = &outcome {
            metrics::counter!(metric::JOBS, "type" => job_type, "status" => status.as_str()).increment(1);
        }
        outcome
    }

    /// Marks the job final; the message is dropped either way (a record that will not take the
    /// write is retried by the next delivery).
    async fn settle(&self, id: &JobId, status: JobStatus, reason: String) -> Outcome {
        match self.modify(id, |job| finish(job, status, Some(reason.clone()))).await {
            Ok(_) => Outcome::Done(Some(status)),
            Err(e) => Outcome::Retry(e),
        }
    }

    async fn execute(&self, job: &Job, stop: &CancellationToken) -> Result<Value, Stop> {
        let job_type = job.job_type.as_str();
        match job.job_type {
            JobType::BatchEmbed | JobType::BatchInfer | JobType::BatchChat => {}
            JobType::Quantize => return self.quantize(job).await,
            JobType::TrainClassifier => return self.train_classifier(job).await,
        }
        let input_key = self.key_in_bucket(&job.input, "input")?;
        let output_prefix = self.key_in_bucket(&job.output, "output")?;
        let chunk_items = job.params["chunk_items"].as_u64().unwrap_or(default_chunk_items(job.job_type));
        if !(1..=MAX_CHUNK_ITEMS).contains(&chunk_items) {
            return Err(Stop::Invalid(format!("params.chunk_items must be 1 to {MAX_CHUNK_ITEMS}")));
        }
        let model = self.batch_model(job).await?;
        let total = self.count_lines(&input_key).await?;
        let chunks_prefix = format!("{output_prefix}chunks/");
        let finished: BTreeSet<String> =
            self.objects.keys(&chunks_prefix).await.map_err(transient)?.into_iter().collect();
        if !finished.is_empty() {
            tracing::info!(job = %job.id, chunks = finished.len(), "resuming: finished chunks are skipped");
        }
        self.modify(&job.id, |record| record.progress.total = Some(total)).await.map_err(Stop::Transient)?;

        let started = Instant::now();
        let mut lines = self.objects.lines(&input_key).await?;
        let (mut chunk_keys, mut done, mut errors, mut number) = (Vec::new(), 0u64, 0u64, 0u64);
        // The previous chunk's writes (its object, then the progress record) run while the next
        // chunk computes: on a GPU host a chunk computes in less time than its writes take.
        let mut writing = None;
        let mut end = false;
        while !end {
            let chunk = read_chunk(&mut lines, chunk_items, &mut number).await.map_err(transient)?;
            end = (chunk.len() as u64) < chunk_items;
            if chunk.is_empty() {
                break;
            }
            let key = format!("{chunks_prefix}{:08}.jsonl", chunk_keys.len());
            let count = chunk.len() as u64;
            let compute = async {
                if finished.contains(&key) {
                    return Ok(None);
                }
                let started = Instant::now();
                self.process(&model, chunk).await.map(|output| Some((output, started.elapsed())))
            };
            let (computed, written): (_, Option<Result<Job, Stop>>) = tokio::join!(compute, async {
                match writing.take() {
                    Some(write) => Some(write.await),
                    None => None,
                }
            });
            if let Some(latest) = written.transpose()? {
                if latest.cancel_requested {
                    return Err(Stop::Cancelled { done, total });
                }
            }
            let computed = computed?;
            errors += computed.as_ref().map_or(0, |(output, _)| output.errors);
            done += count;
            let write = self.write_chunk(&job.id, job_type, key.clone(), computed, (done, total, errors));
            chunk_keys.push(key);
            if stop.is_cancelled() && !end {
                // Keep the chunk already computed, then stop.
                return Err(if write.await?.cancel_requested {
                    Stop::Cancelled { done, total }
                } else {
                    Stop::Released
                });
            }
            writing = Some(write);
        }
        if let Some(write) = writing {
            if write.await?.cancel_requested {
                return Err(Stop::Cancelled { done, total });
            }
        }

        let output_key = format!("{output_prefix}output.jsonl");
        let totals = self.objects.assemble(&chunk_keys, &output_key).await.map_err(transient)?;
        let summary = json!({
            "job_id": job.id,
            "type": job.job_type,
            "model": model.reference,
            "execution_provider": model.loaded.execution_provider().as_str(),
            "input": job.input,
            "output": format!("s3://{}/{output_key}", self.objects.bucket()),
            "items": totals.items,
            "errors": totals.errors,
            "chunks": chunk_keys.len(),
            "chunk_items": chunk_items,
            "run_seconds": started.elapsed().as_secs_f64(),
            "finished_at": lmaas_core::time::now_rfc3339_millis(),
        });
        self.objects.put_json(&format!("{output_prefix}manifest.json"), &summary).await.map_err(transient)?;
        // The assembled output holds everything now; the chunks only cost storage.
        self.objects.delete(&chunk_keys).await;
        Ok(summary)
    }

    async fn batch_model(&self, job: &Job) -> Result<BatchModel, Stop> {
        let reference = ModelRef::parse(&job.model).map_err(|e| Stop::Invalid(format!("model: {e}")))?;
        let manifest = self.resolver.resolve(&reference).await.map_err(classify)?;
        let embeddings = match (job.job_type, manifest.task) {
            (JobType::BatchEmbed, Task::Embeddings) => Some(
                EmbeddingConfig::from_manifest_config(&manifest.config)
                    .map_err(|e| Stop::Invalid(format!("model {} has an invalid task config: {e}", manifest.name)))?,
            ),
            (JobType::BatchEmbed, _) => {
                return Err(Stop::Invalid(format!("batch_embed needs an embeddings model; {} is not one", job.model)))
            }
            _ => None,
        };
        let generation = match (job.job_type, manifest.task) {
            (JobType::BatchChat, Task::Generation) => {
                let config = GenerationConfig::from_manifest_config(&manifest.config)
                    .map_err(|e| {
                        Stop::Invalid(format!("model {} has an invalid generation config: {e}", manifest.name))
                    })?
                    .ok_or_else(|| Stop::Invalid(format!("model {} has no generation config", manifest.name)))?;
                let max_concurrent = lmaas_api::chat::max_concurrent(&job.params).map_err(Stop::Invalid)?;
                Some((config, max_concurrent))
            }
            (JobType::BatchChat, _) => {
                return Err(Stop::Invalid(format!(
                    "batch_chat needs a text generation model; {} is not one",
                    job.model
                )))
            }
            _ => None,
        };
        let loaded = self.cache.get(&manifest).await.map_err(|e| Stop::Transient(format!("loading the model: {e}")))?;
        Ok(BatchModel {
            reference: format!("{}:{}", manifest.name, manifest.version),
            loaded,
            manifest,
            embeddings,
            generation,
        })
    }

    /// Writes a chunk's output once (unless an earlier attempt did) and records the progress it
    /// makes (`done` items of `total`, `errors` of them failed); the job record as it is now.
    async fn write_chunk(
        &self,
        id: &JobId,
        job_type: &'static str,
        key: String,
        computed: Option<(ChunkOutput, std::time::Duration)>,
        (done, total, errors): (u64, u64, u64),
    ) -> Result<Job, Stop> {
        if let Some((output, compute_time)) = computed {
            let started = Instant::now();
            let counts = lmaas_aws::batch::ChunkCounts { items: output.items, errors: output.errors };
            if !self.objects.put_chunk(&key, output.body, &counts).await.map_err(transient)? {
                tracing::info!(key, "chunk was already written by another attempt");
            }
            metrics::histogram!(metric::CHUNK_DURATION, "type" => job_type)
                .record((compute_time + started.elapsed()).as_secs_f64());
            metrics::counter!(metric::JOB_ITEMS, "type" => job_type, "outcome" => "ok")
                .increment(output.items - output.errors);
            metrics::counter!(metric::JOB_ITEMS, "type" => job_type, "outcome" => "error").increment(output.errors);
        }
        let latest = self
            .modify(id, |record| {
                record.progress.done = done;
                record.progress.errors = record.progress.errors.max(errors);
            })
            .await
            .map_err(Stop::Transient)?;
        tracing::info!(job = %id, done, total, "progress");
        Ok(latest)
    }

    /// Runs a chunk on a blocking thread (ONNX Runtime's own threads do the parallel work).
    async fn process(&self, model: &BatchModel, lines: Vec<InputLine>) -> Result<ChunkOutput, Stop> {
        let (loaded, manifest, embeddings) = (model.loaded.clone(), model.manifest.clone(), model.embeddings.clone());
        let (budget, limits) = (self.budget, self.limits.for_model(&model.manifest.config));
        let (generation, reference) = (model.generation.clone(), model.reference.clone());
        tokio::task::spawn_blocking(move || match (&embeddings, &generation) {
            (Some(config), _) => Ok(embed_chunk(&loaded, config, &lines, budget)),
            (None, Some((config, max_active))) => chat_chunk(&loaded, config, &reference, &lines, *max_active)
                .map_err(|e| Stop::Transient(format!("generating answers: {e}"))),
            (None, None) => Ok(infer_chunk(&loaded, &manifest, &limits, &lines)),
        })
        .await
        .map_err(|e| Stop::Transient(format!("the chunk's task failed: {e}")))?
    }

    /// Counts the input's non-blank lines (a streaming pass: the total for progress).
    async fn count_lines(&self, key: &str) -> Result<u64, Stop> {
        let mut lines = self.objects.lines(key).await?;
        let mut total = 0;
        while let Some(line) =
            lines.next_line().await.map_err(|e| Stop::Transient(format!("reading the input: {e}")))?
        {
            total += u64::from(!line.trim().is_empty());
        }
        Ok(total)
    }

    pub(crate) fn key_in_bucket(&self, uri: &str, field: &str) -> Result<String, Stop> {
        match split_s3_uri(uri) {
            Some((bucket, key)) if bucket == self.objects.bucket() => Ok(key.to_string()),
            _ => Err(Stop::Invalid(format!("{field} {uri} is not in the lmaas bucket"))),
        }
    }

    async fn claim(&self, id: &JobId) -> Result<Claim, String> {
        for _ in 0..8 {
            let Some((mut job, revision)) = self.jobs.get(id).await.map_err(|e| e.to_string())? else {
                return Ok(Claim::Missing);
            };
            if job.status.is_terminal() {
                return Ok(Claim::Finished(job.status));
            }
            if job.cancel_requested {
                finish(&mut job, JobStatus::Cancelled, Some("cancelled before it started".into()));
            } else {
                job.status = JobStatus::Running;
                job.attempts += 1;
                job.started_at.get_or_insert_with(lmaas_core::time::now_rfc3339_millis);
                job.error = None;
                // Chunk boundaries must not move between attempts: pin them in the record.
                if let Value::Object(params) = &mut job.params {
                    params.entry("chunk_items").or_insert(Value::from(default_chunk_items(job.job_type)));
                } else {
                    job.params = json!({ "chunk_items": default_chunk_items(job.job_type) });
                }
            }
            if self.jobs.update(&job, &revision).await.map_err(|e| e.to_string())? {
                return Ok(if job.status == JobStatus::Running {
                    Claim::Run(Box::new(job))
                } else {
                    Claim::Finished(job.status)
                });
            }
        }
        Err(format!("job {id} changed too often to claim"))
    }

    /// Applies `change` to the latest record with compare-and-swap, retrying on conflicts (the
    /// API writes `cancel_requested` concurrently).
    pub(crate) async fn modify(&self, id: &JobId, change: impl Fn(&mut Job)) -> Result<Job, String> {
        for _ in 0..8 {
            let (mut job, revision) =
                self.jobs.get(id).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("job {id} has no record"))?;
            change(&mut job);
            if self.jobs.update(&job, &revision).await.map_err(|e| e.to_string())? {
                return Ok(job);
            }
        }
        Err(format!("job {id} changed too often to update"))
    }
}

enum Claim {
    Run(Box<Job>),
    Finished(JobStatus),
    Missing,
}

/// Items per chunk unless the job says: conversations take seconds each, so their chunks (the
/// unit of progress and of resumption) are smaller.
fn default_chunk_items(job_type: JobType) -> u64 {
    if job_type == JobType::BatchChat {
        16
    } else {
        DEFAULT_CHUNK_ITEMS
    }
}

fn finish(job: &mut Job, status: JobStatus, error: Option<String>) {
    job.status = status;
    job.error = error;
    job.finished_at = Some(lmaas_core::time::now_rfc3339_millis());
}

/// Reads up to `size` non-blank lines; fewer means the input ended.
async fn read_chunk(lines: &mut InputLines, size: u64, number: &mut u64) -> std::io::Result<Vec<InputLine>> {
    let mut chunk = Vec::new();
    while (chunk.len() as u64) < size {
        let Some(text) = lines.next_line().await? else { break };
        *number += 1;
        if !text.trim().is_empty() {
            chunk.push(InputLine { number: *number, text });
        }
    }
    Ok(chunk)
}
