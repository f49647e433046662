//! Quantizing a model and measuring what it cost: the quantize job and `lmaas quantize` both run
//! `quantize_model`. The graph rewrite is lmaas_onnx::quantize; this side runs ONNX Runtime on a
//! calibration set to (1) measure activation ranges for SmoothQuant, (2) rank nodes by how much
//! quantizing each one alone hurts, so the most sensitive can stay float, and (3) report size,
//! quality (cosine, or max abs diff for tensor outputs) and latency against the source.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use lmaas_core::{DataType, Tensor, TensorData};
use lmaas_onnx::proto::{ModelProto, TensorTypeProto, TypeProto, TypeValue, ValueInfoProto};
use lmaas_onnx::quantize::{self, Candidate, ChannelStats, QuantizeOptions, Scheme};
use prost::bytes::Bytes;
use serde::Serialize;

use crate::{
    EmbeddingConfig, EmbeddingInput, EngineError, ExecutionProviders, GenerateParams, GenerationConfig, LoadedModel,
    Sampling,
};

/// What to quantize and how.
#[derive(Debug, Clone)]
pub struct QuantizeRequest {
    pub scheme: Scheme,
    /// Nodes to keep in float, by name.
    pub keep_float: BTreeSet<String>,
    /// Also keep the `n` nodes whose quantization alone costs the most on the calibration set.
    pub keep_most_sensitive: usize,
    /// SmoothQuant for int8 (needs an embeddings model to calibrate on).
    pub smoothing: Smoothing,
    /// Activation channels per int8 MatMul input computed in float (the widest ones).
    pub outlier_channels: usize,
}

/// SmoothQuant's strength for int8.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Smoothing {
    Off,
    Alpha(f32),
    /// The strength (or none) with the least cost on the calibration set, tried end to end.
    Auto,
}

impl Smoothing {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "auto" => Ok(Smoothing::Auto),
            "off" | "0" => Ok(Smoothing::Off),
            number => match number.parse::<f32>() {
                Ok(alpha) if alpha > 0.0 && alpha <= 1.0 => Ok(Smoothing::Alpha(alpha)),
                _ => Err(format!("smoothing must be auto, off or a strength in (0, 1], not '{number}'")),
            },
        }
    }
}

/// A quantize job's `params`, checked when the job is submitted and again when it runs.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeParams {
    /// `int8` or `int4`.
    pub scheme: String,
    pub block_size: Option<usize>,
    pub symmetric: Option<bool>,
    #[serde(default)]
    pub keep_float: Vec<String>,
    pub keep_most_sensitive: Option<usize>,
    pub outlier_channels: Option<usize>,
    /// `auto`, `off`, or a strength.
    pub smoothing: Option<String>,
    /// The model to publish the result to (default: the source model, as a new version).
    pub target: Option<String>,
    /// The alias the new version gets (default: the scheme, `int8` or `int4`).
    pub tag: Option<String>,
    /// Pinned on every job by the runner; unused here.
    #[serde(default)]
    pub chunk_items: Option<u64>,
}

impl QuantizeParams {
    /// Parses and checks `params`, naming the field that is wrong.
    pub fn parse(params: &serde_json::Value) -> Result<(Self, QuantizeRequest), String> {
        let params: QuantizeParams =
            serde_json::from_value(params.clone()).map_err(|e| format!("invalid quantize params: {e}"))?;
        let scheme =
            Scheme::parse(&params.scheme, params.block_size, params.symmetric).map_err(|e| format!("params.{e}"))?;
        let mut request = QuantizeRequest::new(scheme);
        request.keep_float.extend(params.keep_float.iter().cloned());
        if let Some(n) = params.keep_most_sensitive {
            if n > 64 {
                return Err("params.keep_most_sensitive must be at most 64".into());
            }
            request.keep_most_sensitive = n;
        }
        if let Some(k) = params.outlier_channels {
            if k > 256 {
                return Err("params.outlier_channels must be at most 256".into());
            }
            request.outlier_channels = k;
        }
        if let Some(smoothing) = &params.smoothing {
            request.smoothing = Smoothing::parse(smoothing).map_err(|e| format!("params.{e}"))?;
        }
        Ok((params, request))
    }
}

