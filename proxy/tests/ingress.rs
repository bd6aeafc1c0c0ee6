//! The ingress listener against a local OIDC issuer (JWKS with real RSA and EC keys) and a local app.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use common::{Proxy, Upstream, raw};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const ISSUER: &str = "http://keycloak.test/realms/flame";

struct Issuer {
    addr: SocketAddr,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    /// The JWKS endpoint's status: 200 serves the keys, anything else an error.
    status: Arc<AtomicU16>,
    rsa: EncodingKey,
    ec: EncodingKey,
    ec_jwk: Value,
}

impl Issuer {
    async fn start() -> Issuer {
        let rsa_jwk: Value = serde_json::from_str(include_str!("keys/rsa-public.jwk.json")).unwrap();
        let rsa = EncodingKey::from_rsa_pem(include_bytes!("keys/rsa-private.pem")).unwrap();
        let ec_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ec = EncodingKey::from_ec_pem(ec_key.serialize_pem().as_bytes()).unwrap();
        let point = ec_key.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let ec_jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "sig", "x": b64(&point[1..33]), "y": b64(&point[33..65])});
        let jwks = Arc::new(Mutex::new(
            json!({"keys": [rsa_jwk, {"kty": "oct", "kid": "hmac", "k": b64(b"a shared secret that is not a public key")}]}),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (served, counter, answer) = (jwks.clone(), fetches.clone(), status.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (served, counter, answer) = (served.clone(), counter.clone(), answer.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_request| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let code = answer.load(Ordering::SeqCst);
                        let body = if code == 200 { served.lock().unwrap().to_string() } else { "upstream connect error".to_owned() };
                        let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
        Issuer { addr, jwks, fetches, status, rsa, ec, ec_jwk }
    }

    fn config(&self, app: &Upstream) -> String {
        self.config_for(&app.url())
    }

    fn config_for(&self, app_url: &str) -> String {
        format!(
            "ingress:\n  upstream: '{}'\n  jwksUrl: 'http://{}/realms/flame/protocol/openid-connect/certs'\n  issuer: '{ISSUER}'\n  audiences: [flame-analysis]\n  algorithms: [RS256, ES256]\n  allowedClients: [message-broker, pod-orchestrator]\n  claimHeaders: {{ azp: X-Tollgate-Client }}\n  jwksRefetchInterval: 1s\n  leeway: 5s\n",
            app_url, self.addr
        )
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": "flame-analysis", "azp": "message-broker", "sub": "svc", "exp": now() + 300, "iat": now()})
}

fn sign(key: &EncodingKey, alg: Algorithm, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    encode(&header, claims, key).unwrap()
}

async fn call(proxy: &Proxy, token: Option<&str>, extra: &str) -> common::RawResponse {
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    raw(
        proxy.ingress,
        format!("POST /analysis/run?x=1 HTTP/1.1\r\nhost: pod\r\n{auth}{extra}content-length: 2\r\nconnection: close\r\n\r\nok").as_bytes(),
    )
    .await
}

async fn ready(proxy: &Proxy) {
    for _ in 0..200 {
        if raw(proxy.admin, b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.status == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("proxy never became ready:\n{}", proxy.logs());
}

#[tokio::test]
async fn valid_tokens_pass_with_verified_claims_and_without_the_token() {
    let (issuer, app) = (Issuer::start().await, Upstream::start().await);
    issuer.jwks.lock().unwrap()["keys"].as_array_mut().unwrap().push(issuer.ec_jwk.clone());
    let proxy = Proxy::start(&issuer.config(&app), &[]).await;
    ready(&proxy).await;
    let rsa_token = sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &claims());
    let response = call(&proxy, Some(&rsa_token), "x-tollgate-client: spoofed\r\n").await;
    assert_eq!(response.status, 200, "{response:?}\n{}", proxy.logs());
    let ec_token = sign(&issuer.ec, Algorithm::ES256, "ec-1", &claims());
    assert_eq!(call(&proxy, Some(&ec_token), "").await.status, 200);
    let seen = app.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].target, "/analysis/run?x=1");
    assert_eq!(seen[0].header("authorization"), None, "the token is stripped");
    assert_eq!(seen[0].header("x-tollgate-client"), Some("message-broker"), "claim header from the token, not the caller");
    assert_eq!(&seen[0].body[..], b"ok");
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_challenge_and_never_reach_the_app() {
    let (issuer, app) = (Issuer::start().await, Upstream::start().await);
    let proxy = Proxy::start(&issuer.config(&app), &[]).await;
    ready(&proxy).await;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims();
        edit(&mut c);
        sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &c)
    };
    // HS256 "signed" with the issuer's RSA public key: the classic algorithm confusion.
    let confused = sign(&EncodingKey::from_secret(include_bytes!("keys/rsa-public.pem")), Algorithm::HS256, "rsa-1", &claims());
    // HS256 with the oct key the JWKS (wrongly) publishes.
    let oct = sign(&EncodingKey::from_secret(b"a shared secret that is not a public key"), Algorithm::HS256, "hmac", &claims());
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#), b64(claims().to_string().as_bytes()));
    let rs_with_oct_kid = sign(&issuer.rsa, Algorithm::RS256, "hmac", &claims());
    let other_key = sign(&issuer.ec, Algorithm::ES256, "rsa-1", &claims());
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "no bearer token"),
        ("garbage", Some("not.a.jwt".into()), "malformed token"),
        ("hs256 with the public key", Some(confused), "algorithm HS256 is not accepted"),
        ("hs256 with an oct jwk", Some(oct), "algorithm HS256 is not accepted"),
        ("alg none", Some(none), "malformed token"),
        ("oct key for RS256", Some(rs_with_oct_kid), "unknown key id"),
        ("EC signature on the RSA kid", Some(other_key), "algorithm ES256 does not fit key rsa-1"),
        ("wrong issuer", Some(with(&|c| c["iss"] = json!("http://evil/realms/flame"))), "wrong issuer"),
        ("wrong audience", Some(with(&|c| c["aud"] = json!("someone-else"))), "wrong audience"),
        (
            "no audience",
            Some(with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            })),
            "missing required claim aud",
        ),
        (
            "no exp",
            Some(with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            "missing required claim exp",
        ),
        ("expired beyond leeway", Some(with(&|c| c["exp"] = json!(now() - 60))), "token expired"),
        ("nbf in the future", Some(with(&|c| c["nbf"] = json!(now() + 60))), "token not yet valid"),
        ("client not allowed", Some(with(&|c| c["azp"] = json!("some-other-client"))), "client is not allowed"),
        ("unknown kid", Some(sign(&issuer.rsa, Algorithm::RS256, "rotated-away", &claims())), "unknown key id"),
    ];
    for (name, token, reason) in cases {
        let response = call(&proxy, token.as_deref(), "").await;
        assert_eq!(response.status, 401, "{name}: {response:?}");
        let challenge = response
            .head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
            .unwrap_or_else(|| panic!("{name}: no challenge"));
        assert!(challenge.contains("Bearer realm=\"tollgate\""), "{name}: {challenge}");
        assert_eq!(response.json()["error"], reason, "{name}");
    }
    // A second, unverified Authorization header is not smuggled along with a good one.
    let good = sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &claims());
    let doubled = call(&proxy, Some(&good), "authorization: Bearer forged\r\n").await;
    assert_eq!(doubled.status, 401, "{doubled:?}");
    // An encryption key (use: enc) is not a signature key.
    let mut enc = issuer.ec_jwk.clone();
    enc["use"] = json!("enc");
    enc["kid"] = json!("ec-enc");
    issuer.jwks.lock().unwrap()["keys"].as_array_mut().unwrap().push(enc);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let with_enc_key = sign(&issuer.ec, Algorithm::ES256, "ec-enc", &claims());
    assert_eq!(call(&proxy, Some(&with_enc_key), "").await.json()["error"], "unknown key id");
    // Within the leeway is fine.
    let slightly_expired = with(&|c| c["exp"] = json!(now() - 2));
    assert_eq!(call(&proxy, Some(&slightly_expired), "").await.status, 200);
    assert_eq!(app.requests().len(), 1, "only the valid call reached the app");
}

