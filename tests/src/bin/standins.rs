//! `tollgate-standins`: host-side stand-ins for the services an analysis pod talks to — the FLAME hub
//! adapter / Kong data source, the result service (storage), the message broker and Keycloak — each on
//! its own port of one address (on a one-node cluster: the bridge's gateway, e.g. 10.88.0.1, which pods
//! reach). Every request is written as one JSON line to `--log` so tests can read what arrived.
//! `--print-config` prints a tollgate-proxy config pointing the FLAME routes at these stand-ins.
//!
//! For tests only: anyone who can reach the Keycloak stand-in can mint tokens with `POST /mint`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

const REALM: &str = "/realms/flame";
const TOKEN_PATH: &str = "/realms/flame/protocol/openid-connect/token";
const CERTS_PATH: &str = "/realms/flame/protocol/openid-connect/certs";
const DISCOVERY_PATH: &str = "/realms/flame/.well-known/openid-configuration";
const AUDIENCE: &str = "flame-analysis";
/// Client-credentials tokens live this long (the proxy refreshes 30 s ahead).
const TOKEN_LIFETIME: u64 = 300;
/// Bodies larger than this are refused with 413 (results can be large, but this is a stand-in).
const MAX_BODY: usize = 256 << 20;
/// Bodies up to this size are written into the log as text (when they are UTF-8).
const LOGGED_BODY: usize = 4096;
/// How long open requests get to finish after SIGTERM/SIGINT.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    name = "tollgate-standins",
    version,
    about = "Stand-ins for the hub, storage, message broker and Keycloak an analysis pod talks to (for tests)",
    long_about = "Stand-ins for the services an analysis pod talks to, for tests on a real cluster: the FLAME hub \
adapter / Kong data source (echoes what it saw), the result service (stores bodies in memory), the message broker \
and Keycloak (client-credentials tokens, a JWKS with a fresh ES256 key, and POST /mint for signed JWTs). Each \
request is logged as one JSON line. Anyone who can reach the Keycloak stand-in can mint tokens: run it only on a \
test host.\n\nExample: tollgate-standins --listen 10.88.0.1 --log /tmp/standins.jsonl\n         \
tollgate-standins --listen 10.88.0.1 --print-config > proxy.yaml"
)]
struct Cli {
    /// The address to serve on: the one analysis pods reach (the cluster bridge's gateway, e.g. 10.88.0.1).
    /// It is also the host of the issuer URL and of the printed config's upstreams.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    listen: IpAddr,
    /// Port of the hub stand-in (FLAME hub adapter / Kong data source).
    #[arg(long, value_name = "PORT", default_value_t = 18080)]
    hub_port: u16,
    /// Port of the storage stand-in (result service).
    #[arg(long, value_name = "PORT", default_value_t = 18081)]
    storage_port: u16,
    /// Port of the message broker stand-in.
    #[arg(long, value_name = "PORT", default_value_t = 18082)]
    broker_port: u16,
    /// Port of the Keycloak stand-in (token endpoint, JWKS, /mint).
    #[arg(long, value_name = "PORT", default_value_t = 18083)]
    keycloak_port: u16,
    /// Append one JSON line per request to this file (flushed per line); stdout without it.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// The client id the token endpoint accepts.
    #[arg(long, value_name = "ID", default_value = "analysis-client")]
    client_id: String,
    /// The client secret the token endpoint accepts.
    #[arg(long, value_name = "SECRET", default_value = "analysis-secret")]
    client_secret: String,
    /// Print a tollgate-proxy config (YAML) whose routes, token endpoint and ingress issuer point at these
    /// stand-ins, and exit.
    #[arg(long)]
    print_config: bool,
    /// With --print-config: identity.clientIdFile (where the proxy reads the client id).
    #[arg(long, value_name = "PATH", default_value = "/var/run/secrets/tollgate/client-id")]
    client_id_file: String,
    /// With --print-config: identity.clientSecretFile (where the proxy reads the client secret).
    #[arg(long, value_name = "PATH", default_value = "/var/run/secrets/tollgate/client-secret")]
    client_secret_file: String,
    /// With --print-config: ingress.upstream (the analysis container, from the proxy's side).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8000")]
    ingress_upstream: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Hub,
    Storage,
    Broker,
    Keycloak,
}

impl Service {
    const ALL: [Service; 4] = [Service::Hub, Service::Storage, Service::Broker, Service::Keycloak];

