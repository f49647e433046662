//! P2: HTTP latency and throughput of lmaas's long-running HTTP mode (the release `infer` binary
//! with `LMAAS_HTTP_ADDR`) against the BASELINE a user would otherwise write (bench/baseline:
//! Python ONNX Runtime behind FastAPI/uvicorn), side by side in one run: the same MiniLM model
//! file, the same request (`POST /v1/embeddings`, one sentence), the same intra-op threads, at
//! concurrency 1, 4 and 16. The load generator shares the machine's cores with both servers.
//!
//! Run: `make bench` (or `infra/local/bench.sh http`), which starts the stack, builds the release
//! `infer` and installs the baseline's pinned packages into .lmaas/bench-venv.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(10);
const SENTENCE: &str = "A man is eating a piece of bread while the music plays on.";

struct Server {
    name: &'static str,
    url: String,
    token: Option<String>,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let port = |offset: u16| 20_000 + (std::process::id() % 20_000) as u16 + offset;
    let lmaas = Server {
        name: "lmaas",
        url: format!("http://127.0.0.1:{}", port(0)),
        token: Some(std::env::var("LMAAS_TOKEN").expect("the stack's environment (run make bench)")),
        child: Command::new(root.join("target/release/infer"))
            .env("LMAAS_HTTP_ADDR", format!("127.0.0.1:{}", port(0)))
            .env("LMAAS_PRELOAD", "minilm")
            .env("LMAAS_METRICS_ADDR", "")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("target/release/infer (make bench builds it)"),
    };
    let baseline = Server {
        name: "baseline",
        url: format!("http://127.0.0.1:{}", port(1)),
        token: None,
        child: Command::new(root.join(".lmaas/bench-venv/bin/uvicorn"))
            .args(["server:app", "--app-dir", "bench/baseline", "--host", "127.0.0.1", "--log-level", "warning"])
            .args(["--port", &port(1).to_string()])
            .env("BASELINE_MODEL_DIR", root.join(".lmaas/samples/minilm"))
            .current_dir(&root)
            .stdout(Stdio::null())
            .spawn()
            .expect(".lmaas/bench-venv/bin/uvicorn (make bench installs it)"),
    };
    runtime.block_on(async {
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
        wait_ready(&client, &format!("{}/v2/health/ready", lmaas.url)).await;
        wait_ready(&client, &format!("{}/health", baseline.url)).await;
        let (a, b) = (embed(&client, &lmaas).await, embed(&client, &baseline).await);
        let cosine: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        println!("P2: POST /v1/embeddings (minilm, 1 sentence); lmaas HTTP mode vs BASELINE (FastAPI + Python ORT)");
        println!("answers agree: cosine {cosine:.6} over {} dimensions", a.len());
        assert!(cosine > 0.9999, "the two services disagree");
        println!(
            "{:>5} {:>10} {:>10} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9}",
            "conc", "lmaas p50", "lmaas p99", "lmaas/s", "base p50", "base p99", "base/s", "p50 x", "thru x"
        );
        for concurrency in [1, 4, 16] {
            let ours = load(&client, &lmaas, concurrency).await;
            let theirs = load(&client, &baseline, concurrency).await;
            println!(
                "{concurrency:>5} {:>8.2}ms {:>8.2}ms {:>9.1} {:>8.2}ms {:>8.2}ms {:>9.1} {:>9.2} {:>9.2}",
                ours.p50_ms,
                ours.p99_ms,
                ours.per_second,
                theirs.p50_ms,
                theirs.p99_ms,
                theirs.per_second,
                ours.p50_ms / theirs.p50_ms,
                ours.per_second / theirs.per_second
            );
        }
    });
}

async fn wait_ready(client: &reqwest::Client, url: &str) {
    let started = Instant::now();
    while !client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(started.elapsed() < Duration::from_secs(90), "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn embed(client: &reqwest::Client, server: &Server) -> Vec<f64> {
    let mut request =
        client.post(format!("{}/v1/embeddings", server.url)).json(&json!({"model": "minilm", "input": SENTENCE}));
    if let Some(token) = &server.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "{}: {}", server.name, response.status());
    let body: Value = response.json().await.unwrap();
    body["data"][0]["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

struct Load {
    p50_ms: f64,
    p99_ms: f64,
    per_second: f64,
}

/// `concurrency` clients send requests back to back: a warm-up, then the measured window.
async fn load(client: &reqwest::Client, server: &Server, concurrency: usize) -> Load {
    let body = json!({"model": "minilm", "input": SENTENCE}).to_string();
    let url = Arc::new(format!("{}/v1/embeddings", server.url));
    let token = server.token.clone();
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, body, token) = (client.clone(), url.clone(), body.clone(), token.clone());
            tokio::spawn(async move {
                let mut times = Vec::new();
                while started.elapsed() < WARMUP + MEASURE {
                    let mut request =
                        client.post(url.as_str()).header("content-type", "application/json").body(body.clone());
                    if let Some(token) = &token {
                        request = request.bearer_auth(token);
                    }
                    let sent = Instant::now();
                    let response = request.send().await.expect("a response");
                    assert!(response.status().is_success());
                    response.bytes().await.expect("a body");
                    if sent.duration_since(started) >= WARMUP {
                        times.push(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                times
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await.unwrap());
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    Load { p50_ms: at(0.5), p99_ms: at(0.99), per_second: times.len() as f64 / MEASURE.as_secs_f64() }
}
