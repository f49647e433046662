//! Text embeddings on a loaded model: tokenization with the version's `tokenizer.json`, padding to
//! the longest input of the batch, pooling with the attention mask, and L2 normalization.

use lmaas_core::{DataType, Tensor, TensorData};
use serde::Deserialize;

use crate::{EngineError, LoadedModel};

/// How a model's outputs become embeddings: the version's `lmaas.json`, stored in its manifest's
/// `config.task` at commit. Defaults fit sentence-transformers models.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    #[serde(default)]
    pub pooling: Pooling,
    #[serde(default = "yes")]
    pub normalize: bool,
    /// Longer texts are truncated to this many tokens (special tokens included).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// The output holding token states (`[batch, tokens, hidden]`) or pooled vectors
    /// (`[batch, hidden]`); default: the model's first output.
    #[serde(default)]
    pub output: Option<String>,
    /// Sizes the model can be shortened to (Matryoshka training); `dimensions` is refused otherwise.
    #[serde(default)]
    pub dimensions: Vec<usize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    #[default]
    Mean,
    Cls,
}

fn yes() -> bool {
    true
}

fn default_max_tokens() -> usize {
    256
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        EmbeddingConfig { pooling: Pooling::Mean, normalize: true, max_tokens: 256, output: None, dimensions: vec![] }
    }
}

impl EmbeddingConfig {
    /// The config stored in a manifest's `config.task`, or the defaults.
    pub fn from_manifest_config(config: &serde_json::Value) -> Result<Self, String> {
        match config.get("task") {
            None | Some(serde_json::Value::Null) => Ok(EmbeddingConfig::default()),
            Some(task) => serde_json::from_value(task.clone()).map_err(|e| e.to_string()),
        }
    }
}

/// What to embed: texts (tokenized here) or token ids (used as given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddingInput {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

/// A batch of inputs as the model's token tensors.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `input_ids`, `attention_mask`, `token_type_ids`: what the model's signature asks for.
    pub tensors: Vec<Tensor>,
    /// `[batch, seq]`: 1 for real tokens, 0 for padding.
    pub mask: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
    /// Real tokens in the batch.
    pub tokens: usize,
}

/// Embeddings in input order, and how many tokens they took.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

impl LoadedModel {
    /// Embeds `input`, shortened to `dimensions` when asked (and allowed by `config`).
    pub fn embed(
        &self,
        input: &EmbeddingInput,
        config: &EmbeddingConfig,
        dimensions: Option<usize>,
    ) -> Result<Embeddings, EngineError> {
        let (vectors, tokens) = self.embed_rows(input, config, dimensions)?;
        Ok(Embeddings { vectors, prompt_tokens: tokens.iter().sum() })
    }

    /// `embed`, with the number of tokens of each input.
    pub(crate) fn embed_rows(
        &self,
        input: &EmbeddingInput,
        config: &EmbeddingConfig,
        dimensions: Option<usize>,
    ) -> Result<(Vec<Vec<f32>>, Vec<usize>), EngineError> {
        if let Some(d) = dimensions {
            if !config.dimensions.contains(&d) {
                let allowed =
                    if config.dimensions.is_empty() { "none".to_string() } else { format!("{:?}", config.dimensions) };
                return Err(EngineError::Run(format!(
                    "'dimensions' {d} is not supported by this model (supported: {allowed})"
                )));
            }
        }
        let TokenBatch { tensors, mask, batch, seq, .. } = self.token_tensors(input, config.max_tokens)?;
        let (_, outputs) = self.signature().map_err(EngineError::Internal)?;
        let output = match &config.output {
            Some(name) => name.clone(),
            None => outputs
                .first()
                .map(|o| o.name.clone())
                .ok_or_else(|| EngineError::Internal("the model has no outputs".into()))?,
        };
        let result = self.run(&tensors, std::slice::from_ref(&output))?.remove(0);
        let states = floats(&result)?;
        let mut vectors = match result.shape.as_slice() {
            [b, t, h] if *b == batch && *t == seq => pool(&states, &mask, batch, seq, *h, config.pooling),
            [b, h] if *b == batch => states.chunks(*h).map(<[f32]>::to_vec).collect(),
            other => {
                return Err(EngineError::Internal(format!(
                    "output '{output}' has shape {other:?}, not [batch, tokens, hidden] or [batch, hidden]"
                )))
            }
        };
        for vector in &mut vectors {
            if let Some(d) = dimensions {
                vector.truncate(d);
            }
            if config.normalize {
                normalize(vector);
            }
        }
        let tokens = (0..batch).map(|b| mask[b * seq..(b + 1) * seq].iter().filter(|m| **m != 0).count()).collect();
        Ok((vectors, tokens))
    }