    fn name(self) -> &'static str {
        match self {
            Service::Hub => "hub",
            Service::Storage => "storage",
            Service::Broker => "broker",
            Service::Keycloak => "keycloak",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Service::Hub => "--hub-port",
            Service::Storage => "--storage-port",
            Service::Broker => "--broker-port",
            Service::Keycloak => "--keycloak-port",
        }
    }

    fn port(self, cli: &Cli) -> u16 {
        match self {
            Service::Hub => cli.hub_port,
            Service::Storage => cli.storage_port,
            Service::Broker => cli.broker_port,
            Service::Keycloak => cli.keycloak_port,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Service::Hub => "hub adapter / Kong: any request, answered with what it saw",
            Service::Storage => "result service: /final, /local, /intermediate",
            Service::Broker => "message broker: /analyses/{id}/messages, /participants, /healthz",
            Service::Keycloak => "Keycloak: token endpoint, JWKS, POST /mint",
        }
    }
}

struct Stored {
    body: Bytes,
    content_type: Option<String>,
}

/// The signing key, and the JWKS that publishes its public half.
struct Signer {
    key: EncodingKey,
    kid: String,
    jwks: Value,
}

impl Signer {
    fn generate() -> Result<Signer, String> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| format!("generating a P-256 key: {e}"))?;
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).map_err(|e| format!("loading the P-256 key: {e}"))?;
        // The uncompressed point: 0x04, then the 32-byte x and y coordinates.
        let point = pair.public_key_raw();
        if point.len() != 65 || point[0] != 4 {
            return Err(format!("unexpected P-256 public key encoding ({} bytes)", point.len()));
        }
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        // A new key, a new kid: the proxy refetches the JWKS for a kid it does not know.
        let kid = format!("standin-{}", &b64(&point[1..33])[..12]);
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]), "kid": kid, "alg": "ES256", "use": "sig"});
        Ok(Signer { key, kid, jwks: json!({ "keys": [jwk] }) })
    }
}

struct State {
    log: Mutex<Box<dyn Write + Send>>,
    storage: Mutex<BTreeMap<String, Stored>>,
    messages: Mutex<BTreeMap<String, Vec<Value>>>,
    tokens_issued: AtomicU64,
    minted: AtomicU64,
    counter: AtomicU64,
    client_id: String,
    client_secret: String,
    issuer: String,
    signer: Signer,
}

impl State {
    /// One JSON line per request, flushed at once (before the response leaves, so a client that has its
    /// answer finds the line in the file).
    fn record(&self, service: Service, peer: SocketAddr, parts: &Parts, body: &[u8], status: StatusCode) {
        let time = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let mut line = json!({
            "time": (time * 1000.0).round() / 1000.0,
            "service": service.name(),
            "peer": peer.to_string(),
            "method": parts.method.as_str(),
            "target": target(parts),
            "path": parts.uri.path(),
            "authorization": parts.headers.get(AUTHORIZATION).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            "headers": parts.headers.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(),
            "body_length": body.len(),
            "status": status.as_u16(),
        });
        if body.len() <= LOGGED_BODY
            && let Ok(text) = std::str::from_utf8(body)
        {
            line["body"] = Value::from(text);
        }
        let mut out = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            eprintln!("tollgate-standins: writing the request log: {e}");
        }
    }
}

/// Path and query as the request named them.
fn target(parts: &Parts) -> String {
    parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned())
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, "application/json".parse().unwrap());
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, &json!({ "error": message.into() }))
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches('/').split('/').collect()
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

async fn handle(
    state: Arc<State>,
    service: Service,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let (body, response) = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => {
            let body = collected.to_bytes();
            let response = match service {
                Service::Hub => hub(&parts, &body),
                Service::Storage => storage(&state, &parts, &body),
                Service::Broker => broker(&state, &parts, &body),
                Service::Keycloak => keycloak(&state, &parts, &body),
            };
            (body, response)
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            (Bytes::new(), error(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {MAX_BODY} bytes")))
        }
        Err(e) => (Bytes::new(), error(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))),
    };
    state.record(service, peer, &parts, &body, response.status());
    Ok(response)
}

