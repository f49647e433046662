//! JWT verification against a JWKS: RS256 and ES256 only (never `none`, never HMAC, so a public
//! key can never be used as a shared secret), issuer, audience, expiry and not-before checked.

use std::collections::BTreeSet;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::auth::{Principal, Scope};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECONDS: u64 = 30;

/// Verifies bearer JWTs with the keys of one JWKS.
pub struct JwtVerifier {
    keys: Vec<VerificationKey>,
    issuer: String,
    audience: String,
}

struct VerificationKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

impl JwtVerifier {
    /// Builds a verifier from a JWKS document. RSA keys verify RS256, P-256 keys ES256; any other
    /// key in the set is ignored, and a set with no usable key is an error.
    pub fn from_jwks(jwks_json: &str, issuer: &str, audience: &str) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_str(jwks_json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {:?}: {e}", jwk.common.key_id))?;
            keys.push(VerificationKey { kid: jwk.common.key_id.clone(), algorithm, key });
        }
        if keys.is_empty() {
            return Err("the JWKS has no RSA or P-256 key".into());
        }
        Ok(JwtVerifier { keys, issuer: issuer.to_string(), audience: audience.to_string() })
    }

    /// The principal a token stands for, or why it is not accepted (for the 401 body).
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token".to_string())?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(format!("token algorithm {:?} is not accepted (RS256 or ES256 only)", header.alg));
        }
        let key = match (&header.kid, self.keys.len()) {
            (Some(kid), _) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid.as_str())),
            (None, 1) => self.keys.first(),
            (None, _) => return Err("token has no 'kid' and the key set has several keys".into()),
        }
        .ok_or_else(|| "token is signed with an unknown key".to_string())?;
        if key.algorithm != header.alg {
            return Err(format!("token algorithm {:?} does not match its key", header.alg));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => "token has expired".to_string(),
                ErrorKind::ImmatureSignature => "token is not valid yet (nbf)".to_string(),
                ErrorKind::InvalidIssuer => "token issuer is not accepted".to_string(),
                ErrorKind::InvalidAudience => "token audience is not accepted".to_string(),
                ErrorKind::InvalidSignature => "token signature is invalid".to_string(),
                ErrorKind::MissingRequiredClaim(claim) => format!("token lacks the '{claim}' claim"),
                _ => "token is invalid".to_string(),
            }
        })?;
        let claims = data.claims;
        let scopes: BTreeSet<Scope> =
            claims.scope.as_deref().unwrap_or_default().split_whitespace().filter_map(Scope::parse).collect();
        Ok(Principal { id: claims.sub, tenant: claims.tenant.unwrap_or_default(), scopes })
    }
}
