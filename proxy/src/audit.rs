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

/// A line with the log lines' common fields around it.
struct Record<'a> {
    timestamp: &'a str,
    level: &'static str,
    message: &'static str,
    line: &'a Line<'a>,
    target: &'static str,
}

impl Record<'_> {
    /// The record as one JSON object, appended to `out`. Written by hand: through serde_json's generic
    /// serializer the line cost about 5k instructions per request, most of it escaping field names and
    /// values that are nearly always plain (callgrind); this is the same text (a test holds it).
    fn encode(&self, out: &mut Vec<u8>) {
        let l = self.line;
        out.extend_from_slice(b"{\"timestamp\":");
        string(out, self.timestamp);
        for (key, value) in [
            (&b",\"level\":"[..], self.level),
            (b",\"message\":", self.message),
            (b",\"listener\":", l.listener),
            (b",\"route\":", l.route),
            (b",\"method\":", l.method),
            (b",\"path\":", l.path),
        ] {
            out.extend_from_slice(key);
            string(out, value);
        }
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(l.status).as_bytes());
        out.extend_from_slice(b",\"decision\":");
        string(out, l.decision);
        out.extend_from_slice(b",\"reason\":");
        string(out, l.reason);
        if let Some(client) = l.client {
            out.extend_from_slice(b",\"client\":");
            string(out, client);
        }
        if let Some(bytes_in) = l.bytes_in {
            out.extend_from_slice(b",\"bytes_in\":");
            out.extend_from_slice(itoa::Buffer::new().format(bytes_in).as_bytes());
        }
        out.extend_from_slice(b",\"bytes_out\":");
        out.extend_from_slice(itoa::Buffer::new().format(l.bytes_out).as_bytes());
        out.extend_from_slice(b",\"duration_ms\":");
        if l.duration_ms.is_finite() {
            out.extend_from_slice(ryu::Buffer::new().format_finite(l.duration_ms).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
        out.extend_from_slice(b",\"request_id\":");
        string(out, l.request_id);
        if !l.error.is_empty() {
            out.extend_from_slice(b",\"error\":");
            string(out, l.error);
        }
        out.extend_from_slice(b",\"target\":");
        string(out, self.target);
        out.push(b'}');
    }
}

/// `s` as a JSON string: copied as it is when nothing in it needs escaping, else escaped by serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
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
    record.encode(&mut buffer);
    buffer.push(b'\n');
    let _ = std::io::stderr().lock().write_all(&buffer);
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

    fn encoded(line: &Line<'_>) -> String {
        let record =
            Record { timestamp: "2026-11-23T10:00:00.5Z", level: "INFO", message: "request", line, target: "tollgate_proxy::audit" };
        let mut out = Vec::new();
        record.encode(&mut out);
        String::from_utf8(out).expect("the line is UTF-8")
    }

    #[test]
    fn a_line_is_the_json_serde_json_writes_for_it() {
        // Every string needing escapes somewhere, and the optional fields both ways.
        let awkward = "a \"quoted\" \\ back\\slash\n\t\u{1}\u{7f} ä ✓";
        let full = Line {
            listener: "egress",
            route: "hub",
            method: "GET",
            path: awkward,
            status: 502,
            decision: "error",
            reason: "upstream-aborted",
            client: Some("flame\u{0}"),
            bytes_in: Some(u64::MAX),
            bytes_out: 17,
            duration_ms: 0.123456789,
            request_id: "tg-1-2",
            error: awkward,
        };
        let expected = serde_json::json!({
            "timestamp": "2026-11-23T10:00:00.5Z", "level": "INFO", "message": "request", "listener": "egress",
            "route": "hub", "method": "GET", "path": awkward, "status": 502, "decision": "error",
            "reason": "upstream-aborted", "client": "flame\u{0}", "bytes_in": u64::MAX, "bytes_out": 17,
            "duration_ms": 0.123456789, "request_id": "tg-1-2", "error": awkward, "target": "tollgate_proxy::audit",
        });
        assert_eq!(encoded(&full), expected.to_string());

        let bare = Line { listener: "ingress", status: 408, duration_ms: 1.0, ..Line::default() };
        let expected = serde_json::json!({
            "timestamp": "2026-11-23T10:00:00.5Z", "level": "INFO", "message": "request", "listener": "ingress",
            "route": "", "method": "", "path": "", "status": 408, "decision": "", "reason": "", "bytes_out": 0,
            "duration_ms": 1.0, "request_id": "", "target": "tollgate_proxy::audit",
        });
        assert_eq!(encoded(&bare), expected.to_string());
    }

    #[test]
    fn a_duration_that_is_not_a_number_is_null() {
        let line = Line { duration_ms: f64::NAN, ..Line::default() };
        let value: serde_json::Value = serde_json::from_str(&encoded(&line)).unwrap();
        assert_eq!(value["duration_ms"], serde_json::Value::Null);
    }
}
