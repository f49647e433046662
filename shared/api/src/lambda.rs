//! The Lambda adapter: turns API Gateway / `cargo lambda watch` events into `http::Request<Bytes>`
//! for a service, and its responses back. Nothing else in lmaas knows about Lambda's HTTP types.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, Request, Response};
use lambda_http::{service_fn, Body};

use crate::reply::Reply;

/// Restarts of the invocation loop in a row (each within `STEADY` of the last) before giving up.
const MAX_RESTARTS_IN_A_ROW: u32 = 5;
/// A loop that ran this long before failing counts as recovered: the next failure is a first one.
const STEADY: Duration = Duration::from_secs(10);

/// Serves `handler` as a Lambda function until the runtime stops it.
pub async fn serve<F, Fut>(handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(Request<Bytes>) -> Fut + Send + Sync,
    Fut: Future<Output = Response<Bytes>> + Send,
{
    keep_serving(|| {
        lambda_http::run(service_fn(|event: lambda_http::Request| {
            let response = handler(from_lambda_request(event));
            async move {
                let response = into_lambda_response(response.await);
                crate::telemetry::flush_metrics();
                Ok::<_, lambda_http::Error>(response)
            }
        }))
    })
    .await
}

/// Serves a handler whose bodies may stream, with Lambda response streaming (the function's
/// invoke mode must be RESPONSE_STREAM; `cargo lambda watch` serves it as a chunked body).
pub async fn serve_streaming<F, Fut>(handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(Request<Bytes>) -> Fut + Send + Sync,
    Fut: Future<Output = Response<Reply>> + Send,
{
    keep_serving(|| {
        lambda_http::run_with_streaming_response(service_fn(|event: lambda_http::Request| {
            let response = handler(from_lambda_request(event));
            async move {
                let response = response.await;
                // Metrics recorded so far (the stream's own are flushed by the next invocation).
                crate::telemetry::flush_metrics();
                Ok::<_, lambda_http::Error>(response)
            }
        }))
    })
    .await
}

/// Runs lambda_runtime's invocation loop, and runs it again when it fails. The loop ends when a
/// Runtime API call fails in transport, and panics (debug builds unwind) on a `/next` answer
/// without a request id; an exited process costs Lambda a cold start, and under `cargo lambda
/// watch` it is never restarted: every later invocation of the function would wait forever. The
/// handler's state (warm models) lives in `make_loop`'s captures and survives the restart. After
/// `MAX_RESTARTS_IN_A_ROW` quick failures the error is returned and the process exits as before.
pub async fn keep_serving<Fut>(make_loop: impl Fn() -> Fut) -> Result<(), lambda_http::Error>
where
    Fut: Future<Output = Result<(), lambda_http::Error>>,
{
    let mut restarts_in_a_row = 0;
    loop {
        let started = Instant::now();
        let error = match AssertUnwindSafe(make_loop()).catch_unwind().await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => error.to_string(),
            Err(panic) => panic_message(panic.as_ref()),
        };
        restarts_in_a_row = if started.elapsed() >= STEADY { 1 } else { restarts_in_a_row + 1 };
        if restarts_in_a_row > MAX_RESTARTS_IN_A_ROW {
            tracing::error!(%error, "the Lambda invocation loop keeps failing; exiting");
            return Err(error.into());
        }
        tracing::error!(%error, restarts_in_a_row, "the Lambda invocation loop failed; polling for the next invocation again");
        tokio::time::sleep(Duration::from_millis(100) * restarts_in_a_row).await;
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str));
    format!("panicked: {}", text.unwrap_or("(no message)"))
}

fn from_lambda_request(event: lambda_http::Request) -> Request<Bytes> {
    crate::telemetry::count_cold_start();
    let (mut parts, body) = event.into_parts();
    // The invocation's X-Ray trace id, when API Gateway did not pass the header itself.
    let from_context = parts.extensions.get::<lambda_http::Context>().and_then(|c| c.xray_trace_id.clone());
    if let (false, Some(trace)) = (parts.headers.contains_key(crate::context::TRACE_ID), from_context) {
        if let Ok(value) = http::HeaderValue::from_str(&trace) {
            parts.headers.insert(crate::context::TRACE_ID, value);
        }
    }
    let body = match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(bytes) => Bytes::from(bytes),
        _ => Bytes::new(),
    };
    Request::from_parts(parts, body)
}

/// JSON goes back as text; anything else (binary tensor data) as bytes, which API Gateway
/// base64-encodes on the way out.
fn into_lambda_response(response: Response<Bytes>) -> Response<Body> {
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    response.map(|bytes| match (is_json, String::from_utf8(bytes.to_vec())) {
        (true, Ok(text)) => Body::Text(text),
        (_, Ok(text)) if text.is_empty() => Body::Empty,
        (_, Ok(_)) | (_, Err(_)) => Body::Binary(bytes.to_vec()),
    })
}
