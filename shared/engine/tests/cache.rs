//! The model cache against real ONNX Runtime and the sample `mlp` model, with an in-memory store
//! that counts downloads.

use std::path::PathBuf;
use std::sync::Arc;

use lmaas_core::manifest::{FileEntry, Task};
use lmaas_core::{DataType, Error, Manifest, MemoryModelStore, ModelName, Tensor, TensorData, TensorSpec, Version};
use lmaas_engine::{CacheConfig, ExecutionProviders, ModelCache};
use sha2::{Digest, Sha256};

fn sample_model(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../.lmaas/samples/{name}/model.onnx"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run `make test` (it builds the samples)", path.display()))
}

fn manifest(name: &str, version: u32, bytes: &[u8], claimed_sha: Option<String>) -> Manifest {
    let sha256 = claimed_sha.unwrap_or_else(|| hex::encode(Sha256::digest(bytes)));
    let files = [("model.onnx".to_string(), FileEntry { sha256, size: bytes.len() as u64 })].into();
    let inputs = vec![TensorSpec { name: "input".into(), datatype: DataType::Fp32, shape: vec![-1, 4] }];
    let outputs = vec![TensorSpec { name: "output".into(), datatype: DataType::Fp32, shape: vec![-1, 3] }];
    Manifest::ready(
        ModelName::parse(name).unwrap(),
        Version::new(version).unwrap(),
        Task::Tensor,
        files,
        inputs,
        outputs,
    )
}

/// One row for the sample MLP.
fn mlp_input() -> Tensor {
    let input: Vec<u8> = [1f32, 2., 3., 4.].iter().flat_map(|f| f.to_le_bytes()).collect();
    Tensor { name: "input".into(), datatype: DataType::Fp32, shape: vec![1, 4], data: TensorData::Raw(input) }
}

fn cache(store: &MemoryModelStore, dir: &tempfile::TempDir, max_bytes: u64) -> Arc<ModelCache> {
    let config = CacheConfig { dir: dir.path().to_path_buf(), max_bytes, providers: ExecutionProviders::cpu() };
    Arc::new(ModelCache::new(Arc::new(store.clone()), config))
}

fn store_with(manifest: &Manifest, bytes: &[u8]) -> MemoryModelStore {
    let store = MemoryModelStore::default();
    store.put_manifest(manifest.clone());
    store.put_file(&manifest.name, manifest.version, "model.onnx", bytes.to_vec());
    store
}

#[tokio::test]
async fn concurrent_first_requests_load_once_and_a_warm_cache_never_downloads_again() {
    let bytes = sample_model("mlp");
    let m = manifest("mlp", 1, &bytes, None);
    let store = store_with(&m, &bytes);
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(&store, &dir, 1 << 30);
    let loads: Vec<_> = (0..8)
        .map(|_| {
            let (cache, m) = (cache.clone(), m.clone());
            tokio::spawn(async move { cache.get(&m).await })
        })
        .collect();
    let mut models = Vec::new();
    for load in loads {
        models.push(load.await.unwrap().unwrap());
    }
    assert!(models.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])), "one session shared by all");
    assert_eq!(store.downloads(), 1);
    for _ in 0..3 {
        cache.get(&m).await.unwrap();
    }
    assert_eq!(store.downloads(), 1, "warm requests download nothing");

    // A new process (empty memory cache) reuses the verified file on disk.
    let restarted = self::cache(&store, &dir, 1 << 30);
    restarted.get(&m).await.unwrap();
    assert_eq!(store.downloads(), 1, "the disk cache survives the session cache");
}

#[tokio::test]
async fn a_file_in_the_disk_cache_that_no_longer_matches_its_hash_is_downloaded_again() {
    let bytes = sample_model("mlp");
    let m = manifest("mlp", 1, &bytes, None);
    let store = store_with(&m, &bytes);
    let dir = tempfile::tempdir().unwrap();
    cache(&store, &dir, 1 << 30).get(&m).await.unwrap();
    // What a crash before the downloaded bytes reached the disk can leave: the right size, wrong bytes.
    let on_disk = walk(dir.path()).into_iter().find(|p| p.ends_with("model.onnx")).unwrap();
    std::fs::write(&on_disk, vec![0u8; bytes.len()]).unwrap();

    let restarted = cache(&store, &dir, 1 << 30);
    let model = restarted.get(&m).await.unwrap();
    assert_eq!(store.downloads(), 2, "the corrupt file was fetched again");
    assert_eq!(std::fs::read(&on_disk).unwrap(), bytes);
    assert_eq!(model.run(&[mlp_input()], &["output".to_string()]).unwrap()[0].shape, vec![1, 3]);
}

#[tokio::test]
async fn a_loaded_model_runs_on_onnx_runtime() {
    let bytes = sample_model("mlp");
    let m = manifest("mlp", 1, &bytes, None);
    let dir = tempfile::tempdir().unwrap();
    let model = cache(&store_with(&m, &bytes), &dir, 1 << 30).get(&m).await.unwrap();
    let outputs = model.run(&[mlp_input()], &["output".to_string()]).unwrap();
    assert_eq!(outputs[0].shape, vec![1, 3]);
    assert_eq!(model.execution_provider().as_str(), "cpu");
}

