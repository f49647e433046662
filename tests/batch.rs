//! Batch jobs through the real path: S3 uploads on the emulator → its S3 → SQS notification →
//! the ingest function under cargo lambda watch → the jobs queue → worker daemons (real
//! processes, killed and stopped mid-job) → results in S3, compared with ONNX Runtime's own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lmaas_tests::{client, fixture, root, stack};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::call;

/// Puts `body` at `key` in the stack's bucket.
pub async fn upload(key: &str, body: String) {
    let s = stack();
    s.s3().await.put_object().bucket(s.bucket()).key(key).body(body.into_bytes().into()).send().await.unwrap();
}

pub(crate) async fn download(key: &str) -> Option<String> {
    let s = stack();
    let object = s.s3().await.get_object().bucket(s.bucket()).key(key).send().await.ok()?;
    Some(String::from_utf8(object.body.collect().await.unwrap().into_bytes().to_vec()).unwrap())
}

/// A fresh job id.
pub fn new_job_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("job_{:024x}", nanos & ((1u128 << 96) - 1))
}

/// Writes a queued job record straight to S3 (as the jobs API would, but on no queue), owned by
/// the dev tenant; its id.
pub async fn queued_record(job_type: &str, model: &str, input_key: &str, params: Value) -> String {
    let s = stack();
    let id = new_job_id();
    let record = json!({
        "id": id, "type": job_type, "status": "queued", "progress": {"done": 0, "total": null},
        "model": model, "input": format!("s3://{}/{input_key}", s.bucket()),
        "output": format!("s3://{}/results/{id}/", s.bucket()), "params": params, "error": null,
        "attempts": 0, "created_at": "2026-11-28T00:00:00.000Z", "started_at": null, "finished_at": null,
        "tenant": "dev", "principal": "tests"
    });
    upload(&format!("jobs/{id}.json"), record.to_string()).await;
    id
}

pub async fn job(id: &str) -> Value {
    let (status, job) = call(Method::GET, &format!("/v1/jobs/{id}"), Some(stack().admin_token()), None).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    job
}

/// Polls the job until `done` says so; the job then. Fails after `seconds`.
pub async fn wait_for(id: &str, seconds: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let job = job(id).await;
        if done(&job) {
            return job;
        }
        assert!(started.elapsed() < Duration::from_secs(seconds), "job {id} never got {what}: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The job record straight from S3: polling it is cheap, so a test can catch a job mid-chunk.
async fn record(id: &str) -> Value {
    serde_json::from_str(&download(&format!("jobs/{id}.json")).await.expect("a job record")).unwrap()
}

async fn wait_for_record(id: &str, seconds: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let job = record(id).await;
        if done(&job) {
            return job;
        }
        assert!(started.elapsed() < Duration::from_secs(seconds), "job {id} never got {what}: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_final(id: &str, seconds: u64) -> Value {
    wait_for(id, seconds, "to a final status", |j| {
        matches!(j["status"].as_str(), Some("succeeded" | "failed" | "cancelled"))
    })
    .await
}

/// The newest job for an input (ingest creates it moments after the upload).
async fn job_for_input(input: &str) -> Value {
    let started = Instant::now();
    loop {
        let (_, list) = call(Method::GET, "/v1/jobs", Some(stack().admin_token()), None).await;
        if let Some(job) = list["data"].as_array().unwrap().iter().find(|j| j["input"] == input) {
            return job.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no job appeared for {input}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn output_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).expect("output lines are JSON")).collect()
}

fn sentences_jsonl(count: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "{}\n",
                json!({"id": format!("line-{i}"), "input": format!("Sentence number {i} is about item {}.", i % 17)})
            )
        })
        .collect()
}

/// A private SQS queue (and DLQ) on the emulator, so a test's daemons see only its messages.
struct PrivateQueue {
    sqs: aws_sdk_sqs::Client,
    url: String,
    dlq_url: String,
}

