//! One chunk of a batch job: input lines in, output JSONL out, in the same order. A line that
//! cannot be processed becomes `{"id", "line", "error"}` and is counted; it never fails the chunk.
//! The output is a pure function of the lines (and the model), so any attempt that processes a
//! chunk writes the same bytes.

use lmaas_core::v2::InferRequest;
use lmaas_core::{Limits, Manifest, Tensor};
use lmaas_engine::{
    EmbeddingConfig, EmbeddingInput, FinishReason, GenerateParams, Generated, GenerationConfig, LoadedModel,
};
use serde::Serialize;
use serde_json::Value;

/// Longest text embedded, in bytes (it is truncated to the model's tokens later).
const MAX_TEXT_BYTES: usize = 64 * 1024;

/// An input line and its number in the file (1-based, counting blank lines).
#[derive(Debug, Clone)]
pub struct InputLine {
    pub number: u64,
    pub text: String,
}

/// How embeddings are batched: sorted by length, at most `max_rows` rows and `max_elements`
/// padded tokens per ONNX Runtime call.
#[derive(Debug, Clone, Copy)]
pub struct BatchBudget {
    pub max_rows: usize,
    pub max_elements: usize,
}

impl Default for BatchBudget {
    fn default() -> Self {
        BatchBudget { max_rows: 64, max_elements: 64 * 128 }
    }
}

/// A processed chunk: its JSONL bytes and counts.
#[derive(Debug, Default)]
pub struct ChunkOutput {
    pub body: Vec<u8>,
    pub items: u64,
    pub errors: u64,
}

impl ChunkOutput {
    fn push<T: Serialize>(&mut self, line: &T) {
        serde_json::to_writer(&mut self.body, line).expect("an output line always serializes");
        self.body.push(b'\n');
        self.items += 1;
    }

    /// An infer line, `{"id":…,"outputs":[…]}`, each output as a V2 response writes it (the
    /// tensors go straight to text, without a serde tree).
    fn push_outputs(&mut self, id: &Value, tensors: &[Tensor]) {
        self.body.extend_from_slice(b"{\"id\":");
        serde_json::to_writer(&mut self.body, id).expect("a JSON value always serializes");
        self.body.extend_from_slice(b",\"outputs\":[");
        for (i, tensor) in tensors.iter().enumerate() {
            if i > 0 {
                self.body.push(b',');
            }
            lmaas_core::v2::write_output(&mut self.body, tensor, None);
        }
        self.body.extend_from_slice(b"]}\n");
        self.items += 1;
    }

    fn push_error(&mut self, id: &Value, number: u64, error: &str) {
        self.push(&ErrorLine { id, line: number, error });
        self.errors += 1;
    }
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    id: &'a Value,
    line: u64,
    error: &'a str,
}

#[derive(Serialize)]
struct EmbeddingLine<'a> {
    id: &'a Value,
    embedding: &'a [f32],
}

/// Parses a line as a JSON object with an `id` (a string or an integer).
fn parse_object(line: &InputLine) -> Result<(Value, serde_json::Map<String, Value>), (Value, String)> {
    let value: Value = serde_json::from_str(&line.text)
        .map_err(|e| (Value::Null, format!("line {} is not JSON: {e}", line.number)))?;
    let Value::Object(mut object) = value else {
        return Err((Value::Null, format!("line {} is not a JSON object", line.number)));
    };
    let id = match object.remove("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id,
        Some(_) => return Err((Value::Null, "'id' must be a string or a number".into())),
        None => return Err((Value::Null, "'id' is missing".into())),
    };
    Ok((id, object))
}

