//! The lmaas HTTP API, independent of where it runs: each function's service turns an
//! `http::Request<Bytes>` into an `http::Response<Bytes>`. `lambda` adapts services to Lambda,
//! `server` serves them over HTTP outside it; benchmarks and tests call them in process.

pub mod auth;
pub mod authorizer;
mod blocking;
pub mod chat;
pub mod config;
pub mod context;
pub mod embeddings;
pub mod emf;
pub mod infer;
pub mod ingest;
pub mod jobs;
pub mod lambda;
pub mod models;
pub mod registry;
pub mod reply;
pub mod response;
pub mod routes;
pub mod server;
pub mod telemetry;

pub use chat::ChatService;
pub use config::{AuthConfig, ConfigError, InferConfig, IngestConfig, JobsConfig, ModelsConfig, WorkerConfig};
pub use infer::InferService;
pub use ingest::IngestService;
pub use jobs::JobsService;
pub use models::ModelsService;
