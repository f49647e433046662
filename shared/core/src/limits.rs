//! Request limits, checked before any work is done so that no input can exhaust a function.
//! Safe defaults; a model can tighten or widen them in its manifest's `config.limits`.

use serde::Deserialize;

/// Limits applied to every inference request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted, in bytes (API Gateway and Lambda cap payloads at 6 MB).
    pub max_body_bytes: usize,
    /// Largest number of elements in one input tensor.
    pub max_tensor_elements: usize,
    /// Largest number of dimensions of one input tensor.
    pub max_rank: usize,
    /// Largest first dimension, where the model leaves it dynamic (the batch).
    pub max_batch_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 6 * 1024 * 1024,
            max_tensor_elements: 16 * 1024 * 1024,
            max_rank: 8,
            max_batch_size: 256,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ModelLimits {
    max_tensor_elements: Option<usize>,
    max_batch_size: Option<usize>,
}

impl Limits {
    /// These limits with a model's overrides (`config.limits`) applied. The body limit is the
    /// platform's and cannot be raised by a model.
    pub fn for_model(&self, config: &serde_json::Value) -> Limits {
        let overrides = config
            .get("limits")
            .and_then(|l| serde_json::from_value::<ModelLimits>(l.clone()).ok())
            .unwrap_or_default();
        Limits {
            max_tensor_elements: overrides.max_tensor_elements.unwrap_or(self.max_tensor_elements),
            max_batch_size: overrides.max_batch_size.unwrap_or(self.max_batch_size),
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_model_can_set_its_own_batch_and_element_limits() {
        let limits = Limits::default().for_model(&json!({"limits": {"max_batch_size": 8, "max_tensor_elements": 100}}));
        assert_eq!((limits.max_batch_size, limits.max_tensor_elements), (8, 100));
        assert_eq!(Limits::default().for_model(&json!(null)), Limits::default());
    }
}