/// `{"id", "messages": [...], "max_tokens"?, "temperature"?, "top_p"?, "top_k"?, "seed"?, "stop"?}`
/// (a chat request without `model`) → `{"id", "message": {"role": "assistant", "content"},
/// "finish_reason", "usage"}`. Conversations run with continuous batching, `max_active` at a time.
/// Sampling without a `seed` is seeded with the line number, so a retried chunk writes the same
/// bytes.
pub fn chat_chunk(
    model: &LoadedModel,
    config: &GenerationConfig,
    model_name: &str,
    lines: &[InputLine],
    max_active: usize,
) -> Result<ChunkOutput, lmaas_engine::EngineError> {
    let prepared: Vec<Result<(Value, ChatItem), (Value, String)>> = lines
        .iter()
        .map(|line| {
            let (id, object) = parse_object(line)?;
            let mut request =
                lmaas_api::chat::CompletionRequest::parse_batch_line(&Value::Object(object).to_string(), model_name)
                    .map_err(|e| (id.clone(), e.to_string()))?;
            request.sampling.seed.get_or_insert(line.number);
            let prepared =
                lmaas_api::chat::prepare_prompt(model, config, &request).map_err(|e| (id.clone(), e.to_string()))?;
            Ok((id, prepared))
        })
        .collect();
    let valid: Vec<usize> = (0..prepared.len()).filter(|&i| prepared[i].is_ok()).collect();
    let items: Vec<ChatItem> =
        valid.iter().filter_map(|&i| prepared[i].as_ref().ok().map(|(_, item)| item.clone())).collect();
    let mut answers: Vec<Option<Result<Generated, String>>> = vec![None; lines.len()];
    model.generate_many(&items, config, max_active, |k, result| {
        answers[valid[k]] = Some(result.map_err(|e| e.to_string()));
        std::ops::ControlFlow::Continue(())
    })?;
    let mut output = ChunkOutput::default();
    for (i, (line, outcome)) in lines.iter().zip(prepared).enumerate() {
        match (outcome, answers[i].take()) {
            (Err((id, error)), _) => output.push_error(&id, line.number, &error),
            (Ok((id, _)), Some(Ok(answer))) => output.push(&ChatLine {
                id: &id,
                message: ChatAnswer { role: "assistant", content: &answer.text },
                finish_reason: answer.finish_reason,
                usage: Usage {
                    prompt_tokens: answer.prompt_tokens,
                    completion_tokens: answer.tokens.len(),
                    total_tokens: answer.prompt_tokens + answer.tokens.len(),
                },
            }),
            (Ok((id, _)), Some(Err(error))) => output.push_error(&id, line.number, &error),
            (Ok((id, _)), None) => output.push_error(&id, line.number, "no answer was generated"),
        }
    }
    Ok(output)
}

/// A conversation ready to generate: its prompt tokens and parameters.
type ChatItem = (Vec<u32>, GenerateParams);

#[derive(Serialize)]
struct ChatLine<'a> {
    id: &'a Value,
    message: ChatAnswer<'a>,
    finish_reason: FinishReason,
    usage: Usage,
}

#[derive(Serialize)]
struct ChatAnswer<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
}

/// `{"id", "input": "text"}` → `{"id", "embedding": [...]}`.
pub fn embed_chunk(
    model: &LoadedModel,
    config: &EmbeddingConfig,
    lines: &[InputLine],
    budget: BatchBudget,
) -> ChunkOutput {
    let mut outcomes: Vec<Result<(Value, String), (Value, String)>> = lines
        .iter()
        .map(|line| {
            let (id, mut object) = parse_object(line)?;
            match object.remove("input") {
                Some(Value::String(text)) if text.is_empty() => Err((id, "'input' is an empty string".into())),
                Some(Value::String(text)) if text.len() > MAX_TEXT_BYTES => {
                    Err((id, format!("'input' is longer than {MAX_TEXT_BYTES} bytes")))
                }
                Some(Value::String(text)) => Ok((id, text)),
                Some(_) => Err((id, "'input' must be a string".into())),
                None => Err((id, "'input' is missing".into())),
            }
        })
        .collect();

    let valid: Vec<usize> = (0..outcomes.len()).filter(|&i| outcomes[i].is_ok()).collect();
    let texts: Vec<String> =
        valid.iter().map(|&i| outcomes[i].as_ref().map(|(_, t)| t.clone()).unwrap_or_default()).collect();
    let mut vectors: Vec<Option<Result<Vec<f32>, String>>> = vec![None; lines.len()];
    match model.tokenize(&texts, config.max_tokens) {
        Err(e) => valid.iter().for_each(|&i| vectors[i] = Some(Err(e.to_string()))),
        Ok(tokens) => {
            // Longest first, so each batch pads to rows of similar length.
            let mut order: Vec<usize> = (0..tokens.len()).collect();
            order.sort_by_key(|&k| std::cmp::Reverse(tokens[k].len()));
            for batch in plan_batches(&order, |k| tokens[k].len(), budget) {
                let rows = EmbeddingInput::Tokens(batch.iter().map(|&k| tokens[k].clone()).collect());
                match model.embed(&rows, config, None) {
                    Ok(embeddings) => {
                        for (&k, vector) in batch.iter().zip(embeddings.vectors) {
                            vectors[valid[k]] = Some(Ok(vector));
                        }
                    }
                    Err(e) => batch.iter().for_each(|&k| vectors[valid[k]] = Some(Err(e.to_string()))),
                }
            }
        }
    }

    let mut output = ChunkOutput::default();
    for ((line, outcome), vector) in lines.iter().zip(outcomes.iter_mut()).zip(vectors) {
        match (outcome, vector) {
            (Ok((id, _)), Some(Ok(vector))) => output.push(&EmbeddingLine { id, embedding: &vector }),
            (Ok((id, _)), Some(Err(error))) => output.push_error(id, line.number, &error),
            (Ok((id, _)), None) => output.push_error(id, line.number, "no embedding was produced"),
            (Err((id, error)), _) => output.push_error(id, line.number, error),
        }
    }
    output
}

