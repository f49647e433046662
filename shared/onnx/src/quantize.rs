//! Weight quantization as a graph rewrite, for ONNX Runtime's integer kernels:
//!
//! - **int8 dynamic**: `MatMul`/`Gemm` with a constant weight become com.microsoft
//!   `MatMulIntegerToFloat` after one `DynamicQuantizeLinear` per activation (quantized per run,
//!   shared by every MatMul reading it), weights int8 with one scale per output column (stored
//!   as uint8 around zero point 128, see `insert_int8_weight`), the following bias `Add` folded
//!   in. Large `Gather` tables (embeddings) are stored int8 with one scale per row and
//!   dequantized after the gather, so only the gathered rows are ever turned back into floats.
//! - **int4 weight-only**: `MatMul`/`Gemm` become com.microsoft `MatMulNBits` (blocks of 32, 64 or
//!   128 along K, symmetric or with zero points); Gather tables become `GatherBlockQuantized`.
//!
//! Scales are chosen per channel or block by searching the clipping range that minimizes squared
//! error, not just max-abs: outliers otherwise waste most of the grid. Nodes named in
//! `keep_float` stay as they are (the engine picks them by measured sensitivity).
//!
//! Optionally, for int8, calibrated activation ranges move activation outliers into the weights
//! (SmoothQuant, see `smooth`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::graph::{self, f32_tensor, floats, i8_tensor, int_attribute, int_of, node, u8_tensor, GraphError};
use crate::proto::{data_type, GraphProto, ModelProto, NodeProto, TensorProto};

const MICROSOFT: &str = "com.microsoft";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Int8,
    Int4 { block_size: usize, symmetric: bool },
}

impl Scheme {
    /// The registry tag for a version quantized with this scheme.
    pub fn tag(self) -> &'static str {
        match self {
            Scheme::Int8 => "int8",
            Scheme::Int4 { .. } => "int4",
        }
    }

    pub fn parse(scheme: &str, block_size: Option<usize>, symmetric: Option<bool>) -> Result<Self, String> {
        match scheme {
            "int8" if block_size.is_none() => Ok(Scheme::Int8),
            "int8" => Err("block_size applies to int4 only".into()),
            "int4" => {
                let block_size = block_size.unwrap_or(32);
                if ![32, 64, 128].contains(&block_size) {
                    return Err(format!("block_size must be 32, 64 or 128, not {block_size}"));
                }
                // Zero points cost 1/64 of a bit per weight and buy a lot of accuracy (README).
                Ok(Scheme::Int4 { block_size, symmetric: symmetric.unwrap_or(false) })
            }
            other => Err(format!("scheme must be int8 or int4, not '{other}'")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub scheme: Scheme,
    /// Names of nodes to leave in float.
    pub keep_float: BTreeSet<String>,
    /// Weights with fewer elements stay float: the integer kernels would cost more than they save.
    pub min_elements: usize,
    /// Per-channel statistics of each MatMul's activation input (by tensor name), measured on a
    /// calibration set; needed by `smoothing` and `outlier_channels` (int8).
    pub activation_stats: HashMap<String, ChannelStats>,
    /// SmoothQuant's migration strength in (0, 1]: how much of each activation channel's range
    /// moves onto the weights.
    pub smoothing: Option<f32>,
    /// The activation channels with the largest ranges (this many per activation) bypass int8:
    /// a small float MatMul computes their share exactly.
    pub outlier_channels: usize,
    /// ...but only where that narrows the activation's int8 range at least this many times.
    pub outlier_min_narrowing: f32,
}

impl QuantizeOptions {
    pub fn new(scheme: Scheme) -> Self {
        QuantizeOptions {
            scheme,
            keep_float: BTreeSet::new(),
            min_elements: 16 * 1024,
            activation_stats: HashMap::new(),
            smoothing: None,
            outlier_channels: 0,
            outlier_min_narrowing: 2.0,
        }
    }
}

/// Per input channel: the largest |x| and the mean of x² over the calibration tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelStats {
    pub absmax: Vec<f32>,
    pub mean_square: Vec<f32>,
}

/// A node the quantizer can rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: String,
    pub op: String,
    /// The node's activation input (what calibration measures for smoothing).
    pub activation: String,
    pub weight: String,
    pub elements: usize,
}

#[derive(Debug, Clone)]
pub struct Quantized {
    pub model: ModelProto,
    /// Nodes rewritten to integer kernels.
    pub quantized: Vec<String>,
    /// Candidates left in float because `keep_float` named them.
    pub kept_float: Vec<String>,
    /// Activations rescaled (SmoothQuant) or split (outlier channels), with what was done.
    pub conditioned: Vec<String>,
}

/// The nodes `quantize` would rewrite: MatMul/Gemm with a constant 2-D float weight and Gather on
/// a constant 2-D float table, each with at least `min_elements` weights.
pub fn candidates(model: &ModelProto, min_elements: usize) -> Vec<Candidate> {
    let inits = graph::initializers(model);
    let graph = model.graph.as_ref().expect("decode checked the graph");
    let float_2d = |name: &str| {
        inits.get(name).filter(|t| t.data_type() == data_type::FLOAT && t.dims.len() == 2 && t.data_location() != 1)
    };
    let mut found = Vec::new();
    for (index, n) in graph.node.iter().enumerate() {
        let (activation, weight) = match (n.op_type(), n.domain()) {
            ("MatMul", "") if n.input.len() == 2 => (&n.input[0], &n.input[1]),
            ("Gemm", "") if n.input.len() >= 2 && gemm_is_plain(n) => (&n.input[0], &n.input[1]),
            ("Gather", "") if n.input.len() == 2 && int_of(n, "axis", 0) == 0 => (&n.input[1], &n.input[0]),
            _ => continue,
        };
        let Some(w) = float_2d(weight) else { continue };
        let elements = (w.dims[0] * w.dims[1]) as usize;
        if elements < min_elements {
            continue;
        }
        found.push(Candidate {
            node: node_name(n, index),
            op: n.op_type().to_string(),
            activation: activation.clone(),
            weight: weight.clone(),
            elements,
        });
    }
    found
}