#[tokio::test]
async fn unknown_kids_refetch_the_jwks_at_most_once_per_interval_and_rotation_works() {
    let (issuer, app) = (Issuer::start().await, Upstream::start().await);
    let proxy = Proxy::start(&issuer.config(&app), &[]).await;
    ready(&proxy).await;
    let ec_token = sign(&issuer.ec, Algorithm::ES256, "ec-1", &claims());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = issuer.fetches.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(call(&proxy, Some(&ec_token), "").await.status, 401);
    }
    let after = issuer.fetches.load(Ordering::SeqCst);
    assert_eq!(after - before, 1, "20 unknown-kid calls within the interval: one refetch");

    // The issuer rotates in the EC key; after the interval the next unknown kid picks it up.
    issuer.jwks.lock().unwrap()["keys"].as_array_mut().unwrap().push(issuer.ec_jwk.clone());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call(&proxy, Some(&ec_token), "").await.status, 200, "{}", proxy.logs());
}

/// Issue 10, item 3, on the ingress: no route can allow percent-encoded non-ASCII here.
#[tokio::test]
async fn percent_encoded_non_ascii_paths_never_reach_the_app() {
    let (issuer, app) = (Issuer::start().await, Upstream::start().await);
    let proxy = Proxy::start(&issuer.config(&app), &[]).await;
    ready(&proxy).await;
    let token = sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &claims());
    for target in ["/analysis/%c0%ae%c0%ae/admin", "/analysis/M%C3%BCller"] {
        let request = format!("GET {target} HTTP/1.1\r\nhost: pod\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n");
        let response = raw(proxy.ingress, request.as_bytes()).await;
        assert_eq!(response.status, 400, "{target}: {response:?}");
        assert_eq!(response.json()["decision"], "bad-request", "{target}");
    }
    assert!(app.requests().is_empty(), "{:?}", app.requests());
}

