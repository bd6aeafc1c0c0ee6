//! The proxy's configuration: one YAML file, validated at start; every error names its path
//! (`routes[3].upstream: ...`). The raw structs mirror the file; [`Config::load`] turns them into the
//! checked, compiled form the proxy runs on.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::names;
use crate::proxy::routes::{Answer, AuthMode, Destination, Pattern, Route, Upstream};
use crate::units::{parse_bytes, parse_duration};

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listen: RawListen,
    pub identity: Option<RawIdentity>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    pub ingress: Option<RawIngress>,
    #[serde(default)]
    pub tls: RawTls,
    /// `http://host:port` of an HTTP CONNECT proxy for all egress (corporate networks).
    pub forward_proxy: Option<String>,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub connections: RawConnections,
    /// Headers that carry credentials: removed from every request on every listener, like `Authorization`.
    /// Default `[apikey, x-api-key]`; every route's `apiKeyHeader` is added to them.
    pub credential_headers: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawListen {
    pub egress: Option<String>,
    pub ingress: Option<String>,
    pub admin: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawIdentity {
    pub token_url: String,
    pub client_id_file: PathBuf,
    pub client_secret_file: PathBuf,
    pub scope: Option<String>,
    pub refresh_before: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub prefix: String,
    #[serde(default)]
    pub allow: Vec<String>,
    pub methods: Option<Vec<String>>,
    /// Where to forward; a route has this or `answer`.
    pub upstream: Option<String>,
    /// Answered by the proxy itself instead of an upstream.
    pub answer: Option<RawAnswer>,
    #[serde(default = "yes")]
    pub strip_prefix: bool,
    #[serde(default)]
    pub auth: RawAuth,
    pub bearer_file: Option<PathBuf>,
    /// With `auth: apiKeyFile`: the header the key goes in (default `apikey`, Kong's key-auth).
    pub api_key_header: Option<String>,
    /// With `auth: apiKeyFile`: the file holding the key, re-read when it changes.
    pub api_key_file: Option<PathBuf>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub max_request_body: Option<Size>,
    pub byte_budget: Option<Size>,
    /// Forward percent-encoded non-ASCII characters (valid UTF-8) in paths; off by default.
    #[serde(default)]
    pub allow_non_ascii_path: bool,
    /// Forward protocol upgrades (WebSocket, …); off by default. After the 101 the connection is an opaque
    /// tunnel: nothing in it is checked.
    #[serde(default)]
    pub allow_upgrade: bool,
}

/// The JSON Schema of a config file (and of the Helm chart's `proxyConfig` value). What a schema cannot say
/// (route names unique, URLs well-formed, durations in range) [`Config::load`] checks, naming the path.
pub fn schema() -> serde_json::Value {
    let schema = schemars::generate::SchemaSettings::draft07()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<RawConfig>();
    let mut schema = schema.to_value();
    if let serde_json::Value::Object(map) = &mut schema {
        map.remove("$schema");
        map.remove("title");
    }
    schema
}

/// A byte size as written: `10Mi`, or a plain number of bytes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn parse(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(text) => parse_bytes(text),
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RawAuth {
    #[default]
    None,
    Token,
    BearerFile,
    ApiKeyFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RawAnswer {
    /// 200 `healthy` while the proxy is ready, 503 otherwise.
    Ready,
}

/// What the ingress does with a call that carries no `Authorization` at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WithoutToken {
    /// 401: every caller proves who it is with a JWT.
    #[default]
    Refuse,
    /// Forwarded: for callers that cannot send a token (FLAME's message broker). Who may connect at all is then
    /// decided by the NetworkPolicy in front of the ingress port alone; a call that does send a token must still
    /// carry a valid one.
    Admit,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawIngress {
    pub upstream: String,
    /// Only paths under this prefix (whole segments) are admitted, and forwarded without it (`/analysis/healthz`
    /// reaches the app as `/healthz`).
    pub prefix: Option<String>,
    #[serde(default)]
    pub without_token: WithoutToken,
    pub jwks_url: String,
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default = "yes")]
    pub require_audience: bool,
    pub algorithms: Vec<String>,
    pub leeway: Option<String>,
    #[serde(default)]
    pub allowed_clients: Vec<String>,
    #[serde(default)]
    pub forward_token: bool,
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    pub jwks_refetch_interval: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawTls {
    /// PEM bundle of extra CAs trusted for https upstreams, besides the system roots.
    pub extra_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawShutdown {
    pub grace: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawConnections {
    pub head_timeout: Option<String>,
    pub max_head_size: Option<Size>,
    pub max_per_listener: Option<u64>,
    pub max_per_peer: Option<u64>,
}

// The route table's problems are named by their fields (`routes[2].upstream`), like the policy's: one type.
pub use crate::errors::{FieldError as ConfigError, FieldErrors as ConfigErrors};

/// Values from the pod: ids for route placeholders, and listen addresses the webhook chose.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub analysis_id: Option<String>,
    pub project_id: Option<String>,
    pub egress_listen: Option<String>,
    pub ingress_listen: Option<String>,
    pub admin_listen: Option<String>,
    /// Names that mean this proxy's egress listener inside the pod (the webhook maps them to 127.0.0.1 in the
    /// pod's /etc/hosts): `TOLLGATE_EGRESS_HOSTNAMES`, comma-separated.
    pub egress_hostnames: Vec<String>,
}

impl Environment {
    pub fn from_process() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Environment {
            analysis_id: var(names::ENV_ANALYSIS_ID),
            project_id: var(names::ENV_PROJECT_ID),
            egress_listen: var(names::ENV_EGRESS_LISTEN),
            ingress_listen: var(names::ENV_INGRESS_LISTEN),
            admin_listen: var(names::ENV_ADMIN_LISTEN),
            egress_hostnames: var(names::ENV_EGRESS_HOSTNAMES)
                .map_or_else(Vec::new, |names| names.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub token_url: Upstream,
    pub client_id_file: PathBuf,
    pub client_secret_file: PathBuf,
    pub scope: Option<String>,
    pub refresh_before: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Ingress {
    pub upstream: Upstream,
    /// Only paths under it, forwarded without it.
    pub prefix: Option<Pattern>,
    pub without_token: WithoutToken,
    pub jwks_url: Upstream,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub require_audience: bool,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub leeway: Duration,
    pub allowed_clients: Vec<String>,
    pub forward_token: bool,
    pub claim_headers: BTreeMap<String, String>,
    pub jwks_refetch_interval: Duration,
}

impl Ingress {
    /// What the app gets for a checked request target: the prefix taken off (whole segments) and the upstream's
    /// base path put in front; `None` when the path is not under the prefix.
    pub fn app_target(&self, target: &crate::proxy::target::SafeTarget) -> Option<String> {
        let path = match &self.prefix {
            None => target.path.clone(),
            Some(prefix) => {
                let segments: Vec<&str> = target.segments().filter(|s| !s.is_empty()).collect();
                format!("/{}", prefix.strip(&segments)?.join("/"))
            }
        };
        Some(target.with_path(&format!("{}{path}", self.upstream.base_path)))
    }
}

/// What one listener allows (enforced by the proxy's connection guard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request head must be whole this long after the connection opened (first request) or after its
    /// first byte arrived (later requests on a kept-alive connection).
    pub head_timeout: Duration,
    /// Request line and headers together, in bytes.
    pub max_head_size: usize,
    /// Open connections on the listener.
    pub max_per_listener: usize,
    /// Open connections from one peer address; `None` where every peer is the pod itself (egress).
    pub max_per_peer: Option<usize>,
}

/// The checked configuration the proxy runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub egress_listen: SocketAddr,
    pub ingress_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub identity: Option<Identity>,
    pub routes: Vec<Route>,
    pub ingress: Option<Ingress>,
    pub extra_ca_file: Option<PathBuf>,
    pub forward_proxy: Option<Upstream>,
    pub shutdown_grace: Duration,
    /// The bounds on every listener's connections (connections.rs); `max_per_peer` is for the listeners
    /// outside callers reach, ingress and admin.
    pub connections: Limits,
    /// What this pod cannot use because it lacks an id a placeholder needs: routes (and allow entries)
    /// left out, so they are refused like any path without a route, never widened.
    pub disabled: Vec<Disabled>,
    /// Removed from every request on every listener (`credentialHeaders` and every route's `apiKeyHeader`).
    pub credential_headers: Vec<http::HeaderName>,
    /// The names that mean the egress listener inside the pod (lowercase).
    pub egress_hostnames: Vec<String>,
}

/// A route, or one allow entry of it, left out for a missing placeholder value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    /// `routes[3]` or `routes[3].allow[0]`, with the route's name.
    pub path: String,
    pub route: String,
    /// The environment variable the pod does not have (`TOLLGATE_ANALYSIS_ID`, `TOLLGATE_PROJECT_ID`).
    pub missing: &'static str,
}

struct Checker {
    errors: Vec<ConfigError>,
}

impl Checker {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    fn check<T>(&mut self, path: impl Into<String>, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.error(path, message)).ok()
    }
}

/// An id that fills a placeholder must be one safe path segment.
pub fn check_id(id: &str) -> Result<(), String> {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '+' | '=' | '~');
    if id.is_empty() || id.len() > 253 || id == "." || id == ".." || !id.chars().all(safe) {
        return Err(format!("{id:?} is not a safe id (1 to 253 of letters, digits and - _ . : @ + = ~, not a dot segment)"));
    }
    Ok(())
}

