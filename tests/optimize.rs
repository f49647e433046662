//! Jobs that produce models, through the real path: the jobs API, SQS, the dev worker daemon,
//! S3 on the emulator, ONNX Runtime; then the new version served by the HTTP API.

use lmaas_tests::stack;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::call;

async fn submit(token: &str, body: &Value) -> (StatusCode, Value) {
    call(Method::POST, "/v1/jobs", Some(token), Some(body)).await
}

fn cosine(a: &Value, b: &Value) -> f64 {
    let (a, b): (Vec<f64>, Vec<f64>) = (
        a.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect(),
        b.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect(),
    );
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt())
}

#[tokio::test]
async fn quantize_registers_a_tagged_version_that_serves_embeddings_close_to_the_source() {
    let token = stack().admin_token();
    let target = format!("minilm-q{}", std::process::id());
    let body = json!({"type": "quantize", "model": "minilm", "params": {"scheme": "int8", "target": target}});
    let (status, job) = submit(token, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap();
    assert_eq!(job["input"], "", "no calibration set given: the built-in one is used");

    let done = super::batch::wait_for(id, 300, "to a final status", |j| {
        j["status"] == "succeeded" || j["status"] == "failed" || j["status"] == "cancelled"
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["progress"]["done"], done["progress"]["total"], "every step reported: {done}");

    // The new version: ready, tagged int8 (and latest: the model is new), with its report.
    let (status, versions) = call(Method::GET, &format!("/v1/models/{target}/versions"), Some(token), None).await;
    assert_eq!(status, StatusCode::OK, "{versions}");
    assert_eq!(versions["aliases"], json!({"int8": 1, "latest": 1}), "{versions}");
    let (_, manifest) = call(Method::GET, &format!("/v1/models/{target}/versions/1"), Some(token), None).await;
    assert_eq!((manifest["state"].as_str(), manifest["task"].as_str()), (Some("ready"), Some("embeddings")));
    let report = &manifest["config"]["quantization"];
    assert_eq!(report["scheme"], "int8");
    assert!(report["cosine"]["mean"].as_f64().unwrap() >= 0.995, "{report}");
    assert!(report["quantized_bytes"].as_u64().unwrap() <= 24_000_000, "{report}");
    assert!(manifest["files"]["tokenizer.json"].is_object(), "{manifest}");

    // Served through the HTTP API, close to the fp32 source.
    let sentences = json!(["A man is playing a guitar on stage.", "Quarterly revenue rose 12% year over year."]);
    let embed = |model: String| {
        let body = json!({"model": model, "input": sentences});
        async move { call(Method::POST, "/v1/embeddings", Some(token), Some(&body)).await }
    };
    let (s1, quantized) = embed(format!("{target}:int8")).await;
    let (s2, source) = embed("minilm".to_string()).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK), "{quantized} {source}");
    for i in 0..2 {
        let c = cosine(&quantized["data"][i]["embedding"], &source["data"][i]["embedding"]);
        assert!(c >= 0.99, "sentence {i}: cosine {c}");
    }
    assert_eq!(quantized["model"], format!("{target}:int8"));

    // The job's output folder has the report too.
    let report_key = format!("results/{id}/report.json");
    let stored: Value = serde_json::from_str(&super::batch::download(&report_key).await.unwrap()).unwrap();
    assert_eq!(stored["model"], format!("{target}:1"));
}

