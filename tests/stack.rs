//! End-to-end tests through the real local stack: HTTP → cargo lambda watch → the functions →
//! S3 on the emulator → ONNX Runtime. Outputs are compared with ONNX Runtime's own results for
//! the same inputs, computed independently in Python when the fixtures were made.

mod auth;
mod batch;
mod generation;
mod jobs;
mod observability;
mod optimize;
mod registry;
mod server;

use lmaas_tests::{assert_tensor_matches, client, fixture, stack};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A request as `token` (none: no Authorization header); the status and the JSON body.
async fn call(method: reqwest::Method, path: &str, token: Option<&str>, body: Option<&Value>) -> (StatusCode, Value) {
    let send = || {
        let mut request = client().request(method.clone(), format!("{}{path}", stack().url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        async move {
            let response = request.send().await.expect("request");
            let status = response.status();
            (status, response.json::<Value>().await.expect("a JSON body"))
        }
    };
    let (mut status, mut body) = send().await;
    // cargo lambda's emulator, not a function, answers this problem document when it loses an
    // invocation under concurrent load: seen three times in full runs here, once on an embeddings
    // request the function logged as answered 200, once twice in a row on an infer request the
    // function never received. Our functions never answer 500 in that shape, so a read-only
    // request (a GET, inference, embeddings) is sent again, up to three times, a little later
    // each time.
    let read_only = method == reqwest::Method::GET || path.ends_with("/infer") || path == "/v1/embeddings";
    for pause_ms in [250, 500, 1000] {
        let lost = status == StatusCode::INTERNAL_SERVER_ERROR && body["type"] == "https://httpstatuses.com/500";
        if !(read_only && lost) {
            break;
        }
        eprintln!("{path}: the emulator lost the invocation ({body}); sending it again in {pause_ms} ms");
        tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
        (status, body) = send().await;
    }
    (status, body)
}

async fn infer(path: &str, body: &Value) -> (StatusCode, Value) {
    call(reqwest::Method::POST, path, Some(stack().admin_token()), Some(body)).await
}

async fn get(path: &str) -> (StatusCode, Value) {
    call(reqwest::Method::GET, path, Some(stack().admin_token()), None).await
}

async fn assert_fixture(model: &str, fixture_name: &str, tolerance: f64) {
    let fixture = fixture(fixture_name);
    let (status, body) = infer(&format!("/v2/models/{model}/infer"), &fixture["request"]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], fixture["request"]["id"]);
    assert_eq!(body["model_name"], model);
    let expected = fixture["expected"].as_object().unwrap();
    assert_eq!(body["outputs"].as_array().unwrap().len(), expected.len());
    for output in body["outputs"].as_array().unwrap() {
        let name = output["name"].as_str().unwrap();
        assert_tensor_matches(name, output, &expected[name], tolerance);
    }
}

#[tokio::test]
async fn mlp_answers_like_onnx_runtime_itself() {
    assert_fixture("mlp", "mlp", 1e-5).await;
}

#[tokio::test]
async fn minilm_answers_token_tensors_like_onnx_runtime_itself() {
    assert_fixture("minilm", "minilm", 1e-4).await;
    assert_fixture("minilm", "minilm_batch1", 1e-4).await;
}

/// 4 x 9 x 384 = 13,824 floats: large enough that the JSON is written with the helper threads.
#[tokio::test]
async fn a_large_json_response_keeps_every_row_in_order() {
    let fixture = fixture("minilm");
    let mut request = fixture["request"].clone();
    for input in request["inputs"].as_array_mut().unwrap() {
        let rows = input["data"].as_array().unwrap().clone();
        input["data"] = json!([rows.clone(), rows].concat());
        input["shape"][0] = json!(4);
    }
    let (status, body) = infer("/v2/models/minilm/infer", &request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut expected = fixture["expected"]["last_hidden_state"].clone();
    let data = expected["data"].as_array().unwrap().clone();
    expected["data"] = json!([data.clone(), data].concat());
    expected["shape"][0] = json!(4);
    assert_tensor_matches("last_hidden_state", &body["outputs"][0], &expected, 1e-4);
}

#[tokio::test]
async fn every_datatype_round_trips_through_the_model() {
    assert_fixture("dtypes", "dtypes", 0.0).await;
}

#[tokio::test]
async fn versions_aliases_and_encoded_tags_resolve_to_the_same_model() {
    let request = fixture("mlp")["request"].clone();
    for path in ["/v2/models/mlp/versions/1/infer", "/v2/models/mlp/versions/latest/infer", "/v2/models/mlp%3A1/infer"]
    {
        let (status, body) = infer(path, &request).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["model_version"], "1", "{path}");
    }
}

#[tokio::test]
async fn only_the_requested_outputs_come_back() {
    let mut request = fixture("dtypes")["request"].clone();
    request["outputs"] = json!([{"name": "y_bool"}, {"name": "y_string"}]);
    let (status, body) = infer("/v2/models/dtypes/infer", &request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names: Vec<&str> = body["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["y_bool", "y_string"]);
}

#[tokio::test]
async fn binary_tensor_data_goes_both_ways() {
    let header = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 4], "parameters": {"binary_data_size": 48}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": true}}]
    });
    let fixture = fixture("mlp");
    let header = serde_json::to_vec(&header).unwrap();
    let mut body = header.clone();
    for v in fixture["request"]["inputs"][0]["data"].as_array().unwrap() {
        body.extend_from_slice(&(v.as_f64().unwrap() as f32).to_le_bytes());
    }
    let response = client()
        .post(format!("{}/v2/models/mlp/infer", stack().url))
        .bearer_auth(stack().admin_token())
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", header.len())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let json_length: usize = response.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let bytes = response.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..json_length]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 36);
    let values: Vec<Value> =
        bytes[json_length..].chunks_exact(4).map(|c| json!(f32::from_le_bytes(c.try_into().unwrap()) as f64)).collect();
    let actual = json!({"datatype": "FP32", "shape": head["outputs"][0]["shape"], "data": values});
    assert_tensor_matches("output", &actual, &fixture["expected"]["output"], 1e-5);
}

