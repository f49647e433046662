//! Weight quantization as a graph rewrite, for ONNX Runtime's integer kernels:
//!
//! - **int8 dynamic**: `MatMul`/`Gemm` with a constant weight become com.microsoft
//!   `DynamicQuantizeMatMul` (activations quantized per run, weights int8 with one scale per
//!   output column, the following bias `Add` folded in). Large `Gather` tables (embeddings) are
//!   stored int8 with one scale per row and dequantized after the gather, so only the gathered
//!   rows are ever turned back into floats.
//! - **int4 weight-only**: `MatMul`/`Gemm` become com.microsoft `MatMulNBits` (blocks of 32, 64 or
//!   128 along K, symmetric or with zero points); Gather tables become `GatherBlockQuantized`.
//!
//! Scales are chosen per channel or block by searching the clipping range that minimizes squared
//! error, not just max-abs: outliers otherwise waste most of the grid. Nodes named in
//! `keep_float` stay as they are (the engine picks them by measured sensitivity).
//!
//! Optionally, for int8, `smoothing` moves activation outliers into the weights (SmoothQuant):
//! each input channel `j` of a MatMul is divided by `s_j` where it is produced and its weight row
//! multiplied by `s_j`, which is exact in float and makes the per-run activation quantization far
//! less lossy. It is applied where the producer can absorb `1/s` exactly: a LayerNormalization
//! (scale and bias) feeding only MatMuls.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::graph::{
    self, f32_tensor, floats, i8_tensor, int_attribute, int_of, node, u8_tensor, GraphError,
};
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
            "int8" => Err("'block_size' applies to int4 only".into()),
            "int4" => {
                let block_size = block_size.unwrap_or(32);
                if ![32, 64, 128].contains(&block_size) {
                    return Err(format!("'block_size' must be 32, 64 or 128, not {block_size}"));
                }
                Ok(Scheme::Int4 { block_size, symmetric: symmetric.unwrap_or(true) })
            }
            other => Err(format!("'scheme' must be int8 or int4, not '{other}'")),
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
    /// Largest absolute value per input channel of each MatMul's activation input (by tensor
    /// name), measured on a calibration set; enables SmoothQuant for int8.
    pub activation_ranges: HashMap<String, Vec<f32>>,
    /// SmoothQuant's migration strength (0 = none, 1 = all onto the weights).
    pub smoothing_alpha: f32,
}

impl QuantizeOptions {
    pub fn new(scheme: Scheme) -> Self {
        QuantizeOptions {
            scheme,
            keep_float: BTreeSet::new(),
            min_elements: 16 * 1024,
            activation_ranges: HashMap::new(),
            smoothing_alpha: 0.5,
        }
    }
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
    /// LayerNormalizations that absorbed SmoothQuant scales.
    pub smoothed: Vec<String>,
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
    let mut model = model.clone();
    let mut smoothed = Vec::new();
    if options.scheme == Scheme::Int8 && !options.activation_ranges.is_empty() && options.smoothing_alpha > 0.0 {
        smoothed = smooth(&mut model, &candidates, options)?;
    }
    let graph = model.graph.as_mut().expect("decode checked the graph");
    let mut inits: HashMap<String, TensorProto> =
        std::mem::take(&mut graph.initializer).into_iter().map(|t| (t.name().to_string(), t)).collect();
    let graph_outputs: BTreeSet<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    let consumers = consumers(graph);
    let by_name: BTreeMap<&str, &Candidate> = candidates.iter().map(|c| (c.node.as_str(), c)).collect();

