//! Tensors as lmaas carries them between the wire and the engine: a datatype, a shape and the
//! data, either packed little-endian bytes (every numeric type, as ONNX Runtime lays them out) or
//! a list of byte strings (BYTES / ONNX string tensors).

use std::fmt;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::float_text::write_f32s;

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

    /// Bytes of the tensor packed for the V2 binary extension (see [`Tensor::append_binary`]).
    pub fn binary_size(&self) -> usize {
        match &self.data {
            TensorData::Raw(bytes) => bytes.len(),
            TensorData::Bytes(items) => items.iter().map(|i| i.len() + 4).sum(),
        }
    }

    /// Appends the tensor packed for the V2 binary extension: raw bytes as they are, BYTES
    /// elements each preceded by a 4-byte little-endian length.
    pub fn append_binary(&self, out: &mut Vec<u8>) {
        match &self.data {
            TensorData::Raw(bytes) => out.extend_from_slice(bytes),
            TensorData::Bytes(items) => {
                out.reserve(self.binary_size());
                for item in items {
                    out.extend_from_slice(&(item.len() as u32).to_le_bytes());
                    out.extend_from_slice(item);
                }
            }
        }
    }

    /// At most this many bytes of JSON for the data (exact for BYTES up to escaping), so a
    /// response can be allocated once.
    pub fn json_size_hint(&self) -> usize {
        match &self.data {
            TensorData::Raw(bytes) => {
                let size = self.datatype.element_size().expect("numeric type");
                2 + bytes.len() / size * max_json_element_chars(self.datatype)
            }
            TensorData::Bytes(items) => 2 + items.iter().map(|i| i.len() + 3).sum::<usize>(),
        }
    }

    /// Appends the data as a flat JSON array, written straight from the packed bytes: floats
    /// that read back exactly (f32s with nine digits, [`write_f32s`]; f64s the shortest,
    /// [`write_f64s`]) and integers (itoa), with no JSON tree
    /// or serializer in between, since responses can hold hundreds of thousands of floats and
    /// writing them is most of a small model's response time. Large tensors are shared with the
    /// standing helper threads (see [`crate::helpers`]). Non-finite floats become `null`, since
    /// JSON has no NaN; clients that need them exactly ask for binary outputs.
    pub fn write_json_data(&self, out: &mut Vec<u8>) {
        match &self.data {
            TensorData::Raw(bytes) if self.element_count() >= SHARED_JSON_ELEMENTS => {
                out.push(b'[');
                crate::helpers::write_shared(JsonParts::new(self.datatype, bytes.clone()), out, b',');
                out.push(b']');
            }
            _ => self.write_json_data_alone(out),
        }
    }

    fn write_json_data_alone(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        match &self.data {
            TensorData::Raw(bytes) => write_json_elements(out, self.datatype, bytes),
            TensorData::Bytes(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut *out, &String::from_utf8_lossy(item))
                        .expect("a string always serializes");
                }
            }
        }
        out.push(b']');
    }
}

/// Tensors with at least this many elements are written to JSON with the helper threads' help.
/// Measured in the handler bench on 2 vCPUs, int8 MiniLM JSON, when f32 text was Ryū's (about
/// 0.25 ms for this many on one vCPU; nine-digit text takes about 0.06 ms, and the threshold has
/// not been measured again): batch 8 (24,576 floats) went from 1.054-1.091x raw ORT, written
/// alone, to 1.056-1.058x; batch 32 (98,304) from 1.069-1.074x, with a thread spawned per
/// response, to 1.025-1.027x. At batch 1 (3,072) sharing was slower, 1.060-1.075x alone vs
/// 1.073-1.085x shared (three runs each, alternating), also with ORT's pool told to stop spinning
/// when a run ends: waking a helper, copying its data and collecting its text cost about what it
/// saved.
const SHARED_JSON_ELEMENTS: usize = 8_192;

/// Elements per part of shared JSON work: a few microseconds each, so a helper that wakes late
/// still finds parts left, and the caller never waits long for the part a helper is writing.
const JSON_PART_ELEMENTS: usize = 512;

/// A numeric tensor's packed bytes, as parts of JSON text for [`crate::helpers`].
struct JsonParts {
    datatype: DataType,
    bytes: Vec<u8>,
    part_bytes: usize,
}

impl JsonParts {
    fn new(datatype: DataType, bytes: Vec<u8>) -> Self {
        let part_bytes = JSON_PART_ELEMENTS * datatype.element_size().expect("numeric type");
        JsonParts { datatype, bytes, part_bytes }
    }
}

