//! Jobs whose result is a new registered model version: `quantize` and `train_classifier`.
//! The work happens in a scratch folder; `register` then publishes the files as the next version
//! of the target model, ready and tagged, with the job's report in the manifest.
//!
//! Retries are safe: the version records the job that produced it (`config.produced_by.job`),
//! so a second attempt finishes the same version instead of adding another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lmaas_core::acl::Acl;
use lmaas_core::jobs::{Job, JobId};
use lmaas_core::manifest::{FileEntry, ModelState, Task, MODEL_FILE};
use lmaas_core::{AliasName, Manifest, ModelName, ModelRef, RegistryStore, Version};
use lmaas_engine::embeddings::Pooling;
use lmaas_engine::optimize::{self, QuantizeParams};
use lmaas_engine::train::{self, LabeledData, TrainParams};
use lmaas_engine::{EmbeddingConfig, EmbeddingInput, EngineError, ExecutionProviders, LoadedModel};
use lmaas_onnx::classifier;
use serde_json::{json, Value};

use crate::runner::{classify, transient, JobRunner, Stop};

/// A model version a job built, waiting to be published.
pub struct NewVersion {
    pub name: ModelName,
    pub task: Task,
    /// The folder holding `files`.
    pub dir: PathBuf,
    pub files: Vec<String>,
    /// The manifest's config: the task config (`task`) and what the job reports.
    pub config: Value,
    pub tenant: Option<String>,
    pub acl: Acl,
    /// Aliases to point at the new version (`latest` is added when the model has none yet).
    pub tags: Vec<AliasName>,
    pub job: JobId,
}

/// Publishes `new` as the next version of its model and returns its manifest. Errors are
/// transient (the store), worth another attempt.
pub async fn register(store: &dyn RegistryStore, new: NewVersion) -> Result<Manifest, String> {
    let name = &new.name;
    let versions = store.versions(name).await.map_err(|e| e.to_string())?;
    let mut reuse = None;
    for &version in versions.iter().rev() {
        let manifest = store.manifest(name, version).await.map_err(|e| e.to_string())?;
        if let Some(manifest) = manifest.filter(|m| m.config["produced_by"]["job"] == json!(new.job)) {
            reuse = Some(manifest);
            break;
        }
    }
    let mut files = BTreeMap::new();
    for file in &new.files {
        let digest = lmaas_engine::cache::file_digest(&new.dir.join(file))
            .await
            .map_err(|e| format!("reading the new {file}: {e}"))?;
        files.insert(file.clone(), FileEntry { sha256: digest.sha256, size: digest.size });
    }
    let mut config = new.config.clone();
    if !config.is_object() {
        config = json!({});
    }
    config["produced_by"] = json!({ "job": new.job });
    let mut manifest = match reuse {
        Some(existing) if existing.state == ModelState::Ready => {
            tracing::info!(model = %name, version = %existing.version, "an earlier attempt already published this version");
            tag(store, name, existing.version, &new.tags).await?;
            return Ok(existing);
        }
        Some(existing) => existing,
        None => claim_next_version(store, name, versions.last().copied(), &new, &files, &config).await?,
    };
    let version = manifest.version;
    for file in &new.files {
        store.put_file(name, version, file, &new.dir.join(file)).await.map_err(|e| e.to_string())?;
    }
    // The registry's proof of a good version: ONNX Runtime loads it; the signature comes from it.
    let model_file = new.dir.join(MODEL_FILE);
    let loaded = tokio::task::spawn_blocking(move || LoadedModel::load(&model_file, &ExecutionProviders::cpu(), 0))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the new model does not load: {e}"))?;
    let (inputs, outputs) = loaded.signature()?;
    manifest.files = files;
    manifest.config = config;
    manifest.inputs = inputs;
    manifest.outputs = outputs;
    manifest.state = ModelState::Ready;
    store.put_manifest(&manifest, false).await.map_err(|e| e.to_string())?;
    tag(store, name, version, &new.tags).await?;
    tracing::info!(model = %name, %version, tags = ?new.tags, "job published a new version");
    Ok(manifest)
}