/// The strengths `Smoothing::Auto` tries (None = no smoothing).
const SMOOTHING_STRENGTHS: [Option<f32>; 5] = [None, Some(0.5), Some(0.6), Some(0.7), Some(0.8)];

impl QuantizeRequest {
    /// The defaults that meet the quality targets on MiniLM (see README, "Quantization").
    pub fn new(scheme: Scheme) -> Self {
        QuantizeRequest {
            scheme,
            keep_float: BTreeSet::new(),
            // Sensitivity costs one quantize-and-evaluate per candidate: only when asked.
            keep_most_sensitive: 0,
            // On MiniLM, outlier channels alone beat SmoothQuant at every strength (README).
            smoothing: Smoothing::Off,
            outlier_channels: 8,
        }
    }
}

/// Sentences for an embeddings model: `calibration` steers the quantizer, `evaluation` (disjoint)
/// is what the report measures on.
#[derive(Debug, Clone)]
pub struct Calibration {
    pub calibration: Vec<String>,
    pub evaluation: Vec<String>,
}

/// The built-in calibration set: 64 + 64 varied sentences (topics, lengths, code, other
/// languages), used when a job or the CLI names none.
pub fn default_calibration() -> Calibration {
    parse_calibration(include_bytes!("../../../samples/fixtures/quantize_sentences.json"))
        .expect("the built-in set parses")
}

/// `{"calibration": [texts], "evaluation": [texts]}`.
pub fn parse_calibration(raw: &[u8]) -> Result<Calibration, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sets {
        calibration: Vec<String>,
        evaluation: Vec<String>,
    }
    let sets: Sets = serde_json::from_slice(raw).map_err(|e| {
        format!("the calibration file must be {{\"calibration\": [texts], \"evaluation\": [texts]}}: {e}")
    })?;
    if sets.calibration.is_empty() || sets.evaluation.is_empty() {
        return Err("the calibration and evaluation sets must not be empty".into());
    }
    Ok(Calibration { calibration: sets.calibration, evaluation: sets.evaluation })
}

/// Summary statistics of a quality measure over the evaluation set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Distribution {
    pub mean: f64,
    pub min: f64,
    pub p5: f64,
    pub median: f64,
    pub max: f64,
    pub count: usize,
}

impl Distribution {
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Distribution {
            mean: values.iter().sum::<f64>() / values.len() as f64,
            min: values[0],
            p5: at(0.05),
            median: at(0.5),
            max: values[values.len() - 1],
            count: values.len(),
        }
    }
}

/// Latency of the source and the quantized model, measured alternately in one run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub batch: usize,
    pub source_ms: f64,
    pub quantized_ms: f64,
}

/// The quality report stored in the new version's manifest (`config.quantization`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QualityReport {
    pub scheme: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symmetric: Option<bool>,
    pub source_bytes: u64,
    pub quantized_bytes: u64,
    pub size_ratio: f64,
    /// Cosine similarity of the quantized model's embeddings to the source's (embeddings models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosine: Option<Distribution>,
    /// Largest absolute difference per evaluation input (tensor models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_abs_diff: Option<Distribution>,
    /// Decoders: how the greedy answers and the perplexity moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationQuality>,
    pub latency: Vec<Latency>,
    pub quantized_nodes: usize,
    pub kept_float: Vec<String>,
    /// Each candidate's cost when quantized alone (1 - mean cosine, or mean max abs diff), most
    /// sensitive first; measured only when `keep_most_sensitive` asked for it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sensitivity: Vec<(String, f64)>,
    /// The SmoothQuant strength used, and the calibration cost of each one tried (auto).
    pub smoothing_alpha: Option<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub smoothing_search: Vec<(Option<f32>, f64)>,
    pub outlier_channels: usize,
    /// What was done to each int8 activation (smoothing, outlier channels).
    pub conditioned: Vec<String>,
    pub calibration_inputs: usize,
    pub evaluation_inputs: usize,
}

