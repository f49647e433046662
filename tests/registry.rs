//! The model registry through the real path: declare a version, upload through presigned S3 URLs,
//! commit (checksums, ONNX validation, ONNX Runtime), then serve, tag, and delete.

use lmaas_onnx::proto::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto};
use lmaas_tests::{client, fixture, stack};
use prost::Message;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::call;

/// A file to declare and upload; `declared` overrides what the declaration claims.
struct Upload<'a> {
    name: &'a str,
    bytes: Vec<u8>,
    declared_sha: Option<String>,
    declared_size: Option<usize>,
}

fn file(name: &str, bytes: Vec<u8>) -> Upload<'_> {
    Upload { name, bytes, declared_sha: None, declared_size: None }
}

/// Declares, uploads and commits a version as `token`; returns the commit's status and body.
async fn register(token: &str, model: &str, version: u32, task: &str, files: Vec<Upload<'_>>) -> (StatusCode, Value) {
    let declared: serde_json::Map<String, Value> = files
        .iter()
        .map(|f| {
            let sha = f.declared_sha.clone().unwrap_or_else(|| hex::encode(Sha256::digest(&f.bytes)));
            (f.name.to_string(), json!({"sha256": sha, "size": f.declared_size.unwrap_or(f.bytes.len())}))
        })
        .collect();
    let body = json!({"files": declared, "task": task});
    let (status, answer) =
        call(Method::PUT, &format!("/v1/models/{model}/versions/{version}"), Some(token), Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["state"], "pending");
    for f in &files {
        let url = answer["uploads"][f.name]["url"].as_str().expect("an upload URL");
        let response = client().put(url).body(f.bytes.clone()).send().await.unwrap();
        assert!(response.status().is_success(), "upload of {} failed: {}", f.name, response.status());
    }
    call(Method::POST, &format!("/v1/models/{model}/versions/{version}/commit"), Some(token), None).await
}

fn mlp_bytes() -> Vec<u8> {
    std::fs::read(lmaas_tests::root().join(".lmaas/samples/mlp/model.onnx")).unwrap()
}

