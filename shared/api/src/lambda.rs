//! The Lambda adapter: turns API Gateway / `cargo lambda watch` events into `http::Request<Bytes>`
//! for a service, and its responses back. Nothing else in lmaas knows about Lambda's HTTP types.

use std::future::Future;

use bytes::Bytes;
use http::{header, Request, Response};
use lambda_http::{service_fn, Body};

use crate::reply::Reply;

/// Serves `handler` as a Lambda function until the runtime stops it.
pub async fn serve<F, Fut>(handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(Request<Bytes>) -> Fut + Send + Sync,
    Fut: Future<Output = Response<Bytes>> + Send,
{
    lambda_http::run(service_fn(|event: lambda_http::Request| {
        let response = handler(from_lambda_request(event));
        async move {
            let response = into_lambda_response(response.await);
            crate::telemetry::flush_metrics();
            Ok::<_, lambda_http::Error>(response)
        }
    }))
    .await
}

/// Serves a handler whose bodies may stream, with Lambda response streaming (the function's
/// invoke mode must be RESPONSE_STREAM; `cargo lambda watch` serves it as a chunked body).
pub async fn serve_streaming<F, Fut>(handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(Request<Bytes>) -> Fut + Send + Sync,
    Fut: Future<Output = Response<Reply>> + Send,
{
    lambda_http::run_with_streaming_response(service_fn(|event: lambda_http::Request| {
        let response = handler(from_lambda_request(event));
        async move {
            let response = response.await;
            // Metrics recorded so far (the stream's own are flushed by the next invocation).
            crate::telemetry::flush_metrics();
            Ok::<_, lambda_http::Error>(response)
        }
    }))
    .await
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
