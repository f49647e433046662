//! The models function's service: server metadata, health, model metadata and readiness read from
//! the manifests in S3, and the registry (`/v1/models/…`).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use lmaas_core::acl::authorize;
use lmaas_core::auth::Authenticator;
use lmaas_core::v2::model_metadata;
use lmaas_core::{Error, ModelResolver, RegistryStore};
use lmaas_engine::{ExecutionProvider, ExecutionProviders, Runtime};
use serde_json::{json, Map, Value};

use crate::context::{serve, Call};
use crate::registry::Registry;
use crate::response::json;
use crate::routes::Route;
use crate::{ConfigError, ModelsConfig};

/// Answers the read-only V2 routes.
pub struct ModelsService {
    authenticator: Authenticator,
    resolver: ModelResolver,
    registry: Registry,
    execution_provider: &'static str,
}

impl ModelsService {
    pub fn new(store: Arc<dyn RegistryStore>, authenticator: Authenticator, config: &ModelsConfig) -> Self {
        ModelsService {
            authenticator,
            registry: Registry::new(
                store.clone(),
                config.providers.clone(),
                config.scratch_dir.clone(),
                config.max_model_bytes,
            ),
            resolver: ModelResolver::new(store, config.alias_ttl),
            execution_provider: serving_provider(&config.providers),
        }
    }

    pub async fn from_env(config: ModelsConfig) -> Result<Self, ConfigError> {
        let (store, authenticator) = crate::auth::s3_backends(&config.bucket, &config.auth).await?;
        Ok(ModelsService::new(store, authenticator, &config))
    }

    pub async fn handle(&self, request: Request<Bytes>) -> Response<Bytes> {
        serve(&self.authenticator, request, |call| self.answer(call)).await
    }

    async fn answer(&self, call: Call) -> Result<Response<Bytes>, Error> {
        match &call.route {
            Route::ServerMetadata => Ok(json(
                StatusCode::OK,
                &json!({"name": "lmaas", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"]}),
            )),
            Route::HealthLive => Ok(json(StatusCode::OK, &json!({"live": true}))),
            Route::ModelMetadata(model) => {
                let manifest = self.resolver.resolve(model).await?;
                authorize(call.principal()?, &manifest, call.route.access())?;
                let mut parameters = Map::new();
                parameters.insert("execution_provider".into(), Value::from(self.execution_provider));
                parameters.insert("task".into(), serde_json::to_value(manifest.task).expect("task serializes"));
                parameters.insert("created_at".into(), Value::from(manifest.created_at.clone()));
                Ok(json(StatusCode::OK, &model_metadata(&manifest, parameters)))
            }
            Route::ModelReady(model) => {
                let manifest = self.resolver.resolve(model).await?;
                authorize(call.principal()?, &manifest, call.route.access())?;
                Ok(json(
                    StatusCode::OK,
                    &json!({"name": manifest.name, "version": manifest.version.to_string(), "ready": true}),
                ))
            }
            Route::Infer(_) | Route::Embeddings | Route::ChatCompletions | Route::Completions | Route::HealthReady => {
                Err(Error::not_found("inference and readiness are served by the infer function"))
            }
            Route::SubmitJob | Route::ListJobs | Route::GetJob(_) | Route::CancelJob(_) => {
                Err(Error::not_found("jobs are served by the jobs function"))
            }
            Route::ListModels => self.registry.list_models(call.principal()?, &self.resolver).await,
            Route::PutVersion(name, version) => {
                self.registry.put_version(call.principal()?, name, *version, call.request.body()).await
            }
            Route::CommitVersion(name, version) => {
                self.registry.commit(call.principal()?, &self.resolver, name, *version).await
            }
            Route::ListVersions(name) => self.registry.list_versions(call.principal()?, name).await,
            Route::GetVersion(name, version) => self.registry.get_version(call.principal()?, name, *version).await,
            Route::DeleteVersion(name, version) => {
                let force = call.request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "force=true"));
                self.registry.delete_version(call.principal()?, &self.resolver, name, *version, force).await
            }
            Route::PutAlias(name, alias) => {
                self.registry.put_alias(call.principal()?, &self.resolver, name, alias, call.request.body()).await
            }
        }
    }
}

/// The provider infer functions of this deployment serve on: the first one asked for that the
/// ONNX Runtime library supports. Both functions share the library (the same layer) and the
/// setting; the infer function also reports what each session actually got, per response.
fn serving_provider(providers: &ExecutionProviders) -> &'static str {
    let runtime = match Runtime::get() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot tell the execution provider");
            return "unknown";
        }
    };
    for provider in providers.iter() {
        match provider {
            ExecutionProvider::Cuda if runtime.cuda_compiled_in() => return ExecutionProvider::Cuda.as_str(),
            ExecutionProvider::Cuda => {
                tracing::warn!("CUDA requested but the ONNX Runtime library has no CUDA provider; serving on CPU")
            }
            ExecutionProvider::Cpu => break,
        }
    }
    ExecutionProvider::Cpu.as_str()
}
