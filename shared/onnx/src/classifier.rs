//! Classifier heads as ONNX: standardization, dense layers (ReLU between them), softmax. Either a
//! graph of its own over feature vectors, or appended to an embeddings model (pooling and L2
//! normalization written as graph ops) so one graph goes from token ids to class probabilities.
//!
//! Outputs: `probabilities` FLOAT `[batch, classes]` and `label` INT64 `[batch]` (the argmax; the
//! class names are in the model's metadata and the manifest).

use crate::graph::{self, f32_tensor, i64_tensor, int_attribute, node, GraphError};
use crate::proto::{
    data_type, DimValue, Dimension, GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto,
    TensorShapeProto, TensorTypeProto, TypeProto, TypeValue, ValueInfoProto,
};

/// A trained head: `x → (x - mean) / std → dense … → softmax`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierHead {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Each `(weight [inputs, outputs] row-major, bias [outputs])`; ReLU between layers.
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
    pub classes: Vec<String>,
}

impl ClassifierHead {
    pub fn inputs(&self) -> usize {
        self.mean.len()
    }
}

/// How the embeddings model turns token states into one vector (its `lmaas.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

const OPSET: i64 = 17;

/// A model of its own: input `features` FLOAT `[batch, inputs]`.
pub fn head_model(head: &ClassifierHead) -> ModelProto {
    let mut graph = GraphProto {
        name: Some("classifier".into()),
        input: vec![value_info("features", data_type::FLOAT, &[None, Some(head.inputs() as i64)])],
        ..Default::default()
    };
    append_head(&mut graph, head, "features");
    ModelProto {
        ir_version: Some(8),
        producer_name: Some("lmaas".into()),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        graph: Some(graph),
        metadata_props: class_metadata(head),
        ..Default::default()
    }
}

/// The embeddings model `base` with pooling, normalization and `head` appended: token ids in,
/// probabilities out. `states` is the base output holding token states (`[batch, tokens,
/// hidden]`) or pooled vectors (`[batch, hidden]`, then `pooling` is not applied).
pub fn attach_to_base(
    mut base: ModelProto,
    states: &str,
    token_states: bool,
    pooling: Pooling,
    normalize: bool,
    head: &ClassifierHead,
) -> Result<ModelProto, GraphError> {
    let opset = graph::standard_opset(&base);
    if opset < 13 {
        return Err(GraphError(format!("the base model uses opset {opset}; attaching a head needs 13 or later")));
    }
    let graph = base.graph.as_mut().expect("decode checked the graph");
    if !graph.output.iter().any(|o| o.name() == states) {
        return Err(GraphError(format!("the base model has no output '{states}'")));
    }
    let mut pooled = states.to_string();
    if token_states {
        pooled = match pooling {
            Pooling::Cls => {
                graph.initializer.push(i64_tensor("pool/first", &[], &[0]));
                graph.node.push(node(
                    "Gather",
                    "",
                    "pool/cls",
                    &[states, "pool/first"],
                    &["pool/cls"],
                    vec![int_attribute("axis", 1)],
                ));
                "pool/cls".into()
            }
            Pooling::Mean => {
                if !graph.input.iter().any(|i| i.name() == "attention_mask") {
                    return Err(GraphError("mean pooling needs the base model's 'attention_mask' input".into()));
                }
                graph.initializer.push(i64_tensor("pool/last_axis", &[1], &[-1]));
                graph.initializer.push(i64_tensor("pool/token_axis", &[1], &[1]));
                graph.initializer.push(f32_tensor("pool/min_count", &[], &[1e-9]));
                let cast = vec![int_attribute("to", data_type::FLOAT as i64)];
                graph.node.extend([
                    node("Cast", "", "pool/mask", &["attention_mask"], &["pool/mask"], cast),
                    node("Unsqueeze", "", "pool/mask3", &["pool/mask", "pool/last_axis"], &["pool/mask3"], vec![]),
                    node("Mul", "", "pool/masked", &[states, "pool/mask3"], &["pool/masked"], vec![]),
                    node("ReduceSum", "", "pool/sum", &["pool/masked", "pool/token_axis"], &["pool/sum"], keep(0)),
                    node("ReduceSum", "", "pool/count", &["pool/mask3", "pool/token_axis"], &["pool/count"], keep(0)),
                    node("Max", "", "pool/count_safe", &["pool/count", "pool/min_count"], &["pool/count_safe"], vec![]),
                    node("Div", "", "pool/mean", &["pool/sum", "pool/count_safe"], &["pool/mean"], vec![]),
                ]);
                "pool/mean".into()
            }
        };
    }
    if normalize {
        graph.initializer.push(i64_tensor("norm/axis", &[1], &[-1]));
        graph.initializer.push(f32_tensor("norm/eps", &[], &[1e-12]));
        graph.node.extend([
            node("Mul", "", "norm/squares", &[&pooled, &pooled], &["norm/squares"], vec![]),
            node("ReduceSum", "", "norm/sum", &["norm/squares", "norm/axis"], &["norm/sum"], keep(1)),
            node("Sqrt", "", "norm/length", &["norm/sum"], &["norm/length"], vec![]),
            node("Max", "", "norm/length_safe", &["norm/length", "norm/eps"], &["norm/length_safe"], vec![]),
            node("Div", "", "norm/unit", &[&pooled, "norm/length_safe"], &["norm/unit"], vec![]),
        ]);
        pooled = "norm/unit".into();
    }
    graph.output.clear();
    append_head(graph, head, &pooled);
    base.metadata_props.extend(class_metadata(head));
    Ok(base)
}

