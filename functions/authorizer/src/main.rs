//! The API Gateway Lambda authorizer: the functions' own authentication, at the edge.

use std::sync::Arc;

use lambda_runtime::{service_fn, LambdaEvent};
use lmaas_api::authorizer::{authorize_event, AuthorizerEvent};
use lmaas_api::AuthConfig;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lmaas_api::telemetry::init("authorizer");
    let bucket = std::env::var("LMAAS_BUCKET").map_err(|_| "configuration: LMAAS_BUCKET must be set")?;
    let s3 = lmaas_aws::config::s3_client(&lmaas_aws::sdk_config().await);
    let keys = Arc::new(lmaas_aws::S3KeyStore::new(s3, bucket));
    let authenticator = Arc::new(lmaas_api::auth::authenticator(&AuthConfig::from_env()?, keys).await?);
    lmaas_api::lambda::keep_serving(|| {
        let authenticator = authenticator.clone();
        lambda_runtime::run(service_fn(move |event: LambdaEvent<AuthorizerEvent>| {
            let authenticator = authenticator.clone();
            async move { Ok::<_, lambda_runtime::Error>(authorize_event(&authenticator, &event.payload).await) }
        }))
    })
    .await
}