/// Rewrites `model` as `options` say. The input model is not changed.
pub fn quantize(model: &ModelProto, options: &QuantizeOptions) -> Result<Quantized, GraphError> {
    let candidates = candidates(model, options.min_elements);
    if candidates.is_empty() {
        return Err(GraphError(format!(
            "nothing to quantize: no MatMul, Gemm or Gather has a constant float weight of at least {} elements",
            options.min_elements
        )));
    }
    // Rotary cos/sin caches stay exact: they are small, and an int8 angle table would turn every
    // query and key slightly at every position for no real saving.
    let rotary_caches: BTreeSet<&str> = model
        .graph
        .iter()
        .flat_map(|g| &g.node)
        .filter(|n| ROTARY_OPS.contains(&n.op_type()))
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let source_tables: BTreeSet<String> = graph::initializers(model)
        .into_keys()
        .filter(|name| !rotary_caches.contains(name))
        .map(str::to_string)
        .collect();
    let mut model = model.clone();
    // Name every node first: rewrites below insert nodes, and stand-in names depend on position.
    let graph = model.graph.as_mut().expect("decode checked the graph");
    for (index, n) in graph.node.iter_mut().enumerate() {
        if n.name().is_empty() {
            n.name = Some(node_name(n, index));
        }
    }
    let mut conditioned = Vec::new();
    let mut outlier_parts = HashMap::new();
    let conditioning = options.smoothing.is_some() || options.outlier_channels > 0;
    if options.scheme == Scheme::Int8 && !options.activation_stats.is_empty() && conditioning {
        (conditioned, outlier_parts) = condition_activations(&mut model, &candidates, options)?;
    }
    let model_opsets = ModelProto { opset_import: model.opset_import.clone(), ..Default::default() };
    let graph = model.graph.as_mut().expect("decode checked the graph");
    let mut inits: HashMap<String, TensorProto> =
        std::mem::take(&mut graph.initializer).into_iter().map(|t| (t.name().to_string(), t)).collect();
    let graph_outputs: BTreeSet<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    let consumers = consumers(graph);
    let by_name: BTreeMap<&str, &Candidate> = candidates.iter().map(|c| (c.node.as_str(), c)).collect();

    let old_nodes = std::mem::take(&mut graph.node);
    let mut removed_bias_adds = BTreeSet::new();
    let mut gathered_activations = BTreeSet::new();
    let mut quantized_activations = BTreeSet::new();
    let mut new_nodes = Vec::with_capacity(old_nodes.len());
    let (mut quantized, mut kept_float) = (Vec::new(), Vec::new());
    // int8 MatMuls that read the same activation (Q, K, V) run as one wider MatMul whose output
    // is split: one kernel, one outlier MatMul and one Add instead of three of each.
    let mut fused_groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    if options.scheme == Scheme::Int8 {
        for (index, n) in old_nodes.iter().enumerate() {
            let name = node_name(n, index);
            let fusable = n.op_type() == "MatMul"
                && by_name.contains_key(name.as_str())
                && !options.keep_float.contains(&name)
                && !graph_outputs.contains(&n.output[0]);
            if fusable {
                fused_groups.entry(n.input[0].clone()).or_default().push(index);
            }
        }
        fused_groups.retain(|_, members| members.len() > 1);
    }
    let first_of_group: BTreeMap<usize, String> =
        fused_groups.iter().map(|(activation, members)| (members[0], activation.clone())).collect();
    let in_group: BTreeSet<usize> = fused_groups.values().flatten().copied().collect();
    let opset = graph::standard_opset(&model_opsets);
    for (index, n) in old_nodes.iter().enumerate() {
        let name = node_name(n, index);
        if removed_bias_adds.contains(&index) {
            continue;
        }
        if let Some(activation) = first_of_group.get(&index) {
            let members = &fused_groups[activation];
            let mut parts = Vec::new();
            for &member in members {
                let m = &old_nodes[member];
                let member_name = node_name(m, member);
                let candidate = by_name[member_name.as_str()];
                let weight = inits.get(&candidate.weight).expect("candidates are initializers");
                let (k, cols) = (weight.dims[0] as usize, weight.dims[1] as usize);
                let values = floats(weight)?;
                let (mut bias, mut output) = (None, m.output[0].clone());
                if let Some((add_index, add, bias_name)) =
                    following_bias_add(&old_nodes, &consumers, &output, &inits, cols)
                {
                    bias = Some(floats(&inits[&bias_name])?);
                    output = add.output[0].clone();
                    removed_bias_adds.insert(add_index);
                }
                parts.push((member_name, k, cols, values, bias, output));
            }
            let k = parts[0].1;
            if parts.iter().any(|p| p.1 != k) {
                return Err(GraphError(format!("MatMuls reading '{activation}' disagree on its width")));
            }
            let total: usize = parts.iter().map(|p| p.2).sum();
            let mut fused = vec![0f32; k * total];
            let mut offset = 0;
            for (_, _, cols, values, _, _) in &parts {
                for r in 0..k {
                    fused[r * total + offset..r * total + offset + cols]
                        .copy_from_slice(&values[r * cols..(r + 1) * cols]);
                }
                offset += cols;
            }
            let bias: Vec<f32> = parts.iter().flat_map(|p| p.4.clone().unwrap_or_else(|| vec![0.0; p.2])).collect();
            let group = format!("{}/fused", parts[0].0);
            let (q, scales) = quantize_columns_int8(&fused, k, total);
            let (sn, bn) = (format!("{group}_scale"), format!("{group}_bias"));
            let (qn, zn) = insert_int8_weight(&mut inits, &group, k, total, &q);
            inits.insert(sn.clone(), f32_tensor(&sn, &[total as i64], &scales));
            inits.insert(bn.clone(), f32_tensor(&bn, &[total as i64], &bias));
            let (aq, a_scale, a_zero) = activation_quantized(activation, &mut quantized_activations, &mut new_nodes);
            let inputs = [aq.as_str(), &qn, &a_scale, &sn, &a_zero, &zn, &bn];
            let fused_out = format!("{group}/output");
            let kernel = node("MatMulIntegerToFloat", MICROSOFT, &group, &inputs, &[&fused_out], vec![]);
            // The members' outlier rows side by side, like their weights.
            let outlier = match parts.iter().map(|p| outlier_parts.get(&p.0)).collect::<Option<Vec<_>>>() {
                Some(members) => {
                    let k_out = members[0].k;
                    let mut rows = vec![0f32; k_out * total];
                    let mut offset = 0;
                    for (part, p) in members.iter().zip(&parts) {
                        for r in 0..k_out {
                            rows[r * total + offset..r * total + offset + p.2]
                                .copy_from_slice(&part.rows[r * p.2..(r + 1) * p.2]);
                        }
                        offset += p.2;
                    }
                    Some(OutlierPart { channels: members[0].channels.clone(), rows, k: k_out })
                }
                None => None,
            };
            let summed = with_outlier_part(kernel, outlier.as_ref(), &mut inits, &mut new_nodes);
            new_nodes.push(summed);
            let sizes: Vec<i64> = parts.iter().map(|p| p.2 as i64).collect();
            let outputs: Vec<&str> = parts.iter().map(|p| p.5.as_str()).collect();
            let split_name = format!("{group}/split");
            let split = if opset >= 13 {
                let sizes_name = format!("{group}/split_sizes");
                inits.insert(sizes_name.clone(), graph::i64_tensor(&sizes_name, &[sizes.len() as i64], &sizes));
                node("Split", "", &split_name, &[&fused_out, &sizes_name], &outputs, vec![int_attribute("axis", -1)])
            } else {
                let attributes = vec![int_attribute("axis", -1), graph::ints_attribute("split", &sizes)];
                node("Split", "", &split_name, &[&fused_out], &outputs, attributes)
            };
            new_nodes.push(split);
            quantized.extend(parts.into_iter().map(|p| p.0));
            continue;
        }
        if in_group.contains(&index) {
            continue;
        }
        let Some(candidate) = by_name.get(name.as_str()) else {
            new_nodes.push(n.clone());
            continue;
        };
        if options.keep_float.contains(&name) {
            kept_float.push(name);
            new_nodes.push(n.clone());
            continue;
        }
        let weight = inits.get(&candidate.weight).expect("candidates are initializers");
        let (rows, cols) = (weight.dims[0] as usize, weight.dims[1] as usize);
        let values = floats(weight)?;
        if n.op_type() == "Gather" {
            new_nodes.extend(quantize_gather(n, &name, &values, rows, cols, options.scheme, &mut inits));
            quantized.push(name);
            continue;
        }
        // MatMul or Gemm: weight as [K, N].
        let (k, cols_n, w) = if n.op_type() == "Gemm" && int_of(n, "transB", 0) == 1 {
            (cols, rows, transpose(&values, rows, cols))
        } else {
            (rows, cols, values)
        };
        let mut output = n.output[0].clone();
        let mut bias = if n.op_type() == "Gemm" { n.input.get(2).cloned().filter(|b| !b.is_empty()) } else { None };
        if bias.is_none() && !graph_outputs.contains(&output) {
            if let Some((add_index, add, bias_name)) =
                following_bias_add(&old_nodes, &consumers, &output, &inits, cols_n)
            {
                bias = Some(bias_name);
                output = add.output[0].clone();
                removed_bias_adds.insert(add_index);
            }
        }
        if let Some(b) = &bias {
            let b = inits.get(b).ok_or_else(|| GraphError(format!("bias '{b}' of node '{name}' is not constant")))?;
            if b.dims.iter().product::<i64>() as usize != cols_n || b.data_type() != data_type::FLOAT {
                return Err(GraphError(format!("node '{name}' has a bias that is not FLOAT [{cols_n}]")));
            }
        }
        let bias = bias.unwrap_or_default();
        let new = match options.scheme {
            Scheme::Int8 => {
                let (q, scales) = quantize_columns_int8(&w, k, cols_n);
                let sn = format!("{}_scale", candidate.weight);
                let (qn, zn) = insert_int8_weight(&mut inits, &candidate.weight, k, cols_n, &q);
                inits.insert(sn.clone(), f32_tensor(&sn, &[cols_n as i64], &scales));
                // The activation is quantized once per run however many MatMuls read it (Q, K and
                // V share one), then each MatMul runs on the integers.
                let (aq, a_scale, a_zero) =
                    activation_quantized(&n.input[0], &mut quantized_activations, &mut new_nodes);
                let mut inputs = vec![aq.as_str(), &qn, &a_scale, &sn, &a_zero, &zn];
                if !bias.is_empty() {
                    inputs.push(bias.as_str());
                }
                let kernel = node("MatMulIntegerToFloat", MICROSOFT, &name, &inputs, &[&output], vec![]);
                with_outlier_part(kernel, outlier_parts.get(&name), &mut inits, &mut new_nodes)
            }
            Scheme::Int4 { block_size, symmetric } => {
                let stats = options.activation_stats.get(&n.input[0]);
                let mut w = w;
                // The highest-energy input channels bypass int4 (their weight rows zeroed here
                // and multiplied in float), the rest are rounded weighted by their energy.
                if let Some(stats) = stats.filter(|_| options.outlier_channels > 0) {
                    let mut outliers: Vec<usize> = (0..k).collect();
                    outliers.sort_by(|&a, &b| stats.mean_square[b].total_cmp(&stats.mean_square[a]));
                    outliers.truncate(options.outlier_channels.min(k - 1));
                    outliers.sort_unstable();
                    let gathered = format!("{}/outlier_channels", n.input[0]);
                    if gathered_activations.insert(gathered.clone()) {
                        let indices = format!("{}/outlier_indices", n.input[0]);
                        let as_i64: Vec<i64> = outliers.iter().map(|&j| j as i64).collect();
                        inits.insert(indices.clone(), graph::i64_tensor(&indices, &[as_i64.len() as i64], &as_i64));
                        let attributes = vec![int_attribute("axis", -1)];
                        new_nodes.push(node(
                            "Gather",
                            "",
                            &gathered,
                            &[&n.input[0], &indices],
                            &[&gathered],
                            attributes,
                        ));
                    }
                    let rows: Vec<f32> =
                        outliers.iter().flat_map(|&j| w[j * cols_n..(j + 1) * cols_n].to_vec()).collect();
                    for &j in &outliers {
                        w[j * cols_n..(j + 1) * cols_n].iter_mut().for_each(|v| *v = 0.0);
                    }
                    outlier_parts.insert(name.clone(), OutlierPart { channels: gathered, rows, k: outliers.len() });
                }
                let importance = stats.map(|s| s.mean_square.as_slice()).filter(|m| m.len() == k);
                let packed = quantize_columns_int4(&w, k, cols_n, block_size, symmetric, importance);
                let blocks = k.div_ceil(block_size);
                let (qn, sn, zn) = (
                    format!("{}_int4", candidate.weight),
                    format!("{}_scale", candidate.weight),
                    format!("{}_zero_point", candidate.weight),
                );
                inits.insert(
                    qn.clone(),
                    u8_tensor(&qn, &[cols_n as i64, blocks as i64, block_size as i64 / 2], packed.data),
                );
                inits.insert(sn.clone(), f32_tensor(&sn, &[(cols_n * blocks) as i64], &packed.scales));
                let mut inputs = vec![n.input[0].as_str(), &qn, &sn];
                match packed.zero_points {
                    Some(zp) => {
                        inits.insert(zn.clone(), u8_tensor(&zn, &[zp.len() as i64], zp));
                        inputs.push(&zn);
                    }
                    None => inputs.push(""),
                }
                if !bias.is_empty() {
                    inputs.extend(["", bias.as_str()]);
                }
                let attributes = vec![
                    int_attribute("K", k as i64),
                    int_attribute("N", cols_n as i64),
                    int_attribute("bits", 4),
                    int_attribute("block_size", block_size as i64),
                    // Activations quantized to int8 per block inside the kernel, as llama.cpp's
                    // Q8 activations: SmolLM2 decodes 2.4x faster on an AVX2-only EPYC (12 vs
                    // 31 ms/token) with the same greedy tokens; the float kernel is the slow path.
                    int_attribute("accuracy_level", 4),
                ];
                let kernel = node("MatMulNBits", MICROSOFT, &name, &inputs, &[&output], attributes);
                with_outlier_part(kernel, outlier_parts.get(&name), &mut inits, &mut new_nodes)
            }
        };
        new_nodes.push(new);
        quantized.push(name);
    }
    graph.node = new_nodes;
    // Keep only the initializers something still reads, in a stable order.
    let used = referenced_names(graph);
    let mut kept: Vec<TensorProto> = inits.into_values().filter(|t| used.contains(t.name())).collect();
    kept.sort_by(|a, b| a.name().cmp(b.name()));
    graph.initializer = kept;
    // The source's other large tables, except the weights of nodes kept in float.
    let exact: BTreeSet<&str> =
        candidates.iter().filter(|c| kept_float.contains(&c.node)).map(|c| c.weight.as_str()).collect();
    let tables: BTreeSet<String> = source_tables.into_iter().filter(|t| !exact.contains(t.as_str())).collect();
    let tables = store_tables_int8(graph, options.min_elements, &tables);
    conditioned.extend(tables.into_iter().map(|t| format!("{t}: stored int8 per row, dequantized at load")));
    graph::import_domain(&mut model, MICROSOFT, 1);
    Ok(Quantized { model, quantized, kept_float, conditioned })
}