/// Issue 10, item 4, on the ingress: a valid token does not make up for a missing or empty Host.
#[tokio::test]
async fn requests_without_a_valid_host_are_400_even_with_a_valid_token() {
    let (issuer, app) = (Issuer::start().await, Upstream::start().await);
    let proxy = Proxy::start(&issuer.config(&app), &[]).await;
    ready(&proxy).await;
    let token = sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &claims());
    for host in [None, Some(""), Some("a b")] {
        let host = host.map(|h| format!("host: {h}\r\n")).unwrap_or_default();
        let request = format!("GET /analysis/run HTTP/1.1\r\n{host}authorization: Bearer {token}\r\nconnection: close\r\n\r\n");
        let response = raw(proxy.ingress, request.as_bytes()).await;
        assert_eq!(response.status, 400, "{host:?}: {response:?}");
        assert_eq!(response.json()["decision"], "bad-request", "{host:?}");
    }
    assert!(app.requests().is_empty(), "{:?}", app.requests());
    let fine = format!("GET /analysis/run HTTP/1.1\r\nhost: 10.88.0.7:15006\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n");
    assert_eq!(raw(proxy.ingress, fine.as_bytes()).await.status, 200);
}

/// Issue 10, item 5: RFC 7515 section 4.1.11: a token whose `crit` names extensions the recipient does not
/// understand must be rejected, and the proxy understands none (`b64: false`, RFC 7797, changes what is signed).
#[tokio::test]
async fn tokens_with_critical_header_parameters_are_refused() {
    let (issuer, app) = (Issuer::start().await, Upstream::start().await);
    let proxy = Proxy::start(&issuer.config(&app), &[]).await;
    ready(&proxy).await;
    let cases: [(&[&str], &str); 3] = [
        (&["b64"], "critical header parameters not understood: b64"),
        (&["exp", "urn:example:policy"], "critical header parameters not understood: exp, urn:example:policy"),
        (&[], "critical header parameters not understood: (an empty list)"),
    ];
    for (crit, reason) in cases {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        header.crit = Some(crit.iter().map(|c| (*c).to_owned()).collect());
        if crit.contains(&"b64") {
            header.extras.insert("b64", false);
        }
        let token = encode(&header, &claims(), &issuer.rsa).unwrap();
        let response = call(&proxy, Some(&token), "").await;
        assert_eq!(response.status, 401, "{crit:?}: {response:?}");
        assert!(
            response.head.to_ascii_lowercase().contains("www-authenticate: bearer realm=\"tollgate\", error=\"invalid_token\""),
            "{response:?}"
        );
        assert_eq!(response.json()["error"], reason, "{crit:?}");
    }
    assert!(app.requests().is_empty(), "{:?}", app.requests());
}

fn header_value<'a>(response: &'a common::RawResponse, name: &str) -> Option<&'a str> {
    response.head.lines().find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

/// Issue 10, item 8 (a): while the issuer's JWKS cannot be loaded, a caller with a valid token did nothing
/// wrong: 503 with Retry-After, not 401 "unknown key id"; and the proxy recovers by itself.
#[tokio::test]
async fn while_the_jwks_cannot_be_loaded_valid_tokens_get_503_with_retry_after() {
    let (issuer, app) = (Issuer::start().await, Upstream::start().await);
    issuer.status.store(503, Ordering::SeqCst);
    let proxy = Proxy::start(&issuer.config(&app), &[]).await;
    let token = sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &claims());
    for attempt in 0..2 {
        let response = call(&proxy, Some(&token), "").await;
        assert_eq!(response.status, 503, "attempt {attempt}: {response:?}");
        let retry_after: u64 = header_value(&response, "retry-after").expect("Retry-After").parse().expect("seconds");
        assert!((1..=30).contains(&retry_after), "{response:?}");
        assert_eq!(header_value(&response, "www-authenticate"), None, "not the caller's fault: {response:?}");
        let body = response.json();
        assert_eq!(body["decision"], "keys-unavailable");
        assert!(body["error"].as_str().unwrap().starts_with("keys unavailable"), "{body}");
    }
    assert!(app.requests().is_empty());

    issuer.status.store(200, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while call(&proxy, Some(&token), "").await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "no recovery:\n{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unknown = sign(&issuer.rsa, Algorithm::RS256, "rotated-away", &claims());
    assert_eq!(call(&proxy, Some(&unknown), "").await.json()["error"], "unknown key id", "the issuer answers: the kid is unknown");

    // Down again: the keys in hand still verify; a kid not in hand cannot be told apart from a new one.
    issuer.status.store(503, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call(&proxy, Some(&token), "").await.status, 200);
    assert_eq!(call(&proxy, Some(&unknown), "").await.status, 503);
}

