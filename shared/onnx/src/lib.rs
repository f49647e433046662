//! ONNX model files in Rust: the whole of onnx.proto as prost messages (decoded and encoded
//! without loss), the registry's checks on untrusted uploads (DESIGN.md §6), graph building
//! helpers, and the weight quantizer.

pub mod classifier;
pub mod graph;
pub mod proto;
pub mod quantize;
pub mod validate;

pub use graph::{decode, encode, GraphError};
pub use validate::{validate, Problem, ValidationLimits};
