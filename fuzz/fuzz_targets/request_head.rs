//! The proxy's request head as its listeners see it: raw bytes parsed by pingora's own HTTP/1 server session
//! (`HttpSession::read_request`, what the listener runs), then taken through what `request_filter` and
//! `upstream_request_filter` decide on egress (`proxy/src/egress.rs`) and on ingress (`proxy/src/ingress.rs`),
//! in the same order and with the same functions: CONNECT refused, the Host check
//! ([`tollgate_proxy::target::check_host`]), the target check (strict on ingress, non-ASCII for the route to
//! decide on egress) against the proxy's own authorities (its listener and the pod's names for it,
//! `TOLLGATE_EGRESS_HOSTNAMES`), the route decision ([`tollgate_proxy::routes::decide`]: forward, answer
//! `ready`, refuse), upgrades, the framing check ([`tollgate_proxy::headers::check_framing`]), the route's
//! body limit, the ingress prefix and `withoutToken: admit`, then the upstream request: headers a caller may not
//! send stripped ([`tollgate_proxy::headers::strip_spoofable`], `credentialHeaders` and every `apiKeyHeader`
//! by [`tollgate_proxy::headers::strip_credentials`]), the route's Host and credential set. The glue is
//! restated here (it is async code over a live session); the decisions are the proxy's own functions.
//! FLAME's configuration (`proxy/examples/flame.yaml`: `answer: ready`, an `apiKeyFile` route, credential
//! headers, the ingress prefix `/analysis` with `withoutToken: admit`), the egress on port 80 with the name
//! `nginx-analysis-a1-0`, as FLAME's pods have it.
//!
//! Input: byte 0 picks the listener (egress or ingress); the rest is the bytes a client sends.
//!
//! Properties: never panics; what is forwarded or answered is not CONNECT, has exactly one Host on HTTP/1.1,
//! and an unambiguous framing judged here on the head's own headers (no Transfer-Encoding and at most one
//! Content-Length of digits, or one Transfer-Encoding that is exactly `chunked` and no Content-Length); a
//! forward on egress goes by a route whose methods include the method, within its body limit, to a target that
//! is itself safe (percent-encoded non-ASCII only where the route allows it), and carries exactly one Host (the
//! route's), the route's credential once under its header and no other value of it, nothing a caller could spoof
//! (`X-Forwarded-*`, `Forwarded`, a name with `_`, ...) and none of the credential headers the caller sent; an answer comes from a route the proxy answers itself; an
//! upgrade only where the route allows it. On ingress, a forward without a token happens only under
//! `withoutToken: admit` for a request with no Authorization at all, only for a path under the prefix, which
//! the app gets without it (under the upstream's base path), and carries no Authorization, no credential
//! header and no claim header a caller sent.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pingora_core::protocols::http::v1::server::HttpSession;
use pingora_http::RequestHeader;
use tollgate_proxy::config::{Config, Environment, WithoutToken};
use tollgate_proxy::headers::{asks_for_upgrade, check_framing, is_spoofable, strip_credentials, strip_spoofable};
use tollgate_proxy::routes::{AuthMode, Decision, decide};
use tollgate_proxy::target::{check, check_allowing_non_ascii, check_host};

const FLAME: &str = include_str!("../../proxy/examples/flame.yaml");
const NAME: &str = "nginx-analysis-a1-0";
const CREDENTIAL: &str = "tollgate-credential-value";

