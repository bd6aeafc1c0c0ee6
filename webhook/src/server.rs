//! The HTTPS server: `POST /mutate`, `GET /healthz`, `/readyz`, `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::events::{EventCounter, EventSink};
use crate::harden::RecordKeys;
use crate::metrics::Metrics;
use crate::policy::{OnViolation, Policy};
use crate::pool::ReviewPool;
use crate::reload::{PolicyInfo, ReloadCounter, spawn_watcher};
use crate::review::{self, ReviewMetrics};
use crate::tls::{CertStore, CertificateExpiry, load_certified_key, not_after, server_config};

/// kube-apiserver's own limit for request bodies.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Reviews up to this size are answered on the connection's task; larger ones on the review threads (pool.rs). A
/// review of this size built to be slow takes about a millisecond in a release build (README.md, Size).
pub const INLINE_REVIEW_BYTES: usize = 16 * 1024;
/// A large-review thread this long without work after a burst hands its memory back.
const LARGE_REVIEW_IDLE: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub policy: Option<PathBuf>,
    /// How often watched files are polled for changes.
    pub reload_interval: Duration,
    /// After SIGTERM: how long to keep accepting (with /readyz failing, open connections asked to end) so that
    /// the endpoints, and the API server's resolver, drop this pod before its listener closes.
    pub drain_delay: Duration,
    /// After that: how long in-flight requests get to finish.
    pub shutdown_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// A connection that has not started a request this long after its TLS handshake is closed.
    pub first_request_timeout: Duration,
    /// Called on a large-review thread once a burst of large reviews is over, to hand the memory they used
    /// back to the system (the binary's allocator keeps it otherwise). A no-op by default.
    pub release_memory: fn(),
    /// Write Events about denied and warned pods through this API server, as this instance (the pod's name).
    pub events: Option<(kube::Config, String)>,
}

