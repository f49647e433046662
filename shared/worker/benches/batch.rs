//! `batch_embed` throughput: lmaas vs raw ONNX Runtime on the same batches and threads, side by
//! side in one run, then 1 vs 2 fleet daemons on this machine with their peak RSS.
//!
//! - raw: tokenizers + `session.run` + mean pooling + normalization, chunks of 256 lines sorted by
//!   length and cut into the same batches the worker plans (the same budget), all in memory;
//! - lmaas job: the real `JobRunner` in process on the sentences in S3 (streaming them, chunk
//!   writes with If-None-Match, progress records, assembly, result manifest);
//! - daemons: `target/release/worker --daemon` processes on a private queue, the sentences split
//!   into 4 jobs, wall time from enqueue to the last job's success.
//!
//! Each lmaas window runs next to a raw window over the same sentences, and which goes first
//! alternates, so a busy spell on a shared machine lands on both sides rather than on one row.
//! A row's ratio is its items/s over the items/s of the raw windows paired with it.
//!
//! Needs the local stack's environment (make bench starts it and builds the release worker).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lmaas_api::WorkerConfig;
use lmaas_core::jobs::{Job, JobId, JobStatus, JobStore, JobType};
use lmaas_engine::Runtime;
use lmaas_worker::chunk::{plan_batches, BatchBudget};
use lmaas_worker::{Delivery, Outcome};
use ort::value::Tensor;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Sentences per window: 20 chunks, about 30 s of raw work on 2 cores.
const SENTENCES: usize = 5_120;
const CHUNK: usize = 256;
/// Each row gets this many windows, raw first in every other one.
const ROUNDS: usize = 2;

/// What runs next to raw ORT in a window.
#[derive(Clone, Copy)]
enum Contender {
    InProcess,
    Daemons(usize),
}

impl Contender {
    fn label(self) -> String {
        match self {
            Contender::InProcess => "lmaas job (JobRunner, S3 in/out)".into(),
            Contender::Daemons(1) => "1 daemon, 4 jobs".into(),
            Contender::Daemons(n) => format!("{n} daemons (CPUs split), 4 jobs"),
        }
    }
}

/// One row's windows: raw seconds, lmaas seconds, and the daemons' peak RSS in KiB.
#[derive(Default)]
struct Row {
    raw: Vec<f64>,
    lmaas: Vec<f64>,
    rss: Vec<u64>,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let config = WorkerConfig::from_env().expect("the stack's environment (run make bench)");
    let texts = sentences(SENTENCES);
    let jsonl = jsonl(&texts);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "batch_embed of {SENTENCES} sentences with minilm, {threads} threads, chunks of {CHUNK}, \
         {ROUNDS} alternating windows per row"
    );

    // Both sides warm up on one chunk first.
    let mut raw = RawOrt::new();
    raw.embed(&texts[..CHUNK]);
    let runner = runtime.block_on(warm_runner(&config, &texts[..CHUNK]));
    let contenders = [Contender::InProcess, Contender::Daemons(1), Contender::Daemons(2)];
    let mut rows: Vec<Row> = contenders.iter().map(|_| Row::default()).collect();
    for round in 0..ROUNDS {
        for (index, (&contender, row)) in contenders.iter().zip(&mut rows).enumerate() {
            let raw_first = (round + index) % 2 == 0;
            if raw_first {
                row.raw.push(raw.embed(&texts));
            }
            let seconds = match contender {
                Contender::InProcess => runtime.block_on(in_process_job(&config, &runner, &jsonl)),
                Contender::Daemons(daemons) => {
                    let (seconds, rss) = runtime.block_on(fleet(&config, &jsonl, daemons, round));
                    row.rss.extend(rss);
                    seconds
                }
            };
            row.lmaas.push(seconds);
            if !raw_first {
                row.raw.push(raw.embed(&texts));
            }
        }
    }

    let rate = |windows: &[f64]| (SENTENCES * windows.len()) as f64 / windows.iter().sum::<f64>();
    let all_raw: Vec<f64> = rows.iter().flat_map(|r| r.raw.iter().copied()).collect();
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>16} {:>14}",
        "", "items/s", "raw items/s", "x raw", "x raw by window", "peak RSS MiB"
    );
    println!(
        "{:<34} {:>10.1} {:>10} {:>10} {:>16} {:>14}",
        "raw ORT (same batches, in memory)",
        rate(&all_raw),
        "-",
        "1.00",
        "-",
        "-"
    );
    for (contender, row) in contenders.iter().zip(&rows) {
        let windows: Vec<String> = row.raw.iter().zip(&row.lmaas).map(|(r, l)| format!("{:.2}", r / l)).collect();
        let rss = row.rss.iter().max().map_or("-".into(), |kib| format!("{:.0}", *kib as f64 / 1024.0));
        println!(
            "{:<34} {:>10.1} {:>10.1} {:>10.2} {:>16} {:>14}",
            contender.label(),
            rate(&row.lmaas),
            rate(&row.raw),
            rate(&row.lmaas) / rate(&row.raw),
            windows.join(" "),
            rss
        );
    }
}

