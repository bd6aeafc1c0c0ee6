//! Inbound authentication: a JWT signed by a key from the issuer's JWKS, with pinned algorithms,
//! required `iss`, `aud` and `exp`, checked `nbf`, a leeway, and an optional client allowlist.
//!
//! What jsonwebtoken does not do for us, and why: the header's `alg` must be one the config pins
//! (never HS* or none); `oct` keys in the JWKS are ignored (an HMAC secret is not a public key); a key
//! is used only for the algorithm family of its type; `jku`, `x5u` and embedded `jwk` are never
//! fetched or used; a `crit` header is refused (RFC 7515 section 4.1.11: extensions marked critical must
//! be understood, and we understand none). An unknown `kid` refetches the JWKS at most once per
//! configured interval; while the JWKS cannot be loaded, a kid not in hand is [`AuthError::Keys`] (503:
//! the issuer is down, the caller did nothing wrong), not an unknown key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Header, Validation};
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
    #[error("critical header parameters not understood: {0}")]
    Critical(String),
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
    /// `exp` or `nbf` present but not a NumericDate (RFC 7519 section 2: a JSON number, fractions allowed;
    /// `null`, a string or a negative number is none).
    #[error("claim {0} is not a NumericDate")]
    ClaimFormat(String),
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

/// What jsonwebtoken leaves to us in the header: an algorithm the config pins, no `crit` (no extension is
/// understood here, so a token that marks one as critical is refused, as RFC 7515 section 4.1.11 requires),
/// and a key id, which is returned.
pub fn check_header(header: &Header, algorithms: &[Algorithm]) -> Result<String, AuthError> {
    if !algorithms.contains(&header.alg) {
        return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
    }
    if let Some(critical) = &header.crit {
        let names = if critical.is_empty() { "(an empty list)".to_owned() } else { critical.join(", ") };
        return Err(AuthError::Critical(names));
    }
    header.kid.clone().ok_or(AuthError::NoKeyId)
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

/// The usable keys of a JWKS document.
fn key_set(document: &Value) -> KeySet {
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
    KeySet { keys }
}

/// The last JWKS fetch: when it started, and why it failed if it did.
struct LastFetch {
    at: Instant,
    error: Option<String>,
}

/// What a caller is told while the JWKS cannot be loaded (the details go to the log, not to callers).
const KEYS_UNAVAILABLE: &str = "the issuer's JWKS could not be loaded";

pub struct Verifier {
    config: Ingress,
    client: HttpClient,
    keys: ArcSwap<KeySet>,
    /// The last JWKS fetch (successful or not); refetches are spaced by the interval.
    last_fetch: Mutex<Option<LastFetch>>,
}

impl Verifier {
    pub fn new(config: Ingress, client: HttpClient) -> Self {
        Verifier { config, client, keys: ArcSwap::from_pointee(KeySet { keys: HashMap::new() }), last_fetch: Mutex::new(None) }
    }

    /// A verifier holding the usable keys of `jwks` (a JWKS document) as if it had just fetched them: no
    /// fetch happens within the refetch interval. For verifying against fixed keys without a network (the
    /// `jwt` fuzz target, fuzz/fuzz_targets/jwt.rs).
    pub fn with_jwks(config: Ingress, client: HttpClient, jwks: &Value) -> Self {
        let last_fetch = Mutex::new(Some(LastFetch { at: Instant::now(), error: None }));
        Verifier { config, client, keys: ArcSwap::from_pointee(key_set(jwks)), last_fetch }
    }

    pub fn config(&self) -> &Ingress {
        &self.config
    }

    /// Whether keys have been loaded (for /readyz).
    pub fn ready(&self) -> bool {
        !self.keys.load().keys.is_empty()
    }

    /// How long a caller refused for [`AuthError::Keys`] should wait: until the JWKS may be fetched again.
    pub fn retry_after(&self) -> Duration {
        self.config.jwks_refetch_interval
    }

    /// Fetch the JWKS unless it was fetched within the refetch interval (`force` ignores that, for start);
    /// within the interval, the outcome of the last fetch is returned.
    pub async fn refresh(&self, force: bool) -> Result<(), AuthError> {
        let mut last = self.last_fetch.lock().await;
        if !force && let Some(fetch) = last.as_ref().filter(|f| f.at.elapsed() < self.config.jwks_refetch_interval) {
            return fetch.error.clone().map_or(Ok(()), |e| Err(AuthError::Keys(e)));
        }
        let at = Instant::now();
        let result = self.load().await;
        if let (Err(e), false) = (&result, force) {
            tracing::warn!(error = %e, "JWKS refetch failed");
        }
        *last = Some(LastFetch { at, error: result.as_ref().err().cloned() });
        result.map_err(AuthError::Keys)
    }

    /// Fetch the JWKS and put its usable keys in place; on failure the keys in hand stay.
    async fn load(&self) -> Result<(), String> {
        let url = &self.config.jwks_url;
        let request = hyper::Request::get(if url.base_path.is_empty() { "/" } else { url.base_path.as_str() })
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = self.client.send(url, request, Duration::from_secs(5)).await?;
        if response.status != 200 {
            return Err(format!("JWKS endpoint answered {}", response.status));
        }
        let document: Value = serde_json::from_slice(&response.body).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let keys = key_set(&document);
        tracing::info!(keys = keys.keys.len(), "JWKS loaded");
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    /// Verify a bearer token; returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Value, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let kid = check_header(&header, &self.config.algorithms)?;
        let mut entry = self.keys.load().keys.get(&kid).cloned();
        if entry.is_none() {
            // Perhaps the issuer rotated its keys: look again, at most once per interval. If the JWKS
            // cannot be loaded, the key may well exist: that is the issuer's failure, not the caller's.
            let refreshed = self.refresh(false).await;
            entry = self.keys.load().keys.get(&kid).cloned();
            if entry.is_none() && refreshed.is_err() {
                return Err(AuthError::Keys(KEYS_UNAVAILABLE.into()));
            }
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
                InvalidClaimFormat(claim) => AuthError::ClaimFormat(claim.clone()),
                InvalidSignature => AuthError::Signature,
                InvalidAlgorithm => AuthError::Algorithm(format!("{:?}", header.alg)),
                _ => AuthError::Malformed,
            }
        })?;
        // jsonwebtoken also takes an array of issuers that contains ours; RFC 7519 section 4.1.1 makes `iss`
        // one string (found by the `jwt` fuzz target).
        if data.claims.get("iss").and_then(Value::as_str) != Some(self.config.issuer.as_str()) {
            return Err(AuthError::Issuer);
        }
        if !self.config.allowed_clients.is_empty() {
            let client = data.claims.get("azp").or_else(|| data.claims.get("client_id")).and_then(Value::as_str);
            if !client.is_some_and(|c| self.config.allowed_clients.iter().any(|allowed| allowed == c)) {
                return Err(AuthError::Client);
            }
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(alg: Algorithm, kid: Option<&str>, crit: Option<&[&str]>) -> Header {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        header.crit = crit.map(|names| names.iter().map(|n| (*n).to_owned()).collect());
        header
    }

    #[test]
    fn headers_need_a_pinned_algorithm_a_key_id_and_no_critical_extension() {
        let pinned = [Algorithm::RS256, Algorithm::ES256];
        assert_eq!(check_header(&header(Algorithm::RS256, Some("k1"), None), &pinned), Ok("k1".into()));
        assert_eq!(check_header(&header(Algorithm::HS256, Some("k1"), None), &pinned), Err(AuthError::Algorithm("HS256".into())));
        assert_eq!(check_header(&header(Algorithm::PS256, Some("k1"), None), &pinned), Err(AuthError::Algorithm("PS256".into())));
        assert_eq!(check_header(&header(Algorithm::ES256, None, None), &pinned), Err(AuthError::NoKeyId));
        let critical = check_header(&header(Algorithm::RS256, Some("k1"), Some(&["b64"])), &pinned).unwrap_err();
        assert_eq!(critical, AuthError::Critical("b64".into()));
        assert_eq!(critical.to_string(), "critical header parameters not understood: b64");
        assert_eq!(critical.code(), "invalid_token");
        assert_eq!(
            check_header(&header(Algorithm::RS256, Some("k1"), Some(&["exp", "x"])), &pinned),
            Err(AuthError::Critical("exp, x".into()))
        );
        assert_eq!(
            check_header(&header(Algorithm::RS256, Some("k1"), Some(&[])), &pinned),
            Err(AuthError::Critical("(an empty list)".into())),
            "an empty crit is invalid too"
        );
    }

    #[tokio::test]
    async fn a_key_not_in_hand_while_the_jwks_cannot_be_loaded_is_unavailable_not_unknown() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let yaml = format!(
            "ingress: {{ upstream: 'http://127.0.0.1:8000', jwksUrl: 'http://127.0.0.1:{port}/certs', issuer: i, audiences: [a], algorithms: [RS256] }}\n"
        );
        let config = crate::config::Config::load(&yaml, &Default::default()).unwrap().ingress.unwrap();
        let verifier = Verifier::new(config, HttpClient::new(None).unwrap());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("../tests/keys/rsa-private.pem")).unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let claims = serde_json::json!({"iss": "i", "aud": "a", "exp": jsonwebtoken::get_current_timestamp() + 60});
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let unavailable = AuthError::Keys(KEYS_UNAVAILABLE.into());
        assert_eq!(verifier.verify(&token).await, Err(unavailable.clone()), "the fetch failed");
        assert_eq!(verifier.verify(&token).await, Err(unavailable), "within the interval: the last failure, without a fetch");
        assert!(
            matches!(verifier.refresh(false).await, Err(AuthError::Keys(detail)) if detail.contains(&port.to_string())),
            "details for the log"
        );
    }

    #[test]
    fn a_crit_that_is_not_a_list_of_names_is_malformed() {
        use base64::Engine;
        let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        let token = format!("{}.{}.c2ln", b64(r#"{"alg":"RS256","kid":"k1","crit":"b64"}"#), b64("{}"));
        assert!(jsonwebtoken::decode_header(&token).is_err(), "refused before any key is looked at (AuthError::Malformed)");
    }
}
