//! Building the authenticator from configuration: API keys from S3, JWTs from the JWKS given
//! inline (`LMAAS_JWKS`) or fetched once at cold start from `LMAAS_JWKS_URL`.

use std::sync::Arc;

use lmaas_aws::{S3KeyStore, S3ModelStore};
use lmaas_core::auth::{Authenticator, KeyStore};
use lmaas_core::jwt::JwtVerifier;

use crate::config::{AuthConfig, ConfigError, JwksSource};

/// The S3-backed model store and authenticator every HTTP function needs, from the environment.
pub async fn s3_backends(bucket: &str, config: &AuthConfig) -> Result<(Arc<S3ModelStore>, Authenticator), ConfigError> {
    let s3 = lmaas_aws::config::s3_client(&lmaas_aws::sdk_config().await);
    let keys = Arc::new(S3KeyStore::new(s3.clone(), bucket));
    Ok((Arc::new(S3ModelStore::new(s3, bucket)), authenticator(config, keys).await?))
}

pub async fn authenticator(config: &AuthConfig, keys: Arc<dyn KeyStore>) -> Result<Authenticator, ConfigError> {
    let jwt = match &config.jwks {
        None => None,
        Some(jwt) => {
            let (document, variable) = match &jwt.source {
                JwksSource::Inline(json) => (json.clone(), "LMAAS_JWKS"),
                JwksSource::Url(url) => (fetch_jwks(url).await?, "LMAAS_JWKS_URL"),
            };
            let verifier = JwtVerifier::from_jwks(&document, &jwt.issuer, &jwt.audience)
                .map_err(|e| ConfigError::new(format!("{variable}: {e}")))?;
            Some(verifier)
        }
    };
    Ok(Authenticator::new(keys, jwt, config.key_ttl))
}

async fn fetch_jwks(url: &str) -> Result<String, ConfigError> {
    let failed = |e: String| ConfigError::new(format!("LMAAS_JWKS_URL: fetching {url}: {e}"));
    // rustls needs one crypto provider chosen per process; aws-lc-rs is the one the AWS SDK uses.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let response = client.get(url).send().await.map_err(|e| failed(e.to_string()))?;
    let response = response.error_for_status().map_err(|e| failed(e.to_string()))?;
    response.text().await.map_err(|e| failed(e.to_string()))
}
