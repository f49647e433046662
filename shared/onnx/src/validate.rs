//! Checks on an uploaded model file: it parses as ONNX, uses only allowed operator domains at
//! supported opsets, and keeps any external data inside its own version folder.

use std::collections::BTreeSet;

use prost::bytes::Bytes;
use prost::Message;

use crate::proto::{GraphProto, ModelProto, NodeProto, TensorProto};

/// Operator domains ONNX Runtime's CPU build implements; anything else would need a custom-op
/// library, which is never loaded for user models.
pub const ALLOWED_DOMAINS: [&str; 4] = ["", "ai.onnx", "ai.onnx.ml", "com.microsoft"];

/// Bounds the checks enforce. The IR and opset bounds are sanity bounds that catch garbage early
/// with a clear message; creating an ONNX Runtime session at commit is the precise judge.
#[derive(Debug, Clone, Copy)]
pub struct ValidationLimits {
    pub max_ir_version: i64,
    pub max_opset: i64,
    /// Largest model file accepted, in bytes.
    pub max_model_bytes: u64,
}

impl Default for ValidationLimits {
    fn default() -> Self {
        ValidationLimits { max_ir_version: 13, max_opset: 30, max_model_bytes: 4 << 30 }
    }
}

/// One thing wrong with a model, worded for the user who uploaded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub message: String,
}

/// Validates `model_onnx` (the bytes of `model.onnx`); `files` are the version's other files,
/// the only places external data may point to. Returns every problem found, not just the first.
pub fn validate(model_onnx: Bytes, files: &BTreeSet<String>, limits: &ValidationLimits) -> Vec<Problem> {
    let problem = |message: String| Problem { file: "model.onnx".into(), message };
    if model_onnx.len() as u64 > limits.max_model_bytes {
        return vec![problem(format!("is {} bytes; the limit is {}", model_onnx.len(), limits.max_model_bytes))];
    }
    let model = match ModelProto::decode(model_onnx) {
        Ok(model) => model,
        Err(e) => return vec![problem(format!("is not an ONNX model (protobuf: {e})"))],
    };
    let mut problems = Vec::new();
    let Some(graph) = &model.graph else {
        return vec![problem("is not an ONNX model (it has no graph)".into())];
    };
    if model.ir_version() <= 0 || model.ir_version() > limits.max_ir_version {
        problems.push(problem(format!(
            "IR version {} is not supported (1 to {})",
            model.ir_version(),
            limits.max_ir_version
        )));
    }
    for opset in &model.opset_import {
        let domain = opset.domain();
        if !ALLOWED_DOMAINS.contains(&domain) {
            problems.push(problem(format!("imports operator domain '{domain}', which is not allowed")));
        } else if (domain.is_empty() || domain == "ai.onnx") && opset.version() > limits.max_opset {
            problems.push(problem(format!(
                "needs opset {}; the runtime supports up to {}",
                opset.version(),
                limits.max_opset
            )));
        }
    }
    let local_functions: BTreeSet<(&str, &str)> = model.functions.iter().map(|f| (f.domain(), f.name())).collect();
    let mut domains = BTreeSet::new();
    let mut external = Vec::new();
    walk_graph(graph, &mut domains, &mut external);
    for function in &model.functions {
        walk_nodes(&function.node, &mut domains, &mut external);
    }
    for (domain, op) in domains {
        if !ALLOWED_DOMAINS.contains(&domain.as_str()) && !local_functions.contains(&(domain.as_str(), op.as_str())) {
            problems.push(problem(format!("node '{op}' uses operator domain '{domain}', which is not allowed")));
        }
    }
    for (tensor, location) in external {
        if let Some(reason) = bad_location(&location, files) {
            problems.push(problem(format!("tensor '{tensor}' keeps its data at '{location}': {reason}")));
        }
    }
    problems
}

fn walk_graph(graph: &GraphProto, domains: &mut BTreeSet<(String, String)>, external: &mut Vec<(String, String)>) {
    walk_nodes(&graph.node, domains, external);
    for tensor in &graph.initializer {
        note_external(tensor, external);
    }
    for sparse in &graph.sparse_initializer {
        for tensor in sparse.values.iter().chain(&sparse.indices) {
            note_external(tensor, external);
        }
    }
}

fn walk_nodes(nodes: &[NodeProto], domains: &mut BTreeSet<(String, String)>, external: &mut Vec<(String, String)>) {
    for node in nodes {
        domains.insert((node.domain().to_string(), node.op_type().to_string()));
        for attribute in &node.attribute {
            for tensor in attribute.t.iter().chain(&attribute.tensors) {
                note_external(tensor, external);
            }
            // Control flow (If, Loop, Scan) nests whole graphs: check them too.
            for graph in attribute.g.iter().chain(&attribute.graphs) {
                walk_graph(graph, domains, external);
            }
        }
    }
}