/// How a model is fed and compared: embeddings models by sentence, tensor models by synthetic
/// inputs from their signature.
enum Probe {
    Embeddings {
        config: EmbeddingConfig,
        calibration: Vec<String>,
        evaluation: Vec<String>,
    },
    Tensors {
        calibration: Vec<Vec<Tensor>>,
        evaluation: Vec<Vec<Tensor>>,
        outputs: Vec<String>,
    },
    /// Decoders: chat prompts (calibration sentences as user messages, tokenized), compared by
    /// their greedy answers; `text` is scored by perplexity.
    Generation {
        config: GenerationConfig,
        calibration: Vec<Vec<u32>>,
        evaluation: Vec<Vec<u32>>,
        text: Vec<u32>,
    },
}

/// New tokens per prompt when a decoder's greedy answers are compared.
const PROBE_NEW_TOKENS: usize = 32;

/// A decoder's quality after quantization, against its source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationQuality {
    /// Per evaluation prompt: the share of the source's greedy answer (32 tokens) that the
    /// quantized model reproduces before the first different token.
    pub greedy_agreement: Distribution,
    /// Prompts answered identically.
    pub identical_answers: usize,
    pub source_perplexity: f64,
    pub quantized_perplexity: f64,
    pub perplexity_tokens: usize,
}