/// The hub adapter / Kong data source: answers anything with what it saw.
fn hub(parts: &Parts, body: &[u8]) -> Response<Full<Bytes>> {
    let headers: Map<String, Value> = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != AUTHORIZATION)
        .map(|(name, value)| (name.to_string(), Value::from(String::from_utf8_lossy(value.as_bytes()).into_owned())))
        .collect();
    let mut answer = json!({
        "service": "hub",
        "method": parts.method.as_str(),
        "path": target(parts),
        "authorization": parts.headers.get(AUTHORIZATION).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        "headers": headers,
        "body_length": body.len(),
    });
    // What the FLAME hub adapter and a FHIR data source answer, as far as an analysis reads them.
    let path = parts.uri.path();
    if path.starts_with("/kong/datastore/") {
        answer["data"] = json!([{"name": "standin-source"}]);
    } else if path.contains("/fhir/") {
        answer["resourceType"] = json!("Bundle");
        answer["total"] = json!(42);
    }
    reply(StatusCode::OK, &answer)
}

const AREAS: [&str; 3] = ["final", "local", "intermediate"];

/// The result service: bodies stored in memory under their path.
fn storage(state: &State, parts: &Parts, body: &Bytes) -> Response<Full<Bytes>> {
    let path = parts.uri.path();
    if !AREAS.contains(&segments(path)[0]) {
        return error(StatusCode::NOT_FOUND, format!("{path} is not in a storage area (/final, /local, /intermediate)"));
    }
    let mut stored = state.storage.lock().unwrap_or_else(|e| e.into_inner());
    match parts.method {
        Method::PUT | Method::POST => {
            let content_type = parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let replaced = stored.insert(path.to_owned(), Stored { body: body.clone(), content_type }).is_some();
            let status = if replaced { StatusCode::OK } else { StatusCode::CREATED };
            reply(status, &json!({ "stored": path, "bytes": body.len() }))
        }
        Method::GET | Method::HEAD => match stored.get(path) {
            Some(object) => {
                let mut response = Response::new(Full::new(object.body.clone()));
                let content_type = object.content_type.as_deref().unwrap_or("application/octet-stream");
                if let Ok(value) = content_type.parse() {
                    response.headers_mut().insert(CONTENT_TYPE, value);
                }
                response
            }
            None => {
                // An area or a "directory": list what is stored below it.
                let below = format!("{}/", path.trim_end_matches('/'));
                let objects: Vec<&String> = stored.keys().filter(|k| k.starts_with(&below)).collect();
                if objects.is_empty() {
                    error(StatusCode::NOT_FOUND, format!("nothing stored at {path}"))
                } else {
                    reply(StatusCode::OK, &json!({ "objects": objects }))
                }
            }
        },
        Method::DELETE => match stored.remove(path) {
            Some(_) => Response::builder().status(StatusCode::NO_CONTENT).body(Full::new(Bytes::new())).unwrap(),
            None => error(StatusCode::NOT_FOUND, format!("nothing stored at {path}")),
        },
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "storage takes GET, HEAD, PUT, POST and DELETE"),
    }
}