/// Varied English-like sentences, 4 to 40 words, the same every run.
fn sentences(count: usize) -> Vec<String> {
    const WORDS: [&str; 32] = [
        "the", "model", "serves", "requests", "quickly", "a", "man", "is", "eating", "food", "while", "riding",
        "horse", "through", "woods", "and", "music", "plays", "on", "violin", "data", "flows", "into", "storage",
        "every", "night", "batch", "jobs", "finish", "before", "morning", "arrives",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let length = 4 + (next() % 37) as usize;
            let words: Vec<&str> = (0..length).map(|_| WORDS[(next() % WORDS.len() as u64) as usize]).collect();
            format!("{}.", words.join(" "))
        })
        .collect()
}

/// The baseline: what a user would write with `ort` and `tokenizers` directly.
struct RawOrt {
    session: ort::session::Session,
    tokenizer: tokenizers::Tokenizer,
}

impl RawOrt {
    fn new() -> Self {
        let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.lmaas/samples/minilm");
        let runtime = Runtime::get().expect("ONNX Runtime");
        let session =
            runtime.session_builder().unwrap().commit_from_file(models.join("model.onnx")).expect("a raw session");
        let mut tokenizer = tokenizers::Tokenizer::from_file(models.join("tokenizer.json")).unwrap();
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: 128, ..Default::default() }))
            .unwrap();
        RawOrt { session, tokenizer }
    }

    /// Embeds the texts; the seconds it took.
    fn embed(&mut self, texts: &[String]) -> f64 {
        let RawOrt { session, tokenizer } = self;
        let started = Instant::now();
        let mut checksum = 0f32;
        for chunk in texts.chunks(CHUNK) {
            let encodings = tokenizer.encode_batch(chunk.iter().map(String::as_str).collect::<Vec<_>>(), true).unwrap();
            let mut order: Vec<usize> = (0..encodings.len()).collect();
            order.sort_by_key(|&k| std::cmp::Reverse(encodings[k].get_ids().len()));
            for batch in plan_batches(&order, |k| encodings[k].get_ids().len(), BatchBudget::default()) {
                let seq = batch.iter().map(|&k| encodings[k].get_ids().len()).max().unwrap();
                let (mut ids, mut mask) = (vec![0i64; batch.len() * seq], vec![0i64; batch.len() * seq]);
                for (row, &k) in batch.iter().enumerate() {
                    for (t, &id) in encodings[k].get_ids().iter().enumerate() {
                        ids[row * seq + t] = i64::from(id);
                        mask[row * seq + t] = 1;
                    }
                }
                let shape = vec![batch.len(), seq];
                let outputs = session
                    .run(ort::inputs![
                        "input_ids" => Tensor::from_array((shape.clone(), ids)).unwrap(),
                        "attention_mask" => Tensor::from_array((shape.clone(), mask.clone())).unwrap(),
                        "token_type_ids" => Tensor::from_array((shape.clone(), vec![0i64; batch.len() * seq])).unwrap(),
                    ])
                    .unwrap();
                let (_, states) = outputs[0].try_extract_tensor::<f32>().unwrap();
                let pooled = lmaas_engine::embeddings::pool(
                    states,
                    &mask,
                    batch.len(),
                    seq,
                    384,
                    lmaas_engine::embeddings::Pooling::Mean,
                );
                for mut vector in pooled {
                    lmaas_engine::embeddings::normalize(&mut vector);
                    checksum += vector[0];
                }
            }
        }
        std::hint::black_box(checksum);
        started.elapsed().as_secs_f64()
    }
}

/// `{"id", "input"}` lines, the job input.
fn jsonl(texts: &[String]) -> String {
    texts.iter().enumerate().map(|(i, t)| format!("{}\n", json!({"id": i, "input": t}))).collect()
}

/// The runner after a job over `texts`, so windows measure jobs, not the model's download.
async fn warm_runner(config: &WorkerConfig, texts: &[String]) -> Arc<lmaas_worker::JobRunner> {
    let (runner, _) = lmaas_worker::runner_from_env(config).await;
    let s3 = lmaas_aws::config::s3_client(&lmaas_aws::sdk_config().await);
    let jobs = lmaas_aws::S3JobStore::new(s3.clone(), config.bucket.clone());
    let warm = put_job(&s3, &jobs, &config.bucket, &jsonl(texts)).await;
    assert_eq!(
        runner.run(&warm, delivery(), &CancellationToken::new()).await,
        Outcome::Done(Some(JobStatus::Succeeded))
    );
    runner
}