/// Quantizes `source_file` into `out_dir/model.onnx` (with the files beside the source, such as
/// `tokenizer.json`, copied) and measures it. `calibration` is required for embeddings models (a `tokenizer.json` present);
/// tensor models are probed with seeded random inputs. `progress` hears each step (done, total,
/// what) and answers whether to go on; `false` stops with `EngineError::Cancelled`.
pub fn quantize_model(
    source_file: &Path,
    out_dir: &Path,
    request: &QuantizeRequest,
    task_config: &serde_json::Value,
    calibration: Option<&Calibration>,
    progress: &mut dyn FnMut(usize, usize, &str) -> bool,
) -> Result<QualityReport, EngineError> {
    let source_dir = source_file.parent().unwrap_or(Path::new("."));
    let source_bytes = std::fs::read(source_file).map_err(|e| EngineError::Internal(format!("reading model: {e}")))?;
    let source_size = source_bytes.len() as u64;
    let model = lmaas_onnx::decode(Bytes::from(source_bytes)).map_err(|e| EngineError::Run(e.to_string()))?;
    let source = LoadedModel::load(source_file, &ExecutionProviders::cpu(), source_size)?;
    let probe = make_probe(&source, source_dir, task_config, calibration)?;
    let work = out_dir.join(".work");
    std::fs::create_dir_all(&work).map_err(io)?;
    copy_companions(source_file, &work)?;

    let mut options = QuantizeOptions::new(request.scheme);
    options.keep_float = request.keep_float.clone();
    let candidates = quantize::candidates(&model, options.min_elements);
    let auto_smoothing = request.smoothing == Smoothing::Auto && request.scheme == Scheme::Int8;
    let total = 3
        + if auto_smoothing { SMOOTHING_STRENGTHS.len() } else { 0 }
        + if request.keep_most_sensitive > 0 { candidates.len() } else { 0 };
    let mut done = 0;
    let mut step = |what: &str| -> Result<(), EngineError> {
        done += 1;
        if progress(done, total, what) {
            Ok(())
        } else {
            Err(EngineError::Cancelled)
        }
    };
    options.outlier_channels = request.outlier_channels;
    // int8 uses the statistics to smooth and split activations, int4 to split the
    // highest-energy channels and weight rounding errors by energy.
    let conditioning = request.smoothing != Smoothing::Off || request.outlier_channels > 0;
    if conditioning || matches!(request.scheme, Scheme::Int4 { .. }) {
        match &probe {
            Probe::Embeddings { calibration, .. } => {
                options.activation_stats = activation_stats(&model, &candidates, &work, |loaded| {
                    calibration
                        .iter()
                        .map(|s| Ok(loaded.token_tensors(&EmbeddingInput::Texts(vec![s.clone()]), 256)?.tensors))
                        .collect()
                })?;
            }
            Probe::Generation { calibration, .. } => {
                let (inputs, _) = source.signature().map_err(EngineError::Run)?;
                options.activation_stats = activation_stats(&model, &candidates, &work, |_| {
                    Ok(calibration.iter().map(|prompt| prefill_tensors(&inputs, prompt)).collect())
                })?;
            }
            Probe::Tensors { .. } => {}
        }
    }
    step("measured activation statistics")?;
    let reference = outputs_of(&source, &probe, Split::Calibration)?;
    let mut smoothing_search = Vec::new();
    options.smoothing = match request.smoothing {
        Smoothing::Off => None,
        Smoothing::Alpha(alpha) => Some(alpha),
        Smoothing::Auto if options.activation_stats.is_empty() => None,
        Smoothing::Auto => {
            for alpha in SMOOTHING_STRENGTHS {
                let trial = QuantizeOptions { smoothing: alpha, ..options.clone() };
                let quantized = quantize::quantize(&model, &trial).map_err(|e| EngineError::Run(e.0))?;
                let loaded = write_and_load(&quantized.model, &work)?;
                smoothing_search
                    .push((alpha, cost(&probe, &reference, &outputs_of(&loaded, &probe, Split::Calibration)?)));
                step(&format!("tried smoothing {alpha:?}"))?;
            }
            smoothing_search.iter().min_by(|a, b| a.1.total_cmp(&b.1)).and_then(|best| best.0)
        }
    };
    let mut sensitivity = Vec::new();
    if request.keep_most_sensitive > 0 {
        for (i, candidate) in candidates.iter().enumerate() {
            let mut alone = options.clone();
            alone.keep_float = candidates.iter().filter(|c| c.node != candidate.node).map(|c| c.node.clone()).collect();
            let quantized = quantize::quantize(&model, &alone).map_err(|e| EngineError::Run(e.0))?;
            let loaded = write_and_load(&quantized.model, &work)?;
            let cost = cost(&probe, &reference, &outputs_of(&loaded, &probe, Split::Calibration)?);
            sensitivity.push((candidate.node.clone(), cost));
            step(&format!("sensitivity {}/{}: {}", i + 1, candidates.len(), candidate.node))?;
        }
        sensitivity.sort_by(|a, b| b.1.total_cmp(&a.1));
        options.keep_float.extend(sensitivity.iter().take(request.keep_most_sensitive).map(|(n, _)| n.clone()));
    }
    let quantized = quantize::quantize(&model, &options).map_err(|e| EngineError::Run(e.0))?;
    let quantized_loaded = write_and_load(&quantized.model, &work)?;
    let quantized_size = std::fs::metadata(work.join("model.onnx")).map_err(io)?.len();

    step("quantized")?;
    let before = outputs_of(&source, &probe, Split::Evaluation)?;
    let after = outputs_of(&quantized_loaded, &probe, Split::Evaluation)?;
    let per_input: Vec<f64> = before.iter().zip(&after).map(|(a, b)| compare(&probe, a, b)).collect();
    let latency = measure_latency(&source, &quantized_loaded, &probe)?;
    step("evaluated")?;
    drop(quantized_loaded);
    for entry in std::fs::read_dir(&work).map_err(io)? {
        let entry = entry.map_err(io)?;
        std::fs::rename(entry.path(), out_dir.join(entry.file_name())).map_err(io)?;
    }
    let _ = std::fs::remove_dir_all(&work);
    let (block_size, symmetric) = match request.scheme {
        Scheme::Int8 => (None, None),
        Scheme::Int4 { block_size, symmetric } => (Some(block_size), Some(symmetric)),
    };
    let (cosine, max_abs_diff, generation) = match &probe {
        Probe::Embeddings { .. } => (Some(Distribution::of(per_input)), None, None),
        Probe::Tensors { .. } => (None, Some(Distribution::of(per_input)), None),
        Probe::Generation { text, .. } => {
            let quantized_loaded = LoadedModel::load(&out_dir.join("model.onnx"), &ExecutionProviders::cpu(), 0)?;
            let quality = GenerationQuality {
                identical_answers: per_input.iter().filter(|&&a| a == 1.0).count(),
                greedy_agreement: Distribution::of(per_input),
                source_perplexity: source.perplexity(text)?,
                quantized_perplexity: quantized_loaded.perplexity(text)?,
                perplexity_tokens: text.len(),
            };
            (None, None, Some(quality))
        }
    };
    let (calibration_inputs, evaluation_inputs) = probe.sizes();
    Ok(QualityReport {
        scheme: request.scheme.tag().to_string(),
        block_size,
        symmetric,
        source_bytes: source_size,
        quantized_bytes: quantized_size,
        size_ratio: quantized_size as f64 / source_size as f64,
        cosine,
        max_abs_diff,
        generation,
        latency,
        quantized_nodes: quantized.quantized.len(),
        kept_float: quantized.kept_float,
        sensitivity,
        smoothing_alpha: options.smoothing,
        smoothing_search,
        outlier_channels: if quantized.conditioned.is_empty() { 0 } else { options.outlier_channels },
        conditioned: quantized.conditioned,
        calibration_inputs,
        evaluation_inputs,
    })
}

