//! Text generation through the local stack: cargo lambda watch → the chat function (Lambda
//! response streaming) → SmolLM2 from S3 on the emulator → ONNX Runtime.

use lmaas_tests::{client, stack};
use serde_json::{json, Value};

#[tokio::test]
async fn the_official_openai_client_chats_and_streams_like_llama_cpp() {
    let s = stack();
    let output = std::process::Command::new(lmaas_tests::root().join(".lmaas/venv/bin/python"))
        .arg(lmaas_tests::root().join("tests/openai_chat.py"))
        .env("LMAAS_URL", &s.url)
        .env("LMAAS_TOKEN", s.admin_token())
        .env("LMAAS_ROOT", lmaas_tests::root())
        .output()
        .expect("running tests/openai_chat.py");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_streamed_chat_is_server_sent_events_ending_in_done() {
    let s = stack();
    let body = json!({
        "model": "smollm2:int4",
        "messages": [{"role": "user", "content": "What is 12 plus 30?"}],
        "temperature": 0, "max_tokens": 8, "stream": true,
    });
    let response = client()
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(s.admin_token())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert!(chunks.len() >= 3, "{text}");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "smollm2:int4"), "{text}");
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string(), "{text}");
}

#[tokio::test]
async fn chat_needs_the_infer_scope() {
    let s = stack();
    let reader = s.create_key("dev", "chat-reader", "models:read", None);
    let body = json!({ "model": "smollm2:int4", "messages": [{"role": "user", "content": "hi"}] });
    let response =
        client().post(format!("{}/v1/chat/completions", s.url)).bearer_auth(&reader).json(&body).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN);
    let response = client().post(format!("{}/v1/chat/completions", s.url)).json(&body).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
}
