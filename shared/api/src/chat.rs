//! The chat function's service: `POST /v1/chat/completions` and `POST /v1/completions` in
//! OpenAI's shapes, whole or streamed as server-sent events (`stream: true`). Parsing and
//! encoding live here; tokenization, decoding and sampling are the engine's.

use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use lmaas_core::acl::authorize;
use lmaas_core::auth::Authenticator;
use lmaas_core::manifest::Task;
use lmaas_core::{Error, Manifest, ModelRef, ModelResolver, ModelStore};
use lmaas_engine::{ChatMessage, FinishReason, GenerateParams, GenerationConfig, LoadedModel, ModelCache, Sampling};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::blocking::run_blocking;
use crate::context::{serve, Call};
use crate::reply::Reply;
use crate::response::json;
use crate::routes::Route;
use crate::{ConfigError, InferConfig};

/// Longest prompt text accepted before tokenization (the token limit is the model's context).
const MAX_PROMPT_BYTES: usize = 256 * 1024;
const MAX_MESSAGES: usize = 256;
/// OpenAI allows four stop sequences.
const MAX_STOPS: usize = 4;
/// Chunks buffered between the generating thread and a slow client.
const STREAM_BUFFER: usize = 64;

/// Which OpenAI route a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Option<Value>,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    max_tokens: Option<Value>,
    #[serde(default)]
    max_completion_tokens: Option<Value>,
    #[serde(default)]
    temperature: Option<Value>,
    #[serde(default)]
    top_p: Option<Value>,
    #[serde(default)]
    top_k: Option<Value>,
    #[serde(default)]
    seed: Option<Value>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    stream: Option<Value>,
    #[serde(default)]
    stream_options: Option<Value>,
    #[serde(default)]
    n: Option<Value>,
    // `user`, `frequency_penalty` at 0 and other OpenAI fields are accepted and ignored.
}

/// What the client asked for, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub endpoint: Endpoint,
    pub model: ModelRef,
    /// The model as the client named it, echoed in the response.
    pub model_name: String,
    pub prompt: Prompt,
    /// `None`: as many as the model's limits allow (chat) or 16 (completions, as OpenAI).
    pub max_tokens: Option<usize>,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Messages(Vec<ChatMessage>),
    Text(String),
}

impl CompletionRequest {
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Self, Error> {
        let raw: RawRequest =
            serde_json::from_slice(body).map_err(|e| Error::bad_request(format!("invalid request body: {e}")))?;
        let name = raw.model.clone().ok_or_else(|| Error::bad_request("'model' is required"))?;
        Self::from_raw(endpoint, raw, name)
    }

    /// A `batch_chat` input line: a chat request whose model is the job's (a `model` in the
    /// line is ignored) and which is never streamed.
    pub fn parse_batch_line(line: &str, model: &str) -> Result<Self, Error> {
        let raw: RawRequest =
            serde_json::from_str(line).map_err(|e| Error::bad_request(format!("not a chat request: {e}")))?;
        if raw.stream.as_ref().is_some_and(|s| s == &Value::Bool(true)) {
            return Err(Error::bad_request("'stream' is not available in batch jobs"));
        }
        Self::from_raw(Endpoint::Chat, raw, model.to_string())
    }