const PLACEHOLDERS: [(&str, &str); 2] = [("{analysis_id}", names::ENV_ANALYSIS_ID), ("{project_id}", names::ENV_PROJECT_ID)];

/// The first placeholder of `text` whose value this pod does not have, as its environment variable.
fn missing(text: &str, env: &Environment) -> Option<&'static str> {
    PLACEHOLDERS
        .iter()
        .zip([&env.analysis_id, &env.project_id])
        .find(|((p, _), v)| text.contains(p) && v.is_none())
        .map(|((_, var), _)| *var)
}

fn fill(text: &str, env: &Environment) -> Result<String, String> {
    let mut out = text.to_owned();
    for ((placeholder, var), value) in PLACEHOLDERS.iter().zip([&env.analysis_id, &env.project_id]) {
        if out.contains(placeholder) {
            let value = value.as_deref().ok_or_else(|| format!("uses {placeholder} but {var} is not set"))?;
            check_id(value).map_err(|e| format!("{var}: {e}"))?;
            out = out.replace(placeholder, value);
        }
    }
    if let Some(start) = out.find('{') {
        return Err(format!("unknown placeholder in {text:?} at {:?} (known: {{analysis_id}}, {{project_id}})", &out[start..]));
    }
    Ok(out)
}

/// The env's address (the webhook renders it from the policy's ports), else the file's, else the default.
fn listen(raw: Option<&String>, env: Option<&String>, default: (Ipv4Addr, u16)) -> Result<SocketAddr, String> {
    let Some(text) = env.or(raw) else { return Ok(SocketAddr::from(default)) };
    text.parse().map_err(|_| format!("{text:?} is not an address like 127.0.0.1:15001"))
}

