//! The Open Inference Protocol (KServe V2) wire format: infer requests in JSON or with Triton's
//! binary tensor data extension, validated against the model's signature before ONNX Runtime
//! sees anything, and responses encoded the same two ways.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::names::printable;
use crate::tensor::{json_to_data, DataError};
use crate::{DataType, Error, Limits, Manifest, Tensor, TensorData, TensorSpec};

/// Header that splits a binary-extension body into its JSON part and the tensor bytes after it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A validated infer request: every model input exactly once, in the model's order, each with
/// data that matches its datatype and shape; outputs that exist.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<RequestedOutput>,
}

/// An output the client asked for, and whether it wants it as binary data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    pub binary: bool,
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    id: Option<Value>,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(borrow)]
    inputs: Vec<RawInput<'a>>,
    outputs: Option<Vec<RawOutput>>,
}

#[derive(Deserialize)]
struct RawInput<'a> {
    name: String,
    shape: Vec<Value>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    /// Kept as text until the datatype and shape are known, then read straight into the tensor.
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

impl InferRequest {
    /// Parses and validates a request body for `model`. `header_length` is the value of the
    /// `Inference-Header-Content-Length` header, if the request carried one.
    pub fn parse(body: &[u8], header_length: Option<&str>, model: &Manifest, limits: &Limits) -> Result<Self, Error> {
        if body.len() > limits.max_body_bytes {
            return Err(Error::PayloadTooLarge(format!(
                "request body is {} bytes; the limit is {} bytes",
                body.len(),
                limits.max_body_bytes
            )));
        }
        let (json_part, binary) = split_body(body, header_length)?;
        let raw: RawRequest = serde_json::from_slice(json_part)
            .map_err(|e| Error::bad_request(format!("request body is not a valid V2 infer request: {e}")))?;
        let id = match raw.id {
            None => None,
            Some(Value::String(id)) => Some(id),
            Some(_) => return Err(Error::bad_request("'id' must be a string")),
        };
        if raw.parameters.contains_key("classification") {
            return Err(Error::bad_request("parameters.classification is not supported"));
        }
        let binary_output_default = bool_parameter(&raw.parameters, "binary_data_output", "request")?;

        let mut binary = BinaryCursor { data: binary, at: 0 };
        let mut given: Vec<Option<Tensor>> = vec![None; model.inputs.len()];
        for input in raw.inputs {
            let position = model.inputs.iter().position(|s| s.name == input.name).ok_or_else(|| {
                Error::bad_request(format!(
                    "unknown input '{}': model '{}' takes {}",
                    printable(&input.name),
                    model.name,
                    names(&model.inputs)
                ))
            })?;
            if given[position].is_some() {
                return Err(Error::bad_request(format!("input '{}' is given more than once", input.name)));
            }
            given[position] = Some(parse_input(input, &model.inputs[position], &mut binary, limits)?);
        }
        if binary.at != binary.data.len() {
            return Err(Error::bad_request(format!(
                "{} bytes of binary data after the JSON header are not claimed by any input's binary_data_size",
                binary.data.len() - binary.at
            )));
        }
        let inputs = given
            .into_iter()
            .zip(&model.inputs)
            .map(|(tensor, spec)| {
                tensor.ok_or_else(|| {
                    Error::bad_request(format!(
                        "missing input '{}' ({} {}); model '{}' takes {}",
                        spec.name,
                        spec.datatype,
                        format_shape(&spec.shape),
                        model.name,
                        names(&model.inputs)
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = parse_outputs(raw.outputs, model, binary_output_default)?;
        Ok(InferRequest { id, inputs, outputs })
    }
}

fn split_body<'a>(body: &'a [u8], header_length: Option<&str>) -> Result<(&'a [u8], &'a [u8]), Error> {
    let Some(raw) = header_length else { return Ok((body, &[])) };
    let length: usize = raw.trim().parse().map_err(|_| {
        Error::bad_request(format!("Inference-Header-Content-Length '{}' is not a byte count", printable(raw)))
    })?;
    if length > body.len() {
        return Err(Error::bad_request(format!(
            "Inference-Header-Content-Length is {length} but the body has only {} bytes",
            body.len()
        )));
    }
    Ok(body.split_at(length))
}

struct BinaryCursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> BinaryCursor<'a> {
    fn take(&mut self, input: &str, size: usize) -> Result<&'a [u8], Error> {
        let left = self.data.len() - self.at;
        if size > left {
            return Err(Error::bad_request(format!(
                "input '{input}': binary_data_size is {size} but only {left} bytes of binary data are left"
            )));
        }
        let slice = &self.data[self.at..self.at + size];
        self.at += size;
        Ok(slice)
    }
}

fn parse_input(
    input: RawInput<'_>,
    spec: &TensorSpec,
    binary: &mut BinaryCursor,
    limits: &Limits,
) -> Result<Tensor, Error> {
    let name = &spec.name;
    let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
        Error::bad_request(format!("input '{name}': unknown datatype '{}'", printable(&input.datatype)))
    })?;
    if datatype != spec.datatype {
        return Err(Error::bad_request(format!("input '{name}': expected datatype {}, got {datatype}", spec.datatype)));
    }
    let shape = parse_shape(name, &input.shape, spec, limits)?;
    let count = element_count(name, &shape, limits)?;
    let data = match (input.parameters.get("binary_data_size"), input.data) {
        (Some(_), Some(_)) => {
            return Err(Error::bad_request(format!(
                "input '{name}': give either 'data' or parameters.binary_data_size, not both"
            )))
        }
        (Some(size), None) => {
            let size = size.as_u64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| {
                Error::bad_request(format!("input '{name}': parameters.binary_data_size must be a byte count"))
            })?;
            binary_data(name, datatype, count, binary.take(name, size)?)?
        }
        (None, Some(data)) => json_data(name, datatype, count, data)?,
        (None, None) => {
            return Err(Error::bad_request(format!(
                "input '{name}' has no 'data' (nor parameters.binary_data_size for binary data)"
            )))
        }
    };
    Ok(Tensor { name: name.clone(), datatype, shape, data })
}