    let old_nodes = std::mem::take(&mut graph.node);
    let mut removed_bias_adds = BTreeSet::new();
    let mut new_nodes = Vec::with_capacity(old_nodes.len());
    let (mut quantized, mut kept_float) = (Vec::new(), Vec::new());
    for (index, n) in old_nodes.iter().enumerate() {
        let name = node_name(n, index);
        if removed_bias_adds.contains(&index) {
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
            if let Some((add_index, add, bias_name)) = following_bias_add(&old_nodes, &consumers, &output, &inits, cols_n) {
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
                let (qn, sn) = (format!("{}_int8", candidate.weight), format!("{}_scale", candidate.weight));
                inits.insert(qn.clone(), i8_tensor(&qn, &[k as i64, cols_n as i64], &q));
                inits.insert(sn.clone(), f32_tensor(&sn, &[cols_n as i64], &scales));
                let mut inputs = vec![n.input[0].as_str(), &qn, &sn];
                if !bias.is_empty() {
                    inputs.extend(["", bias.as_str()]);
                }
                node("DynamicQuantizeMatMul", MICROSOFT, &name, &inputs, &[&output], vec![])
            }
            Scheme::Int4 { block_size, symmetric } => {
                let packed = quantize_columns_int4(&w, k, cols_n, block_size, symmetric);
                let blocks = k.div_ceil(block_size);
                let (qn, sn, zn) = (
                    format!("{}_int4", candidate.weight),
                    format!("{}_scale", candidate.weight),
                    format!("{}_zero_point", candidate.weight),
                );
                inits.insert(qn.clone(), u8_tensor(&qn, &[cols_n as i64, blocks as i64, block_size as i64 / 2], packed.data));
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
                ];
                node("MatMulNBits", MICROSOFT, &name, &inputs, &[&output], attributes)
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
    graph::import_domain(&mut model, MICROSOFT, 1);
    Ok(Quantized { model, quantized, kept_float, smoothed })
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
    let (index, add) =
        nodes.iter().enumerate().find(|(_, x)| x.op_type() == "Add" && x.domain().is_empty() && x.input.iter().any(|i| i == output))?;
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

/// Clipping ratios tried for each channel or block: the scale with the least squared error wins.
const CLIP_RATIOS: [f32; 8] = [1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.8, 0.75];

/// The symmetric scale for `values` on the integer grid `[-levels, levels]` with the least
/// squared rounding-plus-clipping error.
fn best_symmetric_scale(values: &[f32], levels: f32, ratios: &[f32]) -> f32 {
    let absmax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    if absmax == 0.0 {
        return 1.0;
    }
    let mut best = (f32::INFINITY, absmax / levels);
    for ratio in ratios {
        let scale = absmax * ratio / levels;
        let error: f32 = values
            .iter()
            .map(|v| {
                let q = (v / scale).round().clamp(-levels, levels);
                (q * scale - v).powi(2)
            })
            .sum();
        if error < best.0 {
            best = (error, scale);
        }
    }
    best.1
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
        let scale = best_symmetric_scale(&column, 127.0, &CLIP_RATIOS[..4]);
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

/// int4 per block of `block_size` along K for each output column of a `[k, n]` weight.
pub fn quantize_columns_int4(w: &[f32], k: usize, n: usize, block_size: usize, symmetric: bool) -> PackedInt4 {
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
            let (codes, scale, zero_point) = quantize_block_int4(&block[..len], symmetric);
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
fn quantize_block_int4(values: &[f32], symmetric: bool) -> (Vec<u8>, f32, u8) {
    if symmetric {
        // Codes -8..=7 around zero point 8; the error search picks the clipping.
        let scale = best_symmetric_scale(values, 7.0, &CLIP_RATIOS);
        let codes = values.iter().map(|v| ((v / scale).round().clamp(-8.0, 7.0) + 8.0) as u8).collect();
        return (codes, scale, 8);
    }
    let (lo, hi) = values.iter().fold((0f32, 0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let mut best = (f32::INFINITY, 1.0f32, 0u8);
    for ratio in CLIP_RATIOS {
        let (l, h) = (lo * ratio, hi * ratio);
        let scale = if h > l { (h - l) / 15.0 } else { 1.0 };
        let zero_point = (-l / scale).round().clamp(0.0, 15.0) as u8;
        let error: f32 = values
            .iter()
            .map(|v| {
                let q = ((v / scale).round() + zero_point as f32).clamp(0.0, 15.0);
                ((q - zero_point as f32) * scale - v).powi(2)
            })
            .sum();
        if error < best.0 {
            best = (error, scale, zero_point);
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
                    let (codes, scale, _) = quantize_block_int4(&table[start..start + block_size], true);
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
            let mut q = vec![0i8; rows * cols];
            let mut scales = vec![0f32; rows];
            for r in 0..rows {
                let row = &table[r * cols..(r + 1) * cols];
                let scale = best_symmetric_scale(row, 127.0, &CLIP_RATIOS[..4]);
                scales[r] = scale;
                for (c, v) in row.iter().enumerate() {
                    q[r * cols + c] = (v / scale).round().clamp(-127.0, 127.0) as i8;
                }
            }
            let (qn, sn) = (format!("{weight}_int8"), format!("{weight}_scale"));
            inits.insert(qn.clone(), i8_tensor(&qn, &[rows as i64, cols as i64], &q));
            // [rows, 1], so the gathered scales broadcast over each row's values.
            inits.insert(sn.clone(), f32_tensor(&sn, &[rows as i64, 1], &scales));
            let (codes, row_scales, as_float) =
                (format!("{name}/codes"), format!("{name}/scales"), format!("{name}/codes_float"));
            vec![
                node("Gather", "", &codes, &[&qn, ids], &[&codes], vec![]),
                node("Gather", "", &row_scales, &[&sn, ids], &[&row_scales], vec![]),
                node("Cast", "", &as_float, &[&codes], &[&as_float], vec![int_attribute("to", data_type::FLOAT as i64)]),
                node("Mul", "", name, &[&as_float, &row_scales], &[output], vec![]),
            ]
        }
    }
}

/// SmoothQuant: for each LayerNormalization whose output feeds only candidate MatMuls, divide its
/// scale and bias by `s` and multiply those MatMuls' weight rows by `s`, where
/// `s_j = max|x_j|^alpha / max|w_j|^(1-alpha)` over all the MatMuls it feeds.
fn smooth(model: &mut ModelProto, candidates: &[Candidate], options: &QuantizeOptions) -> Result<Vec<String>, GraphError> {
    let graph = model.graph.as_mut().expect("decode checked the graph");
    let mut readers: HashMap<&str, Vec<&Candidate>> = HashMap::new();
    for c in candidates.iter().filter(|c| c.op == "MatMul" && !options.keep_float.contains(&c.node)) {
        readers.entry(c.activation.as_str()).or_default().push(c);
    }
    let all_readers = consumers(graph);
    let mut plans = Vec::new();
    for (index, n) in graph.node.iter().enumerate() {
        if n.op_type() != "LayerNormalization" || n.input.len() < 3 || n.output.len() != 1 {
            continue;
        }
        let out = n.output[0].as_str();
        let (Some(matmuls), Some(ranges)) = (readers.get(out), options.activation_ranges.get(out)) else { continue };
        if all_readers.get(out) != Some(&matmuls.len()) || graph.output.iter().any(|o| o.name() == out) {
            continue;
        }
        plans.push((index, n.input[1].clone(), n.input[2].clone(), matmuls.clone(), ranges.clone()));
    }
    let mut inits: HashMap<String, usize> =
        graph.initializer.iter().enumerate().map(|(i, t)| (t.name().to_string(), i)).collect();
    let mut smoothed = Vec::new();
    for (index, gamma, beta, matmuls, ranges) in plans {
        let channels = ranges.len();
        let mut weight_max = vec![0f32; channels];
        for m in &matmuls {
            let w = &graph.initializer[inits[&m.weight]];
            let values = floats(w)?;
            let cols = w.dims[1] as usize;
            if w.dims[0] as usize != channels {
                return Err(GraphError(format!("'{}' has {} rows but its input has {channels} channels", m.weight, w.dims[0])));
            }
            for (j, row) in values.chunks(cols).enumerate() {
                weight_max[j] = row.iter().fold(weight_max[j], |acc, v| acc.max(v.abs()));
            }
        }
        let alpha = options.smoothing_alpha;
        let s: Vec<f32> = ranges
            .iter()
            .zip(&weight_max)
            .map(|(x, w)| if *x > 0.0 && *w > 0.0 { (x.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-2, 1e2) } else { 1.0 })
            .collect();
        for name in [&gamma, &beta] {
            let Some(&i) = inits.get(name.as_str()) else {
                return Err(GraphError(format!("LayerNormalization input '{name}' is not constant")));
            };
            let t = &graph.initializer[i];
            let scaled: Vec<f32> = floats(t)?.iter().zip(&s).map(|(v, s)| v / s).collect();
            // Written under a new name: the same tensor may be shared by another node.
            let new_name = format!("{name}_smoothed_{index}");
            graph.initializer.push(f32_tensor(&new_name, &t.dims.clone(), &scaled));
            inits.insert(new_name.clone(), graph.initializer.len() - 1);
            let slot = graph.node[index].input.iter_mut().find(|x| *x == name).expect("the LayerNorm reads it");
            *slot = new_name;
        }
        for m in &matmuls {
            let i = inits[&m.weight];
            let w = &graph.initializer[i];
            let cols = w.dims[1] as usize;
            let mut values = floats(w)?;
            for (j, row) in values.chunks_mut(cols).enumerate() {
                row.iter_mut().for_each(|v| *v *= s[j]);
            }
            graph.initializer[i] = f32_tensor(&m.weight, &w.dims.clone(), &values);
        }
        smoothed.push(node_name(&graph.node[index], index));
    }
    Ok(smoothed)
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
        let packed = quantize_columns_int4(&w, k, n, 32, true);
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
        let asymmetric = quantize_columns_int4(&w, k, n, 32, false);
        assert_eq!(asymmetric.zero_points.map(|z| z.len()), Some(n));
    }

    #[test]
    fn scheme_parsing_names_what_is_wrong() {
        assert_eq!(Scheme::parse("int4", Some(64), Some(false)), Ok(Scheme::Int4 { block_size: 64, symmetric: false }));
        assert!(Scheme::parse("int4", Some(48), None).unwrap_err().contains("32, 64 or 128"));
        assert!(Scheme::parse("fp8", None, None).unwrap_err().contains("int8 or int4"));
    }
}
