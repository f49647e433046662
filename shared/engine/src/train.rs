//! Training a classifier head on feature vectors (raw, or an embeddings model's sentence
//! embeddings): softmax regression or one hidden ReLU layer, cross-entropy, mini-batch AdamW,
//! early stopping on a held-out split. Seeded and single-threaded, so the same data and config
//! give the same weights bit for bit. The result exports as ONNX through lmaas_onnx::classifier.

use std::collections::BTreeSet;

use lmaas_onnx::classifier::ClassifierHead;
use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::EngineError;

/// Hyperparameters; the defaults suit a few thousand rows of tens to hundreds of features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// `linear` (softmax regression) or `mlp` (one hidden layer).
    pub head: String,
    pub hidden: usize,
    pub learning_rate: f32,
    pub batch_size: usize,
    pub max_epochs: usize,
    /// Epochs without a better validation loss before stopping.
    pub patience: usize,
    pub validation_fraction: f32,
    pub weight_decay: f32,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            head: "mlp".into(),
            hidden: 64,
            learning_rate: 3e-3,
            batch_size: 32,
            max_epochs: 300,
            patience: 20,
            validation_fraction: 0.15,
            weight_decay: 1e-4,
            seed: 0,
        }
    }
}

impl TrainConfig {
    pub fn check(&self) -> Result<(), String> {
        let problem = if !["linear", "mlp"].contains(&self.head.as_str()) {
            format!("head must be linear or mlp, not '{}'", self.head)
        } else if !(1..=4096).contains(&self.hidden) {
            "hidden must be 1 to 4096".into()
        } else if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            "learning_rate must be in (0, 1]".into()
        } else if !(1..=4096).contains(&self.batch_size) {
            "batch_size must be 1 to 4096".into()
        } else if !(1..=10_000).contains(&self.max_epochs) {
            "max_epochs must be 1 to 10000".into()
        } else if !(self.validation_fraction > 0.0 && self.validation_fraction < 0.5) {
            "validation_fraction must be in (0, 0.5)".into()
        } else if !(0.0..1.0).contains(&self.weight_decay) {
            "weight_decay must be in [0, 1)".into()
        } else {
            return Ok(());
        };
        Err(problem)
    }
}

/// A train_classifier job's `params`: where to publish (`target`, optional `tag`) and the
/// `TrainConfig` fields, all in one object.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainParams {
    pub target: String,
    pub tag: Option<String>,
    pub config: TrainConfig,
}

impl TrainParams {
    /// Parses and checks `params`, naming the field that is wrong.
    pub fn parse(params: &serde_json::Value) -> Result<Self, String> {
        let mut fields = params.as_object().cloned().unwrap_or_default();
        fields.remove("chunk_items"); // pinned on every job by the runner
        let target = match fields.remove("target") {
            Some(serde_json::Value::String(target)) => target,
            Some(_) => return Err("params.target must be a model name".into()),
            None => return Err("params.target is required: the name of the model to publish".into()),
        };
        let tag = match fields.remove("tag") {
            Some(serde_json::Value::String(tag)) => Some(tag),
            Some(_) => return Err("params.tag must be an alias name".into()),
            None => None,
        };
        let config: TrainConfig = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| format!("invalid train_classifier params: {e}"))?;
        config.check().map_err(|e| format!("params.{e}"))?;
        Ok(TrainParams { target, tag, config })
    }
}

/// Labeled feature vectors.
#[derive(Debug, Clone, Default)]
pub struct LabeledData {
    pub features: Vec<Vec<f32>>,
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Epoch {
    pub epoch: usize,
    pub train_loss: f64,
    pub validation_loss: f64,
    pub validation_accuracy: f64,
}

/// What training did, stored in the new model's manifest (`config.training`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainReport {
    pub config: TrainConfig,
    pub classes: Vec<String>,
    pub features: usize,
    pub train_rows: usize,
    pub validation_rows: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub train_accuracy: f64,
    pub validation_accuracy: f64,
    pub loss_curve: Vec<Epoch>,
}

