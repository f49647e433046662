//! The chat function: OpenAI chat and text completions, streamed with Lambda response streaming.

use std::sync::Arc;

use lmaas_api::{ChatService, InferConfig};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lmaas_api::telemetry::init("chat");
    let config = InferConfig::from_env()?;
    let service = Arc::new(ChatService::from_env(config).await?);
    service.preload().await;
    lmaas_api::server::run_streaming("chat", move |request| {
        let service = service.clone();
        async move { service.handle(request).await }
    })
    .await
}
