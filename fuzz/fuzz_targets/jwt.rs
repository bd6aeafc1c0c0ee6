//! Ingress JWT verification ([`tollgate_proxy::jwt::Verifier::verify`]) against a fixed JWKS
//! (`fuzz/keys/jwks.json`: RSA, EC and Ed25519 signature keys, an `oct` key and a `use: enc` key that
//! must both be ignored), under two ingress configs (FLAME's: an audience and allowed clients; and one
//! without either, with no leeway).
//!
//! Two kinds of input:
//! - **Raw** (anything not starting with `~`): the bytes are the token. A fuzzer cannot forge a signature,
//!   so the property is: never panics, never accepts, never answers "keys unavailable" (the keys are in
//!   hand and no fetch is due).
//! - **Signed** (`~` then structure): the target builds a header and claims from the fuzzer's choices (or
//!   takes them as raw JSON text), signs them itself — with a key of the JWKS, with an attacker's key
//!   embedded in the header, with the `oct` key's secret or with the RSA public key as an HMAC secret
//!   (algorithm confusion) — so that the checks behind the signature are reached. Properties: never
//!   panics; anything accepted was signed by the key its `kid` names, with that key's algorithm, one the
//!   config pins, no `crit`, `iss` the issuer, `aud` one of the audiences (when required), `exp` not past
//!   and `nbf` not ahead (both within the leeway), and an allowed client — judged here on the JSON itself;
//!   and for tokens built from choices (not raw JSON), it is accepted exactly when all of that holds.

#![no_main]

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use tollgate_proxy::client::HttpClient;
use tollgate_proxy::config::{Config, Environment};
use tollgate_proxy::jwt::{AuthError, Verifier};

const JWKS: &str = include_str!("../keys/jwks.json");
const ATTACKER_JWK: &str = include_str!("../keys/attacker-jwk.json");
const ISSUER: &str = "http://keycloak.flame.svc:8080/realms/flame";
const AUDIENCE: &str = "flame-analysis";
const CLIENTS: [&str; 2] = ["message-broker", "pod-orchestrator"];

struct Setup {
    runtime: tokio::runtime::Runtime,
    /// (verifier, pinned algorithms, audience required, allowed clients, leeway in seconds)
    verifiers: Vec<(Verifier, Vec<Algorithm>, bool, bool, u64)>,
    rsa: EncodingKey,
    ec: EncodingKey,
    ed: EncodingKey,
    attacker: EncodingKey,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let jwks: Value = serde_json::from_str(JWKS).unwrap();
        let configs = [
            format!(
                "ingress: {{ upstream: 'http://127.0.0.1:8000', jwksUrl: 'http://127.0.0.1:9/certs', issuer: '{ISSUER}', \
                 audiences: [{AUDIENCE}], algorithms: [RS256, PS256, ES256, EdDSA], allowedClients: [{}], jwksRefetchInterval: 100000m }}",
                CLIENTS.join(", ")
            ),
            format!(
                "ingress: {{ upstream: 'http://127.0.0.1:8000', jwksUrl: 'http://127.0.0.1:9/certs', issuer: '{ISSUER}', \
                 requireAudience: false, algorithms: [ES256, EdDSA], leeway: 0s, jwksRefetchInterval: 100000m }}"
            ),
        ];
        let verifiers = configs
            .iter()
            .map(|yaml| {
                let ingress = Config::load(yaml, &Environment::default()).unwrap().ingress.unwrap();
                let meta =
                    (ingress.algorithms.clone(), ingress.require_audience, !ingress.allowed_clients.is_empty(), ingress.leeway.as_secs());
                let verifier = Verifier::with_jwks(ingress, HttpClient::new(None).unwrap(), &jwks);
                assert!(verifier.ready());
                (verifier, meta.0, meta.1, meta.2, meta.3)
            })
            .collect();
        Setup {
            runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            verifiers,
            rsa: EncodingKey::from_rsa_pem(include_bytes!("../../proxy/tests/keys/rsa-private.pem")).unwrap(),
            ec: EncodingKey::from_ec_pem(include_bytes!("../keys/ec-private.pem")).unwrap(),
            ed: EncodingKey::from_ed_pem(include_bytes!("../keys/ed-private.pem")).unwrap(),
            attacker: EncodingKey::from_ec_pem(include_bytes!("../keys/attacker-ec-private.pem")).unwrap(),
        }
    })
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn verify(verifier: &Verifier, token: &str) -> Result<Value, AuthError> {
    setup().runtime.block_on(verifier.verify(token))
}

