//! `POST /v1/embeddings`, as OpenAI's: `{model, input: str|[str]|[int]|[[int]], encoding_format?:
//! float|base64, dimensions?}` → `{object: "list", data: [{object: "embedding", index, embedding}],
//! model, usage}`. Parsing and encoding live here; the work is the engine's.

use base64::Engine as _;
use lmaas_core::{Error, ModelRef};
use lmaas_engine::{EmbeddingInput, Embeddings};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest text accepted before tokenization, in bytes (it is truncated to the model's tokens later).
const MAX_TEXT_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
struct RawRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
    // `user` and any other OpenAI field are accepted and ignored.
}

/// A validated embeddings request.
#[derive(Debug, PartialEq)]
pub struct EmbeddingsRequest {
    pub model: ModelRef,
    /// The model as the client named it, echoed in the response.
    pub model_name: String,
    pub input: EmbeddingInput,
    pub base64: bool,
    pub dimensions: Option<usize>,
}

impl EmbeddingsRequest {
    /// Parses a request body; `max_inputs` bounds the input array (OpenAI allows 2048; a Lambda
    /// instance is smaller, so the default is 256).
    pub fn parse(body: &[u8], max_inputs: usize) -> Result<Self, Error> {
        let raw: RawRequest =
            serde_json::from_slice(body).map_err(|e| Error::bad_request(format!("invalid embeddings request: {e}")))?;
        let model = ModelRef::parse(&raw.model).map_err(|e| Error::bad_request(format!("'model': {e}")))?;
        let base64 = match raw.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(Error::bad_request(format!("'encoding_format' must be float or base64, got '{other}'")))
            }
        };
        let dimensions = match raw.dimensions {
            None => None,
            Some(0) => return Err(Error::bad_request("'dimensions' must be at least 1")),
            Some(d) => Some(usize::try_from(d).map_err(|_| Error::bad_request("'dimensions' is too large"))?),
        };
        Ok(EmbeddingsRequest {
            model,
            model_name: raw.model,
            input: parse_input(raw.input, max_inputs)?,
            base64,
            dimensions,
        })
    }
}

fn parse_input(input: Value, max_inputs: usize) -> Result<EmbeddingInput, Error> {
    let items = match input {
        Value::String(text) => return texts(vec![Value::String(text)]),
        Value::Array(items) => items,
        _ => return Err(Error::bad_request("'input' must be a string, an array of strings, or token ids")),
    };
    if items.is_empty() {
        return Err(Error::bad_request("'input' is empty"));
    }
    if items.len() > max_inputs {
        return Err(Error::bad_request(format!("'input' has {} items; the limit is {max_inputs}", items.len())));
    }
    match &items[0] {
        Value::String(_) => texts(items),
        Value::Number(_) => Ok(EmbeddingInput::Tokens(vec![token_ids(&Value::Array(items), None)?])),
        Value::Array(_) => {
            let rows = items.iter().enumerate().map(|(i, row)| token_ids(row, Some(i))).collect::<Result<_, _>>()?;
            Ok(EmbeddingInput::Tokens(rows))
        }
        _ => Err(Error::bad_request("'input' must be a string, an array of strings, or token ids")),
    }
}

fn texts(items: Vec<Value>) -> Result<EmbeddingInput, Error> {
    let texts = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(text) if text.is_empty() => {
                Err(Error::bad_request(format!("'input[{i}]' is an empty string")))
            }
            Value::String(text) if text.len() > MAX_TEXT_BYTES => {
                Err(Error::bad_request(format!("'input[{i}]' is longer than {MAX_TEXT_BYTES} bytes")))
            }
            Value::String(text) => Ok(text),
            _ => Err(Error::bad_request(format!("'input[{i}]' must be a string like the others"))),
        })
        .collect::<Result<_, _>>()?;
    Ok(EmbeddingInput::Texts(texts))
}

fn token_ids(row: &Value, index: Option<usize>) -> Result<Vec<u32>, Error> {
    let at = index.map_or("'input'".to_string(), |i| format!("'input[{i}]'"));
    let ids = row.as_array().ok_or_else(|| Error::bad_request(format!("{at} must be an array of token ids")))?;
    if ids.is_empty() {
        return Err(Error::bad_request(format!("{at} has no tokens")));
    }
    ids.iter()
        .map(|id| id.as_u64().and_then(|v| u32::try_from(v).ok()))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| Error::bad_request(format!("{at} must hold non-negative integer token ids")))
}

