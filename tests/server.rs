//! The long-running HTTP mode (`LMAAS_HTTP_ADDR`): the real infer binary served by hyper outside
//! Lambda, against the stack's S3, answering like it does under cargo lambda watch.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lmaas_tests::{assert_tensor_matches, client, fixture, free_port, root, stack};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn the_infer_function_serves_http_directly_with_metrics_and_a_graceful_stop() {
    let s = stack();
    let (port, metrics_port) = (free_port(), free_port());
    let log = s.state.join("infer-http.log");
    let mut child = Command::new(root().join("target/debug/infer"))
        .envs(&s.env)
        .env("LMAAS_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LMAAS_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("LMAAS_PRELOAD", "mlp")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("target/debug/infer");
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        let ready = client().get(format!("{url}/v2/health/ready")).send().await;
        if ready.as_ref().is_ok_and(|r| r.status() == StatusCode::OK) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not ready: {ready:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let fixture = fixture("mlp");
    let http = client();
    for _ in 0..5 {
        // One client: the requests share a kept-alive connection.
        let response = http
            .post(format!("{url}/v2/models/mlp/infer"))
            .bearer_auth(s.admin_token())
            .json(&fixture["request"])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().contains_key("x-request-id"));
        let body: Value = response.json().await.unwrap();
        for (name, expected) in fixture["expected"].as_object().unwrap() {
            let output = body["outputs"].as_array().unwrap().iter().find(|o| o["name"] == *name).unwrap();
            assert_tensor_matches(name, output, expected, 1e-5);
        }
    }
    let anonymous = http.post(format!("{url}/v2/models/mlp/infer")).json(&fixture["request"]).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers().contains_key("www-authenticate"));

    let metrics =
        http.get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.unwrap().text().await.unwrap();
    let served =
        r#"lmaas_request_duration_seconds_count{function="infer",route="/v2/models/{model}/infer",status="200"} 5"#;
    assert!(metrics.contains(served), "{metrics}");

    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    let stopped = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(stopped.elapsed() < Duration::from_secs(40), "the server did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "{}", std::fs::read_to_string(&log).unwrap_or_default());
}