    /// The model's token inputs for `input`, padded to the longest row.
    pub fn token_tensors(&self, input: &EmbeddingInput, max_tokens: usize) -> Result<TokenBatch, EngineError> {
        let rows = self.token_rows(input, max_tokens)?;
        let (batch, seq) = (rows.len(), rows.iter().map(|r| r.0.len()).max().unwrap_or(0));
        let mut ids = vec![self.pad_id() as i64; batch * seq];
        let mut mask = vec![0i64; batch * seq];
        let mut types = vec![0i64; batch * seq];
        for (b, (row_ids, row_types)) in rows.iter().enumerate() {
            for (t, (&id, &ty)) in row_ids.iter().zip(row_types).enumerate() {
                ids[b * seq + t] = i64::from(id);
                mask[b * seq + t] = 1;
                types[b * seq + t] = i64::from(ty);
            }
        }
        let prompt_tokens = rows.iter().map(|r| r.0.len()).sum();
        let (inputs, _) = self.signature().map_err(EngineError::Internal)?;
        let tensors = inputs
            .iter()
            .map(|spec| {
                let data = match spec.name.as_str() {
                    "input_ids" => &ids,
                    "attention_mask" => &mask,
                    "token_type_ids" => &types,
                    other => {
                        return Err(EngineError::Internal(format!(
                            "embeddings model input '{other}' is not one lmaas can fill"
                        )))
                    }
                };
                let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
                Ok(Tensor {
                    name: spec.name.clone(),
                    datatype: DataType::Int64,
                    shape: vec![batch, seq],
                    data: TensorData::Raw(bytes),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TokenBatch { tensors, mask, batch, seq, tokens: prompt_tokens })
    }

    /// Token ids per text, truncated to `max_tokens`: what batch jobs measure their batches by
    /// before embedding them as `EmbeddingInput::Tokens`.
    pub fn tokenize(&self, texts: &[String], max_tokens: usize) -> Result<Vec<Vec<u32>>, EngineError> {
        let rows = self.token_rows(&EmbeddingInput::Texts(texts.to_vec()), max_tokens)?;
        Ok(rows.into_iter().map(|(ids, _)| ids).collect())
    }

    /// Token ids and type ids per input: texts through the tokenizer (truncated to `max_tokens`),
    /// token inputs checked against the vocabulary and the limit.
    fn token_rows(&self, input: &EmbeddingInput, max_tokens: usize) -> Result<Vec<TokenRow>, EngineError> {
        let tokenizer =
            self.tokenizer().ok_or_else(|| EngineError::Internal("the model has no tokenizer.json".into()))?;
        let mut tokenizer = tokenizer.lock().map_err(|_| EngineError::Internal("tokenizer lock poisoned".into()))?;
        match input {
            EmbeddingInput::Texts(texts) => {
                let truncation = tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() };
                tokenizer.with_truncation(Some(truncation)).map_err(|e| EngineError::Internal(e.to_string()))?;
                let started = std::time::Instant::now();
                let encodings = tokenizer
                    .encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
                    .map_err(|e| EngineError::Run(format!("tokenizing the input failed: {e}")))?;
                metrics::histogram!(lmaas_core::metrics::TOKENIZATION_DURATION, self.identity())
                    .record(started.elapsed().as_secs_f64());
                Ok(encodings.into_iter().map(|e| (e.get_ids().to_vec(), e.get_type_ids().to_vec())).collect())
            }
            EmbeddingInput::Tokens(rows) => {
                let vocabulary = tokenizer.get_vocab_size(true) as u32;
                rows.iter()
                    .enumerate()
                    .map(|(i, row)| {
                        if row.len() > max_tokens {
                            return Err(EngineError::Run(format!(
                                "input[{i}] has {} tokens; this model takes at most {max_tokens}",
                                row.len()
                            )));
                        }
                        if let Some(bad) = row.iter().find(|&&id| id >= vocabulary) {
                            return Err(EngineError::Run(format!(
                                "input[{i}] has token id {bad}, outside the vocabulary of {vocabulary}"
                            )));
                        }
                        Ok((row.clone(), vec![0; row.len()]))
                    })
                    .collect()
            }
        }
    }
}

/// One input's token ids and token type ids.
type TokenRow = (Vec<u32>, Vec<u32>);

fn floats(tensor: &Tensor) -> Result<Vec<f32>, EngineError> {
    match (&tensor.data, tensor.datatype) {
        (TensorData::Raw(bytes), DataType::Fp32) => {
            Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
        }
        _ => Err(EngineError::Internal(format!("output '{}' is {}, not FP32", tensor.name, tensor.datatype))),
    }
}

/// Pools `[batch, seq, hidden]` token states into one vector per input.
pub fn pool(states: &[f32], mask: &[i64], batch: usize, seq: usize, hidden: usize, pooling: Pooling) -> Vec<Vec<f32>> {
    (0..batch)
        .map(|b| match pooling {
            Pooling::Cls => states[b * seq * hidden..b * seq * hidden + hidden].to_vec(),
            Pooling::Mean => {
                let mut sum = vec![0f32; hidden];
                let mut count = 0f32;
                for t in 0..seq {
                    if mask[b * seq + t] != 0 {
                        let token = &states[(b * seq + t) * hidden..(b * seq + t + 1) * hidden];
                        sum.iter_mut().zip(token).for_each(|(s, v)| *s += v);
                        count += 1.0;
                    }
                }
                sum.iter().map(|s| s / count.max(1.0)).collect()
            }
        })
        .collect()
}

/// Scales to unit length (a zero vector stays zero).
pub fn normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    vector.iter_mut().for_each(|v| *v /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_ignores_padding_and_cls_takes_the_first_token() {
        // batch 1, seq 3 (last is padding), hidden 2
        let states = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
        let mask = [1, 1, 0];
        assert_eq!(pool(&states, &mask, 1, 3, 2, Pooling::Mean), vec![vec![2.0, 3.0]]);
        assert_eq!(pool(&states, &mask, 1, 3, 2, Pooling::Cls), vec![vec![1.0, 2.0]]);
    }

    #[test]
    fn normalized_vectors_have_unit_length() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut zero = vec![0.0, 0.0];
        normalize(&mut zero);
        assert_eq!(zero, vec![0.0, 0.0]);
    }

    #[test]
    fn the_task_config_comes_from_the_manifest_with_defaults() {
        let config =
            EmbeddingConfig::from_manifest_config(&serde_json::json!({"task": {"pooling": "cls", "max_tokens": 128}}))
                .unwrap();
        assert_eq!((config.pooling, config.max_tokens, config.normalize), (Pooling::Cls, 128, true));
        assert_eq!(EmbeddingConfig::from_manifest_config(&serde_json::Value::Null).unwrap().max_tokens, 256);
        assert!(EmbeddingConfig::from_manifest_config(&serde_json::json!({"task": {"pooling": "max"}})).is_err());
    }
}