struct Setup {
    runtime: tokio::runtime::Runtime,
    config: Config,
    egress_authorities: Vec<String>,
    ingress_authorities: Vec<String>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let env = Environment {
            analysis_id: Some("3f2c1b9e-1d7a-4c8e-9b1a-2e4f6a8c0d1e".into()),
            project_id: Some("7d1e4a2c-95b8-4f3e-a6d0-1b2c3d4e5f60".into()),
            egress_listen: Some("127.0.0.1:80".into()),
            egress_hostnames: vec![NAME.into()],
            ..Environment::default()
        };
        let config = Config::load(FLAME, &env).expect("flame.yaml loads");
        // As Egress::new and IngressProxy::new make them.
        let port = config.egress_listen.port();
        let mut egress_authorities = vec![config.egress_listen.to_string(), format!("localhost:{port}"), format!("127.0.0.1:{port}")];
        for name in &config.egress_hostnames {
            egress_authorities.push(format!("{name}:{port}"));
            if port == 80 {
                egress_authorities.push(name.clone());
            }
        }
        let listen = config.ingress_listen;
        let ingress_authorities = vec![listen.to_string(), format!("localhost:{}", listen.port()), format!("127.0.0.1:{}", listen.port())];
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Setup { runtime, config, egress_authorities, ingress_authorities }
    })
}

/// The head as pingora's HTTP/1 server session reads it from the wire.
fn read_head(bytes: &[u8]) -> Option<RequestHeader> {
    let stream: pingora_core::protocols::Stream = Box::new(std::io::Cursor::new(bytes.to_vec()));
    let mut session = HttpSession::new(stream);
    match setup().runtime.block_on(session.read_request()) {
        Ok(Some(_)) => Some(session.req_header().clone()),
        _ => None,
    }
}

#[derive(Debug)]
enum Outcome {
    Refused(u16, String),
    Answered(usize),
    /// Egress: the route and the request sent upstream.
    Forwarded(usize, RequestHeader),
    /// Ingress: the request sent to the app without a token (withoutToken: admit).
    Admitted(RequestHeader),
    /// Ingress: a token to verify (the jwt target's business).
    NeedsToken,
}

fn hosts(header: &RequestHeader) -> Vec<&[u8]> {
    header.headers.get_all("host").iter().map(|v| v.as_bytes()).collect()
}

fn egress(header: &RequestHeader) -> Outcome {
    let s = setup();
    if header.method == http::Method::CONNECT {
        return Outcome::Refused(405, "CONNECT".into());
    }
    let hosts = hosts(header);
    let checked = check_host(header.version == http::Version::HTTP_11, &hosts)
        .and_then(|()| check_allowing_non_ascii(&String::from_utf8_lossy(header.raw_path()), &s.egress_authorities));
    let target = match checked {
        Ok(target) => target,
        Err(e) => return Outcome::Refused(400, e.to_string()),
    };
    let (index, upstream_target) = match decide(&s.config.routes, header.method.as_str(), &target) {
        Decision::Forward { route, upstream_target } => (route, upstream_target),
        Decision::Answer { route, .. } => return Outcome::Answered(route),
        Decision::Refuse { reason } => return Outcome::Refused(403, reason),
        Decision::Invalid { reason } => return Outcome::Refused(400, reason),
    };
    let route = &s.config.routes[index];
    if asks_for_upgrade(header) && !route.allow_upgrade {
        return Outcome::Refused(403, "upgrade".into());
    }
    let declared = match check_framing(header) {
        Ok(declared) => declared,
        Err(why) => return Outcome::Refused(400, why.into()),
    };
    if declared.is_some_and(|length| length > route.max_request_body) {
        return Outcome::Refused(413, "too large".into());
    }
    // upstream_request_filter.
    let mut request = header.clone();
    request.set_uri(upstream_target.parse().unwrap_or_else(|e| panic!("upstream target {upstream_target:?} is no URI: {e}")));
    strip_spoofable(&mut request);
    strip_credentials(&mut request, &s.config.credential_headers);
    if let Some(upstream) = route.upstream() {
        request.insert_header("host", upstream.authority()).unwrap();
    }
    match &route.auth {
        AuthMode::None => {}
        AuthMode::ApiKeyFile { header, .. } => request.insert_header(header.clone(), CREDENTIAL).unwrap(),
        AuthMode::BearerFile(_) | AuthMode::Token => request.insert_header("authorization", format!("Bearer {CREDENTIAL}")).unwrap(),
    }
    request.insert_header("x-request-id", "fuzz").unwrap();
    Outcome::Forwarded(index, request)
}

