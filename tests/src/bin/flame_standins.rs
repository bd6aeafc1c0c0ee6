//! `flame_standins`: the FLAME node's services as pods, for the node tests of issue 21 (tests/tests/node_flame.rs).
//! One binary, one subcommand per service, each checking what the real service checks (../shared/flame/FACTS.md
//! §2 "What each upstream expects"):
//!
//! - `keycloak`: realm token endpoint (client credentials, client_secret_post or _basic), RS256 tokens with
//!   `client_id`/`azp`, short lifetimes; JWKS; discovery.
//! - `storage` (node-storage-service): a realm JWT; the analysis is the token's `client_id`: its objects only;
//!   GET/HEAD/PUT on /final, /local, /intermediate (multipart bodies), local tags; DELETE /local for the hub
//!   adapter's client only.
//! - `kong`: key-auth (`apikey` header only, hidden from the data store), the ACL on the project; behind it FHIR
//!   and an S3 bucket (XML listing, a key with a space and non-ASCII letters).
//! - `broker` (the TypeScript message broker): a realm JWT whose client owns the analysis; subscriptions,
//!   participants, messages; delivers to the analysis' registered webhook URL without a token (the partner node
//!   is simulated: it acknowledges and answers).
//! - `hub-adapter`: a realm JWT; `/kong/datastore/{project}`.
//! - `orchestrator` (pod orchestrator, the FLAME chart's po-service): `/po/stream_logs` with a realm JWT, and the
//!   status loop: `GET http://nginx-<DEP>:80/analysis/healthz` without a token, `POST .../token_refresh` with a
//!   fresh token when `token_remaining_time` is low, `POST .../partner_status`.
//! - `echo`: one of the node's other services (answers anything); `probe`: one-shot HTTP GETs, printed.
//!
//! Every server also listens on `--observe` (default :9000) for the test: `GET /seen` (every request, with all
//! its headers), and per service what it keeps (`/issued`, `/deliveries`, `/analyses`) and test controls
//! (`POST /clients`, `/consumers`, `/seed`, `/analyses`, `/refresh`, `/deliver`). For tests only.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

const MAX_BODY: usize = 64 << 20;
const LOGGED_BODY: usize = 2048;

#[derive(Parser, Debug)]
#[command(name = "flame_standins", about = "The FLAME node's services as stand-ins that check what the real ones check (tests only)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Keycloak: the realm's token endpoint (client credentials), JWKS and discovery; RS256.
    Keycloak(KeycloakArgs),
    /// node-storage-service: the analysis is the token's client_id.
    Storage(StorageArgs),
    /// Kong: key-auth on `apikey`, the project ACL, and the data stores behind it (FHIR, S3).
    Kong(KongArgs),
    /// The message broker: ownership of the analysis, webhook delivery without a token.
    Broker(BrokerArgs),
    /// The hub adapter: /kong/datastore/{project}.
    HubAdapter(HubArgs),
    /// The pod orchestrator: /po/stream_logs and the status loop into the analyses.
    Orchestrator(OrchestratorArgs),
    /// One of the node's other services: answers anything.
    Echo(Common),
    /// GET each URL once and print what happened, one JSON line each.
    Probe(ProbeArgs),
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Where the service listens.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Where the test reads what arrived (GET /seen) and steers the stand-in.
    #[arg(long, default_value = "0.0.0.0:9000")]
    observe: SocketAddr,
}

#[derive(Args, Debug, Clone)]
struct Realm {
    /// The realm's JWKS (RS256 keys), fetched on first use and again for an unknown kid.
    #[arg(long, default_value = "http://flame-keycloak-http/keycloak/realms/flame/protocol/openid-connect/certs")]
    jwks_url: String,
    /// The issuer every token must carry.
    #[arg(long, default_value = "http://flame-keycloak-http/keycloak/realms/flame")]
    issuer: String,
}

#[derive(Args, Debug)]
struct KeycloakArgs {
    #[command(flatten)]
    common: Common,
    /// The realm's RSA private key (PEM, PKCS#1 or PKCS#8).
    #[arg(long)]
    key_file: String,
    /// The issuer (the realm's URL as its clients address it).
    #[arg(long, default_value = "http://flame-keycloak-http/keycloak/realms/flame")]
    issuer: String,
    /// Lifetime of issued tokens, in seconds (short: the tests outlive it).
    #[arg(long, default_value_t = 60)]
    token_lifetime: u64,
    /// The tokens' audience.
    #[arg(long, default_value = "flame-analysis")]
    audience: String,
    /// A client: ID:SECRET (repeatable; more with POST /clients on the observe port).
    #[arg(long = "client", value_name = "ID:SECRET")]
    clients: Vec<String>,
}

#[derive(Args, Debug)]
struct StorageArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    realm: Realm,
    /// The hub adapter's client: the only one allowed DELETE on /local.
    #[arg(long, default_value = "hub-adapter")]
    admin_client: String,
    /// The URL prefix of the object URLs in answers.
    #[arg(long, default_value = "http://flame-node-storage-service:8080")]
    public_url: String,
}

#[derive(Args, Debug)]
struct KongArgs {
    #[command(flatten)]
    common: Common,
    /// A consumer: NAME:KEY:GROUP[,GROUP...] (its ACL groups are project ids).
    #[arg(long = "consumer", value_name = "NAME:KEY:GROUPS")]
    consumers: Vec<String>,
    /// A data store service: NAME:PROJECT (a route /NAME/fhir and /NAME/s3 allowed to that project).
    #[arg(long = "service", value_name = "NAME:PROJECT")]
    services: Vec<String>,
}

#[derive(Args, Debug)]
struct BrokerArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    realm: Realm,
    /// This node's id in every analysis.
    #[arg(long, default_value = "node-self")]
    node_id: String,
    /// This node's role.
    #[arg(long, default_value = "default")]
    node_type: String,
    /// The simulated partner node (the aggregator): acknowledges the analysis' messages and answers the first.
    #[arg(long, default_value = "node-partner")]
    partner_id: String,
}

#[derive(Args, Debug)]
struct HubArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    realm: Realm,
    /// A project's data store: PROJECT:SOURCE (repeatable).
    #[arg(long = "datastore", value_name = "PROJECT:SOURCE")]
    datastores: Vec<String>,
    /// Kong's address, for the data stores' paths.
    #[arg(long, default_value = "http://flame-kong-proxy")]
    kong_url: String,
}

#[derive(Args, Debug)]
struct OrchestratorArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    realm: Realm,
    /// The status loop's interval, in seconds (the orchestrator's STATUS_LOOP_INTERVAL).
    #[arg(long, default_value_t = 2)]
    interval: u64,
    /// The realm's token endpoint, for fresh analysis tokens.
    #[arg(long, default_value = "http://flame-keycloak-http/keycloak/realms/flame/protocol/openid-connect/token")]
    token_url: String,
    /// Healthz failures in a row after which an analysis is marked failed.
    #[arg(long, default_value_t = 60)]
    max_failures: u64,
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// Seconds per URL.
    #[arg(long, default_value_t = 3)]
    timeout: u64,
    urls: Vec<String>,
}