fn parse_shape(name: &str, raw: &[Value], spec: &TensorSpec, limits: &Limits) -> Result<Vec<usize>, Error> {
    if raw.len() != spec.shape.len() || raw.len() > limits.max_rank {
        return Err(Error::bad_request(format!(
            "input '{name}': expected shape {} (rank {}), got rank {}",
            format_shape(&spec.shape),
            spec.shape.len(),
            raw.len()
        )));
    }
    raw.iter()
        .zip(&spec.shape)
        .enumerate()
        .map(|(axis, (dim, &expected))| {
            let dim = match dim.as_i64() {
                Some(d) if d > 0 => d,
                Some(0) => {
                    return Err(Error::bad_request(format!(
                        "input '{name}': dim {axis} is 0; empty tensors are not served"
                    )))
                }
                Some(d) => return Err(Error::bad_request(format!("input '{name}': dim {axis} is negative ({d})"))),
                None => {
                    return Err(Error::bad_request(format!(
                        "input '{name}': dim {axis} must be a positive integer, got {dim}"
                    )))
                }
            };
            if axis == 0 && expected < 0 && dim as u64 > limits.max_batch_size as u64 {
                return Err(Error::bad_request(format!(
                    "input '{name}': batch size {dim} is over this model's limit of {}",
                    limits.max_batch_size
                )));
            }
            if expected >= 0 && dim != expected {
                return Err(Error::bad_request(format!(
                    "input '{name}': dim {axis} must be {expected} (shape {}), got {dim}",
                    format_shape(&spec.shape)
                )));
            }
            usize::try_from(dim).map_err(|_| Error::bad_request(format!("input '{name}': dim {axis} is too large")))
        })
        .collect()
}

