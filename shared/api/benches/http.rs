//! P2: HTTP latency and throughput of lmaas's long-running HTTP mode (the release `infer` binary
//! with `LMAAS_HTTP_ADDR`) against the BASELINE a user would otherwise write (bench/baseline:
//! Python ONNX Runtime behind FastAPI/uvicorn), side by side in one run: the same MiniLM model
//! file, the same request (`POST /v1/embeddings`, one sentence), the same intra-op threads, at
//! concurrency 1, 4 and 16, in windows that alternate the two servers. The load generator shares
//! the machine's cores with both servers.
//! Also P3, cold start: process start → first embeddings answer with an empty model cache (the
//! model in S3 on the emulator), against the floor (loading ONNX Runtime, downloading the files
//! and creating the session, each measured alone in this process) and against the baseline's
//! cold start (which reads the model from local disk), in alternating rounds; and P5, peak RSS (VmHWM) of both servers
//! with the model loaded and after the load. Writes `.lmaas/bench/http.svg` (p50, throughput).
//!
//! Run: `make bench` (or `infra/local/bench.sh http`), which starts the stack, builds the release
//! `infer` and installs the baseline's pinned packages into .lmaas/bench-venv.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const WARMUP: Duration = Duration::from_secs(2);
/// Each side's measured time per concurrency, in `ROUNDS` windows that alternate the sides.
const MEASURE: Duration = Duration::from_secs(10);
const ROUNDS: u32 = 5;
/// Unrecorded lead-in of every window: the side coming back from idle wakes its threads first.
const WINDOW_LEAD_IN: Duration = Duration::from_millis(250);
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
    let model_bytes = std::fs::metadata(root.join(".lmaas/samples/minilm/model.onnx")).unwrap().len();
    let cold = runtime.block_on(cold_starts(&root, port(2), port(3)));
    let lmaas = start_lmaas(&root, port(0), &[("LMAAS_PRELOAD", "minilm")]);
    let baseline = start_baseline(&root, port(1));
    runtime.block_on(async {
        // uvicorn closes connections idle for 5 s (its keep-alive timeout); one it closed just as a
        // request picked it from the pool fails that request (IncompleteMessage). Windows leave a
        // side idle for about 2.5 s.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(Duration::from_secs(3))
            .build()
            .unwrap();
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
        let mut rows = Vec::new();
        for concurrency in [1, 4, 16] {
            let [ours, theirs] = load_side_by_side(&client, [&lmaas, &baseline], concurrency).await;
            rows.push((concurrency, ours.p50_ms, theirs.p50_ms, ours.per_second, theirs.per_second));
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
        let svg = root.join(".lmaas/bench/http.svg");
        std::fs::write(&svg, plot(&rows)).unwrap();
        println!("plot: {}", svg.display());

        println!();
        println!("P3: cold start, process start -> first /v1/embeddings answer (minilm), {COLD_ROUNDS} rounds");
        let floors: Vec<f64> = cold.floors.iter().map(Floor::total).collect();
        let ratios: Vec<f64> = cold.lmaas_ms.iter().zip(&floors).map(|(ours, floor)| ours / floor).collect();
        let list = |values: &[f64], digits: usize| {
            values.iter().map(|v| format!("{v:.digits$}")).collect::<Vec<_>>().join(", ")
        };
        println!(
            "lmaas {:.0} ms (model from S3, empty cache; rounds {}) | floor {:.0} ms (ORT load {:.0} + download {:.0} + session {:.0}; rounds {})",
            median(&cold.lmaas_ms),
            list(&cold.lmaas_ms, 0),
            median(&floors),
            cold.floors[0].runtime_ms,
            median(&cold.floors.iter().map(|f| f.download_ms).collect::<Vec<_>>()),
            median(&cold.floors.iter().map(|f| f.session_ms).collect::<Vec<_>>()),
            list(&floors, 0)
        );
        println!(
            "x floor {:.2} (median; rounds {}) | BASELINE {:.0} ms (model on local disk; rounds {})",
            median(&ratios),
            list(&ratios, 2),
            median(&cold.baseline_ms),
            list(&cold.baseline_ms, 0)
        );
        println!();
        let limit = 2.0 * model_bytes as f64 / 1e6 + 50.0;
        println!("P5: peak RSS (VmHWM); target <= 2 x model file + 50 MB = {limit:.0} MB");
        println!(
            "lmaas  {:.0} MB after the first answer, {:.0} MB after the load | BASELINE {:.0} MB / {:.0} MB",
            cold.lmaas_rss_mb, peak_rss_mb(lmaas.child.id()), cold.baseline_rss_mb, peak_rss_mb(baseline.child.id())
        );
    });
}

/// Peak resident memory of a process, in MB (VmHWM from /proc).
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb * 1024.0 / 1e6
}

struct Floor {
    runtime_ms: f64,
    download_ms: f64,
    session_ms: f64,
}

impl Floor {
    fn total(&self) -> f64 {
        self.runtime_ms + self.download_ms + self.session_ms
    }
}

