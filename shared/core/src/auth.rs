//! Who is calling: principals, scopes, API keys (stored only as their sha256) and the
//! authenticator that turns an `Authorization` header into a principal.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::jwt::JwtVerifier;
use crate::{Error, StoreError};

/// What a principal may do, per route family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "infer")]
    Infer,
    #[serde(rename = "models:read")]
    ModelsRead,
    #[serde(rename = "models:write")]
    ModelsWrite,
    #[serde(rename = "jobs:read")]
    JobsRead,
    #[serde(rename = "jobs:write")]
    JobsWrite,
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 6] =
        [Scope::Infer, Scope::ModelsRead, Scope::ModelsWrite, Scope::JobsRead, Scope::JobsWrite, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Infer => "infer",
            Scope::ModelsRead => "models:read",
            Scope::ModelsWrite => "models:write",
            Scope::JobsRead => "jobs:read",
            Scope::JobsWrite => "jobs:write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(raw: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub tenant: String,
    pub scopes: BTreeSet<Scope>,
}

impl Principal {
    /// Whether the principal holds `scope` (admin holds every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// Fails with 403 unless the principal holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), Error> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!("this token lacks the '{scope}' scope")))
        }
    }
}

/// Prefix of every lmaas API key.
pub const API_KEY_PREFIX: &str = "lmk_";

/// The stored record of an API key, at `auth/keys/{sha256 of the key}.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub principal: String,
    pub tenant: String,
    pub scopes: BTreeSet<Scope>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Seconds since the Unix epoch; `None` never expires.
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub revoked: bool,
}

/// The sha256 (hex) under which a key is stored; the key itself is never stored.
pub fn api_key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Formats 32 random bytes as an API key (`lmk_` + 64 hex digits).
pub fn format_api_key(random: &[u8; 32]) -> String {
    format!("{API_KEY_PREFIX}{}", hex::encode(random))
}

pub use crate::time::now_seconds;

/// Where API key records live (S3 in production).
#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn key(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError>;
    async fn put_key(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError>;
    async fn list_keys(&self) -> Result<Vec<(String, KeyRecord)>, StoreError>;
}

