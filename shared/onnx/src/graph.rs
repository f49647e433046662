//! Reading and building ONNX graphs: decode/encode a model, look up initializers, read and write
//! tensor data, and make nodes and attributes. What the quantizer and the trainer build on.

use std::collections::HashMap;

use prost::bytes::Bytes;
use prost::Message;

use crate::proto::{attribute_type, data_type, AttributeProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};

/// Why a model could not be read or rewritten, worded for the person who supplied it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GraphError(pub String);

/// Decodes `model.onnx` bytes. Weights (`raw_data`) share `bytes` instead of being copied.
pub fn decode(bytes: Bytes) -> Result<ModelProto, GraphError> {
    let model = ModelProto::decode(bytes).map_err(|e| GraphError(format!("not an ONNX model (protobuf: {e})")))?;
    if model.graph.is_none() {
        return Err(GraphError("not an ONNX model (it has no graph)".into()));
    }
    Ok(model)
}

pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// The graph's initializers by name.
pub fn initializers(model: &ModelProto) -> HashMap<&str, &TensorProto> {
    let graph = model.graph.as_ref().expect("decode checked the graph");
    graph.initializer.iter().map(|t| (t.name(), t)).collect()
}

/// The float values of a FLOAT tensor stored in the file (raw little-endian bytes or `float_data`).
pub fn floats(tensor: &TensorProto) -> Result<Vec<f32>, GraphError> {
    if tensor.data_type() != data_type::FLOAT {
        return Err(GraphError(format!("tensor '{}' is not FLOAT (type {})", tensor.name(), tensor.data_type())));
    }
    if tensor.data_location() == 1 {
        return Err(GraphError(format!("tensor '{}' keeps its data in an external file", tensor.name())));
    }
    let count: i64 = tensor.dims.iter().product();
    let values: Vec<f32> = match &tensor.raw_data {
        Some(raw) => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        None => tensor.float_data.clone(),
    };
    if values.len() as i64 != count {
        return Err(GraphError(format!(
            "tensor '{}' holds {} values but its shape {:?} needs {count}",
            tensor.name(),
            values.len(),
            tensor.dims
        )));
    }
    Ok(values)
}

/// A tensor of `data_type` holding `raw` (little-endian element bytes).
pub fn raw_tensor(name: &str, dims: &[i64], data_type: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(data_type),
        raw_data: Some(Bytes::from(raw)),
        ..Default::default()
    }
}

pub fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    raw_tensor(name, dims, data_type::FLOAT, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// A FLOAT16 tensor from f32 values (rounded to nearest).
pub fn f16_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    let raw = values.iter().flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes()).collect();
    raw_tensor(name, dims, data_type::FLOAT16, raw)
}

pub fn i64_tensor(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    raw_tensor(name, dims, data_type::INT64, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

pub fn i8_tensor(name: &str, dims: &[i64], values: &[i8]) -> TensorProto {
    raw_tensor(name, dims, data_type::INT8, values.iter().map(|v| *v as u8).collect())
}

pub fn u8_tensor(name: &str, dims: &[i64], values: Vec<u8>) -> TensorProto {
    raw_tensor(name, dims, data_type::UINT8, values)
}

/// A node; `domain` is "" for the standard operator set.
pub fn node(
    op: &str,
    domain: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attributes: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        domain: (!domain.is_empty()).then(|| domain.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attributes,
        ..Default::default()
    }
}

pub fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), i: Some(value), r#type: Some(attribute_type::INT), ..Default::default() }
}

pub fn float_attribute(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(value),
        r#type: Some(attribute_type::FLOAT),
        ..Default::default()
    }
}

pub fn ints_attribute(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: values.to_vec(),
        r#type: Some(attribute_type::INTS),
        ..Default::default()
    }
}

/// The integer attribute `name` of `node`, or `default` when it is not set.
pub fn int_of(node: &NodeProto, name: &str, default: i64) -> i64 {
    node.attribute.iter().find(|a| a.name() == name).map(|a| a.i()).unwrap_or(default)
}

pub fn float_of(node: &NodeProto, name: &str, default: f32) -> f32 {
    node.attribute.iter().find(|a| a.name() == name).map(|a| a.f()).unwrap_or(default)
}

/// Makes sure the model imports `domain` (at `version` if it is new).
pub fn import_domain(model: &mut ModelProto, domain: &str, version: i64) {
    if !model.opset_import.iter().any(|o| o.domain() == domain) {
        model.opset_import.push(OperatorSetIdProto { domain: Some(domain.into()), version: Some(version) });
    }
}

/// The opset version the model imports for the standard domain.
pub fn standard_opset(model: &ModelProto) -> i64 {
    model.opset_import.iter().find(|o| matches!(o.domain(), "" | "ai.onnx")).map(|o| o.version()).unwrap_or(1)
}

/// The size in bytes of a tensor's data in the file.
pub fn tensor_bytes(tensor: &TensorProto) -> usize {
    tensor.raw_data.as_ref().map(|r| r.len()).unwrap_or(0)
        + tensor.float_data.len() * 4
        + tensor.int32_data.len() * 4
        + tensor.int64_data.len() * 8
        + tensor.double_data.len() * 8
        + tensor.uint64_data.len() * 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_and_bad_shapes_are_named() {
        let t = f32_tensor("w", &[2, 2], &[1.0, -2.0, 3.5, 0.25]);
        assert_eq!(floats(&t).unwrap(), vec![1.0, -2.0, 3.5, 0.25]);
        let wrong = TensorProto { dims: vec![3], ..t.clone() };
        assert!(floats(&wrong).unwrap_err().0.contains("holds 4 values but its shape [3] needs 3"));
        assert!(floats(&i64_tensor("i", &[1], &[1])).unwrap_err().0.contains("is not FLOAT"));
    }

    #[test]
    fn garbage_is_not_a_model() {
        assert!(decode(Bytes::from_static(b"\xff\xff")).unwrap_err().0.contains("not an ONNX model"));
    }
}