/// The message broker: messages kept per analysis, a fixed set of participants.
fn broker(state: &State, parts: &Parts, body: &[u8]) -> Response<Full<Bytes>> {
    let path = parts.uri.path();
    let segs = segments(path);
    let known = matches!(segs.as_slice(), ["healthz"])
        || matches!(segs.as_slice(), ["analyses", id, "messages" | "participants", ..] if !id.is_empty());
    let this_node = json!({"nodeId": "standin-node", "nodeType": "default"});
    match (&parts.method, segs.as_slice()) {
        (&Method::GET, ["healthz"]) => reply(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::POST, ["analyses", id, "messages"]) if !id.is_empty() => {
            let message = serde_json::from_slice::<Value>(body).unwrap_or_else(|_| Value::from(String::from_utf8_lossy(body).into_owned()));
            let n = state.counter.fetch_add(1, Ordering::SeqCst) + 1;
            let id = (*id).to_owned();
            state.messages.lock().unwrap_or_else(|e| e.into_inner()).entry(id.clone()).or_default().push(message);
            reply(StatusCode::CREATED, &json!({"id": format!("message-{n}"), "analysis": id}))
        }
        (&Method::GET, ["analyses", id, "messages"]) if !id.is_empty() => {
            let messages = state.messages.lock().unwrap_or_else(|e| e.into_inner()).get(*id).cloned().unwrap_or_default();
            reply(StatusCode::OK, &json!({"messages": messages}))
        }
        (&Method::POST, ["analyses", id, "messages", "subscriptions"]) if !id.is_empty() => {
            let n = state.counter.fetch_add(1, Ordering::SeqCst) + 1;
            reply(StatusCode::CREATED, &json!({"id": format!("subscription-{n}"), "analysis": id}))
        }
        (&Method::GET, ["analyses", id, "participants"]) if !id.is_empty() => {
            reply(StatusCode::OK, &json!([this_node, {"nodeId": "standin-aggregator", "nodeType": "aggregator"}]))
        }
        (&Method::GET, ["analyses", id, "participants", "self"]) if !id.is_empty() => reply(StatusCode::OK, &this_node),
        _ if known => error(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not served on {path}", parts.method)),
        _ => error(StatusCode::NOT_FOUND, format!("no broker endpoint at {path}")),
    }
}

/// Keycloak: the realm `flame`'s token endpoint, JWKS and discovery document, and `POST /mint`.
fn keycloak(state: &State, parts: &Parts, body: &[u8]) -> Response<Full<Bytes>> {
    match (&parts.method, parts.uri.path()) {
        (&Method::POST, TOKEN_PATH) => token(state, parts, body),
        (&Method::GET, CERTS_PATH) => reply(StatusCode::OK, &state.signer.jwks),
        (&Method::GET, DISCOVERY_PATH) => reply(
            StatusCode::OK,
            &json!({
                "issuer": state.issuer,
                "token_endpoint": format!("{}/protocol/openid-connect/token", state.issuer),
                "jwks_uri": format!("{}/protocol/openid-connect/certs", state.issuer),
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
                "id_token_signing_alg_values_supported": ["ES256"],
            }),
        ),
        (&Method::POST, "/mint") => mint(state, parts, body),
        (_, TOKEN_PATH | "/mint") => error(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        (_, CERTS_PATH | DISCOVERY_PATH) => error(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
        (_, path) => error(StatusCode::NOT_FOUND, format!("no Keycloak endpoint at {path} (realm {REALM})")),
    }
}

/// Client credentials, as client_secret_post (form fields) or client_secret_basic (Authorization: Basic).
fn token(state: &State, parts: &Parts, body: &[u8]) -> Response<Full<Bytes>> {
    let form: BTreeMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let oauth_error = |status, error: &str, description: &str| reply(status, &json!({"error": error, "error_description": description}));
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "only grant_type=client_credentials is served here");
    }
    let basic = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|pair| pair.split_once(':').map(|(id, secret)| (id.to_owned(), secret.to_owned())));
    let (id, secret) = match (basic, form.get("client_id"), form.get("client_secret")) {
        (Some(pair), _, _) => pair,
        (None, Some(id), Some(secret)) => (id.clone(), secret.clone()),
        _ => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client credentials missing"),
    };
    if id != state.client_id || secret != state.client_secret {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Invalid client or Invalid client credentials");
    }
    let n = state.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
    let mut response =
        reply(StatusCode::OK, &json!({"access_token": format!("standin-token-{n}"), "token_type": "Bearer", "expires_in": TOKEN_LIFETIME}));
    response.headers_mut().insert(CACHE_CONTROL, "no-store".parse().unwrap());
    response
}

