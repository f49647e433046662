//! Handler overhead vs raw ONNX Runtime, side by side in one run, and cold start.
//!
//! For `mlp`, `minilm` and `minilm-int8` (quantized by lmaas) at batch 1, 8 and 32 it times the
//! infer service in process (request bytes → response bytes: routing, validation, the cached
//! session, encoding) against a raw `session.run` on the same inputs, on the very session the
//! service loaded (tensor creation and output copy included, as any caller needs). One session
//! for both sides: two sessions of one model run a few percent apart depending on where each
//! one's weights land in memory (the "two sessions" row measures that), which is not the
//! handler's overhead. It prints p50/p99 and the ratio, for JSON and for binary tensor data.
//! With `AWS_ENDPOINT_URL` and `LMAAS_BUCKET` set (make bench does), it also measures cold start:
//! a fresh process → first answer, the model fetched from the emulator.
//!
//! Run: `make bench` (or `cargo bench -p lmaas-api --bench handler` after `make setup`). Naming
//! models (`cargo bench -p lmaas-api --bench handler -- minilm-int8`) times only their rows, e.g.
//! under a profiler.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lmaas_api::{InferConfig, InferService};
use lmaas_core::auth::{api_key_hash, Authenticator, KeyRecord, KeyStore, MemoryKeyStore};
use lmaas_core::manifest::{FileEntry, Task};
use lmaas_core::{DataType, Manifest, MemoryModelStore, ModelName, Scope, TensorSpec, Version};
use lmaas_engine::Runtime;
use ort::session::Session;
use ort::value::Tensor;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const BUDGET_PER_SIDE: Duration = Duration::from_millis(2500);
const MIN_ITERATIONS: usize = 30;