/// The uint8 form of `activation` (values, scale, zero point), quantized once per run by a
/// `DynamicQuantizeLinear` emitted the first time it is asked for.
fn activation_quantized(
    activation: &str,
    done: &mut BTreeSet<String>,
    nodes: &mut Vec<NodeProto>,
) -> (String, String, String) {
    let names = (format!("{activation}/uint8"), format!("{activation}/scale"), format!("{activation}/zero_point"));
    if done.insert(activation.to_string()) {
        let outputs = [names.0.as_str(), &names.1, &names.2];
        nodes.push(node(
            "DynamicQuantizeLinear",
            "",
            &format!("{activation}/quantize"),
            &[activation],
            &outputs,
            vec![],
        ));
    }
    names
}

/// Gemm that is a plain `x·W (+ c)`: no transposed activation, unit alpha and beta.
fn gemm_is_plain(n: &NodeProto) -> bool {
    int_of(n, "transA", 0) == 0 && graph::float_of(n, "alpha", 1.0) == 1.0 && graph::float_of(n, "beta", 1.0) == 1.0
}

/// A node's name, or a stable stand-in for an unnamed one.
pub fn node_name(n: &NodeProto, index: usize) -> String {
    match n.name() {
        "" => format!("{}_{index}", n.op_type()),
        name => name.to_string(),
    }
}

