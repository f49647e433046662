//! A model loaded into an ONNX Runtime session, and the conversion between lmaas tensors and
//! ORT values. Inputs arrive already validated against the manifest (lmaas_core::v2).

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, MutexGuard, OnceLock};

use lmaas_core::{DataType, Tensor, TensorData, TensorSpec};
use ort::ep::ExecutionProvider as _;
use ort::memory::Allocator;
use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::{DynTensor, DynTensorValueType, DynValue, TensorElementType, ValueType};

use crate::{EngineError, ExecutionProvider, ExecutionProviders, Runtime};

/// A session ready to run, with the provider it actually got.
pub struct LoadedModel {
    // ORT's run needs `&mut Session` (some allocators are not thread safe), so runs on one
    // model are serialized; a Lambda instance serves one request at a time anyway.
    session: Mutex<Session>,
    execution_provider: ExecutionProvider,
    bytes: u64,
    /// The version's `tokenizer.json`, if it has one, with its own padding turned off (batches
    /// are padded to their longest input) and truncation set per request.
    tokenizer: Option<Mutex<tokenizers::Tokenizer>>,
    pad_id: u32,
    /// Metric labels: the model and version that loaded this session (versions with the same
    /// content share one session, and its first loader's name).
    labels: [(&'static str, String); 3],
    /// Concurrent embedding requests share runs (`embed_batched`).
    batcher: crate::batcher::EmbeddingBatcher,
    /// A decoder's KV-cache inputs and outputs, read from the signature at first generation.
    kv_layout: OnceLock<Result<crate::generate::KvLayout, String>>,
    /// Generations running on this session.
    generating: AtomicUsize,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("execution_provider", &self.execution_provider)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl LoadedModel {
    /// Creates a session from `model_file`, trying `providers` in order. A provider that cannot be
    /// registered is logged with the reason and the next one is tried: never a silent fallback.
    pub fn load(model_file: &Path, providers: &ExecutionProviders, bytes: u64) -> Result<Self, EngineError> {
        let runtime = Runtime::get()?;
        let load_error =
            |e: &dyn std::fmt::Display| EngineError::Load(format!("ONNX Runtime could not load the model: {e}"));
        let mut builder = runtime.session_builder()?;
        let mut chosen = ExecutionProvider::Cpu;
        for provider in providers.iter() {
            match provider {
                ExecutionProvider::Cpu => break,
                ExecutionProvider::Cuda => match ort::ep::CUDA::default().register(&mut builder) {
                    Ok(()) => {
                        chosen = ExecutionProvider::Cuda;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "CUDA execution provider requested but unavailable; trying the next provider")
                    }
                },
            }
        }
        // The tokenizer parses on a thread of its own while ORT builds the session: for MiniLM,
        // 30 ms of a 220 ms load that would otherwise come after it.
        let tokenizer_file = model_file.parent().map(|dir| dir.join("tokenizer.json")).filter(|path| path.exists());
        let (session, tokenizer) = std::thread::scope(|scope| {
            let tokenizer = tokenizer_file.map(|path| scope.spawn(move || load_tokenizer(&path)));
            let session = builder.commit_from_file(model_file);
            let tokenizer = tokenizer.map(|loading| {
                loading.join().unwrap_or_else(|_| Err(EngineError::Load("loading tokenizer.json panicked".into())))
            });
            (session, tokenizer.transpose())
        });
        let session = session.map_err(|e| {
            // ORT quotes the file path; clients only need the reason.
            let message = e.to_string().replace(&model_file.display().to_string(), "model.onnx");
            load_error(&message)
        })?;
        tracing::info!(
            execution_provider = %chosen,
            threads = lmaas_core::cpus(),
            "model session created"
        );
        let (tokenizer, pad_id) = match tokenizer? {
            Some((tokenizer, pad_id)) => (Some(Mutex::new(tokenizer)), pad_id),
            None => (None, 0),
        };
        let labels =
            [("model", String::new()), ("version", String::new()), ("execution_provider", chosen.as_str().to_string())];
        Ok(LoadedModel {
            session: Mutex::new(session),
            execution_provider: chosen,
            bytes,
            tokenizer,
            pad_id,
            labels,
            batcher: Default::default(),
            kv_layout: OnceLock::new(),
            generating: AtomicUsize::new(0),
        })
    }

    /// The model's inputs and outputs as ONNX Runtime sees them (`-1` for dynamic dims); `None`
    /// for a value that is not a tensor of a type lmaas serves.
    pub fn signature(&self) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>), String> {
        let session = self.session.lock().map_err(|_| "session lock poisoned".to_string())?;
        let specs = |outlets: &[ort::value::Outlet]| {
            outlets
                .iter()
                .map(|outlet| match outlet.dtype() {
                    ValueType::Tensor { ty, shape, .. } => datatype(*ty)
                        .map(|datatype| TensorSpec { name: outlet.name().to_string(), datatype, shape: shape.to_vec() })
                        .ok_or_else(|| {
                            format!("'{}' has element type {ty:?}, which lmaas does not serve", outlet.name())
                        }),
                    other => Err(format!("'{}' is a {other:?}, not a tensor", outlet.name())),
                })
                .collect::<Result<Vec<_>, String>>()
        };
        Ok((specs(session.inputs())?, specs(session.outputs())?))
    }

    pub(crate) fn tokenizer(&self) -> Option<&Mutex<tokenizers::Tokenizer>> {
        self.tokenizer.as_ref()
    }

    pub(crate) fn batcher(&self) -> &crate::batcher::EmbeddingBatcher {
        &self.batcher
    }

    /// The session, for one run (runs on one session are serialized).
    pub(crate) fn session(&self) -> Result<MutexGuard<'_, Session>, EngineError> {
        self.session.lock().map_err(|_| EngineError::Internal("session lock poisoned".into()))
    }

