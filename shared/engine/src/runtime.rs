//! ONNX Runtime for the whole process: the shared library is found and loaded once, and one
//! environment serves every session (ort requires exactly one per process).

use std::path::PathBuf;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::builder::SessionBuilder;
use ort::session::Session;

use crate::EngineError;

/// Where Lambda layers put shared libraries; the ORT layer ships the library there.
const LAMBDA_LAYER_LIBRARY: &str = "/opt/lib/libonnxruntime.so";

/// How long an idle intra-op thread spins before it sleeps, in microseconds (see
/// [`Runtime::session_builder`]): long enough to bridge the gaps between a run's parallel
/// sections, short enough to stop soon after the run.
const INTRA_OP_SPIN_US: &str = "100";

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

    /// Starts loading the runtime on a thread of its own, so that a cold start's first model
    /// finds it loaded: the library and its environment take 20-30 ms, which the first request
    /// would otherwise spend after its download. A failure is logged here and returned again to
    /// whoever needs the runtime.
    pub fn load_in_background() {
        let loading = std::thread::Builder::new().name("ort-load".into()).spawn(|| {
            if let Err(e) = Runtime::get() {
                tracing::error!(error = %e, "loading ONNX Runtime failed");
            }
        });
        if let Err(e) = loading {
            tracing::warn!(error = %e, "could not start a thread to load ONNX Runtime; the first model loads it");
        }
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

    /// A session builder with the options every lmaas session runs with; the benchmarks build
    /// their raw sessions from it too, so both sides of a comparison match.
    ///
    /// - Intra-op threads = the CPUs this process may use (in Lambda, the vCPUs its memory buys:
    ///   [`lmaas_core::cpus_for`]); inter-op 1 (sequential graphs).
    /// - Intra-op threads spin, but only `INTRA_OP_SPIN_US` before they sleep. Without spinning,
    ///   every parallel section of a run wakes a sleeping thread: 0.6-1.2 ms of a 7-8 ms
    ///   one-sentence fp32 MiniLM run on 2 vCPUs. ORT's default spin goes on long after a run
    ///   ends, taking CPU from the next request's parsing and the process's other threads: it
    ///   cost 3.4 ms of CPU per such run, the bounded spin 0.6 ms.
    pub fn session_builder(&self) -> Result<SessionBuilder, EngineError> {
        let failed = |e: &dyn std::fmt::Display| EngineError::Load(format!("setting session options: {e}"));
        let builder = Session::builder(&self.environment).map_err(|e| failed(&e))?;
        let builder = builder.with_intra_threads(lmaas_core::cpus()).map_err(|e| failed(&e))?;
        let builder = builder.with_inter_threads(1).map_err(|e| failed(&e))?;
        let builder = builder.with_intra_op_spinning(true).map_err(|e| failed(&e))?;
        builder.with_config_entry("session.intra_op.spin_duration_us", INTRA_OP_SPIN_US).map_err(|e| failed(&e))
    }

    /// Whether the loaded library was built with CUDA support (registration can still fail
    /// later, e.g. without a GPU; sessions report what they actually got).
    pub fn cuda_compiled_in(&self) -> bool {
        use ort::ep::ExecutionProvider as _;
        ort::ep::CUDA::is_available().unwrap_or(false)
    }
}