    fn from_raw(endpoint: Endpoint, raw: RawRequest, model_name: String) -> Result<Self, Error> {
        let model = ModelRef::parse(&model_name).map_err(|e| Error::bad_request(format!("'model': {e}")))?;
        let prompt = match endpoint {
            Endpoint::Chat => Prompt::Messages(messages(raw.messages)?),
            Endpoint::Completions => Prompt::Text(prompt_text(raw.prompt)?),
        };
        let max_tokens = match (raw.max_completion_tokens, raw.max_tokens) {
            (Some(v), _) => Some(positive(&v, "max_completion_tokens")?),
            (None, Some(v)) => Some(positive(&v, "max_tokens")?),
            (None, None) => None,
        };
        let temperature = number(raw.temperature, "temperature", 1.0, 0.0, 2.0)?;
        let top_p = number(raw.top_p, "top_p", 1.0, 0.0, 1.0)?;
        if top_p == 0.0 {
            return Err(Error::bad_request("'top_p' must be greater than 0"));
        }
        let top_k = match raw.top_k {
            None | Some(Value::Null) => 0,
            Some(v) => v.as_u64().ok_or_else(|| Error::bad_request("'top_k' must be a non-negative integer"))? as usize,
        };
        let seed = match raw.seed {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .map(|s| s as u64)
                    .or_else(|| v.as_u64())
                    .ok_or_else(|| Error::bad_request("'seed' must be an integer"))?,
            ),
        };
        let stream = match raw.stream {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(Error::bad_request("'stream' must be true or false")),
        };
        let include_usage = match raw.stream_options {
            None | Some(Value::Null) => false,
            Some(options) if !stream => {
                let _ = options;
                return Err(Error::bad_request("'stream_options' is only allowed with 'stream': true"));
            }
            Some(options) => match options.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(Error::bad_request("'stream_options.include_usage' must be true or false")),
            },
        };
        match raw.n {
            None | Some(Value::Null) => {}
            Some(n) if n.as_u64() == Some(1) => {}
            Some(_) => return Err(Error::bad_request("'n': lmaas generates one choice per request (n = 1)")),
        }
        Ok(CompletionRequest {
            endpoint,
            model,
            model_name,
            prompt,
            max_tokens,
            sampling: Sampling { temperature, top_p, top_k, seed },
            stop: stops(raw.stop)?,
            stream,
            include_usage,
        })
    }
}

fn messages(raw: Option<Value>) -> Result<Vec<ChatMessage>, Error> {
    let items = match raw {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => return Err(Error::bad_request("'messages' is required")),
        Some(_) => return Err(Error::bad_request("'messages' must be an array of messages")),
    };
    if items.is_empty() {
        return Err(Error::bad_request("'messages' is empty"));
    }
    if items.len() > MAX_MESSAGES {
        return Err(Error::bad_request(format!("'messages' has {} items; the limit is {MAX_MESSAGES}", items.len())));
    }
    let mut total = 0;
    let messages = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let role = match item.get("role").and_then(Value::as_str) {
                Some(role @ ("system" | "developer" | "user" | "assistant")) => {
                    if role == "developer" { "system" } else { role }.to_string()
                }
                Some(other) => {
                    return Err(Error::bad_request(format!(
                        "'messages[{i}].role' must be system, developer, user or assistant, got '{}'",
                        other.chars().take(40).collect::<String>()
                    )))
                }
                None => return Err(Error::bad_request(format!("'messages[{i}].role' is required"))),
            };
            let content = match item.get("content") {
                Some(Value::String(text)) => text.clone(),
                // Content parts: only text parts are understood by a text model.
                Some(Value::Array(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(j, part)| match (part.get("type").and_then(Value::as_str), part.get("text")) {
                        (Some("text"), Some(Value::String(text))) => Ok(text.as_str()),
                        _ => Err(Error::bad_request(format!(
                            "'messages[{i}].content[{j}]' must be a text part ({{\"type\": \"text\", \"text\": ...}})"
                        ))),
                    })
                    .collect::<Result<String, _>>()?,
                _ => return Err(Error::bad_request(format!("'messages[{i}].content' must be a string"))),
            };
            total += content.len();
            Ok(ChatMessage { role, content })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if total > MAX_PROMPT_BYTES {
        return Err(Error::bad_request(format!("'messages' hold more than {MAX_PROMPT_BYTES} bytes of text")));
    }
    Ok(messages)
}

fn prompt_text(raw: Option<Value>) -> Result<String, Error> {
    let text = match raw {
        Some(Value::String(text)) => text,
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_string()
        }
        Some(Value::Array(_)) => {
            return Err(Error::bad_request("'prompt' must be one string (lmaas answers one prompt per request)"))
        }
        None | Some(Value::Null) => return Err(Error::bad_request("'prompt' is required")),
        Some(_) => return Err(Error::bad_request("'prompt' must be a string")),
    };
    if text.is_empty() {
        return Err(Error::bad_request("'prompt' is empty"));
    }
    if text.len() > MAX_PROMPT_BYTES {
        return Err(Error::bad_request(format!("'prompt' is longer than {MAX_PROMPT_BYTES} bytes")));
    }
    Ok(text)
}

