//! Engine errors, and how each reaches the client.

use lmaas_core::Error;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The ONNX Runtime library could not be found or loaded.
    #[error("ONNX Runtime is unavailable: {0}")]
    Runtime(String),
    /// A model file could not be fetched or failed verification.
    #[error("{0}")]
    Fetch(String),
    /// ONNX Runtime could not create a session from the model.
    #[error("{0}")]
    Load(String),
    /// The inputs passed validation but ONNX Runtime refused them (e.g. a token id outside the
    /// vocabulary); that is about the request, not the server.
    #[error("{0}")]
    Run(String),
    /// Long work was asked to stop.
    #[error("cancelled")]
    Cancelled,
    /// Any other failure on our side.
    #[error("{0}")]
    Internal(String),
}

impl From<EngineError> for Error {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::Runtime(_) => Error::Unavailable("the inference runtime is unavailable".into()),
            EngineError::Fetch(m) => Error::Unavailable(m),
            EngineError::Load(m) => Error::Unavailable(m),
            EngineError::Run(m) => Error::InputRejected(format!("the model could not run on this input: {m}")),
            EngineError::Internal(m) => Error::Internal(m),
            EngineError::Cancelled => Error::Unavailable("the work was cancelled".into()),
        }
    }
}
