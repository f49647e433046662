//! Observability through the real path: EMF lines from the functions under cargo lambda watch
//! checked against the EMF specification's shape, the worker daemon's Prometheus text checked by
//! `promtool`, trace ids carried from a request into its job's logs, readiness, and no payloads
//! in any log.

use std::time::Duration;

use lmaas_tests::{client, fixture, stack};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::batch::{upload, wait_for};
use super::call;

/// Checks one EMF document against the specification's rules; the reason it breaks one.
fn check_emf(doc: &Value) -> Result<(), String> {
    let aws = doc.get("_aws").ok_or("no _aws")?;
    aws["Timestamp"].as_u64().filter(|t| *t > 1_600_000_000_000).ok_or("Timestamp is not epoch milliseconds")?;
    let directives = aws["CloudWatchMetrics"].as_array().filter(|d| !d.is_empty()).ok_or("no CloudWatchMetrics")?;
    for directive in directives {
        directive["Namespace"].as_str().filter(|n| !n.is_empty() && n.len() <= 1024).ok_or("bad Namespace")?;
        for set in directive["Dimensions"].as_array().ok_or("Dimensions is not an array")? {
            let set = set.as_array().ok_or("a dimension set is not an array")?;
            if set.len() > 30 {
                return Err("more than 30 dimensions".into());
            }
            for name in set {
                let name = name.as_str().ok_or("a dimension name is not a string")?;
                doc[name].as_str().ok_or(format!("dimension {name} has no string value"))?;
            }
        }
        let metrics = directive["Metrics"].as_array().filter(|m| m.len() <= 100).ok_or("bad Metrics")?;
        for metric in metrics {
            let name = metric["Name"].as_str().ok_or("a metric has no Name")?;
            if let Some(unit) = metric.get("Unit") {
                let known = ["Seconds", "Bytes", "Count", "Milliseconds", "None"];
                unit.as_str().filter(|u| known.contains(u)).ok_or(format!("{name}: unknown Unit {unit}"))?;
            }
            let value = &doc[name];
            let numeric = value.is_number()
                || value.as_array().is_some_and(|v| !v.is_empty() && v.len() <= 100 && v.iter().all(Value::is_number));
            if !numeric {
                return Err(format!("{name} has no numeric value: {value}"));
            }
        }
    }
    Ok(())
}

fn emf_documents(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| l.contains("\"_aws\""))
        .filter_map(|l| l.find('{').and_then(|start| serde_json::from_str(&l[start..]).ok()))
        .collect()
}

#[tokio::test]
async fn lambda_functions_emit_emf_metrics_in_the_specified_shape() {
    let s = stack();
    let (status, _) =
        call(Method::POST, "/v2/models/mlp/infer", Some(s.admin_token()), Some(&fixture("mlp")["request"])).await;
    assert_eq!(status, StatusCode::OK);
    call(Method::GET, "/v1/jobs?status=succeeded", Some(s.admin_token()), None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let documents = emf_documents(&std::fs::read_to_string(s.state.join("watch.log")).unwrap());
    assert!(!documents.is_empty(), "no EMF lines in watch.log");
    for doc in &documents {
        check_emf(doc).unwrap_or_else(|e| panic!("{e}: {doc}"));
    }
    let found = |want: &dyn Fn(&Value) -> bool| documents.iter().any(want);
    assert!(found(&|d| d["function"] == "infer"
        && d["route"] == "/v2/models/{model}/infer"
        && d["status"] == "200"
        && d["lmaas_request_duration_seconds"].is_array()));
    assert!(found(&|d| d["function"] == "infer"
        && d["model"] == "mlp"
        && d["execution_provider"] == "cpu"
        && d["lmaas_inference_duration_seconds"].is_array()));
    assert!(found(&|d| d["function"] == "jobs" && d["route"] == "/v1/jobs"));
    assert!(found(&|d| d["lmaas_cold_starts_total"].is_number()));
    let bad = json!({"_aws": {"Timestamp": 5, "CloudWatchMetrics": [{"Namespace": "x", "Dimensions": [["a"]], "Metrics": [{"Name": "m"}]}]}});
    assert!(check_emf(&bad).is_err(), "the checker rejects a broken document");
}

#[tokio::test]
async fn the_worker_daemon_serves_metrics_that_promtool_accepts() {
    let s = stack();
    let scrape = client().get(format!("http://{}/metrics", s.env["LMAAS_METRICS_ADDR"])).send().await.unwrap();
    assert_eq!(scrape.status(), StatusCode::OK);
    let text = scrape.text().await.unwrap();
    assert!(text.contains("lmaas_worker_jobs_running{function=\"worker\"}"), "{text}");
    assert!(text.contains("# HELP lmaas_jobs_total"), "{text}");
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (infra/local/setup.sh installs the Debian package prometheus)");
    std::io::Write::write_all(promtool.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_jobs_logs_carry_the_trace_id_of_the_request_that_created_it_and_no_payload() {
    let s = stack();
    let marker = "secret-sentence-marker-41c9";
    let key = format!("inputs/trace-{}.jsonl", &super::batch::new_job_id()[16..]);
    upload(&key, format!("{}\n{}\n", json!({"id": 1, "input": format!("{marker} one")}), json!({"id": 2, "input": 5})))
        .await;
    let body = json!({"type": "batch_embed", "model": "minilm", "input": format!("s3://{}/{key}", s.bucket())});
    let response =
        client().post(format!("{}/v1/jobs", s.url)).bearer_auth(s.admin_token()).json(&body).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    // The trace id the request ran under (the Lambda emulator, like API Gateway, assigns it).
    let trace = job["trace_id"].as_str().expect("the job records its request's trace id");
    let root = trace.split(';').next().unwrap();
    assert!(root.starts_with("Root=1-"), "{job}");
    let done = wait_for(id, 120, "to succeed", |j| j["status"] == "succeeded").await;
    assert_eq!(done["progress"]["errors"], 1);

    let worker_log = std::fs::read_to_string(s.state.join("worker.log")).unwrap();
    let lines: Vec<&str> = worker_log.lines().filter(|l| l.contains(id)).collect();
    assert!(lines.len() >= 3, "the job's lines: {lines:?}");
    for line in &lines {
        assert!(line.contains(root), "a line of job {id} without its trace id: {line}");
    }
    let watch_log = std::fs::read_to_string(s.state.join("watch.log")).unwrap();
    let submitted: Vec<&str> = watch_log.lines().filter(|l| l.contains(id)).collect();
    assert!(submitted.iter().any(|l| l.contains("job queued") && l.contains(root)), "{submitted:?}");
    assert!(!worker_log.contains(marker) && !watch_log.contains(marker), "batch input text reached a log");
    assert!(!worker_log.contains(s.admin_token()) && !watch_log.contains(s.admin_token()));
}

#[tokio::test]
async fn readiness_says_the_preloaded_models_are_loaded_and_the_store_answers() {
    let (status, body) = call(Method::GET, "/v2/health/ready", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let models = json!({"mlp:latest": true, "minilm:latest": true});
    assert_eq!(body, json!({"ready": true, "store": "reachable", "models": models}));
}
