//! tollgate-standins on 127.0.0.1: minted JWTs verify against the served JWKS, client credentials are
//! checked, storage keeps what it was given, every request is one JSON line in the log; and the real
//! tollgate-proxy, configured from `--print-config`, takes an app's request to the hub stand-in with the
//! stand-in's token and admits an ingress call only with a minted JWT.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use tollgate_e2e::workspace_bin;
use tollgate_testkit::{RawResponse, exchange, free_port};

/// One HTTP/1.1 request, `connection: close`, read to the end (status 0 when nothing answered).
fn http(port: u16, method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> RawResponse {
    let mut request = format!("{method} {target} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        request.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    exchange(("127.0.0.1", port), request.as_bytes(), Duration::from_secs(20)).unwrap_or_default()
}

fn listen_args([hub, storage, broker, keycloak]: [u16; 4]) -> Vec<String> {
    [
        ("--listen", "127.0.0.1".to_owned()),
        ("--hub-port", hub.to_string()),
        ("--storage-port", storage.to_string()),
        ("--broker-port", broker.to_string()),
        ("--keycloak-port", keycloak.to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect()
}

/// The stand-ins as a process on 127.0.0.1 with free ports; killed on drop.
struct Standins {
    child: Child,
    dir: tempfile::TempDir,
    hub: u16,
    storage: u16,
    broker: u16,
    keycloak: u16,
}

impl Standins {
    /// `--listen 127.0.0.1` and the four ports.
    fn args(&self) -> Vec<String> {
        listen_args([self.hub, self.storage, self.broker, self.keycloak])
    }

    fn start() -> Standins {
        let dir = tempfile::tempdir().unwrap();
        let [hub, storage, broker, keycloak] = std::array::from_fn(|_| free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate-standins"))
            .args(listen_args([hub, storage, broker, keycloak]))
            .arg("--log")
            .arg(dir.path().join("requests.jsonl"))
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut standins = Standins { child, dir, hub, storage, broker, keycloak };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !standins.stdout().lines().any(|l| l == "ready") {
            assert!(standins.child.try_wait().unwrap().is_none(), "tollgate-standins exited:\n{}", standins.output());
            assert!(Instant::now() < deadline, "tollgate-standins did not start:\n{}", standins.output());
            std::thread::sleep(Duration::from_millis(20));
        }
        standins
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("requests.jsonl")
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    fn output(&self) -> String {
        format!("{}{}", self.stdout(), std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default())
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}/realms/flame", self.keycloak)
    }

    /// Every request logged so far, one JSON value per line.
    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
            .collect()
    }

    fn mint(&self, query: &str, body: &str) -> String {
        let headers: &[(&str, &str)] = if body.is_empty() { &[] } else { &[("content-type", "application/json")] };
        let reply = http(self.keycloak, "POST", &format!("/mint{query}"), headers, body);
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.json()["access_token"].as_str().unwrap().to_owned()
    }

    fn token(&self, form: &str) -> RawResponse {
        let headers = [("content-type", "application/x-www-form-urlencoded")];
        http(self.keycloak, "POST", "/realms/flame/protocol/openid-connect/token", &headers, form)
    }

    /// SIGTERM, and the exit status (within 10 s).
    fn stop(&mut self) -> ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "tollgate-standins did not stop on SIGTERM:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Standins {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Verify `token` with jsonwebtoken against the JWKS the stand-in serves.
fn verify(standins: &Standins, token: &str, audience: &str) -> Result<Value, jsonwebtoken::errors::Error> {
    let certs = http(standins.keycloak, "GET", "/realms/flame/protocol/openid-connect/certs", &[], "");
    assert_eq!(certs.status, 200, "{certs:?}");
    let jwks: JwkSet = serde_json::from_str(&certs.body).unwrap();
    let header = jsonwebtoken::decode_header(token)?;
    assert_eq!(header.alg, Algorithm::ES256);
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("the token's kid is in the JWKS");
    let key = DecodingKey::from_jwk(jwk)?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.set_issuer(&[standins.issuer()]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "nbf", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).map(|data| data.claims)
}

#[test]
fn standins_serve_tokens_keys_storage_and_broker_and_log_every_request() {
    let mut s = Standins::start();
    let issuer = s.issuer();
    assert!(s.stdout().contains(&format!("issuer: {issuer}\n")), "{}", s.stdout());

    // The JWKS: one P-256 signature key, coordinates of 32 bytes.
    let certs = http(s.keycloak, "GET", "/realms/flame/protocol/openid-connect/certs", &[], "").json();
    let keys = certs["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{certs}");
    let jwk = &keys[0];
    for (field, value) in [("kty", "EC"), ("crv", "P-256"), ("alg", "ES256"), ("use", "sig")] {
        assert_eq!(jwk[field], value, "{jwk}");
    }
    for coordinate in ["x", "y"] {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwk[coordinate].as_str().unwrap()).unwrap();
        assert_eq!(bytes.len(), 32, "{coordinate} of {jwk}");
    }
    let discovery = http(s.keycloak, "GET", "/realms/flame/.well-known/openid-configuration", &[], "").json();
    assert_eq!(discovery["issuer"], issuer.as_str());

    // Minted JWTs verify against that JWKS; the parameters come from a JSON body or the query.
    let token = s.mint("", r#"{"client": "message-broker", "audience": "flame-analysis"}"#);
    let claims = verify(&s, &token, "flame-analysis").expect("a minted token verifies");
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["azp"], "message-broker");
    assert_eq!(claims["client_id"], "message-broker");
    assert_eq!(claims["sub"], "service-account-message-broker");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 300);
    assert_eq!(claims["nbf"], claims["iat"]);
    assert!(verify(&s, &token, "another-audience").is_err(), "the audience is checked");
    let token = s.mint("?client=pod-orchestrator&audience=other&expires_in=60", "");
    let claims = verify(&s, &token, "other").unwrap();
    assert_eq!(claims["azp"], "pod-orchestrator");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 60);
    let expired = s.mint("?expires_in=-120", "");
    let error = verify(&s, &expired, "flame-analysis").unwrap_err();
    assert_eq!(*error.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature);
    let typo = http(s.keycloak, "POST", "/mint?aud=x", &[], "");
    assert_eq!(typo.status, 400, "{typo:?}");
    assert!(typo.body.contains("unknown parameter"), "{typo:?}");

    // Client credentials: the configured ones, posted or as Basic; a wrong secret is 401.
    let good = "grant_type=client_credentials&client_id=analysis-client&client_secret=analysis-secret";
    let first = s.token(good);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.json(), json!({"access_token": "standin-token-1", "token_type": "Bearer", "expires_in": 300}));
    let wrong = s.token("grant_type=client_credentials&client_id=analysis-client&client_secret=guess");
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert_eq!(wrong.json()["error"], "invalid_client");
    let basic = base64::engine::general_purpose::STANDARD.encode("analysis-client:analysis-secret");
    let second = http(
        s.keycloak,
        "POST",
        "/realms/flame/protocol/openid-connect/token",
        &[("content-type", "application/x-www-form-urlencoded"), ("authorization", &format!("Basic {basic}"))],
        "grant_type=client_credentials",
    );
    assert_eq!(second.json()["access_token"], "standin-token-2", "{second:?}");
    assert_eq!(s.token("grant_type=password&username=a&password=b").status, 400);

    // Storage keeps bodies under their path, in the three areas only.
    let put = http(s.storage, "PUT", "/final/result.csv", &[("content-type", "text/csv")], "a,b\n1,2\n");
    assert_eq!(put.status, 201, "{put:?}");
    assert_eq!(http(s.storage, "PUT", "/final/result.csv", &[("content-type", "text/csv")], "a,b\n3,4\n").status, 200);
    let got = http(s.storage, "GET", "/final/result.csv", &[], "");
    assert_eq!((got.status, got.body.as_str()), (200, "a,b\n3,4\n"), "{got:?}");
    assert!(got.head.to_ascii_lowercase().contains("content-type: text/csv"), "{got:?}");
    assert_eq!(http(s.storage, "POST", "/intermediate/step-1", &[], "partial").status, 201);
    assert_eq!(http(s.storage, "GET", "/final", &[], "").json(), json!({"objects": ["/final/result.csv"]}));
    assert_eq!(http(s.storage, "GET", "/final/missing", &[], "").status, 404);
    assert_eq!(http(s.storage, "PUT", "/elsewhere/x", &[], "x").status, 404);

    // The broker.
    let posted = http(s.broker, "POST", "/analyses/a1/messages", &[("content-type", "application/json")], r#"{"hello": "world"}"#);
    assert_eq!(posted.status, 201, "{posted:?}");
    assert_eq!(http(s.broker, "GET", "/analyses/a1/messages", &[], "").json(), json!({"messages": [{"hello": "world"}]}));
    let participants = http(s.broker, "GET", "/analyses/a1/participants", &[], "");
    assert_eq!(participants.status, 200);
    assert!(participants.json().as_array().is_some_and(|p| !p.is_empty()), "{participants:?}");
    assert_eq!(http(s.broker, "GET", "/analyses/a1/participants/self", &[], "").json()["nodeId"], "standin-node");
    assert_eq!(http(s.broker, "GET", "/healthz", &[], "").status, 200);
    assert_eq!(http(s.broker, "GET", "/analyses/a1/other", &[], "").status, 404);

    // The hub echoes what it saw.
    let echo = http(s.hub, "GET", "/kong/datastore/p1/fhir/Patient?_count=1", &[("authorization", "Bearer from-the-test")], "");
    assert_eq!(echo.status, 200, "{echo:?}");
    let echo = echo.json();
    assert_eq!(echo["path"], "/kong/datastore/p1/fhir/Patient?_count=1");
    assert_eq!(echo["authorization"], "Bearer from-the-test");

    // Every request is one JSON line, written before its response left.
    let lines = s.lines();
    assert_eq!(lines.len(), 28, "{lines:#?}");
    let hub: Vec<&Value> = lines.iter().filter(|l| l["service"] == "hub").collect();
    assert_eq!(hub.len(), 1);
    assert_eq!(hub[0]["method"], "GET");
    assert_eq!(hub[0]["target"], "/kong/datastore/p1/fhir/Patient?_count=1");
    assert_eq!(hub[0]["path"], "/kong/datastore/p1/fhir/Patient");
    assert_eq!(hub[0]["authorization"], "Bearer from-the-test");
    assert_eq!(hub[0]["status"], 200);
    assert_eq!(hub[0]["headers"], json!(["host", "connection", "authorization"]));
    let stored = lines.iter().find(|l| l["service"] == "storage" && l["method"] == "PUT").unwrap();
    assert_eq!(
        (stored["target"].as_str(), stored["body_length"].as_u64(), stored["body"].as_str()),
        (Some("/final/result.csv"), Some(8), Some("a,b\n1,2\n"))
    );
    assert_eq!(stored["status"], 201);
    let refused = lines.iter().find(|l| l["service"] == "keycloak" && l["status"] == 401).unwrap();
    assert_eq!(refused["body"], "grant_type=client_credentials&client_id=analysis-client&client_secret=guess");
    assert_eq!(refused["authorization"], Value::Null);
    let with_basic = lines.iter().find(|l| l["service"] == "keycloak" && l["authorization"].is_string()).unwrap();
    assert_eq!(with_basic["authorization"], format!("Basic {basic}").as_str());
    assert_eq!(lines.iter().filter(|l| l["service"] == "broker").count(), 6);

    // SIGTERM: a clean stop.
    let status = s.stop();
    assert!(status.success(), "{status}:\n{}", s.output());
    assert!(s.output().contains("stopped"), "{}", s.output());
}

#[test]
fn standins_refuse_a_port_in_use_and_an_unspecified_address() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let [storage, broker, keycloak] = std::array::from_fn(|_| free_port());
    let bin = env!("CARGO_BIN_EXE_tollgate-standins");
    let out = Command::new(bin)
        .args(["--listen", "127.0.0.1", "--hub-port", &port.to_string()])
        .args(["--storage-port", &storage.to_string(), "--broker-port", &broker.to_string(), "--keycloak-port", &keycloak.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("error: hub: port {port} on 127.0.0.1 is already in use")), "{stderr}");
    assert!(stderr.contains("--hub-port"), "{stderr}");

    let out = Command::new(bin).args(["--listen", "0.0.0.0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an address pods can be sent to"));
    let out = Command::new(bin).args(["--hub-port", "18090", "--broker-port", "18090", "--print-config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hub-port and --broker-port are both 18090"));

    let help = Command::new(bin).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--hub-port",
        "--storage-port",
        "--broker-port",
        "--keycloak-port",
        "--log",
        "--client-id",
        "--client-secret",
        "--print-config",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

fn check_config(proxy: &Path, config: &Path) -> std::process::Output {
    Command::new(proxy).arg("check-config").arg(config).env("TOLLGATE_ANALYSIS_ID", "a1").env("TOLLGATE_PROJECT_ID", "p1").output().unwrap()
}

#[test]
fn proxy_configured_by_print_config_uses_the_standin_token_and_checks_minted_jwts() {
    let proxy_bin = workspace_bin("tollgate-proxy");
    let bin = env!("CARGO_BIN_EXE_tollgate-standins");
    let mut s = Standins::start();
    let dir = s.dir.path().to_owned();

    // The config as printed for the cluster (10.88.0.1, the pod's secret files) is valid as it is.
    let printed = Command::new(bin).args(["--listen", "10.88.0.1", "--print-config"]).output().unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let printed = String::from_utf8(printed.stdout).unwrap();
    for expected in [
        "tokenUrl: 'http://10.88.0.1:18083/realms/flame/protocol/openid-connect/token'",
        "upstream: 'http://10.88.0.1:18080/kong/datastore/{project_id}'",
        "issuer: 'http://10.88.0.1:18083/realms/flame'",
        "jwksUrl: 'http://10.88.0.1:18083/realms/flame/protocol/openid-connect/certs'",
        "allowedClients: [message-broker, pod-orchestrator]",
    ] {
        assert!(printed.contains(expected), "{expected} missing from:\n{printed}");
    }
    std::fs::write(dir.join("cluster.yaml"), &printed).unwrap();
    let checked = check_config(&proxy_bin, &dir.join("cluster.yaml"));
    assert!(
        checked.status.success(),
        "check-config: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(String::from_utf8_lossy(&checked.stdout).contains("valid (4 routes)"));

    // The same for these stand-ins on 127.0.0.1, with the hub as the app behind the ingress (it echoes).
    std::fs::write(dir.join("client-id"), "analysis-client\n").unwrap();
    std::fs::write(dir.join("client-secret"), "analysis-secret\n").unwrap();
    let config = Command::new(bin)
        .args(s.args())
        .arg("--print-config")
        .arg("--client-id-file")
        .arg(dir.join("client-id"))
        .arg("--client-secret-file")
        .arg(dir.join("client-secret"))
        .args(["--ingress-upstream", &format!("http://127.0.0.1:{}", s.hub)])
        .output()
        .unwrap();
    assert!(config.status.success(), "{config:?}");
    std::fs::write(dir.join("proxy.yaml"), &config.stdout).unwrap();
    let checked = check_config(&proxy_bin, &dir.join("proxy.yaml"));
    assert!(checked.status.success(), "check-config: {}", String::from_utf8_lossy(&checked.stderr));

    let [egress, ingress, admin] = std::array::from_fn(|_| free_port());
    let mut proxy = Command::new(&proxy_bin)
        .arg("--config")
        .arg(dir.join("proxy.yaml"))
        .env("TOLLGATE_ANALYSIS_ID", "a1")
        .env("TOLLGATE_PROJECT_ID", "p1")
        .env("TOLLGATE_EGRESS_LISTEN", format!("127.0.0.1:{egress}"))
        .env("TOLLGATE_INGRESS_LISTEN", format!("127.0.0.1:{ingress}"))
        .env("TOLLGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("proxy.log")).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let proxy_logs = || std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default();
    let kill_proxy = Kill(&mut proxy);
    // Ready: a token in hand (from the stand-in's token endpoint) and the JWKS loaded.
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(admin, "GET", "/readyz", &[], "").status != 200
        || TcpStream::connect(("127.0.0.1", egress)).is_err()
        || TcpStream::connect(("127.0.0.1", ingress)).is_err()
    {
        assert!(Instant::now() < deadline, "the proxy did not get ready:\n{}\n{}", proxy_logs(), s.output());
        std::thread::sleep(Duration::from_millis(50));
    }

    // Egress: the app's request reaches the hub with the proxy's token, not the app's own credentials.
    let app_headers = [("authorization", "Bearer the-apps-own"), ("cookie", "session=1")];
    let reply = http(egress, "GET", "/hub-adapter/kong/datastore/p1/fhir/Patient?_count=1", &app_headers, "");
    assert_eq!(reply.status, 200, "{reply:?}\n{}", proxy_logs());
    let echo = reply.json();
    assert_eq!(echo["service"], "hub");
    assert_eq!(echo["path"], "/kong/datastore/p1/fhir/Patient?_count=1");
    assert_eq!(echo["authorization"], "Bearer standin-token-1");
    assert!(echo["headers"].get("cookie").is_none(), "{echo}");
    let kong = http(egress, "GET", "/kong/fhir/metadata", &[], "").json();
    assert_eq!((kong["path"].as_str(), kong["authorization"].as_str()), (Some("/fhir/metadata"), Some("Bearer standin-token-1")));
    // Another project's data store and paths outside the allow lists never reach a stand-in.
    let hub_lines = s.lines().iter().filter(|l| l["service"] == "hub").count();
    assert_eq!(http(egress, "GET", "/hub-adapter/kong/datastore/p2/fhir/Patient", &[], "").status, 403);
    assert_eq!(http(egress, "GET", "/storage/elsewhere/x", &[], "").status, 403);
    assert_eq!(http(egress, "GET", "/message-broker/analyses/a2/participants", &[], "").status, 403);
    assert_eq!(s.lines().iter().filter(|l| l["service"] == "hub").count(), hub_lines);

    // Storage and broker through the proxy.
    let put = http(egress, "PUT", "/storage/final/model.bin", &[("content-type", "application/octet-stream")], "weights");
    assert_eq!(put.status, 201, "{put:?}\n{}", proxy_logs());
    let got = http(egress, "GET", "/storage/final/model.bin", &[], "");
    assert_eq!((got.status, got.body.as_str()), (200, "weights"), "{got:?}");
    let posted = http(egress, "POST", "/message-broker/analyses/a1/messages", &[("content-type", "application/json")], r#"{"round": 1}"#);
    assert_eq!(posted.status, 201, "{posted:?}\n{}", proxy_logs());
    assert_eq!(http(egress, "GET", "/message-broker/analyses/a1/participants/self", &[], "").status, 200);
    assert_eq!(http(egress, "GET", "/message-broker/healthz", &[], "").status, 200);

    // Ingress: a minted JWT from an allowed client is admitted (token stripped, client as a header) ...
    let jwt = s.mint("?client=message-broker&audience=flame-analysis", "");
    let auth = format!("Bearer {jwt}");
    let admitted = http(ingress, "POST", "/analysis/run?x=1", &[("authorization", &auth), ("content-type", "application/json")], "{}");
    assert_eq!(admitted.status, 200, "{admitted:?}\n{}", proxy_logs());
    let seen = admitted.json();
    assert_eq!(seen["path"], "/analysis/run?x=1");
    assert_eq!(seen["authorization"], Value::Null, "the token is stripped before the app");
    assert_eq!(seen["headers"]["x-tollgate-client"], "message-broker");
    // ... without one, with another audience or from another client it is not.
    let refused = http(ingress, "POST", "/analysis/run", &[], "{}");
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{refused:?}");
    let other_audience = s.mint("?client=message-broker&audience=someone-else", "");
    assert_eq!(http(ingress, "POST", "/analysis/run", &[("authorization", &format!("Bearer {other_audience}"))], "{}").status, 401);
    let other_client = s.mint("?client=analysis-client", "");
    let refused = http(ingress, "POST", "/analysis/run", &[("authorization", &format!("Bearer {other_client}"))], "{}");
    assert!(matches!(refused.status, 401 | 403), "{refused:?}");

    // The log shows what arrived: one token call (client_secret_post), the JWKS fetch, the hub calls
    // with the stand-in's token, and exactly one ingress call at the hub.
    let lines = s.lines();
    let token_calls: Vec<&Value> = lines.iter().filter(|l| l["path"] == "/realms/flame/protocol/openid-connect/token").collect();
    assert_eq!(token_calls.len(), 1, "{token_calls:#?}");
    assert_eq!(token_calls[0]["status"], 200);
    assert_eq!(token_calls[0]["body"], "grant_type=client_credentials&client_id=analysis-client&client_secret=analysis-secret");
    assert!(
        lines
            .iter()
            .any(|l| l["service"] == "keycloak" && l["method"] == "GET" && l["path"] == "/realms/flame/protocol/openid-connect/certs")
    );
    let hub: Vec<&Value> = lines.iter().filter(|l| l["service"] == "hub").collect();
    assert_eq!(hub.len(), 3, "{hub:#?}");
    assert!(hub[..2].iter().all(|l| l["authorization"] == "Bearer standin-token-1"), "{hub:#?}");
    assert_eq!(hub[2]["target"], "/analysis/run?x=1");
    assert_eq!(hub[2]["authorization"], Value::Null);
    for service in ["storage", "broker"] {
        let calls: Vec<&Value> = lines.iter().filter(|l| l["service"] == service).collect();
        assert!(!calls.is_empty() && calls.iter().all(|l| l["authorization"] == "Bearer standin-token-1"), "{calls:#?}");
    }

    drop(kill_proxy);
    assert!(s.stop().success(), "{}", s.output());
}