fn ingress(header: &RequestHeader) -> Outcome {
    let s = setup();
    let config = s.config.ingress.as_ref().expect("FLAME's ingress");
    if header.method == http::Method::CONNECT {
        return Outcome::Refused(405, "CONNECT".into());
    }
    if let Err(e) = check_host(header.version == http::Version::HTTP_11, &hosts(header)) {
        return Outcome::Refused(400, e.to_string());
    }
    let target = match check(&String::from_utf8_lossy(header.raw_path()), &s.ingress_authorities) {
        Ok(target) => target,
        Err(e) => return Outcome::Refused(400, e.to_string()),
    };
    if let Err(why) = check_framing(header) {
        return Outcome::Refused(400, why.into());
    }
    if asks_for_upgrade(header) {
        return Outcome::Refused(403, "upgrade".into());
    }
    // The proxy's own computation of what the app gets.
    let Some(forwarded) = config.app_target(&target) else {
        return Outcome::Refused(403, "not under the prefix".into());
    };
    if config.without_token == WithoutToken::Admit && !header.headers.contains_key("authorization") {
        let mut request = header.clone();
        request.set_uri(forwarded.parse().unwrap_or_else(|e| panic!("ingress target {forwarded:?} is no URI: {e}")));
        strip_spoofable(&mut request);
        strip_credentials(&mut request, &s.config.credential_headers);
        for header in config.claim_headers.values() {
            request.remove_header(header.as_str());
        }
        return Outcome::Admitted(request);
    }
    Outcome::NeedsToken
}

/// The framing as a reader after the proxy would take it, judged on the head's own header lines.
fn framing_is_unambiguous(header: &RequestHeader) -> bool {
    let lengths: Vec<&[u8]> = header.headers.get_all("content-length").iter().map(|v| v.as_bytes()).collect();
    let encodings: Vec<&[u8]> = header.headers.get_all("transfer-encoding").iter().map(|v| v.as_bytes()).collect();
    match (lengths.as_slice(), encodings.as_slice()) {
        ([], []) => true,
        ([length], []) => {
            let digits = length.trim_ascii();
            !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
        }
        ([], [encoding]) => encoding.eq_ignore_ascii_case(b"chunked"),
        _ => false,
    }
}

/// What every request let past the checks must be, on either listener.
fn passed(header: &RequestHeader, what: &str) {
    assert_ne!(header.method, http::Method::CONNECT, "{what}: CONNECT let through");
    if header.version == http::Version::HTTP_11 {
        assert_eq!(hosts(header).len(), 1, "{what}: an HTTP/1.1 request without exactly one Host let through");
    }
    assert!(framing_is_unambiguous(header), "{what}: ambiguous framing let through: {:?}", header.headers);
}

/// Nothing a caller sent that it may not send reaches the other side; `own` are the headers the proxy set.
fn clean(request: &RequestHeader, own: &[&str], what: &str) {
    let s = setup();
    for (name, _) in request.headers.iter() {
        let name = name.as_str();
        if own.contains(&name) {
            continue;
        }
        assert!(!is_spoofable(name), "{what}: the caller's {name} went through");
        assert!(!name.contains('_'), "{what}: the caller's {name} went through");
        assert!(
            !s.config.credential_headers.iter().any(|h| h.as_str() == name),
            "{what}: the caller's credential header {name} went through"
        );
    }
}