#[tokio::test]
async fn metadata_reports_dynamic_dims_and_the_execution_provider() {
    let (status, body) = get("/v2/models/minilm").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["inputs"][0], json!({"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}));
    assert_eq!(body["outputs"][0]["shape"], json!([-1, -1, 384]));
    assert_eq!(body["parameters"]["execution_provider"], "cpu");
    assert_eq!(body["versions"], json!(["1"]));
    let (status, body) = get("/v2/models/mlp/versions/1/ready").await;
    assert_eq!((status, &body["ready"]), (StatusCode::OK, &json!(true)));
    let (status, body) = get("/v2").await;
    assert_eq!((status, &body["name"]), (StatusCode::OK, &json!("lmaas")));
    assert_eq!(get("/v2/health/live").await.0, StatusCode::OK);
    let echoed = client()
        .get(format!("{}/v2/health/live", stack().url))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-me-42");
    let minted = client()
        .get(format!("{}/v2/health/live", stack().url))
        .header("x-request-id", "not a plain id; <script>")
        .send()
        .await
        .unwrap();
    assert_eq!(minted.headers()["x-request-id"].len(), 32, "a request id that is not plain is replaced");
    assert_eq!(get("/v2/health/ready").await.0, StatusCode::OK);
}

/// Each bad request gets a 4xx with a message that names the problem.
#[tokio::test]
async fn bad_input_gets_a_clear_client_error() {
    let mlp = |shape: Value, data: Value| json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": data}]});
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "wrong datatype",
            "mlp",
            json!({"inputs": [{"name": "input", "datatype": "INT32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}),
            400,
            "expected datatype FP32, got INT32",
        ),
        ("shape/data mismatch", "mlp", mlp(json!([2, 4]), json!([1, 2, 3, 4])), 400, "needs 8 elements"),
        ("negative dim", "mlp", mlp(json!([-2, 4]), json!([])), 400, "negative"),
        ("zero dim", "mlp", mlp(json!([0, 4]), json!([])), 400, "is 0"),
        (
            "huge batch",
            "mlp",
            mlp(json!([9_223_372_036_854_775_807_i64, 4]), json!([])),
            400,
            "over this model's limit",
        ),
        (
            "dims that overflow",
            "minilm",
            json!({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [200, 9_223_372_036_854_775_807_i64], "data": []}]}),
            400,
            "elements allowed",
        ),
        ("fixed dim", "mlp", mlp(json!([1, 3]), json!([1, 2, 3])), 400, "dim 1 must be 4"),
        ("missing input", "mlp", json!({"inputs": []}), 400, "missing input 'input'"),
        (
            "extra input",
            "mlp",
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}, {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}),
            400,
            "unknown input 'x'",
        ),
        (
            "unknown output",
            "mlp",
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}], "outputs": [{"name": "logits"}]}),
            400,
            "unknown output 'logits'",
        ),
        (
            "value out of range",
            "dtypes",
            json!({"inputs": [{"name": "x_int8", "datatype": "INT8", "shape": [1], "data": [300]}]}),
            400,
            "out of range",
        ),
        ("unknown model", "nope", mlp(json!([1, 4]), json!([1, 2, 3, 4])), 404, "does not exist"),
        ("invalid model name", "Bad.Name", mlp(json!([1, 4]), json!([1, 2, 3, 4])), 400, "invalid model name"),
    ];
    for (what, model, body, status, message) in cases {
        let (actual, answer) = infer(&format!("/v2/models/{model}/infer"), &body).await;
        assert_eq!(actual.as_u16(), status, "{what}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{what}: {error}");
    }
    let (status, answer) = infer("/v2/models/mlp/versions/7/infer", &mlp(json!([1, 4]), json!([1, 2, 3, 4]))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("no version 7"));
}

