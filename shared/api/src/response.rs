//! Responses: JSON bodies, and the one mapping from domain errors to HTTP for each API family.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use lmaas_core::Error;
use serde_json::{json, Value};

/// A JSON response.
pub fn json(status: StatusCode, body: &Value) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(serde_json::to_vec(body).expect("a JSON value always serializes")))
        .expect("static response parts are valid")
}

/// The status for each class of domain error.
pub fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::BadRequest(_) | Error::InputRejected(_) => StatusCode::BAD_REQUEST,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A V2 (Open Inference Protocol) error: `{"error": "<message>"}`. Client errors are logged with
/// their message; internal ones are logged in full and answered with a generic message.
pub fn v2_error(route: &str, error: Error) -> Response<Bytes> {
    let status = status_of(&error);
    let message = match &error {
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
    };
    let mut response = json(status, &json!({ "error": message }));
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    }
    response
}
