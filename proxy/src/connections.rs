//! Bounds on each listener's downstream connections, below pingora's HTTP/1 parser, which has none an
//! attacker cannot outlast: it waits up to 60 s for *each* read of a request head (one header line a
//! minute keeps a connection forever), lets a head grow to 1 MiB, and accepts any number of connections.
//!
//! [`Guard`] wraps a listener's app. An accepted connection must fit under the listener's cap and, on
//! listeners other than egress, under its peer address's cap; otherwise it is answered 503 and closed.
//! [`GuardedStream`] then gives every request head a total deadline and a size cap (408 or 431, then
//! closed), counted from the connection's opening for its first request and from the first byte of each
//! later one. Where a head ends is where the app first sees the request ([`head_received`], from
//! `early_request_filter` and the admin's handler); the next may begin once the answer is done
//! ([`request_done`]). Body reads are not bounded here: on the ingress only a caller with a valid token
//! gets that far, and the routes' `readTimeout` and `maxRequestBody` apply.
//!
//! Every answer given here gets an audit line and a count, like any request the proxy answers.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Layer;

use crate::audit::Requests;
use crate::decision::Decision;

pub use crate::config::Limits;

/// The text every refusal of this module gives pingora as the read error, so that pingora's own log line
/// about it can be told apart (and left out: the audit line says it already).
pub const REFUSED: &str = "tollgate-connection-limit";

/// What the listeners count (registered by metrics.rs): their open connections, and the requests answered
/// here, below the listeners' phases.
#[derive(Clone)]
pub struct ConnectionMetrics {
    open: Family<ListenerLabels, Gauge>,
    requests: Requests,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

impl ConnectionMetrics {
    /// Registers the open connections in `registry`; the answers are counted in the listeners' `requests`.
    pub fn register(registry: &mut Registry, requests: Requests) -> ConnectionMetrics {
        let open = Family::<ListenerLabels, Gauge>::default();
        registry.register("connections", "Open downstream connections, by listener", open.clone());
        ConnectionMetrics { open, requests }
    }
}

/// One listener's open connections, shared by its [`Guard`] and every [`GuardedStream`] it made.
pub struct Listener {
    name: &'static str,
    limits: Limits,
    open: Mutex<Open>,
    /// The listener's series of the open connections.
    open_gauge: Gauge,
    requests: Requests,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

impl Listener {
    pub fn new(name: &'static str, limits: Limits, metrics: &ConnectionMetrics) -> Arc<Listener> {
        let open_gauge = metrics.open.get_or_create(&ListenerLabels { listener: name }).clone();
        let listener = Listener { name, limits, open: Mutex::new(Open::default()), open_gauge, requests: metrics.requests.clone() };
        listener.count_open(0);
        Arc::new(listener)
    }

    fn count_open(&self, open: usize) {
        self.open_gauge.set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// Count a new connection in, or say why it cannot be.
    fn admit(&self, peer: Option<IpAddr>) -> Result<(), String> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.limits.max_per_listener {
            return Err(format!("the {} listener has {} open connections, its limit", self.name, open.total));
        }
        if let (Some(max), Some(peer)) = (self.limits.max_per_peer, peer) {
            let from_peer = open.per_peer.entry(peer).or_default();
            if *from_peer >= max {
                return Err(format!("{peer} has {max} open connections to the {} listener, the limit per address", self.name));
            }
            *from_peer += 1;
        }
        open.total += 1;
        self.count_open(open.total);
        Ok(())
    }