fn main() {
    if let Some(model) = std::env::args().skip_while(|a| a != "--cold-start-child").nth(1) {
        return cold_start_child(&model);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("handler = lmaas infer service in process (request bytes -> response bytes); raw = ort session.run on the session the service loaded");
    println!(
        "{:<8} {:>5} {:<6} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "model", "batch", "body", "raw p50", "raw p99", "lmaas p50", "lmaas p99", "p50 x"
    );
    quantized_minilm();
    const MODELS: [&str; 3] = ["mlp", "minilm", "minilm-int8"];
    let named: Vec<String> = std::env::args().filter(|a| MODELS.contains(&a.as_str())).collect();
    for model in MODELS.into_iter().filter(|m| named.is_empty() || named.iter().any(|n| n == m)) {
        let service = runtime.block_on(service_for(model));
        let loaded = runtime.block_on(service.loaded_model(&lmaas_core::ModelRef::parse(model).unwrap())).unwrap();
        let raw = |inputs: &[(String, Vec<usize>, Data)]| loaded.with_session(|s| run_raw(s, inputs)).unwrap();
        for batch in [1, 8, 32] {
            let inputs = inputs(model, batch);
            for binary in [false, true] {
                let body = request_body(&inputs, binary);
                let request = || {
                    let mut builder = http::Request::post(format!("/v2/models/{model}/infer"))
                        .header("authorization", format!("Bearer {BENCH_KEY}"));
                    if let Some(length) = body.1 {
                        builder = builder.header("inference-header-content-length", length);
                    }
                    builder.body(Bytes::from(body.0.clone())).unwrap()
                };
                // Warm both paths.
                let first = runtime.block_on(service.handle(request()));
                assert_eq!(first.status(), 200, "{}", String::from_utf8_lossy(first.body()));
                raw(&inputs);
                let (raw_times, handler_times) = interleaved(
                    || {
                        std::hint::black_box(raw(&inputs));
                    },
                    || {
                        let response = runtime.block_on(service.handle(request()));
                        assert_eq!(response.status(), 200);
                    },
                );
                let (r50, r99, h50, h99) = (
                    pct(&raw_times, 50.0),
                    pct(&raw_times, 99.0),
                    pct(&handler_times, 50.0),
                    pct(&handler_times, 99.0),
                );
                println!(
                    "{model:<8} {batch:>5} {:<6} {:>10} {:>10} {:>10} {:>10} {:>8.3}",
                    if binary { "binary" } else { "json" },
                    ms(r50),
                    ms(r99),
                    ms(h50),
                    ms(h99),
                    h50.as_secs_f64() / r50.as_secs_f64()
                );
                if !binary && batch == 1 {
                    // The same JSON answer against a raw run that writes its output as JSON too,
                    // as a service by hand would (serde_json): JSON text is the payload's cost,
                    // not the handler's.
                    let (raw_json_times, handler_times) = interleaved(
                        || {
                            std::hint::black_box(serde_json::to_vec(&raw(&inputs)).unwrap());
                        },
                        || {
                            let response = runtime.block_on(service.handle(request()));
                            assert_eq!(response.status(), 200);
                        },
                    );
                    let (r50, h50) = (pct(&raw_json_times, 50.0), pct(&handler_times, 50.0));
                    println!(
                        "{model:<8} {batch:>5} {:<6} {:>10} {:>10} {:>10} {:>10} {:>8.3}  (raw = session.run + serde_json::to_vec of the output)",
                        "json",
                        ms(r50),
                        ms(pct(&raw_json_times, 99.0)),
                        ms(h50),
                        ms(pct(&handler_times, 99.0)),
                        h50.as_secs_f64() / r50.as_secs_f64()
                    );
                }
            }
        }
    }
    if !named.is_empty() {
        return;
    }
    noise_floor();
    json_encoding_table();
    embeddings_table(&runtime);
    if std::env::var_os("AWS_ENDPOINT_URL").is_some() && std::env::var_os("LMAAS_BUCKET").is_some() {
        cold_start_table();
    } else {
        println!("\ncold start: skipped (set AWS_ENDPOINT_URL and LMAAS_BUCKET; `make bench` does)");
    }
}

/// Two raw sessions of the same model, one per side: how far apart two sessions land on this
/// machine in this run (where each one's weights and pool thread landed), which is why the rows
/// above give both sides one session.
fn noise_floor() {
    let (mut first, mut second) = (raw_session("minilm-int8"), raw_session("minilm-int8"));
    let inputs = inputs("minilm-int8", 1);
    let (a, b) = interleaved(
        || {
            std::hint::black_box(run_raw(&mut first, &inputs));
        },
        || {
            std::hint::black_box(run_raw(&mut second, &inputs));
        },
    );
    let ratio = pct(&b, 50.0).as_secs_f64() / pct(&a, 50.0).as_secs_f64();
    println!("two sessions: raw vs a second raw session of the same model, minilm-int8 batch 1: p50 x {ratio:.3}");
}

/// The JSON text of MiniLM's output (its `last_hidden_state`) as the infer service writes it vs
/// `serde_json::to_vec` of the same floats, what a service written by hand would do: text that
/// reads back as the same floats either way, nine digits from lmaas (float_text.rs tests it) and
/// the shortest from serde_json.
fn json_encoding_table() {
    println!("\njson encoding: lmaas tensor JSON vs serde_json::to_vec, minilm last_hidden_state");
    println!(
        "{:<8} {:>8} {:>12} {:>12} {:>8} {:>12} {:>12}",
        "batch", "floats", "serde p50", "lmaas p50", "p50 x", "serde bytes", "lmaas bytes"
    );
    let mut session = raw_session("minilm");
    for batch in [1, 8, 32] {
        let floats = run_raw(&mut session, &inputs("minilm", batch));
        let tensor = lmaas_core::Tensor {
            name: "last_hidden_state".into(),
            datatype: DataType::Fp32,
            shape: vec![floats.len()],
            data: lmaas_core::TensorData::Raw(floats.iter().flat_map(|v| v.to_le_bytes()).collect()),
        };
        let (serde_times, lmaas_times) = interleaved(
            || {
                std::hint::black_box(serde_json::to_vec(&floats).unwrap());
            },
            || {
                // As encode_response does: one allocation sized by the hint.
                let mut body = Vec::with_capacity(tensor.json_size_hint());
                tensor.write_json_data(&mut body);
                std::hint::black_box(body);
            },
        );
        let (s50, l50) = (pct(&serde_times, 50.0), pct(&lmaas_times, 50.0));
        let mut body = Vec::new();
        tensor.write_json_data(&mut body);
        println!(
            "{batch:<8} {:>8} {:>10.1}us {:>10.1}us {:>8.3} {:>12} {:>12}",
            floats.len(),
            s50.as_secs_f64() * 1e6,
            l50.as_secs_f64() * 1e6,
            l50.as_secs_f64() / s50.as_secs_f64(),
            serde_json::to_vec(&floats).unwrap().len(),
            body.len()
        );
    }
}

/// Alternates the two sides in small blocks so drift on a shared machine hits both alike.
fn interleaved(mut raw: impl FnMut(), mut handler: impl FnMut()) -> (Vec<Duration>, Vec<Duration>) {
    let (mut raw_times, mut handler_times) = (Vec::new(), Vec::new());
    let started = Instant::now();
    while started.elapsed() < BUDGET_PER_SIDE * 2 || raw_times.len() < MIN_ITERATIONS {
        for _ in 0..5 {
            let t = Instant::now();
            raw();
            raw_times.push(t.elapsed());
            let t = Instant::now();
            handler();
            handler_times.push(t.elapsed());
        }
    }
    (raw_times, handler_times)
}

fn pct(times: &[Duration], p: f64) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3}ms", d.as_secs_f64() * 1e3)
}

