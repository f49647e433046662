//! The lmaas inference engine: ONNX Runtime loaded once per process, sessions created with the
//! execution providers the deployment asks for, and a model cache from S3 to disk to memory.

pub mod batcher;
pub mod cache;
pub mod embeddings;
pub mod error;
pub mod generate;
pub mod model;
pub mod optimize;
pub mod providers;
mod rng;
pub mod runtime;
pub mod train;

pub use cache::{CacheConfig, ModelCache};
pub use embeddings::{EmbeddingConfig, EmbeddingInput, Embeddings};
pub use error::EngineError;
pub use generate::{ChatMessage, FinishReason, GenerateParams, Generated, GenerationConfig, Sampling};
pub use model::LoadedModel;
pub use providers::{ExecutionProvider, ExecutionProviders};
pub use runtime::Runtime;
