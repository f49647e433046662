//! Test support: starts the real local stack once per test process (the same script as
//! `make dev`, on free ports), and gives tests HTTP and S3 clients for it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
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

/// The stack, or why it could not start: every test that needs it fails with the same reason
/// rather than each starting (and waiting on) a stack of its own.
static STACK: OnceLock<Result<Stack, String>> = OnceLock::new();

/// How long `make dev` may take to be ready. From a clean clone it builds the functions and
/// quantizes SmolLM2 to int4 first: about 3 minutes here.
const STACK_START_LIMIT: Duration = Duration::from_secs(12 * 60);

/// How long a test process may run once it has a stack (the full suite takes about 5 minutes
/// here). Past it, the process prints what is still running and what the functions last logged,
/// then exits: a hang becomes a failure that explains itself, within CI's time.
const SUITE_LIMIT: Duration = Duration::from_secs(25 * 60);

/// The longest a test waits on one command it runs (the CLI, a Python client).
const COMMAND_LIMIT: Duration = Duration::from_secs(10 * 60);

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The stack for this test process, started on first use. It stops when the process exits.
pub fn stack() -> &'static Stack {
    match STACK.get_or_init(|| {
        // Once more on a failed start, on fresh ports: the second attempt says whether the first
        // failure was the product (it fails again, same place) or the moment. Both are reported.
        let started = start_stack().or_else(|first| {
            let _ = writeln!(std::io::stderr(), "{first}\nstarting the dev stack once more");
            start_stack().map_err(|second| format!("{first}\n\nand once more:\n{second}"))
        });
        if let Ok(stack) = &started {
            watch_the_suite(stack.state.clone());
        }
        started
    }) {
        Ok(stack) => stack,
        Err(why) => panic!("{why}"),
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn start_stack() -> Result<Stack, String> {
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
        // Its own process group, so that a start that hangs can be stopped whole: bash defers its
        // TERM trap until the command it is waiting on returns, which a hung one never does.
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("starting infra/local/dev.sh");
    let stdout = child.stdout.take().expect("piped stdout");
    let started = Instant::now();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        if BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line.contains("dev stack ready")) {
            let _ = ready_tx.send(());
        }
    });
    let failed = match ready_rx.recv_timeout(STACK_START_LIMIT) {
        Ok(()) => None,
        Err(RecvTimeoutError::Disconnected) => Some("exited"),
        Err(RecvTimeoutError::Timeout) => Some("was not ready in time"),
    };
    if let Some(failed) = failed {
        let processes = process_group(child.id());
        stop_group(&mut child);
        return Err(format!(
            "the dev stack {failed} after {:?}. Its processes then:\n{processes}\n{}:\n{}\n{}:\n{}",
            started.elapsed(),
            log_path.display(),
            tail(&log_path, 40),
            state.join("watch.log").display(),
            tail(&state.join("watch.log"), 40),
        ));
    }
    let env: HashMap<String, String> = std::fs::read_to_string(&env_file)
        .expect("dev.env")
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string())))
        .collect();
    Ok(Stack { url: env["LMAAS_URL"].clone(), state, env, _script: child })
}

/// Ends this test process with a report if it runs past `SUITE_LIMIT` (see there).
fn watch_the_suite(state: PathBuf) {
    let started = Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(SUITE_LIMIT);
        // Straight to stderr: the harness captures `eprintln!` from threads that tests spawn, and
        // drops what it captured when the process exits.
        let _ = writeln!(
            std::io::stderr(),
            "\nthe stack tests have run {:?} since the stack came up, past their limit of {:?}; stopping.\n\
             function processes running: {:?}\nprocesses:\n{}\nlast function log lines ({}):\n{}\n{}:\n{}",
            started.elapsed(),
            SUITE_LIMIT,
            running_functions(),
            process_tree(),
            state.join("watch.log").display(),
            tail(&state.join("watch.log"), 80),
            state.join("dev.log").display(),
            tail(&state.join("dev.log"), 20),
        );
        std::process::exit(1);
    });
}

/// The last `lines` lines of a log file, metrics lines left out.
fn tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = log.lines().filter(|l| !l.starts_with("{\"_aws\"")).collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

/// Stops a child and the process group it leads: TERM, then KILL if it has not exited 10 s later.
fn stop_group(child: &mut std::process::Child) {
    // `--`: procps kill takes `-PGID` without it for an option and exits 0 having sent nothing.
    let group = format!("-{}", child.id());
    let signal = |name: &str| Command::new("kill").args([name, "--", &group]).status();
    let _ = signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = signal("-KILL");
    let _ = child.wait();
}

/// `ps` of one process group: what each process is and how long it has run.
fn process_group(group: u32) -> String {
    let group = group.to_string();
    let all = ps(&["-eo", "pgid,pid,etime,stat,args"]);
    all.lines().filter(|line| line.split_whitespace().next() == Some(group.as_str())).collect::<Vec<_>>().join("\n")
}

/// Every process on the machine as a tree (CI machines run little else).
fn process_tree() -> String {
    ps(&["-N", "--ppid", "2", "-o", "pid,ppid,etime,stat,args", "--forest"]) // kernel threads left out
}

/// What `ps` printed, each line cut to 200 characters (some command lines carry a whole environment).
fn ps(args: &[&str]) -> String {
    match Command::new("ps").args(args).output() {
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stdout);
            text.lines().map(|line| line.chars().take(200).collect::<String>()).collect::<Vec<_>>().join("\n")
        }
        Err(e) => format!("(ps failed: {e})"),
    }
}

/// `program` under coreutils' `timeout`, so that a stuck command fails its test (exit 124)
/// instead of hanging the suite.
fn bounded(program: &Path) -> Command {
    let mut command = Command::new("timeout");
    command.arg("--kill-after=10").arg(COMMAND_LIMIT.as_secs().to_string()).arg(program);
    command
}

impl Stack {
    /// SDK configuration for the emulator.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let credentials = aws_sdk_s3::config::Credentials::new("lmaas-local", "lmaas-local", None, None, "tests");
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.env["AWS_ENDPOINT_URL"])
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .timeout_config(lmaas_aws::config::timeouts())
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
        let output = bounded(&root().join("target/debug/lmaas"))
            .args(args)
            .envs(self.env.iter().filter(|(k, _)| {
                k.starts_with("AWS_") || ["LMAAS_BUCKET", "LMAAS_URL", "LMAAS_TOKEN"].contains(&k.as_str())
            }))
            .current_dir(std::env::temp_dir())
            .output()
            .expect("running the lmaas CLI");
        assert!(
            output.status.success(),
            "lmaas {args:?} ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// Runs a Python client script from tests/ (with `.lmaas/venv`, where setup installed the
    /// `openai` package) against the stack as the dev admin; it fails the test if the script fails.
    pub fn python_client(&self, script: &str, env: &[(&str, PathBuf)]) {
        let output = bounded(&root().join(".lmaas/venv/bin/python"))
            .arg(root().join("tests").join(script))
            .env("LMAAS_URL", &self.url)
            .env("LMAAS_TOKEN", self.admin_token())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap_or_else(|e| panic!("running tests/{script}: {e}"));
        assert!(
            output.status.success(),
            "tests/{script} ({}):\n{}\n{}\nfunction processes running: {:?}; their last log lines ({}):\n{}",
            output.status,
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
        tail(&self.state.join("watch.log"), lines)
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