#[tokio::test]
async fn bad_quantize_requests_are_refused_before_they_queue() {
    let s = stack();
    let token = s.admin_token();
    let cases = [
        (json!({"scheme": "int3"}), "params.scheme must be int8 or int4"),
        (json!({"scheme": "int4", "block_size": 48}), "32, 64 or 128"),
        (json!({"scheme": "int8", "bits": 8}), "unknown field `bits`"),
        (json!({"scheme": "int8", "smoothing": "lots"}), "params.smoothing must be auto, off"),
    ];
    for (params, expected) in cases {
        let (status, answer) = submit(token, &json!({"type": "quantize", "model": "minilm", "params": params})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message} should say {expected}");
    }
    // Publishing a model version needs models:write, not just jobs:write.
    let key = s.create_key("dev", "batch-only", "jobs:read,jobs:write,infer", None);
    let (status, answer) =
        submit(&key, &json!({"type": "quantize", "model": "minilm", "params": {"scheme": "int8"}})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("models:write"), "{answer}");
    // Other jobs still need an input.
    let (status, answer) = submit(token, &json!({"type": "batch_embed", "model": "minilm"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("'input' is required"), "{answer}");
}

fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(lmaas_tests::root().join("samples/fixtures").join(name)).unwrap()
}

#[tokio::test]
async fn train_classifier_on_digits_serves_a_model_more_accurate_than_logistic_regression() {
    let token = stack().admin_token();
    let key = format!("training/digits-{}.jsonl", std::process::id());
    super::batch::upload(&key, fixture_text("digits_train.jsonl")).await;
    let target = format!("digits{}", std::process::id());
    let body = json!({
        "type": "train_classifier",
        "input": format!("s3://lmaas-local/{key}"),
        "params": {"target": target, "head": "mlp", "hidden": 64, "seed": 7},
    });
    let (status, job) = submit(token, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let done = super::batch::wait_for(job["id"].as_str().unwrap(), 300, "to a final status", |j| {
        j["status"] == "succeeded" || j["status"] == "failed"
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let (_, manifest) = call(Method::GET, &format!("/v1/models/{target}/versions/1"), Some(token), None).await;
    let training = &manifest["config"]["training"];
    assert_eq!(training["train_rows"].as_u64().unwrap() + training["validation_rows"].as_u64().unwrap(), 1347);
    assert!(training["loss_curve"].as_array().unwrap().len() >= 10, "{training}");
    assert!(training["validation_accuracy"].as_f64().unwrap() > 0.9, "{training}");
    let classes = manifest["config"]["classifier"]["classes"].clone();
    assert_eq!(classes.as_array().unwrap().len(), 10);
    assert_eq!(manifest["inputs"][0]["name"], "features");

    // The held-out test split through V2, in three requests.
    let (mut correct, mut rows) = (0, 0);
    let test = fixture_text("digits_test.jsonl");
    let lines: Vec<Value> = test.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for chunk in lines.chunks(150) {
        let data: Vec<Value> = chunk.iter().flat_map(|l| l["features"].as_array().unwrap().clone()).collect();
        let request = json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [chunk.len(), 64], "data": data}],
                             "outputs": [{"name": "label"}]});
        let (status, answer) =
            call(Method::POST, &format!("/v2/models/{target}/infer"), Some(token), Some(&request)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let labels = answer["outputs"][0]["data"].as_array().unwrap();
        for (line, label) in chunk.iter().zip(labels) {
            correct += usize::from(classes[label.as_u64().unwrap() as usize] == line["label"]);
            rows += 1;
        }
    }
    let accuracy = correct as f64 / rows as f64;
    let sklearn: Value = serde_json::from_str(&fixture_text("digits.json")).unwrap();
    let sklearn = sklearn["logistic_regression_test_accuracy"].as_f64().unwrap();
    assert!(accuracy >= sklearn, "served accuracy {accuracy} < scikit-learn's {sklearn}");
}

#[tokio::test]
async fn bad_training_input_fails_the_job_naming_the_line() {
    let token = stack().admin_token();
    let key = format!("training/bad-{}.jsonl", std::process::id());
    super::batch::upload(
        &key,
        "{\"features\": [1, 2], \"label\": \"a\"}\n{\"features\": [1, \"x\"], \"label\": \"b\"}\n".into(),
    )
    .await;
    let body =
        json!({"type": "train_classifier", "input": format!("s3://lmaas-local/{key}"), "params": {"target": "never"}});
    let (status, job) = submit(token, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let done = super::batch::wait_for(job["id"].as_str().unwrap(), 60, "to fail", |j| j["status"] == "failed").await;
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("input line 2: 'features' must be an array of numbers"), "{error}");

    let (status, answer) =
        submit(token, &json!({"type": "train_classifier", "input": format!("s3://lmaas-local/{key}")})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("params.target is required"), "{answer}");
    let (status, answer) = submit(
        token,
        &json!({"type": "train_classifier", "model": "mlp", "input": format!("s3://lmaas-local/{key}"), "params": {"target": "x"}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("needs an embeddings model"), "{answer}");
}