/// Splits `order` into batches within the budget; a row longer than the budget is a batch alone.
pub fn plan_batches(order: &[usize], length: impl Fn(usize) -> usize, budget: BatchBudget) -> Vec<Vec<usize>> {
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for &k in order {
        let padded = longest.max(length(k)) * (current.len() + 1);
        if !current.is_empty() && (current.len() >= budget.max_rows || padded > budget.max_elements) {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(length(k));
        current.push(k);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// `{"id", "inputs": [V2 tensors], "outputs"?: [...]}` → `{"id", "outputs": [V2 tensors]}`, one
/// request per line, validated exactly like `POST /v2/models/{model}/infer`.
pub fn infer_chunk(model: &LoadedModel, manifest: &Manifest, limits: &Limits, lines: &[InputLine]) -> ChunkOutput {
    let mut output = ChunkOutput::default();
    for line in lines {
        let (id, object) = match parse_object(line) {
            Ok(parsed) => parsed,
            Err((id, error)) => {
                output.push_error(&id, line.number, &error);
                continue;
            }
        };
        let body = serde_json::to_vec(&object).expect("a JSON object serializes");
        let request = match InferRequest::parse(&body, None, manifest, limits) {
            Ok(request) => request,
            Err(e) => {
                output.push_error(&id, line.number, &e.to_string());
                continue;
            }
        };
        let names: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
        match model.run(&request.inputs, &names) {
            Ok(tensors) => output.push_outputs(&id, &tensors),
            Err(e) => output.push_error(&id, line.number, &e.to_string()),
        }
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(number: u64, text: &str) -> InputLine {
        InputLine { number, text: text.into() }
    }

    #[test]
    fn lines_need_an_object_with_an_id() {
        assert_eq!(parse_object(&line(3, "{oops")).unwrap_err().1.split(':').next(), Some("line 3 is not JSON"));
        assert_eq!(parse_object(&line(1, "[1]")).unwrap_err().1, "line 1 is not a JSON object");
        assert_eq!(parse_object(&line(1, r#"{"input":"x"}"#)).unwrap_err().1, "'id' is missing");
        assert_eq!(parse_object(&line(1, r#"{"id":[1]}"#)).unwrap_err().1, "'id' must be a string or a number");
        let (id, rest) = parse_object(&line(1, r#"{"id":7,"input":"x"}"#)).unwrap();
        assert_eq!((id, rest.len()), (Value::from(7), 1));
    }

    #[test]
    fn batches_keep_within_rows_and_padded_elements() {
        let lengths = [10, 9, 9, 5, 5, 5, 1];
        let order: Vec<usize> = (0..lengths.len()).collect();
        let batches = plan_batches(&order, |k| lengths[k], BatchBudget { max_rows: 3, max_elements: 20 });
        assert_eq!(batches, vec![vec![0, 1], vec![2, 3], vec![4, 5, 6]]);
        let single = plan_batches(&[0], |_| 500, BatchBudget { max_rows: 3, max_elements: 20 });
        assert_eq!(single, vec![vec![0]], "a row over the budget still runs, alone");
    }

    #[test]
    fn error_lines_carry_the_id_line_number_and_reason() {
        let mut output = ChunkOutput::default();
        output.push_error(&Value::from("a"), 4, "'input' is missing");
        assert_eq!(
            String::from_utf8(output.body).unwrap(),
            "{\"id\":\"a\",\"line\":4,\"error\":\"'input' is missing\"}\n"
        );
        assert_eq!((output.items, output.errors), (1, 1));
    }
}