impl crate::helpers::Parts for JsonParts {
    fn count(&self) -> usize {
        self.bytes.len().div_ceil(self.part_bytes)
    }

    fn write(&self, index: usize, out: &mut Vec<u8>) {
        let start = index * self.part_bytes;
        let end = (start + self.part_bytes).min(self.bytes.len());
        write_json_elements(out, self.datatype, &self.bytes[start..end]);
    }
}

/// The longest JSON text of one element of `datatype`, with its comma.
fn max_json_element_chars(datatype: DataType) -> usize {
    match datatype {
        DataType::Bool => "false,".len(),
        DataType::Uint8 => "255,".len(),
        DataType::Int8 => "-128,".len(),
        DataType::Uint16 => "65535,".len(),
        DataType::Int16 => "-32768,".len(),
        DataType::Uint32 => "4294967295,".len(),
        DataType::Int32 => "-2147483648,".len(),
        DataType::Uint64 | DataType::Int64 => "-9223372036854775808,".len(),
        // FP16 and BF16 are written as the f32 they widen to.
        DataType::Fp16 | DataType::Bf16 | DataType::Fp32 => crate::float_text::MOST_CHARS + 1,
        DataType::Fp64 => F64_MOST_CHARS + 1,
        DataType::Bytes => 0,
    }
}