/// `connections`, each field within bounds that keep a listener both usable and cheap to hold.
fn connection_limits(c: &mut Checker, raw: &RawConnections) -> Option<Limits> {
    let within = |value: u64, min: u64, max: u64, unit: &str| {
        if (min..=max).contains(&value) { Ok(value) } else { Err(format!("must be between {min} and {max}{unit} (is {value}{unit})")) }
    };
    let head_timeout = c.check(
        "connections.headTimeout",
        parse_duration(raw.head_timeout.as_deref().unwrap_or("10s")).and_then(|d| {
            if (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&d) { Ok(d) } else { Err("must be between 1s and 60s".into()) }
        }),
    );
    // pingora refuses heads over 1 MiB itself; below 4 KiB a token-carrying request no longer fits.
    let max_head_size = c.check(
        "connections.maxHeadSize",
        raw.max_head_size.as_ref().map_or(Ok(32 << 10), Size::parse).and_then(|n| within(n, 4 << 10, 1 << 20, " bytes")),
    );
    let max_per_listener = c.check("connections.maxPerListener", within(raw.max_per_listener.unwrap_or(1024), 1, 1 << 20, ""));
    let max_per_peer = c.check("connections.maxPerPeer", within(raw.max_per_peer.unwrap_or(128), 1, 1 << 20, ""));
    if let (Some(listener), Some(peer)) = (max_per_listener, max_per_peer)
        && peer > listener
    {
        c.error("connections.maxPerPeer", format!("{peer} is more than connections.maxPerListener ({listener})"));
    }
    Some(Limits {
        head_timeout: head_timeout?,
        max_head_size: usize::try_from(max_head_size?).ok()?,
        max_per_listener: usize::try_from(max_per_listener?).ok()?,
        max_per_peer: Some(usize::try_from(max_per_peer?).ok()?),
    })
}

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// What one raw route becomes: a route, or what of it this pod cannot use.
enum Compiled {
    /// The route, and the allow entries of it that were left out.
    Route(Box<Route>, Vec<Disabled>),
    /// All of it.
    LeftOut(Disabled),
}

/// A header name as the config writes it: lowercase letters, digits and `-` (a `_` would pass for `-` at
/// CGI-style servers).
fn header_name(text: &str) -> Result<http::HeaderName, String> {
    let lower = text.to_ascii_lowercase();
    if text.is_empty() || !lower.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("{text:?} is not a header name (letters, digits and '-')"));
    }
    http::HeaderName::from_bytes(lower.as_bytes()).map_err(|e| format!("{text:?}: {e}"))
}

