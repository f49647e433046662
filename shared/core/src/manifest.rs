//! The manifest of a model version (`models/{model}/versions/{version}/manifest.json`): its
//! state, files with checksums, and the tensor signature that requests are validated against.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::acl::Acl;
use crate::{DataType, ModelName, Version};

/// Where a version is in its life. Only `Ready` versions are ever served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelState {
    Pending,
    Ready,
    Rejected,
}

/// What a model is for, which decides the routes and jobs that can use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Tensor,
    Embeddings,
    /// A decoder that generates text (`/v1/chat/completions`, `/v1/completions`, `batch_chat`).
    Generation,
}

/// A file of a version, as declared and verified at commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub size: u64,
}

/// One input or output of the model. `-1` marks a dynamic dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// The stored record of one model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: ModelName,
    pub version: Version,
    pub state: ModelState,
    pub task: Task,
    #[serde(default = "default_platform")]
    pub platform: String,
    pub files: BTreeMap<String, FileEntry>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub created_at: String,
    /// The tenant that owns the model; its principals may use it (with the right scopes).
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub config: serde_json::Value,
    #[serde(default)]
    pub acl: Acl,
    /// Why a version was rejected at commit; empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

fn default_platform() -> String {
    "onnxruntime_onnx".to_string()
}

/// The file every version must have.
pub const MODEL_FILE: &str = "model.onnx";

impl Manifest {
    /// A ready version with no owner, ACL or config (tests, benches and seeding build on it).
    pub fn ready(
        name: ModelName,
        version: Version,
        task: Task,
        files: BTreeMap<String, FileEntry>,
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
    ) -> Self {
        Manifest {
            name,
            version,
            state: ModelState::Ready,
            task,
            platform: default_platform(),
            files,
            inputs,
            outputs,
            created_at: String::new(),
            tenant: None,
            config: serde_json::Value::Null,
            acl: Acl::default(),
            problems: Vec::new(),
        }
    }

    /// The model file's entry, whose sha256 keys the local cache.
    pub fn model_file(&self) -> Option<&FileEntry> {
        self.files.get(MODEL_FILE)
    }

    /// Total size of the version's files, the cache's measure of what a loaded model costs.
    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|o| o.name == name)
    }
}
