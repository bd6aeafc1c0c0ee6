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
    assert_eq!(errors.0[0].path, "<file>");
    assert!(errors.0[0].message.starts_with("unknown field ``"), "{}", errors.0[0].message);
}
