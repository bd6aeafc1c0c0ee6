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
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::audit::{Requests, request_id};
use crate::config::Config;
use crate::decision::{Decision, Refusal};
use crate::headers::{
    answer_failure, asks_for_upgrade, check_framing, check_switching, head_size, json_error, strip_credentials, strip_spoofable,
};
use crate::local::LocalGuard;
use crate::readiness::Readiness;
use crate::resolve::Resolver;
use crate::routes::{self, Answer, AuthMode, Route, Upstream, decide};
use crate::target::{SafeTarget, TargetError, check_allowing_non_ascii, check_host};
use crate::tokens::TokenSource;
use crate::tunnel::ConnectTunnel;

/// What the egress listener counts, handed in at construction (metrics.rs registers it): every request it
/// answers, and per route the bytes sent upstream and the upstream's time. Clones share the series.
#[derive(Clone)]
pub struct EgressMetrics {
    requests: Requests,
    upstream_duration: Family<RouteLabels, Histogram>,
    bytes_out: Family<RouteLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

/// One route's series (clones share the values registered in [`EgressMetrics`]).
pub(crate) struct RouteMetrics {
    bytes_out: Counter,
    upstream_duration: Histogram,
}

impl EgressMetrics {
    /// Registers the per-route series in `registry`; requests are counted in the listeners' `requests`.
    pub fn register(registry: &mut Registry, requests: Requests) -> EgressMetrics {
        let upstream_duration =
            Family::<RouteLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)) as Histogram);
        let bytes_out = Family::<RouteLabels, Counter>::default();
        registry.register(
            "upstream_duration_seconds",
            "Time from forwarding a request to the end of its response, by route",
            upstream_duration.clone(),
        );
        registry.register("bytes_out", "Request body bytes sent upstream, by route", bytes_out.clone());
        EgressMetrics { requests, upstream_duration, bytes_out }
    }

    /// A route's own series, made once: the per-request path then touches no label map.
    pub(crate) fn route(&self, route: &'static str) -> RouteMetrics {
        RouteMetrics {
            bytes_out: self.bytes_out.get_or_create(&RouteLabels { route }).clone(),
            upstream_duration: self.upstream_duration.get_or_create(&RouteLabels { route }).clone(),
        }
    }
}

pub struct Egress {
    pub config: Arc<Config>,
    pub tokens: Option<Arc<TokenSource>>,
    requests: Requests,
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
        metrics: EgressMetrics,
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
            requests: metrics.requests,
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
    decision: Decision,
    reason: Option<String>,
    normalized_path: String,
    bytes_in: u64,
    started: Option<Instant>,
    forwarded_at: Option<Instant>,
    request_id: String,
    /// The request asked for an upgrade and its route allows it: only then may a 101 be relayed.
    upgrade: bool,
}

