//! One configuration struct per function, read from the environment once at cold start. A missing
//! or malformed variable fails the start and names the variable.

use std::path::PathBuf;
use std::time::Duration;

use lmaas_core::{Limits, ModelRef};
use lmaas_engine::{CacheConfig, ExecutionProviders};

/// A configuration problem, naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError(message.into())
    }
}

/// How callers are authenticated; shared by every function and the authorizer.
#[derive(Clone)]
pub struct AuthConfig {
    /// JWT verification, when a JWKS is configured; without one only API keys are accepted.
    pub jwks: Option<JwtConfig>,
    /// How long an API key record is trusted before it is read again (revocation delay).
    pub key_ttl: Duration,
}

#[derive(Clone)]
pub struct JwtConfig {
    pub source: JwksSource,
    pub issuer: String,
    pub audience: String,
}

#[derive(Clone)]
pub enum JwksSource {
    Inline(String),
    Url(String),
}

// Key material is public, but a JWKS is long: keep config logs readable.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let jwks = self.jwks.as_ref().map(|j| match &j.source {
            JwksSource::Inline(_) => format!("inline JWKS, iss={}, aud={}", j.issuer, j.audience),
            JwksSource::Url(url) => format!("JWKS from {url}, iss={}, aud={}", j.issuer, j.audience),
        });
        f.debug_struct("AuthConfig").field("jwks", &jwks).field("key_ttl", &self.key_ttl).finish()
    }
}

impl AuthConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let source = match (optional(&env, "LMAAS_JWKS"), optional(&env, "LMAAS_JWKS_URL")) {
            (Some(_), Some(_)) => return Err(ConfigError::new("set LMAAS_JWKS or LMAAS_JWKS_URL, not both")),
            (Some(json), None) => Some(JwksSource::Inline(json)),
            (None, Some(url)) => Some(JwksSource::Url(url)),
            (None, None) => None,
        };
        let jwks = match source {
            None => None,
            Some(source) => Some(JwtConfig {
                source,
                issuer: required(&env, "LMAAS_JWT_ISSUER")?,
                audience: required(&env, "LMAAS_JWT_AUDIENCE")?,
            }),
        };
        Ok(AuthConfig { jwks, key_ttl: Duration::from_secs(parsed(&env, "LMAAS_KEY_CACHE_SECONDS")?.unwrap_or(30)) })
    }
}

/// The infer function's configuration.
#[derive(Debug, Clone)]
pub struct InferConfig {
    pub bucket: String,
    pub auth: AuthConfig,
    pub cache: CacheConfig,
    /// Models to load during INIT (`LMAAS_PRELOAD`, comma-separated references).
    pub preload: Vec<ModelRef>,
    pub limits: Limits,
    pub alias_ttl: Duration,
    /// Most inputs in one `/v1/embeddings` request (`LMAAS_EMBEDDINGS_MAX_INPUTS`, default 256).
    pub embeddings_max_inputs: usize,
}

/// The models function's configuration.
#[derive(Debug, Clone)]
pub struct ModelsConfig {
    pub bucket: String,
    pub auth: AuthConfig,
    /// Where commits download and check uploads (`LMAAS_MODEL_CACHE_DIR`/commits).
    pub scratch_dir: PathBuf,
    /// Largest model.onnx a commit accepts (`LMAAS_MAX_MODEL_BYTES`, default 4 GiB).
    pub max_model_bytes: u64,
    pub providers: ExecutionProviders,
    pub alias_ttl: Duration,
}

/// The jobs function's configuration.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    pub bucket: String,
    pub queue_url: String,
    pub auth: AuthConfig,
    pub alias_ttl: Duration,
}

/// The ingest function's configuration (S3 batch uploads → jobs).
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub bucket: String,
    pub queue_url: String,
    pub alias_ttl: Duration,
}

impl IngestConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(IngestConfig {
            bucket: required(&env, "LMAAS_BUCKET")?,
            queue_url: required(&env, "LMAAS_JOBS_QUEUE_URL")?,
            alias_ttl: alias_ttl(&env)?,
        })
    }
}