/// Cold starts per server, each round next to a floor: one cold start moves by tens of
/// milliseconds with whatever else the machine is doing, so P3 takes the median of the rounds.
const COLD_ROUNDS: usize = 5;

struct ColdStarts {
    lmaas_ms: Vec<f64>,
    lmaas_rss_mb: f64,
    baseline_ms: Vec<f64>,
    baseline_rss_mb: f64,
    floors: Vec<Floor>,
}

/// P3 and the first half of P5 (the highest peak of the rounds): each server started fresh,
/// timed to its first answer, then the floor, `COLD_ROUNDS` times.
async fn cold_starts(root: &std::path::Path, lmaas_port: u16, baseline_port: u16) -> ColdStarts {
    let client = reqwest::Client::new();
    let mut cold = ColdStarts {
        lmaas_ms: Vec::new(),
        lmaas_rss_mb: 0.0,
        baseline_ms: Vec::new(),
        baseline_rss_mb: 0.0,
        floors: Vec::new(),
    };
    // Loading ONNX Runtime happens once per process: the first round's load is every round's.
    let started = Instant::now();
    lmaas_engine::Runtime::get().unwrap();
    let runtime_ms = started.elapsed().as_secs_f64() * 1e3;
    for _ in 0..COLD_ROUNDS {
        let cache = tempfile::tempdir().unwrap();
        let cache_dir = cache.path().display().to_string();
        let started = Instant::now();
        let lmaas = start_lmaas(root, lmaas_port, &[("LMAAS_MODEL_CACHE_DIR", &cache_dir), ("LMAAS_PRELOAD", "")]);
        first_answer(&client, &lmaas, started).await;
        cold.lmaas_ms.push(started.elapsed().as_secs_f64() * 1e3);
        cold.lmaas_rss_mb = cold.lmaas_rss_mb.max(peak_rss_mb(lmaas.child.id()));
        drop(lmaas);

        let started = Instant::now();
        let baseline = start_baseline(root, baseline_port);
        first_answer(&client, &baseline, started).await;
        cold.baseline_ms.push(started.elapsed().as_secs_f64() * 1e3);
        cold.baseline_rss_mb = cold.baseline_rss_mb.max(peak_rss_mb(baseline.child.id()));
        drop(baseline);
        cold.floors.push(floor(runtime_ms).await);
    }
    cold
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// The release `infer` binary in HTTP mode on `port`, with `env` added.
fn start_lmaas(root: &std::path::Path, port: u16, env: &[(&str, &str)]) -> Server {
    let mut command = Command::new(root.join("target/release/infer"));
    command
        .env("LMAAS_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LMAAS_METRICS_ADDR", "")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null());
    Server {
        name: "lmaas",
        url: format!("http://127.0.0.1:{port}"),
        token: Some(std::env::var("LMAAS_TOKEN").expect("the stack's environment (run make bench)")),
        child: command.spawn().expect("target/release/infer (make bench builds it)"),
    }
}

/// The BASELINE (uvicorn + FastAPI + Python ORT) on `port`, reading MiniLM from local disk.
fn start_baseline(root: &std::path::Path, port: u16) -> Server {
    let child = Command::new(root.join(".lmaas/bench-venv/bin/uvicorn"))
        .args(["server:app", "--app-dir", "bench/baseline", "--host", "127.0.0.1", "--log-level", "warning"])
        .args(["--port", &port.to_string()])
        .env("BASELINE_MODEL_DIR", root.join(".lmaas/samples/minilm"))
        .current_dir(root)
        .stdout(Stdio::null())
        .spawn()
        .expect(".lmaas/bench-venv/bin/uvicorn (make bench installs it)");
    Server { name: "baseline", url: format!("http://127.0.0.1:{port}"), token: None, child }
}

