//! Inputs the fuzz targets (fuzz/, scripts/fuzz.sh) found, as regression tests. Each input is also in
//! fuzz/corpus/<target>/.

use serde_json::json;
use tollgate_proxy::client::HttpClient;
use tollgate_proxy::config::{Config, Environment};
use tollgate_proxy::jwt::{AuthError, Verifier};

const ISSUER: &str = "http://keycloak.flame.svc:8080/realms/flame";

fn verifier() -> Verifier {
    let yaml = format!(
        "ingress: {{ upstream: 'http://127.0.0.1:8000', jwksUrl: 'http://127.0.0.1:9/certs', issuer: '{ISSUER}', \
         audiences: [flame-analysis], algorithms: [RS256], jwksRefetchInterval: 60m }}\n"
    );
    let ingress = Config::load(&yaml, &Environment::default()).unwrap().ingress.unwrap();
    let jwk: serde_json::Value = serde_json::from_str(include_str!("keys/rsa-public.jwk.json")).unwrap();
    Verifier::with_jwks(ingress, HttpClient::new(None).unwrap(), &json!({ "keys": [jwk] }))
}

fn token(iss: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("keys/rsa-private.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let claims = json!({"iss": iss, "aud": "flame-analysis", "exp": jsonwebtoken::get_current_timestamp() + 600});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// fuzz target `jwt` (corpus: regression-iss-array): jsonwebtoken accepts an `iss` array that contains the
/// configured issuer; RFC 7519 section 4.1.1 makes `iss` a single string.
#[tokio::test]
async fn an_array_of_issuers_is_not_the_issuer() {
    let verifier = verifier();
    assert!(verifier.verify(&token(json!(ISSUER))).await.is_ok(), "the same token with iss as a string passes");
    for iss in [json!([ISSUER, "http://evil.example"]), json!([ISSUER])] {
        assert_eq!(verifier.verify(&token(iss.clone())).await, Err(AuthError::Issuer), "iss {iss}");
    }
    assert_eq!(verifier.verify(&token(json!({ "iss": ISSUER }))).await, Err(AuthError::MissingClaim("iss".into())), "not a string at all");
}

/// fuzz target `proxy_config` (corpus: regression-empty-top-level-key): `? >` is a map with an empty key,
/// whose error had an empty path.
#[test]
fn an_empty_top_level_key_is_an_error_of_the_file() {
    let errors = Config::load("? >", &Environment::default()).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].field, "<file>");
    assert!(errors.0[0].message.starts_with("unknown field ``"), "{}", errors.0[0].message);
}

fn token_with(claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("keys/rsa-private.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// fuzz target `jwt` (corpus: regression-nbf-null): claims with a fractional `exp` and `"nbf": null` were
/// refused as "malformed token" while the target's oracle read `null` as no `nbf`. A fractional NumericDate
/// is valid (RFC 7519 section 2) and accepted; `null` is no NumericDate, so the token is refused, now
/// saying which claim (proxy/README.md, the ingress), and the oracle agrees.
#[tokio::test]
async fn a_fractional_numeric_date_is_one_and_null_is_none() {
    let verifier = verifier();
    let now = jsonwebtoken::get_current_timestamp() as f64;
    let claims = |exp: serde_json::Value, nbf: Option<serde_json::Value>| {
        let mut claims =
            json!({"sub": "fuzz", "iss": ISSUER, "aud": ["another-service", "flame-analysis"], "exp": exp, "azp": "pod-orchestrator"});
        if let Some(nbf) = nbf {
            claims["nbf"] = nbf;
        }
        claims
    };
    assert!(verifier.verify(&token_with(claims(json!(now + 600.25), None))).await.is_ok(), "a fractional exp");
    assert!(verifier.verify(&token_with(claims(json!(now + 600.25), Some(json!(now - 60.5))))).await.is_ok(), "a fractional nbf");
    assert_eq!(
        verifier.verify(&token_with(claims(json!(now - 600.25), None))).await,
        Err(AuthError::Expired),
        "a fractional exp that passed"
    );
    for nbf in [json!(null), json!("0"), json!(-1), json!(true)] {
        let refused = verifier.verify(&token_with(claims(json!(now + 600.25), Some(nbf.clone())))).await;
        assert_eq!(refused, Err(AuthError::ClaimFormat("nbf".into())), "nbf {nbf}");
    }
    assert_eq!(AuthError::ClaimFormat("nbf".into()).to_string(), "claim nbf is not a NumericDate");
    for exp in [json!(null), json!("4102444800"), json!(-5)] {
        let refused = verifier.verify(&token_with(claims(exp.clone(), None))).await;
        // jsonwebtoken checks the required claims first: an `exp` that is no NumericDate counts as none.
        assert_eq!(refused, Err(AuthError::MissingClaim("exp".into())), "exp {exp}");
    }
}