#[tokio::test]
async fn a_file_whose_checksum_does_not_match_is_deleted_and_never_loaded() {
    let bytes = sample_model("mlp");
    let m = manifest("mlp", 1, &bytes, Some("00".repeat(32)));
    let dir = tempfile::tempdir().unwrap();
    let err = cache(&store_with(&m, &bytes), &dir, 1 << 30).get(&m).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(ref msg) if msg.contains("failed verification")), "{err:?}");
    let leftovers: Vec<_> = walk(dir.path());
    assert!(leftovers.is_empty(), "no partial or unverified file stays: {leftovers:?}");
}

/// `manifest` with one more file in the store, under `claimed_sha` if given.
fn add_file(store: &MemoryModelStore, manifest: &mut Manifest, file: &str, bytes: &[u8], claimed_sha: Option<String>) {
    let sha256 = claimed_sha.unwrap_or_else(|| hex::encode(Sha256::digest(bytes)));
    manifest.files.insert(file.to_string(), FileEntry { sha256, size: bytes.len() as u64 });
    store.put_manifest(manifest.clone());
    store.put_file(&manifest.name, manifest.version, file, bytes.to_vec());
}

fn sample_tokenizer() -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.lmaas/samples/minilm/tokenizer.json")).unwrap()
}

#[tokio::test]
async fn files_download_side_by_side_and_one_that_fails_verification_fails_the_version_without_leftovers() {
    let bytes = sample_model("mlp");
    let mut m = manifest("mlp", 1, &bytes, None);
    let store = store_with(&m, &bytes);
    add_file(&store, &mut m, "tokenizer.json", &sample_tokenizer(), Some("00".repeat(32)));
    let dir = tempfile::tempdir().unwrap();
    let err = cache(&store, &dir, 1 << 30).get(&m).await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable(ref msg) if msg.contains("tokenizer.json failed verification")),
        "{err:?}"
    );
    assert_eq!(store.downloads(), 2, "both files were fetched");
    let names: Vec<String> = walk(dir.path()).iter().map(|p| p.file_name().unwrap().to_string_lossy().into()).collect();
    assert_eq!(names, ["model.onnx"], "the verified file stays for the retry; no partial or unverified file does");
}

#[tokio::test]
async fn the_tokenizer_loads_beside_the_session_and_a_broken_one_fails_the_load_by_name() {
    let bytes = sample_model("mlp");
    let mut m = manifest("mlp", 1, &bytes, None);
    let store = store_with(&m, &bytes);
    add_file(&store, &mut m, "tokenizer.json", &sample_tokenizer(), None);
    let dir = tempfile::tempdir().unwrap();
    let model = cache(&store, &dir, 1 << 30).get(&m).await.unwrap();
    let tokens = model.tokenize(&["A man is eating food.".to_string()], 16).unwrap();
    assert_eq!(tokens[0].first(), Some(&101), "MiniLM's tokenizer starts with [CLS]: {tokens:?}");

    let mut broken = manifest("mlp", 2, &bytes, None);
    let store = store_with(&broken, &bytes);
    add_file(&store, &mut broken, "tokenizer.json", b"{not json", None);
    let dir = tempfile::tempdir().unwrap();
    let err = cache(&store, &dir, 1 << 30).get(&broken).await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable(ref msg) if msg.contains("tokenizer.json could not be loaded")),
        "{err:?}"
    );
}

#[tokio::test]
async fn cuda_requested_without_a_gpu_library_falls_back_to_cpu_and_says_so() {
    let bytes = sample_model("mlp");
    let m = manifest("mlp", 1, &bytes, None);
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig {
        dir: dir.path().to_path_buf(),
        max_bytes: 1 << 30,
        providers: ExecutionProviders::parse("cuda,cpu").unwrap(),
    };
    let model = ModelCache::new(Arc::new(store_with(&m, &bytes)), config).get(&m).await.unwrap();
    assert_eq!(model.execution_provider().as_str(), "cpu");
}

#[tokio::test]
async fn the_least_recently_used_model_is_evicted_past_the_byte_budget() {
    let (mlp, dtypes) = (sample_model("mlp"), sample_model("dtypes"));
    let (a, b) = (manifest("a", 1, &mlp, None), manifest("b", 1, &dtypes, None));
    let store = store_with(&a, &mlp);
    store.put_manifest(b.clone());
    store.put_file(&b.name, b.version, "model.onnx", dtypes.clone());
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(&store, &dir, (mlp.len() + dtypes.len()) as u64 - 1);
    cache.get(&a).await.unwrap();
    cache.get(&b).await.unwrap();
    assert_eq!(cache.loaded_keys().len(), 1, "both do not fit the budget");
    cache.get(&b).await.unwrap();
    assert_eq!(store.downloads(), 2, "the newest stayed loaded");
    cache.get(&a).await.unwrap();
    assert_eq!(cache.loaded_keys().len(), 1);
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}
