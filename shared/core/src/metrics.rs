//! One metrics vocabulary for every lmaas process: Lambda functions emit it as CloudWatch EMF,
//! long-running processes serve it as Prometheus text, under the same names and labels.
//!
//! Labels: `function` (every metric; set once per process), `route`, `status`, `model`,
//! `version`, `execution_provider`, `type` (job type), `outcome`, `result`.

/// What a metric measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Its unit (EMF's names; Prometheus carries the unit in the metric name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Bytes,
    Count,
}

impl Unit {
    /// The unit as CloudWatch names it.
    pub fn cloudwatch(self) -> &'static str {
        match self {
            Unit::Seconds => "Seconds",
            Unit::Bytes => "Bytes",
            Unit::Count => "Count",
        }
    }
}

pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
}

pub const REQUEST_DURATION: &str = "lmaas_request_duration_seconds";
pub const REQUEST_BYTES: &str = "lmaas_request_bytes";
pub const RESPONSE_BYTES: &str = "lmaas_response_bytes";
pub const COLD_STARTS: &str = "lmaas_cold_starts_total";
pub const INFERENCE_DURATION: &str = "lmaas_inference_duration_seconds";
pub const TOKENIZATION_DURATION: &str = "lmaas_tokenization_duration_seconds";
pub const MODEL_DOWNLOAD_DURATION: &str = "lmaas_model_download_duration_seconds";
pub const SESSION_CREATE_DURATION: &str = "lmaas_session_create_duration_seconds";
pub const MODEL_CACHE: &str = "lmaas_model_cache_lookups_total";
pub const JOBS: &str = "lmaas_jobs_total";
pub const JOB_ITEMS: &str = "lmaas_job_items_total";
pub const CHUNK_DURATION: &str = "lmaas_chunk_duration_seconds";
pub const JOB_RUN_DURATION: &str = "lmaas_job_run_duration_seconds";
pub const QUEUE_LAG: &str = "lmaas_queue_lag_seconds";
pub const DLQ_DEPTH: &str = "lmaas_dlq_messages";
pub const JOBS_RUNNING: &str = "lmaas_worker_jobs_running";
pub const ACTIVE_SEQUENCES: &str = "lmaas_generation_active_sequences";
pub const GENERATED_TOKENS: &str = "lmaas_generated_tokens_total";

/// Every metric, with its kind, unit and help text (exporters describe them all at start).
pub const ALL: &[MetricDef] = &[
    def(REQUEST_DURATION, Kind::Histogram, Unit::Seconds, "API request duration, by route and status."),
    def(REQUEST_BYTES, Kind::Histogram, Unit::Bytes, "API request body size, by route."),
    def(RESPONSE_BYTES, Kind::Histogram, Unit::Bytes, "API response body size, by route."),
    def(COLD_STARTS, Kind::Counter, Unit::Count, "Lambda cold starts (first invocation of an instance)."),
    def(INFERENCE_DURATION, Kind::Histogram, Unit::Seconds, "ONNX Runtime run time, by model, version, provider."),
    def(TOKENIZATION_DURATION, Kind::Histogram, Unit::Seconds, "Tokenizer time per call, by model and version."),
    def(MODEL_DOWNLOAD_DURATION, Kind::Histogram, Unit::Seconds, "Model files fetched from S3 and verified."),
    def(SESSION_CREATE_DURATION, Kind::Histogram, Unit::Seconds, "ONNX Runtime session creation, by provider."),
    def(MODEL_CACHE, Kind::Counter, Unit::Count, "Model cache lookups, by result (hit, miss)."),
    def(JOBS, Kind::Counter, Unit::Count, "Jobs by type and status (queued at submit, final statuses at the end)."),
    def(JOB_ITEMS, Kind::Counter, Unit::Count, "Batch items processed, by type and outcome (ok, error)."),
    def(CHUNK_DURATION, Kind::Histogram, Unit::Seconds, "Time to process and store one chunk of a batch job."),
    def(JOB_RUN_DURATION, Kind::Histogram, Unit::Seconds, "Time one delivery of a job ran."),
    def(QUEUE_LAG, Kind::Gauge, Unit::Seconds, "Age of the last jobs message when a worker took it."),
    def(DLQ_DEPTH, Kind::Gauge, Unit::Count, "Messages in the jobs dead-letter queue (approximate)."),
    def(JOBS_RUNNING, Kind::Gauge, Unit::Count, "Jobs this worker daemon is running now."),
    def(ACTIVE_SEQUENCES, Kind::Gauge, Unit::Count, "Text generations running now, by model and version."),
    def(GENERATED_TOKENS, Kind::Counter, Unit::Count, "Tokens generated, by model and finish reason."),
];

const fn def(name: &'static str, kind: Kind, unit: Unit, help: &'static str) -> MetricDef {
    MetricDef { name, kind, unit, help }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for metric in ALL {
            assert!(metric.name.starts_with("lmaas_"), "{}", metric.name);
            let suffix_ok = match (metric.kind, metric.unit) {
                (Kind::Counter, _) => metric.name.ends_with("_total"),
                (_, Unit::Seconds) => metric.name.ends_with("_seconds"),
                (_, Unit::Bytes) => metric.name.ends_with("_bytes"),
                (_, Unit::Count) => !metric.name.ends_with("_total"),
            };
            assert!(suffix_ok, "{}", metric.name);
        }
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "names are unique");
    }
}