async fn in_process_job(config: &WorkerConfig, runner: &lmaas_worker::JobRunner, jsonl: &str) -> f64 {
    let s3 = lmaas_aws::config::s3_client(&lmaas_aws::sdk_config().await);
    let jobs = lmaas_aws::S3JobStore::new(s3.clone(), config.bucket.clone());
    let id = put_job(&s3, &jobs, &config.bucket, jsonl).await;
    let started = Instant::now();
    let outcome = runner.run(&id, delivery(), &CancellationToken::new()).await;
    assert_eq!(outcome, Outcome::Done(Some(JobStatus::Succeeded)));
    started.elapsed().as_secs_f64()
}

fn delivery() -> Delivery {
    Delivery { receive_count: 1, max_receive: 5 }
}

async fn put_job(s3: &aws_sdk_s3::Client, jobs: &lmaas_aws::S3JobStore, bucket: &str, jsonl: &str) -> JobId {
    let mut bytes = [0u8; 12];
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    bytes.copy_from_slice(&nanos.to_le_bytes()[..12]);
    let id = JobId::from_random(bytes);
    let key = format!("bench/{id}.jsonl");
    s3.put_object().bucket(bucket).key(&key).body(jsonl.as_bytes().to_vec().into()).send().await.unwrap();
    let job = Job::queued(
        id.clone(),
        JobType::BatchEmbed,
        "minilm".into(),
        format!("s3://{bucket}/{key}"),
        lmaas_core::jobs::default_output(bucket, &id),
        json!({ "chunk_items": CHUNK }),
        "dev".into(),
        "bench".into(),
    );
    assert!(jobs.create(&job).await.unwrap());
    id
}

/// Runs 4 jobs over the sentences on `daemons` worker processes; wall seconds and each one's
/// peak RSS in KiB.
async fn fleet(config: &WorkerConfig, jsonl: &str, daemons: usize, round: usize) -> (f64, Vec<u64>) {
    let sdk = lmaas_aws::sdk_config().await;
    let (s3, sqs) = (lmaas_aws::config::s3_client(&sdk), lmaas_aws::config::sqs_client(&sdk));
    let jobs = Arc::new(lmaas_aws::S3JobStore::new(s3.clone(), config.bucket.clone()));
    let queue =
        sqs.create_queue().queue_name(format!("bench-{daemons}-{round}")).send().await.unwrap().queue_url.unwrap();
    let lines: Vec<&str> = jsonl.lines().collect();
    let mut ids = Vec::new();
    for part in lines.chunks(lines.len().div_ceil(4)) {
        let body: String = part.iter().map(|l| format!("{l}\n")).collect();
        ids.push(put_job(&s3, &jobs, &config.bucket, &body).await);
    }
    let worker = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/worker");
    // Several daemons on one host split its CPUs, as containers with a CPU limit each would;
    // ONNX Runtime sizes its thread pool to the CPUs a process may use.
    let cpus = allowed_cpus();
    let share = (cpus.len() / daemons).max(1);
    let mut children: Vec<Child> = (0..daemons)
        .map(|d| {
            let mine: Vec<String> = cpus.iter().cycle().skip(d * share).take(share).map(usize::to_string).collect();
            Command::new("taskset")
                .arg("-c")
                .arg(mine.join(","))
                .arg(&worker)
                .arg("--daemon")
                .env("LMAAS_JOBS_QUEUE_URL", &queue)
                .env("LMAAS_METRICS_ADDR", "")
                .env("LMAAS_PRELOAD", "minilm")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("taskset (util-linux) and target/release/worker (make bench builds it)")
        })
        .collect();
    // They preload the model before polling; give that time before the clock starts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let started = epoch_now();
    for id in &ids {
        sqs.send_message().queue_url(&queue).message_body(json!({ "job_id": id }).to_string()).send().await.unwrap();
    }
    // The records say when each job finished, so polling them can be sparse: every poll is a
    // request the emulator serves on the same two cores the daemons work on.
    let mut finished = 0f64;
    for id in &ids {
        loop {
            let (job, _) = jobs.get(id).await.unwrap().unwrap();
            if job.status.is_terminal() {
                assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
                finished = finished.max(epoch_of(job.finished_at.as_deref().unwrap_or_default()));
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let seconds = finished - started;
    let rss = children.iter().map(|c| peak_rss_kib(c.id())).collect();
    for child in &mut children {
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let _ = child.wait();
    }
    (seconds, rss)
}

/// Seconds since the epoch, to the millisecond like job records.
fn epoch_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as f64 / 1000.0
}

/// A record's `YYYY-MM-DDTHH:MM:SS.mmmZ` as seconds since the epoch.
fn epoch_of(rfc3339: &str) -> f64 {
    let millis: f64 = rfc3339.get(20..23).and_then(|m| m.parse().ok()).expect("a timestamp with milliseconds");
    lmaas_core::time::epoch_seconds(rfc3339) as f64 + millis / 1000.0
}

/// The CPUs this process may run on (`Cpus_allowed_list`, e.g. `0-3,6`).
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or("0").trim().to_string();
    list.split(',')
        .flat_map(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            first.parse::<usize>().unwrap_or(0)..=last.parse::<usize>().unwrap_or(0)
        })
        .collect()
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