/// Trains a head on `data`. `progress` hears each epoch and answers whether to go on.
pub fn train(
    data: &LabeledData,
    config: &TrainConfig,
    progress: &mut dyn FnMut(usize, usize, &str) -> bool,
) -> Result<(ClassifierHead, TrainReport), EngineError> {
    config.check().map_err(EngineError::Run)?;
    let (rows, width) = check_data(data)?;
    let classes: Vec<String> = data.labels.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
    if classes.len() < 2 {
        return Err(EngineError::Run(format!("training needs at least 2 classes; the input has {}", classes.len())));
    }
    let targets: Vec<usize> = data.labels.iter().map(|l| classes.binary_search(l).expect("a known class")).collect();
    let mut rng = Rng(config.seed ^ 0x5DEE_CE66_D1CE_4E5B);
    let mut order: Vec<usize> = (0..rows).collect();
    rng.shuffle(&mut order);
    let validation_rows = ((rows as f32 * config.validation_fraction).round() as usize).clamp(1, rows - 1);
    let (validation, training) = order.split_at(validation_rows);
    let (mean, std) = standardization(&data.features, training, width);
    let standardized: Vec<Vec<f32>> =
        data.features.iter().map(|x| x.iter().zip(&mean).zip(&std).map(|((v, m), s)| (v - m) / s).collect()).collect();

    let sizes = match config.head.as_str() {
        "linear" => vec![width, classes.len()],
        _ => vec![width, config.hidden, classes.len()],
    };
    let mut net = Network::new(&sizes, &mut rng);
    let mut best = (f64::INFINITY, 0usize, net.clone());
    let mut curve = Vec::new();
    let mut training_order = training.to_vec();
    let mut step = 0u64;
    for epoch in 1..=config.max_epochs {
        rng.shuffle(&mut training_order);
        let mut loss_sum = 0.0;
        for batch in training_order.chunks(config.batch_size) {
            step += 1;
            loss_sum += net.train_batch(&standardized, &targets, batch, config, step) * batch.len() as f64;
        }
        let train_loss = loss_sum / training.len() as f64;
        let (validation_loss, validation_accuracy) = net.evaluate(&standardized, &targets, validation);
        curve.push(Epoch { epoch, train_loss, validation_loss, validation_accuracy });
        if validation_loss < best.0 {
            best = (validation_loss, epoch, net.clone());
        }
        let message = format!("epoch {epoch}: train loss {train_loss:.4}, validation loss {validation_loss:.4}");
        if !progress(epoch, config.max_epochs, &message) {
            return Err(EngineError::Cancelled);
        }
        if epoch - best.1 >= config.patience {
            break;
        }
    }
    let (_, best_epoch, net) = best;
    let (_, train_accuracy) = net.evaluate(&standardized, &targets, training);
    let (_, validation_accuracy) = net.evaluate(&standardized, &targets, validation);
    let head = ClassifierHead {
        mean,
        std,
        layers: net.layers.iter().map(|l| (l.weight.clone(), l.bias.clone())).collect(),
        classes: classes.clone(),
    };
    let report = TrainReport {
        config: config.clone(),
        classes,
        features: width,
        train_rows: training.len(),
        validation_rows,
        epochs_run: curve.len(),
        best_epoch,
        train_accuracy,
        validation_accuracy,
        loss_curve: curve,
    };
    Ok((head, report))
}

fn check_data(data: &LabeledData) -> Result<(usize, usize), EngineError> {
    let rows = data.features.len();
    if rows != data.labels.len() {
        return Err(EngineError::Internal(format!("{rows} feature rows but {} labels", data.labels.len())));
    }
    if rows < 10 {
        return Err(EngineError::Run(format!("training needs at least 10 labeled rows; the input has {rows}")));
    }
    let width = data.features[0].len();
    if width == 0 {
        return Err(EngineError::Run("the feature vectors are empty".into()));
    }
    for (i, row) in data.features.iter().enumerate() {
        if row.len() != width {
            return Err(EngineError::Run(format!("row {} has {} features; the first has {width}", i + 1, row.len())));
        }
        if row.iter().any(|v| !v.is_finite()) {
            return Err(EngineError::Run(format!("row {} has a feature that is not a finite number", i + 1)));
        }
    }
    Ok((rows, width))
}