/// The worker's configuration, for both modes (Lambda SQS handler and `--daemon`).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub bucket: String,
    /// The jobs queue; the daemon polls it, the Lambda mode uses it to release messages early.
    pub queue_url: Option<String>,
    pub cache: CacheConfig,
    pub alias_ttl: Duration,
    /// Jobs one daemon runs at once (`LMAAS_WORKER_CONCURRENCY`, default 1: a job already uses
    /// every core through ONNX Runtime's threads).
    pub concurrency: usize,
    /// Where the daemon serves Prometheus `/metrics` (`LMAAS_METRICS_ADDR`); unset: nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// First retry delay after a transient failure, doubled per attempt up to `retry_max`
    /// (`LMAAS_JOB_RETRY_BASE_SECONDS` 5, `LMAAS_JOB_RETRY_MAX_SECONDS` 300).
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Models the daemon loads before it takes work (`LMAAS_PRELOAD`).
    pub preload: Vec<ModelRef>,
}

impl WorkerConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let metrics_addr = optional(&env, "LMAAS_METRICS_ADDR")
            .map(|raw| raw.parse().map_err(|_| ConfigError(format!("LMAAS_METRICS_ADDR='{raw}' is not host:port"))))
            .transpose()?;
        let concurrency = parsed(&env, "LMAAS_WORKER_CONCURRENCY")?.unwrap_or(1);
        if concurrency == 0 {
            return Err(ConfigError::new("LMAAS_WORKER_CONCURRENCY must be at least 1"));
        }
        Ok(WorkerConfig {
            bucket: required(&env, "LMAAS_BUCKET")?,
            queue_url: optional(&env, "LMAAS_JOBS_QUEUE_URL"),
            cache: CacheConfig {
                dir: cache_dir(&env),
                max_bytes: parsed(&env, "LMAAS_MODEL_CACHE_BYTES")?.unwrap_or(4 << 30),
                providers: providers(&env)?,
            },
            alias_ttl: alias_ttl(&env)?,
            concurrency,
            metrics_addr,
            retry_base: Duration::from_secs(parsed(&env, "LMAAS_JOB_RETRY_BASE_SECONDS")?.unwrap_or(5)),
            retry_max: Duration::from_secs(parsed(&env, "LMAAS_JOB_RETRY_MAX_SECONDS")?.unwrap_or(300)),
            preload: preload(&env)?,
        })
    }
}

impl JobsConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(JobsConfig {
            bucket: required(&env, "LMAAS_BUCKET")?,
            queue_url: required(&env, "LMAAS_JOBS_QUEUE_URL")?,
            auth: AuthConfig::from_lookup(&env)?,
            alias_ttl: alias_ttl(&env)?,
        })
    }
}

impl InferConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let preload = preload(&env)?;
        Ok(InferConfig {
            bucket: required(&env, "LMAAS_BUCKET")?,
            auth: AuthConfig::from_lookup(&env)?,
            cache: CacheConfig {
                dir: cache_dir(&env),
                max_bytes: parsed(&env, "LMAAS_MODEL_CACHE_BYTES")?.unwrap_or(1 << 30),
                providers: providers(&env)?,
            },
            preload,
            limits: Limits::default(),
            alias_ttl: alias_ttl(&env)?,
            embeddings_max_inputs: parsed(&env, "LMAAS_EMBEDDINGS_MAX_INPUTS")?.unwrap_or(256),
        })
    }
}

impl ModelsConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(ModelsConfig {
            bucket: required(&env, "LMAAS_BUCKET")?,
            auth: AuthConfig::from_lookup(&env)?,
            scratch_dir: cache_dir(&env).join("commits"),
            max_model_bytes: parsed(&env, "LMAAS_MAX_MODEL_BYTES")?.unwrap_or(4 << 30),
            providers: providers(&env)?,
            alias_ttl: alias_ttl(&env)?,
        })
    }
}

/// Models to load at start (`LMAAS_PRELOAD`, comma-separated references).
fn preload(env: &impl Fn(&str) -> Option<String>) -> Result<Vec<ModelRef>, ConfigError> {
    optional(env, "LMAAS_PRELOAD")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| ModelRef::parse(r).map_err(|e| ConfigError(format!("LMAAS_PRELOAD: {e}"))))
        .collect()
}

fn cache_dir(env: &impl Fn(&str) -> Option<String>) -> PathBuf {
    PathBuf::from(optional(env, "LMAAS_MODEL_CACHE_DIR").unwrap_or_else(|| "/tmp/lmaas".into()))
}

