//! The lmaas domain: validated names and references, tensors, model manifests, the Open
//! Inference Protocol (KServe V2) wire format, errors, and the ports that adapters implement.
//! Nothing here talks to AWS or ONNX Runtime, so all of it is unit-tested without either.

pub mod acl;
pub mod auth;
pub mod error;
mod float_text;
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

/// Lambda's memory per vCPU of CPU time: a function gets CPU in proportion to its memory.
pub const LAMBDA_MB_PER_VCPU: u64 = 1769;

/// The CPUs this process may use: ONNX Runtime's intra-op threads, and the threads that write a
/// large tensor's JSON. Cached, since the standard library reads cgroup files to know. In Lambda
/// (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, set by Lambda itself) see [`cpus_for`].
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        let visible = std::thread::available_parallelism().map_or(1, |n| n.get());
        let memory = std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").ok().and_then(|m| m.parse().ok());
        cpus_for(visible, memory)
    })
}

/// The CPUs to use given the `visible` ones and, in Lambda, the function's memory in MB. Lambda
/// shows two vCPUs from 128 to 3,008 MB (more above), but gives the function CPU time in
/// proportion to its memory and throttles it once that is spent, so a thread per visible vCPU
/// would spend the share on all of them and then wait out the throttle. Measured with each
/// size's share as a CPU quota (the `vcpu_share` bench, one MiniLM sentence, three runs): below
/// 1.5 vCPUs, two threads back to back averaged 1.02-1.66x one thread's time, and at 1-1.16 vCPUs
/// their p99 was 47-55 ms against 7-17 ms; after an idle spell (a fresh quota) they answered
/// 1.3-1.7x sooner. Busy instances are where cost and tail latency accrue, so the share is
/// rounded: one thread below 2,654 MB.
pub fn cpus_for(visible: usize, lambda_memory_mb: Option<u64>) -> usize {
    let Some(memory) = lambda_memory_mb else { return visible.max(1) };
    let share = memory as f64 / LAMBDA_MB_PER_VCPU as f64;
    (share.round() as usize).clamp(1, visible.max(1))
}

#[cfg(test)]
mod tests {
    use super::cpus_for;

    #[test]
    fn lambda_functions_use_the_vcpus_their_memory_buys_not_the_ones_they_see() {
        assert_eq!(cpus_for(4, None), 4);
        assert_eq!(cpus_for(0, None), 1);
        assert_eq!(cpus_for(2, Some(128)), 1);
        assert_eq!(cpus_for(2, Some(1769)), 1);
        assert_eq!(cpus_for(2, Some(2653)), 1);
        assert_eq!(cpus_for(2, Some(2654)), 2);
        assert_eq!(cpus_for(2, Some(3008)), 2);
        assert_eq!(cpus_for(3, Some(3538)), 2);
        assert_eq!(cpus_for(6, Some(10_240)), 6);
    }
}