// ---- time, ids, answers ----

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn now_f() -> f64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    (t * 1000.0).round() / 1000.0
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh id: unique within the process and unlikely to repeat across restarts.
fn fresh_id(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{:x}{:06x}-{n}", now() & 0xffff_ffff, nanos & 0xff_ffff)
}

struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    /// What the service made of the request, for the record.
    note: Value,
}

fn answer(status: StatusCode, body: Value) -> Answer {
    Answer { status, content_type: "application/json", body: Bytes::from(body.to_string()), note: Value::Null }
}

fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    let message = message.into();
    answer(status, json!({ "error": message }))
}

impl Answer {
    fn note(mut self, note: Value) -> Answer {
        self.note = note;
        self
    }
}

struct Req {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
    peer: SocketAddr,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn segments(&self) -> Vec<&str> {
        self.path.trim_start_matches('/').split('/').collect()
    }

    fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("the body is not JSON: {e}"))
    }

    fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }
}

/// Every header with its value (repeated ones joined), as the service received them.
fn headers_json(headers: &HeaderMap) -> Value {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                map.insert(name.as_str().to_owned(), Value::from(value));
            }
        }
    }
    Value::Object(map)
}

// ---- the realm's tokens, as the services verify them ----

struct Verifier {
    jwks_url: String,
    issuer: String,
    keys: tokio::sync::Mutex<HashMap<String, DecodingKey>>,
}

impl Verifier {
    fn new(realm: &Realm) -> Verifier {
        Verifier { jwks_url: realm.jwks_url.clone(), issuer: realm.issuer.clone(), keys: tokio::sync::Mutex::default() }
    }

    async fn fetch(&self) -> Result<(), String> {
        let (status, _, body) = http("GET", &self.jwks_url, &[], b"", Duration::from_secs(5)).await?;
        if status != 200 {
            return Err(format!("JWKS {}: status {status}", self.jwks_url));
        }
        let jwks: Value = serde_json::from_slice(&body).map_err(|e| format!("JWKS: {e}"))?;
        let mut keys = self.keys.lock().await;
        for key in jwks["keys"].as_array().cloned().unwrap_or_default() {
            if let (Some(kid), Some(n), Some(e)) = (key["kid"].as_str(), key["n"].as_str(), key["e"].as_str()) {
                let decoding = DecodingKey::from_rsa_components(n, e).map_err(|e| format!("JWKS key {kid}: {e}"))?;
                keys.insert(kid.to_owned(), decoding);
            }
        }
        Ok(())
    }

    /// The claims of the request's bearer token, if it is a valid, unexpired RS256 token of the realm.
    async fn verify(&self, req: &Req) -> Result<Value, String> {
        let auth = req.header("authorization").ok_or("no Authorization header")?;
        let token =
            auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")).ok_or("Authorization is not a Bearer token")?.trim();
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        if header.alg != Algorithm::RS256 {
            return Err(format!("algorithm {:?} is not the realm's RS256", header.alg));
        }
        let kid = header.kid.ok_or("the token names no key (kid)")?;
        if !self.keys.lock().await.contains_key(&kid) {
            self.fetch().await?;
        }
        let keys = self.keys.lock().await;
        let key = keys.get(&kid).ok_or_else(|| format!("key {kid} is not in the realm's JWKS"))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&self.issuer]);
        validation.validate_aud = false;
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Value>(token, key, &validation).map_err(|e| format!("invalid token: {e}"))?;
        Ok(data.claims)
    }
}

fn client_of(claims: &Value) -> Option<&str> {
    claims["client_id"].as_str().or_else(|| claims["azp"].as_str())
}

/// What a verified token said, for the record.
fn token_note(claims: &Value) -> Value {
    json!({"client_id": claims["client_id"], "azp": claims["azp"], "jti": claims["jti"], "exp": claims["exp"]})
}

// ---- a small HTTP/1.1 client (plain http, Connection: close) ----

struct Url {
    host: String,
    port: u16,
    target: String,
}

fn parse_url(url: &str) -> Result<Url, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("{url}: bad port"))?),
        None => (authority, 80),
    };
    Ok(Url { host: host.to_owned(), port, target: target.to_owned() })
}

async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    limit: Duration,
) -> Result<(u16, Vec<(String, String)>, Vec<u8>), String> {
    tokio::time::timeout(limit, http_inner(method, url, headers, body))
        .await
        .map_err(|_| format!("{method} {url}: no answer within {limit:?}"))?
}