impl ServeConfig {
    /// The defaults of `tollgate-webhook serve`, for these files, listening on port 8443.
    pub fn new(tls_cert: PathBuf, tls_key: PathBuf) -> Self {
        ServeConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            tls_cert,
            tls_key,
            policy: None,
            reload_interval: Duration::from_secs(2),
            drain_delay: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(15),
            max_connections: 1024,
            first_request_timeout: HANDSHAKE_TIMEOUT,
            release_memory: || {},
            events: None,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// `tollgate_webhook_bad_requests_total`: requests answered with an HTTP error, by reason.
#[derive(Clone)]
pub struct BadRequests(Family<ReasonLabels, Counter>);

impl BadRequests {
    pub fn register(registry: &mut Registry) -> BadRequests {
        let bad_requests = Family::<ReasonLabels, Counter>::default();
        registry.register("bad_requests", "Requests answered with an HTTP error, by reason", bad_requests.clone());
        BadRequests(bad_requests)
    }

    pub fn observe(&self, reason: &'static str) {
        self.0.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// Each layer's series, registered in the one registry `/metrics` exports.
struct Series {
    reviews: ReviewMetrics,
    bad_requests: BadRequests,
    reloads: ReloadCounter,
    events: EventCounter,
    certificate: CertificateExpiry,
    policy: PolicyInfo,
}

impl Series {
    /// Every layer's series in `metrics`, in the order they are exported.
    fn wire(metrics: &mut Metrics) -> Series {
        let registry = metrics.registry();
        Series {
            reviews: ReviewMetrics::register(registry),
            bad_requests: BadRequests::register(registry),
            reloads: ReloadCounter::register(registry),
            events: EventCounter::register(registry),
            certificate: CertificateExpiry::register(registry),
            policy: PolicyInfo::register(registry),
        }
    }
}

pub struct State {
    policy: ArcSwap<Policy>,
    /// Seal tollgate's records (`tollgate.dev/changes`): derived from the TLS key, which every replica shares.
    record_keys: ArcSwap<RecordKeys>,
    metrics: Metrics,
    series: Series,
    draining: AtomicBool,
    /// Where large reviews are answered.
    large_reviews: ReviewPool,
    events: Option<EventSink>,
}

impl State {
    /// `release_memory` is called by a large-review thread when a burst is over (see [`ServeConfig`]).
    pub fn new(policy: Policy, release_memory: fn()) -> std::io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let mut metrics = Metrics::new();
        let series = Series::wire(&mut metrics);
        series.policy.observe(policy.digest());
        Ok(State {
            policy: ArcSwap::from_pointee(policy),
            record_keys: ArcSwap::new(RecordKeys::offline()),
            metrics,
            series,
            draining: AtomicBool::new(false),
            large_reviews: ReviewPool::new(cores, LARGE_REVIEW_IDLE, release_memory)?,
            events: None,
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

fn load_policy(path: Option<&PathBuf>) -> Result<(Policy, Vec<u8>), String> {
    match path {
        None => Ok((Policy::default(), Vec::new())),
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("policy file {}: {e}", path.display()))?;
            let text = std::str::from_utf8(&bytes).map_err(|e| format!("policy file {}: {e}", path.display()))?;
            let policy = Policy::from_yaml(text).map_err(|e| format!("policy file {}:\n{e}", path.display()))?;
            Ok((policy, bytes))
        }
    }
}

/// A bound, not yet serving, webhook server.
pub struct Server {
    listener: TcpListener,
    tls: TlsAcceptor,
    state: Arc<State>,
    config: ServeConfig,
    stop_watchers: watch::Sender<bool>,
}

impl Server {
    /// Load certificate, key and policy (failing on any problem), bind, and start watching the files.
    pub async fn bind(config: ServeConfig) -> Result<Server, String> {
        let cert = std::fs::read(&config.tls_cert).map_err(|e| format!("--tls-cert {}: {e}", config.tls_cert.display()))?;
        let key = std::fs::read(&config.tls_key).map_err(|e| format!("--tls-key {}: {e}", config.tls_key.display()))?;
        let certified = load_certified_key(&cert, &key)?;
        let expiry = not_after(&certified);
        let store = Arc::new(CertStore::new(certified));
        let tls = TlsAcceptor::from(Arc::new(server_config(store.clone()).map_err(|e| format!("TLS: {e}"))?));
        let (policy, policy_bytes) = load_policy(config.policy.as_ref())?;
        let mut state = State::new(policy, config.release_memory).map_err(|e| format!("starting the review threads: {e}"))?;
        state.record_keys.store(Arc::new(RecordKeys::from_secret(&key)));
        if let Some((kube_config, instance)) = config.events.clone() {
            let client = kube::Client::try_from(kube_config).map_err(|e| format!("--events: the API client: {e}"))?;
            state.events = Some(EventSink::spawn(client, instance, state.series.events.clone()));
        }
        let state = Arc::new(state);
        state.series.certificate.observe(expiry);
        let listener = TcpListener::bind(config.listen).await.map_err(|e| format!("--listen {}: {e}", config.listen))?;

        let (stop_watchers, stopped) = watch::channel(false);
        let metrics_state = state.clone();
        spawn_watcher(
            "tls",
            vec![config.tls_cert.clone(), config.tls_key.clone()],
            config.reload_interval,
            vec![cert, key],
            stopped.clone(),
            move |files| {
                let result = load_certified_key(&files[0], &files[1]).map(|key| {
                    metrics_state.series.certificate.observe(not_after(&key));
                    store.swap(key);
                    // The previous key still checks what was sealed a moment ago.
                    let keys = metrics_state.record_keys.load().rotated(&files[1]);
                    metrics_state.record_keys.store(Arc::new(keys));
                });
                metrics_state.series.reloads.observe("tls", result.is_ok());
                result
            },
        );
        if let Some(path) = &config.policy {
            let policy_state = state.clone();
            spawn_watcher("policy", vec![path.clone()], config.reload_interval, vec![policy_bytes], stopped, move |files| {
                let result = std::str::from_utf8(&files[0])
                    .map_err(|e| e.to_string())
                    .and_then(|text| Policy::from_yaml(text).map_err(|e| e.to_string()));
                policy_state.series.reloads.observe("policy", result.is_ok());
                let policy = result?;
                tracing::info!(digest = policy.digest(), namespace_overrides = policy.namespaces.len(), "policy loaded");
                let digest = policy.digest().to_owned();
                policy_state.policy.store(Arc::new(policy));
                policy_state.series.policy.observe(&digest);
                Ok(())
            });
        }
        Ok(Server { listener, tls, state, config, stop_watchers })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Serve until `shutdown` resolves, then drain without failing a request the API server sends:
    ///
    /// 1. `/readyz` fails, and every open connection that has served a request is asked to end: HTTP/2
    ///    GOAWAY, which lets the requests in flight finish and makes the API server dial anew for the next
    ///    ones; HTTP/1.1, the next answer closes. The API server keeps an HTTP/2 connection to a pod for as
    ///    long as the pod keeps it, whatever the endpoints say: it must be told.
    /// 2. For the drain delay, new connections are still accepted and served (the endpoints and the API
    ///    server's resolver take a moment to drop a terminating pod, and a dial that still lands here must
    ///    not be refused); each is asked to end once its first request has come.
    /// 3. Then the listener closes, every connection left is asked to end, and requests in flight get up to
    ///    the shutdown timeout.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Server { listener, tls, state, config, stop_watchers } = self;
        let (phase_tx, phase) = watch::channel(Phase::Serving);
        let mut connections = tokio::task::JoinSet::new();
        let accept_until = async {
            shutdown.await;
            state.draining.store(true, Ordering::SeqCst);
            let _ = phase_tx.send(Phase::Draining);
            tracing::info!(drain_delay = ?config.drain_delay, "shutdown requested; /readyz now fails and open connections are asked to end");
            tokio::time::sleep(config.drain_delay).await;
        };
        tokio::pin!(accept_until);
        let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
        loop {
            // Finished connections are reaped as they go, so the set holds only open ones.
            while connections.try_join_next().is_some() {}
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                _ = &mut accept_until => break,
            };
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut accept_until => break,
            };
            let _ = tcp.set_nodelay(true);
            let connection = serve_connection(tcp, peer, tls.clone(), state.clone(), config.first_request_timeout, phase.clone());
            connections.spawn(async move {
                let _permit = permit;
                connection.await;
            });
        }
        drop(listener);
        let _ = stop_watchers.send(true);
        let _ = phase_tx.send(Phase::Stopping);
        tracing::info!(open_connections = connections.len(), "stopped accepting; draining in-flight requests");
        let drained = async { while connections.join_next().await.is_some() {} };
        match tokio::time::timeout(config.shutdown_timeout, drained).await {
            Ok(()) => tracing::info!("drained; bye"),
            Err(_) => tracing::warn!(timeout = ?config.shutdown_timeout, "shutdown timeout reached with requests still in flight"),
        }
    }
}

/// One connection, from the TLS handshake to its end: served by hyper with the protocol ALPN chose, closed if
/// no request comes in time, and asked to end (GOAWAY, or close after the next answer) once the server drains
/// and it has had a request, or once the listener has closed.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
    state: Arc<State>,
    first_request_timeout: Duration,
    mut phase: watch::Receiver<Phase>,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    // The protocol is the one ALPN chose, so hyper never waits to sniff it.
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let started = Arc::new(AtomicBool::new(false));
    let first_request = Arc::new(Notify::new());
    let (seen, told) = (started.clone(), first_request.clone());
    let service = service_fn(move |request| {
        if !seen.swap(true, Ordering::Relaxed) {
            told.notify_one();
        }
        handle(state.clone(), request)
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder = if h2 { builder.http2_only() } else { builder.http1_only() };
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Duration::from_secs(30)).keep_alive_timeout(Duration::from_secs(10));
    let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
    tokio::pin!(connection);
    // A client that connects and then says nothing must not hold a connection slot forever.
    let idle_before_first_request = async {
        tokio::time::sleep(first_request_timeout).await;
        if started.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    // When the server drains: once this connection has had a request (at once if it has had
    // one already), or when the listener has closed.
    let asked_to_end = async {
        loop {
            let now = *phase.borrow_and_update();
            if now == Phase::Stopping || (now == Phase::Draining && started.load(Ordering::Relaxed)) {
                return;
            }
            tokio::select! {
                changed = phase.changed() => if changed.is_err() { std::future::pending::<()>().await },
                () = first_request.notified() => {}
            }
        }
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = idle_before_first_request => return tracing::debug!(%peer, "no request in time; connection closed"),
        () = asked_to_end => {
            connection.as_mut().graceful_shutdown();
            connection.as_mut().await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Where the server is in its life, for every connection to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Shutdown asked for: still accepting; connections end once they have answered.
    Draining,
    /// The listener has closed: every connection ends.
    Stopping,
}

type HttpResponse = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    let body = json!({"error": message.into(), "status": status.as_u16()});
    respond(status, "application/json", body.to_string())
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::POST, "/mutate") => mutate(&state, request, None).await,
        // Namespaces labeled tollgate.dev/mode=warn (the MutatingWebhookConfiguration sends them here).
        (&Method::POST, "/mutate/warn") => mutate(&state, request, Some(OnViolation::Warn)).await,
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") if state.draining.load(Ordering::SeqCst) => {
            respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
        }
        (&Method::GET, "/readyz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/metrics") => {
            respond(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", state.metrics.encode())
        }
        (_, "/mutate" | "/mutate/warn" | "/healthz" | "/readyz" | "/metrics") => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, format!("method {} is not allowed here", request.method()))
        }
        (_, path) => json_error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    };
    Ok(response)
}

/// Answer a review; `mode` in place of the policy's onViolation, for pod creation.
async fn mutate(state: &State, request: Request<Incoming>, mode: Option<OnViolation>) -> HttpResponse {
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.or(request.body().size_hint().exact()).is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        state.series.bad_requests.observe("too-large");
        return json_error(StatusCode::PAYLOAD_TOO_LARGE, format!("body is larger than {MAX_BODY_BYTES} bytes"));
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(request.into_body(), MAX_BODY_BYTES).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            state.series.bad_requests.observe("too-large");
            return json_error(StatusCode::PAYLOAD_TOO_LARGE, format!("body is larger than {MAX_BODY_BYTES} bytes"));
        }
        Ok(Err(e)) => {
            state.series.bad_requests.observe("body-read");
            return json_error(StatusCode::BAD_REQUEST, format!("reading the body failed: {e}"));
        }
        Err(_) => {
            state.series.bad_requests.observe("body-timeout");
            return json_error(StatusCode::REQUEST_TIMEOUT, format!("body not received within {BODY_TIMEOUT:?}"));
        }
    };
    // `started` is when the review itself began (a queued large review waits first).
    let (result, started) = if body.len() <= INLINE_REVIEW_BYTES {
        // A small review takes tens of microseconds: answered right here, as handing it to another
        // thread would cost about as much again.
        let started = Instant::now();
        let policy = state.policy.load();
        let keys = state.record_keys.load();
        (review::review_with(&policy, mode, &keys, &body), started)
    } else {
        // Large reviews run on their own threads, one per core (pool.rs).
        let policy = state.policy.load_full();
        let keys = state.record_keys.load_full();
        let reviewed = state.large_reviews.run(move || (Instant::now(), review::review_with(&policy, mode, &keys, &body))).await;
        let Some((started, result)) = reviewed else {
            tracing::error!("a large review failed; it panicked");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "the review failed; see the webhook's log");
        };
        (result, started)
    };
    match result {
        Ok((response, summary)) => {
            let elapsed = started.elapsed();
            state.series.reviews.observe(&summary, elapsed.as_secs_f64());
            if let (Some(events), Some(note)) = (&state.events, summary.event.clone()) {
                events.offer(note);
            }
            let rules: Vec<&str> = summary.denied_rules.iter().map(|r| r.as_str()).collect();
            tracing::info!(
                uid = %summary.uid,
                namespace = %summary.namespace,
                name = %summary.name,
                outcome = summary.outcome.as_str(),
                changes = summary.changes,
                rules = %rules.join(","),
                duration_us = elapsed.as_micros() as u64,
                "review"
            );
            respond(StatusCode::OK, "application/json", response)
        }
        Err(e) => {
            state.series.bad_requests.observe("not-an-admission-review");
            tracing::warn!(error = %e, "bad request");
            json_error(StatusCode::BAD_REQUEST, e.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each layer registers its own series; wired together they are exported as before, in this order.
    #[test]
    fn every_layers_series_is_exported_in_order() {
        let mut metrics = Metrics::new();
        let series = Series::wire(&mut metrics);
        let skipped = review::ReviewSummary {
            uid: "u".into(),
            namespace: "ns".into(),
            name: "p".into(),
            outcome: review::ReviewOutcome::Skipped,
            changes: 0,
            denied_rules: Vec::new(),
            skip_reason: Some("opted-out"),
            event: None,
        };
        series.reviews.observe(&skipped, 0.001);
        series.bad_requests.observe("too-large");
        series.reloads.observe("tls", true);
        series.events.observe("dropped");
        series.certificate.observe(Some(7));
        series.policy.observe("sha256:000000000000");
        series.policy.observe("sha256:0123456789ab");
        let text = metrics.encode();
        let families: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        assert_eq!(
            families,
            [
                "tollgate_webhook_reviews counter",
                "tollgate_webhook_review_duration_seconds histogram",
                "tollgate_webhook_denials counter",
                "tollgate_webhook_warned_violations counter",
                "tollgate_webhook_skips counter",
                "tollgate_webhook_bad_requests counter",
                "tollgate_webhook_reloads counter",
                "tollgate_webhook_events counter",
                "tollgate_webhook_certificate_expiry_seconds gauge",
                "tollgate_webhook_policy_info gauge",
            ]
        );
        for line in [
            r#"tollgate_webhook_bad_requests_total{reason="too-large"} 1"#,
            r#"tollgate_webhook_reloads_total{file="tls",result="success"} 1"#,
            r#"tollgate_webhook_events_total{result="dropped"} 1"#,
            "tollgate_webhook_certificate_expiry_seconds 7",
            r#"tollgate_webhook_reviews_total{outcome="invalid"} 0"#,
            r#"tollgate_webhook_reviews_total{outcome="skipped"} 1"#,
            r#"tollgate_webhook_skips_total{reason="opted-out"} 1"#,
            r#"tollgate_webhook_warned_violations_total{rule="privileged"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
        // The policy in force alone: a reload replaces the series.
        let info: Vec<&str> = text.lines().filter(|l| l.starts_with("tollgate_webhook_policy_info{")).collect();
        let expected =
            format!(r#"tollgate_webhook_policy_info{{version="{}",policy="sha256:0123456789ab"}} 1"#, tollgate_api::names::VERSION);
        assert_eq!(info, [expected.as_str()]);
    }
}