fn positive(value: &Value, field: &str) -> Result<usize, Error> {
    match value.as_u64() {
        Some(n) if n >= 1 => Ok(n.min(usize::MAX as u64) as usize),
        _ => Err(Error::bad_request(format!("'{field}' must be a positive integer"))),
    }
}

fn number(value: Option<Value>, field: &str, default: f32, min: f32, max: f32) -> Result<f32, Error> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_f64() {
            Some(x) if (min as f64..=max as f64).contains(&x) => Ok(x as f32),
            _ => Err(Error::bad_request(format!("'{field}' must be a number from {min} to {max}"))),
        },
    }
}

fn stops(raw: Option<Value>) -> Result<Vec<String>, Error> {
    let stops = match raw {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::String(stop)) => vec![stop],
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(stop) => Ok(stop),
                _ => Err(Error::bad_request(format!("'stop[{i}]' must be a string"))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Error::bad_request("'stop' must be a string or an array of strings")),
    };
    if stops.len() > MAX_STOPS {
        return Err(Error::bad_request(format!("'stop' has {} sequences; the limit is {MAX_STOPS}", stops.len())));
    }
    if let Some(i) = stops.iter().position(|s| s.is_empty() || s.len() > 256) {
        return Err(Error::bad_request(format!("'stop[{i}]' must be 1 to 256 bytes")));
    }
    Ok(stops)
}

/// Authorizes, resolves the model, checks the prompt against its limits, generates, answers.
pub struct ChatService {
    authenticator: Authenticator,
    resolver: ModelResolver,
    cache: ModelCache,
    preload: Vec<ModelRef>,
}

/// A request that passed every check, ready to generate.
struct Prepared {
    request: CompletionRequest,
    manifest: Arc<Manifest>,
    loaded: Arc<LoadedModel>,
    config: GenerationConfig,
    prompt: Vec<u32>,
    params: GenerateParams,
}

impl ChatService {
    pub fn new(store: Arc<dyn ModelStore>, authenticator: Authenticator, config: InferConfig) -> Self {
        ChatService {
            authenticator,
            resolver: ModelResolver::new(store.clone(), config.alias_ttl),
            cache: ModelCache::new(store, config.cache),
            preload: config.preload,
        }
    }

    /// The service over S3, with clients built from the environment.
    pub async fn from_env(config: InferConfig) -> Result<Self, ConfigError> {
        let (store, authenticator) = crate::auth::s3_backends(&config.bucket, &config.auth).await?;
        Ok(ChatService::new(store, authenticator, config))
    }

    /// Loads the `LMAAS_PRELOAD` models during INIT (failures are logged and retried on use).
    pub async fn preload(&self) {
        self.cache.preload(&self.resolver, &self.preload, &[Task::Generation]).await;
    }

    /// The loaded session of a model, if it is in memory (tests check that generation ends).
    pub async fn loaded(&self, model: &ModelRef) -> Option<Arc<LoadedModel>> {
        let manifest = self.resolver.resolve(model).await.ok()?;
        self.cache.is_loaded(&manifest).then_some(())?;
        self.cache.get(&manifest).await.ok()
    }

    pub async fn handle(&self, request: Request<Bytes>) -> Response<Reply> {
        serve(&self.authenticator, request, |call| async move {
            let endpoint = match &call.route {
                Route::ChatCompletions => Endpoint::Chat,
                Route::Completions => Endpoint::Completions,
                _ => {
                    return Err(Error::not_found(format!(
                        "{} is not served by the chat function",
                        call.request.uri().path()
                    )))
                }
            };
            let prepared = self.prepare(endpoint, &call).await?;
            if prepared.request.stream {
                Ok(stream(prepared))
            } else {
                complete(prepared).await
            }
        })
        .await
    }

