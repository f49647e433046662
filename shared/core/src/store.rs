//! The model store port: where manifests, aliases and model files live (S3 in production), and
//! an in-memory adapter for unit tests and in-process benchmarks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{AliasName, Manifest, ModelName, Version};

/// A store failure. The message is for logs: it may name buckets, keys and SDK errors.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Read access to model versions.
#[async_trait]
pub trait ModelStore: Send + Sync {
    /// The manifest of a version, or `None` if there is no such version.
    async fn manifest(&self, name: &ModelName, version: Version) -> Result<Option<Manifest>, StoreError>;
    /// The version an alias points at, or `None` if there is no such alias.
    async fn alias(&self, name: &ModelName, alias: &AliasName) -> Result<Option<Version>, StoreError>;
    /// Streams one file of a version to `dest`, hashing it on the way (the caller checks the
    /// digest against the manifest, then renames the file into place).
    async fn download(
        &self,
        name: &ModelName,
        version: Version,
        file: &str,
        dest: &Path,
    ) -> Result<FileDigest, StoreError>;
    /// Checks that the store answers at all (for readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// A file's size and sha256 (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    pub size: u64,
    pub sha256: String,
}

impl FileDigest {
    /// Checks the digest against what a manifest declares; the message names what differs.
    pub fn check(&self, file: &str, size: u64, sha256: &str) -> Result<(), String> {
        if self.size != size {
            return Err(format!("{file} failed verification: {} bytes, the manifest says {size}", self.size));
        }
        if !self.sha256.eq_ignore_ascii_case(sha256) {
            return Err(format!("{file} failed verification: sha256 {}, the manifest says {sha256}", self.sha256));
        }
        Ok(())
    }
}

/// Write access for the registry: versions, aliases and direct uploads.
#[async_trait]
pub trait RegistryStore: ModelStore {
    /// Writes a manifest. With `create_only` nothing is overwritten (an If-None-Match write) and
    /// the answer is `false` when a manifest was already there.
    async fn put_manifest(&self, manifest: &Manifest, create_only: bool) -> Result<bool, StoreError>;
    /// Every model name in the store.
    async fn models(&self) -> Result<Vec<ModelName>, StoreError>;
    /// Every version of a model that has a manifest, ascending.
    async fn versions(&self, name: &ModelName) -> Result<Vec<Version>, StoreError>;
    /// Every alias of a model with the version it points at.
    async fn aliases(&self, name: &ModelName) -> Result<Vec<(AliasName, Version)>, StoreError>;
    async fn put_alias(&self, name: &ModelName, alias: &AliasName, version: Version) -> Result<(), StoreError>;
    async fn delete_alias(&self, name: &ModelName, alias: &AliasName) -> Result<(), StoreError>;
    /// Deletes a version: its manifest first (so it stops being served), then its files.
    async fn delete_version(&self, name: &ModelName, version: Version) -> Result<(), StoreError>;
    /// The size of an uploaded file, or `None` if it was not uploaded.
    async fn file_size(&self, name: &ModelName, version: Version, file: &str) -> Result<Option<u64>, StoreError>;
    /// Uploads a local file as one of a version's files (jobs that produce models use it).
    async fn put_file(&self, name: &ModelName, version: Version, file: &str, source: &Path) -> Result<(), StoreError>;
    /// A URL the client can PUT one file to directly, valid for `expires_in`.
    async fn presign_upload(
        &self,
        name: &ModelName,
        version: Version,
        file: &str,
        size: u64,
        expires_in: std::time::Duration,
    ) -> Result<String, StoreError>;
}

/// An in-memory store: manifests, aliases and file contents in maps.
#[derive(Default, Clone)]
pub struct MemoryModelStore {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Default)]
struct MemoryInner {
    manifests: HashMap<(ModelName, Version), Manifest>,
    aliases: HashMap<(ModelName, String), Version>,
    files: HashMap<(ModelName, Version, String), Bytes>,
    downloads: usize,
}

impl MemoryModelStore {
    pub fn put_manifest(&self, manifest: Manifest) {
        let mut inner = self.inner.lock().expect("store lock");
        inner.manifests.insert((manifest.name.clone(), manifest.version), manifest);
    }

    pub fn put_alias(&self, name: &ModelName, alias: &AliasName, version: Version) {
        let mut inner = self.inner.lock().expect("store lock");
        inner.aliases.insert((name.clone(), alias.as_str().to_string()), version);
    }

    pub fn put_file(&self, name: &ModelName, version: Version, file: &str, contents: impl Into<Bytes>) {
        let mut inner = self.inner.lock().expect("store lock");
        inner.files.insert((name.clone(), version, file.to_string()), contents.into());
    }

    /// How many files were downloaded so far (tests check that warm paths download nothing).
    pub fn downloads(&self) -> usize {
        self.inner.lock().expect("store lock").downloads
    }
}

#[async_trait]
impl ModelStore for MemoryModelStore {
    async fn manifest(&self, name: &ModelName, version: Version) -> Result<Option<Manifest>, StoreError> {
        Ok(self.inner.lock().expect("store lock").manifests.get(&(name.clone(), version)).cloned())
    }

    async fn alias(&self, name: &ModelName, alias: &AliasName) -> Result<Option<Version>, StoreError> {
        Ok(self.inner.lock().expect("store lock").aliases.get(&(name.clone(), alias.as_str().to_string())).copied())
    }

    async fn download(
        &self,
        name: &ModelName,
        version: Version,
        file: &str,
        dest: &Path,
    ) -> Result<FileDigest, StoreError> {
        let contents = {
            let mut inner = self.inner.lock().expect("store lock");
            inner.downloads += 1;
            inner.files.get(&(name.clone(), version, file.to_string())).cloned()
        };
        let contents = contents.ok_or_else(|| StoreError(format!("no file {name}/{version}/{file}")))?;
        std::fs::write(dest, &contents).map_err(|e| StoreError(format!("writing {}: {e}", dest.display())))?;
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&contents));
        Ok(FileDigest { size: contents.len() as u64, sha256 })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