/// A JWT signed with the served key: for callers of the proxy's JWT-checked ingress.
/// Parameters in the query or the body (JSON object or form): `client` (default message-broker; the
/// `azp` and `client_id` claims), `audience` (default flame-analysis; a string or a list in JSON),
/// `expires_in` (seconds, default 300, -86400..=86400: negative gives an expired token), `sub`.
fn mint(state: &State, parts: &Parts, body: &[u8]) -> Response<Full<Bytes>> {
    let mut params: Map<String, Value> = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::from(v.into_owned())))
        .collect();
    if !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(object)) => params.extend(object),
            Ok(_) => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object or a form"),
            Err(_) => params.extend(form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), Value::from(v.into_owned())))),
        }
    }
    if let Some(unknown) = params.keys().find(|k| !["client", "audience", "expires_in", "sub"].contains(&k.as_str())) {
        return error(StatusCode::BAD_REQUEST, format!("unknown parameter {unknown:?} (known: client, audience, expires_in, sub)"));
    }
    let text = |name: &str, default: &str| -> Result<String, String> {
        match params.get(name) {
            None => Ok(default.to_owned()),
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(other) => Err(format!("{name} must be a non-empty string, not {other}")),
        }
    };
    let client = match text("client", "message-broker") {
        Ok(client) => client,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let sub = match text("sub", &format!("service-account-{client}")) {
        Ok(sub) => sub,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let audience = match params.get("audience") {
        None => Value::from(AUDIENCE),
        Some(Value::String(s)) if !s.is_empty() => Value::from(s.clone()),
        Some(Value::Array(list)) if !list.is_empty() && list.iter().all(|a| a.as_str().is_some_and(|s| !s.is_empty())) => {
            Value::Array(list.clone())
        }
        Some(other) => return error(StatusCode::BAD_REQUEST, format!("audience must be a string or a list of strings, not {other}")),
    };
    let expires_in = match params.get("expires_in") {
        None => Some(TOKEN_LIFETIME as i64),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    };
    let Some(expires_in) = expires_in.filter(|e| (-86400..=86400).contains(e)) else {
        return error(StatusCode::BAD_REQUEST, "expires_in must be a whole number of seconds from -86400 to 86400");
    };
    let n = state.minted.fetch_add(1, Ordering::SeqCst) + 1;
    let now = now();
    let claims = json!({
        "iss": state.issuer,
        "aud": audience,
        "azp": client,
        "client_id": client,
        "sub": sub,
        "typ": "Bearer",
        "jti": format!("standin-jwt-{n}"),
        "iat": now,
        "nbf": now,
        "exp": now + expires_in,
    });
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(state.signer.kid.clone());
    match jsonwebtoken::encode(&header, &claims, &state.signer.key) {
        Ok(jwt) => reply(StatusCode::OK, &json!({"access_token": jwt, "token_type": "Bearer", "expires_in": expires_in, "claims": claims})),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("signing: {e}")),
    }
}