async fn http_inner(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<(String, String)>, Vec<u8>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let u = parse_url(url)?;
    let mut stream = TcpStream::connect((u.host.as_str(), u.port)).await.map_err(|e| format!("connect {}:{}: {e}", u.host, u.port))?;
    let host = if u.port == 80 { u.host.clone() } else { format!("{}:{}", u.host, u.port) };
    let mut head = format!("{method} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n", u.target, body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.map_err(|e| format!("{url}: writing: {e}"))?;
    stream.write_all(body).await.map_err(|e| format!("{url}: writing: {e}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(|e| format!("{url}: reading: {e}"))?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("{url}: no HTTP answer ({} bytes)", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{url}: bad status line"))?;
    let answer_headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
    let mut content = raw[split + 4..].to_vec();
    if answer_headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        content = dechunk(&content).ok_or_else(|| format!("{url}: bad chunked body"))?;
    }
    Ok((status, answer_headers, content))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

// ---- the services ----

struct Keycloak {
    key: EncodingKey,
    kid: String,
    jwks: Value,
    issuer: String,
    audience: String,
    lifetime: u64,
    clients: Mutex<BTreeMap<String, String>>,
    issued: Mutex<Vec<Value>>,
}

struct StoredObject {
    id: String,
    area: String,
    client: String,
    filename: String,
    fields: BTreeMap<String, String>,
    content: Bytes,
}

struct Storage {
    verifier: Verifier,
    admin_client: String,
    public_url: String,
    objects: Mutex<Vec<StoredObject>>,
}

struct Consumer {
    name: String,
    key: String,
    groups: Vec<String>,
}

struct Kong {
    consumers: Mutex<Vec<Consumer>>,
    /// service name → project id
    services: Mutex<BTreeMap<String, String>>,
    objects: BTreeMap<String, Bytes>,
}

struct Broker {
    verifier: Verifier,
    node_id: String,
    node_type: String,
    partner_id: String,
    subscriptions: Mutex<BTreeMap<String, String>>,
    messages: Mutex<Vec<Value>>,
    deliveries: Mutex<Vec<Value>>,
    /// Analyses the partner already answered.
    answered: Mutex<Vec<String>>,
}

struct Hub {
    verifier: Verifier,
    datastores: Vec<(String, String)>,
    kong_url: String,
}

struct Orchestrator {
    verifier: Verifier,
    interval: u64,
    token_url: String,
    max_failures: u64,
    analyses: Mutex<BTreeMap<String, Value>>,
    logs: Mutex<Vec<Value>>,
}

enum Kind {
    Keycloak(Keycloak),
    Storage(Storage),
    Kong(Kong),
    Broker(Broker),
    Hub(Hub),
    Orchestrator(Orchestrator),
    Echo,
}

struct Service {
    name: &'static str,
    kind: Kind,
    seen: Mutex<Vec<Value>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Service {
    fn record(&self, req: &Req, answer: &Answer) {
        let mut line = json!({
            "time": now_f(),
            "service": self.name,
            "peer": req.peer.ip().to_string(),
            "method": req.method.as_str(),
            "target": match &req.query { Some(q) => format!("{}?{q}", req.path), None => req.path.clone() },
            "headers": headers_json(&req.headers),
            "body_length": req.body.len(),
            "status": answer.status.as_u16(),
            "note": answer.note,
        });
        if req.body.len() <= LOGGED_BODY
            && let Ok(text) = std::str::from_utf8(&req.body)
        {
            line["body"] = Value::from(text);
        }
        println!("{line}");
        lock(&self.seen).push(line);
    }
}

async fn handle(service: Arc<Service>, req: Req) -> Answer {
    match &service.kind {
        Kind::Keycloak(k) => keycloak(k, &req),
        Kind::Storage(s) => storage(s, &req).await,
        Kind::Kong(k) => kong(k, &req),
        Kind::Broker(b) => broker(&service, b, &req).await,
        Kind::Hub(h) => hub(h, &req).await,
        Kind::Orchestrator(o) => po(o, &req).await,
        Kind::Echo => answer(StatusCode::OK, json!({"service": service.name, "method": req.method.as_str(), "path": req.path})),
    }
}

// ---- keycloak ----

fn keycloak(k: &Keycloak, req: &Req) -> Answer {
    let realm_path = k.issuer.split_once("://").and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned())).unwrap_or_default();
    let token_path = format!("{realm_path}/protocol/openid-connect/token");
    let certs_path = format!("{realm_path}/protocol/openid-connect/certs");
    let discovery = format!("{realm_path}/.well-known/openid-configuration");
    match (&req.method, req.path.as_str()) {
        (&Method::POST, p) if p == token_path => token(k, req),
        (&Method::GET, p) if p == certs_path => answer(StatusCode::OK, k.jwks.clone()),
        (&Method::GET, p) if p == discovery => answer(
            StatusCode::OK,
            json!({"issuer": k.issuer, "token_endpoint": format!("{}/protocol/openid-connect/token", k.issuer),
                   "jwks_uri": format!("{}/protocol/openid-connect/certs", k.issuer), "grant_types_supported": ["client_credentials"],
                   "id_token_signing_alg_values_supported": ["RS256"]}),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no Keycloak endpoint at {} {}", req.method, req.path)),
    }
}

fn token(k: &Keycloak, req: &Req) -> Answer {
    let form: BTreeMap<String, String> = form_urlencoded::parse(&req.body).into_owned().collect();
    let oauth = |status, error: &str, description: &str| answer(status, json!({"error": error, "error_description": description}));
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth(StatusCode::BAD_REQUEST, "unsupported_grant_type", "Unsupported grant_type");
    }
    let basic = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|pair| pair.split_once(':').map(|(i, s)| (i.to_owned(), s.to_owned())));
    let (id, secret) = match (basic, form.get("client_id"), form.get("client_secret")) {
        (Some(pair), _, _) => pair,
        (None, Some(id), Some(secret)) => (id.clone(), secret.clone()),
        _ => return oauth(StatusCode::UNAUTHORIZED, "unauthorized_client", "Client secret not provided in request"),
    };
    if lock(&k.clients).get(&id) != Some(&secret) {
        return oauth(StatusCode::UNAUTHORIZED, "unauthorized_client", "Invalid client or Invalid client credentials")
            .note(json!({"client_id": id, "refused": true}));
    }
    let iat = now();
    let jti = fresh_id("jti");
    let claims = json!({
        "exp": iat + k.lifetime, "iat": iat, "jti": jti, "iss": k.issuer, "aud": [k.audience], "sub": format!("service-account-{id}"),
        "typ": "Bearer", "azp": id, "client_id": id, "scope": "profile email", "clientHost": req.peer.ip().to_string(),
        "preferred_username": format!("service-account-{id}"),
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(k.kid.clone());
    header.typ = Some("JWT".into());
    let jwt = match jsonwebtoken::encode(&header, &claims, &k.key) {
        Ok(jwt) => jwt,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("signing: {e}")),
    };
    let record = json!({"jti": jti, "client_id": id, "peer": req.peer.ip().to_string(), "iat": iat, "exp": iat + k.lifetime});
    lock(&k.issued).push(record.clone());
    answer(
        StatusCode::OK,
        json!({"access_token": jwt, "expires_in": k.lifetime, "refresh_expires_in": 0, "token_type": "Bearer", "not-before-policy": 0, "scope": "profile email"}),
    )
    .note(record)
}

/// n and e of an RSA private key in PEM (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`).
fn rsa_public_parts(pem: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body.trim()).map_err(|e| format!("the key's PEM: {e}"))?;
    // (tag, content, rest)
    fn tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *data.first()?;
        let first = *data.get(1)?;
        let (len, start) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7f) as usize;
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *data.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        Some((tag, data.get(start..start + len)?, data.get(start + len..)?))
    }
    let strip = |int: &[u8]| int.iter().skip_while(|b| **b == 0).copied().collect::<Vec<u8>>();
    let (_, outer, _) = tlv(&der).ok_or("the key is not DER")?;
    let (tag, version, rest) = tlv(outer).ok_or("the key is not DER")?;
    if tag != 0x02 || version != [0] {
        return Err("not an RSA private key".into());
    }
    // PKCS#8: AlgorithmIdentifier, then the PKCS#1 key in an OCTET STRING.
    let pkcs1 = match tlv(rest) {
        Some((0x30, _, after)) => {
            let (tag, inner, _) = tlv(after).ok_or("bad PKCS#8")?;
            if tag != 0x04 {
                return Err("bad PKCS#8".into());
            }
            let (_, seq, _) = tlv(inner).ok_or("bad PKCS#8")?;
            let (_, _, rest) = tlv(seq).ok_or("bad PKCS#1")?;
            rest
        }
        _ => rest,
    };
    let (tag_n, n, rest) = tlv(pkcs1).ok_or("bad RSA key")?;
    let (tag_e, e, _) = tlv(rest).ok_or("bad RSA key")?;
    if tag_n != 0x02 || tag_e != 0x02 {
        return Err("bad RSA key".into());
    }
    Ok((strip(n), strip(e)))
}

