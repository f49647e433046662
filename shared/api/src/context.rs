//! What every request goes through before and after its handler: a request id (echoed if the
//! client sent a sane one), a tracing span carrying it, authentication for protected routes, the
//! error mapping, and the `x-request-id` header on the response.

use std::future::Future;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use lmaas_core::auth::Authenticator;
use lmaas_core::{Error, Principal};
use tracing::Instrument;

use crate::response::error_response;
use crate::routes::Route;

pub const REQUEST_ID: &str = "x-request-id";

/// A parsed, authenticated request, handed to a function's handler.
pub struct Call {
    pub route: Route,
    /// `None` only on open routes (server metadata, health).
    pub principal: Option<Principal>,
    pub request: Request<Bytes>,
}

impl Call {
    /// The principal, for handlers of protected routes.
    pub fn principal(&self) -> Result<&Principal, Error> {
        self.principal.as_ref().ok_or_else(|| Error::Internal("protected route without a principal".into()))
    }
}

/// Runs `handler` for `request` with routing, authentication and error mapping around it.
pub async fn serve<F, Fut>(authenticator: &Authenticator, request: Request<Bytes>, handler: F) -> Response<Bytes>
where
    F: FnOnce(Call) -> Fut,
    Fut: Future<Output = Result<Response<Bytes>, Error>>,
{
    let request_id = request_id(&request);
    let path = request.uri().path().to_string();
    let span = tracing::info_span!("request", request_id = %request_id, method = %request.method(), path = %path);
    let mut response = async {
        let result = async {
            let route = Route::parse(request.method(), &path)?;
            let principal = match route.required_scope() {
                None => None,
                Some(scope) => {
                    let authorization =
                        request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                    let principal = authenticator.authenticate(authorization).await?;
                    principal.require(scope)?;
                    Some(principal)
                }
            };
            handler(Call { route, principal, request }).await
        }
        .await;
        result.unwrap_or_else(|e| error_response(&path, e))
    }
    .instrument(span)
    .await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// The client's `x-request-id` if it is short and plain, else a new random one.
fn request_id(request: &Request<Bytes>) -> String {
    let given = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok());
    match given {
        Some(id)
            if !id.is_empty()
                && id.len() <= 128
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
        {
            id.to_string()
        }
        _ => {
            let mut bytes = [0u8; 16];
            // Without entropy a request id is still useful for correlating logs; it need not be secret.
            let _ = getrandom::fill(&mut bytes);
            hex::encode(bytes)
        }
    }
}
