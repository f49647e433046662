//! Tensors as lmaas carries them between the wire and the engine: a datatype, a shape and the
//! data, either packed little-endian bytes (every numeric type, as ONNX Runtime lays them out) or
//! a list of byte strings (BYTES / ONNX string tensors).

use std::fmt;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Element types of the Open Inference Protocol that ONNX Runtime can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// Bytes per element; `None` for BYTES, whose elements vary in length.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    pub fn parse(raw: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|t| t.as_str() == raw)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tensor contents. `Raw` holds `element_count * element_size` little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Raw(Vec<u8>),
    Bytes(Vec<Vec<u8>>),
}

/// A named tensor whose data length matches its shape and datatype (checked where it is built).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// Number of elements, from the shape.
    pub fn element_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// Packs the tensor for the V2 binary extension: raw bytes as they are, BYTES elements each
    /// preceded by a 4-byte little-endian length.
    pub fn to_binary(&self) -> Vec<u8> {
        match &self.data {
            TensorData::Raw(bytes) => bytes.clone(),
            TensorData::Bytes(items) => {
                let mut out = Vec::with_capacity(items.iter().map(|i| i.len() + 4).sum());
                for item in items {
                    out.extend_from_slice(&(item.len() as u32).to_le_bytes());
                    out.extend_from_slice(item);
                }
                out
            }
        }
    }

    /// The data as a serializable flat array, written element by element without building a JSON
    /// tree (responses can hold hundreds of thousands of floats). Non-finite floats become `null`,
    /// since JSON has no NaN; clients that need them exactly ask for binary outputs.
    pub fn json_data(&self) -> JsonData<'_> {
        JsonData(self)
    }
}

/// See [`Tensor::json_data`].
pub struct JsonData<'a>(&'a Tensor);

impl Serialize for JsonData<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let tensor = self.0;
        let mut seq = serializer.serialize_seq(Some(tensor.element_count()))?;
        let bytes = match &tensor.data {
            TensorData::Bytes(items) => {
                for item in items {
                    seq.serialize_element(&String::from_utf8_lossy(item))?;
                }
                return seq.end();
            }
            TensorData::Raw(bytes) => bytes,
        };
        macro_rules! each {
            ($ty:ty, $to:expr) => {
                for chunk in bytes.chunks_exact(std::mem::size_of::<$ty>()) {
                    seq.serialize_element(&$to(<$ty>::from_le_bytes(chunk.try_into().expect("chunk size"))))?;
                }
            };
        }
        match tensor.datatype {
            DataType::Bool => each!(u8, |b| b != 0),
            DataType::Uint8 => each!(u8, |v| v),
            DataType::Int8 => each!(i8, |v| v),
            DataType::Uint16 => each!(u16, |v| v),
            DataType::Int16 => each!(i16, |v| v),
            DataType::Uint32 => each!(u32, |v| v),
            DataType::Int32 => each!(i32, |v| v),
            DataType::Uint64 => each!(u64, |v| v),
            DataType::Int64 => each!(i64, |v| v),
            DataType::Fp16 => each!(u16, |v| f16::from_bits(v).to_f32()),
            DataType::Bf16 => each!(u16, |v| bf16::from_bits(v).to_f32()),
            DataType::Fp32 => each!(f32, |v| v),
            DataType::Fp64 => each!(f64, |v| v),
            DataType::Bytes => unreachable!("BYTES tensors are never raw"),
        }
        seq.end()
    }
}

/// Why one JSON element could not become a tensor element; the caller adds the input name.
#[derive(Debug, PartialEq, Eq)]
pub struct ElementError {
    pub index: usize,
    pub reason: String,
}

/// Converts flat JSON elements to tensor data of `datatype`, checking each one's type and range.
pub fn json_to_data(datatype: DataType, values: &[&Value]) -> Result<TensorData, ElementError> {
    if datatype == DataType::Bytes {
        let items = values
            .iter()
            .enumerate()
            .map(|(index, v)| match v {
                Value::String(s) => Ok(s.as_bytes().to_vec()),
                other => Err(ElementError { index, reason: format!("expected a string, got {}", kind_of(other)) }),
            })
            .collect::<Result<_, _>>()?;
        return Ok(TensorData::Bytes(items));
    }
    let size = datatype.element_size().expect("numeric type");
    let mut out = Vec::with_capacity(values.len() * size);
    for (index, value) in values.iter().enumerate() {
        push_element(datatype, value, &mut out).map_err(|reason| ElementError { index, reason })?;
    }
    Ok(TensorData::Raw(out))
}