fn element_count(name: &str, shape: &[usize], limits: &Limits) -> Result<usize, Error> {
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match count {
        Some(count) if count <= limits.max_tensor_elements => Ok(count),
        _ => Err(Error::bad_request(format!(
            "input '{name}': shape {shape:?} has more than the {} elements allowed per tensor",
            limits.max_tensor_elements
        ))),
    }
}

fn binary_data(name: &str, datatype: DataType, count: usize, bytes: &[u8]) -> Result<TensorData, Error> {
    let Some(size) = datatype.element_size() else { return bytes_elements(name, count, bytes) };
    let expected = count * size; // cannot overflow: count is bounded by the limits
    if bytes.len() != expected {
        return Err(Error::bad_request(format!(
            "input '{name}': {count} elements of {datatype} need {expected} bytes, got {}",
            bytes.len()
        )));
    }
    if datatype == DataType::Bool && bytes.iter().any(|&b| b > 1) {
        return Err(Error::bad_request(format!("input '{name}': BOOL bytes must be 0 or 1")));
    }
    Ok(TensorData::Raw(bytes.to_vec()))
}

fn bytes_elements(name: &str, count: usize, mut bytes: &[u8]) -> Result<TensorData, Error> {
    let mut items = Vec::with_capacity(count.min(bytes.len() / 4));
    while !bytes.is_empty() {
        let truncated = || Error::bad_request(format!("input '{name}': BYTES element {} is truncated", items.len()));
        let (prefix, rest) = bytes.split_first_chunk::<4>().ok_or_else(truncated)?;
        let length = u32::from_le_bytes(*prefix) as usize;
        if length > rest.len() {
            return Err(truncated());
        }
        items.push(rest[..length].to_vec());
        bytes = &rest[length..];
    }
    if items.len() != count {
        return Err(Error::bad_request(format!(
            "input '{name}': shape needs {count} BYTES elements, binary data holds {}",
            items.len()
        )));
    }
    Ok(TensorData::Bytes(items))
}

fn json_data(name: &str, datatype: DataType, count: usize, data: &RawValue) -> Result<TensorData, Error> {
    json_to_data(datatype, count, data.get()).map_err(|e| {
        Error::bad_request(match e {
            DataError::Count { found } => format!("input '{name}': shape needs {count} elements, 'data' has {found}"),
            DataError::Element { index, reason } => format!("input '{name}': data[{index}]: {reason}"),
            DataError::Syntax(e) => format!("input '{name}': 'data' could not be read: {e}"),
        })
    })
}

fn parse_outputs(
    raw: Option<Vec<RawOutput>>,
    model: &Manifest,
    binary_default: Option<bool>,
) -> Result<Vec<RequestedOutput>, Error> {
    let binary_default = binary_default.unwrap_or(false);
    let Some(raw) = raw else {
        return Ok(model
            .outputs
            .iter()
            .map(|o| RequestedOutput { name: o.name.clone(), binary: binary_default })
            .collect());
    };
    let mut outputs: Vec<RequestedOutput> = Vec::with_capacity(raw.len());
    for output in raw {
        if model.output(&output.name).is_none() {
            return Err(Error::bad_request(format!(
                "unknown output '{}': model '{}' has {}",
                printable(&output.name),
                model.name,
                names(&model.outputs)
            )));
        }
        if outputs.iter().any(|o| o.name == output.name) {
            return Err(Error::bad_request(format!("output '{}' is requested more than once", output.name)));
        }
        let label = format!("output '{}'", output.name);
        let binary = bool_parameter(&output.parameters, "binary_data", &label)?.unwrap_or(binary_default);
        outputs.push(RequestedOutput { name: output.name, binary });
    }
    Ok(outputs)
}

fn bool_parameter(parameters: &Map<String, Value>, key: &str, owner: &str) -> Result<Option<bool>, Error> {
    match parameters.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Error::bad_request(format!("{owner}: parameters.{key} must be true or false"))),
    }
}

