//! The Lambda adapter against a fake Runtime API that fails the way `cargo lambda watch`'s
//! emulator can: the first `/next` connection drops (lambda_runtime's loop returns an error), the
//! second answer has no request id (lambda_runtime panics). The function must keep serving and
//! answer the third invocation, instead of exiting and leaving every later invocation waiting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Response};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// An API Gateway HTTP API (v2) event for `GET /ping`.
const EVENT: &str = r#"{"version":"2.0","routeKey":"$default","rawPath":"/ping","rawQueryString":"",
"headers":{"host":"test"},"requestContext":{"accountId":"123456789012","apiId":"api","domainName":"test",
"domainPrefix":"test","http":{"method":"GET","path":"/ping","protocol":"HTTP/1.1","sourceIp":"127.0.0.1",
"userAgent":"test"},"requestId":"r","routeKey":"$default","stage":"$default","time":"21/Apr/2020:15:08:21 +0000",
"timeEpoch":1587481701067},"isBase64Encoded":false}"#;

/// A request read off a connection: its request line and body (`None` once the peer closed).
async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).await.ok()? == 0 {
        return None;
    }
    let (mut length, mut chunked) = (0, false);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.ok()?;
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
        chunked |= line.starts_with("transfer-encoding:") && line.contains("chunked");
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    while chunked {
        let mut size = String::new();
        reader.read_line(&mut size).await.ok()?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        let mut chunk = vec![0; size + 2]; // the chunk and its CRLF
        reader.read_exact(&mut chunk).await.ok()?;
        body.extend_from_slice(&chunk[..size]);
        chunked = size > 0;
    }
    Some((request_line.trim_end().to_string(), body))
}

/// Serves one connection of the fake Runtime API; invocation responses go to `answers`.
async fn runtime_api_connection(stream: TcpStream, polls: Arc<AtomicUsize>, answers: mpsc::Sender<(String, Vec<u8>)>) {
    let mut reader = BufReader::new(stream);
    while let Some((request_line, body)) = read_request(&mut reader).await {
        let reply = if request_line.contains("/runtime/invocation/next") {
            match polls.fetch_add(1, Ordering::SeqCst) {
                0 => return, // dropped mid-request: a transport error in lambda_runtime's loop
                1 => event_reply(None),
                2 => event_reply(Some("invocation-3")),
                _ => std::future::pending().await, // the test has its answer by now
            }
        } else {
            let _ = answers.send((request_line, body)).await;
            "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".to_string()
        };
        if reader.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn event_reply(request_id: Option<&str>) -> String {
    let id = request_id.map(|id| format!("lambda-runtime-aws-request-id: {id}\r\n")).unwrap_or_default();
    format!(
        "HTTP/1.1 200 OK\r\n{id}lambda-runtime-deadline-ms: 4102444800000\r\n\
         lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:123456789012:function:test\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{EVENT}",
        EVENT.len()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_function_keeps_serving_after_the_runtime_api_fails_twice() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // This test binary's only test: no other thread reads the environment.
    std::env::set_var("AWS_LAMBDA_RUNTIME_API", listener.local_addr().unwrap().to_string());
    std::env::set_var("AWS_LAMBDA_FUNCTION_NAME", "test");
    std::env::set_var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128");
    std::env::set_var("AWS_LAMBDA_FUNCTION_VERSION", "1");
    let polls = Arc::new(AtomicUsize::new(0));
    let (answers, mut answered) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(runtime_api_connection(stream, polls.clone(), answers.clone()));
        }
    });

    let function = lmaas_api::lambda::serve(|request| async move {
        let body = format!(r#"{{"path":"{}"}}"#, request.uri().path());
        Response::builder().header(header::CONTENT_TYPE, "application/json").body(Bytes::from(body)).unwrap()
    });
    let serving = async {
        tokio::select! {
            ended = function => panic!("the function stopped serving: {ended:?}"),
            answer = answered.recv() => answer.expect("an answer"),
        }
    };
    let (request_line, body) =
        tokio::time::timeout(Duration::from_secs(60), serving).await.expect("an answer to the third invocation");
    // The answer is for the third poll's invocation (the runtime may already be polling again).
    assert!(request_line.starts_with("POST /2018-06-01/runtime/invocation/invocation-3/response"), "{request_line}");
    let response: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(response["body"], r#"{"path":"/ping"}"#, "{response}");
}