    async fn prepare(&self, endpoint: Endpoint, call: &Call) -> Result<Prepared, Error> {
        let request = CompletionRequest::parse(endpoint, call.request.body())?;
        let manifest = self.resolver.resolve(&request.model).await?;
        authorize(call.principal()?, &manifest, call.route.access())?;
        if manifest.task != Task::Generation {
            return Err(Error::bad_request(format!(
                "'model': '{}' is not a text generation model",
                request.model_name
            )));
        }
        let config = GenerationConfig::from_manifest_config(&manifest.config)
            .map_err(|e| Error::Internal(format!("model {} has an invalid generation config: {e}", manifest.name)))?
            .ok_or_else(|| Error::Internal(format!("model {} has no generation config", manifest.name)))?;
        let loaded = self.cache.get(&manifest).await?;
        let (tokenizer, asked, generation) = (loaded.clone(), request.clone(), config.clone());
        let (prompt, params) =
            run_blocking("tokenization", move || prepare_prompt(&tokenizer, &generation, &asked)).await??;
        Ok(Prepared { request, manifest, loaded, config, prompt, params })
    }
}

/// The prompt's tokens and the generation parameters for a request on a model: the chat
/// template applied, then the prompt and `max_tokens` checked against the model's limits (a 400
/// naming the field and the limit). `max_tokens` defaults to what fits (chat) or 16 (completions,
/// as OpenAI's).
pub fn prepare_prompt(
    model: &LoadedModel,
    config: &GenerationConfig,
    request: &CompletionRequest,
) -> Result<(Vec<u32>, GenerateParams), Error> {
    let text = match &request.prompt {
        Prompt::Messages(messages) => {
            config.render_chat(messages).map_err(|e| Error::bad_request(format!("'messages': {e}")))?
        }
        Prompt::Text(text) => text.clone(),
    };
    let prompt = model.encode_prompt(&text)?;
    let field = if request.endpoint == Endpoint::Chat { "messages" } else { "prompt" };
    let context = config.context_length;
    if prompt.len() >= context {
        return Err(Error::bad_request(format!(
            "'{field}': the prompt is {} tokens; '{}' has a context length of {context} tokens (prompt and answer together)",
            prompt.len(),
            request.model_name
        )));
    }
    let room = context - prompt.len();
    let max_tokens = match request.max_tokens {
        Some(asked) if asked > config.max_new_tokens => {
            return Err(Error::bad_request(format!(
                "'max_tokens' is {asked}; '{}' generates at most {} tokens per request",
                request.model_name, config.max_new_tokens
            )))
        }
        Some(asked) if asked > room => {
            return Err(Error::bad_request(format!(
                "'max_tokens': {} prompt tokens + {asked} requested exceed the context length of {context} tokens",
                prompt.len()
            )))
        }
        Some(asked) => asked,
        None if request.endpoint == Endpoint::Completions => 16.min(room),
        None => config.max_new_tokens.min(room),
    };
    Ok((prompt, GenerateParams { max_tokens, sampling: request.sampling.clone(), stop: request.stop.clone() }))
}

/// A `batch_chat` job's `params.max_concurrent`: sequences decoded together (default 8).
pub fn max_concurrent(params: &Value) -> Result<usize, String> {
    match params.get("max_concurrent") {
        None | Some(Value::Null) => Ok(8),
        Some(v) => match v.as_u64() {
            Some(n @ 1..=32) => Ok(n as usize),
            _ => Err("params.max_concurrent must be an integer from 1 to 32".into()),
        },
    }
}