// ---- storage ----

/// `multipart/form-data` parts: (name, filename, content).
fn multipart(content_type: &str, body: &[u8]) -> Result<Vec<(String, Option<String>, Bytes)>, String> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .ok_or("multipart without a boundary")?;
    let delimiter = format!("--{boundary}").into_bytes();
    let find = |hay: &[u8], needle: &[u8], from: usize| hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from);
    let mut parts = Vec::new();
    let mut pos = find(body, &delimiter, 0).ok_or("no first boundary")? + delimiter.len();
    loop {
        if body.get(pos..pos + 2) == Some(b"--") {
            return Ok(parts);
        }
        pos += 2; // CRLF after the boundary
        let head_end = find(body, b"\r\n\r\n", pos).ok_or("a part without headers")?;
        let head = String::from_utf8_lossy(&body[pos..head_end]).into_owned();
        let content_start = head_end + 4;
        let mut next_delim = delimiter.clone();
        next_delim.splice(0..0, b"\r\n".iter().copied());
        let end = find(body, &next_delim, content_start).ok_or("a part without an end")?;
        let disposition = head
            .split("\r\n")
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .ok_or("a part without Content-Disposition")?;
        let param = |key: &str| {
            disposition.split(';').map(str::trim).find_map(|p| p.strip_prefix(&format!("{key}=")).map(|v| v.trim_matches('"').to_owned()))
        };
        let name = param("name").ok_or("a part without a name")?;
        parts.push((name, param("filename"), Bytes::copy_from_slice(&body[content_start..end])));
        pos = end + next_delim.len();
    }
}

async fn storage(s: &Storage, req: &Req) -> Answer {
    let claims = match s.verifier.verify(req).await {
        Ok(claims) => claims,
        Err(e) => return error(StatusCode::UNAUTHORIZED, e).note(json!({"auth": "refused"})),
    };
    let note = token_note(&claims);
    let Some(client) = client_of(&claims).map(str::to_owned) else {
        return error(StatusCode::FORBIDDEN, "the token names no client").note(note);
    };
    let segs: Vec<String> = req.segments().into_iter().map(str::to_owned).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let area = segs[0];
    if !["final", "local", "intermediate"].contains(&area) {
        return error(StatusCode::NOT_FOUND, format!("Not Found: {}", req.path)).note(note);
    }
    let url = |area: &str, id: &str| format!("{}/{area}/{id}", s.public_url);
    match (&req.method, segs.as_slice()) {
        (&Method::PUT, [area] | [area, "localdp"]) => {
            let Some(content_type) = req.header("content-type") else {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "a multipart body is required").note(note);
            };
            let parts = match multipart(content_type, &req.body) {
                Ok(parts) => parts,
                Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e).note(note),
            };
            let mut fields = BTreeMap::new();
            let mut file = None;
            for (name, filename, content) in parts {
                if name == "file" {
                    file = Some((filename.unwrap_or_default(), content));
                } else {
                    fields.insert(name, String::from_utf8_lossy(&content).into_owned());
                }
            }
            let Some((filename, content)) = file else {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "field required: file").note(note);
            };
            if *area == "intermediate" && !fields.contains_key("remote_node_id") {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "field required: remote_node_id").note(note);
            }
            if segs.len() == 2 && (!fields.contains_key("epsilon") || !fields.contains_key("sensitivity")) {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "fields required: epsilon, sensitivity").note(note);
            }
            let id = fresh_id("obj");
            let summary = json!({"id": id, "area": area, "filename": filename, "fields": fields, "bytes": content.len()});
            lock(&s.objects).push(StoredObject {
                id: id.clone(),
                area: (*area).to_owned(),
                client: client.clone(),
                filename,
                fields,
                content,
            });
            let mut note = note;
            note["stored"] = summary;
            match *area {
                "final" => answer(StatusCode::OK, json!({"status": "success"})).note(note),
                _ => answer(StatusCode::OK, json!({"url": url(area, &id)})).note(note),
            }
        }
        (&Method::GET | &Method::HEAD, ["local", "tags"]) => {
            let objects = lock(&s.objects);
            let mut tags: Vec<&str> = objects
                .iter()
                .filter(|o| o.client == client && o.area == "local")
                .filter_map(|o| o.fields.get("tag").map(String::as_str))
                .collect();
            tags.sort_unstable();
            tags.dedup();
            let tags: Vec<Value> = tags.iter().map(|t| json!({"name": t, "url": format!("{}/local/tags/{t}", s.public_url)})).collect();
            answer(StatusCode::OK, json!({"tags": tags})).note(note)
        }
        (&Method::GET | &Method::HEAD, ["local", "tags", tag]) => {
            let objects = lock(&s.objects);
            let results: Vec<Value> = objects
                .iter()
                .filter(|o| o.client == client && o.area == "local" && o.fields.get("tag").map(String::as_str) == Some(*tag))
                .map(|o| json!({"url": url("local", &o.id), "filename": o.filename}))
                .collect();
            if results.is_empty() {
                return error(StatusCode::NOT_FOUND, format!("no objects tagged {tag}")).note(note);
            }
            answer(StatusCode::OK, json!({"results": results})).note(note)
        }
        (&Method::GET | &Method::HEAD, [area @ ("local" | "intermediate"), id]) => {
            if *area == "intermediate" && req.query_param("remote_node_id").is_none() {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "query parameter required: remote_node_id").note(note);
            }
            let objects = lock(&s.objects);
            // The analysis' own objects only: another analysis' id is as good as absent.
            match objects.iter().find(|o| o.id == *id && o.area == *area && o.client == client) {
                Some(o) => Answer { status: StatusCode::OK, content_type: "application/octet-stream", body: o.content.clone(), note },
                None => error(StatusCode::NOT_FOUND, format!("no object {id}")).note(note),
            }
        }
        (&Method::DELETE, ["local", ..]) => {
            if client != s.admin_client {
                return error(StatusCode::FORBIDDEN, format!("client {client} may not delete local objects")).note(note);
            }
            let mut objects = lock(&s.objects);
            let before = objects.len();
            objects.retain(|o| !(o.area == "local" && segs.get(1).is_none_or(|id| o.id == *id)));
            answer(StatusCode::OK, json!({"deleted": before - objects.len()})).note(note)
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not served on {}", req.method, req.path)).note(note),
    }
}