#[derive(Clone, Copy)]
enum Split {
    Calibration,
    Evaluation,
}

impl Probe {
    fn sizes(&self) -> (usize, usize) {
        match self {
            Probe::Embeddings { calibration, evaluation, .. } => (calibration.len(), evaluation.len()),
            Probe::Tensors { calibration, evaluation, .. } => (calibration.len(), evaluation.len()),
            Probe::Generation { calibration, evaluation, .. } => (calibration.len(), evaluation.len()),
        }
    }
}

fn make_probe(
    source: &LoadedModel,
    source_dir: &Path,
    task_config: &serde_json::Value,
    calibration: Option<&Calibration>,
) -> Result<Probe, EngineError> {
    if let Some(config) =
        GenerationConfig::from_manifest_config(&serde_json::json!({ "task": task_config })).map_err(EngineError::Run)?
    {
        let sentences = calibration.ok_or_else(|| EngineError::Run("a decoder needs calibration sentences".into()))?;
        let prompts = |sentences: &[String], count: usize| -> Result<Vec<Vec<u32>>, EngineError> {
            sentences
                .iter()
                .take(count)
                .map(|s| {
                    let message = crate::ChatMessage { role: "user".into(), content: s.clone() };
                    source.encode_prompt(&config.render_chat(&[message])?)
                })
                .collect()
        };
        // A prose passage of evaluation sentences for perplexity (about 300 tokens).
        let text =
            source.encode_prompt(&sentences.evaluation.iter().take(16).cloned().collect::<Vec<_>>().join(" "))?;
        return Ok(Probe::Generation {
            calibration: prompts(&sentences.calibration, 8)?,
            evaluation: prompts(&sentences.evaluation, 16)?,
            text,
            config,
        });
    }
    if source_dir.join("tokenizer.json").exists() {
        let sentences = calibration.ok_or_else(|| {
            EngineError::Run("an embeddings model needs calibration sentences (params.calibration)".into())
        })?;
        if sentences.calibration.is_empty() || sentences.evaluation.is_empty() {
            return Err(EngineError::Run("the calibration and evaluation sets must not be empty".into()));
        }
        let config = EmbeddingConfig::from_manifest_config(&serde_json::json!({ "task": task_config }))
            .map_err(EngineError::Run)?;
        return Ok(Probe::Embeddings {
            config,
            calibration: sentences.calibration.clone(),
            evaluation: sentences.evaluation.clone(),
        });
    }
    let (inputs, outputs) = source.signature().map_err(EngineError::Run)?;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut draw = |count: usize| -> Result<Vec<Vec<Tensor>>, EngineError> {
        (0..count)
            .map(|_| {
                inputs
                    .iter()
                    .map(|spec| {
                        if spec.datatype != DataType::Fp32 {
                            return Err(EngineError::Run(format!(
                                "input '{}' is {}: only FP32 tensor models can be probed without calibration data",
                                spec.name, spec.datatype
                            )));
                        }
                        let shape: Vec<usize> =
                            spec.shape.iter().map(|&d| if d < 0 { 4 } else { d as usize }).collect();
                        let values: Vec<u8> = (0..shape.iter().product::<usize>())
                            .flat_map(|_| {
                                seed ^= seed << 13;
                                seed ^= seed >> 7;
                                seed ^= seed << 17;
                                ((seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0).to_le_bytes()
                            })
                            .collect();
                        Ok(Tensor {
                            name: spec.name.clone(),
                            datatype: DataType::Fp32,
                            shape,
                            data: TensorData::Raw(values),
                        })
                    })
                    .collect()
            })
            .collect()
    };
    Ok(Probe::Tensors {
        calibration: draw(32)?,
        evaluation: draw(64)?,
        outputs: outputs.into_iter().map(|o| o.name).collect(),
    })
}

/// The model's outputs on one split: one flat vector per input (an embedding, or all outputs).
fn outputs_of(model: &LoadedModel, probe: &Probe, split: Split) -> Result<Vec<Vec<f32>>, EngineError> {
    match probe {
        Probe::Embeddings { config, calibration, evaluation } => {
            let sentences = match split {
                Split::Calibration => calibration,
                Split::Evaluation => evaluation,
            };
            let mut vectors = Vec::with_capacity(sentences.len());
            for chunk in sentences.chunks(16) {
                vectors.extend(model.embed(&EmbeddingInput::Texts(chunk.to_vec()), config, None)?.vectors);
            }
            Ok(vectors)
        }
        Probe::Generation { config, calibration, evaluation, .. } => {
            let prompts = match split {
                Split::Calibration => calibration,
                Split::Evaluation => evaluation,
            };
            let greedy = GenerateParams { max_tokens: PROBE_NEW_TOKENS, sampling: Sampling::GREEDY, stop: vec![] };
            prompts
                .iter()
                .map(|prompt| {
                    let answer = model.generate(prompt, &greedy, config, crate::generate::keep_going)?;
                    Ok(answer.tokens.iter().map(|&t| t as f32).collect())
                })
                .collect()
        }
        Probe::Tensors { calibration, evaluation, outputs } => {
            let sets = match split {
                Split::Calibration => calibration,
                Split::Evaluation => evaluation,
            };
            sets.iter()
                .map(|inputs| {
                    let results = model.run(inputs, outputs)?;
                    Ok(results.iter().flat_map(tensor_floats).collect())
                })
                .collect()
        }
    }
}

fn tensor_floats(tensor: &Tensor) -> Vec<f32> {
    match (&tensor.data, tensor.datatype) {
        (TensorData::Raw(bytes), DataType::Fp32) => {
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        _ => vec![],
    }
}

/// Quality of `b` against `a`: cosine for embeddings, max abs diff for tensors.
fn compare(probe: &Probe, a: &[f32], b: &[f32]) -> f64 {
    match probe {
        Probe::Embeddings { .. } => cosine(a, b),
        Probe::Tensors { .. } => a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max),
        Probe::Generation { .. } => greedy_agreement(a, b),
    }
}

/// A cost to minimize over a split: 1 - mean cosine for embeddings, 1 - mean greedy agreement for
/// decoders, mean max abs diff for tensors.
fn cost(probe: &Probe, reference: &[Vec<f32>], outputs: &[Vec<f32>]) -> f64 {
    let per: Vec<f64> = reference
        .iter()
        .zip(outputs)
        .map(|(a, b)| match probe {
            Probe::Tensors { .. } => compare(probe, a, b),
            Probe::Embeddings { .. } | Probe::Generation { .. } => 1.0 - compare(probe, a, b),
        })
        .collect();
    per.iter().sum::<f64>() / per.len().max(1) as f64
}

/// The share of answer `a` that `b` repeats before the first different token.
fn greedy_agreement(a: &[f32], b: &[f32]) -> f64 {
    let same = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if a.len() == b.len() && same == a.len() {
        1.0
    } else {
        same as f64 / a.len().max(1) as f64
    }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-12)
}

