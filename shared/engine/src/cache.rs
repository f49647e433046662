//! The model cache: S3 → local disk (verified, keyed by content hash) → sessions in memory
//! (least recently used first out, bounded by bytes). Concurrent first requests for a model share
//! one load; a warm process never downloads a model again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lmaas_core::store::FileDigest;
use lmaas_core::{Error, Manifest, ModelStore};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

use crate::{EngineError, ExecutionProviders, LoadedModel};

/// Where and how much to cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Folder for downloaded files (`LMAAS_MODEL_CACHE_DIR`).
    pub dir: PathBuf,
    /// Budget for loaded sessions, in bytes of model files (`LMAAS_MODEL_CACHE_BYTES`).
    pub max_bytes: u64,
    /// Providers to try, in order (`LMAAS_EXECUTION_PROVIDERS`).
    pub providers: ExecutionProviders,
}

type LoadResult = Result<Arc<LoadedModel>, Error>;

/// Loaded models by content key, most recently used last.
pub struct ModelCache {
    store: Arc<dyn ModelStore>,
    config: CacheConfig,
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    loaded: Vec<(String, Arc<LoadedModel>)>,
    loading: HashMap<String, Arc<OnceCell<LoadResult>>>,
}

impl CacheState {
    fn touch(&mut self, key: &str) -> Option<Arc<LoadedModel>> {
        let position = self.loaded.iter().position(|(k, _)| k == key)?;
        let entry = self.loaded.remove(position);
        let model = entry.1.clone();
        self.loaded.push(entry);
        Some(model)
    }

    fn insert(&mut self, key: String, model: Arc<LoadedModel>, max_bytes: u64) {
        if self.touch(&key).is_some() {
            return;
        }
        self.loaded.push((key, model));
        // The newest model stays even when it alone exceeds the budget: serving it is the point.
        while self.loaded.len() > 1 && self.loaded.iter().map(|(_, m)| m.bytes()).sum::<u64>() > max_bytes {
            let (evicted, model) = self.loaded.remove(0);
            tracing::info!(key = %evicted, bytes = model.bytes(), "evicting least recently used model session");
        }
    }
}

impl ModelCache {
    pub fn new(store: Arc<dyn ModelStore>, config: CacheConfig) -> Self {
        ModelCache { store, config, state: Mutex::default() }
    }

