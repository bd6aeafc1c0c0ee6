//! The egress listener on pingora: the app's only authenticated way out. The decisions come from
//! [`crate::target::check`] and [`crate::routes::decide`]; this is the glue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::config::Config;
use crate::headers::{
    answer_failure, asks_for_upgrade, check_framing, check_switching, head_size, json_error, strip_credentials, strip_spoofable,
};
use crate::local::LocalGuard;
use crate::metrics::{Metrics, RequestLabels, RouteMetrics};
use crate::readiness::Readiness;
use crate::resolve::Resolver;
use crate::routes::{Answer, AuthMode, Decision, decide};
use crate::target::{check_allowing_non_ascii, check_host};
use crate::tokens::TokenSource;
use crate::tunnel::ConnectTunnel;

pub struct Egress {
    pub config: Arc<Config>,
    pub tokens: Option<Arc<TokenSource>>,
    pub metrics: Arc<Metrics>,
    /// Bytes sent upstream per route (index as in the config).
    pub sent: Arc<Vec<AtomicU64>>,
    /// Credential files by path and kind (bearer or not).
    bearer_files: Mutex<HashMap<(PathBuf, bool), BearerCacheEntry>>,
    /// The routes' names as metric labels and in audit lines, without a copy per request. Leaked once: the
    /// config lives as long as the process.
    route_names: Vec<&'static str>,
    route_metrics: Vec<RouteMetrics>,
    /// Each route's upstream `Host`, made once (none for a route the proxy answers itself).
    hosts: Vec<Option<http::HeaderValue>>,
    own_authorities: Vec<String>,
    resolver: Resolver,
    guard: Arc<LocalGuard>,
    readiness: Arc<Readiness>,
}

