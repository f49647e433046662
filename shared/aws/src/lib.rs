//! AWS adapters for lmaas ports: S3 for models. The same code talks to AWS and to the local
//! emulator; only `AWS_ENDPOINT_URL` differs.

pub mod batch;
pub mod config;
pub mod jobs;
pub mod keys;
mod object;
pub mod queue;
pub mod s3;

pub use batch::BatchObjects;
pub use config::sdk_config;
pub use jobs::S3JobStore;
pub use keys::S3KeyStore;
pub use queue::SqsJobQueue;
pub use s3::S3ModelStore;
