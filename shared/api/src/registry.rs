//! The model registry (`/v1/models/{model}/…`): declare a version and get presigned upload URLs
//! (bodies through Lambda cap at 6 MB; models don't), commit it (checksums, ONNX validation,
//! ONNX Runtime as the final proof), list, get, delete, and move aliases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use lmaas_core::acl::{authorize, Access, Acl};
use lmaas_core::manifest::{FileEntry, Task, MODEL_FILE};
use lmaas_core::{AliasName, Error, Manifest, ModelName, ModelResolver, ModelState, Principal, RegistryStore, Version};
use lmaas_engine::{EmbeddingConfig, ExecutionProviders, GenerationConfig, LoadedModel};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::response::json;

/// How long a presigned upload URL stays valid.
const UPLOAD_TTL: Duration = Duration::from_secs(15 * 60);
/// Files a version may declare: enough for a model, its tokenizer, its config and external data.
const MAX_FILES: usize = 16;
/// Largest file a version may declare.
const MAX_FILE_BYTES: u64 = 8 << 30;

/// Registry operations over the store; the models function serves them.
pub struct Registry {
    store: Arc<dyn RegistryStore>,
    providers: ExecutionProviders,
    scratch: PathBuf,
    limits: lmaas_onnx::ValidationLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutVersionBody {
    files: BTreeMap<String, FileEntry>,
    task: Task,
    #[serde(default)]
    config: Value,
    #[serde(default)]
    acl: Acl,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutAliasBody {
    version: Version,
}

impl Registry {
    pub fn new(
        store: Arc<dyn RegistryStore>,
        providers: ExecutionProviders,
        scratch: PathBuf,
        max_model_bytes: u64,
    ) -> Self {
        let limits = lmaas_onnx::ValidationLimits { max_model_bytes, ..Default::default() };
        Registry { store, providers, scratch, limits }
    }

    /// `PUT /v1/models/{model}/versions/{version}`: records a pending version owned by the
    /// caller's tenant and answers 201 with one presigned PUT URL per declared file.
    pub async fn put_version(
        &self,
        principal: &Principal,
        name: &ModelName,
        version: Version,
        body: &[u8],
    ) -> Result<Response<Bytes>, Error> {
        let body: PutVersionBody = serde_json::from_slice(body)
            .map_err(|e| Error::bad_request(format!("invalid version declaration: {e}")))?;
        check_files(&body.files)?;
        self.check_name_is_ours(principal, name).await?;
        if let Some(existing) = self.store.manifest(name, version).await.map_err(store_error)? {
            if existing.state == ModelState::Ready {
                return Err(Error::Conflict(format!("model '{name}' version {version} already exists and is ready")));
            }
        }
        let mut manifest = Manifest::ready(name.clone(), version, body.task, body.files, vec![], vec![]);
        manifest.state = ModelState::Pending;
        manifest.tenant = Some(principal.tenant.clone());
        manifest.config = body.config;
        manifest.acl = body.acl;
        manifest.created_at = lmaas_core::time::now_rfc3339();
        self.store.put_manifest(&manifest, false).await.map_err(store_error)?;
        let expires_at = lmaas_core::time::rfc3339(lmaas_core::time::now_seconds() + UPLOAD_TTL.as_secs());
        let mut uploads = serde_json::Map::new();
        for (file, entry) in &manifest.files {
            let url =
                self.store.presign_upload(name, version, file, entry.size, UPLOAD_TTL).await.map_err(store_error)?;
            uploads.insert(file.clone(), json!({ "url": url, "expires_at": expires_at }));
        }
        tracing::info!(model = %name, %version, files = manifest.files.len(), "version declared");
        Ok(json(
            StatusCode::CREATED,
            &json!({ "name": name, "version": version, "state": "pending", "uploads": uploads }),
        ))
    }

    /// `POST …/commit`: every file present with its declared size and sha256, the model valid
    /// and loadable by ONNX Runtime, then ready and `latest`; otherwise rejected, with every
    /// problem named (422). Committing a ready version again answers its manifest.
    pub async fn commit(
        &self,
        principal: &Principal,
        resolver: &ModelResolver,
        name: &ModelName,
        version: Version,
    ) -> Result<Response<Bytes>, Error> {
        let mut manifest = self.owned_manifest(principal, name, version).await?;
        if manifest.state == ModelState::Ready {
            return Ok(json(StatusCode::OK, &manifest_json(&manifest)));
        }
        let scratch = self.scratch.join(format!("commit-{}-{}-{}", name, version, random_suffix()));
        let outcome = self.check_version(&manifest, &scratch).await;
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        match outcome {
            Ok(checked) => {
                manifest.state = ModelState::Ready;
                manifest.inputs = checked.inputs;
                manifest.outputs = checked.outputs;
                if let Some(task) = checked.task_config {
                    if !manifest.config.is_object() {
                        manifest.config = json!({});
                    }
                    manifest.config["task"] = task;
                }
                manifest.problems.clear();
                self.store.put_manifest(&manifest, false).await.map_err(store_error)?;
                self.store.put_alias(name, &AliasName::latest(), version).await.map_err(store_error)?;
                resolver.forget(name);
                tracing::info!(model = %name, %version, "version committed");
                Ok(json(StatusCode::OK, &manifest_json(&manifest)))
            }
            Err(problems) => {
                manifest.state = ModelState::Rejected;
                manifest.problems = problems.clone();
                self.store.put_manifest(&manifest, false).await.map_err(store_error)?;
                tracing::warn!(model = %name, %version, problems = problems.len(), "version rejected");
                Err(Error::InvalidModel(format!(
                    "model '{name}' version {version} was rejected: {}",
                    problems.join("; ")
                )))
            }
        }
    }

    /// `GET /v1/models` (OpenAI): every model whose `latest` version the caller may read.
    pub async fn list_models(&self, principal: &Principal, resolver: &ModelResolver) -> Result<Response<Bytes>, Error> {
        let mut data = Vec::new();
        for name in self.store.models().await.map_err(store_error)? {
            let reference =
                lmaas_core::ModelRef { name: name.clone(), tag: lmaas_core::Tag::Alias(AliasName::latest()) };
            let Ok(manifest) = resolver.resolve(&reference).await else { continue };
            if authorize(principal, &manifest, Access::Read).is_ok() {
                data.push(json!({
                    "id": name,
                    "object": "model",
                    "created": lmaas_core::time::epoch_seconds(&manifest.created_at),
                    "owned_by": manifest.tenant.as_deref().unwrap_or("lmaas"),
                }));
            }
        }
        Ok(json(StatusCode::OK, &json!({ "object": "list", "data": data })))
    }

    /// `GET /v1/models/{model}/versions`: the versions the caller may read, with aliases.
    pub async fn list_versions(&self, principal: &Principal, name: &ModelName) -> Result<Response<Bytes>, Error> {
        let mut data = Vec::new();
        for version in self.store.versions(name).await.map_err(store_error)? {
            if let Some(manifest) = self.store.manifest(name, version).await.map_err(store_error)? {
                if authorize(principal, &manifest, Access::Read).is_ok() {
                    data.push(manifest_json(&manifest));
                }
            }
        }
        if data.is_empty() {
            return Err(Error::not_found(format!("model '{name}' does not exist")));
        }
        let aliases: serde_json::Map<String, Value> = self
            .store
            .aliases(name)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|(alias, version)| (alias.as_str().to_string(), json!(version)))
            .collect();
        Ok(json(StatusCode::OK, &json!({ "object": "list", "data": data, "aliases": aliases })))
    }

    /// `GET /v1/models/{model}/versions/{version}`: the manifest, in any state.
    pub async fn get_version(
        &self,
        principal: &Principal,
        name: &ModelName,
        version: Version,
    ) -> Result<Response<Bytes>, Error> {
        let manifest =
            self.store.manifest(name, version).await.map_err(store_error)?.ok_or_else(|| missing(name, version))?;
        authorize(principal, &manifest, Access::Read).map_err(|_| missing(name, version))?;
        Ok(json(StatusCode::OK, &manifest_json(&manifest)))
    }

    /// `DELETE /v1/models/{model}/versions/{version}[?force=true]`: refused (409) while an alias
    /// points at the version, unless forced, which removes those aliases too.
    pub async fn delete_version(
        &self,
        principal: &Principal,
        resolver: &ModelResolver,
        name: &ModelName,
        version: Version,
        force: bool,
    ) -> Result<Response<Bytes>, Error> {
        self.owned_manifest(principal, name, version).await?;
        let pointing: Vec<AliasName> = self
            .store
            .aliases(name)
            .await
            .map_err(store_error)?
            .into_iter()
            .filter(|(_, v)| *v == version)
            .map(|(alias, _)| alias)
            .collect();
        if !pointing.is_empty() && !force {
            let names: Vec<&str> = pointing.iter().map(|a| a.as_str()).collect();
            return Err(Error::Conflict(format!(
                "aliases {} point at version {version}; move them first or delete with ?force=true",
                names.join(", ")
            )));
        }
        for alias in &pointing {
            self.store.delete_alias(name, alias).await.map_err(store_error)?;
        }
        self.store.delete_version(name, version).await.map_err(store_error)?;
        resolver.forget(name);
        tracing::info!(model = %name, %version, forced = force, "version deleted");
        Ok(json(StatusCode::OK, &json!({ "name": name, "version": version, "deleted": true })))
    }

    /// `PUT /v1/models/{model}/aliases/{alias}` `{version}`: points an alias at a ready version.
    pub async fn put_alias(
        &self,
        principal: &Principal,
        resolver: &ModelResolver,
        name: &ModelName,
        alias: &AliasName,
        body: &[u8],
    ) -> Result<Response<Bytes>, Error> {
        let body: PutAliasBody =
            serde_json::from_slice(body).map_err(|e| Error::bad_request(format!("invalid alias body: {e}")))?;
        let manifest = self.owned_manifest(principal, name, body.version).await?;
        if manifest.state != ModelState::Ready {
            return Err(Error::Conflict(format!("version {} is {:?}, not ready", body.version, manifest.state)));
        }
        self.store.put_alias(name, alias, body.version).await.map_err(store_error)?;
        resolver.forget(name);
        Ok(json(StatusCode::OK, &json!({ "name": name, "alias": alias.as_str(), "version": body.version })))
    }

    /// The manifest of a version the caller may change; others' versions are 404 (or 403 when
    /// the caller can read them).
    async fn owned_manifest(
        &self,
        principal: &Principal,
        name: &ModelName,
        version: Version,
    ) -> Result<Manifest, Error> {
        let manifest =
            self.store.manifest(name, version).await.map_err(store_error)?.ok_or_else(|| missing(name, version))?;
        authorize(principal, &manifest, Access::Write).map_err(|e| match e {
            Error::NotFound(_) => missing(name, version),
            other => other,
        })?;
        Ok(manifest)
    }

    /// A model name belongs to the tenant that created its first version.
    async fn check_name_is_ours(&self, principal: &Principal, name: &ModelName) -> Result<(), Error> {
        let versions = self.store.versions(name).await.map_err(store_error)?;
        for version in versions {
            if let Some(manifest) = self.store.manifest(name, version).await.map_err(store_error)? {
                return authorize(principal, &manifest, Access::Write)
                    .map_err(|_| Error::Conflict(format!("the model name '{name}' is taken")));
            }
        }
        Ok(())
    }

    /// Downloads and checks every file; returns what the manifest learns, or every problem found.
    async fn check_version(&self, manifest: &Manifest, scratch: &Path) -> Result<Checked, Vec<String>> {
        let (name, version) = (&manifest.name, manifest.version);
        let internal = |e: String| {
            tracing::error!(model = %name, %version, error = %e, "commit could not read the upload");
            vec!["the uploaded files could not be read; try the commit again".to_string()]
        };
        tokio::fs::create_dir_all(scratch).await.map_err(|e| internal(e.to_string()))?;
        let mut problems = Vec::new();
        for (file, entry) in &manifest.files {
            match self.store.file_size(name, version, file).await.map_err(|e| internal(e.0))? {
                None => problems.push(format!("{file} was not uploaded")),
                Some(size) if size != entry.size => problems.push(format!(
                    "{file} is {size} bytes but was declared as {} (truncated or wrong file)",
                    entry.size
                )),
                Some(_) => {
                    let path = scratch.join(file);
                    let digest = self.store.download(name, version, file, &path).await.map_err(|e| internal(e.0))?;
                    if let Err(reason) = digest.check(file, entry.size, &entry.sha256) {
                        problems.push(reason);
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let model = tokio::fs::read(scratch.join(MODEL_FILE)).await.map_err(|e| internal(e.to_string()))?;
        let others = manifest.files.keys().filter(|f| *f != MODEL_FILE).cloned().collect();
        let onnx_problems = lmaas_onnx::validate(model.into(), &others, &self.limits);
        problems.extend(onnx_problems.into_iter().map(|p| format!("{} {}", p.file, p.message)));
        if manifest.files.contains_key("tokenizer.json") {
            let raw = tokio::fs::read(scratch.join("tokenizer.json")).await.map_err(|e| internal(e.to_string()))?;
            match serde_json::from_slice::<Value>(&raw) {
                Ok(tokenizer) if tokenizer.get("model").is_some_and(Value::is_object) => {}
                Ok(_) => problems.push("tokenizer.json is not a Hugging Face tokenizer (it has no 'model')".into()),
                Err(e) => problems.push(format!("tokenizer.json is not valid JSON: {e}")),
            }
        }
        let mut task_config = None;
        if manifest.files.contains_key("lmaas.json") {
            let raw = tokio::fs::read(scratch.join("lmaas.json")).await.map_err(|e| internal(e.to_string()))?;
            match serde_json::from_slice::<Value>(&raw) {
                Err(e) => problems.push(format!("lmaas.json is not valid JSON: {e}")),
                Ok(value) => {
                    let config = json!({ "task": value });
                    let checked = match manifest.task {
                        Task::Generation => match GenerationConfig::from_manifest_config(&config) {
                            Ok(Some(_)) => Ok(()),
                            Ok(None) => Err("a generation model needs a 'generation' section".to_string()),
                            Err(e) => Err(e),
                        },
                        _ => EmbeddingConfig::from_manifest_config(&config).map(|_| ()),
                    };
                    match checked {
                        Ok(()) => task_config = Some(value),
                        Err(e) => problems.push(format!("lmaas.json is invalid: {e}")),
                    }
                }
            }
        }
        if manifest.task == Task::Embeddings && !manifest.files.contains_key("tokenizer.json") {
            problems.push("an embeddings model needs a tokenizer.json".into());
        }
        if manifest.task == Task::Generation {
            for file in ["tokenizer.json", "lmaas.json"] {
                if !manifest.files.contains_key(file) {
                    problems
                        .push(format!("a generation model needs a {file} (lmaas.json with its 'generation' section)"));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        // The final proof: ONNX Runtime creates a session from it.
        let model_file = scratch.join(MODEL_FILE);
        let providers = self.providers.clone();
        let loaded = tokio::task::spawn_blocking(move || LoadedModel::load(&model_file, &providers, 0))
            .await
            .map_err(|e| internal(e.to_string()))?
            .map_err(|e| vec![format!("the model cannot be loaded: {e}")])?;
        if manifest.task == Task::Generation {
            loaded.check_decoder().map_err(|e| vec![format!("model.onnx {e}")])?;
        }
        let (inputs, outputs) = loaded
            .signature()
            .map_err(|e| vec![format!("model.onnx has an input or output lmaas cannot serve: {e}")])?;
        Ok(Checked { inputs, outputs, task_config })
    }
}

/// What a successful check adds to the manifest.
struct Checked {
    inputs: Vec<lmaas_core::TensorSpec>,
    outputs: Vec<lmaas_core::TensorSpec>,
    /// `lmaas.json`, kept as the manifest's `config.task`.
    task_config: Option<Value>,
}

fn check_files(files: &BTreeMap<String, FileEntry>) -> Result<(), Error> {
    if !files.contains_key(MODEL_FILE) {
        return Err(Error::bad_request("files must include model.onnx"));
    }
    if files.len() > MAX_FILES {
        return Err(Error::bad_request(format!("a version has at most {MAX_FILES} files")));
    }
    for (file, entry) in files {
        let plain = !file.is_empty()
            && file.len() <= 128
            && !file.starts_with('.')
            && file.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !plain {
            return Err(Error::bad_request(format!(
                "files: '{}' is not a plain file name (letters, digits, '.', '_', '-'; no folders)",
                file.chars().take(80).collect::<String>()
            )));
        }
        if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::bad_request(format!("files.{file}.sha256 must be 64 hex digits")));
        }
        if entry.size == 0 || entry.size > MAX_FILE_BYTES {
            return Err(Error::bad_request(format!("files.{file}.size must be between 1 and {MAX_FILE_BYTES} bytes")));
        }
    }
    Ok(())
}

fn manifest_json(manifest: &Manifest) -> Value {
    serde_json::to_value(manifest).expect("a manifest serializes")
}

fn missing(name: &ModelName, version: Version) -> Error {
    Error::not_found(format!("model '{name}' has no version {version}"))
}

fn store_error(e: lmaas_core::StoreError) -> Error {
    tracing::error!(error = %e, "model store failed");
    Error::Unavailable("the model store is unavailable right now".into())
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    hex_string(&bytes)
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_files_must_be_plain_names_with_real_checksums() {
        let entry = |sha: &str, size| FileEntry { sha256: sha.into(), size };
        let ok = "a".repeat(64);
        let files = |name: &str, e: FileEntry| -> BTreeMap<String, FileEntry> {
            [("model.onnx".to_string(), entry(&ok, 1)), (name.to_string(), e)].into()
        };
        assert!(check_files(&files("weights.bin", entry(&ok, 10))).is_ok());
        assert!(check_files(&[("x".to_string(), entry(&ok, 1))].into())
            .unwrap_err()
            .to_string()
            .contains("model.onnx"));
        for bad in ["../up", "dir/file", ".hidden", "sp ace"] {
            assert!(
                check_files(&files(bad, entry(&ok, 1))).unwrap_err().to_string().contains("plain file name"),
                "{bad}"
            );
        }
        assert!(check_files(&files("w.bin", entry("xyz", 1))).unwrap_err().to_string().contains("64 hex"));
        assert!(check_files(&files("w.bin", entry(&ok, 0))).unwrap_err().to_string().contains("size"));
    }
}
