//! `lmaas jobs submit|get|wait|ls|cancel|upload`: the jobs API, plus the S3 path (`upload` puts a
//! JSONL file under `batch/{model}/`, which the ingest function turns into a job).

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::api::Api;

#[derive(Subcommand)]
pub enum JobsCommand {
    /// Submit a job and print it (with --wait, follow it to the end).
    Submit {
        /// batch_embed, batch_infer, quantize or train_classifier.
        #[arg(long = "type")]
        job_type: String,
        #[arg(long)]
        model: String,
        /// s3://{bucket}/… JSONL input.
        #[arg(long)]
        input: String,
        /// s3://{bucket}/…/ output folder (default results/{job_id}/).
        #[arg(long)]
        output: Option<String>,
        /// key=value job parameters (repeatable; values parse as JSON when they can).
        #[arg(long = "param")]
        params: Vec<String>,
        /// Submitting again with the same key returns the same job.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Print a job.
    Get { id: String },
    /// Follow a job with a progress bar until it finishes; fails unless it succeeded.
    Wait { id: String },
    /// List jobs, newest first.
    Ls {
        #[arg(long)]
        status: Option<String>,
    },
    /// Cancel a job (a running one stops at its next chunk boundary).
    Cancel { id: String },
    /// Upload a JSONL file to s3://$LMAAS_BUCKET/batch/{model}/{file name}, which starts a job by
    /// itself; print that job (with --wait, follow it). Needs AWS credentials for the bucket.
    Upload {
        model: String,
        file: std::path::PathBuf,
        #[arg(long)]
        wait: bool,
    },
}

pub async fn jobs(bucket: &str, command: JobsCommand) -> anyhow::Result<()> {
    let api = Api::from_env()?;
    match command {
        JobsCommand::Submit { job_type, model, input, output, params, idempotency_key, wait } => {
            let mut body =
                json!({ "type": job_type, "model": model, "input": input, "params": parse_params(&params)? });
            if let Some(output) = output {
                body["output"] = Value::from(output);
            }
            let mut request = api.request(Method::POST, "/v1/jobs").json(&body);
            if let Some(key) = idempotency_key {
                request = request.header("idempotency-key", key);
            }
            let job = api.send(request).await?;
            finish(&api, job, wait).await
        }
        JobsCommand::Get { id } => {
            println!("{}", serde_json::to_string_pretty(&get(&api, &id).await?)?);
            Ok(())
        }
        JobsCommand::Wait { id } => finish(&api, get(&api, &id).await?, true).await,
        JobsCommand::Ls { status } => {
            let path = match status {
                Some(status) => format!("/v1/jobs?status={status}"),
                None => "/v1/jobs".to_string(),
            };
            let list = api.send(api.request(Method::GET, &path)).await?;
            println!("{:<28} {:<12} {:<10} {:<16} {:>14}  created_at", "id", "type", "status", "model", "progress");
            for job in list["data"].as_array().into_iter().flatten() {
                println!(
                    "{:<28} {:<12} {:<10} {:<16} {:>14}  {}",
                    text(&job["id"]),
                    text(&job["type"]),
                    text(&job["status"]),
                    text(&job["model"]),
                    progress(job),
                    text(&job["created_at"])
                );
            }
            Ok(())
        }
        JobsCommand::Cancel { id } => {
            let job = api.send(api.request(Method::POST, &format!("/v1/jobs/{id}/cancel"))).await?;
            println!("{} {}", text(&job["id"]), text(&job["status"]));
            Ok(())
        }
        JobsCommand::Upload { model, file, wait } => {
            if bucket.is_empty() {
                bail!("set LMAAS_BUCKET or pass --bucket");
            }
            let name = file.file_name().and_then(|n| n.to_str()).context("the file needs a name")?;
            if !name.ends_with(".jsonl") {
                bail!("batch inputs are JSONL files ending in .jsonl");
            }
            let key = format!("batch/{model}/{name}");
            let s3 = lmaas_aws::config::s3_client(&lmaas_aws::sdk_config().await);
            let body = aws_sdk_s3::primitives::ByteStream::from_path(&file)
                .await
                .with_context(|| format!("reading {}", file.display()))?;
            s3.put_object().bucket(bucket).key(&key).body(body).send().await.context("uploading to S3")?;
            let input = format!("s3://{bucket}/{key}");
            eprintln!("uploaded {input}; waiting for its job");
            let job = find_job(&api, &input).await?;
            finish(&api, job, wait).await
        }
    }
}

async fn get(api: &Api, id: &str) -> anyhow::Result<Value> {
    api.send(api.request(Method::GET, &format!("/v1/jobs/{id}"))).await
}

/// The newest job for `input` (the ingest function creates it moments after the upload).
async fn find_job(api: &Api, input: &str) -> anyhow::Result<Value> {
    for _ in 0..60 {
        let list = api.send(api.request(Method::GET, "/v1/jobs")).await?;
        if let Some(job) = list["data"].as_array().into_iter().flatten().find(|j| j["input"] == input) {
            return Ok(job.clone());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("no job appeared for {input} within 30 s; is the ingest function wired to the bucket?")
}

async fn finish(api: &Api, job: Value, wait: bool) -> anyhow::Result<()> {
    if !wait {
        println!("{}", serde_json::to_string_pretty(&job)?);
        return Ok(());
    }
    let id = text(&job["id"]).to_string();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} items ({per_sec}, eta {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut job = job;
    loop {
        bar.set_message(format!("{id} {}", text(&job["status"])));
        if let Some(total) = job["progress"]["total"].as_u64() {
            bar.set_length(total);
        }
        bar.set_position(job["progress"]["done"].as_u64().unwrap_or(0));
        if matches!(text(&job["status"]), "succeeded" | "failed" | "cancelled") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        job = get(api, &id).await?;
    }
    bar.finish();
    println!("{}", serde_json::to_string_pretty(&job)?);
    match text(&job["status"]) {
        "succeeded" => Ok(()),
        status => bail!("job {id} {status}: {}", text(&job["error"])),
    }
}

fn parse_params(params: &[String]) -> anyhow::Result<Value> {
    let mut map = Map::new();
    for param in params {
        let (key, value) = param.split_once('=').with_context(|| format!("--param '{param}' is not key=value"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
        map.insert(key.to_string(), value);
    }
    Ok(Value::Object(map))
}

fn progress(job: &Value) -> String {
    let done = job["progress"]["done"].as_u64().unwrap_or(0);
    match job["progress"]["total"].as_u64() {
        Some(total) => format!("{done}/{total}"),
        None => format!("{done}/?"),
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}