/// Who signs, and how.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum Signer {
    /// `rsa-1`, RS256 (its JWK pins RS256).
    Rsa,
    /// `rsa-1`'s key with PS256, which its JWK does not allow.
    RsaPss,
    /// `ec-1`, ES256.
    Ec,
    /// `ed-1`, EdDSA (its JWK names no algorithm).
    Ed,
    /// A key the JWKS does not have, embedded in the header as `jwk`.
    Attacker,
    /// HS256 with the `oct` key's secret, which is in the JWKS but never a verification key.
    OctSecret,
    /// HS256 with the RSA public key (its JWK JSON) as the secret: algorithm confusion.
    RsaPublicAsSecret,
}

impl Signer {
    fn algorithm(self) -> Algorithm {
        match self {
            Signer::Rsa => Algorithm::RS256,
            Signer::RsaPss => Algorithm::PS256,
            Signer::Ec | Signer::Attacker => Algorithm::ES256,
            Signer::Ed => Algorithm::EdDSA,
            Signer::OctSecret | Signer::RsaPublicAsSecret => Algorithm::HS256,
        }
    }

    /// The kid of the JWKS key that verifies this signer's signatures, if any.
    fn kid(self) -> Option<&'static str> {
        match self {
            Signer::Rsa => Some("rsa-1"),
            Signer::Ec => Some("ec-1"),
            Signer::Ed => Some("ed-1"),
            // The JWKS has rsa-1's key, but its JWK pins RS256.
            Signer::RsaPss | Signer::Attacker | Signer::OctSecret | Signer::RsaPublicAsSecret => None,
        }
    }

    fn natural_kid(self) -> &'static str {
        match self {
            Signer::Rsa | Signer::RsaPss | Signer::RsaPublicAsSecret => "rsa-1",
            Signer::Ec | Signer::Attacker => "ec-1",
            Signer::Ed => "ed-1",
            Signer::OctSecret => "hmac-1",
        }
    }

    fn sign(self, message: &[u8]) -> String {
        let s = setup();
        let secret;
        let key = match self {
            Signer::Rsa | Signer::RsaPss => &s.rsa,
            Signer::Ec => &s.ec,
            Signer::Ed => &s.ed,
            Signer::Attacker => &s.attacker,
            Signer::OctSecret => {
                secret = EncodingKey::from_secret(b"a shared secret is never a verification key");
                &secret
            }
            Signer::RsaPublicAsSecret => {
                secret = EncodingKey::from_secret(include_bytes!("../../proxy/tests/keys/rsa-public.pem"));
                &secret
            }
        };
        jsonwebtoken::crypto::sign(message, key, self.algorithm()).expect("signs")
    }
}

const ALGORITHMS: [&str; 9] = ["RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256", "RS512", "none", "ED25519"];
const KIDS: [&str; 7] = ["rsa-1", "ec-1", "ed-1", "hmac-1", "enc-1", "unknown", ""];

#[derive(Arbitrary, Debug)]
struct HeaderChoices {
    /// `None`: the signer's own algorithm.
    alg: Option<u8>,
    /// `None`: the signer's natural kid; `Some(n)` beyond the list: no kid.
    kid: Option<u8>,
    crit: Option<Vec<String>>,
    typ: Option<String>,
    embed_jwk: bool,
    jku: bool,
}