impl Egress {
    /// A route with `answer: ready`: 200 `healthy` while the proxy is ready, else 503 with the reason.
    async fn answer_ready(&self, session: &mut Session, ctx: &mut EgressCtx) -> Result<bool> {
        let (decision, body) = match self.readiness.check() {
            Ok(()) => (Decision::Answered, "healthy".to_owned()),
            Err(why) => (Decision::NotReady, why.to_owned()),
        };
        let status = decision.status().expect("the proxy's own answer");
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
async fn refuse(session: &mut Session, ctx: &mut EgressCtx, refusal: Refusal) -> Result<bool> {
    json_error(session, refusal.status(), refusal.decision.label(), &refusal.reason, Vec::new()).await?;
    ctx.decision = refusal.decision;
    ctx.reason = Some(refusal.reason);
    Ok(true)
}

/// What the checks let through: a request to forward, or one for a route the proxy answers itself.
#[derive(Debug, PartialEq, Eq)]
enum Admitted {
    Forward,
    Ready,
}

impl Egress {
    /// A request's way through the checks, in the order they run, each a function of its own. What the audit
    /// line reports (request id, normalized path, route) is set on `ctx` as soon as it is known, refused or
    /// not; so are the upstream target, the checked peer and the credential the later phases use.
    async fn admit(&self, header: &RequestHeader, ctx: &mut EgressCtx) -> Result<Admitted, Refusal> {
        ctx.request_id = request_id(header.headers.get("x-request-id").and_then(|v| v.to_str().ok()));
        if header.method == http::Method::CONNECT {
            return Err(Refusal::new(Decision::ConnectRefused, "CONNECT is never tunnelled"));
        }
        // Checked and decided while the head is borrowed: nothing of it is copied but the normalized path.
        let target = checked_target(header, &self.own_authorities).map_err(|e| Refusal::new(Decision::BadRequest, e.to_string()))?;
        let decided = decide(&self.config.routes, header.method.as_str(), &target);
        ctx.normalized_path = target.path;
        let (index, upstream_target) = match decided {
            routes::Decision::Forward { route, upstream_target } => (route, upstream_target),
            routes::Decision::Answer { route, answer: Answer::Ready } => {
                ctx.route = Some(route);
                return Ok(Admitted::Ready);
            }
            routes::Decision::Refuse { reason } => return Err(Refusal::new(Decision::Denied, reason)),
            routes::Decision::Invalid { reason } => return Err(Refusal::new(Decision::BadRequest, reason)),
        };
        let route = &self.config.routes[index];
        ctx.route = Some(index);
        ctx.upstream_target = upstream_target;
        ctx.upgrade = upgrade_allowed(route, header)?;
        let head = within_limits(route, header, &ctx.upstream_target, self.sent[index].load(Ordering::Relaxed))?;
        ctx.peer = self.checked_peer(route).await?;
        ctx.credential = self.credential(route).await?;
        self.sent[index].fetch_add(head, Ordering::Relaxed);
        self.route_metrics[index].bytes_out.inc_by(head);
        Ok(Admitted::Forward)
    }

    /// A credential never goes to the pod itself: the address connected to (the upstream's, or the forward
    /// proxy's, which resolves the upstream outside the pod) must not be local unless the config names it
    /// literally. Checked before a token is even fetched; upstream_peer uses this very address. None for a
    /// route that carries no credential, or one the proxy answers itself.
    async fn checked_peer(&self, route: &Route) -> Result<Option<SocketAddr>, Refusal> {
        let (false, Some(upstream)) = (route.auth == AuthMode::None, route.upstream()) else { return Ok(None) };
        let (what, host, port) = connects_to(self.config.forward_proxy.as_ref(), upstream);
        let addr = self.resolver.resolve(host, port).await.map_err(|e| Refusal::new(Decision::UpstreamError, e))?;
        self.guard.check("egress", what, host, addr.ip()).map_err(|reason| Refusal::new(Decision::LocalDestination, reason))?;
        Ok(Some(addr))
    }

    /// The header the route's credential goes in, and its value (none for `auth: none`); refused when it
    /// cannot be had.
    async fn credential(&self, route: &Route) -> Result<Option<(http::HeaderName, http::HeaderValue)>, Refusal> {
        let unavailable = |e: String| Refusal::new(Decision::NoCredentials, e);
        Ok(match &route.auth {
            AuthMode::None => None,
            AuthMode::BearerFile(path) => Some((http::header::AUTHORIZATION, self.credential_from_file(path, true).map_err(unavailable)?)),
            AuthMode::ApiKeyFile { header, file } => Some((header.clone(), self.credential_from_file(file, false).map_err(unavailable)?)),
            AuthMode::Token => {
                let tokens = self.tokens.as_ref().ok_or_else(|| unavailable("no identity configured".into()))?;
                let token = tokens.token().await.map_err(|e| unavailable(e.to_string()))?;
                Some((http::header::AUTHORIZATION, token.header_value.clone()))
            }
        })
    }
}

/// The request's target made safe: the Host header(s) checked (one on HTTP/1.1), then the target, whose
/// percent-encoded non-ASCII passes here only for the route to decide (allowNonAsciiPath).
fn checked_target(header: &RequestHeader, own_authorities: &[String]) -> Result<SafeTarget, TargetError> {
    let mut hosts = header.headers.get_all("host").iter().map(|v| v.as_bytes());
    let hosts: ([&[u8]; 2], usize) = match (hosts.next(), hosts.next()) {
        (None, _) => ([b"", b""], 0),
        (Some(one), None) => ([one, b""], 1),
        (Some(one), Some(two)) => ([one, two], 2),
    };
    check_host(header.version == http::Version::HTTP_11, &hosts.0[..hosts.1])?;
    check_allowing_non_ascii(&String::from_utf8_lossy(header.raw_path()), own_authorities)
}

/// Whether the request switches protocols: false when it does not ask to, true when it asks and its route
/// allows it (allowUpgrade); refused otherwise. Only then may a 101 be relayed.
fn upgrade_allowed(route: &Route, header: &RequestHeader) -> Result<bool, Refusal> {
    if !asks_for_upgrade(header) {
        return Ok(false);
    }
    if !route.allow_upgrade {
        let reason = format!("route {:?} does not allow protocol upgrades (allowUpgrade)", route.name);
        return Err(Refusal::new(Decision::UpgradeRefused, reason));
    }
    Ok(true)
}

/// The bytes the request's head takes upstream, if the request fits its route: its framing unambiguous (or
/// the upstream may read a different request than we checked), a declared body within `maxRequestBody`,
/// and head and declared body within what `sent` (the route's bytes so far) leaves of the byte budget.
fn within_limits(route: &Route, header: &RequestHeader, upstream_target: &str, sent: u64) -> Result<u64, Refusal> {
    let declared = check_framing(header).map_err(|why| Refusal::new(Decision::BadRequest, why))?;
    let head = head_size(header, upstream_target);
    if let Some(length) = declared
        && length > route.max_request_body
    {
        let reason = format!("body of {length} bytes is above route {:?}'s limit of {}", route.name, route.max_request_body);
        return Err(Refusal::new(Decision::TooLarge, reason));
    }
    // The budget covers everything sent upstream: the request head (path, query, headers) and the body.
    if let Some(budget) = route.byte_budget
        && sent + head + declared.unwrap_or(0) > budget
    {
        return Err(Refusal::new(Decision::BudgetExceeded, format!("route {:?} has used its byte budget of {budget}", route.name)));
    }
    Ok(head)
}

/// The host a request carrying a credential connects to, and what to call it in a refusal: the forward
/// proxy's, if there is one (it resolves the upstream itself, outside the pod), else the upstream's.
fn connects_to<'a>(forward_proxy: Option<&'a Upstream>, upstream: &'a Upstream) -> (&'static str, &'a str, u16) {
    match forward_proxy {
        Some(proxy) => ("forward proxy host", proxy.host.as_str(), proxy.port),
        None => ("upstream host", upstream.host.as_str(), upstream.port),
    }
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
        match self.admit(session.req_header(), ctx).await {
            Ok(Admitted::Forward) => {
                ctx.decision = Decision::Forwarded;
                Ok(false)
            }
            Ok(Admitted::Ready) => self.answer_ready(session, ctx).await,
            Err(refusal) => refuse(session, ctx, refusal).await,
        }
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
            ctx.decision = Decision::TooLarge;
            return Error::e_explain(ErrorType::HTTPStatus(413), "request body above the route's limit");
        }
        let total = self.sent[index].fetch_add(len, Ordering::Relaxed) + len;
        self.route_metrics[index].bytes_out.inc_by(len);
        if route.byte_budget.is_some_and(|budget| total > budget) {
            ctx.decision = Decision::BudgetExceeded;
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
        if ctx.decision == Decision::Forwarded {
            ctx.decision = if downstream { Decision::BadRequest } else { Decision::UpstreamError };
        }
        ctx.reason = Some(e.to_string());
        if answer_failure(session, code, ctx.decision.label(), e.etype().as_str()).await && !downstream {
            ctx.decision = Decision::UpstreamAborted;
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
        self.requests.count("egress", route, status, ctx.decision);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let yaml = format!(
            "{extra}routes:\n\
             - {{ name: hub, prefix: /hub, upstream: 'http://hub.example:8080', maxRequestBody: 100, byteBudget: 1000 }}\n\
             - {{ name: ws, prefix: /ws, upstream: 'http://ws.example', allowUpgrade: true }}\n"
        );
        Config::load(&yaml, &Default::default()).unwrap()
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut header = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (name, value) in headers {
            header.append_header(name.to_string(), *value).unwrap();
        }
        header
    }

    #[test]
    fn a_target_is_checked_with_its_host_headers() {
        let own = vec!["127.0.0.1:15001".to_owned()];
        let target = checked_target(&request("GET", "/hub/%7ex%2d%c3%a4", &[("host", "hub")]), &own).unwrap();
        assert_eq!(target.path, "/hub/~x-%C3%A4", "normalized");
        assert_eq!(checked_target(&request("GET", "/hub/a/../b", &[("host", "hub")]), &own), Err(TargetError::DotSegment));
        assert_eq!(checked_target(&request("GET", "/hub", &[]), &own), Err(TargetError::MissingHost));
        assert_eq!(checked_target(&request("GET", "/hub", &[("host", "a"), ("host", "b")]), &own), Err(TargetError::SeveralHosts));
        assert!(matches!(checked_target(&request("GET", "/hub", &[("host", "a b")]), &own), Err(TargetError::InvalidHost(_))));
        let mut http10 = request("GET", "/hub", &[]);
        http10.set_version(http::Version::HTTP_10);
        assert!(checked_target(&http10, &own).is_ok(), "HTTP/1.0 needs no Host");
        // Percent-encoded non-ASCII (above) is left for the route to decide; the proxy's own authority is its own.
        let absolute = checked_target(&request("GET", "http://127.0.0.1:15001/hub/x", &[("host", "127.0.0.1:15001")]), &own).unwrap();
        assert_eq!(absolute.path, "/hub/x");
        assert!(checked_target(&request("GET", "http://elsewhere/hub/x", &[("host", "elsewhere")]), &own).is_err());
    }

    #[test]
    fn an_upgrade_needs_a_route_that_allows_it() {
        let config = config("");
        let (hub, ws) = (&config.routes[0], &config.routes[1]);
        let plain = request("GET", "/hub", &[("host", "hub")]);
        let upgrade = request("GET", "/ws", &[("host", "hub"), ("connection", "upgrade"), ("upgrade", "websocket")]);
        assert_eq!(upgrade_allowed(hub, &plain), Ok(false));
        assert_eq!(upgrade_allowed(ws, &plain), Ok(false));
        assert_eq!(upgrade_allowed(ws, &upgrade), Ok(true));
        assert_eq!(
            upgrade_allowed(hub, &upgrade),
            Err(Refusal::new(Decision::UpgradeRefused, "route \"hub\" does not allow protocol upgrades (allowUpgrade)"))
        );
        assert_eq!(upgrade_allowed(hub, &upgrade).unwrap_err().status(), 403);
    }

    #[test]
    fn a_request_must_fit_its_routes_framing_size_and_budget() {
        let config = config("");
        let hub = &config.routes[0];
        let get = request("GET", "/hub/x", &[("host", "hub")]);
        let head = head_size(&get, "/x");
        assert_eq!(within_limits(hub, &get, "/x", 0), Ok(head));
        assert_eq!(within_limits(hub, &get, "/x", 1000 - head), Ok(head), "the budget may be used up exactly");
        assert_eq!(
            within_limits(hub, &get, "/x", 1001 - head),
            Err(Refusal::new(Decision::BudgetExceeded, "route \"hub\" has used its byte budget of 1000"))
        );

        let post = |length: &str| request("POST", "/hub/x", &[("host", "hub"), ("content-length", length)]);
        let head = head_size(&post("100"), "/x");
        assert_eq!(within_limits(hub, &post("100"), "/x", 0), Ok(head));
        assert_eq!(
            within_limits(hub, &post("101"), "/x", 0),
            Err(Refusal::new(Decision::TooLarge, "body of 101 bytes is above route \"hub\"'s limit of 100"))
        );
        // The declared body counts against the budget before it is sent.
        let refused = within_limits(hub, &post("100"), "/x", 1001 - head - 100).unwrap_err();
        assert_eq!((refused.decision, refused.status()), (Decision::BudgetExceeded, 413));

        let ambiguous = request("POST", "/hub/x", &[("host", "hub"), ("content-length", "5"), ("transfer-encoding", "chunked")]);
        let refused = within_limits(hub, &ambiguous, "/x", 0).unwrap_err();
        assert_eq!((refused.decision, refused.status()), (Decision::BadRequest, 400));
        assert_eq!(refused.reason, check_framing(&ambiguous).unwrap_err());
    }

    #[test]
    fn a_credential_goes_to_the_forward_proxy_when_there_is_one() {
        let direct = config("");
        let upstream = direct.routes[0].upstream().unwrap();
        assert_eq!(connects_to(direct.forward_proxy.as_ref(), upstream), ("upstream host", "hub.example", 8080));
        let proxied = config("forwardProxy: 'http://squid.example:3128'\n");
        let upstream = proxied.routes[0].upstream().unwrap();
        assert_eq!(connects_to(proxied.forward_proxy.as_ref(), upstream), ("forward proxy host", "squid.example", 3128));
    }
}
