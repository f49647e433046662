//! The models function: server metadata, health, model metadata and readiness.

use std::sync::Arc;

use lmaas_api::{ModelsConfig, ModelsService};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lmaas_api::telemetry::init("models");
    let config = ModelsConfig::from_env()?;
    let service = Arc::new(ModelsService::from_env(config).await?);
    lmaas_api::server::run("models", move |request| {
        let service = service.clone();
        async move { service.handle(request).await }
    })
    .await
}
