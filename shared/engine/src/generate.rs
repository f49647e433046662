//! Text generation on decoder models: the chat template, the KV-cache decoding loop, sampling,
//! stop sequences and incremental detokenization for streaming.
//!
//! A generation model (manifest task `generation`) takes `input_ids`, `seqlens_k` (total length
//! − 1 per sequence), `total_sequence_length` and `past_key_values.{i}.key/value`
//! (`[batch, kv_heads, past, head_dim]`), and returns `logits` for the last position and
//! `present.{i}.key/value`: the layout of ONNX Runtime's GroupQueryAttention, which
//! `samples/models/make_smollm2.py` writes.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use ort::session::SessionInputValue;
use ort::value::{DynValue, Tensor as OrtTensor};
use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::{EngineError, LoadedModel};

/// How a decoder model generates: its version's `lmaas.json` `generation` section, kept in the
/// manifest's `config.task.generation` at commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationConfig {
    /// A Jinja chat template (Hugging Face's convention: `messages`, `add_generation_prompt`).
    pub chat_template: String,
    /// Tokens that end a generation (not part of the answer).
    pub eos_token_ids: Vec<u32>,
    #[serde(default)]
    pub bos_token: Option<String>,
    /// Prompt plus generated tokens may not exceed this.
    pub context_length: usize,
    /// The default and the most one request may ask for.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Where the weights came from (informational).
    #[serde(default)]
    pub source: Option<String>,
}

fn default_max_new_tokens() -> usize {
    1024
}

impl GenerationConfig {
    /// The config in a manifest's `config.task.generation`, if the model has one.
    pub fn from_manifest_config(config: &serde_json::Value) -> Result<Option<Self>, String> {
        match config.get("task").and_then(|t| t.get("generation")) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(generation) => {
                let config: GenerationConfig = serde_json::from_value(generation.clone()).map_err(|e| e.to_string())?;
                if config.context_length == 0 || config.max_new_tokens == 0 {
                    return Err("generation.context_length and generation.max_new_tokens must be positive".into());
                }
                Ok(Some(config))
            }
        }
    }

    /// The prompt text for a conversation, ending where the assistant's answer starts.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        let context = minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos_token.clone().unwrap_or_default(),
        };
        env.render_str(&self.chat_template, context)
            .map_err(|e| EngineError::Run(format!("the chat template could not render these messages: {e}")))
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// How the next token is chosen. `temperature` 0 is greedy (deterministic); otherwise tokens are
/// drawn from the softmax at that temperature, restricted to the `top_k` most likely (0: all) and
/// to the smallest set whose probability reaches `top_p`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    /// The same seed, prompt and parameters give the same tokens; `None` draws a fresh seed.
    pub seed: Option<u64>,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling { temperature: 0.0, top_p: 1.0, top_k: 0, seed: None };
}

