//! lmaas job workers. One runner ([`runner::JobRunner`]) does the work; two adapters feed it
//! messages: [`lambda`] (an SQS event source mapping, partial batch failures) and [`daemon`]
//! (a long-running fleet process: long polling, heartbeats, graceful SIGTERM, `/metrics`).

pub mod chunk;
pub mod daemon;
pub mod lambda;
pub mod produce;
pub mod queue;
pub mod runner;

use std::sync::Arc;

use lmaas_api::WorkerConfig;
use lmaas_engine::ModelCache;

pub use runner::{Delivery, JobRunner, Outcome};

/// The runner over S3, with clients built from the environment.
pub async fn runner_from_env(config: &WorkerConfig) -> (Arc<JobRunner>, aws_sdk_sqs::Client) {
    let sdk = lmaas_aws::sdk_config().await;
    let s3 = lmaas_aws::config::s3_client(&sdk);
    let store = Arc::new(lmaas_aws::S3ModelStore::new(s3.clone(), config.bucket.clone()));
    let jobs = Arc::new(lmaas_aws::S3JobStore::new(s3.clone(), config.bucket.clone()));
    let runner = JobRunner::new(
        jobs,
        store.clone(),
        ModelCache::new(store, config.cache.clone()),
        lmaas_aws::BatchObjects::new(s3, config.bucket.clone()),
        chunk::BatchBudget::default(),
        config.alias_ttl,
    );
    (Arc::new(runner), lmaas_aws::config::sqs_client(&sdk))
}
