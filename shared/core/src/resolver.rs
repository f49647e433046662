//! Resolves `name[:tag]` to a servable manifest. Ready manifests never change, so they are
//! cached for the life of the process; aliases move, so they are cached only briefly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Error, Manifest, ModelName, ModelRef, ModelState, ModelStore, Tag, Version};

/// Turns model references into ready manifests, with caching fit for a warm function.
pub struct ModelResolver {
    store: Arc<dyn ModelStore>,
    alias_ttl: Duration,
    manifests: Mutex<HashMap<(ModelName, Version), Arc<Manifest>>>,
    aliases: Mutex<HashMap<(ModelName, String), (Version, Instant)>>,
}

impl ModelResolver {
    pub fn new(store: Arc<dyn ModelStore>, alias_ttl: Duration) -> Self {
        ModelResolver { store, alias_ttl, manifests: Mutex::default(), aliases: Mutex::default() }
    }

    pub fn store(&self) -> &Arc<dyn ModelStore> {
        &self.store
    }

    /// The ready manifest `reference` names. Unknown models, versions and aliases, and versions
    /// that are not ready, are all 404: a client cannot use any of them.
    pub async fn resolve(&self, reference: &ModelRef) -> Result<Arc<Manifest>, Error> {
        let version = match &reference.tag {
            Tag::Version(version) => *version,
            Tag::Alias(alias) => self.alias_version(&reference.name, alias).await?,
        };
        let key = (reference.name.clone(), version);
        if let Some(manifest) = self.manifests.lock().expect("resolver lock").get(&key) {
            return Ok(manifest.clone());
        }
        let manifest = self.store.manifest(&reference.name, version).await.map_err(|e| {
            tracing::error!(model = %reference, error = %e, "reading the manifest failed");
            Error::Unavailable(format!("model '{reference}' cannot be read from the model store right now"))
        })?;
        let manifest = match manifest {
            Some(m) if m.state == ModelState::Ready => Arc::new(m),
            Some(m) => {
                return Err(Error::not_found(format!(
                    "model '{}' version {version} is {:?}, not ready",
                    reference.name, m.state
                )))
            }
            None => return Err(Error::not_found(format!("model '{}' has no version {version}", reference.name))),
        };
        self.manifests.lock().expect("resolver lock").insert(key, manifest.clone());
        Ok(manifest)
    }

    /// Drops what is cached for a model, after the registry changed it in this process.
    pub fn forget(&self, name: &ModelName) {
        self.manifests.lock().expect("resolver lock").retain(|(n, _), _| n != name);
        self.aliases.lock().expect("resolver lock").retain(|(n, _), _| n != name);
    }

    async fn alias_version(&self, name: &ModelName, alias: &crate::AliasName) -> Result<Version, Error> {
        let key = (name.clone(), alias.as_str().to_string());
        if let Some((version, at)) = self.aliases.lock().expect("resolver lock").get(&key) {
            if at.elapsed() < self.alias_ttl {
                return Ok(*version);
            }
        }
        let version = self.store.alias(name, alias).await.map_err(|e| {
            tracing::error!(model = %name, alias = alias.as_str(), error = %e, "reading the alias failed");
            Error::Unavailable(format!("model '{name}' cannot be read from the model store right now"))
        })?;
        let version = version.ok_or_else(|| match alias.as_str() {
            "latest" => Error::not_found(format!("model '{name}' does not exist")),
            other => Error::not_found(format!("model '{name}' has no version or alias '{other}'")),
        })?;
        self.aliases.lock().expect("resolver lock").insert(key, (version, Instant::now()));
        Ok(version)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::manifest::{FileEntry, Task};
    use crate::{AliasName, DataType, MemoryModelStore, TensorSpec};

    pub(crate) fn manifest(name: &str, version: u32, state: ModelState) -> Manifest {
        let files = [("model.onnx".to_string(), FileEntry { sha256: "00".repeat(32), size: 10 })].into();
        let inputs = vec![TensorSpec { name: "input".into(), datatype: DataType::Fp32, shape: vec![-1, 4] }];
        let outputs = vec![TensorSpec { name: "output".into(), datatype: DataType::Fp32, shape: vec![-1, 3] }];
        let name = ModelName::parse(name).unwrap();
        Manifest {
            state,
            ..Manifest::ready(name, Version::new(version).unwrap(), Task::Tensor, files, inputs, outputs)
        }
    }

    fn store_with(manifests: &[Manifest], latest: u32) -> MemoryModelStore {
        let store = MemoryModelStore::default();
        for m in manifests {
            store.put_manifest(m.clone());
            store.put_alias(&m.name, &AliasName::latest(), Version::new(latest).unwrap());
        }
        store
    }

    #[tokio::test]
    async fn a_plain_name_resolves_through_latest() {
        let store = store_with(&[manifest("mlp", 1, ModelState::Ready), manifest("mlp", 2, ModelState::Ready)], 2);
        let resolver = ModelResolver::new(Arc::new(store), Duration::from_secs(5));
        let m = resolver.resolve(&ModelRef::parse("mlp").unwrap()).await.unwrap();
        assert_eq!(m.version.get(), 2);
        let m = resolver.resolve(&ModelRef::parse("mlp:1").unwrap()).await.unwrap();
        assert_eq!(m.version.get(), 1);
    }

    #[tokio::test]
    async fn pending_versions_and_unknown_names_are_not_found() {
        let store = store_with(&[manifest("mlp", 1, ModelState::Pending)], 1);
        let resolver = ModelResolver::new(Arc::new(store), Duration::from_secs(5));
        let err = resolver.resolve(&ModelRef::parse("mlp:1").unwrap()).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(ref m) if m.contains("Pending")), "{err:?}");
        let err = resolver.resolve(&ModelRef::parse("nope").unwrap()).await.unwrap_err();
        assert_eq!(err, Error::not_found("model 'nope' does not exist"));
        let err = resolver.resolve(&ModelRef::parse("mlp:prod").unwrap()).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(ref m) if m.contains("'prod'")));
    }

    #[tokio::test]
    async fn an_alias_move_is_seen_once_its_cache_entry_expires() {
        let store = store_with(&[manifest("mlp", 1, ModelState::Ready), manifest("mlp", 2, ModelState::Ready)], 1);
        let resolver = ModelResolver::new(Arc::new(store.clone()), Duration::ZERO);
        assert_eq!(resolver.resolve(&ModelRef::parse("mlp").unwrap()).await.unwrap().version.get(), 1);
        store.put_alias(&ModelName::parse("mlp").unwrap(), &AliasName::latest(), Version::new(2).unwrap());
        assert_eq!(resolver.resolve(&ModelRef::parse("mlp").unwrap()).await.unwrap().version.get(), 2);
    }
}