/// How many nodes read each tensor.
fn consumers(graph: &GraphProto) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for n in &graph.node {
        for input in &n.input {
            *count.entry(input.clone()).or_default() += 1;
        }
    }
    count
}

/// The `Add` that adds a constant `[n]` bias to `output`, when it is the output's only reader.
fn following_bias_add<'a>(
    nodes: &'a [NodeProto],
    consumers: &HashMap<String, usize>,
    output: &str,
    inits: &HashMap<String, TensorProto>,
    n: usize,
) -> Option<(usize, &'a NodeProto, String)> {
    if consumers.get(output) != Some(&1) {
        return None;
    }
    let (index, add) = nodes
        .iter()
        .enumerate()
        .find(|(_, x)| x.op_type() == "Add" && x.domain().is_empty() && x.input.iter().any(|i| i == output))?;
    let other = add.input.iter().find(|i| *i != output)?;
    let bias = inits.get(other)?;
    (bias.data_type() == data_type::FLOAT && bias.dims == [n as i64]).then(|| (index, add, other.clone()))
}

/// Every tensor name any node reads, subgraphs included (they may read outer initializers).
fn referenced_names(graph: &GraphProto) -> BTreeSet<String> {
    let mut used: BTreeSet<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    fn walk(graph: &GraphProto, used: &mut BTreeSet<String>) {
        for n in &graph.node {
            used.extend(n.input.iter().cloned());
            for a in &n.attribute {
                for g in a.g.iter().chain(&a.graphs) {
                    walk(g, used);
                }
            }
        }
    }
    walk(graph, &mut used);
    used
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Symmetric int8 codes: -128 is left out, as ONNX Runtime's own quantizer does.
const INT8_GRID: (f32, f32) = (-127.0, 127.0);

/// Clipping ratios tried for each channel or block: the scale with the least squared error wins.
const CLIP_RATIOS: [f32; 8] = [1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.8, 0.75];

/// The symmetric scale for `values` on the integer grid `[lowest, levels]` with the least
/// squared rounding-plus-clipping error, each value's error weighted by `importance` (the mean
/// square of the activation it multiplies, when calibration measured it).
fn best_symmetric_scale(
    values: &[f32],
    importance: Option<&[f32]>,
    (lowest, levels): (f32, f32),
    ratios: &[f32],
) -> f32 {
    let absmax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    if absmax == 0.0 {
        return 1.0;
    }
    let mut best = (f32::INFINITY, absmax / levels);
    for ratio in ratios {
        let scale = absmax * ratio / levels;
        let error: f32 = values
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let q = (v / scale).round().clamp(lowest, levels);
                (q * scale - v).powi(2) * importance.map_or(1.0, |w| w[j])
            })
            .sum();
        if error < best.0 {
            best = (error, scale);
        }
    }
    best.1
}