fn sample_dir(model: &str) -> PathBuf {
    let lmaas = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.lmaas");
    match model {
        "minilm-int8" => lmaas.join("bench/minilm-int8"),
        _ => lmaas.join("samples").join(model),
    }
}

/// MiniLM quantized by lmaas (int8, the defaults), made once into .lmaas/bench/minilm-int8.
fn quantized_minilm() {
    let dir = sample_dir("minilm-int8");
    if dir.join("model.onnx").exists() {
        return;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let source = sample_dir("minilm").join("model.onnx");
    let request = lmaas_engine::optimize::QuantizeRequest::new(lmaas_onnx::quantize::Scheme::Int8);
    let calibration = lmaas_engine::optimize::default_calibration();
    let task = serde_json::from_slice(&std::fs::read(sample_dir("minilm").join("lmaas.json")).unwrap()).unwrap();
    lmaas_engine::optimize::quantize_model(&source, &dir, &request, &task, Some(&calibration), &mut |_, _, _| true)
        .unwrap();
    std::fs::copy(sample_dir("minilm").join("lmaas.json"), dir.join("lmaas.json")).unwrap();
}

fn manifest_for(model: &str, files: &[(&str, Vec<u8>)]) -> Manifest {
    let (inputs, outputs) = match model {
        "mlp" => (vec![spec("input", DataType::Fp32, &[-1, 4])], vec![spec("output", DataType::Fp32, &[-1, 3])]),
        _ => (
            ["input_ids", "attention_mask", "token_type_ids"]
                .iter()
                .map(|n| spec(n, DataType::Int64, &[-1, -1]))
                .collect(),
            vec![spec("last_hidden_state", DataType::Fp32, &[-1, -1, 384])],
        ),
    };
    let entries = files
        .iter()
        .map(|(name, bytes)| {
            (name.to_string(), FileEntry { sha256: hex::encode(Sha256::digest(bytes)), size: bytes.len() as u64 })
        })
        .collect();
    let task = if model.starts_with("minilm") { Task::Embeddings } else { Task::Tensor };
    let mut manifest =
        Manifest::ready(ModelName::parse(model).unwrap(), Version::new(1).unwrap(), task, entries, inputs, outputs);
    if let Ok(config) = std::fs::read(sample_dir(model).join("lmaas.json")) {
        manifest.config = json!({ "task": serde_json::from_slice::<Value>(&config).unwrap() });
    }
    manifest
}

fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec { name: name.into(), datatype, shape: shape.to_vec() }
}

async fn service_for(model: &str) -> InferService {
    let files: Vec<(&str, Vec<u8>)> = ["model.onnx", "tokenizer.json"]
        .into_iter()
        .filter_map(|f| std::fs::read(sample_dir(model).join(f)).ok().map(|bytes| (f, bytes)))
        .collect();
    assert!(!files.is_empty(), "run `make setup` first to build the samples");
    let manifest = manifest_for(model, &files);
    let store = MemoryModelStore::default();
    store.put_alias(&manifest.name, &lmaas_core::AliasName::latest(), manifest.version);
    for (file, bytes) in files {
        store.put_file(&manifest.name, manifest.version, file, bytes);
    }
    store.put_manifest(manifest);
    let cache_dir = std::env::temp_dir().join(format!("lmaas-bench-{}", std::process::id()));
    let config = InferConfig::from_lookup(|name| match name {
        "LMAAS_BUCKET" => Some("bench".into()),
        "LMAAS_MODEL_CACHE_DIR" => Some(cache_dir.display().to_string()),
        _ => None,
    })
    .unwrap();
    let keys = MemoryKeyStore::default();
    keys.put_key(
        &api_key_hash(BENCH_KEY),
        &KeyRecord {
            principal: "bench".into(),
            tenant: "bench".into(),
            scopes: [Scope::Admin].into(),
            created_at: 0,
            expires_at: None,
            revoked: false,
        },
    )
    .await
    .unwrap();
    let authenticator = Authenticator::new(Arc::new(keys), None, Duration::from_secs(30));
    InferService::new(Arc::new(store), authenticator, config)
}