/// `credentialHeaders` (default `apikey`, `x-api-key`) and every route's `apiKeyHeader`, without repeats.
fn credential_headers(c: &mut Checker, raw: &RawConfig) -> Vec<http::HeaderName> {
    let defaults = || vec!["apikey".to_owned(), "x-api-key".to_owned()];
    let mut names: Vec<http::HeaderName> = Vec::new();
    for (j, text) in raw.credential_headers.clone().unwrap_or_else(defaults).iter().enumerate() {
        let path = format!("credentialHeaders[{j}]");
        match header_name(text) {
            Ok(name) if matches!(name.as_str(), "host" | "content-length" | "transfer-encoding" | "connection") => {
                c.error(path, format!("{text:?} frames or addresses the request; it cannot be a credential header"));
            }
            Ok(name) => names.push(name),
            Err(e) => c.error(path, e),
        }
    }
    for r in &raw.routes {
        if r.auth == RawAuth::ApiKeyFile
            && let Ok(name) = header_name(r.api_key_header.as_deref().unwrap_or(DEFAULT_API_KEY_HEADER))
        {
            names.push(name);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

const DEFAULT_API_KEY_HEADER: &str = "apikey";

/// `TOLLGATE_EGRESS_HOSTNAMES`: each a DNS name (RFC 1123), kept lowercase.
fn egress_hostnames(c: &mut Checker, env: &Environment) -> Vec<String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let mut names = Vec::new();
    for name in &env.egress_hostnames {
        if name.len() > 253 || !name.split('.').all(label_ok) {
            c.error("TOLLGATE_EGRESS_HOSTNAMES", format!("{name:?} is not a DNS name"));
        } else {
            names.push(name.to_ascii_lowercase());
        }
    }
    names
}

fn not_own_name(c: &mut Checker, path: &str, host: &str, own: &[String]) {
    if own.iter().any(|name| name.eq_ignore_ascii_case(host)) {
        c.error(path, format!("{host:?} is one of this pod's names for the proxy itself (TOLLGATE_EGRESS_HOSTNAMES)"));
    }
}

/// One route, checked in full; `None` when it has errors (recorded in `c`).
fn compile_route(
    c: &mut Checker,
    i: usize,
    r: &RawRoute,
    has_identity: bool,
    env: &Environment,
    checked_env: &Environment,
    own_names: &[String],
) -> Option<Compiled> {
    let at = |field: &str| format!("routes[{i}].{field}");
    let prefix = c.check(at("prefix"), fill(&r.prefix, checked_env).and_then(|p| Pattern::prefix(&p)));
    let allow: Vec<Option<Pattern>> = r
        .allow
        .iter()
        .enumerate()
        .map(|(j, a)| c.check(at(&format!("allow[{j}]")), fill(a, checked_env).and_then(|a| Pattern::rest(&a))))
        .collect();
    let upstream_text = r.upstream.as_deref().unwrap_or("");
    let route_missing = missing(&r.prefix, env).or_else(|| missing(upstream_text, env));
    let allow_missing: Vec<Option<&'static str>> = r.allow.iter().map(|a| missing(a, env)).collect();
    let methods = r.methods.clone().unwrap_or_else(|| vec!["GET".into(), "HEAD".into()]);
    for (j, method) in methods.iter().enumerate() {
        if !METHODS.contains(&method.as_str()) {
            c.error(at(&format!("methods[{j}]")), format!("{method:?} is not one of {}", METHODS.join(", ")));
        }
    }
    let destination = destination(c, i, r, checked_env, own_names);
    let auth = auth_mode(c, i, r, has_identity);
    let connect_timeout = c.check(at("connectTimeout"), parse_duration(r.connect_timeout.as_deref().unwrap_or("10s")));
    let read_timeout = c.check(at("readTimeout"), parse_duration(r.read_timeout.as_deref().unwrap_or("60s")));
    let max_request_body = c.check(at("maxRequestBody"), r.max_request_body.as_ref().map_or(Ok(10 << 20), Size::parse));
    let byte_budget = match &r.byte_budget {
        Some(size) => c.check(at("byteBudget"), size.parse()).map(Some),
        None => Some(None),
    };
    let (prefix, destination, auth, connect_timeout, read_timeout, max_request_body, byte_budget) =
        (prefix?, destination?, auth?, connect_timeout?, read_timeout?, max_request_body?, byte_budget?);
    if allow.iter().any(Option::is_none) {
        return None;
    }
    let usable: Vec<Pattern> =
        allow.into_iter().zip(&allow_missing).filter(|(_, gone)| gone.is_none()).filter_map(|(pattern, _)| pattern).collect();
    // Without its allow entries a route would allow everything under its prefix: it goes too.
    let emptied = !r.allow.is_empty() && usable.is_empty();
    if let Some(var) = route_missing.or_else(|| emptied.then(|| allow_missing.iter().flatten().next().copied()).flatten()) {
        return Some(Compiled::LeftOut(Disabled { path: format!("routes[{i}]"), route: r.name.clone(), missing: var }));
    }
    // The route stays, less the allow entries it cannot fill; what went is listed beside it.
    let left_out: Vec<Disabled> = allow_missing
        .iter()
        .enumerate()
        .filter_map(|(j, gone)| gone.map(|var| Disabled { path: at(&format!("allow[{j}]")), route: r.name.clone(), missing: var }))
        .collect();
    let route = Route {
        name: r.name.clone(),
        prefix,
        allow: usable,
        methods,
        destination,
        strip_prefix: r.strip_prefix,
        auth,
        connect_timeout,
        read_timeout,
        max_request_body,
        byte_budget,
        allow_non_ascii_path: r.allow_non_ascii_path,
        allow_upgrade: r.allow_upgrade,
    };
    Some(Compiled::Route(Box::new(route), left_out))
}

/// `upstream` or `answer`, exactly one.
fn destination(c: &mut Checker, i: usize, r: &RawRoute, checked_env: &Environment, own_names: &[String]) -> Option<Destination> {
    let at = |field: &str| format!("routes[{i}].{field}");
    match (&r.upstream, r.answer) {
        (Some(url), None) => {
            let upstream = c.check(at("upstream"), fill(url, checked_env).and_then(|u| Upstream::parse(&u)))?;
            not_own_name(c, &at("upstream"), &upstream.host, own_names);
            Some(Destination::Upstream(upstream))
        }
        (None, Some(RawAnswer::Ready)) => {
            if r.auth != RawAuth::None {
                c.error(at("auth"), "a route the proxy answers itself sends no credential (auth: none)");
            }
            Some(Destination::Answer(Answer::Ready))
        }
        (Some(_), Some(_)) => {
            c.error(at("answer"), "a route has an upstream or an answer, not both");
            None
        }
        (None, None) => {
            c.error(at("upstream"), "required (or answer: ready, for a route the proxy answers itself)");
            None
        }
    }
}

fn auth_mode(c: &mut Checker, i: usize, r: &RawRoute, has_identity: bool) -> Option<AuthMode> {
    let at = |field: &str| format!("routes[{i}].{field}");
    let mut ok = true;
    if r.bearer_file.is_some() && r.auth != RawAuth::BearerFile {
        c.error(at("bearerFile"), "only allowed when auth is bearerFile");
        ok = false;
    }
    for (field, set) in [("apiKeyFile", r.api_key_file.is_some()), ("apiKeyHeader", r.api_key_header.is_some())] {
        if set && r.auth != RawAuth::ApiKeyFile {
            c.error(at(field), "only allowed when auth is apiKeyFile");
            ok = false;
        }
    }
    let mode = match r.auth {
        RawAuth::None => Some(AuthMode::None),
        RawAuth::Token => {
            if !has_identity {
                c.error(at("auth"), "token needs the identity section (token endpoint and client credentials)");
            }
            Some(AuthMode::Token)
        }
        RawAuth::BearerFile => match &r.bearer_file {
            Some(file) => Some(AuthMode::BearerFile(file.clone())),
            None => {
                c.error(at("bearerFile"), "required when auth is bearerFile");
                None
            }
        },
        RawAuth::ApiKeyFile => {
            let header = c.check(at("apiKeyHeader"), header_name(r.api_key_header.as_deref().unwrap_or(DEFAULT_API_KEY_HEADER)));
            let header = header.filter(|h| {
                let owned = crate::proxy::headers::is_reserved(h.as_str());
                if owned {
                    c.error(at("apiKeyHeader"), format!("{:?} is a header the proxy owns", h.as_str()));
                }
                !owned
            });
            match (&r.api_key_file, header) {
                (Some(file), Some(header)) => Some(AuthMode::ApiKeyFile { header, file: file.clone() }),
                (None, _) => {
                    c.error(at("apiKeyFile"), "required when auth is apiKeyFile");
                    None
                }
                _ => None,
            }
        }
    };
    mode.filter(|_| ok)
}

fn compile_ingress(c: &mut Checker, ing: &RawIngress) -> Option<Ingress> {
    let upstream = c.check("ingress.upstream", Upstream::parse(&ing.upstream));
    let jwks_url = c.check("ingress.jwksUrl", Upstream::parse(&ing.jwks_url));
    let prefix = match &ing.prefix {
        Some(text) => c
            .check(
                "ingress.prefix",
                Pattern::prefix(text)
                    .and_then(|p| if p.is_root() { Err(format!("{text:?} is every path: leave prefix out instead")) } else { Ok(p) }),
            )
            .map(Some),
        None => Some(None),
    };
    if ing.issuer.is_empty() {
        c.error("ingress.issuer", "required: tokens must name their issuer");
    }
    if ing.require_audience && ing.audiences.is_empty() {
        c.error(
            "ingress.audiences",
            "at least one audience is required (or set requireAudience: false, e.g. for Keycloak clients without an audience mapper)",
        );
    }
    if ing.algorithms.is_empty() {
        c.error("ingress.algorithms", "pin at least one of RS256, ES256, PS256, EdDSA");
    }
    let algorithms: Vec<Option<jsonwebtoken::Algorithm>> =
        ing.algorithms.iter().enumerate().map(|(j, a)| c.check(format!("ingress.algorithms[{j}]"), algorithm(a))).collect();
    for (claim, header) in &ing.claim_headers {
        let lower = header.to_ascii_lowercase();
        if claim.is_empty() {
            c.error("ingress.claimHeaders", "a claim name must not be empty");
        } else if http::HeaderName::from_bytes(header.as_bytes()).is_err() || header.contains('_') {
            c.error(format!("ingress.claimHeaders.{claim}"), format!("{header:?} is not a header name (letters, digits and '-')"));
        } else if crate::proxy::headers::is_reserved(&lower) {
            c.error(format!("ingress.claimHeaders.{claim}"), format!("{header:?} is a header the proxy owns"));
        }
    }
    let leeway = c.check("ingress.leeway", parse_duration(ing.leeway.as_deref().unwrap_or("30s")));
    let refetch = c.check(
        "ingress.jwksRefetchInterval",
        parse_duration(ing.jwks_refetch_interval.as_deref().unwrap_or("30s"))
            .and_then(|d| if d < Duration::from_secs(1) { Err("must be at least 1s".into()) } else { Ok(d) }),
    );
    Some(Ingress {
        upstream: upstream?,
        prefix: prefix?,
        without_token: ing.without_token,
        jwks_url: jwks_url?,
        issuer: ing.issuer.clone(),
        audiences: ing.audiences.clone(),
        require_audience: ing.require_audience,
        algorithms: algorithms.into_iter().collect::<Option<Vec<_>>>()?,
        leeway: leeway?,
        allowed_clients: ing.allowed_clients.clone(),
        forward_token: ing.forward_token,
        claim_headers: ing.claim_headers.clone(),
        jwks_refetch_interval: refetch?,
    })
}

/// An ingress algorithm by its JOSE name: asymmetric ones only.
fn algorithm(name: &str) -> Result<jsonwebtoken::Algorithm, String> {
    use jsonwebtoken::Algorithm::*;
    match name {
        "RS256" => Ok(RS256),
        "RS384" => Ok(RS384),
        "RS512" => Ok(RS512),
        "PS256" => Ok(PS256),
        "PS384" => Ok(PS384),
        "PS512" => Ok(PS512),
        "ES256" => Ok(ES256),
        "ES384" => Ok(ES384),
        "EdDSA" => Ok(EdDSA),
        "HS256" | "HS384" | "HS512" | "none" => Err(format!("{name} is never accepted: only asymmetric algorithms")),
        other => Err(format!("{other:?} is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA")),
    }
}

impl Config {
    /// Parse and check a config file; `env` supplies placeholder values and listen overrides.
    pub fn load(yaml: &str, env: &Environment) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = if yaml.trim().is_empty() {
            RawConfig::default()
        } else {
            // Through a JSON value, so that errors carry a clean field path and no YAML position noise.
            let value: serde_json::Value =
                serde_yaml_ng::from_str(yaml).map_err(|e| ConfigErrors(vec![ConfigError::new("<file>", e.to_string())]))?;
            crate::strict::deserialize(&value).map_err(|e| {
                let path = e.path().to_string();
                ConfigErrors(vec![ConfigError {
                    // An unknown top-level key that is empty (`? >` in YAML) has an empty path: the file's.
                    field: if path == "." || path.is_empty() { "<file>".into() } else { path },
                    message: e.into_inner().to_string(),
                }])
            })?
        };
        Self::compile(raw, env)
    }

    /// Checks `raw` in full (every error, not the first) and builds the checked configuration. Each stage
    /// below checks one part of the file and reports into the same list.
    pub fn compile(raw: RawConfig, env: &Environment) -> Result<Config, ConfigErrors> {
        let mut c = Checker { errors: Vec::new() };
        let listeners = compile_listeners(&mut c, &raw.listen, env);
        let identity = raw.identity.as_ref().and_then(|id| compile_identity(&mut c, id));
        let credential_headers = credential_headers(&mut c, &raw);
        let egress_hostnames = egress_hostnames(&mut c, env);
        let (routes, disabled) = compile_routes(&mut c, &raw, env, &egress_hostnames);
        not_own_destinations(&mut c, &raw, &egress_hostnames);
        let ingress = raw.ingress.as_ref().and_then(|ing| compile_ingress(&mut c, ing));
        let forward_proxy = raw.forward_proxy.as_deref().and_then(|p| compile_forward_proxy(&mut c, p));
        let shutdown_grace = compile_shutdown_grace(&mut c, &raw.shutdown);
        let connections = connection_limits(&mut c, &raw.connections);

        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        let [egress_listen, ingress_listen, admin_listen] = listeners.map(|l| l.expect("checked"));
        Ok(Config {
            egress_listen,
            ingress_listen,
            admin_listen,
            identity,
            routes,
            ingress,
            extra_ca_file: raw.tls.extra_ca_file,
            forward_proxy,
            shutdown_grace: shutdown_grace.expect("checked"),
            connections: connections.expect("checked"),
            disabled,
            credential_headers,
            egress_hostnames,
        })
    }
}

/// The three listeners (egress, ingress, admin): the env's address, else the file's, else the default; the
/// egress listener on loopback only; no port twice.
fn compile_listeners(c: &mut Checker, raw: &RawListen, env: &Environment) -> [Option<SocketAddr>; 3] {
    let egress = c
        .check("listen.egress", listen(raw.egress.as_ref(), env.egress_listen.as_ref(), (Ipv4Addr::LOCALHOST, names::DEFAULT_EGRESS_PORT)));
    let ingress = c.check(
        "listen.ingress",
        listen(raw.ingress.as_ref(), env.ingress_listen.as_ref(), (Ipv4Addr::UNSPECIFIED, names::DEFAULT_INGRESS_PORT)),
    );
    let admin =
        c.check("listen.admin", listen(raw.admin.as_ref(), env.admin_listen.as_ref(), (Ipv4Addr::UNSPECIFIED, names::DEFAULT_ADMIN_PORT)));
    if let Some(egress) = egress
        && !egress.ip().is_loopback()
    {
        c.error("listen.egress", format!("{egress} is not a loopback address: the egress listener is for this pod only"));
    }
    let ports = [("listen.egress", egress), ("listen.ingress", ingress), ("listen.admin", admin)];
    for (i, (path, addr)) in ports.iter().enumerate() {
        if let Some(addr) = addr
            && let Some((other, _)) = ports[..i].iter().find(|(_, o)| o.is_some_and(|o| o.port() == addr.port()))
        {
            c.error(*path, format!("port {} is already used by {other}", addr.port()));
        }
    }
    [egress, ingress, admin]
}

fn compile_identity(c: &mut Checker, id: &RawIdentity) -> Option<Identity> {
    let token_url = c.check("identity.tokenUrl", Upstream::parse(&id.token_url));
    let refresh_before = c.check("identity.refreshBefore", parse_duration(id.refresh_before.as_deref().unwrap_or("30s")));
    let timeout = c.check("identity.timeout", parse_duration(id.timeout.as_deref().unwrap_or("5s")));
    Some(Identity {
        token_url: token_url?,
        client_id_file: id.client_id_file.clone(),
        client_secret_file: id.client_secret_file.clone(),
        scope: id.scope.clone(),
        refresh_before: refresh_before?,
        timeout: timeout?,
    })
}

/// Every route, named uniquely; returns the routes in force and what was left out of them (a route or the
/// part of one that needs an id this pod does not have).
fn compile_routes(c: &mut Checker, raw: &RawConfig, env: &Environment, egress_hostnames: &[String]) -> (Vec<Route>, Vec<Disabled>) {
    let mut routes = Vec::new();
    let mut disabled = Vec::new();
    let mut names = BTreeMap::new();
    // A pod without an id cannot use what needs it, but the rest of its config is still checked in
    // full: with a stand-in value where the id is missing.
    let checked_env = Environment {
        analysis_id: env.analysis_id.clone().or_else(|| Some("id".into())),
        project_id: env.project_id.clone().or_else(|| Some("id".into())),
        ..env.clone()
    };
    for (i, r) in raw.routes.iter().enumerate() {
        if r.name.is_empty() || !r.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')) {
            c.error(format!("routes[{i}].name"), format!("{:?} must be letters, digits, '-' or '_'", r.name));
        }
        if let Some(first) = names.insert(r.name.clone(), i) {
            c.error(format!("routes[{i}].name"), format!("{:?} is already the name of routes[{first}]", r.name));
        }
        match compile_route(c, i, r, raw.identity.is_some(), env, &checked_env, egress_hostnames) {
            Some(Compiled::Route(route, left_out)) => {
                routes.push(*route);
                disabled.extend(left_out);
            }
            Some(Compiled::LeftOut(whole)) => disabled.push(whole),
            None => {}
        }
    }
    (routes, disabled)
}