/// Per-channel max |x| and mean x² of each MatMul activation over the calibration inputs (one
/// at a time, so padding never counts): the model is re-exported with those tensors as extra
/// outputs. `inputs` makes the input sets from the re-exported model (its tokenizer).
fn activation_stats(
    model: &ModelProto,
    candidates: &[Candidate],
    work: &Path,
    inputs: impl Fn(&LoadedModel) -> Result<Vec<Vec<Tensor>>, EngineError>,
) -> Result<HashMap<String, ChannelStats>, EngineError> {
    let names: BTreeSet<String> =
        candidates.iter().filter(|c| c.op != "Gather").map(|c| c.activation.clone()).collect();
    let graph_inputs: BTreeSet<&str> =
        model.graph.as_ref().map(|g| g.input.iter().map(|i| i.name()).collect()).unwrap_or_default();
    let names: Vec<String> = names.into_iter().filter(|n| !graph_inputs.contains(n.as_str())).collect();
    let mut probe = model.clone();
    let graph = probe.graph.as_mut().expect("decoded models have a graph");
    for name in &names {
        graph.output.push(ValueInfoProto {
            name: Some(name.clone()),
            r#type: Some(TypeProto {
                value: Some(TypeValue::TensorType(TensorTypeProto { elem_type: Some(1), shape: None })),
                denotation: None,
            }),
            ..Default::default()
        });
    }
    let loaded = write_and_load(&probe, work)?;
    drop(probe);
    let mut stats: HashMap<String, (ChannelStats, usize)> = HashMap::new();
    for tensors in inputs(&loaded)? {
        for (name, tensor) in names.iter().zip(loaded.run(&tensors, &names)?) {
            let channels = *tensor.shape.last().unwrap_or(&1);
            let values = tensor_floats(&tensor);
            let (entry, rows) = stats
                .entry(name.clone())
                .or_insert_with(|| (ChannelStats { absmax: vec![0.0; channels], mean_square: vec![0.0; channels] }, 0));
            for row in values.chunks(channels) {
                for (j, v) in row.iter().enumerate() {
                    entry.absmax[j] = entry.absmax[j].max(v.abs());
                    entry.mean_square[j] += v * v;
                }
                *rows += 1;
            }
        }
    }
    Ok(stats
        .into_iter()
        .map(|(name, (mut s, rows))| {
            s.mean_square.iter_mut().for_each(|m| *m /= rows.max(1) as f32);
            (name, s)
        })
        .collect())
}