/// The in-process service authenticates like the deployed one (an API key, cached after first use).
const BENCH_KEY: &str = "lmk_bench0000000000000000000000000000000000000000000000000000000000";

/// Named inputs: (name, shape, data) with FP32 for mlp and INT64 token tensors for minilm.
enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

fn inputs(model: &str, batch: usize) -> Vec<(String, Vec<usize>, Data)> {
    if model == "mlp" {
        let data = (0..batch * 4).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect();
        return vec![("input".into(), vec![batch, 4], Data::F32(data))];
    }
    // "A man is eating food." as the fixture tokenized it, repeated for the batch.
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../samples/fixtures/minilm_batch1.json"),
        )
        .unwrap(),
    )
    .unwrap();
    fixture["request"]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|input| {
            let row: Vec<i64> = input["data"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            let data = row.iter().copied().cycle().take(row.len() * batch).collect();
            (input["name"].as_str().unwrap().to_string(), vec![batch, row.len()], Data::I64(data))
        })
        .collect()
}

/// The request body, and the JSON header's length when tensor data is binary.
fn request_body(inputs: &[(String, Vec<usize>, Data)], binary: bool) -> (Vec<u8>, Option<usize>) {
    let mut tail = Vec::new();
    let described: Vec<Value> = inputs
        .iter()
        .map(|(name, shape, data)| {
            let (datatype, values, bytes): (&str, Value, Vec<u8>) = match data {
                Data::F32(v) => ("FP32", json!(v), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::I64(v) => ("INT64", json!(v), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            if binary {
                let entry = json!({"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": bytes.len()}});
                tail.extend_from_slice(&bytes);
                entry
            } else {
                json!({"name": name, "datatype": datatype, "shape": shape, "data": values})
            }
        })
        .collect();
    let mut header = json!({"inputs": described});
    if binary {
        header["parameters"] = json!({"binary_data_output": true});
    }
    let mut body = serde_json::to_vec(&header).unwrap();
    let length = body.len();
    body.extend_from_slice(&tail);
    (body, binary.then_some(length))
}

/// A raw session with the same session options as lmaas's sessions.
fn raw_session(model: &str) -> Session {
    let runtime = Runtime::get().expect("ONNX Runtime");
    runtime.session_builder().unwrap().commit_from_file(sample_dir(model).join("model.onnx")).unwrap()
}

fn run_raw(session: &mut Session, inputs: &[(String, Vec<usize>, Data)]) -> Vec<f32> {
    let values: Vec<(String, ort::value::DynValue)> = inputs
        .iter()
        .map(|(name, shape, data)| {
            let value = match data {
                Data::F32(v) => Tensor::from_array((shape.clone(), v.clone())).unwrap().into_dyn(),
                Data::I64(v) => Tensor::from_array((shape.clone(), v.clone())).unwrap().into_dyn(),
            };
            (name.clone(), value)
        })
        .collect();
    let outputs = session.run(values).unwrap();
    let (_, data) = outputs[0].try_extract_tensor::<f32>().unwrap();
    data.to_vec()
}

/// `/v1/embeddings` in process (JSON in, JSON floats out, tokenization included) vs raw tokenize +
/// `session.run` + mean pooling + normalization, as a user of ORT would write it.
fn embeddings_table(runtime: &tokio::runtime::Runtime) {
    const SENTENCES: [&str; 8] = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "A man is riding a horse.",
        "A woman is playing violin.",
        "Two men pushed carts through the woods.",
        "A man is riding a white horse on an enclosed ground.",
        "A monkey is playing drums.",
    ];
    println!("\nembeddings: lmaas /v1/embeddings in process vs raw tokenize + session.run + pooling (minilm)");
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "inputs", "raw p50", "raw p99", "lmaas p50", "lmaas p99", "p50 x"
    );
    let service = runtime.block_on(service_for("minilm"));
    let loaded = runtime.block_on(service.loaded_model(&lmaas_core::ModelRef::parse("minilm").unwrap())).unwrap();
    let mut tokenizer = tokenizers::Tokenizer::from_file(sample_dir("minilm").join("tokenizer.json")).unwrap();
    tokenizer.with_padding(Some(tokenizers::PaddingParams::default()));
    tokenizer.with_truncation(Some(tokenizers::TruncationParams { max_length: 256, ..Default::default() })).unwrap();
    for count in [1, 8, 32] {
        let texts: Vec<&str> = SENTENCES.iter().copied().cycle().take(count).collect();
        let body = serde_json::to_vec(&json!({"model": "minilm", "input": texts, "encoding_format": "float"})).unwrap();
        let request = || {
            http::Request::post("/v1/embeddings")
                .header("authorization", format!("Bearer {BENCH_KEY}"))
                .body(Bytes::from(body.clone()))
                .unwrap()
        };
        let warm = runtime.block_on(service.handle(request()));
        assert_eq!(warm.status(), 200, "{}", String::from_utf8_lossy(warm.body()));
        let (raw_times, handler_times) = interleaved(
            || {
                std::hint::black_box(loaded.with_session(|s| raw_embed(s, &tokenizer, &texts)).unwrap());
            },
            || assert_eq!(runtime.block_on(service.handle(request())).status(), 200),
        );
        let (r50, r99, h50, h99) =
            (pct(&raw_times, 50.0), pct(&raw_times, 99.0), pct(&handler_times, 50.0), pct(&handler_times, 99.0));
        println!(
            "{count:<8} {:>10} {:>10} {:>10} {:>10} {:>8.3}",
            ms(r50),
            ms(r99),
            ms(h50),
            ms(h99),
            h50.as_secs_f64() / r50.as_secs_f64()
        );
    }
}