#[derive(Arbitrary, Debug)]
enum Part<T> {
    Chosen(T),
    Raw(String),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Iss {
    Issuer,
    Other,
    ArrayWithIssuer,
    ArrayWithOthers,
    Number,
    Null,
    Absent,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Aud {
    Audience,
    Other,
    ArrayWithAudience,
    ArrayOfOthers,
    Empty,
    Number,
    Absent,
}

/// Seconds from now, far from every boundary (the leeway is 30 s or 0 s).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Time {
    In1h,
    In15s,
    Ago15s,
    Ago1h,
    Float1h,
    Text,
    Negative,
    Huge,
    Null,
    Absent,
}

impl Time {
    fn value(self, now: u64) -> Option<Value> {
        Some(match self {
            Time::In1h => json!(now + 3600),
            Time::In15s => json!(now + 15),
            Time::Ago15s => json!(now - 15),
            Time::Ago1h => json!(now - 3600),
            Time::Float1h => json!(now as f64 + 3600.25),
            Time::Text => json!((now + 3600).to_string()),
            Time::Negative => json!(-1),
            Time::Huge => json!(u64::MAX),
            Time::Null => Value::Null,
            Time::Absent => return None,
        })
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Client {
    Broker,
    Orchestrator,
    Other,
    Number,
    Absent,
}

impl Client {
    fn value(self) -> Option<Value> {
        Some(match self {
            Client::Broker => json!(CLIENTS[0]),
            Client::Orchestrator => json!(CLIENTS[1]),
            Client::Other => json!("someone-else"),
            Client::Number => json!(7),
            Client::Absent => return None,
        })
    }
}

#[derive(Arbitrary, Debug)]
struct ClaimChoices {
    iss: Iss,
    aud: Aud,
    exp: Time,
    nbf: Option<Time>,
    azp: Client,
    client_id: Client,
}

#[derive(Arbitrary, Debug)]
struct Signed {
    signer: Signer,
    header: Part<HeaderChoices>,
    claims: Part<ClaimChoices>,
}

fn header_json(signer: Signer, h: &HeaderChoices) -> Value {
    let mut header = json!({});
    header["alg"] = json!(h.alg.map_or(format!("{:?}", signer.algorithm()), |i| ALGORITHMS[usize::from(i) % ALGORITHMS.len()].to_owned()));
    match h.kid {
        None => header["kid"] = json!(signer.natural_kid()),
        Some(i) if usize::from(i) < KIDS.len() => header["kid"] = json!(KIDS[usize::from(i)]),
        Some(_) => {}
    }
    if let Some(crit) = &h.crit {
        header["crit"] = json!(crit);
    }
    if let Some(typ) = &h.typ {
        header["typ"] = json!(typ);
    }
    if h.embed_jwk || signer == Signer::Attacker {
        header["jwk"] = serde_json::from_str(ATTACKER_JWK).unwrap();
    }
    if h.jku {
        header["jku"] = json!("http://attacker.example/jwks.json");
    }
    header
}

fn claims_json(c: &ClaimChoices, now: u64) -> Value {
    let mut claims = json!({"sub": "fuzz"});
    let iss = match c.iss {
        Iss::Issuer => Some(json!(ISSUER)),
        Iss::Other => Some(json!("http://evil.example/realms/flame")),
        Iss::ArrayWithIssuer => Some(json!([ISSUER, "http://evil.example"])),
        Iss::ArrayWithOthers => Some(json!(["http://evil.example"])),
        Iss::Number => Some(json!(1)),
        Iss::Null => Some(Value::Null),
        Iss::Absent => None,
    };
    let aud = match c.aud {
        Aud::Audience => Some(json!(AUDIENCE)),
        Aud::Other => Some(json!("another-service")),
        Aud::ArrayWithAudience => Some(json!(["another-service", AUDIENCE])),
        Aud::ArrayOfOthers => Some(json!(["another-service", "x"])),
        Aud::Empty => Some(json!([])),
        Aud::Number => Some(json!(3)),
        Aud::Absent => None,
    };
    for (name, value) in [
        ("iss", iss),
        ("aud", aud),
        ("exp", c.exp.value(now)),
        ("nbf", c.nbf.and_then(|t| t.value(now))),
        ("azp", c.azp.value()),
        ("client_id", c.client_id.value()),
    ] {
        if let Some(value) = value {
            claims[name] = value;
        }
    }
    claims
}

/// A JSON number as jsonwebtoken reads a NumericDate: a non-negative integer, or a finite non-negative
/// float, rounded.
fn numeric_date(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64).map(|f| f.round() as u64))
        }
        _ => None,
    }
}

