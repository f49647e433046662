//! Test support: starts the real local stack once per test process (the same script as
//! `make dev`, on free ports), and gives tests HTTP and S3 clients for it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The running stack: its API URL and the environment `make dev` wrote for it.
pub struct Stack {
    pub url: String,
    /// Where the stack keeps its logs (`watch.log` holds every function's output).
    pub state: PathBuf,
    pub env: HashMap<String, String>,
    // The script stops the stack by itself when this process exits (it watches our pid).
    _script: std::process::Child,
}

static STACK: OnceLock<Stack> = OnceLock::new();

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The stack for this test process, started on first use. It stops when the process exits.
pub fn stack() -> &'static Stack {
    STACK.get_or_init(start_stack)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn start_stack() -> Stack {
    let (port, emulator_port) = (free_port(), free_port());
    let state = root().join("target").join("lmaas-tests").join(port.to_string());
    std::fs::create_dir_all(&state).expect("state folder");
    let env_file = state.join("dev.env");
    let log_path = state.join("dev.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(root().join("infra/local/dev.sh"))
        .arg("--watch-parent")
        .arg(std::process::id().to_string())
        .env("LMAAS_DEV_PORT", port.to_string())
        .env("LMAAS_EMULATOR_PORT", emulator_port.to_string())
        .env("LMAAS_DEV_ENV_FILE", &env_file)
        .env("LMAAS_STATE_DIR", &state)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("starting infra/local/dev.sh");
    let stdout = child.stdout.take().expect("piped stdout");
    let started = Instant::now();
    let ready = BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line.contains("dev stack ready"));
    if !ready {
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: String =
            tail.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        panic!("the dev stack did not start ({:?}); log {}:\n{tail}", started.elapsed(), log_path.display());
    }
    let env: HashMap<String, String> = std::fs::read_to_string(&env_file)
        .expect("dev.env")
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string())))
        .collect();
    Stack { url: env["LMAAS_URL"].clone(), state, env, _script: child }
}

impl Stack {
    /// SDK configuration for the emulator.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let credentials = aws_sdk_s3::config::Credentials::new("lmaas-local", "lmaas-local", None, None, "tests");
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.env["AWS_ENDPOINT_URL"])
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .load()
            .await
    }

    /// An S3 client for the emulator, through the real SDK.
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        let s3 = aws_sdk_s3::config::Builder::from(&self.sdk_config().await).force_path_style(true).build();
        aws_sdk_s3::Client::from_conf(s3)
    }

    pub fn bucket(&self) -> &str {
        &self.env["LMAAS_BUCKET"]
    }

    /// The dev admin API key `make dev` created.
    pub fn admin_token(&self) -> &str {
        &self.env["LMAAS_TOKEN"]
    }

    /// Runs the `lmaas` CLI against the stack (its API as the dev admin, its bucket) and returns
    /// what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(root().join("target/debug/lmaas"))
            .args(args)
            .envs(self.env.iter().filter(|(k, _)| {
                k.starts_with("AWS_") || ["LMAAS_BUCKET", "LMAAS_URL", "LMAAS_TOKEN"].contains(&k.as_str())
            }))
            .current_dir(std::env::temp_dir())
            .output()
            .expect("running the lmaas CLI");
        assert!(output.status.success(), "lmaas {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// Runs a Python client script from tests/ (with `.lmaas/venv`, where setup installed the
    /// `openai` package) against the stack as the dev admin; it fails the test if the script fails.
    pub fn python_client(&self, script: &str, env: &[(&str, PathBuf)]) {
        let output = Command::new(root().join(".lmaas/venv/bin/python"))
            .arg(root().join("tests").join(script))
            .env("LMAAS_URL", &self.url)
            .env("LMAAS_TOKEN", self.admin_token())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap_or_else(|e| panic!("running tests/{script}: {e}"));
        assert!(
            output.status.success(),
            "{}\n{}\nfunction processes running: {:?}; their last log lines ({}):\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            running_functions(),
            self.state.join("watch.log").display(),
            self.function_log_tail(60)
        );
    }

    /// The last `lines` lines the functions logged under `cargo lambda watch`, metrics left out:
    /// what a failed end-to-end test prints, so that a CI failure explains itself.
    pub fn function_log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.state.join("watch.log")).unwrap_or_default();
        let kept: Vec<&str> = log.lines().filter(|l| !l.starts_with("{\"_aws\"")).collect();
        kept[kept.len().saturating_sub(lines)..].join("\n")
    }

    /// A new API key from `lmaas keys create`.
    pub fn create_key(&self, tenant: &str, principal: &str, scopes: &str, expires: Option<&str>) -> String {
        let mut args = vec!["keys", "create", "--tenant", tenant, "--principal", principal, "--scopes", scopes];
        if let Some(expires) = expires {
            args.extend(["--expires", expires]);
        }
        self.cli(&args).trim().to_string()
    }

    /// Revokes a key with `lmaas keys revoke <hash prefix>`.
    pub fn revoke_key(&self, key: &str) {
        use sha2::Digest;
        let hash = hex::encode(sha2::Sha256::digest(key.as_bytes()));
        self.cli(&["keys", "revoke", &hash[..16]]);
    }

    /// Signs a JWT with one of the dev stack's keys (`rsa` → RS256 "dev-rsa", `ec` → ES256 "dev-ec").
    pub fn jwt(&self, key: &str, kid: Option<&str>, claims: &Value) -> String {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let pem =
            std::fs::read(Path::new(&self.env["LMAAS_DEV_JWT_KEYS_DIR"]).join(format!("{key}.pem"))).expect("dev key");
        let (algorithm, encoding) = match key {
            "rsa" => (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem).expect("RSA key")),
            _ => (Algorithm::ES256, EncodingKey::from_ec_pem(&pem).expect("EC key")),
        };
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &encoding).expect("signing")
    }
}

/// The function binaries running now (`target/debug/<name>` processes): `cargo lambda watch`
/// never restarts one that exited, so a dead function shows up here as missing.
pub fn running_functions() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .filter_map(|cmdline| {
            let program = String::from_utf8_lossy(cmdline.split(|b| *b == 0).next()?).into_owned();
            Some(program.strip_prefix("target/debug/")?.to_string())
        })
        .collect();
    names.sort();
    names
}

pub fn client() -> reqwest::Client {
    // reqwest's TLS needs one rustls crypto provider per process (the workspace uses aws-lc-rs).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().expect("http client")
}

/// A committed fixture: a V2 request and the outputs ONNX Runtime (Python) gave for it.
pub fn fixture(name: &str) -> Value {
    let path = root().join("samples/fixtures").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

/// Asserts that a V2 output matches the expected tensor: same datatype and shape, and data equal
/// (numbers within `tolerance`, everything else exactly).
pub fn assert_tensor_matches(name: &str, actual: &Value, expected: &Value, tolerance: f64) {
    assert_eq!(actual["datatype"], expected["datatype"], "{name}: datatype");
    assert_eq!(actual["shape"], expected["shape"], "{name}: shape");
    let (a, e) = (actual["data"].as_array().expect("data"), expected["data"].as_array().expect("data"));
    assert_eq!(a.len(), e.len(), "{name}: element count");
    for (i, (a, e)) in a.iter().zip(e).enumerate() {
        match (a.as_f64(), e.as_f64()) {
            (Some(a), Some(e)) => assert!((a - e).abs() <= tolerance, "{name}[{i}]: {a} vs {e}"),
            _ => assert_eq!(a, e, "{name}[{i}]"),
        }
    }
}