/// A decoder's inputs for reading a whole prompt with an empty KV cache.
fn prefill_tensors(inputs: &[lmaas_core::TensorSpec], prompt: &[u32]) -> Vec<Tensor> {
    let raw = |name: &str, datatype, shape: Vec<usize>, bytes: Vec<u8>| Tensor {
        name: name.to_string(),
        datatype,
        shape,
        data: TensorData::Raw(bytes),
    };
    inputs
        .iter()
        .map(|spec| match spec.name.as_str() {
            "input_ids" => raw(
                &spec.name,
                DataType::Int64,
                vec![1, prompt.len()],
                prompt.iter().flat_map(|&t| (t as i64).to_le_bytes()).collect(),
            ),
            "seqlens_k" => raw(&spec.name, DataType::Int32, vec![1], (prompt.len() as i32 - 1).to_le_bytes().to_vec()),
            "total_sequence_length" => {
                raw(&spec.name, DataType::Int32, vec![], (prompt.len() as i32).to_le_bytes().to_vec())
            }
            // past_key_values.*: [batch 1, kv_heads, 0 past tokens, head_dim]
            _ => {
                let shape =
                    spec.shape.iter().enumerate().map(|(i, &d)| if i == 0 { 1 } else { d.max(0) as usize }).collect();
                raw(&spec.name, spec.datatype, shape, vec![])
            }
        })
        .collect()
}