/// The pod's own names for the proxy would send a request back into the proxy (or, with a credential, to
/// whatever listens on that port): no destination outside the routes may be one of them either.
fn not_own_destinations(c: &mut Checker, raw: &RawConfig, egress_hostnames: &[String]) {
    let others = [
        ("identity.tokenUrl", raw.identity.as_ref().map(|i| i.token_url.as_str())),
        ("ingress.jwksUrl", raw.ingress.as_ref().map(|i| i.jwks_url.as_str())),
        ("forwardProxy", raw.forward_proxy.as_deref()),
    ];
    for (path, url) in others {
        if let Some(Ok(upstream)) = url.map(Upstream::parse) {
            not_own_name(c, path, &upstream.host, egress_hostnames);
        }
    }
}

fn compile_forward_proxy(c: &mut Checker, url: &str) -> Option<Upstream> {
    let parsed = c.check("forwardProxy", Upstream::parse(url))?;
    if parsed.tls {
        c.error("forwardProxy", "must be an http:// proxy (TLS to the upstream goes through it by CONNECT)");
    }
    Some(parsed)
}

fn compile_shutdown_grace(c: &mut Checker, raw: &RawShutdown) -> Option<Duration> {
    let grace = c.check("shutdown.grace", parse_duration(raw.grace.as_deref().unwrap_or("5s")));
    if let Some(grace) = grace
        && grace > Duration::from_secs(25)
    {
        c.error("shutdown.grace", "must stay below Kubernetes' 30 s termination grace period (at most 25s)");
    }
    grace
}