/// Per-feature mean and standard deviation over the training rows (a constant feature gets 1).
fn standardization(features: &[Vec<f32>], training: &[usize], width: usize) -> (Vec<f32>, Vec<f32>) {
    let n = training.len() as f64;
    let mut mean = vec![0f64; width];
    for &i in training {
        mean.iter_mut().zip(&features[i]).for_each(|(m, v)| *m += *v as f64 / n);
    }
    let mut variance = vec![0f64; width];
    for &i in training {
        variance.iter_mut().zip(&features[i]).zip(&mean).for_each(|((s, v), m)| *s += (*v as f64 - m).powi(2) / n);
    }
    let std = variance.iter().map(|v| if v.sqrt() < 1e-6 { 1.0 } else { v.sqrt() as f32 }).collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

#[derive(Clone)]
struct Layer {
    inputs: usize,
    outputs: usize,
    /// `[inputs, outputs]`, row-major.
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// Adam's first and second moments, weight then bias.
    m: Vec<f32>,
    v: Vec<f32>,
}

#[derive(Clone)]
struct Network {
    layers: Vec<Layer>,
}

impl Network {
    /// He-uniform weights (ReLU), zero biases.
    fn new(sizes: &[usize], rng: &mut Rng) -> Self {
        let layers = sizes
            .windows(2)
            .map(|pair| {
                let (inputs, outputs) = (pair[0], pair[1]);
                let limit = (6.0 / inputs as f32).sqrt();
                let weight = (0..inputs * outputs).map(|_| (rng.uniform() * 2.0 - 1.0) * limit).collect();
                let params = inputs * outputs + outputs;
                Layer { inputs, outputs, weight, bias: vec![0.0; outputs], m: vec![0.0; params], v: vec![0.0; params] }
            })
            .collect();
        Network { layers }
    }

    /// Activations of every layer for one row (the last is the logits).
    fn forward(&self, x: &[f32]) -> Vec<Vec<f32>> {
        let mut activations = vec![x.to_vec()];
        for (index, layer) in self.layers.iter().enumerate() {
            let input = activations.last().expect("the input at least");
            let mut out = layer.bias.clone();
            for (i, xi) in input.iter().enumerate() {
                if *xi != 0.0 {
                    let row = &layer.weight[i * layer.outputs..(i + 1) * layer.outputs];
                    out.iter_mut().zip(row).for_each(|(o, w)| *o += xi * w);
                }
            }
            if index + 1 < self.layers.len() {
                out.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            activations.push(out);
        }
        activations
    }

    /// One AdamW step on the mean cross-entropy of `batch`; returns that loss.
    fn train_batch(&mut self, x: &[Vec<f32>], y: &[usize], batch: &[usize], config: &TrainConfig, step: u64) -> f64 {
        let mut gradients: Vec<Vec<f32>> = self.layers.iter().map(|l| vec![0.0; l.m.len()]).collect();
        let mut loss = 0.0;
        for &row in batch {
            let activations = self.forward(&x[row]);
            let probabilities = softmax(activations.last().expect("logits"));
            loss -= (probabilities[y[row]].max(1e-12) as f64).ln();
            // dLoss/dlogits = p - onehot.
            let mut delta: Vec<f32> = probabilities;
            delta[y[row]] -= 1.0;
            for index in (0..self.layers.len()).rev() {
                let layer = &self.layers[index];
                let input = &activations[index];
                let grad = &mut gradients[index];
                for (i, xi) in input.iter().enumerate() {
                    if *xi != 0.0 {
                        let row = &mut grad[i * layer.outputs..(i + 1) * layer.outputs];
                        row.iter_mut().zip(&delta).for_each(|(g, d)| *g += xi * d);
                    }
                }
                let bias_grad = &mut grad[layer.inputs * layer.outputs..];
                bias_grad.iter_mut().zip(&delta).for_each(|(g, d)| *g += d);
                if index > 0 {
                    let mut previous = vec![0f32; layer.inputs];
                    for (i, p) in previous.iter_mut().enumerate() {
                        let row = &layer.weight[i * layer.outputs..(i + 1) * layer.outputs];
                        // ReLU's derivative: the hidden activation was positive.
                        if input[i] > 0.0 {
                            *p = row.iter().zip(&delta).map(|(w, d)| w * d).sum();
                        }
                    }
                    delta = previous;
                }
            }
        }
        let scale = 1.0 / batch.len() as f32;
        let (beta1, beta2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let correction1 = 1.0 - beta1.powi(step as i32);
        let correction2 = 1.0 - beta2.powi(step as i32);
        for (layer, grad) in self.layers.iter_mut().zip(&gradients) {
            let weights = layer.inputs * layer.outputs;
            for (j, g) in grad.iter().enumerate() {
                let g = g * scale;
                layer.m[j] = beta1 * layer.m[j] + (1.0 - beta1) * g;
                layer.v[j] = beta2 * layer.v[j] + (1.0 - beta2) * g * g;
                let update =
                    config.learning_rate * (layer.m[j] / correction1) / ((layer.v[j] / correction2).sqrt() + eps);
                if j < weights {
                    // Decoupled weight decay, on weights only.
                    layer.weight[j] -= update + config.learning_rate * config.weight_decay * layer.weight[j];
                } else {
                    layer.bias[j - weights] -= update;
                }
            }
        }
        loss / batch.len() as f64
    }

    /// Mean cross-entropy and accuracy over `rows`.
    fn evaluate(&self, x: &[Vec<f32>], y: &[usize], rows: &[usize]) -> (f64, f64) {
        let (mut loss, mut correct) = (0.0, 0usize);
        for &row in rows {
            let probabilities = softmax(self.forward(&x[row]).last().expect("logits"));
            loss -= (probabilities[y[row]].max(1e-12) as f64).ln();
            let predicted = argmax(&probabilities);
            correct += usize::from(predicted == y[row]);
        }
        (loss / rows.len() as f64, correct as f64 / rows.len() as f64)
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let exp: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

pub fn argmax(values: &[f32]) -> usize {
    values.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, v)| if *v > best.1 { (i, *v) } else { best }).0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Gaussian-ish blobs: any head separates them, and the same seed gives the same weights.
    fn blobs() -> LabeledData {
        let mut rng = Rng(7);
        let mut data = LabeledData::default();
        for i in 0..200 {
            let class = i % 2;
            let center = if class == 0 { -2.0 } else { 2.0 };
            data.features.push((0..3).map(|_| center + rng.uniform() * 2.0 - 1.0).collect());
            data.labels.push(["cat", "dog"][class].to_string());
        }
        data
    }

    #[test]
    fn training_separates_blobs_deterministically() {
        let config = TrainConfig { max_epochs: 30, ..Default::default() };
        let (head, report) = train(&blobs(), &config, &mut |_, _, _| true).unwrap();
        assert_eq!(report.classes, vec!["cat", "dog"]);
        assert!(report.validation_accuracy == 1.0 && report.train_accuracy == 1.0, "{report:?}");
        assert!(report.loss_curve.first().unwrap().train_loss > report.loss_curve.last().unwrap().train_loss);
        let (again, _) = train(&blobs(), &config, &mut |_, _, _| true).unwrap();
        assert_eq!(head, again, "seeded: bit for bit the same");
        let other = TrainConfig { seed: 1, ..config };
        assert_ne!(train(&blobs(), &other, &mut |_, _, _| true).unwrap().0, head);
    }

    #[test]
    fn bad_data_and_config_are_named() {
        let mut data = blobs();
        data.features[4].push(1.0);
        let error = train(&data, &TrainConfig::default(), &mut |_, _, _| true).unwrap_err().to_string();
        assert!(error.contains("row 5 has 4 features; the first has 3"), "{error}");
        let one_class = LabeledData { features: vec![vec![1.0]; 20], labels: vec!["a".into(); 20] };
        let error = train(&one_class, &TrainConfig::default(), &mut |_, _, _| true).unwrap_err().to_string();
        assert!(error.contains("at least 2 classes"), "{error}");
        let bad = TrainConfig { head: "forest".into(), ..Default::default() };
        assert!(bad.check().unwrap_err().contains("linear or mlp"));
    }
}