/// The whole answer as one JSON response.
async fn complete(prepared: Prepared) -> Result<Response<Reply>, Error> {
    let Prepared { request, manifest, loaded, config, prompt, params } = prepared;
    let model = loaded.clone();
    let generated =
        tokio::task::spawn_blocking(move || model.generate(&prompt, &params, &config, |_| ControlFlow::Continue(())))
            .await
            .map_err(|e| Error::Internal(format!("generation task failed: {e}")))??;
    count_tokens(&manifest, generated.tokens.len(), generated.finish_reason);
    let id = completion_id(request.endpoint);
    let usage = usage(generated.prompt_tokens, generated.tokens.len());
    let choice = match request.endpoint {
        Endpoint::Chat => json!({
            "index": 0,
            "message": { "role": "assistant", "content": generated.text },
            "finish_reason": generated.finish_reason,
            "logprobs": null,
        }),
        Endpoint::Completions => json!({
            "index": 0, "text": generated.text, "finish_reason": generated.finish_reason, "logprobs": null,
        }),
    };
    let body = json!({
        "id": id,
        "object": object(request.endpoint, false),
        "created": created(),
        "model": request.model_name,
        "choices": [choice],
        "usage": usage,
        "system_fingerprint": null,
    });
    Ok(json(StatusCode::OK, &body).map(Reply::from))
}