/// Stores a MatMul's int8 weight codes `[k, n]` as `{name}_int8`: uint8 around a zero point of
/// 128 (`{name}_zero_point`), so ONNX Runtime multiplies uint8 activations by uint8 weights. Its
/// uint8 × int8 kernel on x86 without VNNI (AVX2 only: AMD Zen 2/3, older Xeons, Lambda hosts
/// among them) adds pairs of products in 16 bits and saturates: MiniLM int8's mean cosine fell
/// to 0.994 (min 0.975) on an AVX2-only EPYC, against 0.998 (min 0.991) on an AVX-512 VNNI
/// Xeon. The uint8 × uint8 kernels widen first and are exact on every CPU. Returns (codes, zero
/// point).
fn insert_int8_weight(
    inits: &mut HashMap<String, TensorProto>,
    name: &str,
    k: usize,
    n: usize,
    q: &[i8],
) -> (String, String) {
    let (codes, zero_point) = (format!("{name}_int8"), format!("{name}_zero_point"));
    let shifted = q.iter().map(|&v| (v as i16 + 128) as u8).collect();
    inits.insert(codes.clone(), u8_tensor(&codes, &[k as i64, n as i64], shifted));
    inits.insert(zero_point.clone(), u8_tensor(&zero_point, &[], vec![128]));
    (codes, zero_point)
}

/// int8 per output column of a `[k, n]` weight: `(values [k, n], scales [n])`.
pub fn quantize_columns_int8(w: &[f32], k: usize, n: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; k * n];
    let mut scales = vec![0f32; n];
    let mut column = vec![0f32; k];
    for c in 0..n {
        for r in 0..k {
            column[r] = w[r * n + c];
        }
        let scale = best_symmetric_scale(&column, None, INT8_GRID, &CLIP_RATIOS[..4]);
        scales[c] = scale;
        for r in 0..k {
            q[r * n + c] = (column[r] / scale).round().clamp(-127.0, 127.0) as i8;
        }
    }
    (q, scales)
}

/// int4 blocks as MatMulNBits lays them out.
pub struct PackedInt4 {
    /// `[n, blocks, block_size / 2]`: two values per byte, the first in the low nibble.
    pub data: Vec<u8>,
    /// `[n * blocks]`.
    pub scales: Vec<f32>,
    /// `[n * ceil(blocks / 2)]`, packed like `data`; `None` when symmetric (zero point 8).
    pub zero_points: Option<Vec<u8>>,
}

/// int4 per block of `block_size` along K for each output column of a `[k, n]` weight;
/// `importance` (length `k`) weights each row's error when choosing scales.
pub fn quantize_columns_int4(
    w: &[f32],
    k: usize,
    n: usize,
    block_size: usize,
    symmetric: bool,
    importance: Option<&[f32]>,
) -> PackedInt4 {
    let blocks = k.div_ceil(block_size);
    let mut data = vec![0u8; n * blocks * block_size / 2];
    let mut scales = vec![0f32; n * blocks];
    let mut zero_points = vec![0u8; n * blocks];
    let mut block = vec![0f32; block_size];
    for c in 0..n {
        for b in 0..blocks {
            let start = b * block_size;
            let len = block_size.min(k - start);
            for (j, slot) in block.iter_mut().enumerate() {
                *slot = if j < len { w[(start + j) * n + c] } else { 0.0 };
            }
            let weights = importance.map(|w| &w[start..start + len]);
            let (codes, scale, zero_point) = quantize_block_int4(&block[..len], weights, symmetric);
            scales[c * blocks + b] = scale;
            let base = (c * blocks + b) * block_size / 2;
            for (j, code) in codes.iter().enumerate() {
                data[base + j / 2] |= code << (4 * (j % 2));
            }
            // Padding past K stays the zero point, so it contributes nothing.
            for j in len..block_size {
                data[base + j / 2] |= zero_point << (4 * (j % 2));
            }
            zero_points[c * blocks + b] = zero_point;
        }
    }
    // MatMulNBits reads zero points per column, ceil(blocks/2) bytes each, low nibble first.
    let zero_points = (!symmetric).then(|| {
        let per_column = blocks.div_ceil(2);
        let mut packed = vec![0u8; n * per_column];
        for c in 0..n {
            for b in 0..blocks {
                packed[c * per_column + b / 2] |= zero_points[c * blocks + b] << (4 * (b % 2));
            }
        }
        packed
    });
    PackedInt4 { data, scales, zero_points }
}