/// Why a token with this header and these claims, signed by `signer`, must be refused by a verifier
/// with this config; `None` if it must be accepted. `slack` widens the time windows (seconds) for
/// judging an acceptance after the fact.
fn refusal(
    signer: Signer,
    header: &Value,
    claims: &Value,
    (algorithms, require_audience, restrict_clients, leeway): (&[Algorithm], bool, bool, u64),
    now: u64,
    slack: u64,
) -> Option<String> {
    let alg = format!("{:?}", signer.algorithm());
    if header.get("alg") != Some(&json!(alg)) {
        return Some(format!("alg {:?} is not the signer's {alg}", header.get("alg")));
    }
    if !algorithms.contains(&signer.algorithm()) {
        return Some(format!("{alg} is not pinned"));
    }
    match signer.kid() {
        Some(kid) if header.get("kid") == Some(&json!(kid)) => {}
        _ => return Some(format!("kid {:?} does not name the signing key {signer:?}", header.get("kid"))),
    }
    if header.get("crit").is_some() {
        return Some("crit".into());
    }
    if claims.get("iss") != Some(&json!(ISSUER)) {
        return Some(format!("iss {:?}", claims.get("iss")));
    }
    if require_audience {
        let ok = match claims.get("aud") {
            Some(Value::String(aud)) => aud == AUDIENCE,
            Some(Value::Array(auds)) => auds.iter().any(|a| a == AUDIENCE),
            _ => false,
        };
        if !ok {
            return Some(format!("aud {:?}", claims.get("aud")));
        }
    }
    match claims.get("exp").map(numeric_date) {
        Some(Some(exp)) if exp.saturating_add(leeway + slack) >= now => {}
        other => return Some(format!("exp {other:?}")),
    }
    // A NumericDate is a JSON number, a fraction included (RFC 7519 section 2); `null` is none: a token with
    // `"nbf": null` is refused like any other malformed claim, not read as one without `nbf` (proxy/README.md,
    // the ingress; found by this target, corpus regression-nbf-null).
    match claims.get("nbf") {
        None => {}
        Some(nbf) => match numeric_date(nbf) {
            Some(nbf) if nbf <= now + leeway + slack => {}
            other => return Some(format!("nbf {other:?}")),
        },
    }
    if restrict_clients {
        let client = claims.get("azp").or_else(|| claims.get("client_id")).and_then(Value::as_str);
        if !client.is_some_and(|c| CLIENTS.contains(&c)) {
            return Some(format!("client {client:?}"));
        }
    }
    None
}

fn raw(token: &str) {
    for (verifier, ..) in &setup().verifiers {
        match verify(verifier, token) {
            Ok(claims) => panic!("accepted a token the fuzzer made up: {token:?} -> {claims}"),
            Err(AuthError::Keys(e)) => panic!("keys unavailable with the keys in hand: {e}"),
            Err(_) => {}
        }
    }
}

fn signed(data: &[u8]) {
    let Ok(input) = Signed::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let now = now();
    let header_text = match &input.header {
        Part::Chosen(h) => header_json(input.signer, h).to_string(),
        Part::Raw(text) => text.clone(),
    };
    let claims_text = match &input.claims {
        Part::Chosen(c) => claims_json(c, now).to_string(),
        Part::Raw(text) => text.clone(),
    };
    let message = format!("{}.{}", b64(header_text.as_bytes()), b64(claims_text.as_bytes()));
    let token = format!("{message}.{}", input.signer.sign(message.as_bytes()));
    let chosen = matches!((&input.header, &input.claims), (Part::Chosen(_), Part::Chosen(_)));
    for (verifier, algorithms, require_audience, restrict_clients, leeway) in &setup().verifiers {
        let config = (algorithms.as_slice(), *require_audience, *restrict_clients, *leeway);
        let result = verify(verifier, &token);
        if let Err(AuthError::Keys(e)) = &result {
            panic!("keys unavailable with the keys in hand: {e}");
        }
        match (&result, serde_json::from_str::<Value>(&header_text), serde_json::from_str::<Value>(&claims_text)) {
            (Ok(returned), Ok(header), Ok(claims)) => {
                // Judged on the JSON as sent and on the claims the proxy hands on (duplicates: the last).
                for judged in [&claims, returned] {
                    if let Some(why) = refusal(input.signer, &header, judged, config, now, 2) {
                        panic!("accepted though {why}:\nheader {header_text}\nclaims {claims_text}\nconfig {config:?}");
                    }
                }
            }
            (Ok(_), _, _) => panic!("accepted a token whose header or claims are not JSON:\n{header_text}\n{claims_text}"),
            (Err(e), Ok(header), Ok(claims)) if chosen => {
                if refusal(input.signer, &header, &claims, config, now, 0).is_none() {
                    panic!("refused ({e}) a valid token:\nheader {header_text}\nclaims {claims_text}\nconfig {config:?}");
                }
            }
            (Err(_), _, _) => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((b'~', rest)) => signed(rest),
        _ => raw(&String::from_utf8_lossy(data)),
    }
});
