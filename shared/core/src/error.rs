//! The one error type of the domain. Each variant is a class of answer the client gets;
//! the API layer maps it to an HTTP status in exactly one place per API family.

/// A failure the client is told about. Messages of the client-facing variants are written for
/// the user (they name the field and what was expected); `Internal` messages are logged only.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The request is malformed or does not fit the model (400).
    #[error("{0}")]
    BadRequest(String),
    /// The model itself refused input that passed validation (400). The message can quote input
    /// values, so it goes to the client but not to the logs.
    #[error("{0}")]
    InputRejected(String),
    /// No credentials, or credentials that are not valid (401, with `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials that do not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The model, version or route does not exist, or is not servable (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state, e.g. a version that already exists (409).
    #[error("{0}")]
    Conflict(String),
    /// An uploaded model version failed validation; the message lists every problem (422).
    #[error("{0}")]
    InvalidModel(String),
    /// The request body is larger than allowed (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The model exists but cannot be served right now, e.g. it failed to load (503).
    #[error("{0}")]
    Unavailable(String),
    /// Something broke on our side; the message is logged, the client gets a generic one (500).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::BadRequest(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Error::NotFound(message.into())
    }
}