    pub(crate) fn kv_layout(&self) -> Result<&crate::generate::KvLayout, EngineError> {
        self.kv_layout
            .get_or_init(|| self.session().and_then(|s| crate::generate::KvLayout::of(&s)).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| EngineError::Load(e.clone()))
    }

    pub(crate) fn generating(&self) -> &AtomicUsize {
        &self.generating
    }

    /// Labels for this session's metrics: model, version, execution provider.
    pub(crate) fn metric_labels(&self) -> &[(&'static str, String); 3] {
        &self.labels
    }

    pub(crate) fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Names the session in its metrics.
    pub fn with_identity(mut self, model: &str, version: &str) -> Self {
        self.labels[0].1 = model.to_string();
        self.labels[1].1 = version.to_string();
        self
    }

    /// The model and version labels, for metrics recorded about this session.
    pub(crate) fn identity(&self) -> &[(&'static str, String)] {
        &self.labels[..2]
    }

    pub fn execution_provider(&self) -> ExecutionProvider {
        self.execution_provider
    }

    /// Bytes this model is charged in the cache (its files' size, a fair proxy for its memory).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The ONNX Runtime session itself, locked for `work`: for callers that measure lmaas against
    /// raw ORT on the very same session (same weights in memory, same thread pool).
    pub fn with_session<R>(&self, work: impl FnOnce(&mut Session) -> R) -> Result<R, EngineError> {
        let mut session = self.session.lock().map_err(|_| EngineError::Internal("session lock poisoned".into()))?;
        Ok(work(&mut session))
    }

    /// Runs the model on `inputs`, computing only the `outputs` named, returned in that order.
    pub fn run(&self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>, EngineError> {
        let values = inputs
            .iter()
            .map(|t| Ok((t.name.as_str(), to_value(t)?)))
            .collect::<Result<Vec<(&str, DynValue)>, EngineError>>()?;
        let selector = outputs.iter().fold(OutputSelector::no_default(), |s, name| s.with(name.as_str()));
        let options = RunOptions::new()
            .map_err(|e| EngineError::Internal(format!("creating run options: {e}")))?
            .with_outputs(selector);
        let mut session = self.session.lock().map_err(|_| EngineError::Internal("session lock poisoned".into()))?;
        let started = std::time::Instant::now();
        let result = session.run_with_options(values, &options);
        metrics::histogram!(lmaas_core::metrics::INFERENCE_DURATION, &self.labels)
            .record(started.elapsed().as_secs_f64());
        let mut results = result.map_err(|e| EngineError::Run(e.to_string()))?;
        outputs
            .iter()
            .map(|name| {
                let value = results
                    .remove(name.as_str())
                    .ok_or_else(|| EngineError::Internal(format!("ONNX Runtime returned no output '{name}'")))?;
                from_value(name, value)
            })
            .collect()
    }
}

fn element_type(datatype: DataType) -> TensorElementType {
    match datatype {
        DataType::Bool => TensorElementType::Bool,
        DataType::Uint8 => TensorElementType::Uint8,
        DataType::Uint16 => TensorElementType::Uint16,
        DataType::Uint32 => TensorElementType::Uint32,
        DataType::Uint64 => TensorElementType::Uint64,
        DataType::Int8 => TensorElementType::Int8,
        DataType::Int16 => TensorElementType::Int16,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Fp16 => TensorElementType::Float16,
        DataType::Bf16 => TensorElementType::Bfloat16,
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
        DataType::Bytes => TensorElementType::String,
    }
}

fn datatype(element: TensorElementType) -> Option<DataType> {
    DataType::ALL.into_iter().find(|&d| element_type(d) == element)
}

fn to_value(tensor: &Tensor) -> Result<DynValue, EngineError> {
    let internal = |e: ort::Error| EngineError::Internal(format!("creating input '{}': {e}", tensor.name));
    match &tensor.data {
        TensorData::Raw(bytes) => {
            let mut value = DynTensor::new(&Allocator::default(), element_type(tensor.datatype), tensor.shape.clone())
                .map_err(internal)?;
            if !bytes.is_empty() {
                // SAFETY: ORT allocated a CPU buffer of exactly element_count * element_size bytes
                // for this shape and type, and validation guarantees `bytes` has that length.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), value.data_ptr_mut().cast::<u8>(), bytes.len())
                };
            }
            Ok(value.into_dyn())
        }
        TensorData::Bytes(items) => {
            let strings = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    String::from_utf8(item.clone()).map_err(|_| {
                        EngineError::Run(format!(
                            "input '{}' element {i} is not UTF-8 text, which ONNX string tensors require",
                            tensor.name
                        ))
                    })
                })
                .collect::<Result<Vec<String>, _>>()?;
            let value =
                ort::value::Tensor::from_string_array((tensor.shape.clone(), strings.as_slice())).map_err(internal)?;
            Ok(value.into_dyn())
        }
    }
}

