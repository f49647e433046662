//! Logs and metrics for every lmaas process.
//!
//! Logs: JSON lines in Lambda (CloudWatch parses them; each line carries its span's fields, such
//! as `request_id`, `trace_id` and `job`), readable lines elsewhere, levels from `RUST_LOG`
//! (default info). `LMAAS_LOG_FORMAT=text|json` overrides the choice. ONNX Runtime's own log is
//! off by default: its run errors quote input values, and every failure it reports reaches our
//! logs through the engine's errors anyway (`RUST_LOG=ort=warn` brings it back).
//!
//! Metrics (one vocabulary, `lmaas_core::metrics`): inside Lambda (or `cargo lambda watch`) as
//! CloudWatch EMF lines written once per invocation ([`flush_metrics`]); long-running processes
//! serve Prometheus text ([`serve_prometheus`]).

use std::sync::OnceLock;

use lmaas_core::metrics::{Kind, ALL};
use tracing_subscriber::EnvFilter;

use crate::emf::EmfRecorder;

static EMF: OnceLock<&'static EmfRecorder> = OnceLock::new();

/// Sets up logging, and EMF metrics when running as a Lambda function.
pub fn init(function: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=off"));
    let in_lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    let json = match std::env::var("LMAAS_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => in_lambda,
    };
    // Colors only on a terminal: `make dev` writes each process's log to a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi);
    let result = if json {
        builder.json().with_current_span(true).with_span_list(false).without_time().try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests, benches) keeps the first subscriber.
    let _ = result;
    if in_lambda {
        let recorder: &'static EmfRecorder = Box::leak(Box::new(EmfRecorder::new(function)));
        if metrics::set_global_recorder(recorder).is_ok() {
            let _ = EMF.set(recorder);
        }
    }
}

/// Writes the metrics of the invocation that just ended to stdout (EMF); a no-op outside Lambda.
pub fn flush_metrics() {
    if let Some(recorder) = EMF.get() {
        if let Err(e) = recorder.flush(std::io::stdout().lock()) {
            tracing::warn!(error = %e, "writing EMF metrics failed");
        }
    }
}

/// Counts a Lambda cold start the first time it is called in this process.
pub fn count_cold_start() {
    static COUNTED: std::sync::Once = std::sync::Once::new();
    COUNTED.call_once(|| metrics::counter!(lmaas_core::metrics::COLD_STARTS).increment(1));
}

/// Serves Prometheus text at `http://{addr}/metrics`, every metric labeled `function`.
pub fn serve_prometheus(addr: std::net::SocketAddr, function: &'static str) -> Result<(), String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let seconds = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];
    let bytes = [256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 6291456.0];
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .add_global_label("function", function)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), &bytes))
        .and_then(|b| b.install())
        .map_err(|e| format!("serving metrics on {addr}: {e}"))?;
    for metric in ALL {
        match metric.kind {
            Kind::Counter => metrics::describe_counter!(metric.name, metric.help),
            Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Kind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(())
}

/// The X-Ray trace id of the current Lambda invocation, if there is one.
pub fn lambda_trace_id() -> Option<String> {
    std::env::var("_X_AMZN_TRACE_ID").ok().filter(|t| !t.is_empty())
}