/// The answer as server-sent events: chunks as text is generated, then the finish reason,
/// optionally the usage, and `[DONE]`. A client that goes away stops the generation.
fn stream(prepared: Prepared) -> Response<Reply> {
    let Prepared { request, manifest, loaded, config, prompt, params } = prepared;
    let (sender, body) = Reply::channel(STREAM_BUFFER);
    let (id, created) = (completion_id(request.endpoint), created());
    let chunk = move |delta: Value, finish: Option<FinishReason>, usage: Option<Value>| {
        let choices = match (usage.is_some(), request.endpoint) {
            (true, _) => json!([]),
            (false, Endpoint::Chat) => {
                json!([{ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null }])
            }
            (false, Endpoint::Completions) => json!([{
                "index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "finish_reason": finish, "logprobs": null,
            }]),
        };
        let mut event = json!({
            "id": id, "object": object(request.endpoint, true), "created": created, "model": request.model_name,
            "choices": choices, "system_fingerprint": null,
        });
        if let Some(usage) = usage {
            event["usage"] = usage;
        }
        sse(&event)
    };
    let include_usage = request.include_usage;
    let is_chat = request.endpoint == Endpoint::Chat;
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let send = |bytes: Bytes| sender.blocking_send(bytes).is_ok();
        if is_chat && !send(chunk(json!({ "role": "assistant", "content": "" }), None, None)) {
            return;
        }
        let result = loaded.generate(&prompt, &params, &config, |delta| {
            if send(chunk(json!({ "content": delta }), None, None)) {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
        match result {
            Ok(generated) => {
                count_tokens(&manifest, generated.tokens.len(), generated.finish_reason);
                if generated.finish_reason == FinishReason::Cancelled {
                    return;
                }
                let _ = send(chunk(json!({}), Some(generated.finish_reason), None))
                    && (!include_usage
                        || send(chunk(json!({}), None, Some(usage(generated.prompt_tokens, generated.tokens.len())))))
                    && send(Bytes::from_static(b"data: [DONE]\n\n"));
            }
            Err(e) => {
                // The status line is gone; the error travels as an event, as OpenAI's does.
                tracing::error!(model = %manifest.name, version = %manifest.version, error = %e, "generation failed mid-stream");
                let error = lmaas_core::Error::from(e);
                let _ = send(sse(&json!({ "error": { "message": error.to_string(), "type": "api_error" } })));
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .expect("static response parts are valid")
}

fn sse(event: &Value) -> Bytes {
    let mut bytes = b"data: ".to_vec();
    serde_json::to_writer(&mut bytes, event).expect("a JSON value always serializes");
    bytes.extend_from_slice(b"\n\n");
    bytes.into()
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

fn object(endpoint: Endpoint, chunk: bool) -> &'static str {
    match (endpoint, chunk) {
        (Endpoint::Chat, false) => "chat.completion",
        (Endpoint::Chat, true) => "chat.completion.chunk",
        (Endpoint::Completions, _) => "text_completion",
    }
}

fn completion_id(endpoint: Endpoint) -> String {
    let mut bytes = [0u8; 12];
    let _ = getrandom::fill(&mut bytes);
    let prefix = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
    format!("{prefix}-{}", hex::encode(bytes))
}

fn created() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn count_tokens(manifest: &Manifest, tokens: usize, finish: FinishReason) {
    let finish = serde_json::to_value(finish).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    metrics::counter!(lmaas_core::metrics::GENERATED_TOKENS, "model" => manifest.name.to_string(), "finish_reason" => finish)
        .increment(tokens as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(endpoint: Endpoint, body: Value) -> Result<CompletionRequest, String> {
        CompletionRequest::parse(endpoint, body.to_string().as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn chat_requests_parse_with_openai_defaults() {
        let request =
            parse(Endpoint::Chat, json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}))
                .unwrap();
        assert_eq!(request.prompt, Prompt::Messages(vec![ChatMessage { role: "user".into(), content: "hi".into() }]));
        assert_eq!(request.sampling, Sampling { temperature: 1.0, top_p: 1.0, top_k: 0, seed: None });
        assert_eq!((request.max_tokens, request.stream, request.stop.len()), (None, false, 0));
        let request = parse(
            Endpoint::Chat,
            json!({"model": "smollm2:int4", "messages": [{"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]}],
                   "max_completion_tokens": 5, "temperature": 0, "top_k": 3, "seed": -1, "stop": "\n", "stream": true,
                   "stream_options": {"include_usage": true}, "user": "x"}),
        )
        .unwrap();
        assert_eq!(
            request.prompt,
            Prompt::Messages(vec![ChatMessage { role: "system".into(), content: "be brief".into() }])
        );
        assert_eq!((request.max_tokens, request.stream, request.include_usage), (Some(5), true, true));
        assert_eq!(request.sampling.seed, Some(u64::MAX));
        assert_eq!(request.stop, vec!["\n".to_string()]);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let chat = |extra: Value| {
            let mut body = json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            parse(Endpoint::Chat, body).unwrap_err()
        };
        assert!(chat(json!({"messages": []})).contains("'messages' is empty"));
        assert!(chat(json!({"messages": [{"role": "robot", "content": "x"}]})).contains("'messages[0].role'"));
        assert!(chat(json!({"messages": [{"role": "user"}]})).contains("'messages[0].content'"));
        assert!(chat(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}))
            .contains("'messages[0].content[0]'"));
        assert!(chat(json!({"max_tokens": 0})).contains("'max_tokens'"));
        assert!(chat(json!({"temperature": 3})).contains("'temperature'"));
        assert!(chat(json!({"top_p": 0})).contains("'top_p'"));
        assert!(chat(json!({"top_k": -1})).contains("'top_k'"));
        assert!(chat(json!({"seed": "x"})).contains("'seed'"));
        assert!(chat(json!({"stop": ["a", "b", "c", "d", "e"]})).contains("'stop'"));
        assert!(chat(json!({"stop": [""]})).contains("'stop[0]'"));
        assert!(chat(json!({"stream": "yes"})).contains("'stream'"));
        assert!(chat(json!({"stream_options": {"include_usage": true}})).contains("'stream_options'"));
        assert!(chat(json!({"n": 2})).contains("'n'"));
        assert!(chat(json!({"model": "Bad Name"})).contains("'model'"));
        assert!(parse(Endpoint::Chat, json!({"model": "m"})).unwrap_err().contains("'messages' is required"));
        assert!(parse(Endpoint::Completions, json!({"model": "m", "prompt": ["a", "b"]}))
            .unwrap_err()
            .contains("'prompt'"));
        assert!(parse(Endpoint::Completions, json!({"model": "m", "prompt": ""}))
            .unwrap_err()
            .contains("'prompt' is empty"));
        assert!(parse(Endpoint::Completions, json!({"model": "m"})).unwrap_err().contains("'prompt' is required"));
    }
}