// ---- kong ----

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or("a truncated percent escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad percent escape %{hex}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the decoded key is not UTF-8".to_owned())
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn kong(k: &Kong, req: &Req) -> Answer {
    // key-auth: key_names [apikey], header only, hide_credentials.
    let Some(key) = req.header("apikey") else {
        return answer(StatusCode::UNAUTHORIZED, json!({"message": "No API key found in request"})).note(json!({"auth": "no key"}));
    };
    let consumers = lock(&k.consumers);
    let Some(consumer) = consumers.iter().find(|c| c.key == key) else {
        return answer(StatusCode::UNAUTHORIZED, json!({"message": "Invalid authentication credentials"}))
            .note(json!({"auth": "unknown key"}));
    };
    let segs = req.segments();
    let service = segs[0].to_owned();
    let Some(project) = lock(&k.services).get(&service).cloned() else {
        return answer(StatusCode::NOT_FOUND, json!({"message": "no Route matched with those values"}))
            .note(json!({"consumer": consumer.name}));
    };
    let note = json!({"consumer": consumer.name, "service": service, "project": project,
        // What the data store behind Kong gets: the request without the key (hide_credentials).
        "upstream_authorization": req.header("authorization")});
    // acl: allow = [project]
    if !consumer.groups.contains(&project) {
        return answer(StatusCode::FORBIDDEN, json!({"message": "You cannot consume this service"})).note(note);
    }
    if req.method != Method::GET && req.method != Method::HEAD {
        return error(StatusCode::METHOD_NOT_ALLOWED, "the data stores here are read-only").note(note);
    }
    match segs.get(1..) {
        Some(["fhir", rest @ ..]) if !rest.is_empty() => {
            let query = match &req.query {
                Some(q) => format!("{}?{q}", rest.join("/")),
                None => rest.join("/"),
            };
            answer(StatusCode::OK, json!({"resourceType": "Bundle", "type": "searchset", "total": 42, "source": service, "query": query}))
                .note(note)
        }
        Some(["s3"]) => {
            let mut xml =
                String::from(r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">"#);
            xml.push_str(&format!("<Name>{}</Name><IsTruncated>false</IsTruncated>", xml_escape(&service)));
            for (key, content) in &k.objects {
                xml.push_str(&format!("<Contents><Key>{}</Key><Size>{}</Size></Contents>", xml_escape(key), content.len()));
            }
            xml.push_str("</ListBucketResult>");
            Answer { status: StatusCode::OK, content_type: "application/xml", body: Bytes::from(xml), note }
        }
        Some(["s3", key @ ..]) if !key.is_empty() => {
            let key = match percent_decode(&key.join("/")) {
                Ok(key) => key,
                Err(e) => return error(StatusCode::BAD_REQUEST, e).note(note),
            };
            let mut note = note;
            note["key"] = Value::from(key.clone());
            match k.objects.get(&key) {
                Some(content) => Answer { status: StatusCode::OK, content_type: "text/csv", body: content.clone(), note },
                None => Answer {
                    status: StatusCode::NOT_FOUND,
                    content_type: "application/xml",
                    body: Bytes::from(format!("<Error><Code>NoSuchKey</Code><Key>{}</Key></Error>", xml_escape(&key))),
                    note,
                },
            }
        }
        _ => answer(StatusCode::NOT_FOUND, json!({"message": "no Route matched with those values"})).note(note),
    }
}

// ---- broker ----

async fn broker(service: &Arc<Service>, b: &Broker, req: &Req) -> Answer {
    let segs: Vec<String> = req.segments().into_iter().map(str::to_owned).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    if segs == ["healthz"] {
        return answer(StatusCode::OK, json!({"status": "ok"}));
    }
    let claims = match b.verifier.verify(req).await {
        Ok(claims) => claims,
        Err(e) => return error(StatusCode::UNAUTHORIZED, e).note(json!({"auth": "refused"})),
    };
    let note = token_note(&claims);
    let ["analyses", aid, rest @ ..] = segs.as_slice() else {
        return error(StatusCode::NOT_FOUND, format!("no broker endpoint at {}", req.path)).note(note);
    };
    // The caller's client must own the analysis (the orchestrator creates one client per analysis, id = AID).
    if client_of(&claims) != Some(*aid) {
        return error(StatusCode::FORBIDDEN, format!("client {:?} does not own analysis {aid}", client_of(&claims))).note(note);
    }
    let me = json!({"nodeId": b.node_id, "nodeType": b.node_type});
    let partner = json!({"nodeId": b.partner_id, "nodeType": if b.node_type == "aggregator" { "default" } else { "aggregator" }});
    match (&req.method, rest) {
        (&Method::POST, ["messages", "subscriptions"]) => {
            let body = match req.json() {
                Ok(body) => body,
                Err(e) => return error(StatusCode::BAD_REQUEST, e).note(note),
            };
            let Some(url) = body["webhookUrl"].as_str() else {
                return error(StatusCode::BAD_REQUEST, "webhookUrl is required").note(note);
            };
            lock(&b.subscriptions).insert((*aid).to_owned(), url.to_owned());
            answer(StatusCode::CREATED, json!({"id": fresh_id("subscription"), "webhookUrl": url})).note(note)
        }
        (&Method::GET, ["participants", "self"]) => answer(StatusCode::OK, me).note(note),
        (&Method::GET, ["participants"]) => answer(StatusCode::OK, json!([me, partner])).note(note),
        (&Method::POST, ["messages"]) => {
            let body = match req.json() {
                Ok(body) => body,
                Err(e) => return error(StatusCode::BAD_REQUEST, e).note(note),
            };
            let recipients: Vec<String> =
                body["recipients"].as_array().map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()).unwrap_or_default();
            if recipients.is_empty() || !body["message"].is_object() {
                return error(StatusCode::BAD_REQUEST, "recipients and message are required").note(note);
            }
            lock(&b.messages).push(json!({"analysis_id": aid, "recipients": recipients, "message": body["message"]}));
            if recipients.contains(&b.partner_id) {
                tokio::spawn(partner_answers(service.clone(), (*aid).to_owned(), body["message"].clone()));
            }
            answer(StatusCode::CREATED, json!({"id": fresh_id("message")})).note(note)
        }
        _ => error(StatusCode::NOT_FOUND, format!("no broker endpoint at {} {}", req.method, req.path)).note(note),
    }
}

/// The simulated partner node: acknowledges a message from the analysis, and answers the analysis' first message
/// with one of its own (which the analysis must acknowledge).
async fn partner_answers(service: Arc<Service>, aid: String, message: Value) {
    let Kind::Broker(b) = &service.kind else { return };
    if !message["meta"]["akn_id"].is_null() {
        return; // the analysis' acknowledgement of the partner's message: nothing to answer
    }
    let mut ack = message.clone();
    ack["meta"]["akn_id"] = Value::from(b.partner_id.clone());
    deliver(b, &aid, ack).await;
    let category = message["meta"]["category"].as_str().unwrap_or("");
    let first = {
        let mut answered = lock(&b.answered);
        let first = !answered.contains(&aid);
        answered.push(aid.clone());
        first
    };
    if first && category != "analysis_finished" {
        let reply = json!({
            "partner_result": 7,
            "meta": {"type": "outgoing", "category": "partner_result", "id": fresh_id("part"), "akn_id": null, "status": "unread",
                     "sender": b.partner_id, "created_at": now_f().to_string(), "arrived_at": null, "number": 0}
        });
        deliver(b, &aid, reply).await;
    }
}

