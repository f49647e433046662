//! The route table of the V2 API, parsed from the raw request path so the same code serves under
//! API Gateway, `cargo lambda watch` and in process. Each function serves a subset.

use http::Method;
use lmaas_core::acl::Access;
use lmaas_core::jobs::JobId;
use lmaas_core::{AliasName, Error, ModelName, ModelRef, Scope, Version};

/// A request's route, with its model reference parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    ServerMetadata,
    HealthLive,
    HealthReady,
    ModelMetadata(ModelRef),
    ModelReady(ModelRef),
    Infer(ModelRef),
    /// `PUT /v1/models/{model}/versions/{version}`: declare a version, get upload URLs.
    PutVersion(ModelName, Version),
    /// `POST /v1/models/{model}/versions/{version}/commit`: verify, validate, make ready.
    CommitVersion(ModelName, Version),
    GetVersion(ModelName, Version),
    DeleteVersion(ModelName, Version),
    ListVersions(ModelName),
    PutAlias(ModelName, AliasName),
    /// `POST /v1/embeddings` (OpenAI).
    Embeddings,
    /// `GET /v1/models` (OpenAI): the models the caller may use.
    ListModels,
    /// `POST /v1/chat/completions` (OpenAI).
    ChatCompletions,
    /// `POST /v1/completions` (OpenAI, legacy text completions).
    Completions,
    SubmitJob,
    ListJobs,
    GetJob(JobId),
    CancelJob(JobId),
}

impl Route {
    pub fn parse(method: &Method, path: &str) -> Result<Route, Error> {
        let segments: Vec<String> = path.trim_matches('/').split('/').map(percent_decode).collect::<Result<_, _>>()?;
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let (route, allowed) = match segments.as_slice() {
            ["v2"] => (Route::ServerMetadata, Method::GET),
            ["v2", "health", "live"] => (Route::HealthLive, Method::GET),
            ["v2", "health", "ready"] => (Route::HealthReady, Method::GET),
            ["v1", "embeddings"] => (Route::Embeddings, Method::POST),
            ["v1", "models"] => (Route::ListModels, Method::GET),
            ["v1", "chat", "completions"] => (Route::ChatCompletions, Method::POST),
            ["v1", "completions"] => (Route::Completions, Method::POST),
            ["v1", "jobs"] if *method == Method::POST => (Route::SubmitJob, Method::POST),
            ["v1", "jobs"] => (Route::ListJobs, Method::GET),
            ["v1", "jobs", id] => (Route::GetJob(JobId::parse(id)?), Method::GET),
            ["v1", "jobs", id, "cancel"] => (Route::CancelJob(JobId::parse(id)?), Method::POST),
            ["v1", "models", model, rest @ ..] => return registry_route(method, path, model, rest),
            ["v2", "models", model, rest @ ..] => {
                let (version, action) = match rest {
                    ["versions", version, action @ ..] => (Some(*version), action),
                    action => (None, action),
                };
                let model = ModelRef::from_path(model, version)?;
                match action {
                    [] => (Route::ModelMetadata(model), Method::GET),
                    ["ready"] => (Route::ModelReady(model), Method::GET),
                    ["infer"] => (Route::Infer(model), Method::POST),
                    _ => return Err(no_route(method, path)),
                }
            }
            _ => return Err(no_route(method, path)),
        };
        if *method != allowed {
            return Err(Error::bad_request(format!("{path} takes {allowed}, not {method}")));
        }
        Ok(route)
    }
}

impl Route {
    /// The route's name in metrics: its path template (bounded cardinality, no ids or models).
    pub fn name(&self) -> &'static str {
        match self {
            Route::ServerMetadata => "/v2",
            Route::HealthLive => "/v2/health/live",
            Route::HealthReady => "/v2/health/ready",
            Route::ModelMetadata(_) => "/v2/models/{model}",
            Route::ModelReady(_) => "/v2/models/{model}/ready",
            Route::Infer(_) => "/v2/models/{model}/infer",
            Route::PutVersion(..) | Route::GetVersion(..) | Route::DeleteVersion(..) => {
                "/v1/models/{model}/versions/{version}"
            }
            Route::CommitVersion(..) => "/v1/models/{model}/versions/{version}/commit",
            Route::ListVersions(_) => "/v1/models/{model}/versions",
            Route::PutAlias(..) => "/v1/models/{model}/aliases/{alias}",
            Route::Embeddings => "/v1/embeddings",
            Route::ListModels => "/v1/models",
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::SubmitJob | Route::ListJobs => "/v1/jobs",
            Route::GetJob(_) => "/v1/jobs/{id}",
            Route::CancelJob(_) => "/v1/jobs/{id}/cancel",
        }
    }

    /// The scope a caller needs; `None` for the open routes (server metadata and health).
    pub fn required_scope(&self) -> Option<Scope> {
        match self {
            Route::ServerMetadata | Route::HealthLive | Route::HealthReady => None,
            Route::ModelMetadata(_) | Route::ModelReady(_) => Some(Scope::ModelsRead),
            Route::Infer(_) | Route::Embeddings | Route::ChatCompletions | Route::Completions => Some(Scope::Infer),
            Route::ListModels => Some(Scope::ModelsRead),
            Route::SubmitJob | Route::CancelJob(_) => Some(Scope::JobsWrite),
            Route::ListJobs | Route::GetJob(_) => Some(Scope::JobsRead),
            Route::GetVersion(..) | Route::ListVersions(_) => Some(Scope::ModelsRead),
            Route::PutVersion(..) | Route::CommitVersion(..) | Route::DeleteVersion(..) | Route::PutAlias(..) => {
                Some(Scope::ModelsWrite)
            }
        }
    }

    /// What the route does with its model, for the model's ACL.
    pub fn access(&self) -> Access {
        match self {
            Route::Infer(_) | Route::Embeddings | Route::ChatCompletions | Route::Completions => Access::Invoke,
            _ => Access::Read,
        }
    }
}