fn names(specs: &[TensorSpec]) -> String {
    let quoted: Vec<String> = specs.iter().map(|s| format!("'{}'", s.name)).collect();
    quoted.join(", ")
}

/// Shapes as users read them, with `-1` for dynamic dimensions.
pub fn format_shape(shape: &[i64]) -> String {
    format!("{shape:?}")
}

/// An encoded infer response: the body, and the JSON header's length when binary data follows.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub header_length: Option<usize>,
}

/// Encodes outputs (in the order requested) as a V2 response; outputs flagged binary go after
/// the JSON header, as Triton's binary tensor data extension describes. The body is allocated
/// once and written straight from the tensors (their data is copied once, not cloned per
/// output and again into the body).
pub fn encode_response(
    model: &Manifest,
    id: Option<&str>,
    parameters: Map<String, Value>,
    outputs: &[(Tensor, bool)],
) -> EncodedResponse {
    let size_hint: usize = outputs
        .iter()
        .map(|(tensor, binary)| {
            128 + tensor.name.len() + if *binary { tensor.binary_size() } else { tensor.json_size_hint() }
        })
        .sum();
    let mut body = Vec::with_capacity(256 + size_hint);
    body.extend_from_slice(b"{\"model_name\":");
    write_json(&mut body, model.name.as_str());
    body.extend_from_slice(b",\"model_version\":\"");
    body.extend_from_slice(itoa::Buffer::new().format(model.version.get()).as_bytes());
    body.push(b'"');
    if let Some(id) = id {
        body.extend_from_slice(b",\"id\":");
        write_json(&mut body, id);
    }
    if !parameters.is_empty() {
        body.extend_from_slice(b",\"parameters\":");
        write_json(&mut body, &parameters);
    }
    body.extend_from_slice(b",\"outputs\":[");
    for (i, (tensor, binary)) in outputs.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        write_output(&mut body, tensor, binary.then(|| tensor.binary_size()));
    }
    body.extend_from_slice(b"]}");
    if !outputs.iter().any(|(_, binary)| *binary) {
        return EncodedResponse { body, header_length: None };
    }
    let header_length = body.len();
    for (tensor, _) in outputs.iter().filter(|(_, binary)| *binary) {
        tensor.append_binary(&mut body);
    }
    EncodedResponse { body, header_length: Some(header_length) }
}

/// Appends one output object: name, datatype and shape, then `parameters.binary_data_size` when
/// its data follows the JSON header, else the data itself. Batch jobs write their result lines
/// with it too.
pub fn write_output(out: &mut Vec<u8>, tensor: &Tensor, binary_data_size: Option<usize>) {
    out.extend_from_slice(b"{\"name\":");
    write_json(out, &tensor.name);
    out.extend_from_slice(b",\"datatype\":");
    write_json(out, &tensor.datatype);
    out.extend_from_slice(b",\"shape\":");
    write_json(out, &tensor.shape);
    match binary_data_size {
        Some(size) => {
            out.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            out.extend_from_slice(itoa::Buffer::new().format(size).as_bytes());
            out.push(b'}');
        }
        None => {
            out.extend_from_slice(b",\"data\":");
            tensor.write_json_data(out);
        }
    }
    out.push(b'}');
}

/// Appends a value's JSON (names, ids, shapes: escaping is serde_json's).
fn write_json(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    serde_json::to_writer(out, value).expect("strings, shapes and JSON maps always serialize");
}

