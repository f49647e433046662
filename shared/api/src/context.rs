//! What every request goes through before and after its handler: a request id (echoed if the
//! client sent a sane one), a tracing span carrying it and the X-Ray trace id, authentication for
//! protected routes, the error mapping, request metrics, and the `x-request-id` header on the
//! response.

use std::future::Future;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use lmaas_core::auth::Authenticator;
use lmaas_core::metrics as metric;
use lmaas_core::{Error, Principal};
use tracing::Instrument;

use crate::reply::ReplyBody;
use crate::response::error_response;
use crate::routes::Route;

pub const REQUEST_ID: &str = "x-request-id";
/// API Gateway and the Lambda adapter put the X-Ray trace header here.
pub const TRACE_ID: &str = "x-amzn-trace-id";

/// A parsed, authenticated request, handed to a function's handler.
pub struct Call {
    pub route: Route,
    /// `None` only on open routes (server metadata, health).
    pub principal: Option<Principal>,
    pub request: Request<Bytes>,
    /// The X-Ray trace id (`Root=…`), carried into jobs so their logs link back to this request.
    pub trace_id: Option<String>,
}

impl Call {
    /// The principal, for handlers of protected routes.
    pub fn principal(&self) -> Result<&Principal, Error> {
        self.principal.as_ref().ok_or_else(|| Error::Internal("protected route without a principal".into()))
    }
}

/// Runs `handler` for `request` with routing, authentication and error mapping around it.
/// Handlers answer with whole bodies (`Bytes`) or possibly streamed ones (`Reply`).
pub async fn serve<B, F, Fut>(authenticator: &Authenticator, request: Request<Bytes>, handler: F) -> Response<B>
where
    B: ReplyBody,
    F: FnOnce(Call) -> Fut,
    Fut: Future<Output = Result<Response<B>, Error>>,
{
    let request_id = request_id(&request);
    let trace_id = trace_id(&request);
    let path = request.uri().path().to_string();
    let started = std::time::Instant::now();
    let request_bytes = request.body().len();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        trace_id = trace_id.as_deref().unwrap_or(""),
        method = %request.method(),
        path = %path
    );
    let mut route_name = "unknown";
    let mut response = async {
        let result = async {
            let route = Route::parse(request.method(), &path)?;
            route_name = route.name();
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
            handler(Call { route, principal, request, trace_id }).await
        }
        .await;
        result.unwrap_or_else(|e| error_response(&path, e).map(B::from))
    }
    .instrument(span)
    .await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status().as_str().to_string();
    let labels = [("route", route_name.to_string()), ("status", status)];
    metrics::histogram!(metric::REQUEST_DURATION, &labels).record(started.elapsed().as_secs_f64());
    metrics::histogram!(metric::REQUEST_BYTES, "route" => route_name).record(request_bytes as f64);
    if let Some(length) = response.body().known_len() {
        metrics::histogram!(metric::RESPONSE_BYTES, "route" => route_name).record(length as f64);
    }
    response
}

/// The X-Ray trace header's value if it looks like one (`Root=1-…`, at most 256 characters).
fn trace_id(request: &Request<Bytes>) -> Option<String> {
    let value = request.headers().get(TRACE_ID)?.to_str().ok()?;
    let sane = value.len() <= 256 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-=;:._".contains(&b));
    sane.then(|| value.to_string())
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