/// Polls /v1/embeddings until the first success (connection refused while the process starts).
async fn first_answer(client: &reqwest::Client, server: &Server, started: Instant) {
    loop {
        let mut request =
            client.post(format!("{}/v1/embeddings", server.url)).json(&json!({"model": "minilm", "input": SENTENCE}));
        if let Some(token) = &server.token {
            request = request.bearer_auth(token);
        }
        if request.send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{} never answered", server.name);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What no cold start can avoid: loading ONNX Runtime (`runtime_ms`, timed once per process),
/// downloading the version's files from S3 and creating the session, each timed alone in this
/// process.
async fn floor(runtime_ms: f64) -> Floor {
    let sdk = lmaas_aws::sdk_config().await;
    let store = std::sync::Arc::new(lmaas_aws::S3ModelStore::new(
        lmaas_aws::config::s3_client(&sdk),
        std::env::var("LMAAS_BUCKET").expect("the stack's environment"),
    ));
    let resolver = lmaas_core::ModelResolver::new(store.clone(), Duration::from_secs(60));
    let manifest = resolver.resolve(&lmaas_core::ModelRef::parse("minilm").unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    for file in manifest.files.keys() {
        lmaas_core::ModelStore::download(
            store.as_ref(),
            &manifest.name,
            manifest.version,
            file,
            &dir.path().join(file),
        )
        .await
        .unwrap();
    }
    let download_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let model = dir.path().join("model.onnx");
    lmaas_engine::LoadedModel::load(&model, &lmaas_engine::ExecutionProviders::cpu(), 0).unwrap();
    let session_ms = started.elapsed().as_secs_f64() * 1e3;
    Floor { runtime_ms, download_ms, session_ms }
}

/// Two line charts side by side, as SVG: p50 latency and throughput against concurrency.
fn plot(rows: &[(usize, f64, f64, f64, f64)]) -> String {
    let (width, height, pad) = (420.0, 300.0, 50.0);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{height}' font-family='sans-serif' font-size='12'>",
        width * 2.0
    );
    let panels = [("p50 latency (ms), lower is better", 1, 2), ("requests/s, higher is better", 3, 4)];
    for (panel, (title, ours, theirs)) in panels.into_iter().enumerate() {
        let value = |row: &(usize, f64, f64, f64, f64), i: usize| [0.0, row.1, row.2, row.3, row.4][i];
        let max = rows.iter().flat_map(|r| [value(r, ours), value(r, theirs)]).fold(0.0, f64::max) * 1.15;
        let left = panel as f64 * width;
        let x = |i: usize| left + pad + i as f64 * (width - 2.0 * pad) / (rows.len() - 1).max(1) as f64;
        let y = |v: f64| height - pad - v / max * (height - 2.0 * pad);
        svg += &format!("<text x='{}' y='20'>{title}</text>", left + pad);
        svg += &format!(
            "<line x1='{0}' y1='{1}' x2='{2}' y2='{1}' stroke='black'/><line x1='{0}' y1='{3}' x2='{0}' y2='{1}' stroke='black'/>",
            left + pad, height - pad, left + width - pad, pad
        );
        for (i, row) in rows.iter().enumerate() {
            svg +=
                &format!("<text x='{}' y='{}' text-anchor='middle'>conc {}</text>", x(i), height - pad + 18.0, row.0);
        }
        svg += &format!(
            "<text x='{}' y='{}' text-anchor='end'>{:.0}</text>",
            left + pad - 4.0,
            y(max / 1.15) + 4.0,
            max / 1.15
        );
        for (series, color, label) in [(ours, "#d62728", "lmaas"), (theirs, "#1f77b4", "BASELINE")] {
            let points: Vec<String> =
                rows.iter().enumerate().map(|(i, r)| format!("{:.1},{:.1}", x(i), y(value(r, series)))).collect();
            svg += &format!("<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>", points.join(" "));
            for (i, r) in rows.iter().enumerate() {
                svg += &format!("<circle cx='{:.1}' cy='{:.1}' r='3' fill='{color}'/>", x(i), y(value(r, series)));
            }
            let legend_y = if series == ours { 40.0 } else { 56.0 };
            svg += &format!("<text x='{}' y='{legend_y}' fill='{color}'>{label}</text>", left + width - pad - 60.0);
        }
    }
    svg + "</svg>"
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

/// Both servers at `concurrency`: a warm-up each, then `ROUNDS` measured windows per side that
/// alternate the sides (and which goes first), so drift on a shared machine hits both alike
/// instead of whichever side ran during a busy spell.
async fn load_side_by_side(client: &reqwest::Client, servers: [&Server; 2], concurrency: usize) -> [Load; 2] {
    for server in servers {
        requests_for(client, server, concurrency, WARMUP).await;
    }
    let (mut times, mut busy) = ([Vec::new(), Vec::new()], [Duration::ZERO; 2]);
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            requests_for(client, servers[side], concurrency, WINDOW_LEAD_IN).await;
            let started = Instant::now();
            times[side].extend(requests_for(client, servers[side], concurrency, MEASURE / ROUNDS).await);
            busy[side] += started.elapsed();
        }
    }
    // Throughput over the time the windows really took (their last requests end after them).
    [0, 1].map(|side| {
        let times = &mut times[side];
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        Load { p50_ms: at(0.5), p99_ms: at(0.99), per_second: times.len() as f64 / busy[side].as_secs_f64() }
    })
}

/// `concurrency` clients send requests back to back for `window`; each request's latency in ms.
async fn requests_for(client: &reqwest::Client, server: &Server, concurrency: usize, window: Duration) -> Vec<f64> {
    let body = json!({"model": "minilm", "input": SENTENCE}).to_string();
    let url = Arc::new(format!("{}/v1/embeddings", server.url));
    let token = server.token.clone();
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, body, token) = (client.clone(), url.clone(), body.clone(), token.clone());
            tokio::spawn(async move {
                let mut times = Vec::new();
                while started.elapsed() < window {
                    let mut request =
                        client.post(url.as_str()).header("content-type", "application/json").body(body.clone());
                    if let Some(token) = &token {
                        request = request.bearer_auth(token);
                    }
                    let sent = Instant::now();
                    let response = request.send().await.expect("a response");
                    assert!(response.status().is_success());
                    response.bytes().await.expect("a body");
                    times.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                times
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await.unwrap());
    }
    times
}