/// Appends packed little-endian elements as comma-separated JSON numbers (no brackets).
fn write_json_elements(out: &mut Vec<u8>, datatype: DataType, bytes: &[u8]) {
    let size = datatype.element_size().expect("numeric type");
    out.reserve(bytes.len() / size * max_json_element_chars(datatype));
    macro_rules! each {
        ($ty:ty, $write:expr) => {
            for (i, chunk) in bytes.chunks_exact(size).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                $write(&mut *out, <$ty>::from_le_bytes(chunk.try_into().expect("chunk size")));
            }
        };
    }
    fn int(out: &mut Vec<u8>, v: impl itoa::Integer) {
        out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }
    let elements = |size| bytes.chunks_exact(size);
    match datatype {
        DataType::Bool => {
            each!(u8, |out: &mut Vec<u8>, b| out.extend_from_slice(if b != 0 { b"true" } else { b"false" }))
        }
        DataType::Uint8 => each!(u8, int),
        DataType::Int8 => each!(i8, int),
        DataType::Uint16 => each!(u16, int),
        DataType::Int16 => each!(i16, int),
        DataType::Uint32 => each!(u32, int),
        DataType::Int32 => each!(i32, int),
        DataType::Uint64 => each!(u64, int),
        DataType::Int64 => each!(i64, int),
        DataType::Fp16 => write_f32s(out, elements(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        DataType::Bf16 => write_f32s(out, elements(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        DataType::Fp32 => write_f32s(out, elements(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))),
        DataType::Fp64 => write_f64s(out, elements(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))),
        DataType::Bytes => unreachable!("BYTES tensors are never raw"),
    }
}

/// The most bytes Ryū writes for one f64 (its documented bound).
const F64_MOST_CHARS: usize = 24;

/// Appends f64s as comma-separated shortest round-trip JSON numbers (`null` where not finite),
/// each written by Ryū straight into space reserved for all of them. (f32s have their own writer,
/// [`write_f32s`], since theirs is the text that most responses are made of.)
fn write_f64s(out: &mut Vec<u8>, values: impl ExactSizeIterator<Item = f64>) {
    let per_value = F64_MOST_CHARS + 1;
    out.reserve(values.len() * per_value);
    let (capacity, buffer) = (out.capacity(), out.as_mut_ptr());
    let mut written = out.len();
    for (i, value) in values.enumerate() {
        // Never taken (the reservation covers every value); it keeps the writes below in bounds
        // without trusting the iterator's length.
        assert!(written + per_value <= capacity, "JSON float text outgrew its reservation");
        // SAFETY: `per_value` bytes from `written` are within the capacity (checked above), and
        // a value writes at most that: a comma and either "null" or Ryū's text.
        unsafe {
            if i > 0 {
                *buffer.add(written) = b',';
                written += 1;
            }
            written += if value.is_finite() {
                ryu::raw::format64(value, buffer.add(written))
            } else {
                std::ptr::copy_nonoverlapping(b"null".as_ptr(), buffer.add(written), 4);
                4
            };
        }
    }
    // SAFETY: every byte up to `written` was initialized above, within the capacity.
    unsafe { out.set_len(written) };
}

/// Why JSON `data` could not become tensor data; the caller adds the input name.
#[derive(Debug, PartialEq, Eq)]
pub enum DataError {
    /// The data holds `found` elements, not the count the shape needs.
    Count { found: usize },
    /// Element `index` has the wrong type or is out of range.
    Element { index: usize, reason: String },
    /// The text is not JSON the reader accepts (e.g. nested too deeply).
    Syntax(String),
}

/// Reads JSON `data` (a flat array, nested row-major arrays, or one scalar) straight into `count`
/// packed elements of `datatype`, checking each one's type and range. No JSON tree is built: with a
/// `serde_json::Value` per element (32 bytes, 8 more to flatten), a 6 MB body of one-digit INT64s
/// peaked at 201 MB of heap; read this way, at the tensor's own 24 MB. A wrong count is reported
/// before a bad element.
pub fn json_to_data(datatype: DataType, count: usize, data: &str) -> Result<TensorData, DataError> {
    let mut elements = Elements {
        datatype,
        count,
        packed: Vec::with_capacity(datatype.element_size().map_or(0, |size| count * size)),
        strings: Vec::new(),
        seen: 0,
        first_error: None,
    };
    let mut reader = serde_json::Deserializer::from_str(data);
    serde::de::DeserializeSeed::deserialize(Walk(&mut elements), &mut reader)
        .and_then(|()| reader.end())
        .map_err(|e| DataError::Syntax(e.to_string()))?;
    if elements.seen != count {
        return Err(DataError::Count { found: elements.seen });
    }
    if let Some(error) = elements.first_error {
        return Err(error);
    }
    Ok(if datatype == DataType::Bytes { TensorData::Bytes(elements.strings) } else { TensorData::Raw(elements.packed) })
}

/// Elements as [`Walk`] meets them: converted up to the first bad one or the expected count,
/// counted to the end.
struct Elements {
    datatype: DataType,
    count: usize,
    packed: Vec<u8>,
    strings: Vec<Vec<u8>>,
    seen: usize,
    first_error: Option<DataError>,
}

impl Elements {
    fn push(&mut self, value: Value) {
        let index = self.seen;
        self.seen += 1;
        if self.first_error.is_some() || index >= self.count {
            return;
        }
        let converted = match (self.datatype, value) {
            (DataType::Bytes, Value::String(s)) => {
                self.strings.push(s.into_bytes());
                Ok(())
            }
            (DataType::Bytes, other) => Err(format!("expected a string, got {}", kind_of(&other))),
            (datatype, value) => push_element(datatype, &value, &mut self.packed),
        };
        if let Err(reason) = converted {
            self.first_error = Some(DataError::Element { index, reason });
        }
    }
}

/// Visits JSON data depth-first, handing every scalar to [`Elements::push`]; arrays at any depth
/// flatten row-major, as V2 allows.
struct Walk<'e>(&'e mut Elements);

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("tensor data")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.push(Value::Bool(v));
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(Value::from(v));
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(Value::from(v));
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push(Value::from(v));
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.0.push(Value::String(v.to_string()));
        Ok(())
    }
    fn visit_string<E>(self, v: String) -> Result<(), E> {
        self.0.push(Value::String(v));
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push(Value::Null);
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        while items.next_element_seed(Walk(&mut *self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        use serde::de::IgnoredAny;
        while entries.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.0.push(Value::Object(serde_json::Map::new()));
        Ok(())
    }
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

    /// Converts a flat JSON array, expecting as many elements as it has.
    fn convert(datatype: DataType, values: Value) -> Result<TensorData, DataError> {
        json_to_data(datatype, values.as_array().unwrap().len(), &values.to_string())
    }

    /// The index and reason of the element `convert` rejects.
    fn rejected(datatype: DataType, values: Value) -> (usize, String) {
        match convert(datatype, values) {
            Err(DataError::Element { index, reason }) => (index, reason),
            other => panic!("expected an element error, got {other:?}"),
        }
    }

    /// The tensor's JSON as one thread writes it.
    fn json_text(tensor: &Tensor) -> String {
        let mut out = Vec::new();
        tensor.write_json_data_alone(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn fp32(values: &[f32]) -> Tensor {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor { name: "x".into(), datatype: DataType::Fp32, shape: vec![values.len()], data: TensorData::Raw(bytes) }
    }

    #[test]
    fn every_numeric_type_round_trips_through_json() {
        for datatype in DataType::ALL.into_iter().filter(|t| !matches!(t, DataType::Bytes | DataType::Bool)) {
            let data = convert(datatype, json!([0, 1, 2, 100])).unwrap();
            let tensor = Tensor { name: "x".into(), datatype, shape: vec![4], data };
            let back: Vec<f64> = serde_json::from_str::<Value>(&json_text(&tensor))
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(back, vec![0.0, 1.0, 2.0, 100.0], "{datatype}");
        }
    }

    /// f32s read back exactly (float_text tests them closely); f64s are written with the shortest
    /// digits, as serde_json writes them; only large exponents differ, `1e13` vs `1e+13`.
    #[test]
    fn floats_read_back_exactly_and_f64s_are_written_as_serde_json_writes_them() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            0.1,
            -1.5e-7,
            1e-45,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
            16_777_216.0,
            1e13,
            std::f32::consts::PI,
        ];
        // A spread of bit patterns across every exponent (a fixed LCG: reproducible).
        let mut state = 0x2545_f491_u32;
        for _ in 0..20_000 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let value = f32::from_bits(state);
            if value.is_finite() {
                values.push(value);
            }
        }
        let text = json_text(&fp32(&values));
        let back: Vec<f32> = serde_json::from_str(&text).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&values));
        // FP64 too, the same way.
        let wide: Vec<f64> = values.iter().map(|&v| f64::from(v) * 1.000_000_1).chain([1e300, -2.5e-300]).collect();
        let tensor = Tensor {
            name: "x".into(),
            datatype: DataType::Fp64,
            shape: vec![wide.len()],
            data: TensorData::Raw(wide.iter().flat_map(|v| v.to_le_bytes()).collect()),
        };
        let text = json_text(&tensor);
        assert_eq!(text, serde_json::to_string(&wide).unwrap().replace("e+", "e"));
        // serde_json reads f64 within an ulp unless built with float_roundtrip; std reads exactly.
        let back: Vec<f64> = text.trim_matches(['[', ']']).split(',').map(|v| v.parse().unwrap()).collect();
        assert_eq!(
            back.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
            wide.iter().map(|f| f.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn non_finite_floats_become_null() {
        assert_eq!(json_text(&fp32(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.5])), "[null,null,null,2.5]");
    }

    #[test]
    fn half_floats_booleans_and_strings_are_written_as_json() {
        let half = |datatype, bits: [u16; 2]| Tensor {
            name: "h".into(),
            datatype,
            shape: vec![2],
            data: TensorData::Raw(bits.iter().flat_map(|b| b.to_le_bytes()).collect()),
        };
        assert_eq!(json_text(&half(DataType::Fp16, [f16::from_f32(1.5).to_bits(), 0x7c00])), "[1.5,null]");
        assert_eq!(json_text(&half(DataType::Bf16, [bf16::from_f32(-2.0).to_bits(), 0])), "[-2.0,0.0]");
        let flags =
            Tensor { name: "b".into(), datatype: DataType::Bool, shape: vec![2], data: TensorData::Raw(vec![1, 0]) };
        assert_eq!(json_text(&flags), "[true,false]");
        let strings = Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![3],
            data: TensorData::Bytes(vec![b"say \"hi\"\n".to_vec(), vec![0xff, b'a'], Vec::new()]),
        };
        let text = json_text(&strings);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!(["say \"hi\"\n", "\u{fffd}a", ""]));
        assert!(text.len() <= strings.json_size_hint() + 8, "escapes are the only excess: {text}");
    }

    #[test]
    fn large_tensors_shared_with_helpers_match_one_thread() {
        let mut values: Vec<f32> = (0..50_001).map(|i| i as f32 * 0.001 - 3.0).collect();
        values[7] = f32::NAN;
        let tensor = fp32(&values);
        let alone = json_text(&tensor);
        let mut shared = Vec::new();
        tensor.write_json_data(&mut shared);
        assert_eq!(String::from_utf8(shared).unwrap(), alone);
        assert_eq!(serde_json::from_str::<Vec<Option<f32>>>(&alone).unwrap().len(), values.len());
        // However the parts fall between caller and helper, the text is the same.
        let TensorData::Raw(bytes) = &tensor.data else { unreachable!() };
        for helped in [0, 1, 50, 97, 98] {
            let mut text = b"[".to_vec();
            crate::helpers::write_with_helper_first(JsonParts::new(DataType::Fp32, bytes.clone()), helped, &mut text);
            text.push(b']');
            assert_eq!(String::from_utf8(text).unwrap(), alone, "{helped} parts written by the helper");
        }
        for values in [&[][..], &[0.5][..]] {
            let mut text = Vec::new();
            fp32(values).write_json_data(&mut text);
            assert_eq!(text, json_text(&fp32(values)).as_bytes());
        }
        assert_eq!(json_text(&fp32(&[])), "[]");
        assert_eq!(json_text(&fp32(&[0.5])), "[0.5]");
    }

    #[test]
    fn the_json_size_hint_bounds_the_longest_values() {
        let extremes: Vec<(DataType, Vec<u8>)> = vec![
            (DataType::Bool, vec![0, 0]),
            (DataType::Int8, [i8::MIN; 2].iter().flat_map(|v| v.to_le_bytes()).collect()),
            (DataType::Int16, [i16::MIN; 2].iter().flat_map(|v| v.to_le_bytes()).collect()),
            (DataType::Int32, [i32::MIN; 2].iter().flat_map(|v| v.to_le_bytes()).collect()),
            (DataType::Int64, [i64::MIN; 2].iter().flat_map(|v| v.to_le_bytes()).collect()),
            (DataType::Uint64, [u64::MAX; 2].iter().flat_map(|v| v.to_le_bytes()).collect()),
            (DataType::Fp32, [-7.291_167e-5_f32; 2].iter().flat_map(|v| v.to_le_bytes()).collect()),
            (DataType::Fp64, [-2.225_073_858_507_201_4e-308_f64; 2].iter().flat_map(|v| v.to_le_bytes()).collect()),
        ];
        for (datatype, bytes) in extremes {
            let tensor = Tensor { name: "x".into(), datatype, shape: vec![2], data: TensorData::Raw(bytes) };
            let text = json_text(&tensor);
            assert!(text.len() <= tensor.json_size_hint(), "{datatype}: {text} over {}", tensor.json_size_hint());
        }
    }

    #[test]
    fn integers_out_of_range_and_fractions_are_rejected_with_the_index() {
        assert_eq!(rejected(DataType::Uint8, json!([1, 256])).0, 1);
        assert!(rejected(DataType::Int8, json!([-129])).1.contains("out of range for INT8"));
        assert!(rejected(DataType::Int64, json!([1.5])).1.contains("expected an integer"));
        assert!(rejected(DataType::Fp32, json!(["1"])).1.contains("got a string"));
        assert!(rejected(DataType::Bool, json!([1])).1.contains("true or false"));
        assert!(rejected(DataType::Bytes, json!([1])).1.contains("expected a string"));
        assert_eq!(rejected(DataType::Fp32, json!([1, {"a": [2]}, 3])), (1, "expected a number, got an object".into()));
        assert_eq!(rejected(DataType::Int32, json!([0, null])), (1, "expected an integer, got null".into()));
    }

    #[test]
    fn nested_rows_and_a_lone_scalar_flatten_row_major() {
        let nested = json_to_data(DataType::Int32, 4, "[[1, 2], [[3]], [], [4]]").unwrap();
        assert_eq!(nested, convert(DataType::Int32, json!([1, 2, 3, 4])).unwrap());
        assert_eq!(json_to_data(DataType::Fp64, 1, "2.5").unwrap(), TensorData::Raw(2.5f64.to_le_bytes().to_vec()));
        assert_eq!(json_to_data(DataType::Bool, 0, "[[], []]").unwrap(), TensorData::Raw(Vec::new()));
    }

    #[test]
    fn a_wrong_count_is_reported_with_the_count_found_even_past_a_bad_element() {
        assert_eq!(json_to_data(DataType::Uint8, 2, "[1, 2, 3]"), Err(DataError::Count { found: 3 }));
        assert_eq!(json_to_data(DataType::Uint8, 4, r#"["x", [2, 3]]"#), Err(DataError::Count { found: 3 }));
        assert_eq!(json_to_data(DataType::Bytes, 1, "[]"), Err(DataError::Count { found: 0 }));
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(json_to_data(DataType::Uint8, 1, &deep), Err(DataError::Syntax(_))));
    }

    #[test]
    fn bytes_tensors_pack_with_length_prefixes() {
        let data = convert(DataType::Bytes, json!(["ab", ""])).unwrap();
        let tensor = Tensor { name: "s".into(), datatype: DataType::Bytes, shape: vec![2], data };
        let mut packed = Vec::new();
        tensor.append_binary(&mut packed);
        assert_eq!(packed, vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        assert_eq!(tensor.binary_size(), packed.len());
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