/// Issue 10, item 8 (c), on the ingress: fragments and framing as the README says (pingora's rules only).
#[tokio::test]
async fn fragments_and_framing_on_the_ingress_are_as_documented() {
    let (issuer, app) = (Issuer::start().await, Upstream::start().await);
    let proxy = Proxy::start(&issuer.config(&app), &[]).await;
    ready(&proxy).await;
    let token = sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &claims());
    let send = |head: &str, rest: &str| format!("{head}\r\nhost: pod\r\nauthorization: Bearer {token}\r\n{rest}");
    let fragment = send("GET /analysis/run#/../../admin HTTP/1.1", "connection: close\r\n\r\n");
    assert_eq!(raw(proxy.ingress, fragment.as_bytes()).await.status, 200);
    let cl_te = send(
        "POST /analysis/run HTTP/1.1",
        "content-length: 100\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: pod\r\n\r\n",
    );
    let response = raw(proxy.ingress, cl_te.as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(response.head.to_ascii_lowercase().contains("connection: close"), "{response:?}");
    // Framing the app could read differently from the proxy is refused, as on the egress (RFC 9110 §8.6):
    // conflicting, repeated (even equal, or equal as numbers) or listed Content-Lengths, and any
    // Transfer-Encoding but one chunked.
    for refused in [
        send("POST /analysis/run HTTP/1.1", "content-length: 3\r\ncontent-length: 4\r\n\r\nabcd"),
        send("POST /analysis/run HTTP/1.1", "content-length: 3\r\ncontent-length: 3\r\n\r\nabc"),
        send("POST /analysis/run HTTP/1.1", "content-length: 3\r\ncontent-length: 03\r\n\r\nabc"),
        send("POST /analysis/run HTTP/1.1", "content-length: 3, 3\r\n\r\nabc"),
        send("POST /analysis/run HTTP/1.1", "content-length: +3\r\n\r\nabc"),
        send("POST /analysis/run HTTP/1.1", "transfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        send("POST /analysis/run HTTP/1.1", "transfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        send("POST /analysis/run HTTP/1.1", "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
        send("POST /analysis/run HTTP/1.0", "transfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
    ] {
        let response = raw(proxy.ingress, refused.as_bytes()).await;
        assert_eq!(response.status, 400, "{refused:?}: {response:?}");
    }
    let seen = app.requests();
    let summary: Vec<(&str, &str, &[u8])> = seen.iter().map(|r| (r.method.as_str(), r.target.as_str(), &r.body[..])).collect();
    assert_eq!(summary, [("GET", "/analysis/run", &b""[..]), ("POST", "/analysis/run", b"abc")], "nothing refused reached the app");
    assert_eq!((seen[1].header("transfer-encoding"), seen[1].header("content-length")), (Some("chunked"), None));
}

#[tokio::test]
async fn method_overrides_and_client_identity_headers_never_reach_an_upstream_or_the_app() {
    let (issuer, app, upstream) = (Issuer::start().await, Upstream::start().await, Upstream::start().await);
    let config =
        format!("{}routes:\n- {{ name: hub, prefix: /hub, upstream: '{}', methods: [GET] }}\n", issuer.config(&app), upstream.url());
    let proxy = Proxy::start(&config, &[]).await;
    ready(&proxy).await;
    let token = sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &claims());
    let spoofed = [
        "x-http-method",
        "x-http-method-override",
        "x-method-override",
        "true-client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "x-host",
        "x-forwarded-host",
        "x-real-ip",
    ];
    let headers: String = spoofed.iter().map(|h| format!("{h}: DELETE\r\n")).collect();
    let egress = format!("GET /hub/x HTTP/1.1\r\nhost: x\r\n{headers}connection: close\r\n\r\n");
    assert_eq!(raw(proxy.egress, egress.as_bytes()).await.status, 200);
    let ingress = format!("GET /analysis/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n{headers}connection: close\r\n\r\n");
    assert_eq!(raw(proxy.ingress, ingress.as_bytes()).await.status, 200);
    for seen in [upstream.requests(), app.requests()] {
        let r = &seen[0];
        assert_eq!(r.method, "GET");
        for name in spoofed {
            assert_eq!(r.header(name), None, "{name} passed: {r:?}");
        }
    }
}

#[tokio::test]
async fn an_app_failing_mid_body_reaches_the_caller_truncated_never_complete_looking() {
    let issuer = Issuer::start().await;
    for fault in [common::Fault::ChunkedThenClose, common::Fault::ShortThenClose] {
        let app = common::faulty_upstream(fault).await;
        let proxy = Proxy::start(&issuer.config_for(&format!("http://{app}")), &[]).await;
        ready(&proxy).await;
        let token = sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &claims());
        let request = format!("GET /analysis/result HTTP/1.1\r\nhost: pod\r\nauthorization: Bearer {token}\r\n\r\n");
        let (bytes, _) = common::exchange(proxy.ingress, &request).await;
        common::assert_truncated(&bytes, "ingress");
        let audit = proxy.audit(1).await;
        assert_eq!(audit[0]["decision"], "upstream-aborted", "{audit:?}");
    }
}

#[tokio::test]
async fn the_ingress_refuses_upgrades_and_never_relays_an_unasked_101() {
    let issuer = Issuer::start().await;
    // The app switches protocols whatever it is asked.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let forwarded = Arc::new(AtomicUsize::new(0));
    let count = forwarded.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let _ = conn.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n").await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let proxy = Proxy::start(&issuer.config_for(&format!("http://{app}")), &[]).await;
    ready(&proxy).await;
    let token = sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &claims());
    let asked = raw(
        proxy.ingress,
        format!(
            "GET /analysis/ws HTTP/1.1\r\nhost: pod\r\nauthorization: Bearer {token}\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(asked.status, 403, "{asked:?}");
    assert_eq!(asked.json()["decision"], "upgrade-refused");
    assert_eq!(forwarded.load(Ordering::SeqCst), 0, "nothing was forwarded");
    let unasked = raw(
        proxy.ingress,
        format!("GET /analysis/x HTTP/1.1\r\nhost: pod\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(unasked.status, 502, "{unasked:?}");
}

#[tokio::test]
async fn ingress_audit_lines_carry_the_request_id_the_app_sees_and_connect_is_refused_on_the_record() {
    let (issuer, app) = (Issuer::start().await, Upstream::start().await);
    let proxy = Proxy::start(&issuer.config(&app), &[]).await;
    ready(&proxy).await;
    let token = sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &claims());
    assert_eq!(call(&proxy, Some(&token), "x-request-id: req-7\r\n").await.status, 200);
    assert_eq!(call(&proxy, Some(&token), "").await.status, 200);
    let connect = raw(proxy.ingress, b"CONNECT example.org:443 HTTP/1.1\r\nhost: example.org:443\r\n\r\n").await;
    assert_eq!(connect.status, 405, "{connect:?}");
    let audit = proxy.audit(3).await;
    assert_eq!(audit.len(), 3, "{audit:?}");
    assert_eq!(audit[0]["request_id"], "req-7");
    let generated = audit[1]["request_id"].as_str().unwrap_or_default().to_owned();
    assert!(generated.starts_with("tg-"), "{}", audit[1]);
    let seen = app.requests();
    assert_eq!(seen[0].header("x-request-id"), Some("req-7"));
    assert_eq!(seen[1].header("x-request-id"), Some(generated.as_str()), "the app sees the id the audit line has");
    assert_eq!((audit[2]["status"].as_u64(), audit[2]["decision"].as_str()), (Some(405), Some("connect-refused")));
    assert_eq!(seen.len(), 2, "CONNECT reached nothing");
}

#[tokio::test]
async fn a_key_rotation_under_traffic_admits_the_new_key_drops_the_old_and_answers_every_call_clearly() {
    let (issuer, app) = (Issuer::start().await, Upstream::start().await);
    let proxy = Arc::new(Proxy::start(&issuer.config(&app), &[]).await);
    ready(&proxy).await;
    let old = sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &claims());
    let new = sign(&issuer.ec, Algorithm::ES256, "ec-1", &claims());
    assert_eq!(call(&proxy, Some(&old), "").await.status, 200);

    // Traffic with both tokens throughout, 8 callers at a time.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|i| {
            let (proxy, stop) = (proxy.clone(), stop.clone());
            let token = if i % 2 == 0 { old.clone() } else { new.clone() };
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    statuses.push(call(&proxy, Some(&token), "").await.status);
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The issuer rotates: the EC key appears, the RSA key is gone.
    *issuer.jwks.lock().unwrap() = json!({"keys": [issuer.ec_jwk.clone()]});
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while call(&proxy, Some(&new), "").await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "the new key was never admitted:\n{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for caller in callers {
        all.extend(caller.await.unwrap());
    }
    assert!(all.iter().all(|s| *s == 200 || *s == 401), "only admitted or a clear 401: {all:?}");
    // Once the new set is in, the old key no longer opens anything.
    let refused = call(&proxy, Some(&old), "").await;
    assert_eq!(refused.status, 401, "{refused:?}");
    // Exactly the admitted calls reached the app: the callers' 200s, the first call with the old key and the
    // call that found the new key admitted.
    let admitted = all.iter().filter(|s| **s == 200).count() + 2;
    let seen = app.requests();
    assert_eq!(seen.len(), admitted, "only admitted calls reach the app");
    assert!(seen.iter().all(|r| r.header("authorization").is_none()), "the token never reaches the app");
}

// ---- Issue 10, item 6: connections and request heads are bounded ----

/// The proxy's resident memory, in KiB.
fn rss_kib(proxy: &Proxy) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The value of one sample of the proxy's metrics (0 when absent).
async fn sample(proxy: &Proxy, name_and_labels: &[&str]) -> f64 {
    let metrics = raw(proxy.admin, b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.body;
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| name_and_labels.iter().all(|part| l.contains(part)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_for_sample(proxy: &Proxy, name_and_labels: &[&str], value: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sample(proxy, name_and_labels).await != value {
        assert!(std::time::Instant::now() < deadline, "{name_and_labels:?} never reached {value}:\n{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads one response with a Content-Length body off a kept-alive connection: (status, body).
async fn read_response(conn: &mut tokio::net::TcpStream) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if bytes.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]).into_owned());
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await.expect("a response in time").unwrap();
        assert!(n > 0, "closed mid-response: {:?}", String::from_utf8_lossy(&bytes));
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// A ready proxy with an ingress to `app`, a route `/storage` and the `connections` limits given (YAML flow
/// mapping content), and a valid token for its ingress.
struct Limited {
    _issuer: Issuer,
    app: Upstream,
    _storage: Upstream,
    proxy: Proxy,
    token: String,
}

impl Limited {
    async fn start(connections: &str) -> Limited {
        let (issuer, app, storage) = (Issuer::start().await, Upstream::start().await, Upstream::start().await);
        let routes = format!("routes:\n- {{ name: storage, prefix: /storage, upstream: '{}' }}\n", storage.url());
        let config = format!("{}{routes}connections: {{ {connections} }}\n", issuer.config(&app));
        let proxy = Proxy::start(&config, &[]).await;
        ready(&proxy).await;
        let token = sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &claims());
        Limited { _issuer: issuer, app, _storage: storage, proxy, token }
    }
}

/// Sends `line` every `every` until the proxy answers and closes (or 15 s pass): what it answered.
async fn drip(conn: &mut tokio::net::TcpStream, line: &[u8], every: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut answer = Vec::new();
    let mut ticks = tokio::time::interval(every);
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            tokio::select! {
                read = conn.read_buf(&mut answer) => if !matches!(read, Ok(n) if n > 0) { break },
                _ = ticks.tick() => if answer.is_empty() { let _ = conn.write_all(line).await; },
            }
        }
    })
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// 200 connections from four addresses send request heads that never end: half a header line every
/// 250 ms, half 4 KiB of headers every 100 ms. pingora alone keeps such connections for as long as a line
/// comes each minute, and lets each head grow to 1 MiB. Each is cut off — 408 once the head deadline has
/// passed, 431 once the head is over its cap — while the app's egress, the kubelet's probes and a caller
/// with a valid token are served all along, and the proxy's memory stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_endless_request_heads_are_cut_off_while_everyone_else_is_served() {
    use tokio::io::AsyncWriteExt;
    let Limited { app, proxy, token, .. } = Limited::start("headTimeout: 3s").await;
    let rss_before = rss_kib(&proxy);
    let ingress = proxy.ingress;
    let started = std::time::Instant::now();
    let attackers: Vec<_> = (0..200u8)
        .map(|i| {
            tokio::spawn(async move {
                let source = std::net::IpAddr::from([127, 0, 0, 2 + i % 4]);
                let mut conn = common::connect_from(Some(source), ingress).await.unwrap();
                conn.write_all(b"GET /analysis/run HTTP/1.1\r\nhost: pod\r\n").await.unwrap();
                let (line, every) = if i % 2 == 0 {
                    (b"x-drip: a\r\n".to_vec(), Duration::from_millis(250))
                } else {
                    (format!("x-bulk: {}\r\n", "b".repeat(4096)).into_bytes(), Duration::from_millis(100))
                };
                let answer = drip(&mut conn, &line, every).await;
                (i, answer, started.elapsed())
            })
        })
        .collect();

    // While they are at it: the app's egress, the kubelet's probe and a caller with a token.
    let mut peak_rss = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = std::time::Instant::now();
        assert_eq!(proxy.get("/storage/result").await.status, 200, "egress under load:\n{}", proxy.logs());
        assert_eq!(raw(proxy.admin, b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.status, 200);
        assert_eq!(call(&proxy, Some(&token), "").await.status, 200, "ingress under load");
        assert!(t.elapsed() < Duration::from_secs(2), "the three calls took {:?}", t.elapsed());
        peak_rss = peak_rss.max(rss_kib(&proxy));
    }

    for attacker in attackers {
        let (i, answer, took) = attacker.await.unwrap();
        if i % 2 == 0 {
            assert!(answer.starts_with("HTTP/1.1 408 "), "dripper {i}: {answer:?} after {took:?}");
            assert!(answer.contains("\"decision\":\"head-timeout\""), "{answer}");
            assert!((Duration::from_secs(3)..Duration::from_secs(6)).contains(&took), "dripper {i} cut off after {took:?}");
        } else {
            assert!(answer.starts_with("HTTP/1.1 431 "), "bulk sender {i}: {answer:?} after {took:?}");
            assert!(answer.contains("\"decision\":\"head-too-large\""), "{answer}");
            assert!(took < Duration::from_secs(3), "bulk sender {i} cut off after {took:?}");
        }
    }
    // Each refusal is audited and counted; the connections are gone; the app saw only the token holder.
    let audit = proxy.audit(0).await;
    let refused = |decision: &str| audit.iter().filter(|l| l["listener"] == "ingress" && l["decision"] == decision).count();
    assert_eq!((refused("head-timeout"), refused("head-too-large")), (100, 100));
    assert_eq!(sample(&proxy, &["tollgate_proxy_requests_total", "ingress", "head-timeout", "408"]).await, 100.0);
    assert_eq!(sample(&proxy, &["tollgate_proxy_requests_total", "ingress", "head-too-large", "431"]).await, 100.0);
    wait_for_sample(&proxy, &["tollgate_proxy_connections{", "listener=\"ingress\""], 0.0).await;
    assert_eq!(app.requests().len(), 5, "{:?}", app.requests());
    // pingora's own error line for each cut-off read is left out: the audit line says it.
    assert!(!proxy.logs().contains("Fail to proxy"), "{}", proxy.logs());
    // 200 heads of at most 32 KiB: a few MiB at most (pingora alone: up to 1 MiB each, held for minutes).
    assert!(peak_rss < rss_before + 32 * 1024, "resident memory went from {rss_before} KiB to {peak_rss} KiB");
}

