//! ONNX model files as the registry sees them: untrusted bytes to parse and check before ONNX
//! Runtime is ever asked to load them (DESIGN.md §6). Only the fields the checks need are
//! decoded; weights are skipped without being copied.

pub mod proto;
pub mod validate;

pub use validate::{validate, Problem, ValidationLimits};