fn keep(dims: i64) -> Vec<crate::proto::AttributeProto> {
    vec![int_attribute("keepdims", dims)]
}

/// Standardize, dense layers, softmax and argmax after `input`; sets the graph's outputs.
fn append_head(graph: &mut GraphProto, head: &ClassifierHead, input: &str) {
    let inputs = head.inputs() as i64;
    graph.initializer.push(f32_tensor("head/mean", &[inputs], &head.mean));
    graph.initializer.push(f32_tensor("head/std", &[inputs], &head.std));
    graph.node.push(node("Sub", "", "head/centered", &[input, "head/mean"], &["head/centered"], vec![]));
    graph.node.push(node(
        "Div",
        "",
        "head/standardized",
        &["head/centered", "head/std"],
        &["head/standardized"],
        vec![],
    ));
    let mut x = "head/standardized".to_string();
    let mut width = inputs;
    for (i, (weight, bias)) in head.layers.iter().enumerate() {
        let outputs = bias.len() as i64;
        let (w, b, y) = (format!("head/dense{i}/weight"), format!("head/dense{i}/bias"), format!("head/dense{i}"));
        graph.initializer.push(f32_tensor(&w, &[width, outputs], weight));
        graph.initializer.push(f32_tensor(&b, &[outputs], bias));
        graph.node.push(node("Gemm", "", &y, &[&x, &w, &b], &[&y], vec![]));
        x = y;
        if i + 1 < head.layers.len() {
            let relu = format!("head/relu{i}");
            graph.node.push(node("Relu", "", &relu, &[&x], &[&relu], vec![]));
            x = relu;
        }
        width = outputs;
    }
    graph.node.push(node("Softmax", "", "probabilities", &[&x], &["probabilities"], vec![int_attribute("axis", -1)]));
    let argmax = vec![int_attribute("axis", -1), int_attribute("keepdims", 0)];
    graph.node.push(node("ArgMax", "", "label", &["probabilities"], &["label"], argmax));
    let classes = head.classes.len() as i64;
    graph.output = vec![
        value_info("probabilities", data_type::FLOAT, &[None, Some(classes)]),
        value_info("label", data_type::INT64, &[None]),
    ];
}

fn class_metadata(head: &ClassifierHead) -> Vec<StringStringEntryProto> {
    vec![StringStringEntryProto {
        key: Some("lmaas.classes".into()),
        value: Some(serde_json::to_string(&head.classes).expect("strings serialize")),
    }]
}

fn value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .enumerate()
        .map(|(i, d)| Dimension {
            value: Some(match d {
                Some(v) => DimValue::DimValue(*v),
                None => DimValue::DimParam(if i == 0 { "batch".into() } else { format!("d{i}") }),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(TensorTypeProto {
                elem_type: Some(elem_type),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}
