//! `lmaas`: the command line. `push`, `models`, `jobs` and `infer` use the HTTP API (`LMAAS_URL`,
//! `LMAAS_TOKEN`, or `.lmaas/dev.env`); `keys` manages API keys directly in the bucket (so AWS IAM
//! decides who may), storing only each key's sha256.

mod api;
mod jobs;
mod push;
mod quantize;

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use lmaas_aws::S3KeyStore;
use lmaas_core::auth::{api_key_hash, format_api_key, now_seconds, KeyRecord, KeyStore};
use lmaas_core::Scope;

#[derive(Parser)]
#[command(name = "lmaas", about = "lmaas command line")]
struct Cli {
    /// The lmaas bucket.
    #[arg(long, env = "LMAAS_BUCKET", global = true, default_value = "")]
    bucket: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage API keys (operators: talks to the bucket with AWS credentials).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Upload a model folder, or its files (model.onnx, optional tokenizer.json, lmaas.json,
    /// external data), as a new version.
    Push {
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        #[arg(long)]
        model: String,
        #[arg(long)]
        version: u32,
        /// tensor or embeddings.
        #[arg(long, default_value = "tensor")]
        task: String,
        /// Aliases to point at the new version once it is committed (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Inspect and manage model versions.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Embed texts with an embeddings model and print the vectors (one JSON array per line).
    Embed {
        #[arg(long, default_value = "minilm")]
        model: String,
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Submit, follow and cancel jobs; upload batch inputs.
    Jobs {
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// Quantize a local model file and print the quality report (JSON). Files beside the input
    /// (tokenizer.json, lmaas.json) make it an embeddings model, measured by cosine.
    Quantize {
        input: std::path::PathBuf,
        output: std::path::PathBuf,
        /// int8 (dynamic, per-channel) or int4 (weight-only, block-wise).
        #[arg(long, default_value = "int8")]
        scheme: String,
        /// int4 block size: 32, 64 or 128.
        #[arg(long)]
        block_size: Option<usize>,
        /// int4 blocks without zero points (default: with).
        #[arg(long)]
        symmetric: bool,
        /// A node to keep in float (repeatable).
        #[arg(long = "keep-float")]
        keep_float: Vec<String>,
        /// Keep the N nodes most sensitive to quantization (measured on the calibration set) in float.
        #[arg(long)]
        keep_most_sensitive: Option<usize>,
        /// SmoothQuant for int8: auto (the best on the calibration set), off, or a strength in (0, 1].
        #[arg(long)]
        smoothing: Option<String>,
        /// int8: the widest activation channels per MatMul input computed in float (default 8).
        #[arg(long)]
        outlier_channels: Option<usize>,
        /// {"calibration": [texts], "evaluation": [texts]} (default: lmaas's built-in set).
        #[arg(long)]
        calibration: Option<std::path::PathBuf>,
    },
    /// Run a V2 inference request (JSON) and print the answer.
    Infer {
        /// `name` or `name:tag`.
        model: String,
        /// The V2 request body, or @file to read it from a file.
        request: String,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// The models you may use.
    Ls,
    /// A model's versions, states and aliases.
    Show { model: String },
    /// Point an alias at a version.
    Tag { model: String, alias: String, version: u32 },
    /// Delete a version (refused while an alias points at it, unless --force).
    Rm {
        model: String,
        version: u32,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (once: only its hash is stored).
    Create {
        #[arg(long)]
        tenant: String,
        /// Comma-separated: infer, models:read, models:write, jobs:read, jobs:write, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Who the key is for (defaults to the tenant).
        #[arg(long)]
        principal: Option<String>,
        /// Lifetime, e.g. 90d, 12h, 30m; none = never expires.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List keys (hash prefix, principal, tenant, scopes, expiry, state).
    Ls,
    /// Revoke the key whose hash starts with the given prefix (at least 8 hex digits).
    Revoke { hash_prefix: String },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Keys { command } => keys(&cli.bucket, command).await,
        Command::Push { paths, model, version, task, tags } => {
            push::push(&api::Api::from_env()?, &paths, &model, version, &task, &tags).await
        }
        Command::Models { command } => models(&api::Api::from_env()?, command).await,
        Command::Jobs { command } => jobs::jobs(&cli.bucket, command).await,
        Command::Embed { model, texts } => {
            let api = api::Api::from_env()?;
            let body = serde_json::json!({ "model": model, "input": texts, "encoding_format": "float" });
            let answer = api.send(api.request(reqwest::Method::POST, "/v1/embeddings").json(&body)).await?;
            for item in answer["data"].as_array().into_iter().flatten() {
                println!("{}", item["embedding"]);
            }
            eprintln!("{} tokens", answer["usage"]["total_tokens"]);
            Ok(())
        }
        Command::Quantize {
            input,
            output,
            scheme,
            block_size,
            symmetric,
            keep_float,
            keep_most_sensitive,
            smoothing,
            outlier_channels,
            calibration,
        } => quantize::quantize(quantize::Args {
            input: &input,
            output: &output,
            scheme: &scheme,
            block_size,
            symmetric,
            keep_float,
            keep_most_sensitive,
            smoothing: smoothing.as_deref(),
            outlier_channels,
            calibration: calibration.as_deref(),
        }),
        Command::Infer { model, request } => {
            let api = api::Api::from_env()?;
            let body = match request.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
                None => request,
            };
            let body: serde_json::Value = serde_json::from_str(&body).context("the request is not JSON")?;
            let path = format!("/v2/models/{}/infer", model.replace(':', "%3A"));
            let answer = api.send(api.request(reqwest::Method::POST, &path).json(&body)).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
    }
}

async fn models(api: &api::Api, command: ModelsCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        ModelsCommand::Ls => {
            let models = api.send(api.request(Method::GET, "/v1/models")).await?;
            for model in models["data"].as_array().into_iter().flatten() {
                println!("{:<32} {}", model["id"].as_str().unwrap_or("?"), model["owned_by"].as_str().unwrap_or("?"));
            }
        }
        ModelsCommand::Show { model } => {
            let versions = api.send(api.request(Method::GET, &format!("/v1/models/{model}/versions"))).await?;
            push::show(&versions);
        }
        ModelsCommand::Tag { model, alias, version } => {
            let body = serde_json::json!({ "version": version });
            api.send(api.request(Method::PUT, &format!("/v1/models/{model}/aliases/{alias}")).json(&body)).await?;
            println!("{model}:{alias} -> {version}");
        }
        ModelsCommand::Rm { model, version, force } => {
            let query = if force { "?force=true" } else { "" };
            api.send(api.request(Method::DELETE, &format!("/v1/models/{model}/versions/{version}{query}"))).await?;
            println!("deleted {model}:{version}");
        }
    }
    Ok(())
}

async fn keys(bucket: &str, command: KeysCommand) -> anyhow::Result<()> {
    if bucket.is_empty() {
        bail!("set LMAAS_BUCKET or pass --bucket");
    }
    let s3 = lmaas_aws::config::s3_client(&lmaas_aws::sdk_config().await);
    let store: Arc<dyn KeyStore> = Arc::new(S3KeyStore::new(s3, bucket));
    match command {
        KeysCommand::Create { tenant, scopes, principal, expires } => {
            let scopes = scopes
                .iter()
                .map(|s| Scope::parse(s.trim()).with_context(|| format!("unknown scope '{s}'")))
                .collect::<anyhow::Result<BTreeSet<Scope>>>()?;
            let now = now_seconds();
            let expires_at = expires.as_deref().map(parse_duration).transpose()?.map(|seconds| now + seconds);
            let mut random = [0u8; 32];
            getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
            let key = format_api_key(&random);
            let principal = principal.unwrap_or_else(|| tenant.clone());
            let record = KeyRecord { principal, tenant, scopes, created_at: now, expires_at, revoked: false };
            store.put_key(&api_key_hash(&key), &record).await?;
            println!("{key}");
        }
        KeysCommand::Ls => {
            println!("{:<16} {:<20} {:<16} {:<40} {:<12} state", "hash", "principal", "tenant", "scopes", "expires_at");
            for (hash, record) in store.list_keys().await? {
                let scopes: Vec<&str> = record.scopes.iter().map(|s| s.as_str()).collect();
                let state = match (record.revoked, record.expires_at) {
                    (true, _) => "revoked",
                    (false, Some(at)) if at <= now_seconds() => "expired",
                    _ => "active",
                };
                let expires = record.expires_at.map_or("never".to_string(), |e| e.to_string());
                println!(
                    "{:<16} {:<20} {:<16} {:<40} {:<12} {state}",
                    &hash[..16],
                    record.principal,
                    record.tenant,
                    scopes.join(","),
                    expires
                );
            }
        }
        KeysCommand::Revoke { hash_prefix } => {
            if hash_prefix.len() < 8 {
                bail!("give at least 8 hex digits of the key's hash (see `lmaas keys ls`)");
            }
            let matches: Vec<_> =
                store.list_keys().await?.into_iter().filter(|(h, _)| h.starts_with(&hash_prefix)).collect();
            let [(hash, record)] = matches.as_slice() else {
                bail!("{} keys match '{hash_prefix}'; give a prefix that matches exactly one", matches.len());
            };
            store.put_key(hash, &KeyRecord { revoked: true, ..record.clone() }).await?;
            println!("revoked {} ({} / {})", &hash[..16], record.principal, record.tenant);
        }
    }
    Ok(())
}

/// `90d`, `12h`, `30m`, `45s` → seconds.
fn parse_duration(raw: &str) -> anyhow::Result<u64> {
    let (number, unit) = raw.split_at(raw.len().saturating_sub(1));
    let n: u64 = number.parse().with_context(|| format!("'{raw}' is not a duration like 90d, 12h or 30m"))?;
    let factor = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => bail!("'{raw}' is not a duration like 90d, 12h or 30m"),
    };
    Ok(n * factor)
}
