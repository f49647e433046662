//! The lmaas domain: validated names and references, tensors, model manifests, the Open
//! Inference Protocol (KServe V2) wire format, errors, and the ports that adapters implement.
//! Nothing here talks to AWS or ONNX Runtime, so all of it is unit-tested without either.

pub mod acl;
pub mod auth;
pub mod error;
mod helpers;
pub mod jobs;
pub mod jwt;
pub mod limits;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod resolver;
pub mod store;
pub mod tensor;
pub mod time;
pub mod v2;

pub use auth::{Principal, Scope};
pub use error::Error;
pub use limits::Limits;
pub use manifest::{Manifest, ModelState, TensorSpec};
pub use names::{AliasName, ModelName, ModelRef, Tag, Version};
pub use resolver::ModelResolver;
pub use store::{MemoryModelStore, ModelStore, RegistryStore, StoreError};
pub use tensor::{DataType, Tensor, TensorData};

/// The CPUs this process may use: ONNX Runtime's intra-op threads, and the threads that write a
/// large tensor's JSON. Cached, since the standard library reads cgroup files to know.
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