impl Egress {
    pub fn new(
        config: Arc<Config>,
        tokens: Option<Arc<TokenSource>>,
        guard: Arc<LocalGuard>,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> Self {
        let port = config.egress_listen.port();
        let mut own_authorities = vec![config.egress_listen.to_string(), format!("localhost:{port}"), format!("127.0.0.1:{port}")];
        // The names the pod's /etc/hosts gives the proxy (TOLLGATE_EGRESS_HOSTNAMES), with the port, and without
        // it when that is HTTP's default.
        for name in &config.egress_hostnames {
            own_authorities.push(format!("{name}:{port}"));
            if port == 80 {
                own_authorities.push(name.clone());
            }
        }
        let sent = Arc::new(config.routes.iter().map(|_| AtomicU64::new(0)).collect());
        let route_names: Vec<&'static str> = config.routes.iter().map(|r| &*Box::leak(r.name.clone().into_boxed_str())).collect();
        let route_metrics = route_names.iter().map(|route| metrics.route(route)).collect();
        let hosts = config
            .routes
            .iter()
            .map(|r| r.upstream().map(|u| http::HeaderValue::try_from(u.authority()).expect("a checked authority")))
            .collect();
        Egress {
            config,
            route_names,
            route_metrics,
            hosts,
            tokens,
            metrics,
            sent,
            bearer_files: Mutex::new(HashMap::new()),
            own_authorities,
            resolver: Resolver::default(),
            guard,
            readiness,
        }
    }

    /// A credential file's contents as a header value (`Bearer <token>` for a bearer file, the key itself
    /// for an API key), re-read when the file's size or modification time changes.
    fn credential_from_file(&self, path: &Path, bearer: bool) -> Result<http::HeaderValue, String> {
        let what = if bearer { "bearer file" } else { "API key file" };
        let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
        let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
        let mut cache = self.bearer_files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((modified, len, value)) = cache.get(&(path.to_owned(), bearer))
            && (*modified, *len) == stamp
        {
            return Ok(value.clone());
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
        let text = text.trim();
        let value = if bearer { crate::tokens::bearer_header(text) } else { crate::tokens::key_header(text) }
            .ok_or_else(|| format!("{what} {} is empty or not a header-safe token", path.display()))?;
        cache.insert((path.to_owned(), bearer), (stamp.0, stamp.1, value.clone()));
        Ok(value)
    }
}

/// A credential file's modification time and size when read, and its header value.
type BearerCacheEntry = (SystemTime, u64, http::HeaderValue);

#[derive(Default)]
pub struct EgressCtx {
    /// Counted until the request is done with (drain.rs).
    _in_flight: Option<crate::drain::InFlight>,
    route: Option<usize>,
    upstream_target: String,
    /// For a request carrying a credential: the address checked before it was attached, and the only one
    /// connected to (the forward proxy's, if there is one).
    peer: Option<SocketAddr>,
    /// The header the route's credential goes in, and its value.
    credential: Option<(http::HeaderName, http::HeaderValue)>,
    decision: &'static str,
    reason: Option<String>,
    normalized_path: String,
    bytes_in: u64,
    started: Option<Instant>,
    forwarded_at: Option<Instant>,
    request_id: String,
    /// The request asked for an upgrade and its route allows it: only then may a 101 be relayed.
    upgrade: bool,
}

/// The caller's `x-request-id` if it is a sane token, else a new one: `tg-<process>-<counter>`, the process
/// part (start time and pid, in hex) fixed at the first call, so that ids stay unique across restarts.
pub fn request_id(given: Option<&str>) -> String {
    use std::fmt::Write;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match given
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    {
        Some(id) => id.to_owned(),
        None => {
            let process = PROCESS.get_or_init(|| {
                let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
                format!("tg-{nanos:x}{:x}-", std::process::id())
            });
            let mut id = String::with_capacity(process.len() + 16);
            id.push_str(process);
            let _ = write!(id, "{:x}", COUNTER.fetch_add(1, Ordering::Relaxed));
            id
        }
    }
}

impl Egress {
    /// A route with `answer: ready`: 200 `healthy` while the proxy is ready, else 503 with the reason.
    async fn answer_ready(&self, session: &mut Session, ctx: &mut EgressCtx) -> Result<bool> {
        let (status, body, decision) = match self.readiness.check() {
            Ok(()) => (200, "healthy".to_owned(), "answered"),
            Err(why) => (503, why.to_owned(), "not-ready"),
        };
        let mut header = ResponseHeader::build(status, Some(4))?;
        header.insert_header("content-type", "text/plain")?;
        header.insert_header("content-length", body.len().to_string())?;
        header.insert_header("cache-control", "no-store")?;
        let head_only = session.req_header().method == http::Method::HEAD;
        // A body the caller may have sent is not read: the connection ends with the answer.
        session.set_keepalive(None);
        session.write_response_header(Box::new(header), head_only).await?;
        if !head_only {
            session.write_response_body(Some(Bytes::from(body)), true).await?;
        }
        ctx.decision = decision;
        Ok(true)
    }
}

/// Answer locally with a JSON error; nothing is forwarded.
async fn refuse(session: &mut Session, ctx: &mut EgressCtx, status: u16, decision: &'static str, reason: String) -> Result<bool> {
    json_error(session, status, decision, &reason, Vec::new()).await?;
    ctx.decision = decision;
    ctx.reason = Some(reason);
    Ok(true)
}

#[async_trait]
impl ProxyHttp for Egress {
    type CTX = EgressCtx;

    fn new_ctx(&self) -> EgressCtx {
        EgressCtx { started: Some(Instant::now()), _in_flight: Some(crate::drain::InFlight::begin()), ..EgressCtx::default() }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut EgressCtx) -> Result<()> {
        crate::connections::head_received(session);
        // Requests sent back to back on one connection are answered one after the other, in order (RFC 9112
        // §9.3.2), instead of the first answered and the rest dropped with the connection.
        session.set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut EgressCtx) -> Result<bool> {
        let header = session.req_header();
        ctx.request_id = request_id(header.headers.get("x-request-id").and_then(|v| v.to_str().ok()));
        if header.method == http::Method::CONNECT {
            return refuse(session, ctx, 405, "connect-refused", "CONNECT is never tunnelled".into()).await;
        }
        // Checked and decided while the head is borrowed: nothing of it is copied but the normalized path.
        let mut hosts = header.headers.get_all("host").iter().map(|v| v.as_bytes());
        let hosts: ([&[u8]; 2], usize) = match (hosts.next(), hosts.next()) {
            (None, _) => ([b"", b""], 0),
            (Some(one), None) => ([one, b""], 1),
            (Some(one), Some(two)) => ([one, two], 2),
        };
        let checked = check_host(header.version == http::Version::HTTP_11, &hosts.0[..hosts.1]).and_then(|()| {
            // Percent-encoded non-ASCII passes the check only for the route to decide (allowNonAsciiPath).
            check_allowing_non_ascii(&String::from_utf8_lossy(header.raw_path()), &self.own_authorities)
        });
        let target = match checked {
            Ok(target) => target,
            Err(e) => return refuse(session, ctx, 400, "bad-request", e.to_string()).await,
        };
        let decision = decide(&self.config.routes, header.method.as_str(), &target);
        ctx.normalized_path = target.path;
        let (index, upstream_target) = match decision {
            Decision::Forward { route, upstream_target } => (route, upstream_target),
            Decision::Answer { route, answer: Answer::Ready } => {
                ctx.route = Some(route);
                return self.answer_ready(session, ctx).await;
            }
            Decision::Refuse { reason } => return refuse(session, ctx, 403, "denied", reason).await,
            Decision::Invalid { reason } => return refuse(session, ctx, 400, "bad-request", reason).await,
        };
        let route = &self.config.routes[index];
        ctx.route = Some(index);
        ctx.upstream_target = upstream_target;
        if asks_for_upgrade(session.req_header()) {
            if !route.allow_upgrade {
                let reason = format!("route {:?} does not allow protocol upgrades (allowUpgrade)", route.name);
                return refuse(session, ctx, 403, "upgrade-refused", reason).await;
            }
            ctx.upgrade = true;
        }

        // Framing must be unambiguous, or the upstream may read a different request than we checked.
        let declared = match check_framing(session.req_header()) {
            Ok(declared) => declared,
            Err(why) => return refuse(session, ctx, 400, "bad-request", why.into()).await,
        };
        let head = head_size(session.req_header(), &ctx.upstream_target);
        if let Some(length) = declared
            && length > route.max_request_body
        {
            let reason = format!("body of {length} bytes is above route {:?}'s limit of {}", route.name, route.max_request_body);
            return refuse(session, ctx, 413, "too-large", reason).await;
        }
        // The budget covers everything sent upstream: the request head (path, query, headers) and the body.
        if let Some(budget) = route.byte_budget
            && self.sent[index].load(Ordering::Relaxed) + head + declared.unwrap_or(0) > budget
        {
            return refuse(session, ctx, 413, "budget-exceeded", format!("route {:?} has used its byte budget of {budget}", route.name))
                .await;
        }

        // A credential never goes to the pod itself: the address connected to (the upstream's, or the
        // forward proxy's, which resolves the upstream outside the pod) must not be local unless the config
        // names it literally. Checked before a token is even fetched; upstream_peer uses this very address.
        if let (false, Some(upstream)) = (route.auth == AuthMode::None, route.upstream()) {
            let (what, host, port) = match &self.config.forward_proxy {
                Some(proxy) => ("forward proxy host", proxy.host.as_str(), proxy.port),
                None => ("upstream host", upstream.host.as_str(), upstream.port),
            };
            let addr = match self.resolver.resolve(host, port).await {
                Ok(addr) => addr,
                Err(e) => return refuse(session, ctx, 502, "upstream-error", e).await,
            };
            if let Err(reason) = self.guard.check("egress", what, host, addr.ip()) {
                return refuse(session, ctx, 502, "local-destination", reason).await;
            }
            ctx.peer = Some(addr);
        }

        ctx.credential = match &route.auth {
            AuthMode::None => None,
            AuthMode::BearerFile(path) => match self.credential_from_file(path, true) {
                Ok(value) => Some((http::header::AUTHORIZATION, value)),
                Err(e) => return refuse(session, ctx, 503, "no-credentials", e).await,
            },
            AuthMode::ApiKeyFile { header, file } => match self.credential_from_file(file, false) {
                Ok(value) => Some((header.clone(), value)),
                Err(e) => return refuse(session, ctx, 503, "no-credentials", e).await,
            },
            AuthMode::Token => match self.tokens.as_ref().map(|t| t.clone()) {
                Some(tokens) => match tokens.token().await {
                    Ok(token) => Some((http::header::AUTHORIZATION, token.header_value.clone())),
                    Err(e) => return refuse(session, ctx, 503, "no-credentials", e.to_string()).await,
                },
                None => return refuse(session, ctx, 503, "no-credentials", "no identity configured".into()).await,
            },
        };
        self.sent[index].fetch_add(head, Ordering::Relaxed);
        self.route_metrics[index].bytes_out.inc_by(head);
        ctx.decision = "forwarded";
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut EgressCtx) -> Result<Box<HttpPeer>> {
        let route = &self.config.routes[ctx.route.expect("request_filter chose a route")];
        let upstream = route.upstream().expect("routes the proxy answers itself are never proxied");
        let unresolvable = |e: String| Error::explain(ErrorType::ConnectNoRoute, e);
        let mut peer = match &self.config.forward_proxy {
            // The peer address is the forward proxy's (resolvable here); the tunnel names the upstream.
            Some(proxy) => {
                let proxy_addr = match ctx.peer {
                    Some(checked) => checked,
                    None => self.resolver.resolve(&proxy.host, proxy.port).await.map_err(unresolvable)?,
                };
                let mut peer = HttpPeer::new(proxy_addr, upstream.tls, upstream.host.clone());
                peer.options.custom_l4 = Some(Arc::new(ConnectTunnel { proxy: proxy_addr.to_string(), target: upstream.address() }));
                peer
            }
            None => {
                let addr = match ctx.peer {
                    Some(checked) => checked,
                    None => self.resolver.resolve(&upstream.host, upstream.port).await.map_err(unresolvable)?,
                };
                HttpPeer::new(addr, upstream.tls, upstream.host.clone())
            }
        };
        peer.options.connection_timeout = Some(route.connect_timeout);
        peer.options.total_connection_timeout = Some(route.connect_timeout);
        peer.options.read_timeout = Some(route.read_timeout);
        peer.options.write_timeout = Some(route.read_timeout);
        ctx.forwarded_at = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(&self, _session: &mut Session, request: &mut RequestHeader, ctx: &mut EgressCtx) -> Result<()> {
        let index = ctx.route.expect("request_filter chose a route");
        let uri = ctx.upstream_target.parse().map_err(|e| Error::because(ErrorType::InternalError, "building the upstream target", e))?;
        request.set_uri(uri);
        strip_spoofable(request);
        strip_credentials(request, &self.config.credential_headers);
        if let Some(host) = &self.hosts[index] {
            request.insert_header("host", host.clone())?;
        }
        if let Some((name, value)) = &ctx.credential {
            request.insert_header(name.clone(), value.clone())?;
        }
        request.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn upstream_response_filter(&self, _session: &mut Session, response: &mut ResponseHeader, ctx: &mut EgressCtx) -> Result<()> {
        check_switching(response.status.as_u16(), ctx.upgrade).map_err(|reason| Error::explain(ErrorType::HTTPStatus(502), reason))
    }

    async fn request_body_filter(&self, _session: &mut Session, body: &mut Option<Bytes>, _end: bool, ctx: &mut EgressCtx) -> Result<()> {
        let (Some(index), Some(chunk)) = (ctx.route, body.as_ref()) else { return Ok(()) };
        let route = &self.config.routes[index];
        let len = chunk.len() as u64;
        ctx.bytes_in += len;
        if ctx.bytes_in > route.max_request_body {
            ctx.decision = "too-large";
            return Error::e_explain(ErrorType::HTTPStatus(413), "request body above the route's limit");
        }
        let total = self.sent[index].fetch_add(len, Ordering::Relaxed) + len;
        self.route_metrics[index].bytes_out.inc_by(len);
        if route.byte_budget.is_some_and(|budget| total > budget) {
            ctx.decision = "budget-exceeded";
            return Error::e_explain(ErrorType::HTTPStatus(413), "route byte budget exceeded");
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut EgressCtx) -> FailToProxy {
        // What the app sent (a body cut short or framed wrong) is its own fault, not the upstream's.
        let downstream = e.esource() == &ErrorSource::Downstream;
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout if !downstream => 504,
            _ if downstream => 400,
            _ => 502,
        };
        if ctx.decision == "forwarded" {
            ctx.decision = if downstream { "bad-request" } else { "upstream-error" };
        }
        ctx.reason = Some(e.to_string());
        if answer_failure(session, code, ctx.decision, e.etype().as_str()).await && !downstream {
            ctx.decision = "upstream-aborted";
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut EgressCtx) {
        crate::connections::request_done(session);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx.route.map_or("", |i| self.route_names[i]);
        if let (Some(forwarded), Some(index)) = (ctx.forwarded_at, ctx.route) {
            self.route_metrics[index].upstream_duration.observe(forwarded.elapsed().as_secs_f64());
        }
        self.metrics.request(RequestLabels { listener: "egress", route, status, decision: ctx.decision });
        let error = error.map(|e| e.to_string()).unwrap_or_default();
        crate::audit::write(&crate::audit::Line {
            listener: "egress",
            route,
            method: session.req_header().method.as_str(),
            path: &ctx.normalized_path,
            status,
            decision: ctx.decision,
            reason: ctx.reason.as_deref().unwrap_or(""),
            client: None,
            bytes_in: Some(ctx.bytes_in),
            bytes_out: session.body_bytes_sent(),
            duration_ms: ctx.started.map_or(0.0, |s| s.elapsed().as_secs_f64() * 1000.0),
            request_id: &ctx.request_id,
            error: &error,
        });
    }
}
