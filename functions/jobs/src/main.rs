//! The jobs function: submit, read, list and cancel jobs (the work goes to SQS).

use std::sync::Arc;

use lmaas_api::{JobsConfig, JobsService};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lmaas_api::telemetry::init("jobs");
    let config = JobsConfig::from_env()?;
    let service = Arc::new(JobsService::from_env(config).await?);
    lmaas_api::server::run("jobs", move |request| {
        let service = service.clone();
        async move { service.handle(request).await }
    })
    .await
}
