//! The infer function: V2 inference on models cached from S3.

use std::sync::Arc;

use lmaas_api::{InferConfig, InferService};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lmaas_api::telemetry::init("infer");
    let config = InferConfig::from_env()?;
    let service = Arc::new(InferService::from_env(config).await?);
    service.preload().await;
    lmaas_api::server::run("infer", move |request| {
        let service = service.clone();
        async move { service.handle(request).await }
    })
    .await
}