impl PrivateQueue {
    async fn new(name: &str, visibility: u32, max_receive: u32) -> Self {
        let s = stack();
        let sqs = aws_sdk_sqs::Client::new(&s.sdk_config().await);
        let name = format!("{name}-{}", &new_job_id()[16..]);
        let dlq_url = sqs.create_queue().queue_name(format!("{name}-dlq")).send().await.unwrap().queue_url.unwrap();
        let dlq_arn = sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
            .clone();
        let redrive = json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive.to_string()});
        let url = sqs
            .create_queue()
            .queue_name(&name)
            .attributes(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy, redrive.to_string())
            .attributes(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, visibility.to_string())
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        PrivateQueue { sqs, url, dlq_url }
    }

    async fn send(&self, body: &str) {
        self.sqs.send_message().queue_url(&self.url).message_body(body).send().await.unwrap();
    }

    /// Bodies of the messages in the DLQ (receives them; waits up to `seconds` for `count`).
    async fn dead_letters(&self, count: usize, seconds: u64) -> Vec<String> {
        let started = Instant::now();
        let mut bodies = Vec::new();
        while bodies.len() < count && started.elapsed() < Duration::from_secs(seconds) {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.dlq_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            bodies.extend(received.messages().iter().filter_map(|m| m.body().map(str::to_string)));
        }
        bodies
    }
}

/// A worker daemon (the real binary) on a private queue, logging to the stack's state folder.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(queue: &PrivateQueue, name: &str, extra: &[(&str, &str)]) -> Daemon {
        let s = stack();
        let log = s.state.join(format!("{name}.log"));
        let env: HashMap<&str, &str> = s.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let child = Command::new(root().join("target/debug/worker"))
            .arg("--daemon")
            .env_clear()
            .envs(env)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LMAAS_JOBS_QUEUE_URL", &queue.url)
            .env("LMAAS_METRICS_ADDR", "")
            .envs(extra.iter().copied())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting target/debug/worker --daemon");
        Daemon { child, log }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit code (None: killed by a signal).
    fn wait_exit(&mut self, seconds: u64) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(started.elapsed() < Duration::from_secs(seconds), "the daemon did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cosine(a: &[Value], b: &[Value]) -> f64 {
    let (a, b): (Vec<f64>, Vec<f64>) =
        (a.iter().map(|v| v.as_f64().unwrap()).collect(), b.iter().map(|v| v.as_f64().unwrap()).collect());
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt())
}

#[tokio::test]
async fn an_uploaded_batch_is_embedded_like_onnx_runtime_and_bad_lines_are_reported() {
    let reference = fixture("minilm_sentences");
    let mut body: String = std::fs::read_to_string(root().join("samples/batch/sentences.jsonl")).unwrap();
    // Bad lines, each reported in place; blank lines are not records.
    body.push_str(
        "not json\n\n{\"input\": \"no id\"}\n{\"id\": \"empty\", \"input\": \"\"}\n{\"id\": 7, \"input\": 5}\n",
    );
    let key = format!("batch/minilm/upload-{}.jsonl", &new_job_id()[16..]);
    upload(&key, body).await;

    let found = job_for_input(&format!("s3://{}/{key}", stack().bucket())).await;
    assert_eq!((found["type"].as_str(), found["principal"].as_str()), (Some("batch_embed"), Some("s3:ingest")));
    let id = found["id"].as_str().unwrap();
    let done = wait_final(id, 120).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["progress"], json!({"done": 14, "total": 14, "errors": 4}));

    let lines = output_lines(&download(&format!("results/{id}/output.jsonl")).await.expect("output.jsonl"));
    assert_eq!(lines.len(), 14, "every line answered, in order");
    for (i, (line, expected)) in lines.iter().zip(reference["embeddings"].as_array().unwrap()).enumerate() {
        assert_eq!(line["id"], reference["ids"][i]);
        let (got, want) = (line["embedding"].as_array().unwrap(), expected.as_array().unwrap());
        assert_eq!(got.len(), 384);
        let worst =
            got.iter().zip(want).map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-4, "{}: differs from ONNX Runtime by {worst}", line["id"]);
    }
    assert!(cosine(lines[0]["embedding"].as_array().unwrap(), lines[1]["embedding"].as_array().unwrap()) > 0.7);
    let errors: Vec<(Value, Value)> = lines[10..].iter().map(|l| (l["id"].clone(), l["line"].clone())).collect();
    assert_eq!(
        errors,
        vec![(Value::Null, json!(11)), (Value::Null, json!(13)), (json!("empty"), json!(14)), (json!(7), json!(15))]
    );
    assert!(lines[10]["error"].as_str().unwrap().contains("line 11 is not JSON"), "{}", lines[10]);
    assert_eq!(lines[11]["error"], "'id' is missing");
    assert_eq!(lines[12]["error"], "'input' is an empty string");
    assert_eq!(lines[13]["error"], "'input' must be a string");

    let manifest: Value =
        serde_json::from_str(&download(&format!("results/{id}/manifest.json")).await.unwrap()).unwrap();
    assert_eq!((manifest["items"].as_u64(), manifest["errors"].as_u64()), (Some(14), Some(4)), "{manifest}");
    assert_eq!(manifest["model"], "minilm:1");
}

