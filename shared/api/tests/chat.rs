//! The chat service in process and over the HTTP server mode, on the real SmolLM2 sample (fp32)
//! from an in-memory model store: server-sent events, limits, and what a disconnect does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use lmaas_api::{ChatService, InferConfig};
use lmaas_core::auth::{api_key_hash, Authenticator, KeyRecord, KeyStore, MemoryKeyStore};
use lmaas_core::manifest::{FileEntry, Task};
use lmaas_core::{Manifest, MemoryModelStore, ModelName, ModelRef, Scope, Version};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const KEY: &str = "lmk_chat00000000000000000000000000000000000000000000000000000000000";

fn sample_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.lmaas/samples/smollm2")
}

async fn service() -> Arc<ChatService> {
    let store = MemoryModelStore::default();
    let name = ModelName::parse("smollm2").unwrap();
    let version = Version::new(1).unwrap();
    let mut entries = std::collections::BTreeMap::new();
    for file in ["model.onnx", "tokenizer.json"] {
        let bytes = std::fs::read(sample_dir().join(file)).expect("make setup builds the smollm2 sample");
        entries.insert(
            file.to_string(),
            FileEntry { sha256: hex::encode(Sha256::digest(&bytes)), size: bytes.len() as u64 },
        );
        store.put_file(&name, version, file, bytes);
    }
    let mut manifest = Manifest::ready(name.clone(), version, Task::Generation, entries, vec![], vec![]);
    let task: Value = serde_json::from_slice(&std::fs::read(sample_dir().join("lmaas.json")).unwrap()).unwrap();
    manifest.config = json!({ "task": task });
    store.put_alias(&name, &lmaas_core::AliasName::latest(), version);
    store.put_manifest(manifest);
    let cache_dir = std::env::temp_dir().join(format!("lmaas-chat-test-{}", std::process::id()));
    let config = InferConfig::from_lookup(|name| match name {
        "LMAAS_BUCKET" => Some("test".into()),
        "LMAAS_MODEL_CACHE_DIR" => Some(cache_dir.display().to_string()),
        _ => None,
    })
    .unwrap();
    let keys = MemoryKeyStore::default();
    let record = KeyRecord {
        principal: "tester".into(),
        tenant: "test".into(),
        scopes: [Scope::Admin].into(),
        created_at: 0,
        expires_at: None,
        revoked: false,
    };
    keys.put_key(&api_key_hash(KEY), &record).await.unwrap();
    let authenticator = Authenticator::new(Arc::new(keys), None, Duration::from_secs(30));
    Arc::new(ChatService::new(Arc::new(store), authenticator, config))
}

fn post(path: &str, body: &Value) -> Request<Bytes> {
    Request::post(path)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap()
}

fn ask(content: &str) -> Value {
    json!({ "model": "smollm2", "messages": [{ "role": "user", "content": content }], "temperature": 0, "max_tokens": 24 })
}

/// The `data:` payloads of a server-sent event stream.
fn events(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("\n\n"), "events end with a blank line: {text:?}");
    text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").expect(e).to_string()).collect()
}

#[tokio::test]
async fn streamed_chunks_concatenate_to_the_whole_answer_with_usage_and_done() {
    let chat = service().await;
    let request = ask("Write a haiku about the sea.");
    let whole = chat.handle(post("/v1/chat/completions", &request)).await;
    assert_eq!(whole.status(), StatusCode::OK);
    let whole: Value = serde_json::from_slice(&whole.into_body().collect().await).unwrap();
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["finish_reason"], "length", "{whole}");
    assert_eq!(whole["usage"]["completion_tokens"], 24);

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({ "include_usage": true });
    let response = chat.handle(post("/v1/chat/completions", &streamed)).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = events(&response.into_body().collect().await);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, content);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], whole["usage"]);
}

#[tokio::test]
async fn limits_and_bad_models_are_client_errors_naming_what_was_wrong() {
    let chat = service().await;
    let error = |body: Value, path: &'static str| {
        let chat = chat.clone();
        async move {
            let response = chat.handle(post(path, &body)).await;
            let status = response.status();
            let body: Value = serde_json::from_slice(&response.into_body().collect().await).unwrap();
            (status, body["error"]["message"].as_str().unwrap_or_default().to_string())
        }
    };
    let long = "word ".repeat(2100);
    let (status, message) = error(ask(&long), "/v1/chat/completions").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("'messages'") && message.contains("context length of 2048 tokens"), "{message}");
    let (status, message) =
        error(json!({ "model": "smollm2", "prompt": "Hi", "max_tokens": 5000 }), "/v1/completions").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("'max_tokens'") && message.contains("1024"), "{message}");
    let (status, message) =
        error(json!({ "model": "smollm2", "prompt": long[..6000].to_string(), "max_tokens": 1000 }), "/v1/completions")
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("exceed the context length"), "{message}");
    let (status, _) = error(
        ask("hi").as_object().unwrap().clone().into_iter().chain([("model".to_string(), json!("nope"))]).collect(),
        "/v1/chat/completions",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, message) = error(json!({ "model": "smollm2", "messages": [] }), "/v1/chat/completions").await;
    assert_eq!((status, message.contains("'messages' is empty")), (StatusCode::BAD_REQUEST, true));
}

#[tokio::test]
async fn completions_answer_text_and_stop_at_max_tokens() {
    let chat = service().await;
    let response = chat
        .handle(post(
            "/v1/completions",
            &json!({ "model": "smollm2", "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0 }),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(&response.into_body().collect().await).unwrap();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(
        (body["choices"][0]["finish_reason"].as_str(), body["usage"]["completion_tokens"].as_u64()),
        (Some("length"), Some(3))
    );
    assert!(!body["choices"][0]["text"].as_str().unwrap().is_empty(), "{body}");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_stops_generation_over_http() {
    let chat = service().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    drop(listener);
    let server = chat.clone();
    tokio::spawn(async move {
        lmaas_api::server::serve_body(addr, "chat", move |request| {
            let server = server.clone();
            async move { server.handle(request).await }
        })
        .await
    });
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = reqwest::Client::new();
    let mut body = ask("Tell me a long story about a robot.");
    body["max_tokens"] = json!(1000);
    body["stream"] = json!(true);
    let started = Instant::now();
    let mut response = loop {
        match client.post(format!("http://{addr}/v1/chat/completions")).bearer_auth(KEY).json(&body).send().await {
            Ok(response) => break response,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let mut received = 0;
    while received < 3 {
        response.chunk().await.unwrap().expect("a chunk");
        received += 1;
    }
    let model = chat.loaded(&ModelRef::parse("smollm2").unwrap()).await.expect("loaded by the request");
    assert_eq!(model.active_sequences(), 1, "still generating while the client listens");
    drop(response);
    let deadline = Instant::now() + Duration::from_secs(20);
    while model.active_sequences() > 0 {
        assert!(Instant::now() < deadline, "generation did not stop after the client left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
