//! Logging: JSON lines in Lambda (CloudWatch parses them), readable lines elsewhere, levels from
//! `RUST_LOG` (default info). `LMAAS_LOG_FORMAT=text|json` overrides the choice. ONNX Runtime's
//! own log is off by default: its run errors quote input values, and every failure it reports
//! reaches our logs through the engine's errors anyway (`RUST_LOG=ort=warn` brings it back).

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=off"));
    let in_lambda = std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
    let json = match std::env::var("LMAAS_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => in_lambda,
    };
    // Colors only on a terminal: `make dev` writes each process's log to a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi);
    let result =
        if json { builder.json().with_current_span(false).without_time().try_init() } else { builder.try_init() };
    // A second init (tests, benches) keeps the first subscriber.
    let _ = result;
}
