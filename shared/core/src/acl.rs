//! Per-model access: the owner tenant, and the manifest's ACL (`acl.invoke`, `acl.read`: principal
//! ids, `tenant:<t>`, or `*`). Deny by default. A model the caller may not even see answers 404,
//! exactly like a model that does not exist, so another tenant's models do not leak.

use serde::{Deserialize, Serialize};

use crate::auth::{Principal, Scope};
use crate::{Error, Manifest};

/// Who besides the owner tenant may use a model version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    #[serde(default)]
    pub invoke: Vec<String>,
    #[serde(default)]
    pub read: Vec<String>,
}

/// What a caller wants to do with a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Invoke,
    /// Change the model (new versions, aliases, deletes): its owner tenant only.
    Write,
}

fn grants(entries: &[String], principal: &Principal) -> bool {
    entries.iter().any(|entry| {
        entry == "*"
            || *entry == principal.id
            || entry.strip_prefix("tenant:").is_some_and(|t| !principal.tenant.is_empty() && t == principal.tenant)
    })
}

/// Checks `access` to `manifest` for `principal`: 404 when the model is invisible to them, 403
/// when they can see it but not do this.
pub fn authorize(principal: &Principal, manifest: &Manifest, access: Access) -> Result<(), Error> {
    if principal.has(Scope::Admin) {
        return Ok(());
    }
    let owner = manifest.tenant.as_deref().is_some_and(|t| !t.is_empty() && t == principal.tenant);
    let invoke = owner || grants(&manifest.acl.invoke, principal);
    let read = invoke || grants(&manifest.acl.read, principal);
    let allowed = match access {
        Access::Read => read,
        Access::Invoke => invoke,
        Access::Write => owner,
    };
    match (allowed, read) {
        (true, _) => Ok(()),
        (false, true) if access == Access::Write => {
            Err(Error::Forbidden(format!("model '{}' belongs to another tenant", manifest.name)))
        }
        (false, true) => Err(Error::Forbidden(format!("you may read model '{}' but not invoke it", manifest.name))),
        (false, false) => Err(Error::not_found(format!("model '{}' does not exist", manifest.name))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolver::tests::manifest;
    use crate::ModelState;

    fn principal(id: &str, tenant: &str, scopes: &[Scope]) -> Principal {
        Principal { id: id.into(), tenant: tenant.into(), scopes: scopes.iter().copied().collect() }
    }

    fn model(tenant: Option<&str>, invoke: &[&str], read: &[&str]) -> Manifest {
        let mut m = manifest("m", 1, ModelState::Ready);
        m.tenant = tenant.map(str::to_string);
        m.acl = Acl {
            invoke: invoke.iter().map(|s| s.to_string()).collect(),
            read: read.iter().map(|s| s.to_string()).collect(),
        };
        m
    }

    #[test]
    fn owners_public_models_and_named_grants_are_allowed() {
        let alice = principal("alice", "acme", &[Scope::Infer]);
        assert!(authorize(&alice, &model(Some("acme"), &[], &[]), Access::Invoke).is_ok());
        assert!(authorize(&alice, &model(Some("other"), &["*"], &[]), Access::Invoke).is_ok());
        assert!(authorize(&alice, &model(Some("other"), &["alice"], &[]), Access::Invoke).is_ok());
        assert!(authorize(&alice, &model(Some("other"), &["tenant:acme"], &[]), Access::Read).is_ok());
    }

    #[test]
    fn another_tenants_private_model_is_not_found_and_read_only_is_forbidden() {
        let alice = principal("alice", "acme", &[Scope::Infer]);
        let private = authorize(&alice, &model(Some("other"), &[], &[]), Access::Invoke).unwrap_err();
        assert_eq!(private, Error::not_found("model 'm' does not exist"));
        let read_only = authorize(&alice, &model(Some("other"), &[], &["*"]), Access::Invoke).unwrap_err();
        assert!(matches!(read_only, Error::Forbidden(_)));
        // No owner and no ACL: deny by default, even for an empty tenant.
        let nobody = principal("x", "", &[Scope::Infer]);
        assert!(authorize(&nobody, &model(None, &[], &["tenant:"]), Access::Read).is_err());
        assert!(authorize(&principal("root", "", &[Scope::Admin]), &model(None, &[], &[]), Access::Invoke).is_ok());
    }
}
