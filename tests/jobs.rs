//! The jobs API through the real path: records in S3 on the emulator, messages on its SQS queue.

use lmaas_tests::stack;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::call;

async fn submit(token: &str, body: &Value, key: Option<&str>) -> (StatusCode, Value) {
    let mut request = lmaas_tests::client().post(format!("{}/v1/jobs", stack().url)).bearer_auth(token).json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

fn batch(input: &str) -> Value {
    json!({"type": "batch_embed", "model": "minilm", "input": format!("s3://lmaas-local/batch/minilm/{input}.jsonl")})
}

#[tokio::test]
async fn a_submitted_job_is_recorded_queued_and_goes_through_sqs_to_a_worker() {
    let s = stack();
    let key = s.create_key("dev", "submitter", "jobs:read,jobs:write,infer,models:read", None);
    let (status, job) = submit(&key, &batch("missing-input"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!((job["status"].as_str(), job["type"].as_str()), (Some("queued"), Some("batch_embed")));
    assert_eq!(job["output"], format!("s3://lmaas-local/results/{id}/"));
    assert_eq!(job["progress"], json!({"done": 0, "total": null, "errors": 0}));

    // The make dev worker daemon takes it from SQS; its input does not exist, which no retry
    // can fix: failed at once, saying so.
    let done =
        super::batch::wait_for(&id, 60, "to a final status", |j| j["status"] != "queued" && j["status"] != "running")
            .await;
    assert_eq!((done["status"].as_str(), done["attempts"].as_u64()), (Some("failed"), Some(1)), "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("batch/minilm/missing-input.jsonl does not exist"), "{error}");
    let (status, read) = call(Method::GET, &format!("/v1/jobs/{id}"), Some(&key), None).await;
    assert_eq!((status, &read), (StatusCode::OK, &done));
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_job_and_refuses_another_body() {
    let token = stack().admin_token();
    let (first_status, first) = submit(token, &batch("idem"), Some("nightly-2026-11-28")).await;
    let (second_status, second) = submit(token, &batch("idem"), Some("nightly-2026-11-28")).await;
    assert_eq!((first_status, second_status), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(first["id"], second["id"]);
    let (status, answer) = submit(token, &batch("other"), Some("nightly-2026-11-28")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("different request"));
}

#[tokio::test]
async fn jobs_list_newest_first_filter_by_status_and_cancel_once() {
    let s = stack();
    let key = s.create_key("listers", "lister", "jobs:read,jobs:write,infer,models:read", None);
    // Models are the dev tenant's; make one usable by this tenant.
    let token = s.admin_token();
    let (_, older) = submit(token, &batch("list-a"), None).await;
    let (_, newer) = submit(token, &batch("list-b"), None).await;
    let (status, listing) = call(Method::GET, "/v1/jobs", Some(token), None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = listing["data"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    let (a, b) = (ids.iter().position(|i| *i == older["id"]), ids.iter().position(|i| *i == newer["id"]));
    assert!(a.is_some() && b.is_some() && b <= a, "newest first: {ids:?}");
    let newer_id = newer["id"].as_str().unwrap();
    super::batch::wait_for(newer_id, 60, "failed (no input)", |j| j["status"] == "failed").await;
    let (_, failed) = call(Method::GET, "/v1/jobs?status=failed", Some(token), None).await;
    let failed = failed["data"].as_array().unwrap();
    assert!(failed.iter().all(|j| j["status"] == "failed") && failed.iter().any(|j| j["id"] == newer["id"]));

    // A queued job (recorded, not yet taken by any worker) is cancelled at once.
    let queued = super::batch::queued_record("batch_embed", "minilm", "batch/minilm/list-c.jsonl", json!({})).await;
    let older = json!({ "id": queued });
    let cancel = format!("/v1/jobs/{}/cancel", older["id"].as_str().unwrap());
    let (status, cancelled) = call(Method::POST, &cancel, Some(token), None).await;
    assert_eq!((status, cancelled["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{cancelled}");
    assert!(cancelled["finished_at"].is_string());
    let (status, _) = call(Method::POST, &cancel, Some(token), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a finished job cannot be cancelled again");
    let (_, cancelled_list) = call(Method::GET, "/v1/jobs?status=cancelled", Some(token), None).await;
    assert!(cancelled_list["data"].as_array().unwrap().iter().all(|j| j["status"] == "cancelled"));

    // Another tenant sees none of it.
    let (status, _) = call(Method::GET, &format!("/v1/jobs/{newer_id}"), Some(&key), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, theirs) = call(Method::GET, "/v1/jobs", Some(&key), None).await;
    assert_eq!(theirs["data"], json!([]));
    let (status, _) = call(Method::POST, &cancel.replace("cancel", ""), Some(&key), None).await;
    assert_ne!(status, StatusCode::OK);
}

#[tokio::test]
async fn bad_job_requests_get_a_clear_client_error() {
    let s = stack();
    let token = s.admin_token();
    let reader = s.create_key("dev", "reader", "jobs:read", None);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "unknown type",
            json!({"type": "teleport", "model": "minilm", "input": "s3://lmaas-local/batch/x.jsonl"}),
            400,
            "unknown variant",
        ),
        (
            "unknown model",
            json!({"type": "batch_infer", "model": "nope", "input": "s3://lmaas-local/batch/x.jsonl"}),
            404,
            "does not exist",
        ),
        (
            "embed with a tensor model",
            json!({"type": "batch_embed", "model": "mlp", "input": "s3://lmaas-local/batch/x.jsonl"}),
            400,
            "needs an embeddings model",
        ),
        (
            "another bucket",
            json!({"type": "batch_infer", "model": "mlp", "input": "s3://someone-else/x.jsonl"}),
            400,
            "'input' must be an s3://lmaas-local/",
        ),
        (
            "traversal",
            json!({"type": "batch_infer", "model": "mlp", "input": "s3://lmaas-local/batch/../auth/keys/x.json"}),
            400,
            "invalid key",
        ),
        (
            "output not a folder",
            json!({"type": "batch_infer", "model": "mlp", "input": "s3://lmaas-local/b/x.jsonl", "output": "s3://lmaas-local/out.jsonl"}),
            400,
            "folder",
        ),
        (
            "params not an object",
            json!({"type": "batch_infer", "model": "mlp", "input": "s3://lmaas-local/b/x.jsonl", "params": [1]}),
            400,
            "'params'",
        ),
        (
            "unknown field",
            json!({"type": "batch_infer", "model": "mlp", "input": "s3://lmaas-local/b/x.jsonl", "priority": 1}),
            400,
            "unknown field",
        ),
    ];
    for (what, body, status, message) in cases {
        let (actual, answer) = submit(token, &body, None).await;
        assert_eq!(actual.as_u16(), status, "{what}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap_or_default().contains(message), "{what}: {answer}");
    }
    let (status, _) = submit(&reader, &batch("scope"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "jobs:read cannot submit");
    let (status, answer) = call(Method::GET, "/v1/jobs/not-a-job", Some(token), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, _) = call(Method::GET, "/v1/jobs?status=exploded", Some(token), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
