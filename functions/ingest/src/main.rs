//! The ingest function: S3 uploads under `batch/` (directly or through SQS) become batch jobs.

use std::sync::Arc;

use lambda_runtime::{service_fn, LambdaEvent};
use lmaas_api::{IngestConfig, IngestService};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lmaas_api::telemetry::init("ingest");
    let service = Arc::new(IngestService::from_env(IngestConfig::from_env()?).await);
    lmaas_api::lambda::keep_serving(|| {
        let service = service.clone();
        lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
            let service = service.clone();
            async move {
                lmaas_api::telemetry::count_cold_start();
                let answer = service.handle(event.payload, event.context.xray_trace_id).await;
                lmaas_api::telemetry::flush_metrics();
                answer.map_err(lambda_runtime::Error::from)
            }
        }))
    })
    .await
}
