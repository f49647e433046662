//! The HTTP side of the CLI: where the API is and who we are (`LMAAS_URL`, `LMAAS_TOKEN`, from the
//! environment or `.lmaas/dev.env`), and requests that turn API errors into readable ones.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

/// The longest an API call may take. API Gateway gives up at 29 s; under `cargo lambda watch` a
/// function's first call also starts it, and a commit validates the model with ONNX Runtime. A
/// stalled call fails with a message instead of hanging the CLI (and the scripts that run it).
const API_CALL_LIMIT: Duration = Duration::from_secs(300);

pub struct Api {
    pub url: String,
    token: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn from_env() -> anyhow::Result<Self> {
        let dev_env = read_dev_env(Path::new(".lmaas/dev.env"));
        let lookup =
            |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty()).or_else(|| dev_env.get(name).cloned());
        let url = lookup("LMAAS_URL").context("set LMAAS_URL (or run `make dev`, which writes .lmaas/dev.env)")?;
        let token = lookup("LMAAS_TOKEN").context("set LMAAS_TOKEN to an API key or JWT")?;
        // reqwest's TLS needs one rustls crypto provider per process; the workspace uses aws-lc-rs.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        // Uploads have no overall limit (a big model on a slow link takes what it takes).
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
        Ok(Api { url: url.trim_end_matches('/').to_string(), token, http })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token).timeout(API_CALL_LIMIT)
    }

    /// Sends a request and returns its JSON body, or fails with the API's own error message.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await.context("the lmaas API did not answer")?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["error"]["message"].as_str().or(body["error"].as_str()).unwrap_or("no message");
            bail!("{status}: {message}");
        }
        Ok(body)
    }
}

fn read_dev_env(path: &Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('\'').to_string()))
        .collect()
}