fn raw_embed(session: &mut Session, tokenizer: &tokenizers::Tokenizer, texts: &[&str]) -> Vec<Vec<f32>> {
    let encodings = tokenizer.encode_batch(texts.to_vec(), true).unwrap();
    let (batch, seq) = (encodings.len(), encodings[0].len());
    let column = |f: &dyn Fn(&tokenizers::Encoding) -> Vec<i64>| -> Vec<i64> { encodings.iter().flat_map(f).collect() };
    let ids = column(&|e| e.get_ids().iter().map(|&v| i64::from(v)).collect());
    let mask = column(&|e| e.get_attention_mask().iter().map(|&v| i64::from(v)).collect());
    let types = column(&|e| e.get_type_ids().iter().map(|&v| i64::from(v)).collect());
    let value = |data: Vec<i64>| Tensor::from_array((vec![batch, seq], data)).unwrap().into_dyn();
    let inputs =
        vec![("input_ids", value(ids)), ("attention_mask", value(mask.clone())), ("token_type_ids", value(types))];
    let outputs = session.run(inputs).unwrap();
    let (_, states) = outputs[0].try_extract_tensor::<f32>().unwrap();
    let hidden = states.len() / (batch * seq);
    let mut pooled =
        lmaas_engine::embeddings::pool(states, &mask, batch, seq, hidden, lmaas_engine::embeddings::Pooling::Mean);
    pooled.iter_mut().for_each(|v| lmaas_engine::embeddings::normalize(v));
    pooled
}

fn cold_start_table() {
    println!("\ncold start: new process -> first answer, model fetched from the emulator into an empty cache");
    println!("{:<8} {:>10} {:>12} {:>12}", "model", "total", "in process", "first call");
    let exe = std::env::current_exe().unwrap();
    for model in ["mlp", "minilm"] {
        let started = Instant::now();
        let output = std::process::Command::new(&exe).args(["--cold-start-child", model]).output().unwrap();
        let total = started.elapsed();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let child: Value = serde_json::from_slice(&output.stdout).expect("child timings");
        println!(
            "{model:<8} {:>10} {:>10.1}ms {:>10.1}ms",
            ms(total),
            child["in_process_ms"].as_f64().unwrap(),
            child["first_call_ms"].as_f64().unwrap()
        );
    }
}

/// A fresh process: config from env, S3 clients, an empty model cache, one request.
fn cold_start_child(model: &str) {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let cache_dir = tempfile_dir();
    std::env::set_var("LMAAS_MODEL_CACHE_DIR", &cache_dir);
    let service = runtime.block_on(InferService::from_env(InferConfig::from_env().unwrap())).unwrap();
    let (body, _) = request_body(&inputs(model, 1), false);
    let token = std::env::var("LMAAS_TOKEN").expect("LMAAS_TOKEN (make bench sets it)");
    let request = http::Request::post(format!("/v2/models/{model}/infer"))
        .header("authorization", format!("Bearer {token}"))
        .body(Bytes::from(body))
        .unwrap();
    let call = Instant::now();
    let response = runtime.block_on(service.handle(request));
    assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(response.body()));
    let first_call = call.elapsed();
    let _ = std::fs::remove_dir_all(&cache_dir);
    println!(
        "{}",
        json!({"in_process_ms": started.elapsed().as_secs_f64() * 1e3, "first_call_ms": first_call.as_secs_f64() * 1e3})
    );
}

fn tempfile_dir() -> PathBuf {
    std::env::temp_dir().join(format!("lmaas-cold-{}", std::process::id()))
}
