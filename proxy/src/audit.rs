//! The audit line: one JSON line on stderr for every request the proxy answers, on every listener —
//! those its phases handled, those refused below them (connections.rs), and those pingora's parser refused
//! (connections.rs sees pingora answer a head tollgate never saw).
//!
//! Written directly, not through `tracing`: it is on the path of every request, and the generic JSON
//! formatter cost more than all of tollgate's request checks together (measured with callgrind). The line
//! has the shape of the other log lines (`timestamp`, `level`, `message: "request"`, `target`), is
//! serialized in one buffer and written with one call, so lines never interleave. It follows `TOLLGATE_LOG`
//! like any INFO line of the target `tollgate_proxy::audit`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::metrics::{Metrics, RequestLabels};

/// The proxy's metrics, once they exist, for answers given outside a listener's phases.
pub static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether audit lines are written, from the log filter in force (call once logging is set up).
pub fn init() {
    ENABLED.store(tracing::enabled!(target: "tollgate_proxy::audit", tracing::Level::INFO), Ordering::Relaxed);
}

/// One request as answered.
#[derive(Debug, Default)]
pub struct Line<'a> {
    pub listener: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    /// The normalized path (egress) or the checked target (ingress); empty when the head was never read.
    pub path: &'a str,
    /// What the caller got; 0 when nothing was sent.
    pub status: u16,
    pub decision: &'a str,
    pub reason: &'a str,
    /// Ingress only: who called (`azp`/`client_id`).
    pub client: Option<&'a str>,
    /// Egress only: request body bytes sent upstream.
    pub bytes_in: Option<u64>,
    pub bytes_out: usize,
    pub duration_ms: f64,
    pub request_id: &'a str,
    /// Left out when empty.
    pub error: &'a str,
}

/// A line with the log lines' common fields around it. Serialized by hand: `#[serde(flatten)]` buffers
/// every field through an intermediate map first (a fifth of the audit line's cost, measured).
struct Record<'a> {
    timestamp: &'a str,
    level: &'static str,
    message: &'static str,
    line: &'a Line<'a>,
    target: &'static str,
}

impl Serialize for Record<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let l = self.line;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("timestamp", self.timestamp)?;
        map.serialize_entry("level", self.level)?;
        map.serialize_entry("message", self.message)?;
        map.serialize_entry("listener", l.listener)?;
        map.serialize_entry("route", l.route)?;
        map.serialize_entry("method", l.method)?;
        map.serialize_entry("path", l.path)?;
        map.serialize_entry("status", &l.status)?;
        map.serialize_entry("decision", l.decision)?;
        map.serialize_entry("reason", l.reason)?;
        if let Some(client) = l.client {
            map.serialize_entry("client", client)?;
        }
        if let Some(bytes_in) = l.bytes_in {
            map.serialize_entry("bytes_in", &bytes_in)?;
        }
        map.serialize_entry("bytes_out", &l.bytes_out)?;
        map.serialize_entry("duration_ms", &l.duration_ms)?;
        map.serialize_entry("request_id", l.request_id)?;
        if !l.error.is_empty() {
            map.serialize_entry("error", l.error)?;
        }
        map.serialize_entry("target", self.target)?;
        map.end()
    }
}

/// Write `line` (when audit lines are on).
pub fn write(line: &Line<'_>) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let now = time::OffsetDateTime::now_utc();
    let timestamp = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let record = Record { timestamp: &timestamp, level: "INFO", message: "request", line, target: "tollgate_proxy::audit" };
    let mut buffer = Vec::with_capacity(384);
    if serde_json::to_writer(&mut buffer, &record).is_ok() {
        buffer.push(b'\n');
        let _ = std::io::stderr().lock().write_all(&buffer);
    }
}

/// The audit line and the count of an answer given without a request tollgate's phases saw.
pub fn refusal(listener: &'static str, status: u16, decision: &'static str, reason: &str) {
    if let Some(metrics) = METRICS.get() {
        metrics.request(RequestLabels { listener, route: "", status, decision });
    }
    let request_id = crate::egress::request_id(None);
    write(&Line { listener, status, decision, reason, request_id: &request_id, ..Line::default() });
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

/// Leaves out pingora's own error line about a read that connections.rs failed on purpose: that refusal
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
    fn a_line_is_one_json_object_with_the_log_lines_shape() {
        let line =
            Line { listener: "egress", route: "hub", method: "GET", path: "/a \"b\"", status: 200, bytes_in: Some(3), ..Line::default() };
        let record = Record { timestamp: "t", level: "INFO", message: "request", line: &line, target: "tollgate_proxy::audit" };
        let text = serde_json::to_string(&record).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["message"], "request");
        assert_eq!(value["path"], "/a \"b\"");
        assert_eq!(value["bytes_in"], 3);
        assert!(value.get("client").is_none() && value.get("error").is_none(), "{value}");
    }
}