fn from_value(name: &str, value: DynValue) -> Result<Tensor, EngineError> {
    let internal = |what: String| EngineError::Internal(format!("reading output '{name}': {what}"));
    let tensor = value.downcast::<DynTensorValueType>().map_err(|e| internal(format!("not a tensor: {e}")))?;
    let element = *tensor.data_type();
    let datatype = datatype(element).ok_or_else(|| internal(format!("element type {element:?} is not served")))?;
    let shape: Vec<usize> = tensor.shape().iter().map(|&d| d.max(0) as usize).collect();
    let count: usize = shape.iter().product();
    let data = if datatype == DataType::Bytes {
        let (_, strings) = tensor.try_extract_strings().map_err(|e| internal(e.to_string()))?;
        TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect())
    } else {
        let size = count * datatype.element_size().expect("numeric type");
        let mut bytes = vec![0u8; size];
        if size > 0 {
            // SAFETY: sessions run on CPU-accessible memory for outputs (ORT copies results back
            // from device providers), and the buffer holds `count` elements of this type.
            unsafe { std::ptr::copy_nonoverlapping(tensor.data_ptr().cast::<u8>(), bytes.as_mut_ptr(), size) };
        }
        TensorData::Raw(bytes)
    };
    Ok(Tensor { name: name.to_string(), datatype, shape, data })
}

/// A version's `tokenizer.json` and its padding id, with its own padding turned off (batches are
/// padded to their longest input).
fn load_tokenizer(path: &Path) -> Result<(tokenizers::Tokenizer, u32), EngineError> {
    let mut tokenizer = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| EngineError::Load(format!("tokenizer.json could not be loaded: {e}")))?;
    let pad_id = tokenizer.get_padding().map_or(0, |p| p.pad_id);
    tokenizer.with_padding(None);
    Ok((tokenizer, pad_id))
}