fn optional(env: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

fn required(env: &impl Fn(&str) -> Option<String>, name: &str) -> Result<String, ConfigError> {
    optional(env, name).ok_or_else(|| ConfigError(format!("{name} must be set")))
}

fn parsed<T: std::str::FromStr>(env: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<T>, ConfigError> {
    optional(env, name)
        .map(|v| v.trim().parse().map_err(|_| ConfigError(format!("{name}='{v}' is not a valid number"))))
        .transpose()
}

fn providers(env: &impl Fn(&str) -> Option<String>) -> Result<ExecutionProviders, ConfigError> {
    match optional(env, "LMAAS_EXECUTION_PROVIDERS") {
        None => Ok(ExecutionProviders::cpu()),
        Some(raw) => {
            ExecutionProviders::parse(&raw).map_err(|e| ConfigError(format!("LMAAS_EXECUTION_PROVIDERS: {e}")))
        }
    }
}

/// How long an alias lookup is trusted (`LMAAS_ALIAS_TTL_SECONDS`, default 5): aliases move, and a
/// warm function should see the move soon without reading S3 on every request.
fn alias_ttl(env: &impl Fn(&str) -> Option<String>) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(parsed(env, "LMAAS_ALIAS_TTL_SECONDS")?.unwrap_or(5)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn a_missing_bucket_fails_the_start_and_names_the_variable() {
        let err = InferConfig::from_lookup(lookup(&[])).unwrap_err();
        assert_eq!(err.to_string(), "configuration: LMAAS_BUCKET must be set");
        assert!(ModelsConfig::from_lookup(lookup(&[])).unwrap_err().to_string().contains("LMAAS_BUCKET"));
    }

    #[test]
    fn a_jwks_requires_issuer_and_audience() {
        let err = AuthConfig::from_lookup(lookup(&[("LMAAS_JWKS", "{}")])).unwrap_err();
        assert!(err.to_string().contains("LMAAS_JWT_ISSUER"));
        let err = AuthConfig::from_lookup(lookup(&[("LMAAS_JWKS", "{}"), ("LMAAS_JWT_ISSUER", "i")])).unwrap_err();
        assert!(err.to_string().contains("LMAAS_JWT_AUDIENCE"));
        assert!(AuthConfig::from_lookup(lookup(&[])).unwrap().jwks.is_none());
    }

    #[test]
    fn the_jobs_function_needs_its_queue() {
        let err = JobsConfig::from_lookup(lookup(&[("LMAAS_BUCKET", "b")])).unwrap_err();
        assert_eq!(err.to_string(), "configuration: LMAAS_JOBS_QUEUE_URL must be set");
    }

    #[test]
    fn defaults_fit_a_lambda_function() {
        let config = InferConfig::from_lookup(lookup(&[("LMAAS_BUCKET", "b")])).unwrap();
        assert_eq!(config.cache.dir, PathBuf::from("/tmp/lmaas"));
        assert_eq!(config.cache.providers, ExecutionProviders::cpu());
        assert!(config.preload.is_empty());
    }

    #[test]
    fn malformed_values_name_their_variable() {
        let err = InferConfig::from_lookup(lookup(&[("LMAAS_BUCKET", "b"), ("LMAAS_MODEL_CACHE_BYTES", "lots")]))
            .unwrap_err();
        assert!(err.to_string().contains("LMAAS_MODEL_CACHE_BYTES='lots'"));
        let err =
            InferConfig::from_lookup(lookup(&[("LMAAS_BUCKET", "b"), ("LMAAS_PRELOAD", "mlp, Bad")])).unwrap_err();
        assert!(err.to_string().contains("LMAAS_PRELOAD"));
        let err = InferConfig::from_lookup(lookup(&[("LMAAS_BUCKET", "b"), ("LMAAS_EXECUTION_PROVIDERS", "gpu")]))
            .unwrap_err();
        assert!(err.to_string().contains("LMAAS_EXECUTION_PROVIDERS"));
        let ok =
            InferConfig::from_lookup(lookup(&[("LMAAS_BUCKET", "b"), ("LMAAS_PRELOAD", "mlp, minilm:1")])).unwrap();
        assert_eq!(ok.preload.len(), 2);
    }
}