fn push_element(datatype: DataType, value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    macro_rules! int {
        ($ty:ty) => {{
            let n = value
                .as_i64()
                .map(i128::from)
                .or_else(|| value.as_u64().map(i128::from))
                .ok_or_else(|| format!("expected an integer, got {}", kind_of(value)))?;
            // The value itself stays out of the message: messages are logged, payloads never are.
            let v = <$ty>::try_from(n).map_err(|_| format!("out of range for {}", datatype))?;
            out.extend_from_slice(&v.to_le_bytes());
        }};
    }
    let float = || value.as_f64().ok_or_else(|| format!("expected a number, got {}", kind_of(value)));
    match datatype {
        DataType::Bool => match value {
            Value::Bool(b) => out.push(u8::from(*b)),
            other => return Err(format!("expected true or false, got {}", kind_of(other))),
        },
        DataType::Uint8 => int!(u8),
        DataType::Uint16 => int!(u16),
        DataType::Uint32 => int!(u32),
        DataType::Uint64 => int!(u64),
        DataType::Int8 => int!(i8),
        DataType::Int16 => int!(i16),
        DataType::Int32 => int!(i32),
        DataType::Int64 => int!(i64),
        DataType::Fp16 => out.extend_from_slice(&f16::from_f64(float()?).to_le_bytes()),
        DataType::Bf16 => out.extend_from_slice(&bf16::from_f64(float()?).to_le_bytes()),
        DataType::Fp32 => out.extend_from_slice(&(float()? as f32).to_le_bytes()),
        DataType::Fp64 => out.extend_from_slice(&float()?.to_le_bytes()),
        DataType::Bytes => unreachable!("handled by the caller"),
    }
    Ok(())
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn convert(datatype: DataType, values: Value) -> Result<TensorData, ElementError> {
        let items: Vec<&Value> = values.as_array().unwrap().iter().collect();
        json_to_data(datatype, &items)
    }

    #[test]
    fn every_numeric_type_round_trips_through_json() {
        for datatype in DataType::ALL.into_iter().filter(|t| !matches!(t, DataType::Bytes | DataType::Bool)) {
            let data = convert(datatype, json!([0, 1, 2, 100])).unwrap();
            let tensor = Tensor { name: "x".into(), datatype, shape: vec![4], data };
            let back: Vec<f64> = serde_json::to_value(tensor.json_data())
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(back, vec![0.0, 1.0, 2.0, 100.0], "{datatype}");
        }
    }

    #[test]
    fn integers_out_of_range_and_fractions_are_rejected_with_the_index() {
        assert_eq!(convert(DataType::Uint8, json!([1, 256])).unwrap_err().index, 1);
        assert!(convert(DataType::Int8, json!([-129])).unwrap_err().reason.contains("out of range for INT8"));
        assert!(convert(DataType::Int64, json!([1.5])).unwrap_err().reason.contains("expected an integer"));
        assert!(convert(DataType::Fp32, json!(["1"])).unwrap_err().reason.contains("got a string"));
        assert!(convert(DataType::Bool, json!([1])).unwrap_err().reason.contains("true or false"));
        assert!(convert(DataType::Bytes, json!([1])).unwrap_err().reason.contains("expected a string"));
    }

    #[test]
    fn bytes_tensors_pack_with_length_prefixes() {
        let data = convert(DataType::Bytes, json!(["ab", ""])).unwrap();
        let tensor = Tensor { name: "s".into(), datatype: DataType::Bytes, shape: vec![2], data };
        assert_eq!(tensor.to_binary(), vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
    }

    #[test]
    fn datatype_names_match_the_open_inference_protocol() {
        for datatype in DataType::ALL {
            let json = serde_json::to_value(datatype).unwrap();
            assert_eq!(json, Value::String(datatype.as_str().to_string()));
            assert_eq!(DataType::parse(datatype.as_str()), Some(datatype));
        }
    }
}