/// A refusal is one of the proxy's statuses, with a reason for the audit line.
fn refused(status: u16, reason: &str) {
    assert!(matches!(status, 400 | 403 | 405 | 413), "refused with {status}");
    assert!(!reason.is_empty(), "refused with {status} and no reason");
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let Some(header) = read_head(bytes) else { return };
    let s = setup();
    if selector & 1 == 0 {
        let outcome = egress(&header);
        let what = format!("egress {:?} {:?}", header.method, String::from_utf8_lossy(header.raw_path()));
        match &outcome {
            Outcome::Answered(route) => {
                passed(&header, &what);
                let route = &s.config.routes[*route];
                assert!(route.upstream().is_none(), "{what}: answered by {}, which has an upstream", route.name);
                assert!(
                    route.methods.iter().any(|m| m == header.method.as_str()),
                    "{what}: answered for a method {} does not allow",
                    route.name
                );
            }
            Outcome::Forwarded(index, request) => {
                passed(&header, &what);
                let route = &s.config.routes[*index];
                assert!(
                    route.methods.iter().any(|m| m == header.method.as_str()),
                    "{what}: forwarded by {} for another method",
                    route.name
                );
                assert!(!asks_for_upgrade(&header) || route.allow_upgrade, "{what}: an upgrade through {}", route.name);
                if let Ok(Some(length)) = check_framing(&header) {
                    assert!(length <= route.max_request_body, "{what}: a body above {}'s limit", route.name);
                }
                let target = request.uri.to_string();
                // Safe, and percent-encoded non-ASCII only where the route allows it (allowNonAsciiPath).
                let again = if route.allow_non_ascii_path { check_allowing_non_ascii(&target, &[]) } else { check(&target, &[]) };
                let again = again.unwrap_or_else(|e| panic!("{what}: forwarded {target:?} is unsafe: {e}"));
                assert_eq!(again.with_path(&again.path), target, "{what}: the forwarded target is not normalized");
                let upstream = route.upstream().expect("a forwarding route has an upstream");
                let host: Vec<&[u8]> = hosts(request);
                assert_eq!(host, vec![upstream.authority().as_bytes()], "{what}: Host upstream");
                let credential = match &route.auth {
                    AuthMode::None => None,
                    AuthMode::ApiKeyFile { header, .. } => Some((header.as_str().to_owned(), CREDENTIAL.to_owned())),
                    _ => Some(("authorization".to_owned(), format!("Bearer {CREDENTIAL}"))),
                };
                if let Some((name, value)) = &credential {
                    let values: Vec<&[u8]> = request.headers.get_all(name.as_str()).iter().map(|v| v.as_bytes()).collect();
                    assert_eq!(values, vec![value.as_bytes()], "{what}: the route's credential, once, under {name}");
                }
                let mut own = vec!["host", "x-request-id"];
                if let Some((name, _)) = &credential {
                    own.push(name.as_str());
                }
                clean(request, &own, &what);
                if credential.as_ref().is_none_or(|(name, _)| name != "authorization") {
                    assert!(!request.headers.contains_key("authorization"), "{what}: the caller's Authorization went through");
                }
            }
            Outcome::Refused(status, reason) => refused(*status, reason),
            Outcome::Admitted(_) | Outcome::NeedsToken => {}
        }
    } else {
        let outcome = ingress(&header);
        let what = format!("ingress {:?} {:?}", header.method, String::from_utf8_lossy(header.raw_path()));
        let config = s.config.ingress.as_ref().expect("FLAME's ingress");
        match &outcome {
            Outcome::Admitted(request) => {
                passed(&header, &what);
                assert_eq!(config.without_token, WithoutToken::Admit);
                assert!(!header.headers.contains_key("authorization"), "{what}: admitted without a token though it sent one");
                // Under the prefix, and forwarded without it.
                let path = String::from_utf8_lossy(header.raw_path()).into_owned();
                let checked = check(&path, &s.ingress_authorities).expect("passed the check");
                let segments: Vec<&str> = checked.segments().filter(|s| !s.is_empty()).collect();
                let prefix = config.prefix.as_ref().expect("FLAME's ingress has a prefix");
                let rest = prefix.strip(&segments).unwrap_or_else(|| panic!("{what}: admitted outside the prefix"));
                let expected = checked.with_path(&format!("{}/{}", config.upstream.base_path, rest.join("/")));
                assert_eq!(request.uri.to_string(), expected, "{what}: forwarded target");
                clean(request, &[], &what);
                for claim in config.claim_headers.values() {
                    assert!(!request.headers.contains_key(claim.as_str()), "{what}: the caller's claim header {claim} went through");
                }
            }
            Outcome::NeedsToken => passed(&header, &what),
            Outcome::Refused(status, reason) => refused(*status, reason),
            Outcome::Answered(_) | Outcome::Forwarded(..) => {}
        }
    }
});
