//! Where a function's HTTP service runs: inside Lambda (the default), or as a long-running HTTP
//! server when `LMAAS_HTTP_ADDR` is set. The server mode is a supported deployment (GPU hosts
//! behind a load balancer, containers) and the fair way to measure lmaas against another server:
//! the same service functions, served by hyper with keep-alive, no Lambda Runtime API hop.
//!
//! The server answers until SIGTERM/SIGINT, then stops accepting, lets requests in flight finish
//! (up to 30 s), and exits. With `LMAAS_METRICS_ADDR` it also serves Prometheus `/metrics`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::reply::Reply;

/// Largest request body the server reads (API Gateway's own limit is lower: 10 MB).
const MAX_BODY_BYTES: usize = 64 << 20;
const DRAIN: Duration = Duration::from_secs(30);

/// Serves `handler` in Lambda, or over HTTP on `LMAAS_HTTP_ADDR` when that is set.
pub async fn run<F, Fut>(function: &'static str, handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Bytes>> + Send + 'static,
{
    match http_addr(function)? {
        None => crate::lambda::serve(handler).await,
        Some(addr) => serve(addr, function, handler).await.map_err(Into::into),
    }
}

/// Like `run`, for a handler whose answers may stream (server-sent events): in Lambda through
/// response streaming, over HTTP as a chunked body.
pub async fn run_streaming<F, Fut>(function: &'static str, handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Reply>> + Send + 'static,
{
    match http_addr(function)? {
        None => crate::lambda::serve_streaming(handler).await,
        Some(addr) => serve_body(addr, function, handler).await.map_err(Into::into),
    }
}

/// `LMAAS_HTTP_ADDR`, and the Prometheus endpoint that comes with the HTTP mode.
fn http_addr(function: &'static str) -> Result<Option<SocketAddr>, String> {
    let Some(raw) = std::env::var("LMAAS_HTTP_ADDR").ok().filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let addr: SocketAddr = raw.parse().map_err(|_| format!("LMAAS_HTTP_ADDR='{raw}' is not host:port"))?;
    if let Some(metrics) = std::env::var("LMAAS_METRICS_ADDR").ok().filter(|a| !a.is_empty()) {
        let metrics = metrics.parse().map_err(|_| format!("LMAAS_METRICS_ADDR='{metrics}' is not host:port"))?;
        crate::telemetry::serve_prometheus(metrics, function)?;
    }
    Ok(Some(addr))
}

/// Serves `handler` over HTTP/1.1 on `addr` until SIGTERM or SIGINT.
pub async fn serve<F, Fut>(addr: SocketAddr, function: &'static str, handler: F) -> Result<(), String>
where
    F: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Bytes>> + Send + 'static,
{
    serve_body(addr, function, move |request| {
        let response = handler(request);
        async move { response.await.map(Reply::from) }
    })
    .await
}

/// Serves a handler with any `Reply` body over HTTP/1.1 on `addr` until SIGTERM or SIGINT.
pub async fn serve_body<F, Fut>(addr: SocketAddr, function: &'static str, handler: F) -> Result<(), String>
where
    F: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Reply>> + Send + 'static,
{
    use tokio::signal::unix::{signal, SignalKind};
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("binding {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let (mut term, mut int) = (
        signal(SignalKind::terminate()).map_err(|e| e.to_string())?,
        signal(SignalKind::interrupt()).map_err(|e| e.to_string())?,
    );
    let handler = Arc::new(handler);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tracing::info!(function, addr = %local, "serving HTTP");
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(answer(&*handler, request).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!(function, "stopping: no new connections, finishing requests in flight");
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!(function, "requests were still running after {DRAIN:?}; stopping anyway");
    }
    Ok(())
}

async fn answer<F, Fut>(handler: &F, request: Request<Incoming>) -> Response<Reply>
where
    F: Fn(Request<Bytes>) -> Fut,
    Fut: Future<Output = Response<Reply>>,
{
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let error = if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                lmaas_core::Error::PayloadTooLarge(format!("request body is over {MAX_BODY_BYTES} bytes"))
            } else {
                lmaas_core::Error::bad_request(format!("reading the request body failed: {e}"))
            };
            let response = crate::response::error_response(&path, error);
            return response.map(Reply::from);
        }
    };
    handler(Request::from_parts(parts, body)).await
}