/// What one generation asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Text that ends the answer where it first appears (it is not included).
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` (or the context length) was reached.
    Length,
    /// The consumer stopped listening (a client that disconnected).
    Cancelled,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    /// Generated tokens, the end-of-sequence token excluded.
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish_reason: FinishReason,
}

/// The KV cache of one sequence: one value per `past_key_values.*` input, in input order.
pub struct Sequence {
    cache: Vec<DynValue>,
    length: usize,
}

impl Sequence {
    /// Tokens seen so far (prompt and generated).
    pub fn len(&self) -> usize {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }
}

/// The cache inputs and outputs of a decoder model, found from its signature at first use.
#[derive(Debug, Clone)]
pub(crate) struct KvLayout {
    past: Vec<String>,
    present: Vec<String>,
    kv_heads: usize,
    head_dim: usize,
}

impl KvLayout {
    pub(crate) fn of(session: &ort::session::Session) -> Result<Self, EngineError> {
        let mut past = Vec::new();
        let mut shape = None;
        for input in session.inputs() {
            if let Some(rest) = input.name().strip_prefix("past_key_values.") {
                past.push(input.name().to_string());
                if let ort::value::ValueType::Tensor { shape: s, .. } = input.dtype() {
                    shape = Some(s.to_vec());
                }
                let _ = rest;
            }
        }
        let present: Vec<String> = past.iter().map(|p| p.replacen("past_key_values.", "present.", 1)).collect();
        let missing: Vec<&str> = ["input_ids", "seqlens_k", "total_sequence_length"]
            .into_iter()
            .filter(|name| !session.inputs().iter().any(|i| i.name() == *name))
            .chain(present.iter().map(String::as_str).filter(|p| !session.outputs().iter().any(|o| o.name() == *p)))
            .chain((!session.outputs().iter().any(|o| o.name() == "logits")).then_some("logits"))
            .collect();
        match shape {
            Some(shape) if missing.is_empty() && shape.len() == 4 && shape[1] > 0 && shape[3] > 0 => {
                Ok(KvLayout { past, present, kv_heads: shape[1] as usize, head_dim: shape[3] as usize })
            }
            _ => Err(EngineError::Load(format!(
                "not a decoder model lmaas can run: it needs input_ids, seqlens_k, total_sequence_length, \
                 past_key_values.* [batch, kv_heads, past, head_dim] and logits, present.* (missing: {})",
                if missing.is_empty() { "a fixed kv_heads/head_dim".to_string() } else { missing.join(", ") }
            ))),
        }
    }
}

impl LoadedModel {
    /// Whether the model has the decoder signature generation needs (checked at commit).
    pub fn check_decoder(&self) -> Result<(), EngineError> {
        self.kv_layout().map(|_| ())
    }

    /// Token ids of a prompt (special tokens written in the text, like `<|im_start|>`, included).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let tokenizer = self.tokenizer().ok_or_else(|| EngineError::Load("the model has no tokenizer.json".into()))?;
        let mut tokenizer = tokenizer.lock().map_err(|_| EngineError::Internal("tokenizer lock poisoned".into()))?;
        tokenizer.with_truncation(None).map_err(|e| EngineError::Internal(e.to_string()))?;
        let encoding = tokenizer.encode(text, false).map_err(|e| EngineError::Run(format!("tokenizing: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    fn decode(&self, tokens: &[u32]) -> Result<String, EngineError> {
        let tokenizer = self.tokenizer().ok_or_else(|| EngineError::Load("the model has no tokenizer.json".into()))?;
        let tokenizer = tokenizer.lock().map_err(|_| EngineError::Internal("tokenizer lock poisoned".into()))?;
        tokenizer.decode(tokens, true).map_err(|e| EngineError::Internal(format!("detokenizing: {e}")))
    }

    /// An empty sequence, ready for its prompt.
    pub fn new_sequence(&self) -> Result<Sequence, EngineError> {
        let layout = self.kv_layout()?;
        let cache = layout
            .past
            .iter()
            .map(|_| {
                OrtTensor::<f32>::from_array(([1usize, layout.kv_heads, 0, layout.head_dim], Vec::<f32>::new()))
                    .map(|t| t.into_dyn())
                    .map_err(|e| EngineError::Internal(format!("creating an empty KV cache: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Sequence { cache, length: 0 })
    }

    /// Feeds `tokens` to `sequence` (its prompt, or the last generated token) and returns the
    /// logits for the next token.
    pub fn forward(&self, sequence: &mut Sequence, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let layout = self.kv_layout()?;
        let total = sequence.length + tokens.len();
        let internal = |e: ort::Error| EngineError::Internal(format!("creating decoder inputs: {e}"));
        let ids = OrtTensor::<i64>::from_array((
            [1usize, tokens.len()],
            tokens.iter().map(|&t| t as i64).collect::<Vec<_>>(),
        ))
        .map_err(internal)?;
        let seqlens = OrtTensor::<i32>::from_array(([1usize], vec![total as i32 - 1])).map_err(internal)?;
        let total_length = OrtTensor::<i32>::from_array((Vec::<usize>::new(), vec![total as i32])).map_err(internal)?;
        let (cache, logits) =
            self.run_decoder(layout, ids.into_dyn(), seqlens.into_dyn(), total_length.into_dyn(), &mut sequence.cache)?;
        sequence.cache = cache;
        sequence.length = total;
        Ok(logits)
    }

    /// One decoder run: the step's inputs and the past cache (taken) in, the present cache and
    /// the logits of every row out. Shared by single and batched decoding.
    fn run_decoder(
        &self,
        layout: &KvLayout,
        ids: DynValue,
        seqlens: DynValue,
        total_length: DynValue,
        past: &mut Vec<DynValue>,
    ) -> Result<(Vec<DynValue>, Vec<f32>), EngineError> {
        let mut inputs: Vec<(std::borrow::Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(3 + layout.past.len());
        inputs.push(("input_ids".into(), ids.into()));
        inputs.push(("seqlens_k".into(), seqlens.into()));
        inputs.push(("total_sequence_length".into(), total_length.into()));
        for (name, value) in layout.past.iter().zip(past.drain(..)) {
            inputs.push((name.as_str().into(), value.into()));
        }
        let mut session = self.session()?;
        let started = std::time::Instant::now();
        let result = session.run(inputs);
        metrics::histogram!(lmaas_core::metrics::INFERENCE_DURATION, self.metric_labels())
            .record(started.elapsed().as_secs_f64());
        let mut outputs = result.map_err(|e| EngineError::Run(e.to_string()))?;
        let missing = |name: &str| EngineError::Internal(format!("ONNX Runtime returned no output '{name}'"));
        let present = layout
            .present
            .iter()
            .map(|name| outputs.remove(name.as_str()).ok_or_else(|| missing(name)))
            .collect::<Result<_, _>>()?;
        let logits = outputs.remove("logits").ok_or_else(|| missing("logits"))?;
        let (_, logits) =
            logits.try_extract_tensor::<f32>().map_err(|e| EngineError::Internal(format!("reading logits: {e}")))?;
        Ok((present, logits.to_vec()))
    }

    /// Generates from `prompt` (token ids) until an end token, a stop sequence or `max_tokens`.
    /// `on_text` receives the answer as it grows (text never split inside a character or inside
    /// a possible stop sequence); returning `Break` stops generation (`FinishReason::Cancelled`)
    /// and frees the sequence.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        config: &GenerationConfig,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generated, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::Run("the prompt is empty".into()));
        }
        let _active = ActiveSequence::start(self);
        let mut sequence = self.new_sequence()?;
        let mut decoding = Decoding::new(prompt.len(), params);
        let mut logits = self.forward(&mut sequence, prompt)?;
        loop {
            let step = decoding.step(&logits, config, |tokens| self.decode(tokens))?;
            if !step.delta.is_empty() && on_text(&step.delta).is_break() {
                tracing::info!(
                    generated = decoding.text.tokens.len(),
                    "generation stopped: the client stopped listening"
                );
                return Ok(decoding.finish(FinishReason::Cancelled));
            }
            if let Some(reason) = step.finish {
                let generated = decoding.finish(reason);
                let rest = &generated.text[step.shown..];
                if !rest.is_empty() {
                    let _ = on_text(rest);
                }
                return Ok(generated);
            }
            logits = self.forward(&mut sequence, &[step.token])?;
        }
    }

    /// Generates answers for many prompts with continuous batching: up to `max_active` sequences
    /// decode together, one session run per step for all of them; a sequence that finishes
    /// leaves between steps and the next prompt joins (prefilled alone, then merged into the
    /// batch's KV cache). `on_finish` hears each item (by index) as it ends, errors included;
    /// `Break` stops the whole batch (cancellation).
    pub fn generate_many(
        &self,
        items: &[(Vec<u32>, GenerateParams)],
        config: &GenerationConfig,
        max_active: usize,
        mut on_finish: impl FnMut(usize, Result<Generated, EngineError>) -> ControlFlow<()>,
    ) -> Result<(), EngineError> {
        let layout = self.kv_layout()?;
        let vocabulary_rows = |logits: &[f32], rows: usize| logits.len() / rows.max(1);
        let mut pending = 0..items.len();
        let mut rows: Vec<(usize, Decoding<'_>, ActiveSequence<'_>)> = Vec::new();
        let mut batch = KvBatch::default();
        loop {
            let mut joined = Vec::new();
            while rows.len() + joined.len() < max_active.max(1) {
                let Some(index) = pending.next() else { break };
                let (prompt, params) = &items[index];
                if prompt.is_empty() {
                    if on_finish(index, Err(EngineError::Run("the prompt is empty".into()))).is_break() {
                        return Err(EngineError::Cancelled);
                    }
                    continue;
                }
                let active = ActiveSequence::start(self);
                let mut sequence = self.new_sequence()?;
                let mut decoding = Decoding::new(prompt.len(), params);
                let step = self
                    .forward(&mut sequence, prompt)
                    .and_then(|logits| decoding.step(&logits, config, |tokens| self.decode(tokens)));
                let outcome = match step {
                    Err(e) => Some(Err(e)),
                    Ok(step) => match step.finish {
                        Some(reason) => Some(Ok(decoding.finish(reason))),
                        None => {
                            decoding.next = step.token;
                            joined.push(((index, decoding, active), sequence));
                            None
                        }
                    },
                };
                if let Some(outcome) = outcome {
                    if on_finish(index, outcome).is_break() {
                        return Err(EngineError::Cancelled);
                    }
                }
            }
            if !joined.is_empty() {
                let (new_rows, sequences): (Vec<_>, Vec<_>) = joined.into_iter().unzip();
                batch = batch.rebuild(layout, &(0..rows.len()).collect::<Vec<_>>(), &sequences)?;
                rows.extend(new_rows);
            }
            if rows.is_empty() {
                return Ok(());
            }
            let tokens: Vec<u32> = rows.iter().map(|(_, d, _)| d.next).collect();
            let logits = self.forward_batch(&mut batch, &tokens)?;
            let width = vocabulary_rows(&logits, rows.len());
            let mut kept = Vec::with_capacity(rows.len());
            for (row, (index, decoding, _)) in rows.iter_mut().enumerate() {
                let step = decoding.step(&logits[row * width..(row + 1) * width], config, |t| self.decode(t))?;
                match step.finish {
                    None => {
                        decoding.next = step.token;
                        kept.push(row);
                    }
                    Some(reason) => {
                        let generated = decoding.finish(reason);
                        if on_finish(*index, Ok(generated)).is_break() {
                            return Err(EngineError::Cancelled);
                        }
                    }
                }
            }
            if kept.len() < rows.len() {
                batch = batch.rebuild(layout, &kept, &[])?;
                let mut row = 0;
                rows.retain(|_| {
                    row += 1;
                    kept.contains(&(row - 1))
                });
            }
        }
    }

    /// One decoding step for every row of `batch`: feeds `tokens[row]`, returns the logits of
    /// all rows (`[rows × vocabulary]`).
    fn forward_batch(&self, batch: &mut KvBatch, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let layout = self.kv_layout()?;
        let internal = |e: ort::Error| EngineError::Internal(format!("creating decoder inputs: {e}"));
        let rows = tokens.len();
        let ids = OrtTensor::<i64>::from_array(([rows, 1usize], tokens.iter().map(|&t| t as i64).collect::<Vec<_>>()))
            .map_err(internal)?;
        // Each row's past length; the op writes the new token right after it.
        let seqlens =
            OrtTensor::<i32>::from_array(([rows], batch.lengths.iter().map(|&l| l as i32).collect::<Vec<_>>()))
                .map_err(internal)?;
        let total =
            OrtTensor::<i32>::from_array((Vec::<usize>::new(), vec![batch.buffer as i32 + 1])).map_err(internal)?;
        let (cache, logits) =
            self.run_decoder(layout, ids.into_dyn(), seqlens.into_dyn(), total.into_dyn(), &mut batch.cache)?;
        batch.cache = cache;
        batch.buffer += 1;
        batch.lengths.iter_mut().for_each(|l| *l += 1);
        Ok(logits)
    }

    /// Perplexity of `tokens` (exp of the mean negative log-likelihood of each token after the
    /// ones before it), fed one token at a time as decoding does.
    pub fn perplexity(&self, tokens: &[u32]) -> Result<f64, EngineError> {
        if tokens.len() < 2 {
            return Err(EngineError::Run("perplexity needs at least two tokens".into()));
        }
        let mut sequence = self.new_sequence()?;
        let mut nll = 0.0;
        for pair in tokens.windows(2) {
            let logits = self.forward(&mut sequence, &pair[..1])?;
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let log_sum = logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln() + max;
            nll += log_sum - logits[pair[1] as usize] as f64;
        }
        Ok((nll / (tokens.len() - 1) as f64).exp())
    }

    /// Sequences generating on this model right now.
    pub fn active_sequences(&self) -> usize {
        self.generating().load(Ordering::Relaxed)
    }
}

/// One sequence's answer in progress: sampling, text and stop checks, shared by single and
/// batched decoding.
struct Decoding<'p> {
    params: &'p GenerateParams,
    prompt_tokens: usize,
    sampler: Sampler,
    text: TextStream<'p>,
    /// The token to feed next (batched decoding).
    next: u32,
}

/// What one step decided: the token picked, the text now safe to show, and whether it ended
/// (`shown`: bytes of the answer shown so far, including `delta`).
struct Step {
    token: u32,
    delta: String,
    shown: usize,
    finish: Option<FinishReason>,
}

impl<'p> Decoding<'p> {
    fn new(prompt_tokens: usize, params: &'p GenerateParams) -> Self {
        Decoding {
            params,
            prompt_tokens,
            sampler: Sampler::new(&params.sampling),
            text: TextStream::new(&params.stop),
            next: 0,
        }
    }

    /// Picks the next token from `logits` (those after the last token fed).
    fn step(
        &mut self,
        logits: &[f32],
        config: &GenerationConfig,
        decode: impl Fn(&[u32]) -> Result<String, EngineError>,
    ) -> Result<Step, EngineError> {
        let fed = self.prompt_tokens + self.text.tokens.len();
        let end = |reason, shown| Step { token: 0, delta: String::new(), shown, finish: Some(reason) };
        if self.text.tokens.len() >= self.params.max_tokens || fed >= config.context_length {
            return Ok(end(FinishReason::Length, self.text.emitted));
        }
        let token = self.sampler.pick(logits);
        if config.eos_token_ids.contains(&token) {
            return Ok(end(FinishReason::Stop, self.text.emitted));
        }
        let (delta, stopped) = self.text.push(token, decode)?;
        let at_limit = self.text.tokens.len() >= self.params.max_tokens;
        let finish = if stopped {
            Some(FinishReason::Stop)
        } else if at_limit {
            Some(FinishReason::Length)
        } else {
            None
        };
        Ok(Step { token, delta, shown: self.text.emitted, finish })
    }

    fn finish(&mut self, reason: FinishReason) -> Generated {
        self.text.finish(reason);
        Generated {
            text: std::mem::take(&mut self.text.text),
            tokens: std::mem::take(&mut self.text.tokens),
            prompt_tokens: self.prompt_tokens,
            finish_reason: reason,
        }
    }
}

/// The KV caches of the rows of a decoding batch: one tensor per cache input,
/// `[rows, kv_heads, buffer, head_dim]`, each row valid up to its own length (GroupQueryAttention
/// reads `seqlens_k` to know where).
#[derive(Default)]
struct KvBatch {
    cache: Vec<DynValue>,
    lengths: Vec<usize>,
    buffer: usize,
}

impl KvBatch {
    /// A batch of the rows `keep` of this one followed by `sequences`, trimmed to the longest.
    /// Done only when membership changes: it copies every cache once.
    fn rebuild(self, layout: &KvLayout, keep: &[usize], sequences: &[Sequence]) -> Result<KvBatch, EngineError> {
        let lengths: Vec<usize> =
            keep.iter().map(|&r| self.lengths[r]).chain(sequences.iter().map(|s| s.length)).collect();
        let buffer = lengths.iter().copied().max().unwrap_or(0);
        let (heads, dim) = (layout.kv_heads, layout.head_dim);
        let rows = lengths.len();
        let read = |value: &DynValue| -> Result<(usize, Vec<f32>), EngineError> {
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| EngineError::Internal(format!("reading a KV cache: {e}")))?;
            Ok((shape[2] as usize, data.to_vec()))
        };
        let mut cache = Vec::with_capacity(layout.past.len());
        for c in 0..layout.past.len() {
            let mut out = vec![0f32; rows * heads * buffer * dim];
            // (source data, its buffer length, source row) for each target row
            let old = if keep.is_empty() { None } else { Some(read(&self.cache[c])?) };
            let mut sources: Vec<(std::borrow::Cow<'_, [f32]>, usize, usize)> = Vec::with_capacity(rows);
            if let Some((old_buffer, data)) = &old {
                sources.extend(keep.iter().map(|&r| (std::borrow::Cow::Borrowed(data.as_slice()), *old_buffer, r)));
            }
            for sequence in sequences {
                let (seq_buffer, data) = read(&sequence.cache[c])?;
                sources.push((std::borrow::Cow::Owned(data), seq_buffer, 0));
            }
            for (target, ((data, source_buffer, source_row), length)) in sources.iter().zip(&lengths).enumerate() {
                for head in 0..heads {
                    let from = ((source_row * heads + head) * source_buffer) * dim;
                    let to = ((target * heads + head) * buffer) * dim;
                    out[to..to + length * dim].copy_from_slice(&data[from..from + length * dim]);
                }
            }
            let tensor = OrtTensor::<f32>::from_array(([rows, heads, buffer, dim], out))
                .map_err(|e| EngineError::Internal(format!("building a KV batch: {e}")))?;
            cache.push(tensor.into_dyn());
        }
        Ok(KvBatch { cache, lengths, buffer })
    }
}

/// Counts a generation as active while it lives (the gauge and `active_sequences`).
struct ActiveSequence<'a>(&'a LoadedModel);

impl<'a> ActiveSequence<'a> {
    fn start(model: &'a LoadedModel) -> Self {
        let now = model.generating().fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(lmaas_core::metrics::ACTIVE_SEQUENCES, model.metric_labels()).set(now as f64);
        ActiveSequence(model)
    }
}

impl Drop for ActiveSequence<'_> {
    fn drop(&mut self) {
        let now = self.0.generating().fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!(lmaas_core::metrics::ACTIVE_SEQUENCES, self.0.metric_labels()).set(now as f64);
    }
}

/// Picks tokens from logits by a `Sampling`.
pub struct Sampler {
    sampling: Sampling,
    rng: Rng,
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(sampling: &Sampling) -> Self {
        let seed = sampling.seed.unwrap_or_else(|| {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new().build_hasher().finish()
        });
        Sampler { sampling: sampling.clone(), rng: Rng(seed), candidates: Vec::new() }
    }

    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        let greedy = || {
            logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &l)| if l > best.1 { (i, l) } else { best })
                .0 as u32
        };
        let Sampling { temperature, top_p, top_k, .. } = self.sampling;
        if temperature <= 0.0 || top_k == 1 {
            return greedy();
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Tokens more than 30 nats below the best have probability < 1e-13 relative to it:
        // dropping them changes nothing measurable and spares sorting the whole vocabulary.
        let floor = max - 30.0 * temperature;
        self.candidates.clear();
        self.candidates.extend(logits.iter().enumerate().filter(|(_, &l)| l >= floor).map(|(i, &l)| (l, i as u32)));
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if top_k > 0 && self.candidates.len() > top_k {
            self.candidates.select_nth_unstable_by(top_k - 1, by_logit);
            self.candidates.truncate(top_k);
        }
        self.candidates.sort_unstable_by(by_logit);
        let mut probabilities: Vec<f32> =
            self.candidates.iter().map(|(l, _)| ((l - max) / temperature).exp()).collect();
        let sum: f32 = probabilities.iter().sum();
        probabilities.iter_mut().for_each(|p| *p /= sum);
        let mut kept = probabilities.len();
        if top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, p) in probabilities.iter().enumerate() {
                cumulative += p;
                if cumulative >= top_p {
                    kept = i + 1;
                    break;
                }
            }
        }
        let mass: f32 = probabilities[..kept].iter().sum();
        let mut draw = self.rng.uniform() * mass;
        for (i, p) in probabilities[..kept].iter().enumerate() {
            if draw < *p {
                return self.candidates[i].1;
            }
            draw -= p;
        }
        self.candidates[kept - 1].1
    }
}

/// The answer as text while tokens arrive: what may be shown so far, and where a stop sequence
/// ends it.
struct TextStream<'a> {
    stop: &'a [String],
    tokens: Vec<u32>,
    /// The answer so far (cut at a stop sequence once one appears).
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
}

impl<'a> TextStream<'a> {
    fn new(stop: &'a [String]) -> Self {
        TextStream { stop, tokens: Vec::new(), text: String::new(), emitted: 0 }
    }

    /// Adds a token; returns the text that is now safe to show, and whether a stop sequence ended
    /// the answer.
    fn push(
        &mut self,
        token: u32,
        decode: impl Fn(&[u32]) -> Result<String, EngineError>,
    ) -> Result<(String, bool), EngineError> {
        self.tokens.push(token);
        // Decoding the whole answer (not token by token) keeps multi-token characters and the
        // byte-level decoder's spacing right; answers are short enough for this to be cheap.
        self.text = decode(&self.tokens)?;
        let search_from = floor_char_boundary(&self.text, self.emitted.saturating_sub(self.longest_stop()));
        let hit = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[search_from..].find(s.as_str()).map(|at| search_from + at))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            let delta = self.text[self.emitted.min(at)..].to_string();
            self.emitted = self.text.len();
            return Ok((delta, true));
        }
        let safe = self.safe_end();
        let delta = if safe > self.emitted { self.text[self.emitted..safe].to_string() } else { String::new() };
        self.emitted = self.emitted.max(safe);
        Ok((delta, false))
    }

    /// What is left to show once generation ends (held-back text that did not become a stop
    /// sequence). A trailing incomplete character is dropped.
    fn finish(&mut self, reason: FinishReason) -> String {
        let end = self.text.trim_end_matches('\u{FFFD}').len();
        self.text.truncate(end.max(self.emitted.min(self.text.len())));
        if reason == FinishReason::Cancelled || self.emitted >= self.text.len() {
            return String::new();
        }
        let rest = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        rest
    }

    fn longest_stop(&self) -> usize {
        self.stop.iter().map(String::len).max().unwrap_or(0)
    }

    /// The end of the text that can be shown: not inside an incomplete character (the decoder
    /// writes U+FFFD until its last byte arrives) and not inside a possible stop sequence.
    fn safe_end(&self) -> usize {
        let mut end = self.text.trim_end_matches('\u{FFFD}').len();
        for stop in self.stop.iter().filter(|s| !s.is_empty()) {
            // The longest prefix of the stop sequence that the text ends with is held back.
            for (cut, _) in stop.char_indices().skip(1).collect::<Vec<_>>().into_iter().rev() {
                if self.text[..end].ends_with(&stop[..cut]) {
                    end = end.min(self.text[..end].len() - cut);
                    break;
                }
            }
        }
        end
    }
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// `ControlFlow` for callers that never stop early.
pub fn keep_going(_: &str) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_decode(tokens: &[u32]) -> Result<String, EngineError> {
        // token n decodes to the n-th piece
        const PIECES: [&str; 6] = ["Hel", "lo", " wor", "ld", "\n\n", "User:"];
        Ok(tokens.iter().map(|&t| PIECES[t as usize]).collect())
    }

    fn stream(stop: &[&str], tokens: &[u32]) -> (Vec<String>, bool, String) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut text = TextStream::new(&stop);
        let mut deltas = Vec::new();
        for &t in tokens {
            let (delta, stopped) = text.push(t, fake_decode).unwrap();
            deltas.push(delta);
            if stopped {
                return (deltas, true, text.text);
            }
        }
        deltas.push(text.finish(FinishReason::Length));
        (deltas, false, text.text)
    }

    #[test]
    fn stop_sequences_cut_the_answer_and_are_never_shown_in_part() {
        let (deltas, stopped, text) = stream(&["\n\nUser:"], &[0, 1, 2, 3, 4, 5]);
        assert!(stopped);
        assert_eq!(text, "Hello world");
        assert_eq!(deltas.concat(), "Hello world");
        assert_eq!(deltas[4], "", "'\\n\\n' could start the stop sequence, so it is held back");
        // held text that turns out not to be a stop is released at the end
        let (deltas, stopped, text) = stream(&["\n\nUser:"], &[0, 4]);
        assert!(!stopped);
        assert_eq!((deltas.concat(), text), ("Hel\n\n".to_string(), "Hel\n\n".to_string()));
    }

    #[test]
    fn a_stop_sequence_inside_one_token_cuts_inside_it() {
        let (deltas, stopped, text) = stream(&["wor"], &[0, 1, 2, 3]);
        assert!(stopped);
        assert_eq!(text, "Hello ");
        assert_eq!(deltas.concat(), "Hello ");
    }

    #[test]
    fn incomplete_characters_wait_for_their_last_byte() {
        let mut text = TextStream::new(&[]);
        let decode = |tokens: &[u32]| Ok(if tokens.len() == 1 { "a\u{FFFD}".to_string() } else { "aé".to_string() });
        assert_eq!(text.push(0, decode).unwrap().0, "a");
        assert_eq!(text.push(1, decode).unwrap().0, "é");
    }

    #[test]
    fn greedy_takes_the_best_and_sampling_follows_the_seed_and_the_filters() {
        let logits = [0.0, 3.0, 2.9, -1.0, 1.0];
        assert_eq!(Sampler::new(&Sampling::GREEDY).pick(&logits), 1);
        let sampling = |temperature, top_p, top_k, seed| Sampling { temperature, top_p, top_k, seed: Some(seed) };
        let draws = |s: Sampling| {
            let mut sampler = Sampler::new(&s);
            (0..400).map(|_| sampler.pick(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draws(sampling(1.0, 1.0, 0, 7)), draws(sampling(1.0, 1.0, 0, 7)), "same seed, same tokens");
        assert_ne!(draws(sampling(1.0, 1.0, 0, 7)), draws(sampling(1.0, 1.0, 0, 8)));
        let all = draws(sampling(1.0, 1.0, 0, 1));
        assert!([0, 1, 2, 3, 4].iter().all(|t| all.contains(t)), "every token is possible at temperature 1");
        let top2 = draws(sampling(1.0, 1.0, 2, 1));
        assert!(top2.iter().all(|t| [1, 2].contains(t)) && top2.contains(&1) && top2.contains(&2));
        // p(1) ≈ 0.45, p(2) ≈ 0.41: top_p 0.5 keeps both, 0.4 only the first
        let nucleus = draws(sampling(1.0, 0.5, 0, 1));
        assert!(nucleus.iter().all(|t| [1, 2].contains(t)) && nucleus.contains(&2));
        assert!(draws(sampling(1.0, 0.4, 0, 1)).iter().all(|&t| t == 1));
        // a low temperature concentrates on the best token (p ≈ 0.88 at 0.05, against 0.45 at 1)
        let cold = draws(sampling(0.05, 1.0, 0, 3));
        assert!(cold.iter().filter(|&&t| t == 1).count() > 320);
    }

    #[test]
    fn the_chat_template_renders_hugging_face_style_templates() {
        let config = GenerationConfig {
            chat_template: "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}".into(),
            eos_token_ids: vec![2],
            bos_token: None,
            context_length: 100,
            max_new_tokens: 10,
            source: None,
        };
        let messages = [ChatMessage { role: "user".into(), content: "hi".into() }];
        assert_eq!(config.render_chat(&messages).unwrap(), "<|user|>hi\n<|assistant|>");
        let broken = GenerationConfig { chat_template: "{% if %}".into(), ..config };
        assert!(matches!(broken.render_chat(&messages), Err(EngineError::Run(_))));
    }
}