/// One block: unsigned codes in `[0, 15]`, the scale, and the zero point (8 when symmetric).
/// Clipping is searched for the least (importance-weighted) squared error; asymmetric blocks
/// search the low and high ends independently.
fn quantize_block_int4(values: &[f32], importance: Option<&[f32]>, symmetric: bool) -> (Vec<u8>, f32, u8) {
    if symmetric {
        // Codes -8..=7 around zero point 8.
        let scale = best_symmetric_scale(values, importance, (-8.0, 7.0), &CLIP_RATIOS);
        let codes = values.iter().map(|v| ((v / scale).round().clamp(-8.0, 7.0) + 8.0) as u8).collect();
        return (codes, scale, 8);
    }
    let (lo, hi) = values.iter().fold((0f32, 0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let mut best = (f32::INFINITY, 1.0f32, 0u8);
    for low_ratio in CLIP_RATIOS {
        for high_ratio in CLIP_RATIOS {
            let (l, h) = (lo * low_ratio, hi * high_ratio);
            let scale = if h > l { (h - l) / 15.0 } else { 1.0 };
            let zero_point = (-l / scale).round().clamp(0.0, 15.0);
            let error: f32 = values
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    let q = ((v / scale).round() + zero_point).clamp(0.0, 15.0);
                    ((q - zero_point) * scale - v).powi(2) * importance.map_or(1.0, |w| w[j])
                })
                .sum();
            if error < best.0 {
                best = (error, scale, zero_point as u8);
            }
        }
    }
    let (_, scale, zero_point) = best;
    let codes = values.iter().map(|v| ((v / scale).round() + zero_point as f32).clamp(0.0, 15.0) as u8).collect();
    (codes, scale, zero_point)
}

/// Replaces a Gather on a float `[rows, cols]` table with one on a quantized table.
fn quantize_gather(
    n: &NodeProto,
    name: &str,
    table: &[f32],
    rows: usize,
    cols: usize,
    scheme: Scheme,
    inits: &mut HashMap<String, TensorProto>,
) -> Vec<NodeProto> {
    let weight = &n.input[0];
    let (ids, output) = (n.input[1].as_str(), n.output[0].as_str());
    match scheme {
        Scheme::Int4 { block_size, .. } if cols % block_size == 0 => {
            // GatherBlockQuantized: uint8 [rows, cols/2], symmetric around its default zero point 8.
            let blocks = cols / block_size;
            let mut data = vec![0u8; rows * cols / 2];
            let mut scales = vec![0f32; rows * blocks];
            for r in 0..rows {
                for b in 0..blocks {
                    let start = r * cols + b * block_size;
                    let (codes, scale, _) = quantize_block_int4(&table[start..start + block_size], None, true);
                    scales[r * blocks + b] = scale;
                    for (j, code) in codes.iter().enumerate() {
                        data[(start + j) / 2] |= code << (4 * (j % 2));
                    }
                }
            }
            let (qn, sn) = (format!("{weight}_int4"), format!("{weight}_scale"));
            inits.insert(qn.clone(), u8_tensor(&qn, &[rows as i64, cols as i64 / 2], data));
            inits.insert(sn.clone(), f32_tensor(&sn, &[rows as i64, blocks as i64], &scales));
            let attributes = vec![
                int_attribute("bits", 4),
                int_attribute("block_size", block_size as i64),
                int_attribute("gather_axis", 0),
                int_attribute("quantize_axis", 1),
            ];
            vec![node("GatherBlockQuantized", MICROSOFT, name, &[&qn, ids, &sn], &[output], attributes)]
        }
        _ => {
            // int8 rows, one scale per row: gather codes and scales, then multiply.
            let (q, scales) = quantize_rows_int8(table, rows, cols);
            let (qn, sn) = (format!("{weight}_int8"), format!("{weight}_scale"));
            inits.insert(qn.clone(), i8_tensor(&qn, &[rows as i64, cols as i64], &q));
            // [rows, 1], so the gathered scales broadcast over each row's values.
            inits.insert(sn.clone(), f32_tensor(&sn, &[rows as i64, 1], &scales));
            let (codes, row_scales, as_float) =
                (format!("{name}/codes"), format!("{name}/scales"), format!("{name}/codes_float"));
            vec![
                node("Gather", "", &codes, &[&qn, ids], &[&codes], vec![]),
                node("Gather", "", &row_scales, &[&sn, ids], &[&row_scales], vec![]),
                node(
                    "Cast",
                    "",
                    &as_float,
                    &[&codes],
                    &[&as_float],
                    vec![int_attribute("to", data_type::FLOAT as i64)],
                ),
                node("Mul", "", name, &[&as_float, &row_scales], &[output], vec![]),
            ]
        }
    }
}

/// The float side of a MatMul whose outlier activation channels bypass int8: the gathered
/// channels (`[.., k]`) and their original weight rows (`[k, n]`, row-major).
struct OutlierPart {
    channels: String,
    rows: Vec<f32>,
    k: usize,
}