/// Writes a pending manifest at the first free version after `last` (If-None-Match, so two jobs
/// publishing to one model never take the same number).
async fn claim_next_version(
    store: &dyn RegistryStore,
    name: &ModelName,
    last: Option<Version>,
    new: &NewVersion,
    files: &BTreeMap<String, FileEntry>,
    config: &Value,
) -> Result<Manifest, String> {
    let first = last.map_or(1, |v| v.get() + 1);
    for number in first..first + 16 {
        let version = Version::new(number).map_err(|e| e.to_string())?;
        let mut manifest = Manifest::ready(name.clone(), version, new.task, files.clone(), vec![], vec![]);
        manifest.state = ModelState::Pending;
        manifest.tenant = new.tenant.clone();
        manifest.acl = new.acl.clone();
        manifest.config = config.clone();
        manifest.created_at = lmaas_core::time::now_rfc3339();
        if store.put_manifest(&manifest, true).await.map_err(|e| e.to_string())? {
            return Ok(manifest);
        }
    }
    Err(format!("could not claim a new version of '{name}': too many concurrent writers"))
}

async fn tag(store: &dyn RegistryStore, name: &ModelName, version: Version, tags: &[AliasName]) -> Result<(), String> {
    let latest = AliasName::latest();
    let mut tags = tags.to_vec();
    if store.alias(name, &latest).await.map_err(|e| e.to_string())?.is_none() {
        tags.push(latest);
    }
    for alias in tags {
        store.put_alias(name, &alias, version).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Downloads a version's files into `dir` (model.onnx first).
pub async fn download(store: &dyn RegistryStore, manifest: &Manifest, dir: &Path) -> Result<(), String> {
    tokio::fs::create_dir_all(dir).await.map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for (file, entry) in &manifest.files {
        let path = dir.join(file);
        let digest = store.download(&manifest.name, manifest.version, file, &path).await.map_err(|e| e.to_string())?;
        digest.check(file, entry.size, &entry.sha256)?;
    }
    Ok(())
}

/// Reads a small object (a calibration set) from the bucket as bytes.
async fn read_object(runner: &JobRunner, key: &str) -> Result<Vec<u8>, Stop> {
    let mut lines = runner.objects.lines(key).await?;
    let mut raw = Vec::new();
    while let Some(line) = lines.next_line().await.map_err(|e| Stop::Transient(format!("reading {key}: {e}")))? {
        raw.extend_from_slice(line.as_bytes());
        raw.push(b'\n');
        if raw.len() > 16 << 20 {
            return Err(Stop::Invalid("the calibration file is larger than 16 MiB".into()));
        }
    }
    Ok(raw)
}

/// Runs blocking model work on its own thread, turning its progress reports into job progress
/// (and a cancel request into a stop at the next step).
pub(crate) async fn with_progress<T: Send + 'static>(
    runner: &JobRunner,
    job: &Job,
    work: impl FnOnce(&mut dyn FnMut(usize, usize, &str) -> bool) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, Stop> {
    let cancelled = Arc::new(AtomicBool::new(false));
    let (sender, mut steps) = tokio::sync::mpsc::unbounded_channel::<(usize, usize, String)>();
    let flag = cancelled.clone();
    let mut handle = tokio::task::spawn_blocking(move || {
        work(&mut |done, total, what| {
            let _ = sender.send((done, total, what.to_string()));
            !flag.load(Ordering::Relaxed)
        })
    });
    let result = loop {
        tokio::select! {
            finished = &mut handle => break finished,
            Some((done, total, what)) = steps.recv() => {
                tracing::info!(job = %job.id, done, total, step = what, "progress");
                let latest = runner
                    .modify(&job.id, |record| {
                        record.progress.done = done as u64;
                        record.progress.total = Some(total as u64);
                    })
                    .await;
                match latest {
                    Ok(latest) if latest.cancel_requested => cancelled.store(true, Ordering::Relaxed),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(job = %job.id, error = %e, "recording progress failed"),
                }
            }
        }
    };
    match result.map_err(|e| Stop::Transient(format!("the job's task failed: {e}")))? {
        Ok(value) => Ok(value),
        Err(EngineError::Cancelled) => {
            let record = runner.modify(&job.id, |_| {}).await.map_err(Stop::Transient)?;
            Err(Stop::Cancelled { done: record.progress.done, total: record.progress.total.unwrap_or(0) })
        }
        Err(EngineError::Run(m)) | Err(EngineError::Load(m)) => Err(Stop::Invalid(m)),
        Err(other) => Err(Stop::Transient(other.to_string())),
    }
}

impl JobRunner {
    /// `quantize`: the source version's files → `lmaas_engine::optimize::quantize_model` → a new
    /// version of the target model tagged with the scheme, the quality report in its manifest
    /// (`config.quantization`) and in the job's output folder (`report.json`).
    pub(crate) async fn quantize(&self, job: &Job) -> Result<Value, Stop> {
        let (params, request) = QuantizeParams::parse(&job.params).map_err(Stop::Invalid)?;
        let reference = ModelRef::parse(&job.model).map_err(|e| Stop::Invalid(format!("model: {e}")))?;
        let source = self.resolver.resolve(&reference).await.map_err(classify)?;
        let target = match &params.target {
            Some(name) => ModelName::parse(name).map_err(|e| Stop::Invalid(format!("params.target: {e}")))?,
            None => source.name.clone(),
        };
        self.check_target_is_ours(job, &target).await?;
        let tag = AliasName::parse(params.tag.as_deref().unwrap_or(request.scheme.tag()))
            .map_err(|e| Stop::Invalid(format!("params.tag: {e}")))?;
        let calibration = if job.input.is_empty() {
            optimize::default_calibration()
        } else {
            let key = self.key_in_bucket(&job.input, "input")?;
            optimize::parse_calibration(&read_object(self, &key).await?)
                .map_err(|e| Stop::Invalid(format!("input: {e}")))?
        };
        let dir = self.scratch.join(job.id.as_str());
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let result = self.quantize_in(job, &source, &dir, request, calibration, target, tag).await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn quantize_in(
        &self,
        job: &Job,
        source: &Manifest,
        dir: &Path,
        request: optimize::QuantizeRequest,
        calibration: optimize::Calibration,
        target: ModelName,
        tag: AliasName,
    ) -> Result<Value, Stop> {
        let (source_dir, out_dir) = (dir.join("source"), dir.join("out"));
        download(self.registry.as_ref(), source, &source_dir).await.map_err(Stop::Transient)?;
        tokio::fs::create_dir_all(&out_dir).await.map_err(transient)?;
        let task_config = source.config.get("task").cloned().unwrap_or(Value::Null);
        let (model_file, out) = (source_dir.join(MODEL_FILE), out_dir.clone());
        let report = with_progress(self, job, move |progress| {
            optimize::quantize_model(&model_file, &out, &request, &task_config, Some(&calibration), progress)
        })
        .await?;
        let report = serde_json::to_value(&report).map_err(transient)?;
        let mut files = vec![MODEL_FILE.to_string()];
        files.extend(source.files.keys().filter(|f| ["tokenizer.json", "lmaas.json"].contains(&f.as_str())).cloned());
        let mut config = source.config.clone();
        if !config.is_object() {
            config = json!({});
        }
        config["quantization"] = report.clone();
        config["quantization"]["source"] = json!(format!("{}:{}", source.name, source.version));
        let new = NewVersion {
            name: target,
            task: source.task,
            dir: out_dir,
            files,
            config,
            tenant: Some(job.tenant.clone()),
            acl: source.acl.clone(),
            tags: vec![tag],
            job: job.id.clone(),
        };
        self.publish(job, new, |manifest| {
            json!({
                "job_id": job.id,
                "type": job.job_type,
                "source": format!("{}:{}", source.name, source.version),
                "model": format!("{}:{}", manifest.name, manifest.version),
                "report": report,
                "finished_at": lmaas_core::time::now_rfc3339_millis(),
            })
        })
        .await
    }

    /// A job may publish only into a model its tenant owns (or a new name).
    pub(crate) async fn check_target_is_ours(&self, job: &Job, target: &ModelName) -> Result<(), Stop> {
        for version in self.registry.versions(target).await.map_err(transient)? {
            if let Some(manifest) = self.registry.manifest(target, version).await.map_err(transient)? {
                if manifest.tenant.as_deref() != Some(job.tenant.as_str()) {
                    return Err(Stop::Invalid(format!("model '{target}' belongs to another tenant")));
                }
            }
        }
        Ok(())
    }
}

/// Largest labeled input a train_classifier job reads (rows).
const MAX_TRAINING_ROWS: usize = 200_000;

/// The labeled input: texts (embedded by the base model) or feature vectors.
enum Examples {
    Texts(Vec<String>, Vec<String>),
    Features(LabeledData),
}

impl JobRunner {
    /// `train_classifier`: labeled JSONL (`{"text", "label"}` with an embeddings base model, or
    /// `{"features", "label"}`) → a trained head → ONNX (the base model with the head appended,
    /// or the head alone) → the next version of `params.target`, with the training report (loss
    /// curve, accuracies) in its manifest (`config.training`).
    pub(crate) async fn train_classifier(&self, job: &Job) -> Result<Value, Stop> {
        let params = TrainParams::parse(&job.params).map_err(Stop::Invalid)?;
        let target = ModelName::parse(&params.target).map_err(|e| Stop::Invalid(format!("params.target: {e}")))?;
        self.check_target_is_ours(job, &target).await?;
        let mut tags = vec![AliasName::latest()];
        if let Some(tag) = &params.tag {
            tags.push(AliasName::parse(tag).map_err(|e| Stop::Invalid(format!("params.tag: {e}")))?);
        }
        let key = self.key_in_bucket(&job.input, "input")?;
        let examples = self.read_examples(&key).await?;
        let dir = self.scratch.join(job.id.as_str());
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::create_dir_all(&dir).await.map_err(transient)?;
        let result = self.train_in(job, &params, examples, &dir, target, tags).await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        result
    }

    async fn read_examples(&self, key: &str) -> Result<Examples, Stop> {
        let mut lines = self.objects.lines(key).await?;
        let (mut texts, mut features, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        let mut number = 0usize;
        while let Some(line) =
            lines.next_line().await.map_err(|e| Stop::Transient(format!("reading the input: {e}")))?
        {
            number += 1;
            if line.trim().is_empty() {
                continue;
            }
            if labels.len() == MAX_TRAINING_ROWS {
                return Err(Stop::Invalid(format!("the input has more than {MAX_TRAINING_ROWS} rows")));
            }
            let bad = |what: &str| Stop::Invalid(format!("input line {number}: {what}"));
            let row: Value = serde_json::from_str(&line).map_err(|e| bad(&format!("not JSON ({e})")))?;
            let label = match &row["label"] {
                Value::String(s) if !s.is_empty() => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(bad("'label' must be a non-empty string, a number or a boolean")),
            };
            match (&row["text"], &row["features"]) {
                (Value::String(text), Value::Null) if features.is_empty() => texts.push(text.clone()),
                (Value::Null, Value::Array(values)) if texts.is_empty() => features.push(
                    values
                        .iter()
                        .map(|v| v.as_f64().map(|f| f as f32))
                        .collect::<Option<Vec<f32>>>()
                        .ok_or_else(|| bad("'features' must be an array of numbers"))?,
                ),
                (Value::Null, Value::Null) => return Err(bad("each line needs 'text' or 'features'")),
                _ => return Err(bad("every line must have the same kind of input: all 'text' or all 'features'")),
            }
            labels.push(label);
        }
        if labels.is_empty() {
            return Err(Stop::Invalid("the input has no labeled rows".into()));
        }
        Ok(if texts.is_empty() {
            Examples::Features(LabeledData { features, labels })
        } else {
            Examples::Texts(texts, labels)
        })
    }

    async fn train_in(
        &self,
        job: &Job,
        params: &TrainParams,
        examples: Examples,
        dir: &Path,
        target: ModelName,
        tags: Vec<AliasName>,
    ) -> Result<Value, Stop> {
        let mut files = vec![MODEL_FILE.to_string()];
        let (data, base) = match examples {
            Examples::Features(data) => {
                if !job.model.is_empty() {
                    return Err(Stop::Invalid("feature vectors train a head alone: leave 'model' out".into()));
                }
                (data, None)
            }
            Examples::Texts(texts, labels) => {
                if job.model.is_empty() {
                    return Err(Stop::Invalid("text examples need 'model': the embeddings model to train on".into()));
                }
                let reference = ModelRef::parse(&job.model).map_err(|e| Stop::Invalid(format!("model: {e}")))?;
                let manifest = self.resolver.resolve(&reference).await.map_err(classify)?;
                let config = EmbeddingConfig::from_manifest_config(&manifest.config)
                    .map_err(|e| Stop::Invalid(format!("model {} has an invalid task config: {e}", manifest.name)))?;
                let loaded =
                    self.cache.get(&manifest).await.map_err(|e| Stop::Transient(format!("loading the model: {e}")))?;
                let embed_config = config.clone();
                let features = with_progress(self, job, move |progress| {
                    let mut vectors = Vec::with_capacity(texts.len());
                    let batches = texts.len().div_ceil(32);
                    for (i, batch) in texts.chunks(32).enumerate() {
                        let input = EmbeddingInput::Texts(batch.to_vec());
                        vectors.extend(loaded.embed(&input, &embed_config, None)?.vectors);
                        if !progress(i + 1, batches, &format!("embedded {} of {} texts", vectors.len(), texts.len())) {
                            return Err(EngineError::Cancelled);
                        }
                    }
                    Ok(vectors)
                })
                .await?;
                download(self.registry.as_ref(), &manifest, &dir.join("base")).await.map_err(Stop::Transient)?;
                files.push("tokenizer.json".into());
                (LabeledData { features, labels }, Some((manifest, config)))
            }
        };
        let config = params.config.clone();
        let (head, report) = with_progress(self, job, move |progress| train::train(&data, &config, progress)).await?;
        let model = match &base {
            None => classifier::head_model(&head),
            Some((manifest, config)) => {
                let raw = tokio::fs::read(dir.join("base").join(MODEL_FILE)).await.map_err(transient)?;
                let base_model = lmaas_onnx::decode(raw.into()).map_err(|e| Stop::Invalid(e.0))?;
                let output = match &config.output {
                    Some(name) => name.clone(),
                    None => manifest.outputs.first().map(|o| o.name.clone()).unwrap_or_default(),
                };
                let token_states =
                    manifest.outputs.iter().find(|o| o.name == output).is_some_and(|o| o.shape.len() == 3);
                let pooling = match config.pooling {
                    Pooling::Mean => classifier::Pooling::Mean,
                    Pooling::Cls => classifier::Pooling::Cls,
                };
                tokio::fs::copy(dir.join("base").join("tokenizer.json"), dir.join("tokenizer.json"))
                    .await
                    .map_err(transient)?;
                classifier::attach_to_base(base_model, &output, token_states, pooling, config.normalize, &head)
                    .map_err(|e| Stop::Invalid(e.0))?
            }
        };
        tokio::fs::write(dir.join(MODEL_FILE), lmaas_onnx::encode(&model)).await.map_err(transient)?;
        let report = serde_json::to_value(&report).map_err(transient)?;
        let base_name = base.as_ref().map(|(m, _)| format!("{}:{}", m.name, m.version));
        let mut config = json!({
            "classifier": { "classes": head.classes, "input": if base.is_some() { "text" } else { "features" }, "base": base_name },
            "training": report,
        });
        if let Some((manifest, _)) = &base {
            // The base's tokenization settings travel with the merged model.
            config["task"] = manifest.config.get("task").cloned().unwrap_or(Value::Null);
        }
        let new = NewVersion {
            name: target,
            task: Task::Tensor,
            dir: dir.to_path_buf(),
            files,
            config,
            tenant: Some(job.tenant.clone()),
            acl: Acl::default(),
            tags,
            job: job.id.clone(),
        };
        self.publish(job, new, |manifest| {
            json!({
                "job_id": job.id,
                "type": job.job_type,
                "model": format!("{}:{}", manifest.name, manifest.version),
                "base": base_name,
                "train_accuracy": report["train_accuracy"],
                "validation_accuracy": report["validation_accuracy"],
                "best_epoch": report["best_epoch"],
                "finished_at": lmaas_core::time::now_rfc3339_millis(),
            })
        })
        .await
    }

    /// Publishes `new` (see `register`), then writes the job's summary to `{output}report.json`
    /// and returns it.
    async fn publish(
        &self,
        job: &Job,
        new: NewVersion,
        summary: impl FnOnce(&Manifest) -> Value,
    ) -> Result<Value, Stop> {
        let manifest = register(self.registry.as_ref(), new).await.map_err(Stop::Transient)?;
        self.resolver.forget(&manifest.name);
        let summary = summary(&manifest);
        let output_prefix = self.key_in_bucket(&job.output, "output")?;
        self.objects.put_json(&format!("{output_prefix}report.json"), &summary).await.map_err(transient)?;
        Ok(summary)
    }
}
