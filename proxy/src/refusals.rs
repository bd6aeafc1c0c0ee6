//! Requests pingora answers by itself, before any of tollgate's code runs. A request head its parser
//! refuses — obs-fold, a bad header name, conflicting Content-Lengths, bytes that are not HTTP — gets
//! pingora's 400 and no callback at all. pingora does log each one ("Fail to proxy: Downstream
//! InvalidHTTPHeader …", at debug, target `pingora_proxy`), on a thread of the service that read it, which
//! is named after its listener. This layer turns exactly those log events into tollgate's audit line and
//! request counter, so that every request the proxy answers leaves one of each.
//!
//! The audit line carries the parser's cause, never the request bytes pingora quotes (they may hold a
//! credential).

use std::sync::{Arc, OnceLock};

/// The proxy's metrics, once they exist (logging starts before them).
pub static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer};

use crate::metrics::{Metrics, RequestLabels};

/// The service (and thread) names of the two proxy listeners.
pub const LISTENERS: [&str; 2] = ["egress", "ingress"];

const PARSER_REFUSAL: &str = "Fail to proxy: Downstream InvalidHTTPHeader";

/// The layer; it counts into [`METRICS`].
pub struct ParserRefusals;

impl ParserRefusals {
    /// Only what this layer needs to see: pingora_proxy's debug events (its request path logs little else).
    pub fn filter() -> Targets {
        Targets::new().with_target("pingora_proxy", Level::DEBUG)
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

/// What the parser objected to, without the request bytes: `cause: …` when pingora names one, else its
/// context unless that quotes the buffer.
pub fn cause(message: &str) -> String {
    let detail = message.strip_prefix(PARSER_REFUSAL).unwrap_or(message);
    let detail = detail.split(", downstream session type").next().unwrap_or(detail);
    if let Some((_, cause)) = detail.split_once("cause: ") {
        return format!("unparseable request head: {}", cause.trim());
    }
    match detail.trim().strip_prefix("context: ") {
        Some(context) if !context.starts_with("buf:") => format!("unparseable request head: {}", context.trim()),
        _ => "unparseable request head".to_owned(),
    }
}

impl<S: Subscriber> Layer<S> for ParserRefusals {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let normalized = event.normalized_metadata();
        let target = normalized.as_ref().map_or(event.metadata().target(), |m| m.target());
        if target != "pingora_proxy" {
            return;
        }
        let mut message = Message::default();
        event.record(&mut message);
        if !message.0.starts_with(PARSER_REFUSAL) {
            return;
        }
        let thread = std::thread::current();
        let listener = LISTENERS.into_iter().find(|l| thread.name().is_some_and(|n| n.starts_with(l))).unwrap_or("unknown");
        record(listener, 400, "bad-request", &cause(&message.0));
    }
}

/// The audit line and the count of an answer given without a request tollgate's phases saw: one pingora's
/// parser refused, or one refused below it (connections.rs).
pub fn record(listener: &'static str, status: u16, decision: &'static str, reason: &str) {
    if let Some(metrics) = METRICS.get() {
        metrics.request(RequestLabels { listener, route: String::new(), status, decision });
    }
    let request_id = crate::egress::request_id(None);
    tracing::info!(listener, route = "", method = "", path = "", status, decision, reason, request_id, "request");
}

/// Leaves out pingora's own error line about a read that connections.rs failed on purpose: that refusal
/// has its audit line already, and an attacker holding connections should not also fill the log.
pub struct QuietLimitErrors;

impl<S: Subscriber> Layer<S> for QuietLimitErrors {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        // pingora logs through `log`; its events arrive with the target "log" (the real one is a field).
        if event.metadata().target() != "log" {
            return true;
        }
        let mut message = Message::default();
        event.record(&mut message);
        !message.0.contains(crate::connections::REFUSED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_and_the_request_bytes_are_not() {
        let folded = r#"Fail to proxy: Downstream InvalidHTTPHeader context: buf: "GET /a HTTP/1.1\r\nauthorization: Bearer secret\r\n x\r\n\r\n" cause: invalid header name, downstream session type: h1"#;
        assert_eq!(cause(folded), "unparseable request head: invalid header name");
        let length = "Fail to proxy: Downstream InvalidHTTPHeader context: invalid Content-Length header, downstream session type: h1";
        assert_eq!(cause(length), "unparseable request head: invalid Content-Length header");
        let quoted =
            r#"Fail to proxy: Downstream InvalidHTTPHeader context: buf: "authorization: Bearer secret", downstream session type: h1"#;
        assert_eq!(cause(quoted), "unparseable request head");
    }
}
