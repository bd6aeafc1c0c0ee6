//! Inbound authentication: a JWT signed by a key from the issuer's JWKS, with pinned algorithms,
//! required `iss`, `aud` and `exp`, checked `nbf`, a leeway, and an optional client allowlist.
//!
//! What jsonwebtoken does not do for us, and why: the header's `alg` must be one the config pins
//! (never HS* or none); `oct` keys in the JWKS are ignored (an HMAC secret is not a public key); a key
//! is used only for the algorithm family of its type; `jku`, `x5u` and embedded `jwk` are never
//! fetched or used. An unknown `kid` refetches the JWKS at most once per configured interval.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::client::HttpClient;
use crate::config::Ingress;

/// Why a token was refused; the text goes into `WWW-Authenticate` and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("algorithm {0} does not fit key {1}")]
    KeyMismatch(String, String),
    #[error("token has no key id")]
    NoKeyId,
    #[error("unknown key id")]
    UnknownKey,
    #[error("signature does not verify")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("missing required claim {0}")]
    MissingClaim(String),
    #[error("client is not allowed")]
    Client,
    #[error("keys unavailable: {0}")]
    Keys(String),
}

impl AuthError {
    /// RFC 6750 error code for `WWW-Authenticate`.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "",
            AuthError::Client => "insufficient_scope",
            _ => "invalid_token",
        }
    }
}

fn family_of(algorithm: Algorithm) -> AlgorithmFamily {
    algorithm.family()
}

/// A usable public key from one JWK, or why not.
fn key_from_jwk(jwk: &Jwk) -> Option<(AlgorithmFamily, DecodingKey)> {
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
        AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
        AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
        // Symmetric secrets are never verification keys here.
        AlgorithmParameters::OctetKey(_) => return None,
        _ => return None,
    };
    DecodingKey::from_jwk(jwk).ok().map(|key| (family, key))
}

struct KeySet {
    keys: HashMap<String, (AlgorithmFamily, Arc<DecodingKey>, Option<Algorithm>)>,
}

pub struct Verifier {
    config: Ingress,
    client: HttpClient,
    keys: ArcSwap<KeySet>,
    /// When the JWKS was last fetched (successfully or not); refetches are spaced by the interval.
    last_fetch: Mutex<Option<Instant>>,
}

impl Verifier {
    pub fn new(config: Ingress, client: HttpClient) -> Self {
        Verifier { config, client, keys: ArcSwap::from_pointee(KeySet { keys: HashMap::new() }), last_fetch: Mutex::new(None) }
    }

    pub fn config(&self) -> &Ingress {
        &self.config
    }

    /// Whether keys have been loaded (for /readyz).
    pub fn ready(&self) -> bool {
        !self.keys.load().keys.is_empty()
    }

    /// Fetch the JWKS unless it was fetched within the refetch interval (`force` ignores that, for start).
    pub async fn refresh(&self, force: bool) -> Result<(), AuthError> {
        let mut last = self.last_fetch.lock().await;
        if !force && last.is_some_and(|at| at.elapsed() < self.config.jwks_refetch_interval) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let url = &self.config.jwks_url;
        let request = hyper::Request::get(if url.base_path.is_empty() { "/" } else { url.base_path.as_str() })
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| AuthError::Keys(e.to_string()))?;
        let response = self.client.send(url, request, Duration::from_secs(5)).await.map_err(AuthError::Keys)?;
        if response.status != 200 {
            return Err(AuthError::Keys(format!("JWKS endpoint answered {}", response.status)));
        }
        let document: Value = serde_json::from_slice(&response.body).map_err(|e| AuthError::Keys(format!("JWKS is not JSON: {e}")))?;
        let mut keys = HashMap::new();
        for raw in document.get("keys").and_then(Value::as_array).into_iter().flatten() {
            // Parse key by key: one odd key must not take the others down.
            // Only signature keys: an encryption key (`use: enc`) is not a verification key.
            if raw.get("use").is_some_and(|u| u != "sig") {
                continue;
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else { continue };
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            let algorithm = jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok());
            if let Some((family, key)) = key_from_jwk(&jwk) {
                keys.insert(kid, (family, Arc::new(key), algorithm));
            }
        }
        tracing::info!(keys = keys.len(), "JWKS loaded");
        self.keys.store(Arc::new(KeySet { keys }));
        Ok(())
    }

    /// Verify a bearer token; returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Value, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !self.config.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(AuthError::NoKeyId)?;
        let mut entry = self.keys.load().keys.get(&kid).cloned();
        if entry.is_none() {
            // Perhaps the issuer rotated its keys: look again, at most once per interval.
            if let Err(e) = self.refresh(false).await {
                tracing::warn!(error = %e, "JWKS refetch failed");
            }
            entry = self.keys.load().keys.get(&kid).cloned();
        }
        let (family, key, key_algorithm) = entry.ok_or(AuthError::UnknownKey)?;
        if family != family_of(header.alg) || key_algorithm.is_some_and(|a| a != header.alg) {
            return Err(AuthError::KeyMismatch(format!("{:?}", header.alg), kid));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.set_issuer(&[&self.config.issuer]);
        let mut required = vec!["exp", "iss"];
        if self.config.require_audience {
            validation.set_audience(&self.config.audiences);
            required.push("aud");
        } else {
            validation.validate_aud = false;
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind::*;
            match e.kind() {
                ExpiredSignature => AuthError::Expired,
                ImmatureSignature => AuthError::NotYetValid,
                InvalidIssuer => AuthError::Issuer,
                InvalidAudience => AuthError::Audience,
                MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
                InvalidSignature => AuthError::Signature,
                InvalidAlgorithm => AuthError::Algorithm(format!("{:?}", header.alg)),
                _ => AuthError::Malformed,
            }
        })?;
        if !self.config.allowed_clients.is_empty() {
            let client = data.claims.get("azp").or_else(|| data.claims.get("client_id")).and_then(Value::as_str);
            if !client.is_some_and(|c| self.config.allowed_clients.iter().any(|allowed| allowed == c)) {
                return Err(AuthError::Client);
            }
        }
        Ok(data.claims)
    }
}