/// Prepares each activation read by candidate MatMuls for int8, using calibration statistics:
///
/// - **SmoothQuant** (`smoothing = alpha`): input channel `j` is divided by
///   `s_j = max|x_j|^alpha / max|w_j|^(1-alpha)` and row `j` of each reader's weight multiplied
///   by it. Exact in float; the per-run activation grid then spends fewer steps on a few wide
///   channels, at the cost of coarser weight columns.
/// - **Outlier channels** (`outlier_channels = k`): the `k` channels still widest are zeroed
///   before quantization and their product computed in float from the original values and
///   weight rows (`OutlierPart`), so they neither stretch the activation grid nor the weights'.
///
/// One `Mul` per activation does both (its factor is `1/s_j`, or 0 for an outlier channel).
fn condition_activations(
    model: &mut ModelProto,
    candidates: &[Candidate],
    options: &QuantizeOptions,
) -> Result<(Vec<String>, HashMap<String, OutlierPart>), GraphError> {
    let graph = model.graph.as_mut().expect("decode checked the graph");
    let mut readers: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in candidates.iter().filter(|c| c.op == "MatMul" && !options.keep_float.contains(&c.node)) {
        readers.entry(c.activation.as_str()).or_default().push(c);
    }
    let mut inits: HashMap<String, usize> =
        graph.initializer.iter().enumerate().map(|(i, t)| (t.name().to_string(), i)).collect();
    let (mut conditioned, mut parts) = (Vec::new(), HashMap::new());
    for (activation, matmuls) in readers {
        let Some(stats) = options.activation_stats.get(activation) else { continue };
        let channels = stats.absmax.len();
        let mut weights = Vec::new();
        for m in &matmuls {
            let w = &graph.initializer[inits[&m.weight]];
            if w.dims[0] as usize != channels {
                return Err(GraphError(format!(
                    "'{}' has {} rows but its input has {channels} channels",
                    m.weight, w.dims[0]
                )));
            }
            weights.push((w.dims[1] as usize, floats(w)?));
        }
        let mut weight_max = vec![0f32; channels];
        for (cols, values) in &weights {
            for (j, row) in values.chunks(*cols).enumerate() {
                weight_max[j] = row.iter().fold(weight_max[j], |acc, v| acc.max(v.abs()));
            }
        }
        let s: Vec<f32> = stats
            .absmax
            .iter()
            .zip(&weight_max)
            .map(|(x, w)| match options.smoothing {
                Some(a) if *x > 0.0 && *w > 0.0 => (x.powf(a) / w.powf(1.0 - a)).clamp(1e-2, 1e2),
                _ => 1.0,
            })
            .collect();
        // The widest channels (after smoothing), when splitting them off narrows the int8 range
        // enough to pay for the extra float work.
        let width = |j: usize| stats.absmax[j] / s[j];
        let mut outliers: Vec<usize> = (0..channels).collect();
        outliers.sort_by(|&a, &b| width(b).total_cmp(&width(a)));
        let k = options.outlier_channels.min(channels - 1);
        let narrowed = width(outliers[0]) / width(outliers[k]).max(f32::MIN_POSITIVE);
        outliers.truncate(if narrowed >= options.outlier_min_narrowing { k } else { 0 });
        outliers.sort_unstable();
        if outliers.is_empty() && options.smoothing.is_none() {
            continue;
        }

        let mut factor: Vec<f32> = s.iter().map(|s| 1.0 / s).collect();
        outliers.iter().for_each(|&j| factor[j] = 0.0);
        let gathered = format!("{activation}/outlier_channels");
        for (m, (cols, mut values)) in matmuls.iter().zip(weights) {
            if !outliers.is_empty() {
                let rows: Vec<f32> = outliers.iter().flat_map(|&j| values[j * cols..(j + 1) * cols].to_vec()).collect();
                parts.insert(m.node.clone(), OutlierPart { channels: gathered.clone(), rows, k: outliers.len() });
            }
            for (j, row) in values.chunks_mut(cols).enumerate() {
                let scale = if factor[j] == 0.0 { 0.0 } else { s[j] };
                row.iter_mut().for_each(|v| *v *= scale);
            }
            let i = inits[&m.weight];
            let dims = graph.initializer[i].dims.clone();
            graph.initializer[i] = f32_tensor(&m.weight, &dims, &values);
        }
        let factor_name = format!("{activation}/int8_factor");
        graph.initializer.push(f32_tensor(&factor_name, &[channels as i64], &factor));
        inits.insert(factor_name.clone(), graph.initializer.len() - 1);
        let scaled = format!("{activation}/conditioned");
        let reader_nodes: BTreeSet<&str> = matmuls.iter().map(|m| m.node.as_str()).collect();
        let mut position = None;
        for (index, n) in graph.node.iter_mut().enumerate() {
            if reader_nodes.contains(n.name()) {
                n.input[0] = scaled.clone();
                position.get_or_insert(index);
            }
        }
        // Before the first reader, so nodes stay in topological order.
        let at = position.expect("candidates are nodes of the graph");
        let mut inserted = vec![node("Mul", "", &scaled, &[activation, &factor_name], &[&scaled], vec![])];
        if !outliers.is_empty() {
            let indices = format!("{activation}/outlier_indices");
            let as_i64: Vec<i64> = outliers.iter().map(|&j| j as i64).collect();
            graph.initializer.push(graph::i64_tensor(&indices, &[as_i64.len() as i64], &as_i64));
            inserted.push(node(
                "Gather",
                "",
                &gathered,
                &[activation, &indices],
                &[&gathered],
                vec![int_attribute("axis", -1)],
            ));
        }
        graph.node.splice(at..at, inserted);
        let smoothing = options.smoothing.map_or("no smoothing".to_string(), |a| format!("smoothing alpha {a}"));
        let range = |skip: &[usize]| {
            (0..channels)
                .filter(|j| !skip.contains(j))
                .map(|j| stats.absmax[j] * factor[j].abs().max(1.0 / s[j]))
                .fold(0f32, f32::max)
        };
        conditioned.push(format!(
            "{activation}: {smoothing}, outlier channels {outliers:?}, int8 range {:.2} -> {:.2}",
            stats.absmax.iter().fold(0f32, |m, v| m.max(*v)),
            range(&outliers)
        ));
    }
    Ok((conditioned, parts))
}

