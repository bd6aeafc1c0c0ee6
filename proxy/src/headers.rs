//! Which request headers a caller may not pass on: credentials, and headers that let it speak for
//! someone else or rewrite what the upstream thinks the request is.

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::Result;
use pingora::proxy::Session;
// The header names the proxy owns are part of the route table's contract (a claim may not be mapped onto one).
pub use tollgate_api::proxy::headers::{is_reserved, is_spoofable};

/// Answer locally with `{"error", "status", "decision"}` and close; nothing is forwarded. `headers` go
/// along (`WWW-Authenticate`, `Retry-After`).
pub async fn json_error(
    session: &mut Session,
    status: u16,
    decision: &str,
    reason: &str,
    headers: Vec<(&'static str, String)>,
) -> Result<()> {
    let body = Bytes::from(serde_json::json!({"error": reason, "status": status, "decision": decision}).to_string());
    let mut header = ResponseHeader::build(status, Some(4))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    for (name, value) in headers {
        header.insert_header(name, value)?;
    }
    session.set_keepalive(None);
    session.write_response_header(Box::new(header), false).await?;
    session.write_response_body(Some(body), true).await
}

/// The one answer to a proxied request that failed, for both listeners (`fail_to_proxy`): the JSON error
/// while nothing has been sent to the client; once the response has started, nothing more. The caller then
/// closes the connection (`can_reuse_downstream: false`) without a final chunk, so the client sees a body cut
/// short — a chunked stream without its last chunk, fewer bytes than Content-Length — and never a
/// complete-looking response with the proxy's error inside it. Returns whether the response had started.
pub async fn answer_failure(session: &mut Session, status: u16, decision: &str, error: &str) -> bool {
    // A 101 is final too (the connection already belongs to another protocol); other 1xx are not.
    if session.response_written().is_some_and(|r| !r.status.is_informational() || r.status == 101) {
        session.set_keepalive(None);
        return true;
    }
    if let Err(e) = json_error(session, status, decision, error, Vec::new()).await {
        tracing::debug!(error = %e, "could not send the error response");
    }
    false
}

/// Whether a request asks to switch protocols (RFC 9110 §7.8): an `Upgrade` header, or `upgrade` among the
/// `Connection` options (h2c, WebSocket, anything). After a 101 the connection is a tunnel in which nothing is
/// checked, so both listeners refuse this unless a route allows it.
pub fn asks_for_upgrade(request: &RequestHeader) -> bool {
    request.headers.contains_key("upgrade")
        || request
            .headers
            .get_all("connection")
            .iter()
            .any(|v| v.as_bytes().split(|b| *b == b',').any(|option| option.trim_ascii().eq_ignore_ascii_case(b"upgrade")))
}

/// The response head an upstream sent, checked against what was asked: a 101 only answers a request that
/// asked for an upgrade (and was allowed to); relayed otherwise it would turn the connection into a tunnel.
pub fn check_switching(status: u16, upgrade_asked: bool) -> Result<(), String> {
    if status == 101 && !upgrade_asked {
        return Err("the upstream answered 101 Switching Protocols to a request that did not ask for an upgrade".into());
    }
    Ok(())
}

/// Drop every spoofable header; returns how many went.
pub fn strip_spoofable(request: &mut RequestHeader) -> usize {
    // Usually none: then nothing is allocated.
    let doomed: Vec<http::HeaderName> = request.headers.keys().filter(|n| is_spoofable(n.as_str())).cloned().collect();
    for name in &doomed {
        request.remove_header(name);
    }
    doomed.len()
}

/// Drop the configured credential headers (`credentialHeaders`: Kong's `apikey`, …), which the proxy alone
/// may set.
pub fn strip_credentials(request: &mut RequestHeader, names: &[http::HeaderName]) {
    for name in names {
        if request.headers.contains_key(name) {
            request.remove_header(name);
        }
    }
}

/// The request's framing, checked so that whoever reads it after the proxy reads the same request (RFC 9112
/// §6.3, RFC 9110 §8.6): `Ok(Some(length))` for one Content-Length, `Ok(None)` for no body or one `chunked`.
/// Refused: Content-Length and Transfer-Encoding together, more than one Content-Length (even equal ones, or
/// `3` and `03`), a Content-Length that is not only digits (a list `3, 3` included), any Transfer-Encoding
/// but one `chunked`. pingora has already refused some of these itself; the rest is checked here, on every
/// listener, before anything is forwarded.
pub fn check_framing(request: &RequestHeader) -> Result<Option<u64>, &'static str> {
    let headers = &request.headers;
    let mut lengths = headers.get_all("content-length").iter();
    let (length, more_lengths) = (lengths.next(), lengths.next().is_some());
    let mut encodings = headers.get_all("transfer-encoding").iter();
    let (encoding, more_encodings) = (encodings.next(), encodings.next().is_some());
    if encoding.is_some() && length.is_some() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    if more_lengths {
        return Err("more than one Content-Length");
    }
    if more_encodings || encoding.is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"chunked")) {
        return Err("Transfer-Encoding other than chunked");
    }
    match length {
        None => Ok(None),
        Some(value) => {
            let digits = value.as_bytes().trim_ascii();
            if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
                return Err("invalid Content-Length");
            }
            std::str::from_utf8(digits).ok().and_then(|d| d.parse::<u64>().ok()).map(Some).ok_or("invalid Content-Length")
        }
    }
}

/// Bytes a request head occupies on the wire (request line and headers), for the byte budget.
pub fn head_size(request: &RequestHeader, target: &str) -> u64 {
    let line = request.method.as_str().len() + 1 + target.len() + " HTTP/1.1\r\n".len();
    let headers: usize = request.headers.iter().map(|(n, v)| n.as_str().len() + 2 + v.len() + 2).sum();
    (line + headers + 2) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_requests_are_recognised_in_every_spelling() {
        let request = |headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            for (n, v) in headers {
                r.append_header(n.to_string(), *v).unwrap();
            }
            r
        };
        assert!(asks_for_upgrade(&request(&[("upgrade", "websocket")])));
        assert!(asks_for_upgrade(&request(&[("connection", "keep-alive, UpGrade ")])));
        assert!(asks_for_upgrade(&request(&[("connection", "close"), ("connection", "upgrade")])));
        assert!(!asks_for_upgrade(&request(&[("connection", "keep-alive, upgrades")])));
        assert!(!asks_for_upgrade(&request(&[("accept", "upgrade")])));
        assert!(check_switching(101, false).is_err());
        assert!(check_switching(101, true).is_ok() && check_switching(200, false).is_ok());
    }

    #[test]
    fn spoofable_names() {
        for name in [
            "authorization",
            "cookie",
            "x-forwarded-for",
            "x-forwarded-prefix",
            "x-original-url",
            "x-real-ip",
            "x-http-method-override",
            "x_forwarded_for",
            "my_header",
            "forwarded",
        ] {
            assert!(is_spoofable(name), "{name}");
        }
        for name in ["x-http-method", "x-method-override", "true-client-ip", "x-cluster-client-ip", "cf-connecting-ip", "x-host"] {
            assert!(is_spoofable(name), "{name}");
        }
        for name in ["accept", "content-type", "x-request-id", "x-custom", "user-agent"] {
            assert!(!is_spoofable(name), "{name}");
        }
        assert!(
            is_reserved("host") && is_reserved("proxy-connection") && is_reserved("authorization") && !is_reserved("x-tollgate-client")
        );
    }
}