    fn release(&self, peer: Option<IpAddr>) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let (Some(_), Some(peer)) = (self.limits.max_per_peer, peer)
            && let Some(from_peer) = open.per_peer.get_mut(&peer)
        {
            *from_peer -= 1;
            if *from_peer == 0 {
                open.per_peer.remove(&peer);
            }
        }
        self.count_open(open.total);
    }
}

/// A listener's app, behind the listener's connection limits.
pub struct Guard<A> {
    app: Arc<A>,
    listener: Arc<Listener>,
}

impl<A> Guard<A> {
    pub fn new(app: A, listener: Arc<Listener>) -> Guard<A> {
        Guard { app: Arc::new(app), listener }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guard<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // pingora keeps an HTTP/1 connection inside the app between requests; one handed back is ours already.
        if stream.as_any().is::<GuardedStream>() {
            return self.app.process_new(stream, shutdown).await;
        }
        let peer = stream.get_socket_digest().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_canonical()));
        match self.listener.admit(peer) {
            Ok(()) => self.app.process_new(Box::new(GuardedStream::new(stream, self.listener.clone(), peer)), shutdown).await,
            Err(reason) => {
                refuse_connection(stream, &self.listener, &reason).await;
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// 503 on a connection over a limit, without reading from it; then closed.
async fn refuse_connection(mut stream: Stream, listener: &Listener, reason: &str) {
    let decision = Decision::TooManyConnections;
    let status = decision.status().expect("a refusal");
    crate::audit::refusal(&listener.requests, listener.name, status, decision, reason);
    let answer = answer(status, decision, reason, "retry-after: 1\r\n");
    // Bounded, so that a peer that does not read cannot hold this either.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&answer).await?;
        stream.flush().await?;
        Shutdown::shutdown(&mut *stream).await;
        io::Result::Ok(())
    })
    .await;
}

/// A whole HTTP/1.1 answer with the proxy's JSON error body, closing the connection.
fn answer(status: u16, decision: Decision, reason: &str, extra_headers: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": reason, "status": status, "decision": decision.label()}).to_string();
    let phrase = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    format!(
        "HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Where a connection is between its requests. Set by the stream (reads) and by the app's phases
/// (through `&`, hence atomic; both run on the connection's one task).
const FRESH: u8 = 0; // no request yet: the first head is due by the deadline set at accept
const HEAD: u8 = 1; // bytes of a head have arrived: it is due by the deadline
const BODY: u8 = 2; // the head was parsed; what is read now is the request's body
const IDLE: u8 = 3; // between requests: pingora's keep-alive timeout bounds the wait for the next byte
const CLOSED: u8 = 4; // refused here

/// A connection of a guarded listener; counted out of its listener when dropped.
pub struct GuardedStream {
    inner: Stream,
    listener: Arc<Listener>,
    peer: Option<IpAddr>,
    phase: AtomicU8,
    head_bytes: usize,
    deadline: Instant,
    /// Armed only when a head read has to wait: most heads arrive in one read and never touch a timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl GuardedStream {
    fn new(inner: Stream, listener: Arc<Listener>, peer: Option<IpAddr>) -> GuardedStream {
        let deadline = Instant::now() + listener.limits.head_timeout;
        GuardedStream { inner, listener, peer, phase: AtomicU8::new(FRESH), head_bytes: 0, deadline, timer: None }
    }

    fn set_phase(&self, phase: u8) {
        // A refused connection stays refused.
        let _ = self.phase.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| (p != CLOSED).then_some(phase));
    }

    /// Answer `decision` (with its status) on the connection and fail the read. The answer is written
    /// without waiting: between requests the socket's send buffer is empty, and pingora flushes and shuts
    /// the stream down on the read error anyway.
    fn refuse(&mut self, cx: &mut Context<'_>, decision: Decision, reason: String) -> Poll<io::Result<()>> {
        self.phase.store(CLOSED, Ordering::Relaxed);
        let status = decision.status().expect("a refusal");
        crate::audit::refusal(&self.listener.requests, self.listener.name, status, decision, &reason);
        let answer = answer(status, decision, &reason, "");
        if let Poll::Ready(Ok(_)) = Pin::new(&mut self.inner).poll_write(cx, &answer) {
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        Poll::Ready(Err(refused()))
    }

    /// The head's time is up: 408 if part of one came, else (a connection that never sent a byte) just the
    /// end of the stream, which pingora takes as a client gone without a request.
    fn expire(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.head_bytes == 0 {
            self.phase.store(CLOSED, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let timeout = self.listener.limits.head_timeout;
        let reason = format!("the request head was not complete within {timeout:?} ({} bytes came)", self.head_bytes);
        self.refuse(cx, Decision::HeadTimeout, reason)
    }
}

impl GuardedStream {
    /// pingora answers a head that never reached tollgate's phases: its parser refused it (obs-fold, a bad
    /// header name, two Hosts, conflicting Content-Lengths, bytes that are not HTTP). Audited and counted
    /// here, where pingora's own code has no callback; the connection ends after such an answer.
    fn answered_unseen(&mut self, answer: &[u8]) {
        self.phase.store(CLOSED, Ordering::Relaxed);
        let status = answer.get(9..12).and_then(|s| std::str::from_utf8(s).ok()?.parse().ok()).unwrap_or(0);
        let reason = "pingora's HTTP parser refused the request head (malformed, ambiguous or not HTTP/1)";
        crate::audit::refusal(&self.listener.requests, self.listener.name, status, Decision::BadRequest, reason);
    }
}

fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, REFUSED)
}

impl AsyncRead for GuardedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let phase = this.phase.load(Ordering::Relaxed);
        match phase {
            BODY => return Pin::new(&mut this.inner).poll_read(cx, buf),
            CLOSED => return Poll::Ready(Err(refused())),
            IDLE => this.head_bytes = 0,
            _ => {
                let max = this.listener.limits.max_head_size;
                if this.head_bytes >= max {
                    let reason = format!("the request head is larger than {max} bytes");
                    return this.refuse(cx, Decision::HeadTooLarge, reason);
                }
                if Instant::now() >= this.deadline {
                    return this.expire(cx);
                }
            }
        }
        // Never more than the head may still take: a read past the cap fails above, not inside a buffer.
        let room = this.listener.limits.max_head_size - this.head_bytes;
        let before = buf.filled().len();
        let polled = if buf.remaining() > room {
            let mut limited = buf.take(room);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
            let n = limited.filled().len();
            // SAFETY: `limited` is a view of `buf`'s unfilled part, and its first `n` bytes were filled.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            polled
        } else {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        };
        match polled {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    if phase == IDLE {
                        this.deadline = Instant::now() + this.listener.limits.head_timeout;
                    }
                    this.head_bytes += n;
                    this.set_phase(HEAD);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if phase == IDLE => Poll::Pending,
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => this.expire(cx),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// The stream of a request's connection, if it is a guarded one.
fn guarded(session: &ServerSession) -> Option<&GuardedStream> {
    session.stream()?.as_any().downcast_ref::<GuardedStream>()
}

/// The request's head has been read whole: what the connection reads next is its body.
pub fn head_received(session: &ServerSession) {
    if let Some(stream) = guarded(session) {
        stream.set_phase(BODY);
    }
}

/// The request has been answered: the next byte on the connection starts the next head.
pub fn request_done(session: &ServerSession) {
    if let Some(stream) = guarded(session) {
        stream.set_phase(IDLE);
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        self.listener.release(self.peer);
    }
}

impl fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedStream").field("inner", &self.inner).field("phase", &self.phase).finish()
    }
}

// Everything else is the inner stream's.

impl AsyncWrite for GuardedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.phase.load(Ordering::Relaxed), FRESH | HEAD) {
            this.answered_unseen(buf);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_owned();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

/// Leaves out pingora's own error line about a read that this module failed on purpose: that refusal
/// has its audit line already, and an attacker holding connections should not also fill the log.
pub struct QuietLimitErrors;

impl QuietLimitErrors {
    /// Only what this layer needs to see: errors. Without a filter of its own it would be asked about every
    /// event of every level — pingora's per-request debug and trace lines included, each formatted to be
    /// looked at (a third of the proxy's time per request, measured).
    pub fn filter() -> tracing_subscriber::filter::LevelFilter {
        tracing_subscriber::filter::LevelFilter::ERROR
    }
}

impl<S: Subscriber> Layer<S> for QuietLimitErrors {
    fn event_enabled(&self, event: &Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) -> bool {
        // pingora logs through `log`; its events arrive with the target "log" (the real one is a field).
        if event.metadata().target() != "log" {
            return true;
        }
        let mut message = Message::default();
        event.record(&mut message);
        !message.0.contains(REFUSED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_complete_http_responses_that_close_the_connection() {
        let text = String::from_utf8(answer(408, Decision::HeadTimeout, "slow \"head\"", "")).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json, serde_json::json!({"error": "slow \"head\"", "status": 408, "decision": "head-timeout"}));
    }

    #[test]
    fn a_listener_counts_connections_in_and_out_per_peer() {
        let limits = Limits { head_timeout: Duration::from_secs(1), max_head_size: 1024, max_per_listener: 3, max_per_peer: Some(2) };
        let mut registry = Registry::default();
        let requests = Requests::register(&mut registry);
        let metrics = ConnectionMetrics::register(&mut registry, requests);
        let listener = Listener::new("ingress", limits, &metrics);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        listener.admit(Some(a)).unwrap();
        listener.admit(Some(a)).unwrap();
        let full = listener.admit(Some(a)).unwrap_err();
        assert!(full.contains("10.0.0.1 has 2 open connections"), "{full}");
        listener.admit(Some(b)).unwrap();
        let full = listener.admit(Some(b)).unwrap_err();
        assert!(full.contains("has 3 open connections, its limit"), "{full}");
        listener.release(Some(a));
        listener.admit(Some(b)).unwrap();
        for peer in [a, b, b] {
            listener.release(Some(peer));
        }
        assert_eq!(listener.open.lock().unwrap().total, 0);
        assert!(listener.open.lock().unwrap().per_peer.is_empty(), "no address is remembered once its connections are gone");
        assert_eq!(listener.open_gauge.get(), 0);
    }
}