    /// The loaded model for a ready manifest, downloading and creating the session on first use.
    pub async fn get(&self, manifest: &Manifest) -> LoadResult {
        let key = cache_key(manifest);
        let cell = {
            let mut state = self.state.lock().expect("cache lock");
            if let Some(model) = state.touch(&key) {
                metrics::counter!(lmaas_core::metrics::MODEL_CACHE, "result" => "hit").increment(1);
                return Ok(model);
            }
            metrics::counter!(lmaas_core::metrics::MODEL_CACHE, "result" => "miss").increment(1);
            state.loading.entry(key.clone()).or_default().clone()
        };
        let result = cell.get_or_init(|| self.load(manifest, &key)).await.clone();
        let mut state = self.state.lock().expect("cache lock");
        if state.loading.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            state.loading.remove(&key);
        }
        if let Ok(model) = &result {
            state.insert(key, model.clone(), self.config.max_bytes);
        }
        result
    }

    /// Loads models before anything needs them (INIT, or a fleet host before it polls). A model
    /// that fails is logged and left for its first use to retry: one bad model must not take the
    /// process down for the others.
    /// Loads each referenced model whose task is one of `tasks` (the ones this process serves;
    /// one preload list can then be shared by every function of a deployment).
    pub async fn preload(
        &self,
        resolver: &lmaas_core::ModelResolver,
        references: &[lmaas_core::ModelRef],
        tasks: &[lmaas_core::manifest::Task],
    ) {
        // While the first model downloads (or, with nothing to preload, while the first request
        // is on its way).
        crate::Runtime::load_in_background();
        for reference in references {
            let loaded = async {
                let manifest = resolver.resolve(reference).await?;
                if !tasks.contains(&manifest.task) {
                    return Ok(None);
                }
                self.get(&manifest).await.map(Some)
            }
            .await;
            match loaded {
                Ok(Some(model)) => {
                    tracing::info!(model = %reference, execution_provider = %model.execution_provider(), "preloaded")
                }
                Ok(None) => tracing::debug!(model = %reference, "not preloaded: this function does not serve its task"),
                Err(e) => tracing::error!(model = %reference, error = %e, "preloading failed"),
            }
        }
    }

    /// Whether this version's session is loaded now.
    pub fn is_loaded(&self, manifest: &Manifest) -> bool {
        let key = cache_key(manifest);
        self.state.lock().expect("cache lock").loaded.iter().any(|(k, _)| *k == key)
    }

    /// Keys of the models currently loaded, least recently used first.
    pub fn loaded_keys(&self) -> Vec<String> {
        self.state.lock().expect("cache lock").loaded.iter().map(|(k, _)| k.clone()).collect()
    }

    async fn load(&self, manifest: &Manifest, key: &str) -> LoadResult {
        let label = format!("{}:{}", manifest.name, manifest.version);
        let folder = self.config.dir.join(key);
        let started = Instant::now();
        self.fetch_files(manifest, &folder).await.map_err(|e| {
            tracing::error!(model = %label, error = %e.detail, "fetching model files failed");
            Error::Unavailable(format!("model '{label}' could not be fetched: {}", e.reason))
        })?;
        let fetched = started.elapsed();
        let model_file = folder.join(lmaas_core::manifest::MODEL_FILE);
        let providers = self.config.providers.clone();
        let bytes = manifest.total_bytes();
        let (name, version) = (manifest.name.to_string(), manifest.version.to_string());
        metrics::histogram!(lmaas_core::metrics::MODEL_DOWNLOAD_DURATION, "model" => name.clone(), "version" => version.clone())
            .record(fetched.as_secs_f64());
        let loaded = tokio::task::spawn_blocking(move || {
            LoadedModel::load(&model_file, &providers, bytes).map(|m| m.with_identity(&name, &version))
        })
        .await
        .map_err(|e| Error::Internal(format!("session creation task failed: {e}")))?
        .map_err(|e| {
            tracing::error!(model = %label, error = %e, "creating the model session failed");
            match e {
                EngineError::Load(reason) => Error::Unavailable(format!("model '{label}' failed to load: {reason}")),
                other => other.into(),
            }
        })?;
        let session_seconds = (started.elapsed() - fetched).as_secs_f64();
        metrics::histogram!(
            lmaas_core::metrics::SESSION_CREATE_DURATION,
            "model" => manifest.name.to_string(),
            "version" => manifest.version.to_string(),
            "execution_provider" => loaded.execution_provider().as_str()
        )
        .record(session_seconds);
        tracing::info!(
            model = %label,
            fetch_ms = fetched.as_millis() as u64,
            session_ms = (started.elapsed() - fetched).as_millis() as u64,
            execution_provider = %loaded.execution_provider(),
            "model loaded"
        );
        Ok(Arc::new(loaded))
    }

    /// Makes every file of the version present in `folder`, verified against the manifest.
    async fn fetch_files(&self, manifest: &Manifest, folder: &Path) -> Result<(), FetchError> {
        let internal = |detail: String| FetchError { reason: "the model store or local disk failed".into(), detail };
        tokio::fs::create_dir_all(folder).await.map_err(|e| internal(format!("creating the cache folder: {e}")))?;
        if manifest.model_file().is_none() {
            return Err(FetchError::user("the version has no model.onnx".into()));
        }
        if let Some(file) =
            manifest.files.keys().find(|f| f.is_empty() || f.contains(['/', '\\']) || f.starts_with('.'))
        {
            return Err(FetchError::user(format!("file name '{file}' is not allowed")));
        }
        // Side by side: the tokenizer and config need not wait for the model's last byte. Every
        // download finishes (or fails and removes its partial file) before the first error is
        // returned.
        let fetches = manifest.files.iter().map(|(file, entry)| self.fetch_file(manifest, folder, file, entry));
        futures_util::future::join_all(fetches).await.into_iter().collect()
    }

    async fn fetch_file(
        &self,
        manifest: &Manifest,
        folder: &Path,
        file: &str,
        entry: &lmaas_core::manifest::FileEntry,
    ) -> Result<(), FetchError> {
        let internal = |detail: String| FetchError { reason: "the model store or local disk failed".into(), detail };
        let path = folder.join(file);
        if tokio::fs::metadata(&path).await.is_ok_and(|m| m.len() == entry.size) {
            // Downloads are not synced to disk, so a file here (left by this process, or by one
            // that crashed with the machine) is hashed again before it is trusted: 50-60 ms for
            // 90 MB, on the rare load from the disk cache, instead of a sync on every download.
            match file_digest(&path).await.map(|digest| digest.check(file, entry.size, &entry.sha256)) {
                Ok(Ok(())) => {
                    tracing::debug!(file, "model file found in the disk cache and verified");
                    return Ok(());
                }
                Ok(Err(mismatch)) => {
                    tracing::warn!(file, %mismatch, "model file in the disk cache is corrupt; downloading it again")
                }
                Err(e) => {
                    tracing::warn!(file, error = %e, "model file in the disk cache could not be read; downloading it again")
                }
            }
        }
        let partial = folder.join(format!(".{file}.{}.{}.part", std::process::id(), unique()));
        let downloaded = self.store.download(&manifest.name, manifest.version, file, &partial).await;
        let verified = match downloaded {
            Ok(digest) => digest.check(file, entry.size, &entry.sha256).map_err(FetchError::user),
            Err(e) => Err(internal(format!("downloading {file}: {e}"))),
        };
        if let Err(e) = verified {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        tokio::fs::rename(&partial, &path).await.map_err(|e| internal(format!("renaming {file} into place: {e}")))?;
        tracing::info!(file, bytes = entry.size, "model file downloaded and verified");
        Ok(())
    }
}

/// The content key of a version: a hash over its files' names and hashes, so versions with the
/// same content share a folder and a session.
fn cache_key(manifest: &Manifest) -> String {
    let mut hasher = Sha256::new();
    for (file, entry) in &manifest.files {
        hasher.update(file.as_bytes());
        hasher.update([0]);
        hasher.update(entry.sha256.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// Why files could not be fetched: `reason` is for the client, `detail` (paths, S3 keys, SDK
/// errors) for the logs only.
struct FetchError {
    reason: String,
    detail: String,
}

impl FetchError {
    fn user(reason: String) -> Self {
        FetchError { detail: reason.clone(), reason }
    }
}

/// A file's size and sha256 (hex), read in 1 MiB pieces.
pub async fn file_digest(path: &Path) -> std::io::Result<FileDigest> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buffer[..n]);
    }
    Ok(FileDigest { size, sha256: hex::encode(hasher.finalize()) })
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
