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
        _ => new_request_id(),
    }
}

/// 32 hex digits: a random key drawn once per process, then a per-process counter put through a
/// keyed bijection, so ids are unique within the process, all but certainly unique across
/// processes, and do not show how many requests an instance has served. (Drawing 16 random bytes
/// per request cost a getrandom syscall each; ids need not be secret.)
fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEY: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let [process, mask] = *KEY.get_or_init(|| {
        let mut bytes = [0u8; 16];
        // Without entropy, the clock and process id still tell processes apart.
        if getrandom::fill(&mut bytes).is_err() {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            bytes = (nanos ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
        }
        let half = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        [half(0), half(8)]
    });
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{process:016x}{:016x}", mix(count ^ mask))
}

/// SplitMix64's finalizer: a bijection on u64 that scatters consecutive inputs.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &str) -> Request<Bytes> {
        Request::get("/").header(REQUEST_ID, id).body(Bytes::new()).unwrap()
    }

    #[test]
    fn new_request_ids_are_distinct_hex_and_plain_client_ids_are_kept() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
        assert_eq!(request_id(&with_id("trace-me-42")), "trace-me-42");
        let replaced = request_id(&with_id("not plain; <script>"));
        assert_eq!(replaced.len(), 32);
        assert_ne!(replaced, "not plain; <script>");
    }
}