/// The V2 model metadata document, with `-1` for dynamic dimensions.
pub fn model_metadata(model: &Manifest, parameters: Map<String, Value>) -> Value {
    json!({
        "name": model.name,
        "versions": [model.version.to_string()],
        "platform": model.platform,
        "inputs": model.inputs,
        "outputs": model.outputs,
        "parameters": parameters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolver::tests::manifest;
    use crate::ModelState;

    fn mlp() -> Manifest {
        manifest("mlp", 1, ModelState::Ready)
    }

    fn parse(body: Value) -> Result<InferRequest, Error> {
        InferRequest::parse(&serde_json::to_vec(&body).unwrap(), None, &mlp(), &Limits::default())
    }

    fn bad(body: Value) -> String {
        match parse(body) {
            Err(Error::BadRequest(message)) => message,
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    fn input(shape: Value, data: Value) -> Value {
        json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": data}]})
    }

    #[test]
    fn a_json_request_parses_into_packed_little_endian_data() {
        let request = parse(json!({"id": "r1", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2, 3, 4.5]]}]})).unwrap();
        assert_eq!(request.id.as_deref(), Some("r1"));
        let expected: Vec<u8> = [1f32, 2., 3., 4.5].iter().flat_map(|f| f.to_le_bytes()).collect();
        assert_eq!(request.inputs[0].data, TensorData::Raw(expected));
        assert_eq!(request.outputs, vec![RequestedOutput { name: "output".into(), binary: false }]);
    }

    #[test]
    fn shape_and_data_length_mismatches_name_the_input_and_both_counts() {
        let message = bad(input(json!([2, 4]), json!([1, 2, 3, 4])));
        assert!(
            message.contains("input 'input'") && message.contains("needs 8") && message.contains("has 4"),
            "{message}"
        );
    }

    #[test]
    fn wrong_datatype_rank_and_fixed_dims_are_rejected() {
        let message =
            bad(json!({"inputs": [{"name": "input", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 4]}]}));
        assert!(message.contains("expected datatype FP32, got INT64"), "{message}");
        assert!(bad(input(json!([4]), json!([1, 2, 3, 4]))).contains("rank 1"));
        assert!(bad(input(json!([1, 5]), json!([1, 2, 3, 4, 5]))).contains("dim 1 must be 4"));
        assert!(bad(json!({"inputs": [{"name": "input", "datatype": "FP99", "shape": [1, 4], "data": []}]}))
            .contains("unknown datatype 'FP99'"));
    }

    #[test]
    fn negative_zero_fractional_and_huge_dims_are_rejected_without_overflow() {
        assert!(bad(input(json!([-1, 4]), json!([]))).contains("negative"));
        assert!(bad(input(json!([0, 4]), json!([]))).contains("is 0"));
        assert!(bad(input(json!([1.5, 4]), json!([]))).contains("positive integer"));
        assert!(bad(input(json!([i64::MAX, 4]), json!([]))).contains("over this model's limit"));
        assert!(bad(input(json!([257, 4]), json!([]))).contains("batch size 257"));
        assert!(bad(input(json!([u64::MAX, 4]), json!([]))).contains("positive integer"));
    }

    #[test]
    fn missing_extra_and_duplicate_inputs_are_rejected() {
        assert!(bad(json!({"inputs": []})).contains("missing input 'input'"));
        let extra = json!({"inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
            {"name": "bogus", "datatype": "FP32", "shape": [1], "data": [1]}]});
        assert!(bad(extra).contains("unknown input 'bogus'"));
        let twice = json!({"inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
            {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]});
        assert!(bad(twice).contains("more than once"));
    }

    #[test]
    fn unknown_outputs_and_malformed_json_are_rejected() {
        let mut body = input(json!([1, 4]), json!([1, 2, 3, 4]));
        body["outputs"] = json!([{"name": "nope"}]);
        assert!(bad(body).contains("unknown output 'nope'"));
        let err = InferRequest::parse(b"{\"inputs\": [", None, &mlp(), &Limits::default()).unwrap_err();
        assert!(matches!(err, Error::BadRequest(ref m) if m.contains("not a valid V2 infer request")));
    }

    #[test]
    fn binary_inputs_are_sliced_by_their_declared_sizes() {
        let header = br#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"parameters":{"binary_data_size":16}}],"outputs":[{"name":"output","parameters":{"binary_data":true}}]}"#;
        let mut body = header.to_vec();
        let data: Vec<u8> = [1f32, 2., 3., 4.].iter().flat_map(|f| f.to_le_bytes()).collect();
        body.extend_from_slice(&data);
        let length = header.len().to_string();
        let request = InferRequest::parse(&body, Some(&length), &mlp(), &Limits::default()).unwrap();
        assert_eq!(request.inputs[0].data, TensorData::Raw(data));
        assert!(request.outputs[0].binary);
    }

    #[test]
    fn binary_lengths_that_lie_are_rejected() {
        let header =
            br#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"parameters":{"binary_data_size":16}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[0u8; 12]);
        let parse = |body: &[u8], length: &str| InferRequest::parse(body, Some(length), &mlp(), &Limits::default());
        let short = parse(&body, &header.len().to_string()).unwrap_err();
        assert!(short.to_string().contains("only 12 bytes"), "{short}");
        let too_long = parse(&body, "100000").unwrap_err();
        assert!(too_long.to_string().contains("has only"), "{too_long}");
        body.extend_from_slice(&[0u8; 8]);
        let extra = parse(&body, &header.len().to_string()).unwrap_err();
        assert!(extra.to_string().contains("not claimed"), "{extra}");
        assert!(parse(&body, "abc").unwrap_err().to_string().contains("not a byte count"));
    }

    #[test]
    fn a_body_over_the_limit_is_too_large() {
        let limits = Limits { max_body_bytes: 10, ..Limits::default() };
        let err = InferRequest::parse(&[b' '; 11], None, &mlp(), &limits).unwrap_err();
        assert!(matches!(err, Error::PayloadTooLarge(_)));
    }

    #[test]
    fn a_response_keeps_the_requested_order_and_escapes_what_clients_sent() {
        let tensor = |name: &str, values: &[f32]| Tensor {
            name: name.into(),
            datatype: DataType::Fp32,
            shape: vec![1, values.len()],
            data: TensorData::Raw(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        };
        let mut parameters = Map::new();
        parameters.insert("execution_provider".into(), json!("cpu"));
        let outputs =
            [(tensor("b", &[1.0, 2.0]), true), (tensor("a", &[0.25, -3.5]), false), (tensor("c", &[7.0]), true)];
        let encoded = encode_response(&mlp(), Some("say \"hi\"\\"), parameters, &outputs);
        let length = encoded.header_length.unwrap();
        let header: Value = serde_json::from_slice(&encoded.body[..length]).unwrap();
        assert_eq!(
            header,
            json!({
                "model_name": "mlp",
                "model_version": "1",
                "id": "say \"hi\"\\",
                "parameters": {"execution_provider": "cpu"},
                "outputs": [
                    {"name": "b", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
                    {"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [0.25, -3.5]},
                    {"name": "c", "datatype": "FP32", "shape": [1, 1], "parameters": {"binary_data_size": 4}},
                ]
            })
        );
        let tail: Vec<u8> = [1.0f32, 2.0, 7.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(&encoded.body[length..], &tail[..]);
    }

    #[test]
    fn responses_put_binary_outputs_after_the_json_header() {
        let tensor = Tensor {
            name: "output".into(),
            datatype: DataType::Fp32,
            shape: vec![1],
            data: TensorData::Raw(1f32.to_le_bytes().to_vec()),
        };
        let json_only = encode_response(&mlp(), Some("r1"), Map::new(), &[(tensor.clone(), false)]);
        assert_eq!(json_only.header_length, None);
        let v: Value = serde_json::from_slice(&json_only.body).unwrap();
        assert_eq!(v["outputs"][0]["data"], json!([1.0]));
        assert_eq!(v["id"], "r1");
        assert_eq!(v["model_version"], "1");
        let binary = encode_response(&mlp(), None, Map::new(), &[(tensor, true)]);
        let length = binary.header_length.unwrap();
        assert_eq!(&binary.body[length..], &1f32.to_le_bytes());
        let v: Value = serde_json::from_slice(&binary.body[..length]).unwrap();
        assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 4);
    }
}