/// An in-memory key store for unit tests.
#[derive(Default, Clone)]
pub struct MemoryKeyStore {
    keys: Arc<Mutex<HashMap<String, KeyRecord>>>,
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn key(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.keys.lock().expect("key store lock").get(hash).cloned())
    }

    async fn put_key(&self, hash: &str, record: &KeyRecord) -> Result<(), StoreError> {
        self.keys.lock().expect("key store lock").insert(hash.to_string(), record.clone());
        Ok(())
    }

    async fn list_keys(&self) -> Result<Vec<(String, KeyRecord)>, StoreError> {
        Ok(self.keys.lock().expect("key store lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

/// Turns `Authorization: Bearer …` into a principal: `lmk_` keys through the key store (records
/// cached briefly, so revocation takes effect within `key_ttl`), anything else as a JWT.
pub struct Authenticator {
    keys: Arc<dyn KeyStore>,
    jwt: Option<JwtVerifier>,
    key_ttl: Duration,
    cache: Mutex<HashMap<String, (Option<KeyRecord>, Instant)>>,
}

impl Authenticator {
    pub fn new(keys: Arc<dyn KeyStore>, jwt: Option<JwtVerifier>, key_ttl: Duration) -> Self {
        Authenticator { keys, jwt, key_ttl, cache: Mutex::default() }
    }

    /// The caller, or 401 saying why not. The token itself never appears in messages or logs.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Error> {
        let header = authorization.ok_or_else(|| Error::Unauthorized("missing bearer token".into()))?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => token.trim(),
            _ => return Err(Error::Unauthorized("use 'Authorization: Bearer <token>'".into())),
        };
        if token.starts_with(API_KEY_PREFIX) {
            return self.api_key(token).await;
        }
        let verifier = self.jwt.as_ref().ok_or_else(|| Error::Unauthorized("invalid API key".into()))?;
        verifier.verify(token).map_err(Error::Unauthorized)
    }

    async fn api_key(&self, token: &str) -> Result<Principal, Error> {
        let hash = api_key_hash(token);
        let cached = self.cache.lock().expect("auth cache lock").get(&hash).cloned();
        let record = match cached {
            Some((record, at)) if at.elapsed() < self.key_ttl => record,
            _ => {
                let record = self.keys.key(&hash).await.map_err(|e| {
                    tracing::error!(error = %e, "reading an API key record failed");
                    Error::Unavailable("authentication is unavailable right now".into())
                })?;
                self.cache.lock().expect("auth cache lock").insert(hash, (record.clone(), Instant::now()));
                record
            }
        };
        let record = record.ok_or_else(|| Error::Unauthorized("invalid API key".into()))?;
        if record.revoked {
            return Err(Error::Unauthorized("API key has been revoked".into()));
        }
        if record.expires_at.is_some_and(|at| at <= now_seconds()) {
            return Err(Error::Unauthorized("API key has expired".into()));
        }
        Ok(Principal { id: record.principal, tenant: record.tenant, scopes: record.scopes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(scopes: &[Scope], expires_at: Option<u64>, revoked: bool) -> KeyRecord {
        KeyRecord {
            principal: "alice".into(),
            tenant: "acme".into(),
            scopes: scopes.iter().copied().collect(),
            created_at: 0,
            expires_at,
            revoked,
        }
    }

    async fn authenticator_with(key: &str, record: KeyRecord) -> Authenticator {
        let store = MemoryKeyStore::default();
        store.put_key(&api_key_hash(key), &record).await.unwrap();
        Authenticator::new(Arc::new(store), None, Duration::from_secs(30))
    }

    #[tokio::test]
    async fn a_valid_api_key_yields_its_principal() {
        let key = format_api_key(&[7; 32]);
        let auth = authenticator_with(&key, record(&[Scope::Infer], None, false)).await;
        let principal = auth.authenticate(Some(&format!("Bearer {key}"))).await.unwrap();
        assert_eq!((principal.id.as_str(), principal.tenant.as_str()), ("alice", "acme"));
        assert!(principal.has(Scope::Infer) && !principal.has(Scope::ModelsWrite));
    }

    #[tokio::test]
    async fn missing_malformed_unknown_revoked_and_expired_keys_are_unauthorized() {
        let key = format_api_key(&[1; 32]);
        let auth = authenticator_with(&key, record(&[Scope::Infer], Some(1), false)).await;
        let cases = [
            (None, "missing bearer token"),
            (Some(format!("Basic {key}")), "Bearer"),
            (Some("Bearer".to_string()), "Bearer"),
            (Some(format!("Bearer {}", format_api_key(&[2; 32]))), "invalid API key"),
            (Some(format!("Bearer {key}")), "expired"),
            (Some("Bearer eyJhbGciOiJub25lIn0.e30.".to_string()), "invalid API key"),
        ];
        for (header, message) in cases {
            let err = auth.authenticate(header.as_deref()).await.unwrap_err();
            assert!(matches!(err, Error::Unauthorized(ref m) if m.contains(message)), "{header:?}: {err:?}");
            assert!(!err.to_string().contains(&key[4..]), "messages never carry the key");
        }
        let revoked = authenticator_with(&key, record(&[Scope::Infer], None, true)).await;
        assert!(revoked
            .authenticate(Some(&format!("bearer {key}")))
            .await
            .unwrap_err()
            .to_string()
            .contains("revoked"));
    }

    #[tokio::test]
    async fn a_revocation_is_seen_once_the_cached_record_expires() {
        let key = format_api_key(&[3; 32]);
        let store = MemoryKeyStore::default();
        store.put_key(&api_key_hash(&key), &record(&[Scope::Infer], None, false)).await.unwrap();
        let cached = Authenticator::new(Arc::new(store.clone()), None, Duration::from_secs(3600));
        let fresh = Authenticator::new(Arc::new(store.clone()), None, Duration::ZERO);
        let header = format!("Bearer {key}");
        assert!(cached.authenticate(Some(&header)).await.is_ok());
        assert!(fresh.authenticate(Some(&header)).await.is_ok());
        store.put_key(&api_key_hash(&key), &record(&[Scope::Infer], None, true)).await.unwrap();
        assert!(cached.authenticate(Some(&header)).await.is_ok(), "within the TTL the cached record holds");
        assert!(fresh.authenticate(Some(&header)).await.is_err(), "past the TTL the revocation is seen");
    }

    #[test]
    fn admin_holds_every_scope_and_others_only_their_own() {
        let admin = Principal { id: "a".into(), tenant: "t".into(), scopes: [Scope::Admin].into() };
        assert!(Scope::ALL.iter().all(|s| admin.has(*s)));
        let reader = Principal { id: "r".into(), tenant: "t".into(), scopes: [Scope::ModelsRead].into() };
        assert!(matches!(reader.require(Scope::Infer), Err(Error::Forbidden(m)) if m.contains("'infer'")));
    }
}