/// Writes `model` as `work/model.onnx` and loads it (the tokenizer beside it).
fn write_and_load(model: &ModelProto, work: &Path) -> Result<LoadedModel, EngineError> {
    let path = work.join("model.onnx");
    let bytes = lmaas_onnx::encode(model);
    std::fs::write(&path, &bytes).map_err(io)?;
    LoadedModel::load(&path, &ExecutionProviders::cpu(), bytes.len() as u64)
}

/// Copies the files beside the source model (tokenizer, configs) next to the new model.
fn copy_companions(source_file: &Path, dest: &Path) -> Result<(), EngineError> {
    let dir = source_file.parent().unwrap_or(Path::new("."));
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path: PathBuf = entry.map_err(io)?.path();
        let companion = ["tokenizer.json", "lmaas.json"].iter().any(|n| path.file_name().is_some_and(|f| f == *n));
        if companion {
            std::fs::copy(&path, dest.join(path.file_name().expect("a file name"))).map_err(io)?;
        }
    }
    Ok(())
}

/// Median milliseconds per call at batch 1 and 32, source and quantized alternating.
fn measure_latency(source: &LoadedModel, quantized: &LoadedModel, probe: &Probe) -> Result<Vec<Latency>, EngineError> {
    if let Probe::Generation { config, evaluation, .. } = probe {
        // Milliseconds per generated token (prompt included), 16 tokens on four prompts.
        let params = GenerateParams { max_tokens: 16, sampling: Sampling::GREEDY, stop: vec![] };
        let mut times = (Vec::new(), Vec::new());
        let per_token = |model: &LoadedModel, prompt: &[u32]| -> Result<f64, EngineError> {
            let started = Instant::now();
            let answer = model.generate(prompt, &params, config, crate::generate::keep_going)?;
            Ok(started.elapsed().as_secs_f64() * 1e3 / answer.tokens.len().max(1) as f64)
        };
        for prompt in evaluation.iter().take(4) {
            times.0.push(per_token(source, prompt)?);
            times.1.push(per_token(quantized, prompt)?);
        }
        return Ok(vec![Latency { batch: 1, source_ms: median(times.0), quantized_ms: median(times.1) }]);
    }
    let Probe::Embeddings { config, evaluation, .. } = probe else {
        let Probe::Tensors { evaluation, outputs, .. } = probe else { unreachable!() };
        let mut times = (Vec::new(), Vec::new());
        for inputs in evaluation.iter().take(16) {
            times.0.push(time(|| source.run(inputs, outputs).map(drop))?);
            times.1.push(time(|| quantized.run(inputs, outputs).map(drop))?);
        }
        return Ok(vec![Latency { batch: 1, source_ms: median(times.0), quantized_ms: median(times.1) }]);
    };
    let mut latency = Vec::new();
    for batch in [1usize, 32] {
        let mut times = (Vec::new(), Vec::new());
        let rounds = if batch == 1 { 16 } else { 3 };
        for round in 0..rounds {
            let texts: Vec<String> =
                (0..batch).map(|i| evaluation[(round * batch + i) % evaluation.len()].clone()).collect();
            let input = EmbeddingInput::Texts(texts);
            times.0.push(time(|| source.embed(&input, config, None).map(drop))?);
            times.1.push(time(|| quantized.embed(&input, config, None).map(drop))?);
        }
        latency.push(Latency { batch, source_ms: median(times.0), quantized_ms: median(times.1) });
    }
    Ok(latency)
}

fn time(mut run: impl FnMut() -> Result<(), EngineError>) -> Result<f64, EngineError> {
    let started = Instant::now();
    run()?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn io(e: std::io::Error) -> EngineError {
    EngineError::Internal(format!("quantize work files: {e}"))
}
