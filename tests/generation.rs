//! Text generation through the local stack: cargo lambda watch → the chat function (Lambda
//! response streaming) → SmolLM2 from S3 on the emulator → ONNX Runtime.

use lmaas_tests::{client, stack};
use serde_json::{json, Value};

#[tokio::test]
async fn the_official_openai_client_chats_and_streams_like_llama_cpp() {
    stack().python_client("openai_chat.py", &[("LMAAS_ROOT", lmaas_tests::root())]);
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

#[tokio::test]
async fn batch_chat_answers_every_conversation_in_order_with_continuous_batching() {
    use super::batch::{download, upload, wait_for};
    let s = stack();
    let reference: Value = serde_json::from_slice(
        &std::fs::read(lmaas_tests::root().join("samples/fixtures/smollm2_reference.json")).unwrap(),
    )
    .unwrap();
    let cases = reference["f32"]["cases"].as_array().unwrap();
    // Six greedy conversations (answers of 7 to 32 tokens, so rows leave and join the batch),
    // one bad line, and one sampled without a seed (seeded by its line number).
    let mut lines: Vec<Value> = cases[..6]
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"id": format!("c{i}"), "messages": c["messages"], "temperature": 0, "max_tokens": 32}))
        .collect();
    lines.insert(2, json!({"id": "bad", "prompt": "no messages"}));
    lines.push(json!({"id": "sampled", "messages": cases[0]["messages"], "temperature": 0.9, "max_tokens": 8}));
    let key = format!("inputs/batch-chat-{}.jsonl", std::process::id());
    upload(&key, lines.iter().map(|l| format!("{l}\n")).collect()).await;
    let submit = json!({
        "type": "batch_chat", "model": "smollm2:fp32", "input": format!("s3://{}/{key}", s.bucket()),
        "params": {"max_concurrent": 3},
    });
    let (status, job) = super::call(reqwest::Method::POST, "/v1/jobs", Some(s.admin_token()), Some(&submit)).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let done = wait_for(&id, 600, "to finish", |j| matches!(j["status"].as_str(), Some("succeeded" | "failed"))).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["progress"]["done"], 8);
    assert_eq!(done["progress"]["errors"], 1);
    let output = download(&format!("results/{id}/output.jsonl")).await.expect("output.jsonl");
    let answers: Vec<Value> = output.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<&str> = answers.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c0", "c1", "bad", "c2", "c3", "c4", "c5", "sampled"], "input order");
    let greedy = answers.iter().filter(|a| a["id"].as_str().unwrap().starts_with('c'));
    for (answer, case) in greedy.zip(cases) {
        assert_eq!(answer["message"]["content"], case["text"], "{answer}");
        assert_eq!(answer["usage"]["completion_tokens"], case["tokens"].as_array().unwrap().len());
        let finish = if case["tokens"].as_array().unwrap().len() < 32 { "stop" } else { "length" };
        assert_eq!(answer["finish_reason"], finish);
    }
    assert!(answers[2]["error"].as_str().unwrap().contains("'messages' is required"), "{}", answers[2]);
    assert_eq!(answers[7]["usage"]["completion_tokens"], 8);

    // Wrong models and parameters are refused at submit.
    for (body, message) in [
        (json!({"type": "batch_chat", "model": "minilm", "input": submit["input"]}), "needs a text generation model"),
        (json!({"type": "batch_embed", "model": "smollm2", "input": submit["input"]}), "needs an embeddings model"),
        (json!({"type": "batch_infer", "model": "smollm2", "input": submit["input"]}), "batch_chat is the batch job"),
        (
            json!({"type": "batch_chat", "model": "smollm2", "input": submit["input"], "params": {"max_concurrent": 0}}),
            "max_concurrent",
        ),
    ] {
        let (status, answer) = super::call(reqwest::Method::POST, "/v1/jobs", Some(s.admin_token()), Some(&body)).await;
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(message), "{answer}");
    }
}