fn onnx(node: NodeProto, initializers: Vec<TensorProto>, domains: &[&str]) -> Vec<u8> {
    let mut opset_import = vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }];
    opset_import.extend(domains.iter().map(|d| OperatorSetIdProto { domain: Some(d.to_string()), version: Some(1) }));
    ModelProto {
        ir_version: Some(9),
        opset_import,
        graph: Some(GraphProto { node: vec![node], initializer: initializers, ..Default::default() }),
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test]
async fn a_pushed_version_is_served_tagged_and_deleted_only_when_untagged() {
    let token = stack().admin_token();
    let (status, manifest) = register(token, "reg-mlp", 1, "tensor", vec![file("model.onnx", mlp_bytes())]).await;
    assert_eq!(status, StatusCode::OK, "{manifest}");
    assert_eq!(manifest["state"], "ready");
    assert_eq!(manifest["inputs"][0], json!({"name": "input", "datatype": "FP32", "shape": [-1, 4]}));

    let request = fixture("mlp")["request"].clone();
    let (status, answer) = call(Method::POST, "/v2/models/reg-mlp/infer", Some(token), Some(&request)).await;
    assert_eq!(status, StatusCode::OK, "latest moved to the committed version: {answer}");

    let (status, _) =
        call(Method::PUT, "/v1/models/reg-mlp/aliases/prod", Some(token), Some(&json!({"version": 1}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = call(Method::POST, "/v2/models/reg-mlp%3Aprod/infer", Some(token), Some(&request)).await;
    assert_eq!((status, &answer["model_version"]), (StatusCode::OK, &json!("1")), "{answer}");
    let (_, listing) = call(Method::GET, "/v1/models/reg-mlp/versions", Some(token), None).await;
    assert_eq!(listing["aliases"], json!({"latest": 1, "prod": 1}));

    let (status, refused) = call(Method::DELETE, "/v1/models/reg-mlp/versions/1", Some(token), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("latest, prod"), "{refused}");
    assert_eq!(refused["error"]["type"], "invalid_request_error", "OpenAI error shape on /v1");
    let (status, _) = call(Method::DELETE, "/v1/models/reg-mlp/versions/1?force=true", Some(token), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(Method::GET, "/v1/models/reg-mlp/versions/1", Some(token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn commit_rejects_each_bad_upload_with_a_422_that_names_the_problem() {
    let token = stack().admin_token();
    let mlp = mlp_bytes();
    let traversal = onnx(
        NodeProto { op_type: Some("Identity".into()), ..Default::default() },
        vec![TensorProto {
            name: Some("w".into()),
            data_location: Some(1),
            external_data: vec![StringStringEntryProto {
                key: Some("location".into()),
                value: Some("../../secrets/w.bin".into()),
            }],
            ..Default::default()
        }],
        &[],
    );
    let custom_op = onnx(
        NodeProto { op_type: Some("Backdoor".into()), domain: Some("com.attacker".into()), ..Default::default() },
        vec![],
        &["com.attacker"],
    );
    let cases: Vec<(&str, Vec<Upload>, &str, &str)> = vec![
        (
            "bad sha",
            vec![Upload { declared_sha: Some("ab".repeat(32)), ..file("model.onnx", mlp.clone()) }],
            "tensor",
            "failed verification: sha256",
        ),
        (
            "truncated file",
            vec![Upload { declared_size: Some(mlp.len() + 10), ..file("model.onnx", mlp.clone()) }],
            "tensor",
            "truncated",
        ),
        ("not ONNX", vec![file("model.onnx", b"GIF89a not a model".to_vec())], "tensor", "is not an ONNX model"),
        ("external data traversal", vec![file("model.onnx", traversal)], "tensor", "'..' is not allowed"),
        ("custom op domain", vec![file("model.onnx", custom_op)], "tensor", "operator domain 'com.attacker'"),
        (
            "tokenizer garbage",
            vec![file("model.onnx", mlp.clone()), file("tokenizer.json", b"{not json".to_vec())],
            "tensor",
            "tokenizer.json is not valid JSON",
        ),
        (
            "embeddings without a tokenizer",
            vec![file("model.onnx", mlp.clone())],
            "embeddings",
            "needs a tokenizer.json",
        ),
    ];
    for (version, (what, files, task, message)) in (1u32..).zip(cases) {
        let (status, answer) = register(token, "reg-bad", version, task, files).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {answer}");
        let error = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{what}: {error}");
        let (_, manifest) =
            call(Method::GET, &format!("/v1/models/reg-bad/versions/{version}"), Some(token), None).await;
        assert_eq!(manifest["state"], "rejected", "{what}");
        let (status, _) = call(
            Method::POST,
            &format!("/v2/models/reg-bad/versions/{version}/infer"),
            Some(token),
            Some(&json!({"inputs": []})),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{what}: a rejected version is never served");
    }
}

#[tokio::test]
async fn a_model_name_belongs_to_its_tenant() {
    let s = stack();
    let acme = s.create_key("acme", "alice", "models:write,models:read,infer", None);
    let globex = s.create_key("globex", "bob", "models:write,models:read,infer", None);
    let (status, answer) = register(&acme, "reg-owned", 1, "tensor", vec![file("model.onnx", mlp_bytes())]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let body = json!({"files": {"model.onnx": {"sha256": "a".repeat(64), "size": 1}}, "task": "tensor"});
    let (status, _) = call(Method::PUT, "/v1/models/reg-owned/versions/2", Some(&globex), Some(&body)).await;
    assert_eq!(status, StatusCode::CONFLICT, "another tenant cannot add versions");
    let (status, _) = call(Method::POST, "/v1/models/reg-owned/versions/1/commit", Some(&globex), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(Method::DELETE, "/v1/models/reg-owned/versions/1?force=true", Some(&globex), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let reader = s.create_key("acme", "reader", "models:read", None);
    let (status, answer) = call(Method::PUT, "/v1/models/reg-owned/versions/2", Some(&reader), Some(&body)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(answer["error"]["type"], "permission_error");
}

/// moto does not enforce presigned-URL expiry (AWS does), so check what AWS enforces: the
/// signature's lifetime and the advertised `expires_at`.
#[tokio::test]
async fn upload_urls_are_signed_for_fifteen_minutes() {
    let token = stack().admin_token();
    let body = json!({"files": {"model.onnx": {"sha256": "a".repeat(64), "size": 10}}, "task": "tensor"});
    let (status, answer) = call(Method::PUT, "/v1/models/reg-expiry/versions/1", Some(token), Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let upload = &answer["uploads"]["model.onnx"];
    let url = upload["url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Expires=900") && url.contains("X-Amz-Signature="), "{url}");
    assert!(url.contains("/models/reg-expiry/versions/1/files/model.onnx"), "{url}");
    let expires_at = upload["expires_at"].as_str().unwrap();
    assert!(expires_at.ends_with('Z') && expires_at.len() == 20, "{expires_at}");
}

#[tokio::test]
async fn declarations_are_checked_before_anything_is_stored() {
    let token = stack().admin_token();
    let sha = "a".repeat(64);
    let cases = [
        (json!({"files": {}, "task": "tensor"}), "must include model.onnx"),
        (
            json!({"files": {"model.onnx": {"sha256": sha, "size": 1}, "../x": {"sha256": sha, "size": 1}}, "task": "tensor"}),
            "plain file name",
        ),
        (json!({"files": {"model.onnx": {"sha256": "nope", "size": 1}}, "task": "tensor"}), "64 hex digits"),
        (json!({"files": {"model.onnx": {"sha256": sha, "size": 1}}, "task": "chat"}), "unknown variant"),
        (json!({"files": {"model.onnx": {"sha256": sha, "size": 1}}, "task": "tensor", "extra": 1}), "unknown field"),
    ];
    for (body, message) in cases {
        let (status, answer) = call(Method::PUT, "/v1/models/reg-decl/versions/1", Some(token), Some(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(message), "{answer}");
    }
}

#[tokio::test]
async fn the_official_openai_client_gets_embeddings_equal_to_onnx_runtime() {
    stack().python_client("openai_client.py", &[("LMAAS_SAMPLES", lmaas_tests::root().join(".lmaas/samples"))]);
}

#[tokio::test]
async fn the_cli_pushes_files_lists_shows_infers_and_embeds() {
    let s = stack();
    let lmaas = |args: &[&str]| s.cli(args);
    let model_file = lmaas_tests::root().join(".lmaas/samples/mlp/model.onnx");
    let pushed =
        lmaas(&["push", model_file.to_str().unwrap(), "--model", "cli-files", "--version", "3", "--tag", "prod"]);
    assert!(pushed.contains("cli-files:3 is ready") && pushed.contains("tagged prod"), "{pushed}");
    let listing = lmaas(&["models", "ls"]);
    assert!(listing.lines().any(|l| l.starts_with("minilm")) && listing.contains("mlp"), "{listing}");
    let shown = lmaas(&["models", "show", "mlp"]);
    assert!(shown.contains("ready") && shown.contains("latest"), "{shown}");
    let request = fixture("mlp")["request"].to_string();
    let answer: Value = serde_json::from_str(&lmaas(&["infer", "mlp:1", &request])).unwrap();
    assert_eq!(answer["outputs"][0]["shape"], json!([3, 3]));
    let vectors = lmaas(&["embed", "--model", "minilm", "A man is eating food.", "A man is riding a horse."]);
    let rows: Vec<Vec<f64>> = vectors.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!((rows.len(), rows[0].len()), (2, 384));
    let cosine: f64 = rows[0].iter().zip(&rows[1]).map(|(a, b)| a * b).sum();
    assert!((cosine - 0.247).abs() < 0.01, "{cosine}");
}
