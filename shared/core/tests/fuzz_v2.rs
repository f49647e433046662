//! A deterministic mutation fuzzer over V2 request parsing (JSON and binary bodies): 200k mutated
//! requests must never panic, and every request that parses must hold data that fits its shape.

use lmaas_core::manifest::{FileEntry, Task};
use lmaas_core::v2::InferRequest;
use lmaas_core::{DataType, Limits, Manifest, ModelName, TensorData, TensorSpec, Version};

/// xorshift64*: reproducible without a dependency; the seed is printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn model() -> Manifest {
    let spec = |name: &str, datatype, shape: &[i64]| TensorSpec { name: name.into(), datatype, shape: shape.to_vec() };
    let files = [("model.onnx".to_string(), FileEntry { sha256: "0".repeat(64), size: 1 })].into();
    let inputs = vec![
        spec("x", DataType::Fp32, &[-1, 4]),
        spec("ids", DataType::Int64, &[-1, -1]),
        spec("s", DataType::Bytes, &[-1]),
        spec("b", DataType::Bool, &[2]),
        spec("h", DataType::Fp16, &[-1]),
    ];
    let outputs = vec![spec("y", DataType::Fp32, &[-1, 3])];
    Manifest::ready(ModelName::parse("fuzz").unwrap(), Version::new(1).unwrap(), Task::Tensor, files, inputs, outputs)
}

fn seeds() -> Vec<(Vec<u8>, Option<usize>)> {
    let json = br#"{"id":"r","inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]},{"name":"ids","datatype":"INT64","shape":[1,2],"data":[[5,6]]},{"name":"s","datatype":"BYTES","shape":[2],"data":["a","bc"]},{"name":"b","datatype":"BOOL","shape":[2],"data":[true,false]},{"name":"h","datatype":"FP16","shape":[1],"data":[0.5]}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#.to_vec();
    let header = br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"parameters":{"binary_data_size":16}},{"name":"ids","datatype":"INT64","shape":[1,1],"parameters":{"binary_data_size":8}},{"name":"s","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":7}},{"name":"b","datatype":"BOOL","shape":[2],"parameters":{"binary_data_size":2}},{"name":"h","datatype":"FP16","shape":[1],"parameters":{"binary_data_size":2}}],"parameters":{"binary_data_output":true}}"#;
    let mut binary = header.to_vec();
    binary.extend_from_slice(&[0u8; 16]);
    binary.extend_from_slice(&7i64.to_le_bytes());
    binary.extend_from_slice(&[3, 0, 0, 0, b'a', b'b', b'c']);
    binary.extend_from_slice(&[1, 0, 0, 0x38]);
    vec![(json, None), (binary, Some(header.len()))]
}

const TOKENS: &[&[u8]] = &[
    b"-1",
    b"0",
    b"9223372036854775807",
    b"18446744073709551616",
    b"1e309",
    b"-0",
    b"null",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b",",
    b":",
    b"\"BYTES\"",
    b"\"FP64\"",
    b"[[[[[[",
    b"\"\\u0000\"",
    b"true",
    b"4294967295",
    b"\xff\xfe",
];

fn mutate(rng: &mut Rng, body: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        if body.is_empty() {
            body.push(b'{');
        }
        let at = rng.below(body.len());
        match rng.below(6) {
            0 => body[at] = rng.next() as u8,
            1 => body.insert(at, rng.next() as u8),
            2 => {
                let end = (at + rng.below(16)).min(body.len());
                body.drain(at..end);
            }
            3 => body.truncate(at),
            4 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                let end = (at + rng.below(8)).min(body.len());
                body.splice(at..end, token.iter().copied());
            }
            _ => {
                let end = (at + rng.below(32)).min(body.len());
                let copy = body[at..end].to_vec();
                body.splice(at..at, copy);
            }
        }
    }
}

#[test]
fn mutated_v2_requests_never_panic_and_parsed_ones_are_consistent() {
    let model = model();
    let limits = Limits { max_tensor_elements: 1 << 16, ..Limits::default() };
    let seeds = seeds();
    let mut rng = Rng(0x5eed_1a4a_a5c0_ffee);
    let (mut parsed, mut rejected) = (0usize, 0usize);
    for case in 0..200_000 {
        let (seed, header) = &seeds[case % seeds.len()];
        let mut body = seed.clone();
        mutate(&mut rng, &mut body);
        let header = match (header, rng.below(4)) {
            (_, 0) => Some(rng.below(body.len() + 8).to_string()),
            (Some(h), _) => Some(h.to_string()),
            (None, _) => None,
        };
        match InferRequest::parse(&body, header.as_deref(), &model, &limits) {
            Err(_) => rejected += 1,
            Ok(request) => {
                parsed += 1;
                assert_eq!(request.inputs.len(), model.inputs.len(), "case {case}");
                for tensor in &request.inputs {
                    let count: usize = tensor.shape.iter().product();
                    match (&tensor.data, tensor.datatype.element_size()) {
                        (TensorData::Raw(bytes), Some(size)) => assert_eq!(bytes.len(), count * size, "case {case}"),
                        (TensorData::Bytes(items), None) => assert_eq!(items.len(), count, "case {case}"),
                        _ => panic!("case {case}: data kind does not match {}", tensor.datatype),
                    }
                }
            }
        }
    }
    // The mutations must exercise both outcomes, or the test proves little.
    assert!(parsed > 1_000 && rejected > 100_000, "parsed {parsed}, rejected {rejected}");
}
