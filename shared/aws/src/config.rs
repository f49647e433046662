//! SDK configuration shared by every client.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};

/// Loads the SDK configuration from the environment (region, credentials, `AWS_ENDPOINT_URL`),
/// defaulting the region to us-east-1 so the local stack needs no AWS setup.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let region = aws_config::meta::region::RegionProviderChain::default_provider().or_else(Region::new("us-east-1"));
    aws_config::defaults(BehaviorVersion::latest()).region(region).timeout_config(timeouts()).load().await
}

/// How long a call may wait on S3 or SQS. The SDK's defaults bound only the connect, so a server
/// that accepts a request and never answers would hang its caller for good (a function until its
/// Lambda deadline, a worker or the CLI forever). The read bound is the time to a response's first
/// byte, the request's upload included: long enough for SQS's 20 s long poll and a model-sized
/// PUT, short enough that a stuck attempt fails over to the SDK's retry.
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder().connect_timeout(Duration::from_secs(5)).read_timeout(Duration::from_secs(120)).build()
}

/// An S3 client; path-style addressing when a custom endpoint (the emulator) is set, since the
/// emulator cannot serve virtual-hosted bucket names.
pub fn s3_client(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let builder = aws_sdk_s3::config::Builder::from(config).force_path_style(config.endpoint_url().is_some());
    aws_sdk_s3::Client::from_conf(builder.build())
}

/// An SQS client (the endpoint comes from `AWS_ENDPOINT_URL` like every other client).
pub fn sqs_client(config: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(config)
}
