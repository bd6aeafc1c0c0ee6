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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::decision::Decision;

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
    pub decision: Decision,
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
        string(out, l.decision.label());
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

/// `tollgate_proxy_requests_total`: the requests answered, by listener, route, status and decision — the
/// count beside the audit line, shared by the listeners' phases and connections.rs (clones share the series).
#[derive(Clone, Default)]
pub struct Requests(Family<RequestLabels, Counter>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: &'static str,
    route: &'static str,
    status: u16,
    decision: Decision,
}

impl Requests {
    pub fn register(registry: &mut Registry) -> Requests {
        let requests = Requests::default();
        registry.register("requests", "Requests answered, by listener, route, status and decision", requests.0.clone());
        requests
    }

    pub fn count(&self, listener: &'static str, route: &'static str, status: u16, decision: Decision) {
        self.0.get_or_create(&RequestLabels { listener, route, status, decision }).inc();
    }
}

/// The audit line and the count of an answer given without a request tollgate's phases saw.
pub fn refusal(requests: &Requests, listener: &'static str, status: u16, decision: Decision, reason: &str) {
    requests.count(listener, "", status, decision);
    let request_id = request_id(None);
    write(&Line { listener, status, decision, reason, request_id: &request_id, ..Line::default() });
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
            decision: Decision::UpstreamError,
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
            "route": "hub", "method": "GET", "path": awkward, "status": 502, "decision": "upstream-error",
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