/// YAML single-quoted scalar.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A tollgate-proxy config for the FLAME routes, pointed at these stand-ins by literal IP (the proxy
/// sends credentials to a local address only when the config names it literally).
fn proxy_config(cli: &Cli) -> String {
    let url = |port| format!("http://{}", SocketAddr::new(cli.listen, port));
    let (hub, storage, broker, keycloak) = (url(cli.hub_port), url(cli.storage_port), url(cli.broker_port), url(cli.keycloak_port));
    let issuer = format!("{keycloak}{REALM}");
    format!(
        "# tollgate-proxy config for the FLAME routes, pointed at tollgate-standins on {listen}
# (generated by `tollgate-standins --print-config`). Upstreams are literal IPs: the proxy sends a token or
# client secret to a local address only when the config names it literally.
# {{analysis_id}} and {{project_id}} come from TOLLGATE_ANALYSIS_ID / TOLLGATE_PROJECT_ID.

identity:
  tokenUrl: {token_url}
  clientIdFile: {client_id_file}
  clientSecretFile: {client_secret_file}

routes:
  - name: hub-datastore
    prefix: /hub-adapter/kong/datastore/{{project_id}}
    upstream: {hub_datastore}
    methods: [GET, HEAD]
    auth: token

  - name: kong
    prefix: /kong
    upstream: {hub}
    methods: [GET, HEAD, POST, PUT, PATCH, DELETE]
    auth: token

  - name: storage
    prefix: /storage
    allow: [/final, /final/**, /local, /local/**, /intermediate, /intermediate/**]
    methods: [GET, HEAD, POST, PUT, DELETE]
    upstream: {storage}
    auth: token
    maxRequestBody: 256Mi

  - name: message-broker
    prefix: /message-broker
    allow:
      - /analyses/{{analysis_id}}/participants
      - /analyses/{{analysis_id}}/participants/self
      - /analyses/{{analysis_id}}/messages
      - /analyses/{{analysis_id}}/messages/subscriptions
      - /healthz
    methods: [GET, POST]
    upstream: {broker}
    auth: token

ingress:
  upstream: {ingress_upstream}
  jwksUrl: {jwks_url}
  issuer: {issuer_quoted}
  audiences: [{AUDIENCE}]
  algorithms: [ES256]
  allowedClients: [message-broker, pod-orchestrator]
  claimHeaders: {{ azp: X-Tollgate-Client }}
",
        listen = cli.listen,
        token_url = quoted(&format!("{keycloak}{TOKEN_PATH}")),
        client_id_file = quoted(&cli.client_id_file),
        client_secret_file = quoted(&cli.client_secret_file),
        hub_datastore = quoted(&format!("{hub}/kong/datastore/{{project_id}}")),
        hub = quoted(&hub),
        storage = quoted(&storage),
        broker = quoted(&broker),
        ingress_upstream = quoted(&cli.ingress_upstream),
        jwks_url = quoted(&format!("{keycloak}{CERTS_PATH}")),
        issuer_quoted = quoted(&issuer),
    )
}

fn check(cli: &Cli) -> Result<(), String> {
    if cli.listen.is_unspecified() {
        return Err(format!(
            "--listen {} is not an address pods can be sent to: give the one they reach (e.g. 10.88.0.1); it is also the issuer's host",
            cli.listen
        ));
    }
    for (i, a) in Service::ALL.iter().enumerate() {
        let port = a.port(cli);
        if port == 0 && cli.print_config {
            return Err(format!("{} 0: --print-config needs the real port", a.flag()));
        }
        if let Some(b) = Service::ALL[..i].iter().find(|b| port != 0 && b.port(cli) == port) {
            return Err(format!("{} and {} are both {port}: each stand-in needs its own port", b.flag(), a.flag()));
        }
    }
    Ok(())
}

async fn bind(cli: &Cli, service: Service) -> Result<TcpListener, String> {
    let addr = SocketAddr::new(cli.listen, service.port(cli));
    TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "{}: port {} on {} is already in use (another tollgate-standins still running?); choose another with {}",
            service.name(),
            addr.port(),
            addr.ip(),
            service.flag()
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "{}: {} is not an address of this machine (is the cluster's bridge up? see `ip -brief address`)",
            service.name(),
            addr.ip()
        ),
        std::io::ErrorKind::PermissionDenied => format!("{}: not allowed to listen on {addr}: {e}", service.name()),
        _ => format!("{}: listening on {addr}: {e}", service.name()),
    })
}

async fn serve(listener: TcpListener, service: Service, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little rather than spin.
                        eprintln!("tollgate-standins: {}: accepting: {e}", service.name());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let state = state.clone();
                let handler = service_fn(move |request| handle(state.clone(), service, peer, request));
                let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), handler);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown()).await.is_err() {
        eprintln!("tollgate-standins: {}: requests still open after {GRACE:?}, closing", service.name());
    }
}

async fn stop_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("tollgate-standins: cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut listeners = Vec::new();
    for service in Service::ALL {
        listeners.push((service, bind(&cli, service).await?));
    }
    let port =
        |service: Service| listeners.iter().find(|(s, _)| *s == service).and_then(|(_, l)| l.local_addr().ok()).map_or(0, |a| a.port());
    let issuer = format!("http://{}{REALM}", SocketAddr::new(cli.listen, port(Service::Keycloak)));
    let log: Box<dyn Write + Send> = match &cli.log {
        Some(path) => Box::new(
            std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| format!("--log {}: {e}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let state = Arc::new(State {
        log: Mutex::new(log),
        storage: Mutex::default(),
        messages: Mutex::default(),
        tokens_issued: AtomicU64::new(0),
        minted: AtomicU64::new(0),
        counter: AtomicU64::new(0),
        client_id: cli.client_id.clone(),
        client_secret: cli.client_secret.clone(),
        issuer: issuer.clone(),
        signer: Signer::generate()?,
    });

    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "tollgate-standins on {}", cli.listen);
    for (service, listener) in &listeners {
        if let Ok(addr) = listener.local_addr() {
            let _ = writeln!(out, "  {:<9} http://{addr}  ({})", service.name(), service.what());
        }
    }
    let _ = writeln!(out, "issuer: {issuer}");
    let _ = writeln!(out, "jwks: {}{CERTS_PATH}  (kid {}, ES256)", issuer.trim_end_matches(REALM), state.signer.kid);
    let _ = writeln!(out, "client: {} (client_secret_post or client_secret_basic)", cli.client_id);
    let _ = writeln!(out, "requests: {}", cli.log.as_ref().map_or_else(|| "stdout".to_owned(), |p| p.display().to_string()));
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    drop(out);

    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> =
        listeners.into_iter().map(|(service, listener)| tokio::spawn(serve(listener, service, state.clone(), stop_rx.clone()))).collect();
    let signal = stop_signal().await;
    eprintln!("tollgate-standins: {signal}: stopping (open requests get {GRACE:?})");
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    let _ = state.log.lock().unwrap_or_else(|e| e.into_inner()).flush();
    eprintln!("tollgate-standins: stopped");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = check(&cli) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if cli.print_config {
        print!("{}", proxy_config(&cli));
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