/// A listener takes at most `maxPerListener` connections, and ingress and admin at most `maxPerPeer` from
/// one address; the rest get 503 (audited, counted) before a byte is read, other addresses and listeners
/// are unaffected, and a connection that never sends a byte is closed silently at the head deadline,
/// which frees its slot.
#[tokio::test]
async fn connections_over_a_listener_or_address_cap_get_503_and_idle_ones_make_room() {
    use tokio::io::AsyncReadExt;
    let Limited { proxy, token, .. } = Limited::start("headTimeout: 4s, maxPerListener: 6, maxPerPeer: 4").await;
    let request = format!("GET /analysis/x HTTP/1.1\r\nhost: pod\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n");
    let from = |last: u8| Some(std::net::IpAddr::from([127, 0, 0, last]));
    let connections = ["tollgate_proxy_connections{", "listener=\"ingress\""];

    let opened = std::time::Instant::now();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(common::connect_from(from(2), proxy.ingress).await.unwrap());
    }
    wait_for_sample(&proxy, &connections, 4.0).await;
    let refused = common::raw_from(from(2), proxy.ingress, request.as_bytes()).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.json()["decision"], "too-many-connections");
    assert!(refused.json()["error"].as_str().unwrap().contains("127.0.0.2 has 4 open connections"), "{refused:?}");
    assert!(refused.head.to_ascii_lowercase().contains("retry-after: 1"), "{}", refused.head);
    assert_eq!(common::raw_from(from(3), proxy.ingress, request.as_bytes()).await.status, 200, "another address is served");

    for _ in 0..2 {
        held.push(common::connect_from(from(3), proxy.ingress).await.unwrap());
    }
    wait_for_sample(&proxy, &connections, 6.0).await;
    let refused = common::raw_from(from(4), proxy.ingress, request.as_bytes()).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.json()["error"].as_str().unwrap().contains("the ingress listener has 6 open connections"), "{refused:?}");
    // Other listeners have their own counts; egress has no cap per address (every peer there is the pod).
    assert_eq!(raw(proxy.admin, b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.status, 200);
    let mut egress_held = Vec::new();
    for _ in 0..5 {
        egress_held.push(tokio::net::TcpStream::connect(proxy.egress).await.unwrap());
    }
    assert_eq!(proxy.get("/storage/x").await.status, 200);
    assert!(opened.elapsed() < Duration::from_secs(3), "the checks above must end before the head deadline");

    // A connection that never sent a byte is closed at the head deadline without an answer.
    let mut idle = held.pop().unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest)).await.expect("closed in time");
    assert!(matches!(read, Ok(0)) && rest.is_empty(), "{read:?} {rest:?}");
    assert!(opened.elapsed() >= Duration::from_secs(4), "closed early, after {:?}", opened.elapsed());
    wait_for_sample(&proxy, &connections, 0.0).await;
    assert_eq!(common::raw_from(from(4), proxy.ingress, request.as_bytes()).await.status, 200, "room again");

    let audit = proxy.audit(0).await;
    let refusals: Vec<_> = audit.iter().filter(|l| l["decision"] == "too-many-connections").collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(refusals.iter().all(|l| l["listener"] == "ingress" && l["status"] == 503));
    assert_eq!(sample(&proxy, &["tollgate_proxy_requests_total", "ingress", "too-many-connections", "503"]).await, 2.0);
    assert!(audit.iter().all(|l| l["decision"] != "head-timeout"), "a connection without a byte is no request");
}