#[cfg(test)]
mod tests {
    //! The stages of [`Config::compile`], each on its own; the whole route table is tested through the proxy
    //! (proxy/tests/routes.rs) and by fuzzing (fuzz/fuzz_targets/proxy_config.rs).
    use super::*;

    fn checker() -> Checker {
        Checker { errors: Vec::new() }
    }

    fn fields(c: &Checker) -> Vec<&str> {
        c.errors.iter().map(|e| e.field.as_str()).collect()
    }

    fn yaml(text: &str) -> RawConfig {
        serde_yaml_ng::from_str(text).expect("test config parses")
    }

    #[test]
    fn a_section_is_a_mapping_never_a_sequence_read_by_position() {
        let env = Environment::default();
        for (text, field) in [("listen: ['127.0.0.1:15001']\n", "listen"), ("routes:\n  - [hub, 'http://hub.example.org']\n", "routes[0]")]
        {
            let errors = Config::load(text, &env).unwrap_err();
            assert!(
                errors.0.iter().any(|e| e.field == field && e.message.starts_with("invalid type: sequence, expected struct")),
                "{text}: {errors:?}"
            );
        }
    }

    #[test]
    fn listeners_come_from_the_env_then_the_file_then_the_defaults() {
        let mut c = checker();
        let env = Environment { ingress_listen: Some("0.0.0.0:8443".into()), ..Environment::default() };
        let raw = RawListen { ingress: Some("0.0.0.0:8000".into()), admin: Some("0.0.0.0:9000".into()), ..RawListen::default() };
        let [egress, ingress, admin] = compile_listeners(&mut c, &raw, &env);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert_eq!(egress, Some("127.0.0.1:15001".parse().unwrap()));
        assert_eq!(ingress, Some("0.0.0.0:8443".parse().unwrap()));
        assert_eq!(admin, Some("0.0.0.0:9000".parse().unwrap()));
    }

