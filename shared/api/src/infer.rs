//! The infer function's service: `POST /v2/models/{model}[/versions/{version}]/infer` and
//! `POST /v1/embeddings`.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use lmaas_core::acl::authorize;
use lmaas_core::auth::Authenticator;
use lmaas_core::manifest::Task;
use lmaas_core::v2::{encode_response, InferRequest, HEADER_LENGTH};
use lmaas_core::{Error, Limits, ModelRef, ModelResolver, ModelStore};
use lmaas_engine::{EmbeddingConfig, ModelCache};
use serde_json::{Map, Value};

use crate::blocking::run_blocking;
use crate::context::{serve, Call};
use crate::embeddings::EmbeddingsRequest;
use crate::response::json;
use crate::routes::Route;
use crate::{ConfigError, InferConfig};

/// What this function preloads (generation models are the chat function's).
const SERVED_TASKS: [Task; 2] = [Task::Tensor, Task::Embeddings];

/// Authorizes, resolves the model, validates the request against it, runs it, encodes the answer.
pub struct InferService {
    authenticator: Authenticator,
    resolver: ModelResolver,
    cache: ModelCache,
    limits: Limits,
    embeddings_max_inputs: usize,
    preload: Vec<ModelRef>,
}

impl InferService {
    pub fn new(store: Arc<dyn ModelStore>, authenticator: Authenticator, config: InferConfig) -> Self {
        InferService {
            authenticator,
            resolver: ModelResolver::new(store.clone(), config.alias_ttl),
            cache: ModelCache::new(store, config.cache),
            limits: config.limits,
            embeddings_max_inputs: config.embeddings_max_inputs,
            preload: config.preload,
        }
    }

    /// The service over S3, with clients built from the environment.
    pub async fn from_env(config: InferConfig) -> Result<Self, ConfigError> {
        let (store, authenticator) = crate::auth::s3_backends(&config.bucket, &config.auth).await?;
        Ok(InferService::new(store, authenticator, config))
    }

    /// The loaded model a reference resolves to, loaded on first use, as a request would get it
    /// (the handler bench runs raw `session.run` on it, so both sides share one session).
    pub async fn loaded_model(&self, reference: &ModelRef) -> Result<Arc<lmaas_engine::LoadedModel>, Error> {
        let manifest = self.resolver.resolve(reference).await?;
        self.cache.get(&manifest).await
    }

    /// Loads the `LMAAS_PRELOAD` models (during INIT, so the first request is warm). A model that
    /// fails is logged and left for the first request to retry: one bad model must not take the
    /// function down for the others.
    pub async fn preload(&self) {
        self.cache.preload(&self.resolver, &self.preload, &SERVED_TASKS).await;
    }

    pub async fn handle(&self, request: Request<Bytes>) -> Response<Bytes> {
        serve(&self.authenticator, request, |call| async move {
            match &call.route {
                Route::HealthReady => Ok(self.ready().await),
                Route::Infer(model) => self.infer(model, &call).await,
                Route::Embeddings => self.embeddings(&call).await,
                _ => {
                    Err(Error::not_found(format!("{} is not served by the infer function", call.request.uri().path())))
                }
            }
        })
        .await
    }

    /// Ready when the model store answers and every `LMAAS_PRELOAD` model is loaded: a load
    /// balancer or deploy check then only sends traffic to instances that can answer at once.
    async fn ready(&self) -> Response<Bytes> {
        let store = self.resolver.store().ping().await;
        if let Err(e) = &store {
            tracing::error!(error = %e, "not ready: the model store is unreachable");
        }
        let mut models = Map::new();
        for reference in &self.preload {
            let loaded = match self.resolver.resolve(reference).await {
                Ok(manifest) if !SERVED_TASKS.contains(&manifest.task) => continue,
                Ok(manifest) => self.cache.is_loaded(&manifest),
                Err(_) => false,
            };
            models.insert(reference.to_string(), Value::from(loaded));
        }
        let ready = store.is_ok() && models.values().all(|v| v == &Value::Bool(true));
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        let store = if store.is_ok() { "reachable" } else { "unreachable" };
        json(status, &serde_json::json!({ "ready": ready, "store": store, "models": models }))
    }

    async fn embeddings(&self, call: &Call) -> Result<Response<Bytes>, Error> {
        let request = EmbeddingsRequest::parse(call.request.body(), self.embeddings_max_inputs)?;
        let manifest = self.resolver.resolve(&request.model).await?;
        authorize(call.principal()?, &manifest, call.route.access())?;
        if manifest.task != Task::Embeddings {
            return Err(Error::bad_request(format!("'model': '{}' is not an embeddings model", request.model_name)));
        }
        let config = EmbeddingConfig::from_manifest_config(&manifest.config)
            .map_err(|e| Error::Internal(format!("model {} has an invalid task config: {e}", manifest.name)))?;
        let loaded = self.cache.get(&manifest).await?;
        let (input, dimensions) = (request.input, request.dimensions);
        // Concurrent requests on one model share session runs (micro-batching).
        let embeddings = run_blocking("embeddings", move || loaded.embed_batched(input, &config, dimensions)).await??;
        Ok(json(StatusCode::OK, &crate::embeddings::response(&request.model_name, &embeddings, request.base64)))
    }

    async fn infer(&self, model: &ModelRef, call: &Call) -> Result<Response<Bytes>, Error> {
        let manifest = self.resolver.resolve(model).await?;
        authorize(call.principal()?, &manifest, call.route.access())?;
        let header_length = match call.request.headers().get(HEADER_LENGTH) {
            None => None,
            Some(value) => {
                Some(value.to_str().map_err(|_| Error::bad_request("Inference-Header-Content-Length is not text"))?)
            }
        };
        let limits = self.limits.for_model(&manifest.config);
        let parsed = InferRequest::parse(call.request.body(), header_length, &manifest, &limits)?;
        let loaded = self.cache.get(&manifest).await?;
        let names: Vec<String> = parsed.outputs.iter().map(|o| o.name.clone()).collect();
        let run_model = loaded.clone();
        let inputs = parsed.inputs;
        let tensors = run_blocking("inference", move || run_model.run(&inputs, &names)).await??;
        let outputs: Vec<_> = tensors.into_iter().zip(&parsed.outputs).map(|(t, o)| (t, o.binary)).collect();
        let mut parameters = Map::new();
        parameters.insert("execution_provider".into(), Value::from(loaded.execution_provider().as_str()));
        let encoded = encode_response(&manifest, parsed.id.as_deref(), parameters, &outputs);
        let response = Response::builder().status(StatusCode::OK);
        let response = match encoded.header_length {
            Some(length) => {
                response.header(header::CONTENT_TYPE, "application/octet-stream").header(HEADER_LENGTH, length)
            }
            None => response.header(header::CONTENT_TYPE, "application/json"),
        };
        response.body(Bytes::from(encoded.body)).map_err(|e| Error::Internal(format!("building the response: {e}")))
    }
}