fn note_external(tensor: &TensorProto, external: &mut Vec<(String, String)>) {
    if tensor.data_location() == 1 {
        let location =
            tensor.external_data.iter().find(|e| e.key() == "location").map(|e| e.value()).unwrap_or_default();
        external.push((tensor.name().to_string(), location.to_string()));
    }
}

/// Why an external-data location is not acceptable, if it is not: it must name another file of
/// the same version, plainly (no folders, no `..`, not absolute).
fn bad_location(location: &str, files: &BTreeSet<String>) -> Option<&'static str> {
    if location.is_empty() {
        return Some("no location is given");
    }
    if location.starts_with('/') || location.starts_with('\\') || location.contains(':') {
        return Some("absolute paths are not allowed");
    }
    if location.split(['/', '\\']).any(|part| part == "..") {
        return Some("'..' is not allowed");
    }
    if location.contains(['/', '\\']) {
        return Some("external data must sit beside model.onnx, not in a folder");
    }
    if !files.contains(location) {
        return Some("that file is not part of this version");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{AttributeProto, OperatorSetIdProto, StringStringEntryProto};

    fn model(nodes: Vec<NodeProto>, initializers: Vec<TensorProto>, opsets: &[(&str, i64)]) -> Bytes {
        ModelProto {
            ir_version: Some(9),
            opset_import: opsets
                .iter()
                .map(|(d, v)| OperatorSetIdProto { domain: Some(d.to_string()), version: Some(*v) })
                .collect(),
            graph: Some(GraphProto { node: nodes, initializer: initializers, ..Default::default() }),
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    }

    fn node(op: &str, domain: &str) -> NodeProto {
        NodeProto { op_type: Some(op.into()), domain: Some(domain.into()), ..Default::default() }
    }

    fn external(name: &str, location: &str) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            data_location: Some(1),
            external_data: vec![StringStringEntryProto { key: Some("location".into()), value: Some(location.into()) }],
            ..Default::default()
        }
    }

    fn check(bytes: &[u8], files: &[&str]) -> Vec<String> {
        let files = files.iter().map(|f| f.to_string()).collect();
        validate(Bytes::copy_from_slice(bytes), &files, &ValidationLimits::default())
            .into_iter()
            .map(|p| p.message)
            .collect()
    }

    #[test]
    fn a_plain_model_passes() {
        let bytes = model(
            vec![node("Relu", ""), node("MatMulNBits", "com.microsoft")],
            vec![],
            &[("", 17), ("com.microsoft", 1)],
        );
        assert!(check(&bytes, &[]).is_empty());
    }

    #[test]
    fn garbage_is_not_an_onnx_model() {
        assert!(check(b"\xff\xff\xff not protobuf", &[])[0].contains("is not an ONNX model"));
        assert!(check(b"", &[])[0].contains("no graph"));
    }

    #[test]
    fn custom_op_domains_are_rejected_even_inside_subgraphs() {
        let nested = NodeProto {
            op_type: Some("If".into()),
            attribute: vec![AttributeProto {
                g: Some(GraphProto { node: vec![node("Evil", "com.attacker")], ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let problems = check(&model(vec![nested], vec![], &[("", 17), ("com.attacker", 1)]), &[]);
        assert!(problems.iter().any(|p| p.contains("imports operator domain 'com.attacker'")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("node 'Evil' uses operator domain 'com.attacker'")), "{problems:?}");
    }

    #[test]
    fn external_data_must_stay_inside_the_version() {
        let tensors = vec![
            external("a", "../../other-tenant/model.onnx"),
            external("b", "/etc/passwd"),
            external("c", "weights/w.bin"),
            external("d", "missing.bin"),
            external("e", "weights.bin"),
        ];
        let problems = check(&model(vec![], tensors, &[("", 17)]), &["weights.bin"]);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("'..'") && problems[1].contains("absolute") && problems[2].contains("folder"));
        assert!(problems[3].contains("not part of this version"));
    }

    #[test]
    fn unsupported_ir_and_opset_versions_are_named() {
        let mut m = ModelProto::decode(model(vec![], vec![], &[("", 99)])).unwrap();
        m.ir_version = Some(42);
        let problems = check(&m.encode_to_vec(), &[]);
        assert!(
            problems.iter().any(|p| p.contains("IR version 42")) && problems.iter().any(|p| p.contains("opset 99"))
        );
    }
}