    #[test]
    fn the_default_ports_are_the_default_policys() {
        let proxy = &crate::policy::Policy::default().proxy;
        assert_eq!(
            [proxy.egress_port, proxy.ingress_port, proxy.admin_port],
            [names::DEFAULT_EGRESS_PORT, names::DEFAULT_INGRESS_PORT, names::DEFAULT_ADMIN_PORT]
        );
    }

    #[test]
    fn the_egress_listener_is_loopback_only_and_no_port_is_used_twice() {
        let mut c = checker();
        let raw = RawListen { egress: Some("0.0.0.0:15006".into()), ..RawListen::default() };
        compile_listeners(&mut c, &raw, &Environment::default());
        assert_eq!(fields(&c), ["listen.egress", "listen.ingress"]);
        assert!(c.errors[0].message.contains("not a loopback address"), "{}", c.errors[0]);
        assert_eq!(c.errors[1].message, "port 15006 is already used by listen.egress");
    }

    #[test]
    fn identity_names_each_bad_field() {
        let mut c = checker();
        let raw = yaml("identity: {tokenUrl: 'ftp://x', clientIdFile: /a, clientSecretFile: /b, refreshBefore: soon, timeout: 5}");
        assert!(compile_identity(&mut c, raw.identity.as_ref().unwrap()).is_none());
        assert_eq!(fields(&c), ["identity.tokenUrl", "identity.refreshBefore", "identity.timeout"]);
        let mut c = checker();
        let raw = yaml("identity: {tokenUrl: 'http://keycloak/token', clientIdFile: /a, clientSecretFile: /b}");
        let identity = compile_identity(&mut c, raw.identity.as_ref().unwrap()).expect("valid");
        assert_eq!((identity.refresh_before, identity.timeout), (Duration::from_secs(30), Duration::from_secs(5)));
    }

