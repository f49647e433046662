//! `batch_embed` throughput: lmaas vs raw ONNX Runtime on the same batches and threads, side by
//! side in one run, then 1 vs 2 fleet daemons on this machine with their peak RSS.
//!
//! - raw: tokenizers + `session.run` + mean pooling + normalization, chunks of 256 lines sorted by
//!   length and cut into the same batches the worker plans (the same budget), all in memory;
//! - lmaas job: the real `JobRunner` in process on a 10,000-line input in S3 (streaming it, chunk
//!   writes with If-None-Match, progress records, assembly, result manifest);
//! - daemons: `target/release/worker --daemon` processes on a private queue, the same 10,000
//!   lines split into 4 jobs, wall time from enqueue to the last job's success.
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

const SENTENCES: usize = 10_000;
const CHUNK: usize = 256;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let config = WorkerConfig::from_env().expect("the stack's environment (run make bench)");
    let texts = sentences(SENTENCES);
    let jsonl: String = texts.iter().enumerate().map(|(i, t)| format!("{}\n", json!({"id": i, "input": t}))).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("batch_embed of {SENTENCES} sentences with minilm, {threads} threads, chunks of {CHUNK}");
    println!("{:<34} {:>10} {:>10} {:>10} {:>14}", "", "seconds", "items/s", "x raw", "peak RSS MiB");

    let raw_seconds = raw_ort(&texts);
    let raw_rate = SENTENCES as f64 / raw_seconds;
    println!(
        "{:<34} {:>10.2} {:>10.1} {:>10} {:>14}",
        "raw ORT (same batches, in memory)", raw_seconds, raw_rate, "1.00", "-"
    );

    let seconds = runtime.block_on(in_process_job(&config, &jsonl));
    let rate = SENTENCES as f64 / seconds;
    println!(
        "{:<34} {:>10.2} {:>10.1} {:>10.2} {:>14}",
        "lmaas job (JobRunner, S3 in/out)",
        seconds,
        rate,
        rate / raw_rate,
        "-"
    );

    for daemons in [1, 2] {
        let (seconds, rss) = runtime.block_on(fleet(&config, &jsonl, daemons));
        let rate = SENTENCES as f64 / seconds;
        let rss: Vec<String> = rss.iter().map(|r| format!("{:.0}", *r as f64 / 1024.0)).collect();
        let label = format!("{daemons} daemon(s), 4 jobs");
        println!("{label:<34} {seconds:>10.2} {rate:>10.1} {:>10.2} {:>14}", rate / raw_rate, rss.join(" + "));
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

fn raw_ort(texts: &[String]) -> f64 {
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.lmaas/samples/minilm");
    let runtime = Runtime::get().expect("ONNX Runtime");
    let mut session =
        runtime.session_builder().unwrap().commit_from_file(models.join("model.onnx")).expect("a raw session");
    let mut tokenizer = tokenizers::Tokenizer::from_file(models.join("tokenizer.json")).unwrap();
    tokenizer.with_padding(None);
    tokenizer.with_truncation(Some(tokenizers::TruncationParams { max_length: 128, ..Default::default() })).unwrap();
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

async fn in_process_job(config: &WorkerConfig, jsonl: &str) -> f64 {
    let (runner, _) = lmaas_worker::runner_from_env(config).await;
    let s3 = lmaas_aws::config::s3_client(&lmaas_aws::sdk_config().await);
    let jobs = lmaas_aws::S3JobStore::new(s3.clone(), config.bucket.clone());
    // Warm the model cache so the row measures the job, not the first download.
    let warm = put_job(&s3, &jobs, &config.bucket, &texts_jsonl(jsonl, 8)).await;
    assert_eq!(
        runner.run(&warm, delivery(), &CancellationToken::new()).await,
        Outcome::Done(Some(JobStatus::Succeeded))
    );
    let id = put_job(&s3, &jobs, &config.bucket, jsonl).await;
    let started = Instant::now();
    let outcome = runner.run(&id, delivery(), &CancellationToken::new()).await;
    assert_eq!(outcome, Outcome::Done(Some(JobStatus::Succeeded)));
    started.elapsed().as_secs_f64()
}

fn texts_jsonl(jsonl: &str, lines: usize) -> String {
    jsonl.lines().take(lines).map(|l| format!("{l}\n")).collect()
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
async fn fleet(config: &WorkerConfig, jsonl: &str, daemons: usize) -> (f64, Vec<u64>) {
    let sdk = lmaas_aws::sdk_config().await;
    let (s3, sqs) = (lmaas_aws::config::s3_client(&sdk), lmaas_aws::config::sqs_client(&sdk));
    let jobs = Arc::new(lmaas_aws::S3JobStore::new(s3.clone(), config.bucket.clone()));
    let queue = sqs.create_queue().queue_name(format!("bench-{daemons}")).send().await.unwrap().queue_url.unwrap();
    let lines: Vec<&str> = jsonl.lines().collect();
    let mut ids = Vec::new();
    for part in lines.chunks(lines.len().div_ceil(4)) {
        let body: String = part.iter().map(|l| format!("{l}\n")).collect();
        ids.push(put_job(&s3, &jobs, &config.bucket, &body).await);
    }
    let worker = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/worker");
    let mut children: Vec<Child> = (0..daemons)
        .map(|_| {
            Command::new(&worker)
                .arg("--daemon")
                .env("LMAAS_JOBS_QUEUE_URL", &queue)
                .env("LMAAS_METRICS_ADDR", "")
                .env("LMAAS_PRELOAD", "minilm")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("target/release/worker (make bench builds it)")
        })
        .collect();
    // They preload the model before polling; give that time before the clock starts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let started = Instant::now();
    for id in &ids {
        sqs.send_message().queue_url(&queue).message_body(json!({ "job_id": id }).to_string()).send().await.unwrap();
    }
    for id in &ids {
        loop {
            let (job, _) = jobs.get(id).await.unwrap().unwrap();
            if job.status.is_terminal() {
                assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss = children.iter().map(|c| peak_rss_kib(c.id())).collect();
    for child in &mut children {
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let _ = child.wait();
    }
    (seconds, rss)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