/// The OpenAI response body. Serialized straight from the vectors: each float as the shortest
/// text that reads back as the same f32. (Through a `serde_json::Value`, an f32 became an f64
/// first and was written with up to 17 digits: 0.1 as 0.10000000149011612.)
#[derive(Serialize)]
pub struct EmbeddingsResponse<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem<'a>>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingItem<'a> {
    object: &'static str,
    index: usize,
    embedding: Embedding<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Embedding<'a> {
    Floats(&'a [f32]),
    /// Little-endian f32s, base64 encoded, as OpenAI sends them.
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

pub fn response<'a>(model: &'a str, embeddings: &'a Embeddings, base64: bool) -> EmbeddingsResponse<'a> {
    let data = embeddings
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Embedding::Floats(vector)
            };
            EmbeddingItem { object: "embedding", index, embedding }
        })
        .collect();
    let usage = Usage { prompt_tokens: embeddings.prompt_tokens, total_tokens: embeddings.prompt_tokens };
    EmbeddingsResponse { object: "list", data, model, usage }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<EmbeddingsRequest, Error> {
        EmbeddingsRequest::parse(&serde_json::to_vec(&body).unwrap(), 256)
    }

    fn message(body: Value) -> String {
        parse(body).unwrap_err().to_string()
    }

    #[test]
    fn every_input_form_of_the_openai_api_parses() {
        let one = parse(json!({"model": "minilm", "input": "hi"})).unwrap();
        assert_eq!(one.input, EmbeddingInput::Texts(vec!["hi".into()]));
        assert!(!one.base64);
        let many =
            parse(json!({"model": "minilm:2", "input": ["a", "b"], "encoding_format": "base64", "user": "u"})).unwrap();
        assert_eq!(
            (many.input, many.base64, many.model_name.as_str()),
            (EmbeddingInput::Texts(vec!["a".into(), "b".into()]), true, "minilm:2")
        );
        assert_eq!(
            parse(json!({"model": "m", "input": [101, 102]})).unwrap().input,
            EmbeddingInput::Tokens(vec![vec![101, 102]])
        );
        assert_eq!(
            parse(json!({"model": "m", "input": [[1], [2, 3]]})).unwrap().input,
            EmbeddingInput::Tokens(vec![vec![1], vec![2, 3]])
        );
    }

    #[test]
    fn bad_inputs_name_the_field() {
        assert!(message(json!({"model": "m", "input": []})).contains("'input' is empty"));
        assert!(message(json!({"model": "m", "input": ["a", ""]})).contains("'input[1]' is an empty string"));
        assert!(message(json!({"model": "m", "input": ["a", 3]})).contains("'input[1]'"));
        assert!(message(json!({"model": "m", "input": [[1], [-2]]})).contains("'input[1]' must hold non-negative"));
        assert!(message(json!({"model": "m", "input": {"x": 1}})).contains("'input' must be"));
        assert!(message(json!({"model": "m", "input": vec!["a"; 257]})).contains("the limit is"));
        assert!(message(json!({"model": "Bad Name", "input": "a"})).contains("'model'"));
        assert!(message(json!({"model": "m", "input": "a", "encoding_format": "hex"})).contains("'encoding_format'"));
        assert!(message(json!({"model": "m", "input": "a", "dimensions": 0})).contains("'dimensions'"));
        assert!(message(json!({"input": "a"})).contains("missing field `model`"));
    }

    #[test]
    fn base64_embeddings_are_little_endian_f32_as_openai_sends_them() {
        let embeddings = Embeddings { vectors: vec![vec![1.0, -0.5]], prompt_tokens: 3 };
        let body = serde_json::to_value(response("m", &embeddings, true)).unwrap();
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(body["data"][0]["embedding"].as_str().unwrap()).unwrap();
        assert_eq!(bytes, [1f32.to_le_bytes(), (-0.5f32).to_le_bytes()].concat());
        assert_eq!(body["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
        let body = serde_json::to_value(response("m", &embeddings, false)).unwrap();
        assert_eq!(body["data"][0]["embedding"], json!([1.0, -0.5]));
        assert_eq!(
            (&body["object"], &body["model"], &body["data"][0]["index"]),
            (&json!("list"), &json!("m"), &json!(0))
        );
    }

    #[test]
    fn floats_are_written_as_the_shortest_text_that_reads_back_as_the_same_f32() {
        let vector = vec![0.1f32, -0.033_917_3, 1e-7, f32::MIN_POSITIVE];
        let embeddings = Embeddings { vectors: vec![vector.clone()], prompt_tokens: 1 };
        let text = serde_json::to_string(&response("m", &embeddings, false)).unwrap();
        assert!(text.contains(r#""embedding":[0.1,-0.0339173,1e-7,1.1754944e-38]"#), "{text}");
        let read: Value = serde_json::from_str(&text).unwrap();
        let floats: Vec<f32> =
            read["data"][0]["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(floats, vector);
    }
}