/// The head deadline is for heads only: a kept-alive connection may sit idle past it between requests
/// (pingora's keep-alive timeout governs that), a body may take longer than it (the route's readTimeout
/// does), and the next head on the same connection gets a deadline of its own.
#[tokio::test]
async fn the_head_deadline_spares_idle_keep_alive_connections_and_slow_bodies() {
    use tokio::io::AsyncWriteExt;
    let storage = Upstream::start().await;
    let config = format!(
        "routes:\n- {{ name: storage, prefix: /storage, methods: [GET, POST], upstream: '{}' }}\nconnections: {{ headTimeout: 1s }}\n",
        storage.url()
    );
    let proxy = Proxy::start(&config, &[]).await;
    let mut conn = tokio::net::TcpStream::connect(proxy.egress).await.unwrap();
    conn.write_all(b"GET /storage/a HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut conn).await, (200, "upstream says hi".to_owned()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    conn.write_all(b"POST /storage/upload HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 8\r\n\r\n").await.unwrap();
    for byte in b"12345678" {
        tokio::time::sleep(Duration::from_millis(250)).await;
        conn.write_all(&[*byte]).await.unwrap();
    }
    assert_eq!(read_response(&mut conn).await, (200, "upstream says hi".to_owned()));
    let seen = storage.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(&seen[1].body[..], b"12345678");
    // The third head on the connection drips: its own deadline, counted from its first byte, ends it.
    let started = std::time::Instant::now();
    conn.write_all(b"GET /storage/b HTTP/1.1\r\n").await.unwrap();
    let answer = drip(&mut conn, b"x-drip: a\r\n", Duration::from_millis(200)).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!((Duration::from_secs(1)..Duration::from_secs(3)).contains(&started.elapsed()), "{:?}", started.elapsed());
    assert_eq!(storage.requests().len(), 2);
}

#[tokio::test]
async fn under_a_prefix_tokenless_callers_are_admitted_and_token_bearers_checked_when_configured() {
    let (issuer, app) = (Issuer::start().await, Upstream::start().await);
    // FLAME: the orchestrator and the broker call http://nginx-<DEP>/analysis/... and never send a token.
    let config = issuer.config(&app).replace("ingress:\n", "ingress:\n  prefix: /analysis\n  withoutToken: admit\n");
    let proxy = Proxy::start(&config, &[]).await;
    ready(&proxy).await;
    let send = |request: String| {
        let ingress = proxy.ingress;
        async move { raw(ingress, request.as_bytes()).await }
    };
    let plain = |method: &str, path: &str, extra: &str| {
        format!("{method} {path} HTTP/1.1\r\nhost: nginx-a\r\n{extra}content-length: 2\r\nconnection: close\r\n\r\n{{}}")
    };
    for (path, forwarded) in [
        ("/analysis/healthz", "/healthz"),
        ("/analysis/webhook?x=1", "/webhook?x=1"),
        ("/analysis/token_refresh", "/token_refresh"),
        ("/analysis", "/"),
    ] {
        let response = send(plain("POST", path, "apikey: a-key\r\nx-forwarded-for: 1.2.3.4\r\n")).await;
        assert_eq!(response.status, 200, "{path}: {response:?}\n{}", proxy.logs());
        let r = app.requests().pop().unwrap();
        assert_eq!(r.target, forwarded);
        assert_eq!((r.header("apikey"), r.header("x-forwarded-for")), (None, None), "{r:?}");
    }
    // Outside the prefix, or a lookalike of it: refused, nothing forwarded.
    let before = app.requests().len();
    for path in ["/healthz", "/analysisX/healthz", "/other/analysis/healthz", "/analysis/../healthz"] {
        let status = send(plain("GET", path, "")).await.status;
        assert!(status == 403 || status == 400, "{path}: {status}");
    }
    // A caller that sends a credential must send a valid one: a bad token or a non-bearer Authorization is 401.
    let forged =
        sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &json!({"iss": "http://elsewhere", "aud": "flame-analysis", "exp": now() + 60}));
    for auth in
        [format!("authorization: Bearer {forged}\r\n"), "authorization: Basic eDp5\r\n".to_owned(), "authorization: \r\n".to_owned()]
    {
        let response = send(plain("POST", "/analysis/webhook", &auth)).await;
        assert_eq!(response.status, 401, "{auth}: {response:?}");
    }
    assert_eq!(app.requests().len(), before, "nothing refused reached the app");
    // A valid token is checked and stripped as before, the prefix taken off.
    let token = sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &claims());
    let response = send(plain("POST", "/analysis/partner_status", &format!("authorization: Bearer {token}\r\n"))).await;
    assert_eq!(response.status, 200, "{response:?}");
    let r = app.requests().pop().unwrap();
    assert_eq!((r.target.as_str(), r.header("authorization")), ("/partner_status", None));
    let audit = proxy.audit(10).await;
    assert!(
        audit.iter().any(|l| l["path"] == "/healthz" && l["decision"] == "forwarded" && l["reason"].as_str().unwrap().contains("no token")),
        "{audit:?}"
    );
}

