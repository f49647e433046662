//! The API Gateway HTTP API Lambda authorizer (payload 2.0, simple responses): the same
//! authentication and route scopes as the functions, at the edge. Functions still authorize
//! every request themselves; this only stops the obviously unauthorized early and cheaply.

use lmaas_core::auth::Authenticator;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::routes::Route;

/// The parts of the authorizer event that matter (payload format 2.0).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizerEvent {
    #[serde(default)]
    pub identity_source: Option<Vec<String>>,
    #[serde(default)]
    pub raw_path: Option<String>,
    #[serde(default)]
    pub route_key: Option<String>,
    #[serde(default)]
    pub headers: std::collections::HashMap<String, String>,
    #[serde(default)]
    pub request_context: Option<RequestContext>,
}

#[derive(Debug, Deserialize)]
pub struct RequestContext {
    pub http: Option<HttpContext>,
}

#[derive(Debug, Deserialize)]
pub struct HttpContext {
    pub method: String,
}

/// `{"isAuthorized": bool, "context": {principal, tenant, scopes}}`.
pub async fn authorize_event(authenticator: &Authenticator, event: &AuthorizerEvent) -> Value {
    let authorization = event.identity_source.as_ref().and_then(|sources| sources.first().cloned()).or_else(|| {
        event.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("authorization")).map(|(_, v)| v.clone())
    });
    // The route key is "$default" on catch-all routes; the request context always has the method.
    let method = event
        .request_context
        .as_ref()
        .and_then(|c| c.http.as_ref())
        .map(|h| h.method.as_str())
        .or_else(|| event.route_key.as_deref().and_then(|k| k.split_once(' ')).map(|(m, _)| m))
        .unwrap_or("GET");
    let path = event.raw_path.as_deref().unwrap_or("/");
    let decision = async {
        let route = Route::parse(&method.parse().map_err(|_| lmaas_core::Error::bad_request("bad method"))?, path)?;
        let principal = authenticator.authenticate(authorization.as_deref()).await?;
        if let Some(scope) = route.required_scope() {
            principal.require(scope)?;
        }
        Ok::<_, lmaas_core::Error>(principal)
    }
    .await;
    match decision {
        Ok(principal) => {
            let scopes: Vec<&str> = principal.scopes.iter().map(|s| s.as_str()).collect();
            json!({
                "isAuthorized": true,
                "context": {"principal": principal.id, "tenant": principal.tenant, "scopes": scopes.join(" ")},
            })
        }
        Err(e) => {
            tracing::warn!(path, error = %e, "authorizer denied the request");
            json!({"isAuthorized": false, "context": {}})
        }
    }
}
