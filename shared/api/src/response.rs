//! Responses: JSON bodies, and the one mapping from domain errors to HTTP for each API family.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use lmaas_core::Error;
use serde::Serialize;
use serde_json::json;

/// A JSON response.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(serde_json::to_vec(body).expect("response bodies have string keys and always serialize")))
        .expect("static response parts are valid")
}

/// The status for each class of domain error.
pub fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::BadRequest(_) | Error::InputRejected(_) => StatusCode::BAD_REQUEST,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::InvalidModel(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error answer for a request path: V2 routes answer `{"error": "<message>"}`, OpenAI-style
/// `/v1` routes `{"error": {"message", "type", "param", "code"}}`.
pub fn error_response(route: &str, error: Error) -> Response<Bytes> {
    let status = status_of(&error);
    let message = logged_message(route, status, &error);
    let body = if route.starts_with("/v1") {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        };
        json!({ "error": { "message": message, "type": kind, "param": null, "code": status.as_u16().to_string() } })
    } else {
        json!({ "error": message })
    };
    let mut response = json(status, &body);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    }
    response
}

/// Logs a failed request (client errors with their message, internal ones in full) and returns
/// the message the client gets.
fn logged_message(route: &str, status: StatusCode, error: &Error) -> String {
    match error {
        Error::Internal(detail) => {
            tracing::error!(route, error = %detail, "internal error");
            "internal error; the request id in the logs has the details".to_string()
        }
        Error::Unavailable(m) => {
            tracing::error!(route, status = status.as_u16(), error = %m, "request failed");
            m.clone()
        }
        Error::InputRejected(m) => {
            tracing::warn!(
                route,
                status = status.as_u16(),
                "request rejected: ONNX Runtime refused the input (reason sent to the client)"
            );
            m.clone()
        }
        other => {
            tracing::warn!(route, status = status.as_u16(), error = %other, "request rejected");
            other.to_string()
        }
    }
}