/// POST the message to the analysis' webhook URL as the broker does: JSON, no token; a few attempts.
async fn deliver(b: &Broker, aid: &str, message: Value) -> Value {
    let Some(url) = lock(&b.subscriptions).get(aid).cloned() else {
        let record = json!({"time": now_f(), "analysis_id": aid, "error": "no subscription"});
        lock(&b.deliveries).push(record.clone());
        return record;
    };
    let body = message.to_string();
    let mut last = Value::Null;
    for attempt in 1..=10 {
        let result = http(
            "POST",
            &url,
            &[("Content-Type", "application/json"), ("Accept", "application/json")],
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        let record = match &result {
            Ok((status, _, answer)) => json!({"time": now_f(), "analysis_id": aid, "url": url, "attempt": attempt, "status": status,
                "answer": String::from_utf8_lossy(answer), "category": message["meta"]["category"], "message_id": message["meta"]["id"],
                "akn_id": message["meta"]["akn_id"]}),
            Err(e) => {
                json!({"time": now_f(), "analysis_id": aid, "url": url, "attempt": attempt, "error": e, "category": message["meta"]["category"],
                "message_id": message["meta"]["id"], "akn_id": message["meta"]["akn_id"]})
            }
        };
        println!("{}", json!({"delivery": record}));
        lock(&b.deliveries).push(record.clone());
        last = record;
        if matches!(result, Ok((status, _, _)) if status < 500) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    last
}

// ---- hub adapter ----

async fn hub(h: &Hub, req: &Req) -> Answer {
    let claims = match h.verifier.verify(req).await {
        Ok(claims) => claims,
        Err(e) => return error(StatusCode::UNAUTHORIZED, e).note(json!({"auth": "refused"})),
    };
    let note = token_note(&claims);
    match (&req.method, req.segments().as_slice()) {
        (&Method::GET | &Method::HEAD, ["kong", "datastore", project]) => {
            let data: Vec<Value> = h
                .datastores
                .iter()
                .filter(|(p, _)| p == project)
                .map(|(p, source)| {
                    json!({"name": source, "id": format!("{source}-id"), "project_id": p, "protocol": "http",
                           "paths": [format!("{}/{source}", h.kong_url)], "host": h.kong_url})
                })
                .collect();
            answer(StatusCode::OK, json!({"data": data, "offset": null})).note(note)
        }
        _ => error(StatusCode::NOT_FOUND, format!("Not Found: {}", req.path)).note(note),
    }
}

// ---- pod orchestrator ----

async fn po(o: &Orchestrator, req: &Req) -> Answer {
    let claims = match o.verifier.verify(req).await {
        Ok(claims) => claims,
        Err(e) => return error(StatusCode::UNAUTHORIZED, e).note(json!({"auth": "refused"})),
    };
    let note = token_note(&claims);
    match (&req.method, req.path.as_str()) {
        (&Method::POST, "/po/stream_logs") => {
            let body = match req.json() {
                Ok(body) => body,
                Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e).note(note),
            };
            for field in ["log", "log_type", "analysis_id", "status", "progress"] {
                if body.get(field).is_none() {
                    return error(StatusCode::UNPROCESSABLE_ENTITY, format!("field required: {field}")).note(note);
                }
            }
            lock(&o.logs).push(body);
            answer(StatusCode::OK, json!(null)).note(note)
        }
        _ => error(StatusCode::NOT_FOUND, format!("Not Found: {}", req.path)).note(note),
    }
}

fn analysis_update(o: &Orchestrator, deployment: &str, update: impl FnOnce(&mut Value)) {
    if let Some(entry) = lock(&o.analyses).get_mut(deployment) {
        update(entry);
    }
}

/// A fresh token of the analysis' client, as the orchestrator gets one (it created the client and knows its secret),
/// sent to the analysis' /token_refresh; what happened.
async fn refresh_token(o: &Orchestrator, deployment: &str, analysis_id: &str, secret: &str, why: &str) -> Value {
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        form_urlencoded::byte_serialize(analysis_id.as_bytes()).collect::<String>(),
        form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()
    );
    let token = match http(
        "POST",
        &o.token_url,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
        Duration::from_secs(10),
    )
    .await
    {
        Ok((200, _, body)) => serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["access_token"].as_str().map(str::to_owned)),
        _ => None,
    };
    let Some(token) = token else {
        return json!({"time": now_f(), "why": why, "error": "no token from Keycloak"});
    };
    let url = format!("http://nginx-{deployment}:80/analysis/token_refresh");
    let body = json!({"token": token}).to_string();
    match http("POST", &url, &[("Content-Type", "application/json")], body.as_bytes(), Duration::from_secs(10)).await {
        Ok((status, _, answer)) => {
            json!({"time": now_f(), "why": why, "status": status, "answer": String::from_utf8_lossy(&answer), "token": token})
        }
        Err(e) => json!({"time": now_f(), "why": why, "error": e}),
    }
}

/// The status loop for one analysis, as node-pod-orchestration runs it.
async fn status_loop(service: Arc<Service>, deployment: String, analysis_id: String, secret: String) {
    let Kind::Orchestrator(o) = &service.kind else { return };
    let base = format!("http://nginx-{deployment}:80/analysis");
    let mut failures = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(o.interval)).await;
        let started = now_f();
        let result = http("GET", &format!("{base}/healthz"), &[("Connection", "close")], b"", Duration::from_secs(5)).await;
        let health = match &result {
            Ok((200, _, body)) => serde_json::from_slice::<Value>(body).ok(),
            _ => None,
        };
        let poll = match &result {
            Ok((status, _, body)) => json!({"time": started, "status": status, "answer": String::from_utf8_lossy(body)}),
            Err(e) => json!({"time": started, "error": e}),
        };
        analysis_update(o, &deployment, |a| a["polls"].as_array_mut().map_or((), |p| p.push(poll)));
        let Some(health) = health else {
            failures += 1;
            if failures >= o.max_failures {
                analysis_update(o, &deployment, |a| a["final"] = json!("failed (healthz unanswered)"));
                return;
            }
            continue;
        };
        failures = 0;
        let status = health["status"].as_str().unwrap_or("").to_owned();
        let remaining = health["token_remaining_time"].as_i64().unwrap_or(0);
        analysis_update(o, &deployment, |a| {
            a["last_status"] = json!(status);
            a["last_remaining"] = json!(remaining);
        });
        if ["executed", "stopped", "failed"].contains(&status.as_str()) {
            analysis_update(o, &deployment, |a| a["final"] = json!(status));
            return;
        }
        // The orchestrator renews the analysis' token when less than two loops and a second are left.
        if remaining < (2 * o.interval + 1) as i64 {
            let refreshed = refresh_token(o, &deployment, &analysis_id, &secret, "token_remaining_time low").await;
            analysis_update(o, &deployment, |a| a["refreshes"].as_array_mut().map_or((), |r| r.push(refreshed)));
        }
        let partner = json!({"partner_status": {"node-partner": "executing"}}).to_string();
        let result = http(
            "POST",
            &format!("{base}/partner_status"),
            &[("Content-Type", "application/json")],
            partner.as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        let record = match result {
            Ok((status, _, body)) => json!({"time": now_f(), "status": status, "answer": String::from_utf8_lossy(&body)}),
            Err(e) => json!({"time": now_f(), "error": e}),
        };
        analysis_update(o, &deployment, |a| a["partner_status"].as_array_mut().map_or((), |p| p.push(record)));
    }
}