#[tokio::test]
async fn without_withouttoken_a_prefixed_ingress_still_needs_a_token() {
    let (issuer, app) = (Issuer::start().await, Upstream::start().await);
    let config = issuer.config(&app).replace("ingress:\n", "ingress:\n  prefix: /analysis\n");
    let proxy = Proxy::start(&config, &[]).await;
    ready(&proxy).await;
    let response = raw(proxy.ingress, b"GET /analysis/healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert_eq!(response.status, 401);
    assert!(app.requests().is_empty());
}

#[tokio::test]
async fn pipelined_calls_into_the_app_are_answered_in_order() {
    let (issuer, app) = (Issuer::start().await, Upstream::start().await);
    let proxy = Proxy::start(&issuer.config(&app), &[]).await;
    ready(&proxy).await;
    let token = sign(&issuer.rsa, Algorithm::RS256, "rsa-1", &claims());
    let one = |path: &str, last: bool| {
        let close = if last { "connection: close\r\n" } else { "" };
        format!("POST {path} HTTP/1.1\r\nhost: pod\r\nauthorization: Bearer {token}\r\ncontent-length: 2\r\n{close}\r\nok")
    };
    let requests = [one("/analysis/1", false), one("/analysis/2", false), one("/analysis/3", true)].concat();
    let (bytes, _) = common::exchange(proxy.ingress, &requests).await;
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    let targets: Vec<String> = app.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, ["/analysis/1", "/analysis/2", "/analysis/3"]);
}