/// `kernel` as is, or, when its input has outlier channels, `kernel` writing a partial result
/// (pushed to `nodes`) plus the channels' float product (pushed too) summed into its output.
/// The rows are stored as float16 and cast once (ONNX Runtime folds the Cast at load).
fn with_outlier_part(
    mut kernel: NodeProto,
    part: Option<&OutlierPart>,
    inits: &mut HashMap<String, TensorProto>,
    nodes: &mut Vec<NodeProto>,
) -> NodeProto {
    let Some(OutlierPart { channels, rows, k }) = part else { return kernel };
    let name = kernel.name().to_string();
    let (stored, weight) = (format!("{name}/outlier_rows_f16"), format!("{name}/outlier_rows"));
    inits.insert(stored.clone(), graph::f16_tensor(&stored, &[*k as i64, (rows.len() / k) as i64], rows));
    let output = std::mem::replace(&mut kernel.output[0], format!("{name}/quantized_part"));
    let float_part = format!("{name}/outlier_part");
    let sum = node("Add", "", &format!("{name}/sum"), &[&kernel.output[0], &float_part], &[&output], vec![]);
    nodes.push(kernel);
    nodes.push(cast_to_float(&stored, &weight));
    nodes.push(node("MatMul", "", &float_part, &[channels, &weight], &[&float_part], vec![]));
    sum
}

fn cast_to_float(input: &str, output: &str) -> NodeProto {
    node("Cast", "", output, &[input], &[output], vec![int_attribute("to", data_type::FLOAT as i64)])
}

/// Ops that read rotary position tables (cos/sin caches) among their inputs.
const ROTARY_OPS: [&str; 2] = ["GroupQueryAttention", "RotaryEmbedding"];

/// Stores the remaining large float tables (say, position embeddings read by a Slice) as int8
/// with one scale per row, dequantized by Cast and Mul on constants, which ONNX Runtime folds
/// once at session creation: smaller files, same kernels. Only tensors named in `tables` qualify.
fn store_tables_int8(graph: &mut GraphProto, min_elements: usize, tables: &BTreeSet<String>) -> Vec<String> {
    let inputs: BTreeSet<String> = graph.input.iter().map(|i| i.name().to_string()).collect();
    let (mut stored, mut scales, mut dequantize) = (Vec::new(), Vec::new(), Vec::new());
    for t in graph.initializer.iter_mut() {
        let name = t.name().to_string();
        let table = t.data_type() == data_type::FLOAT && t.dims.len() == 2 && t.data_location() != 1;
        if !table
            || ((t.dims[0] * t.dims[1]) as usize) < min_elements
            || !tables.contains(&name)
            || inputs.contains(&name)
        {
            continue;
        }
        let Ok(values) = floats(t) else { continue };
        let (rows, cols) = (t.dims[0] as usize, t.dims[1] as usize);
        let (q, row_scales) = quantize_rows_int8(&values, rows, cols);
        let (codes, scale, as_float) = (format!("{name}_int8"), format!("{name}_scale"), format!("{name}/codes_float"));
        *t = i8_tensor(&codes, &[rows as i64, cols as i64], &q);
        scales.push(f32_tensor(&scale, &[rows as i64, 1], &row_scales));
        dequantize.push(cast_to_float(&codes, &as_float));
        dequantize.push(node("Mul", "", &name, &[&as_float, &scale], &[&name], vec![]));
        stored.push(name);
    }
    graph.initializer.extend(scales);
    graph.node.splice(0..0, dequantize);
    stored
}

/// int8 per row of a `[rows, cols]` table: `(values, scales [rows])`.
fn quantize_rows_int8(table: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; rows * cols];
    let mut scales = vec![0f32; rows];
    for r in 0..rows {
        let row = &table[r * cols..(r + 1) * cols];
        let scale = best_symmetric_scale(row, None, INT8_GRID, &CLIP_RATIOS[..4]);
        scales[r] = scale;
        for (c, v) in row.iter().enumerate() {
            q[r * cols + c] = (v / scale).round().clamp(-127.0, 127.0) as i8;
        }
    }
    (q, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_columns_round_trip_within_half_a_step() {
        let (k, n) = (64, 3);
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0).collect();
        let (q, scales) = quantize_columns_int8(&w, k, n);
        for r in 0..k {
            for c in 0..n {
                let back = q[r * n + c] as f32 * scales[c];
                assert!((back - w[r * n + c]).abs() <= scales[c] * 0.5 + 1e-5, "{r},{c}");
            }
        }
    }

    #[test]
    fn int4_blocks_pack_low_nibble_first_and_pad_with_the_zero_point() {
        // K = 40 with blocks of 32: the second block has 8 values and 24 padding codes.
        let (k, n) = (40, 2);
        let w: Vec<f32> = (0..k * n).map(|i| (i as f32 - 40.0) / 10.0).collect();
        let packed = quantize_columns_int4(&w, k, n, 32, true, None);
        assert_eq!(packed.data.len(), n * 2 * 16);
        for c in 0..n {
            for r in 0..k {
                let (b, j) = (r / 32, r % 32);
                let byte = packed.data[(c * 2 + b) * 16 + j / 2];
                let code = (byte >> (4 * (j % 2))) & 0xF;
                let back = (code as f32 - 8.0) * packed.scales[c * 2 + b];
                assert!((back - w[r * n + c]).abs() <= packed.scales[c * 2 + b] * 1.01, "{r},{c}: {back}");
            }
            assert_eq!(packed.data[(c * 2 + 1) * 16 + 15], 0x88, "padding is the zero point");
        }
        let asymmetric = quantize_columns_int4(&w, k, n, 32, false, None);
        assert_eq!(asymmetric.zero_points.map(|z| z.len()), Some(n));
    }

    #[test]
    fn scheme_parsing_names_what_is_wrong() {
        assert_eq!(Scheme::parse("int4", Some(64), Some(false)), Ok(Scheme::Int4 { block_size: 64, symmetric: false }));
        assert!(Scheme::parse("int4", Some(48), None).unwrap_err().contains("32, 64 or 128"));
        assert!(Scheme::parse("fp8", None, None).unwrap_err().contains("int8 or int4"));
    }
}
