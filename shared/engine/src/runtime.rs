//! ONNX Runtime for the whole process: the shared library is found and loaded once, and one
//! environment serves every session (ort requires exactly one per process).

use std::path::PathBuf;
use std::sync::OnceLock;

use ort::environment::Environment;

use crate::EngineError;

/// Where Lambda layers put shared libraries; the ORT layer ships the library there.
const LAMBDA_LAYER_LIBRARY: &str = "/opt/lib/libonnxruntime.so";

/// The loaded ONNX Runtime and its environment.
pub struct Runtime {
    pub(crate) environment: Environment,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

impl Runtime {
    /// The process-wide runtime, loading the library on first use: `ORT_DYLIB_PATH` if set (a
    /// relative path is resolved against the executable's folder), else the Lambda layer's copy.
    pub fn get() -> Result<&'static Runtime, EngineError> {
        RUNTIME.get_or_init(Runtime::load).as_ref().map_err(|e| EngineError::Runtime(e.clone()))
    }

    fn load() -> Result<Runtime, String> {
        let library = match std::env::var_os("ORT_DYLIB_PATH") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ if std::path::Path::new(LAMBDA_LAYER_LIBRARY).exists() => PathBuf::from(LAMBDA_LAYER_LIBRARY),
            _ => {
                return Err(
                    "set ORT_DYLIB_PATH to libonnxruntime.so (make dev and make test fetch it into .lmaas/ort)".into()
                )
            }
        };
        let environment = ort::init_from(&library)
            .map_err(|e| format!("loading {}: {e}", library.display()))?
            .with_name("lmaas")
            .build()
            .map_err(|e| format!("creating the ONNX Runtime environment: {e}"))?;
        tracing::info!(library = %library.display(), "ONNX Runtime loaded");
        Ok(Runtime { environment })
    }

    /// The ORT environment, for code that builds sessions itself (benchmarks' raw baseline).
    pub fn environment(&self) -> &Environment {
        &self.environment
    }

    /// Whether the loaded library was built with CUDA support (registration can still fail
    /// later, e.g. without a GPU; sessions report what they actually got).
    pub fn cuda_compiled_in(&self) -> bool {
        use ort::ep::ExecutionProvider as _;
        ort::ep::CUDA::is_available().unwrap_or(false)
    }
}