    #[test]
    fn route_names_are_safe_and_unique() {
        let mut c = checker();
        let raw = yaml(
            "routes:
              - {name: hub, prefix: /a, upstream: 'http://hub:80'}
              - {name: hub, prefix: /b, upstream: 'http://hub:80'}
              - {name: 'no spaces', prefix: /c, upstream: 'http://hub:80'}",
        );
        let (routes, _) = compile_routes(&mut c, &raw, &Environment::default(), &[]);
        assert_eq!(fields(&c), ["routes[1].name", "routes[2].name"]);
        assert_eq!(c.errors[0].message, r#""hub" is already the name of routes[0]"#);
        assert_eq!(routes.len(), 3, "each route is still compiled, so that its other errors are found too");
    }

    #[test]
    fn no_destination_is_the_proxy_itself() {
        let mut c = checker();
        let raw = yaml("forwardProxy: 'http://hub.internal:3128'");
        not_own_destinations(&mut c, &raw, &["hub.internal".to_owned()]);
        assert_eq!(fields(&c), ["forwardProxy"]);
    }

    #[test]
    fn a_forward_proxy_is_plain_http_and_the_grace_fits_kubernetes_period() {
        let mut c = checker();
        assert!(compile_forward_proxy(&mut c, "https://squid:3128").is_some());
        assert_eq!(compile_shutdown_grace(&mut c, &RawShutdown { grace: Some("26s".into()) }), Some(Duration::from_secs(26)));
        assert_eq!(fields(&c), ["forwardProxy", "shutdown.grace"]);
        let mut c = checker();
        assert_eq!(compile_shutdown_grace(&mut c, &RawShutdown::default()), Some(Duration::from_secs(5)));
        assert_eq!(compile_shutdown_grace(&mut c, &RawShutdown { grace: Some("25s".into()) }), Some(Duration::from_secs(25)));
        assert!(c.errors.is_empty());
    }

    #[test]
    fn compile_reports_every_stage_at_once() {
        let raw = yaml(
            "listen: {egress: '0.0.0.0:1'}\nforwardProxy: 'https://squid:3128'\nshutdown: {grace: 1m}\nroutes: [{name: '', prefix: /a, upstream: 'http://hub:80'}]",
        );
        let errors = Config::compile(raw, &Environment::default()).unwrap_err();
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["listen.egress", "routes[0].name", "forwardProxy", "shutdown.grace"]);
    }
}