// ---- the observe port ----

async fn observe(service: Arc<Service>, req: Req) -> Answer {
    let seen = || answer(StatusCode::OK, Value::Array(lock(&service.seen).clone()));
    match (&service.kind, &req.method, req.path.as_str()) {
        (_, &Method::GET, "/seen") => seen(),
        (_, &Method::GET, "/healthz") => answer(StatusCode::OK, json!({"service": service.name})),
        (Kind::Keycloak(k), &Method::GET, "/issued") => answer(StatusCode::OK, Value::Array(lock(&k.issued).clone())),
        (Kind::Keycloak(k), &Method::POST, "/clients") => match req.json() {
            Ok(body) => match (body["client_id"].as_str(), body["secret"].as_str()) {
                (Some(id), Some(secret)) => {
                    lock(&k.clients).insert(id.to_owned(), secret.to_owned());
                    answer(StatusCode::CREATED, json!({"client_id": id}))
                }
                _ => error(StatusCode::BAD_REQUEST, "client_id and secret are required"),
            },
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (Kind::Kong(k), &Method::POST, "/consumers") => match req.json() {
            Ok(body) => match (body["name"].as_str(), body["key"].as_str(), body["groups"].as_array()) {
                (Some(name), Some(key), Some(groups)) => {
                    let groups = groups.iter().filter_map(|g| g.as_str().map(str::to_owned)).collect();
                    lock(&k.consumers).push(Consumer { name: name.to_owned(), key: key.to_owned(), groups });
                    answer(StatusCode::CREATED, json!({"name": name}))
                }
                _ => error(StatusCode::BAD_REQUEST, "name, key and groups are required"),
            },
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (Kind::Kong(k), &Method::POST, "/services") => match req.json() {
            Ok(body) => match (body["name"].as_str(), body["project"].as_str()) {
                (Some(name), Some(project)) => {
                    lock(&k.services).insert(name.to_owned(), project.to_owned());
                    answer(StatusCode::CREATED, json!({"name": name}))
                }
                _ => error(StatusCode::BAD_REQUEST, "name and project are required"),
            },
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (Kind::Storage(s), &Method::POST, "/seed") => match req.json() {
            Ok(body) => match (body["client_id"].as_str(), body["area"].as_str(), body["content"].as_str()) {
                (Some(client), Some(area), Some(content)) => {
                    let id = body["id"].as_str().map_or_else(|| fresh_id("obj"), str::to_owned);
                    let mut fields = BTreeMap::new();
                    if let Some(tag) = body["tag"].as_str() {
                        fields.insert("tag".to_owned(), tag.to_owned());
                    }
                    lock(&s.objects).push(StoredObject {
                        id: id.clone(),
                        area: area.to_owned(),
                        client: client.to_owned(),
                        filename: "seeded".into(),
                        fields,
                        content: Bytes::from(content.to_owned()),
                    });
                    answer(StatusCode::CREATED, json!({"id": id}))
                }
                _ => error(StatusCode::BAD_REQUEST, "client_id, area and content are required"),
            },
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (Kind::Storage(s), &Method::GET, "/objects") => {
            let objects: Vec<Value> = lock(&s.objects)
                .iter()
                .map(|o| json!({"id": o.id, "area": o.area, "client": o.client, "filename": o.filename, "fields": o.fields, "bytes": o.content.len()}))
                .collect();
            answer(StatusCode::OK, Value::Array(objects))
        }
        (Kind::Broker(b), &Method::GET, "/deliveries") => answer(StatusCode::OK, Value::Array(lock(&b.deliveries).clone())),
        (Kind::Broker(b), &Method::GET, "/messages") => answer(StatusCode::OK, Value::Array(lock(&b.messages).clone())),
        (Kind::Broker(b), &Method::POST, "/deliver") => match req.json() {
            Ok(body) => match body["analysis_id"].as_str() {
                Some(aid) => answer(StatusCode::OK, deliver(b, aid, body["message"].clone()).await),
                None => error(StatusCode::BAD_REQUEST, "analysis_id and message are required"),
            },
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (Kind::Orchestrator(o), &Method::GET, "/analyses") => {
            answer(StatusCode::OK, Value::Object(lock(&o.analyses).iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
        }
        (Kind::Orchestrator(o), &Method::GET, "/logs") => answer(StatusCode::OK, Value::Array(lock(&o.logs).clone())),
        (Kind::Orchestrator(o), &Method::POST, "/analyses") => match req.json() {
            Ok(body) => match (body["deployment"].as_str(), body["analysis_id"].as_str(), body["client_secret"].as_str()) {
                (Some(dep), Some(aid), Some(secret)) => {
                    let entry = json!({"deployment": dep, "analysis_id": aid, "client_secret": secret, "polls": [], "refreshes": [],
                                       "partner_status": [], "final": null});
                    lock(&o.analyses).insert(dep.to_owned(), entry);
                    tokio::spawn(status_loop(service.clone(), dep.to_owned(), aid.to_owned(), secret.to_owned()));
                    answer(StatusCode::CREATED, json!({"deployment": dep}))
                }
                _ => error(StatusCode::BAD_REQUEST, "deployment, analysis_id and client_secret are required"),
            },
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (Kind::Orchestrator(o), &Method::POST, "/refresh") => {
            let body = req.json().unwrap_or(Value::Null);
            let Some(dep) = body["deployment"].as_str() else { return error(StatusCode::BAD_REQUEST, "deployment is required") };
            let entry = lock(&o.analyses).get(dep).cloned();
            let Some(entry) = entry else { return error(StatusCode::NOT_FOUND, format!("no analysis {dep}")) };
            let (aid, secret) = (entry["analysis_id"].as_str().unwrap_or(""), entry["client_secret"].as_str().unwrap_or(""));
            let refreshed = refresh_token(o, dep, aid, secret, "asked by the test").await;
            analysis_update(o, dep, |a| a["refreshes"].as_array_mut().map_or((), |r| r.push(refreshed.clone())));
            answer(StatusCode::OK, refreshed)
        }
        _ => error(StatusCode::NOT_FOUND, format!("no observer endpoint {} {}", req.method, req.path)),
    }
}

// ---- serving ----

async fn to_req(request: Request<Incoming>, peer: SocketAddr) -> Result<Req, Answer> {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| error(StatusCode::PAYLOAD_TOO_LARGE, format!("reading the body: {e}")))?
        .to_bytes();
    Ok(Req {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
        peer,
    })
}

fn to_response(answer: Answer, head: bool) -> Response<Full<Bytes>> {
    let body = if head { Bytes::new() } else { answer.body };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = answer.status;
    response.headers_mut().insert("content-type", HeaderValue::from_static(answer.content_type));
    response
}

async fn serve(listener: TcpListener, service: Arc<Service>, observer: bool) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("flame_standins: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let handler = service_fn(move |request: Request<Incoming>| {
                let service = service.clone();
                async move {
                    let head = request.method() == Method::HEAD;
                    let answer = match to_req(request, peer).await {
                        Ok(req) if observer => observe(service, req).await,
                        Ok(req) => {
                            let answer = handle(service.clone(), req_clone(&req)).await;
                            service.record(&req, &answer);
                            answer
                        }
                        Err(answer) => answer,
                    };
                    Ok::<_, Infallible>(to_response(answer, head))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), handler).await;
        });
    }
}

fn req_clone(req: &Req) -> Req {
    Req {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        headers: req.headers.clone(),
        body: req.body.clone(),
        peer: req.peer,
    }
}

fn split_pair(text: &str, what: &str) -> Result<(String, String), String> {
    text.split_once(':').map(|(a, b)| (a.to_owned(), b.to_owned())).ok_or_else(|| format!("{what} {text:?}: expected A:B"))
}

fn build(command: Command) -> Result<(Common, Service), String> {
    let service = |name, kind| Service { name, kind, seen: Mutex::default() };
    Ok(match command {
        Command::Keycloak(a) => {
            let pem = std::fs::read_to_string(&a.key_file).map_err(|e| format!("--key-file {}: {e}", a.key_file))?;
            let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| format!("--key-file: {e}"))?;
            let (n, e) = rsa_public_parts(&pem)?;
            let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            let kid = format!("standin-{}", &b64(&sha2_of(&n))[..16]);
            let jwks = json!({"keys": [{"kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig", "n": b64(&n), "e": b64(&e)}]});
            let mut clients = BTreeMap::new();
            for c in &a.clients {
                let (id, secret) = split_pair(c, "--client")?;
                clients.insert(id, secret);
            }
            let kind = Kind::Keycloak(Keycloak {
                key,
                kid,
                jwks,
                issuer: a.issuer,
                audience: a.audience,
                lifetime: a.token_lifetime,
                clients: Mutex::new(clients),
                issued: Mutex::default(),
            });
            (a.common, service("keycloak", kind))
        }
        Command::Storage(a) => {
            let kind = Kind::Storage(Storage {
                verifier: Verifier::new(&a.realm),
                admin_client: a.admin_client,
                public_url: a.public_url,
                objects: Mutex::default(),
            });
            (a.common, service("storage", kind))
        }
        Command::Kong(a) => {
            let mut consumers = Vec::new();
            for c in &a.consumers {
                let mut parts = c.splitn(3, ':');
                let (Some(name), Some(key), Some(groups)) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(format!("--consumer {c:?}: expected NAME:KEY:GROUPS"));
                };
                consumers.push(Consumer { name: name.into(), key: key.into(), groups: groups.split(',').map(str::to_owned).collect() });
            }
            let mut services = BTreeMap::new();
            for s in &a.services {
                let (name, project) = split_pair(s, "--service")?;
                services.insert(name, project);
            }
            let objects = BTreeMap::from([
                ("cohort.csv".to_owned(), Bytes::from_static(b"id,age\n1,42\n2,37\n")),
                ("Befund M\u{fc}ller.csv".to_owned(), Bytes::from_static("id,befund\n1,unauff\u{e4}llig\n".as_bytes())),
            ]);
            (a.common, service("kong", Kind::Kong(Kong { consumers: Mutex::new(consumers), services: Mutex::new(services), objects })))
        }
        Command::Broker(a) => {
            let kind = Kind::Broker(Broker {
                verifier: Verifier::new(&a.realm),
                node_id: a.node_id,
                node_type: a.node_type,
                partner_id: a.partner_id,
                subscriptions: Mutex::default(),
                messages: Mutex::default(),
                deliveries: Mutex::default(),
                answered: Mutex::default(),
            });
            (a.common, service("broker", kind))
        }
        Command::HubAdapter(a) => {
            let mut datastores = Vec::new();
            for d in &a.datastores {
                datastores.push(split_pair(d, "--datastore")?);
            }
            (a.common, service("hub-adapter", Kind::Hub(Hub { verifier: Verifier::new(&a.realm), datastores, kong_url: a.kong_url })))
        }
        Command::Orchestrator(a) => {
            let kind = Kind::Orchestrator(Orchestrator {
                verifier: Verifier::new(&a.realm),
                interval: a.interval.max(1),
                token_url: a.token_url,
                max_failures: a.max_failures,
                analyses: Mutex::default(),
                logs: Mutex::default(),
            });
            (a.common, service("orchestrator", kind))
        }
        Command::Echo(common) => (common, service("echo", Kind::Echo)),
        Command::Probe(_) => unreachable!("handled before"),
    })
}

fn sha2_of(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

async fn probe(args: ProbeArgs) {
    for url in &args.urls {
        let line = match http("GET", url, &[], b"", Duration::from_secs(args.timeout)).await {
            Ok((status, _, body)) => json!({"url": url, "status": status, "body": String::from_utf8_lossy(&body)}),
            Err(e) => json!({"url": url, "error": e}),
        };
        println!("{line}");
    }
}

async fn run(command: Command) -> Result<(), String> {
    if let Command::Probe(args) = command {
        probe(args).await;
        return Ok(());
    }
    let (common, service) = build(command)?;
    let service = Arc::new(service);
    let main = TcpListener::bind(common.listen).await.map_err(|e| format!("listening on {}: {e}", common.listen))?;
    let observer = TcpListener::bind(common.observe).await.map_err(|e| format!("listening on {}: {e}", common.observe))?;
    eprintln!("flame_standins {} on {} (observe on {})", service.name, common.listen, common.observe);
    tokio::spawn(serve(observer, service.clone(), true));
    let serving = tokio::spawn(serve(main, service.clone(), false));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    tokio::select! {
        _ = term.recv() => eprintln!("flame_standins {}: SIGTERM", service.name),
        _ = tokio::signal::ctrl_c() => eprintln!("flame_standins {}: SIGINT", service.name),
        _ = serving => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flame_standins: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flame_standins: {e}");
            ExitCode::FAILURE
        }
    }
}