fn registry_route(method: &Method, path: &str, model: &str, rest: &[&str]) -> Result<Route, Error> {
    let name = ModelName::parse(model)?;
    let version = |raw: &str| match lmaas_core::Tag::parse(raw)? {
        lmaas_core::Tag::Version(v) => Ok(v),
        lmaas_core::Tag::Alias(_) => Err(Error::bad_request(format!("'{raw}' is not a version number"))),
    };
    let wrong_method = |allowed: &str| Err(Error::bad_request(format!("{path} takes {allowed}, not {method}")));
    match (rest, method.clone()) {
        (["versions"], Method::GET) => Ok(Route::ListVersions(name)),
        (["versions"], _) => wrong_method("GET"),
        (["versions", v], Method::GET) => Ok(Route::GetVersion(name, version(v)?)),
        (["versions", v], Method::PUT) => Ok(Route::PutVersion(name, version(v)?)),
        (["versions", v], Method::DELETE) => Ok(Route::DeleteVersion(name, version(v)?)),
        (["versions", _], _) => wrong_method("GET, PUT or DELETE"),
        (["versions", v, "commit"], Method::POST) => Ok(Route::CommitVersion(name, version(v)?)),
        (["versions", _, "commit"], _) => wrong_method("POST"),
        (["aliases", a], Method::PUT) => Ok(Route::PutAlias(name, AliasName::parse(a)?)),
        (["aliases", _], _) => wrong_method("PUT"),
        _ => Err(no_route(method, path)),
    }
}

fn no_route(method: &Method, path: &str) -> Error {
    Error::not_found(format!("no route for {method} {}", path.chars().take(200).collect::<String>()))
}

/// Decodes `%XX` escapes in a path segment (clients encode the `:` of `name:tag`).
fn percent_decode(segment: &str) -> Result<String, Error> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(byte.ok_or_else(|| Error::bad_request("the path has a malformed %-escape"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::bad_request("the path is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str) -> Result<Route, Error> {
        Route::parse(&method, path)
    }

    #[test]
    fn v2_paths_map_to_routes_with_parsed_models() {
        assert_eq!(route(Method::GET, "/v2").unwrap(), Route::ServerMetadata);
        assert_eq!(route(Method::GET, "/v2/health/ready/").unwrap(), Route::HealthReady);
        let infer = route(Method::POST, "/v2/models/mlp/versions/2/infer").unwrap();
        assert_eq!(infer, Route::Infer(ModelRef::parse("mlp:2").unwrap()));
        let tagged = route(Method::GET, "/v2/models/minilm%3Aint8/ready").unwrap();
        assert_eq!(tagged, Route::ModelReady(ModelRef::parse("minilm:int8").unwrap()));
        assert_eq!(
            route(Method::GET, "/v2/models/mlp").unwrap(),
            Route::ModelMetadata(ModelRef::parse("mlp").unwrap())
        );
    }

    #[test]
    fn health_is_open_and_every_model_route_needs_a_scope() {
        assert_eq!(route(Method::GET, "/v2/health/live").unwrap().required_scope(), None);
        assert_eq!(route(Method::GET, "/v2/models/m").unwrap().required_scope(), Some(Scope::ModelsRead));
        assert_eq!(route(Method::GET, "/v2/models/m/ready").unwrap().required_scope(), Some(Scope::ModelsRead));
        assert_eq!(route(Method::POST, "/v2/models/m/infer").unwrap().required_scope(), Some(Scope::Infer));
    }

    #[test]
    fn registry_paths_map_to_routes_and_need_the_write_scope_to_change_anything() {
        let put = route(Method::PUT, "/v1/models/mlp/versions/2").unwrap();
        assert_eq!(put, Route::PutVersion(ModelName::parse("mlp").unwrap(), Version::new(2).unwrap()));
        assert_eq!(put.required_scope(), Some(Scope::ModelsWrite));
        assert_eq!(route(Method::GET, "/v1/models/mlp/versions").unwrap().required_scope(), Some(Scope::ModelsRead));
        assert!(matches!(route(Method::POST, "/v1/models/mlp/versions/2/commit"), Ok(Route::CommitVersion(..))));
        assert!(matches!(route(Method::PUT, "/v1/models/mlp/aliases/prod"), Ok(Route::PutAlias(..))));
        assert!(
            matches!(route(Method::PUT, "/v1/models/mlp/versions/latest"), Err(Error::BadRequest(m)) if m.contains("not a version"))
        );
        assert!(
            matches!(route(Method::POST, "/v1/models/mlp/versions/1"), Err(Error::BadRequest(m)) if m.contains("GET, PUT or DELETE"))
        );
    }

    #[test]
    fn unknown_paths_bad_names_and_wrong_methods_are_client_errors() {
        assert!(matches!(route(Method::GET, "/v3"), Err(Error::NotFound(_))));
        assert!(matches!(route(Method::GET, "/v2/models/mlp/explode"), Err(Error::NotFound(_))));
        assert!(
            matches!(route(Method::POST, "/v2/models/Bad!/infer"), Err(Error::BadRequest(m)) if m.contains("invalid model name"))
        );
        assert!(
            matches!(route(Method::GET, "/v2/models/mlp/infer"), Err(Error::BadRequest(m)) if m.contains("takes POST"))
        );
        assert!(matches!(route(Method::GET, "/v2/models/m%zz"), Err(Error::BadRequest(_))));
    }
}