#[tokio::test]
async fn malformed_json_and_oversized_bodies_are_rejected() {
    let url = format!("{}/v2/models/mlp/infer", stack().url);
    let token = stack().admin_token();
    let request = client().post(&url).bearer_auth(token).header("content-type", "application/json");
    let response = request.body("{\"inputs\": [").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("not a valid V2 infer request"), "{body}");

    let huge = vec![b' '; 6 * 1024 * 1024 + 1];
    let request = client().post(&url).bearer_auth(token).header("content-type", "application/octet-stream");
    let response = request.body(huge).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_binary_header_length_that_lies_is_rejected() {
    let url = format!("{}/v2/models/mlp/infer", stack().url);
    let header =
        br#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"parameters":{"binary_data_size":16}}]}"#;
    let body = |binary: usize| [header.as_slice(), &vec![0u8; binary]].concat();
    let cases = [
        (body(12), header.len(), "binary_data_size is 16 but only 12 bytes"),
        (body(16), header.len() + 17, "has only"),
        (body(20), header.len(), "not claimed"),
    ];
    for (body, length, message) in cases {
        let response = client()
            .post(&url)
            .bearer_auth(stack().admin_token())
            .header("content-type", "application/octet-stream")
            .header("inference-header-content-length", length)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let answer: Value = response.json().await.unwrap();
        assert!(answer["error"].as_str().unwrap().contains(message), "{answer}");
    }
}

#[tokio::test]
async fn a_token_id_outside_the_vocabulary_is_a_client_error_not_a_crash() {
    let mut request = fixture("minilm_batch1")["request"].clone();
    request["inputs"][0]["data"][1] = json!(10_000_000);
    let (status, body) = infer("/v2/models/minilm/infer", &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("could not run on this input"), "{body}");
}

/// Writes a version straight into S3 (as the registry will), with the given files.
async fn put_version(model: &str, version: u32, state: &str, files: &[(&str, &[u8], Option<&str>)]) {
    put_owned_version(model, version, state, files, None, json!({})).await
}

/// Like `put_version`, with an owner tenant and an ACL.
async fn put_owned_version(
    model: &str,
    version: u32,
    state: &str,
    files: &[(&str, &[u8], Option<&str>)],
    tenant: Option<&str>,
    acl: Value,
) {
    let stack = stack();
    let s3 = stack.s3().await;
    let mut entries = serde_json::Map::new();
    for (name, bytes, claimed_sha) in files {
        let sha = claimed_sha.map(str::to_string).unwrap_or_else(|| hex::encode(Sha256::digest(bytes)));
        entries.insert(name.to_string(), json!({"sha256": sha, "size": bytes.len()}));
        s3.put_object()
            .bucket(stack.bucket())
            .key(format!("models/{model}/versions/{version}/files/{name}"))
            .body(bytes.to_vec().into())
            .send()
            .await
            .unwrap();
    }
    let manifest = json!({
        "name": model, "version": version, "state": state, "task": "tensor", "files": entries,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}],
        "created_at": "2026-11-28T00:00:00Z", "tenant": tenant, "acl": acl
    });
    s3.put_object()
        .bucket(stack.bucket())
        .key(format!("models/{model}/versions/{version}/manifest.json"))
        .body(serde_json::to_vec(&manifest).unwrap().into())
        .send()
        .await
        .unwrap();
    if state == "ready" {
        s3.put_object()
            .bucket(stack.bucket())
            .key(format!("models/{model}/aliases/latest.json"))
            .body(serde_json::to_vec(&json!({"version": version})).unwrap().into())
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_model_that_fails_to_load_is_503_with_the_reason() {
    put_version("broken", 1, "ready", &[("model.onnx", b"this is not an onnx file", None)]).await;
    let (status, body) = infer("/v2/models/broken/versions/1/infer", &fixture("mlp")["request"]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("failed to load") && !error.contains("/tmp") && !error.contains(".lmaas"), "{error}");
}

#[tokio::test]
async fn a_model_file_that_fails_its_checksum_is_never_loaded() {
    let mlp = std::fs::read(lmaas_tests::root().join(".lmaas/samples/mlp/model.onnx")).unwrap();
    put_version("tampered", 1, "ready", &[("model.onnx", &mlp, Some(&"ab".repeat(32)))]).await;
    let (status, body) = infer("/v2/models/tampered/versions/1/infer", &fixture("mlp")["request"]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("failed verification"), "{body}");
}

#[tokio::test]
async fn pending_versions_are_never_served() {
    let mlp = std::fs::read(lmaas_tests::root().join(".lmaas/samples/mlp/model.onnx")).unwrap();
    put_version("unfinished", 1, "pending", &[("model.onnx", &mlp, None)]).await;
    let (status, body) = infer("/v2/models/unfinished/versions/1/infer", &fixture("mlp")["request"]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = get("/v2/models/unfinished/versions/1/ready").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