#[tokio::test]
async fn the_same_s3_event_twice_is_one_job_and_other_events_are_skipped() {
    let s = stack();
    let key = format!("inputs/replayed-{}.jsonl", &new_job_id()[16..]);
    upload(&key, sentences_jsonl(3)).await;
    let batch_key = format!("batch/mlp/{}", key.trim_start_matches("inputs/"));
    let event = |etag: &str| {
        json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": s.bucket()}, "object": {"key": batch_key.replace('/', "%2F"), "eTag": etag, "size": 10}}}]})
    };
    let invoke = |payload: Value| async move {
        let url = format!("{}/2015-03-31/functions/ingest/invocations", s.url);
        let response = client().post(url).json(&payload).send().await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.json::<Value>().await.unwrap()
    };
    invoke(event("etag-1")).await;
    invoke(event("etag-1")).await;
    let sqs_wrapped = json!({"Records": [
        {"messageId": "m1", "eventSource": "aws:sqs", "body": event("etag-1").to_string()},
        {"messageId": "m2", "eventSource": "aws:sqs", "body": json!({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": s.bucket()}).to_string()},
        {"messageId": "m3", "eventSource": "aws:sqs", "body": "{\"Records\": [{\"eventName\": \"ObjectRemoved:Delete\", \"s3\": {\"bucket\": {\"name\": \"x\"}, \"object\": {\"key\": \"k\"}}}]}"}
    ]});
    assert_eq!(invoke(sqs_wrapped).await, json!({"batchItemFailures": []}));

    let input = format!("s3://{}/{batch_key}", s.bucket());
    let (_, list) = call(Method::GET, "/v1/jobs", Some(s.admin_token()), None).await;
    let jobs: Vec<&Value> = list["data"].as_array().unwrap().iter().filter(|j| j["input"] == input).collect();
    assert_eq!(jobs.len(), 1, "three deliveries of one event are one job: {jobs:?}");
    assert_eq!(jobs[0]["type"], "batch_infer", "mlp is a tensor model");

    // A new upload of the same key (another ETag) is another job.
    invoke(event("etag-2")).await;
    let (_, list) = call(Method::GET, "/v1/jobs", Some(s.admin_token()), None).await;
    assert_eq!(list["data"].as_array().unwrap().iter().filter(|j| j["input"] == input).count(), 2);

    // An upload for a model that does not exist is a failed job that says why, not silence.
    let missing = json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": s.bucket()}, "object": {"key": "batch/no-such-model/x.jsonl", "eTag": new_job_id()}}}]});
    invoke(missing).await;
    let failed = job_for_input(&format!("s3://{}/batch/no-such-model/x.jsonl", s.bucket())).await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().unwrap().contains("does not exist"), "{failed}");
}

#[tokio::test]
async fn a_job_survives_sigterm_and_sigkill_of_its_workers_and_every_line_appears_once() {
    const LINES: usize = 3000;
    let queue = PrivateQueue::new("resume", 4, 5).await;
    let key = format!("inputs/resume-{}.jsonl", &new_job_id()[16..]);
    upload(&key, sentences_jsonl(LINES)).await;
    let id = queued_record("batch_embed", "minilm", &key, json!({"chunk_items": 40})).await;
    queue.send(&json!({"job_id": id}).to_string()).await;

    // SIGTERM mid-job: the current chunk finishes, the message is released, the daemon exits 0.
    let mut first = Daemon::start(&queue, &format!("{id}-first"), &[]);
    wait_for_record(&id, 120, "past its first chunk", |j| j["progress"]["done"].as_u64() >= Some(40)).await;
    first.signal("TERM");
    assert_eq!(first.wait_exit(60), Some(0), "{}", first.log());
    let released = job(&id).await;
    assert_eq!(released["status"], "queued", "{released}");
    let done_at_term = released["progress"]["done"].as_u64().unwrap();
    assert!(done_at_term < LINES as u64 && done_at_term % 40 == 0, "stopped at a chunk boundary: {released}");

    // SIGKILL mid-job: nothing graceful; the message comes back after its visibility timeout.
    let mut second = Daemon::start(&queue, &format!("{id}-second"), &[]);
    wait_for_record(&id, 120, "further", |j| {
        j["status"] == "running" && j["progress"]["done"].as_u64() > Some(done_at_term + 40)
    })
    .await;
    second.signal("KILL");
    assert_eq!(second.wait_exit(30), None);
    assert!(second.log().contains("resuming: finished chunks are skipped"), "{}", second.log());

    let third = Daemon::start(&queue, &format!("{id}-third"), &[]);
    let done = wait_final(&id, 180).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", third.log());
    assert_eq!(done["attempts"], 3);
    let lines = output_lines(&download(&format!("results/{id}/output.jsonl")).await.unwrap());
    let ids: Vec<String> = lines.iter().map(|l| l["id"].as_str().unwrap().to_string()).collect();
    let expected: Vec<String> = (0..LINES).map(|i| format!("line-{i}")).collect();
    assert_eq!(ids, expected, "every input line exactly once, in order");
    let not_embedded: Vec<&Value> =
        lines.iter().filter(|l| l["embedding"].as_array().map(Vec::len) != Some(384)).collect();
    assert!(not_embedded.is_empty(), "{} lines without an embedding, e.g. {}", not_embedded.len(), not_embedded[0]);
}

#[tokio::test]
async fn a_job_that_always_fails_goes_to_the_dlq_and_its_record_says_why() {
    let s = stack();
    // A registered model whose file was corrupted in S3 after commit: every load fails the
    // checksum, which is worth retrying (S3 may hiccup), until the queue gives up.
    let model = format!("poisoned-{}", &new_job_id()[20..]);
    let models = root().join(".lmaas/samples/mlp");
    let pushed = s.cli(&["push", models.to_str().unwrap(), "--model", &model, "--version", "1"]);
    assert!(pushed.contains("is ready"), "{pushed}");
    upload(&format!("models/{model}/versions/1/files/model.onnx"), "garbage".into()).await;
    let key = format!("inputs/poison-{model}.jsonl");
    upload(&key, "{\"id\": 1, \"inputs\": []}\n".into()).await;
    let id = queued_record("batch_infer", &model, &key, json!({})).await;

    let queue = PrivateQueue::new("poison", 2, 2).await;
    queue.send(&json!({"job_id": id}).to_string()).await;
    queue.send("this is not a jobs message").await;
    let cache = s.state.join(format!("{model}-cache"));
    let _daemon = Daemon::start(
        &queue,
        &format!("{id}-poison"),
        &[
            ("LMAAS_JOB_RETRY_BASE_SECONDS", "1"),
            ("LMAAS_JOB_RETRY_MAX_SECONDS", "1"),
            ("LMAAS_MODEL_CACHE_DIR", cache.to_str().unwrap()),
            ("LMAAS_PRELOAD", ""),
        ],
    );
    let failed = wait_final(&id, 90).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("gave up after 2 attempts") && error.contains("failed verification"), "{error}");
    let mut dead = queue.dead_letters(2, 30).await;
    dead.sort();
    let mut expected = vec![json!({"job_id": id}).to_string(), "this is not a jobs message".to_string()];
    expected.sort();
    assert_eq!(dead, expected, "both the failing job and the unreadable message are kept for operators");
}

#[tokio::test]
async fn cancelling_a_running_job_stops_it_at_a_chunk_boundary() {
    let s = stack();
    let key = format!("inputs/cancel-{}.jsonl", &new_job_id()[16..]);
    upload(&key, sentences_jsonl(4000)).await;
    let body = json!({"type": "batch_embed", "model": "minilm", "input": format!("s3://{}/{key}", s.bucket()), "params": {"chunk_items": 20}});
    let (status, submitted) = call(Method::POST, "/v1/jobs", Some(s.admin_token()), Some(&body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    let id = submitted["id"].as_str().unwrap();
    wait_for_record(id, 180, "running with progress", |j| {
        j["status"] == "running" && j["progress"]["done"].as_u64() > Some(0)
    })
    .await;
    let (status, asked) = call(Method::POST, &format!("/v1/jobs/{id}/cancel"), Some(s.admin_token()), None).await;
    assert_eq!((status, &asked["cancel_requested"]), (StatusCode::OK, &json!(true)), "{asked}");
    let cancelled = wait_final(id, 60).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let done = cancelled["progress"]["done"].as_u64().unwrap();
    assert!(done < 4000 && done % 20 == 0, "{cancelled}");
    assert!(cancelled["error"].as_str().unwrap().contains("chunk boundary"), "{cancelled}");
    assert_eq!(download(&format!("results/{id}/output.jsonl")).await, None, "no output for a cancelled job");
}

#[tokio::test]
async fn the_lambda_worker_reports_partial_batch_failures() {
    let s = stack();
    let key = format!("inputs/lambda-{}.jsonl", &new_job_id()[16..]);
    upload(&key, "{\"id\": \"a\", \"inputs\": [{\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [1, 4], \"data\": [1, 2, 3, 4]}]}\n{\"id\": \"b\", \"inputs\": [{\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [1, 3], \"data\": [1, 2, 3]}]}\n".into()).await;
    let id = queued_record("batch_infer", "mlp", &key, json!({})).await;
    let record = |message_id: &str, body: String| json!({"messageId": message_id, "receiptHandle": "not-a-real-handle", "body": body, "attributes": {"ApproximateReceiveCount": "1"}, "eventSource": "aws:sqs"});
    let event =
        json!({"Records": [record("good", json!({"job_id": id}).to_string()), record("poison", "nonsense".into())]});
    let url = format!("{}/2015-03-31/functions/worker/invocations", s.url);
    let answer: Value = client().post(url).json(&event).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer, json!({"batchItemFailures": [{"itemIdentifier": "poison"}]}));

    let done = job(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let lines = output_lines(&download(&format!("results/{id}/output.jsonl")).await.unwrap());
    let reference = fixture("mlp");
    assert_eq!(lines[0]["id"], "a");
    assert_eq!(lines[0]["outputs"][0]["shape"], json!([1, 3]));
    let expected: Vec<f64> =
        reference["expected"].as_object().unwrap().values().next().unwrap()["data"].as_array().unwrap()[..3]
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
    let got: Vec<f64> =
        lines[0]["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(got.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5), "{got:?} vs {expected:?}");
    assert_eq!(lines[1]["id"], "b");
    assert!(lines[1]["error"].as_str().unwrap().contains("shape"), "{}", lines[1]);
}

/// A job's chunks become one output object: in order, byte for byte, through a multipart upload
/// once the output passes one 16 MiB part, with the chunks' counts added up. The chunks are then
/// deleted; a chunk that is missing or carries no counts fails the assembly by name.
#[tokio::test]
async fn chunks_assemble_into_one_output_in_order_and_are_deleted() {
    let s = stack();
    let objects = lmaas_aws::BatchObjects::new(s.s3().await, s.bucket());
    let prefix = format!("results/{}/", new_job_id());
    let (mut keys, mut expected, mut items) = (Vec::new(), Vec::new(), 0);
    for i in 0..24u64 {
        // About 1.5 MB each, 36 MB in all: three parts.
        let line = format!("{{\"chunk\":{i},\"pad\":\"{}\"}}\n", "x".repeat(100 + i as usize));
        let body = line.repeat(1_500_000 / line.len()).into_bytes();
        let key = format!("{prefix}chunks/{i:05}.jsonl");
        let counts = lmaas_aws::batch::ChunkCounts { items: i + 1, errors: i % 3 };
        assert!(objects.put_chunk(&key, body.clone(), &counts).await.unwrap());
        expected.extend_from_slice(&body);
        items += i + 1;
        keys.push(key);
    }
    let output = format!("{prefix}output.jsonl");
    let started = Instant::now();
    let totals = objects.assemble(&keys, &output).await.unwrap();
    println!("assembled {} bytes from {} chunks in {:?}", expected.len(), keys.len(), started.elapsed());
    assert_eq!(totals, lmaas_aws::batch::ChunkCounts { items, errors: (0..24).map(|i| i % 3).sum() });
    let written = download(&output).await.expect("the output");
    assert_eq!(written.len(), expected.len());
    assert!(written.as_bytes() == expected, "the output is the chunks in order");

    objects.delete(&keys).await;
    for key in &keys {
        assert!(download(key).await.is_none(), "{key} is deleted");
    }
    // The emulator keeps objects in memory: the rest of the suite need not carry these 36 MB.
    objects.delete(std::slice::from_ref(&output)).await;

    let missing = format!("{prefix}chunks/99999.jsonl");
    let error = objects.assemble(std::slice::from_ref(&missing), &format!("{prefix}again.jsonl")).await.unwrap_err();
    assert!(error.to_string().contains(&missing), "{error}");
    let bare = format!("{prefix}bare.jsonl");
    upload(&bare, "{}\n".into()).await;
    let error = objects.assemble(std::slice::from_ref(&bare), &format!("{prefix}again.jsonl")).await.unwrap_err();
    assert!(error.to_string().contains("has no lmaas counts"), "{error}");
}
