//! Request limits, checked before any work is done so that no input can exhaust a function.

/// Limits applied to every inference request. Defaults are safe for a Lambda function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted, in bytes (API Gateway and Lambda cap payloads at 6 MB).
    pub max_body_bytes: usize,
    /// Largest number of elements in one input tensor.
    pub max_tensor_elements: usize,
    /// Largest number of dimensions of one input tensor.
    pub max_rank: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body_bytes: 6 * 1024 * 1024, max_tensor_elements: 16 * 1024 * 1024, max_rank: 8 }
    }
}
