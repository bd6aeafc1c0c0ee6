//! Request-target safety: the path is checked and normalized before any route sees it.
//!
//! pingora passes the request target through as received, so the proxy must defend against the classic
//! path confusions itself: traversal (Envoy CVE-2019-9901), encoded slashes and backslashes
//! (CVE-2021-29492), fragments (CVE-2021-32779), `;` path parameters, double encoding, control bytes,
//! percent-encoded bytes that are not UTF-8 (`%c0%ae` is an overlong `.` that lenient decoders turn into
//! one) or not ASCII, and absolute-form targets that name another host. Anything doubtful is refused, not
//! repaired. (pingora 0.9 cuts a fragment off before the proxy sees the target, so [`TargetError::Fragment`]
//! guards only other callers.) The Host header is checked here too ([`check_host`]).

use std::fmt;

/// Why a request target was refused (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    NotOriginForm,
    ForeignHost(String),
    Fragment,
    ControlOrNonAscii,
    Backslash,
    PathParameter,
    DotSegment,
    EncodedSeparator(String),
    DoubleEncoding,
    BadPercentEncoding,
    /// Percent-encoded bytes that do not decode to UTF-8 (overlong forms, stray continuation bytes, ...).
    InvalidUtf8(String),
    /// Percent-encoded non-ASCII characters (valid UTF-8), where they are not allowed.
    EncodedNonAscii(String),
    /// An HTTP/1.1 request without a Host header.
    MissingHost,
    /// A Host header that is empty or not `host[:port]` (the value, escaped).
    InvalidHost(String),
    /// More than one Host header.
    SeveralHosts,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::NotOriginForm => write!(f, "request target must be a path starting with '/'"),
            TargetError::ForeignHost(host) => write!(f, "absolute-form request target names another host ({host})"),
            TargetError::Fragment => write!(f, "request target contains a fragment ('#')"),
            TargetError::ControlOrNonAscii => write!(f, "request target contains a control or non-ASCII byte"),
            TargetError::Backslash => write!(f, "path contains a backslash"),
            TargetError::PathParameter => write!(f, "path contains ';' (path parameters are not allowed)"),
            TargetError::DotSegment => write!(f, "path contains a '.' or '..' segment"),
            TargetError::EncodedSeparator(seq) => write!(f, "path contains the encoded separator {seq}"),
            TargetError::DoubleEncoding => write!(f, "path contains a double-encoded sequence ('%25')"),
            TargetError::BadPercentEncoding => write!(f, "path contains an invalid percent-encoding"),
            TargetError::InvalidUtf8(segment) => {
                write!(f, "path segment {segment:?} contains percent-encoded bytes that are not valid UTF-8")
            }
            TargetError::EncodedNonAscii(segment) => {
                write!(f, "path segment {segment:?} contains percent-encoded non-ASCII characters, which are not allowed here")
            }
            TargetError::MissingHost => write!(f, "HTTP/1.1 request without a Host header"),
            TargetError::InvalidHost(host) if host.is_empty() => write!(f, "empty Host header"),
            TargetError::InvalidHost(host) => write!(f, "Host header \"{host}\" is not host[:port]"),
            TargetError::SeveralHosts => write!(f, "more than one Host header"),
        }
    }
}

impl std::error::Error for TargetError {}

/// A checked request target: the normalized path and the query, each as it will be forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeTarget {
    /// Starts with '/', segments non-empty except a trailing one, no dot segments, percent-encoding
    /// uppercase and only where needed.
    pub path: String,
    /// Without the '?'; `None` when the target had none.
    pub query: Option<String>,
    /// Whether the path has percent-encoded non-ASCII characters (always valid UTF-8); only
    /// [`check_allowing_non_ascii`] lets such a path through, for the route to decide.
    pub non_ascii: bool,
}

impl SafeTarget {
    /// The path's segments (a trailing slash gives a last empty segment).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path[1..].split('/')
    }

    /// The path and query to forward, with `path` replacing the normalized path.
    pub fn with_path(&self, path: &str) -> String {
        match &self.query {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        }
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Bytes that may appear literally in a path segment (RFC 3986 pchar, less ';' which we refuse).
fn is_segment_char(byte: u8) -> bool {
    is_unreserved(byte) || matches!(byte, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@')
}

/// `%XX`, uppercase, as a normalized path writes a byte that must stay encoded.
fn push_encoded(path: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    path.push('%');
    path.push(HEX[usize::from(byte >> 4)] as char);
    path.push(HEX[usize::from(byte & 0xf)] as char);
}

fn hex_value(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

/// RFC 9112 section 3.2: an HTTP/1.1 request carries a Host header, and a Host header (in any version)
/// is exactly one `host[:port]`: a registered name or IPv4 address (RFC 3986 reg-name characters) or an
/// IP literal in brackets, and a port of one to five digits. `hosts` are the values as received.
pub fn check_host(http11: bool, hosts: &[&[u8]]) -> Result<(), TargetError> {
    let host = match hosts {
        [] if http11 => return Err(TargetError::MissingHost),
        [] => return Ok(()),
        [host] => *host,
        [..] => return Err(TargetError::SeveralHosts),
    };
    let invalid = || TargetError::InvalidHost(host.escape_ascii().to_string());
    let (name_ok, port) = match host.strip_prefix(b"[") {
        Some(literal) => {
            let end = literal.iter().position(|&b| b == b']').ok_or_else(invalid)?;
            let address = &literal[..end];
            let port = match &literal[end + 1..] {
                [] => None,
                [b':', port @ ..] => Some(port),
                _ => return Err(invalid()),
            };
            (!address.is_empty() && address.iter().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')), port)
        }
        None => {
            let (name, port) = match host.iter().rposition(|&b| b == b':') {
                Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
                None => (host, None),
            };
            let reg_name =
                |b: &u8| is_unreserved(*b) || matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=');
            (!name.is_empty() && name.iter().all(reg_name), port)
        }
    };
    let port_ok = port.is_none_or(|p| (1..=5).contains(&p.len()) && p.iter().all(u8::is_ascii_digit));
    if name_ok && port_ok { Ok(()) } else { Err(invalid()) }
}

/// Check and normalize a request target as received. `own_authorities` are the host[:port] forms that
/// address the proxy itself (an absolute-form target naming one of them is accepted). Percent-encoded
/// non-ASCII is refused.
pub fn check(target: &str, own_authorities: &[String]) -> Result<SafeTarget, TargetError> {
    check_with(target, own_authorities, false)
}

/// [`check`], but percent-encoded non-ASCII characters that decode to valid UTF-8 pass, marked in
/// [`SafeTarget::non_ascii`], for the route to allow or refuse. Invalid UTF-8 is refused all the same.
pub fn check_allowing_non_ascii(target: &str, own_authorities: &[String]) -> Result<SafeTarget, TargetError> {
    check_with(target, own_authorities, true)
}

fn check_with(target: &str, own_authorities: &[String], allow_non_ascii: bool) -> Result<SafeTarget, TargetError> {
    if target.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return Err(TargetError::ControlOrNonAscii);
    }
    if target.contains('#') {
        return Err(TargetError::Fragment);
    }
    let origin = origin_form(target, own_authorities)?;
    let (raw_path, query) = path_and_query(origin)?;
    let (path, non_ascii) = normalize(raw_path, allow_non_ascii)?;
    Ok(SafeTarget { path, query, non_ascii })
}

/// The target in origin form (`/path?query`): an absolute-form target (`http://host/path`) must name one of
/// `own_authorities`, and is taken as its path and query (`/` where it has none).
fn origin_form<'a>(target: &'a str, own_authorities: &[String]) -> Result<&'a str, TargetError> {
    let origin = match target.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let authority = &rest[..end];
            if !own_authorities.iter().any(|own| own.eq_ignore_ascii_case(authority)) {
                return Err(TargetError::ForeignHost(authority.to_owned()));
            }
            match &rest[end..] {
                "" => "/",
                path if path.starts_with('?') => return Err(TargetError::NotOriginForm),
                path => path,
            }
        }
        _ => target,
    };
    if !origin.starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    Ok(origin)
}

/// The path and the query of an origin-form target; a path with a backslash or a path parameter is refused.
fn path_and_query(origin: &str) -> Result<(&str, Option<String>), TargetError> {
    let (raw_path, query) = match origin.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (origin, None),
    };
    if raw_path.contains('\\') {
        return Err(TargetError::Backslash);
    }
    if raw_path.contains(';') {
        return Err(TargetError::PathParameter);
    }
    Ok((raw_path, query))
}

/// The path as the upstream gets it, segment by segment, and whether a segment decodes to non-ASCII.
fn normalize(raw_path: &str, allow_non_ascii: bool) -> Result<(String, bool), TargetError> {
    let mut path = String::with_capacity(raw_path.len());
    let mut non_ascii = false;
    let mut segments = raw_path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        // Empty segments collapse ('//' → '/'); a trailing slash is kept.
        if segment.is_empty() && segments.peek().is_some() {
            continue;
        }
        path.push('/');
        let plain = push_segment(&mut path, segment)?;
        non_ascii |= decodes_to_non_ascii(segment, &plain, allow_non_ascii)?;
        let written = &path[path.rfind('/').unwrap_or(0) + 1..];
        if written == "." || written == ".." {
            return Err(TargetError::DotSegment);
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok((path, non_ascii))
}

/// Appends `segment` to `path`, each byte as itself or percent-encoded, one way for each; refuses what decodes
/// to a separator, a dot, a `%`, a control byte or a path parameter. Returns the bytes of the segment as the
/// upstream will decode them, only for a segment with a percent-encoding (empty otherwise): literal bytes are
/// ASCII (checked before), so only those can make it non-ASCII.
fn push_segment(path: &mut String, segment: &str) -> Result<Vec<u8>, TargetError> {
    let bytes = segment.as_bytes();
    let encoded = bytes.contains(&b'%');
    let mut plain = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (bytes.get(i + 1).copied().and_then(hex_value), bytes.get(i + 2).copied().and_then(hex_value))
                else {
                    return Err(TargetError::BadPercentEncoding);
                };
                let decoded = hi * 16 + lo;
                match decoded {
                    b'/' | b'\\' | b'.' => return Err(TargetError::EncodedSeparator(segment[i..i + 3].to_owned())),
                    b'%' => return Err(TargetError::DoubleEncoding),
                    0..=0x1f | 0x7f => return Err(TargetError::ControlOrNonAscii),
                    b';' => return Err(TargetError::PathParameter),
                    byte if is_unreserved(byte) => path.push(byte as char),
                    byte => push_encoded(path, byte),
                }
                plain.push(decoded);
                i += 3;
            }
            byte => {
                if is_segment_char(byte) {
                    path.push(byte as char);
                } else {
                    push_encoded(path, byte);
                }
                if encoded {
                    plain.push(byte);
                }
                i += 1;
            }
        }
    }
    Ok(plain)
}

/// Whether a segment's decoded bytes (`plain`) are non-ASCII: then they must be UTF-8, and allowed.
fn decodes_to_non_ascii(segment: &str, plain: &[u8], allow_non_ascii: bool) -> Result<bool, TargetError> {
    if plain.is_ascii() {
        return Ok(false);
    }
    if std::str::from_utf8(plain).is_err() {
        return Err(TargetError::InvalidUtf8(segment.to_owned()));
    }
    if !allow_non_ascii {
        return Err(TargetError::EncodedNonAscii(segment.to_owned()));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(target: &str) -> SafeTarget {
        check(target, &["127.0.0.1:15001".to_owned()]).unwrap_or_else(|e| panic!("{target}: {e}"))
    }

    fn err(target: &str) -> TargetError {
        check(target, &["127.0.0.1:15001".to_owned()]).expect_err(target)
    }

    #[test]
    fn normal_paths_pass_and_normalize() {
        assert_eq!(ok("/storage/final/x").path, "/storage/final/x");
        assert_eq!(ok("/a//b///c").path, "/a/b/c");
        assert_eq!(ok("/a/b/").path, "/a/b/");
        assert_eq!(ok("/").path, "/");
        assert_eq!(ok("/%41%62c").path, "/Abc", "unreserved characters are decoded");
        assert_eq!(ok("/a%20b").path, "/a%20b");
        assert_eq!(ok("/a%3ab").path, "/a%3Ab", "reserved characters stay encoded, uppercase");
        assert_eq!(ok("/a b").path, "/a%20b");
        let t = ok("/kong/x?x=1&y=/..;%2F");
        assert_eq!((t.path.as_str(), t.query.as_deref()), ("/kong/x", Some("x=1&y=/..;%2F")), "the query is not the path");
        assert_eq!(ok("http://127.0.0.1:15001/a?b").with_path("/a"), "/a?b");
        assert_eq!(ok("/a...b/..c/c..").path, "/a...b/..c/c..", "dots inside segments are fine");
    }

    #[test]
    fn traversal_and_encoding_tricks_are_refused() {
        for target in ["/a/../b", "/a/./b", "/..", "/.", "/a/..", "/storage/final/../../etc", "//..//x"] {
            assert_eq!(err(target), TargetError::DotSegment, "{target}");
        }
        for target in ["/a/%2e%2e/b", "/a/%2E/b", "/a%2fb", "/a%2Fb", "/a%5cb", "/a%5C..%5Cb", "/.%2e/x"] {
            assert!(matches!(err(target), TargetError::EncodedSeparator(_)), "{target}");
        }
        for target in ["/a%252fb", "/a%252e%252e/b", "/%25"] {
            assert_eq!(err(target), TargetError::DoubleEncoding, "{target}");
        }
        assert_eq!(err("/a\\..\\b"), TargetError::Backslash);
        assert_eq!(err("/storage;/final"), TargetError::PathParameter);
        assert_eq!(err("/storage/final;x=1"), TargetError::PathParameter);
        assert_eq!(err("/a%3bb"), TargetError::PathParameter);
        assert_eq!(err("/a#frag"), TargetError::Fragment);
        assert_eq!(err("/a?b#c"), TargetError::Fragment);
        assert_eq!(err("/a\0b"), TargetError::ControlOrNonAscii);
        assert_eq!(err("/a%00b"), TargetError::ControlOrNonAscii);
        assert_eq!(err("/a%0d%0aX-Injected:1"), TargetError::ControlOrNonAscii);
        assert_eq!(err("/a\tb"), TargetError::ControlOrNonAscii);
        assert_eq!(err("/ä"), TargetError::ControlOrNonAscii);
        assert_eq!(err("/a%zz"), TargetError::BadPercentEncoding);
        assert_eq!(err("/a%2"), TargetError::BadPercentEncoding);
        assert_eq!(err("a/b"), TargetError::NotOriginForm);
        assert_eq!(err("*"), TargetError::NotOriginForm);
        assert_eq!(err("http://evil.example.org/storage/final"), TargetError::ForeignHost("evil.example.org".into()));
        assert_eq!(err("http://127.0.0.1:15002/x"), TargetError::ForeignHost("127.0.0.1:15002".into()));
    }

    #[test]
    fn percent_encoded_non_ascii_is_refused_and_invalid_utf8_always() {
        // Overlong forms of '.', lone lead and continuation bytes, UTF-16 surrogates, beyond U+10FFFF.
        for (target, segment) in [
            ("/a/%c0%ae%c0%ae/b", "%c0%ae%c0%ae"),
            ("/%C0%AE", "%C0%AE"),
            ("/x/%e0%80%ae", "%e0%80%ae"),
            ("/a%ff", "a%ff"),
            ("/a%80b", "a%80b"),
            ("/a%c3", "a%c3"),
            ("/%c3/%a4", "%c3"),
            ("/%ed%a0%80", "%ed%a0%80"),
            ("/%f4%90%80%80", "%f4%90%80%80"),
        ] {
            assert_eq!(err(target), TargetError::InvalidUtf8(segment.into()), "{target}");
            let lenient = check_allowing_non_ascii(target, &[]).expect_err(target);
            assert_eq!(lenient, TargetError::InvalidUtf8(segment.into()), "{target}: never allowed");
        }
        // Valid UTF-8 (ä, fullwidth full stops that NFKC turns into "..", the division slash): refused here.
        for (target, segment) in
            [("/M%C3%BCller", "M%C3%BCller"), ("/%EF%BC%8E%EF%BC%8E/x", "%EF%BC%8E%EF%BC%8E"), ("/a%e2%88%95b", "a%e2%88%95b")]
        {
            assert_eq!(err(target), TargetError::EncodedNonAscii(segment.into()), "{target}");
        }
        assert!(err("/%c0%ae").to_string().contains("not valid UTF-8"));
        assert!(!ok("/a%20b").non_ascii && !ok("/%41").non_ascii);
    }

    #[test]
    fn percent_encoded_utf8_passes_marked_when_allowed() {
        let t = check_allowing_non_ascii("/names/M%c3%bcller/%E2%82%AC?q=%ff", &[]).unwrap();
        assert_eq!(t.path, "/names/M%C3%BCller/%E2%82%AC", "kept encoded, uppercase");
        assert_eq!(t.query.as_deref(), Some("q=%ff"), "the query is not the path");
        assert!(t.non_ascii);
        let plain = check_allowing_non_ascii("/names/x", &[]).unwrap();
        assert!(!plain.non_ascii);
        // Everything else is refused exactly as by `check`.
        assert_eq!(check_allowing_non_ascii("/a/%2e%2e/b", &[]), Err(TargetError::EncodedSeparator("%2e".into())));
        assert_eq!(check_allowing_non_ascii("/ä", &[]), Err(TargetError::ControlOrNonAscii));
    }

    #[test]
    fn host_is_required_on_http11_and_must_be_host_and_port() {
        for host in
            ["x", "127.0.0.1", "127.0.0.1:15001", "hub.flame.svc.cluster.local:8080", "[::1]", "[::1]:15001", "my_host", "xn--mller-kva.de"]
        {
            assert_eq!(check_host(true, &[host.as_bytes()]), Ok(()), "{host}");
        }
        assert_eq!(check_host(true, &[]), Err(TargetError::MissingHost));
        assert_eq!(check_host(false, &[]), Ok(()), "HTTP/1.0 needs no Host");
        for host in ["", "a b", "a/b", "a?b", "a#b", "a@b", "a:", "a:80x", "a:123456", ":80", "[::1", "[::1]x", "[]", "[::g]", "a\tb", "ä"]
        {
            assert_eq!(
                check_host(true, &[host.as_bytes()]),
                Err(TargetError::InvalidHost(host.as_bytes().escape_ascii().to_string())),
                "{host:?}"
            );
            assert!(check_host(false, &[host.as_bytes()]).is_err(), "{host:?} on HTTP/1.0");
        }
        assert_eq!(check_host(true, &[b"a", b"a"]), Err(TargetError::SeveralHosts));
        assert_eq!(check_host(true, &[b""]).unwrap_err().to_string(), "empty Host header");
        assert_eq!(check_host(true, &[]).unwrap_err().to_string(), "HTTP/1.1 request without a Host header");
    }

    #[test]
    fn absolute_form_to_us_becomes_origin_form() {
        let own = ["127.0.0.1:15001".to_owned()];
        assert_eq!(origin_form("HTTP://127.0.0.1:15001", &own), Ok("/"));
        assert_eq!(origin_form("https://127.0.0.1:15001/a?b", &own), Ok("/a?b"));
        assert_eq!(origin_form("/a://b", &own), Ok("/a://b"));
        assert_eq!(origin_form("http://127.0.0.1:15001?b", &own), Err(TargetError::NotOriginForm));
        assert_eq!(origin_form("ftp://127.0.0.1:15001/a", &own), Err(TargetError::NotOriginForm));
        assert_eq!(origin_form("*", &own), Err(TargetError::NotOriginForm));
        assert_eq!(origin_form("http://other/a", &own), Err(TargetError::ForeignHost("other".into())));
    }

    #[test]
    fn a_segment_is_written_one_way_and_decoded_as_the_upstream_will() {
        let push = |segment: &str| {
            let mut path = String::new();
            push_segment(&mut path, segment).map(|plain| (path, plain))
        };
        assert_eq!(push("a-b"), Ok(("a-b".to_owned(), vec![])));
        assert_eq!(push("a%41%5b"), Ok(("aA%5B".to_owned(), b"aA[".to_vec())));
        assert_eq!(push("%C3%a9"), Ok(("%C3%A9".to_owned(), vec![0xc3, 0xa9])));
        assert_eq!(push("x%2e"), Err(TargetError::EncodedSeparator("%2e".into())));
        assert_eq!(push("x%4"), Err(TargetError::BadPercentEncoding));
        assert_eq!(decodes_to_non_ascii("a", b"a", false), Ok(false));
        assert_eq!(decodes_to_non_ascii("%C3%A9", &[0xc3, 0xa9], true), Ok(true));
        assert_eq!(decodes_to_non_ascii("%C3%A9", &[0xc3, 0xa9], false), Err(TargetError::EncodedNonAscii("%C3%A9".into())));
        assert_eq!(decodes_to_non_ascii("%FF", &[0xff], true), Err(TargetError::InvalidUtf8("%FF".into())));
    }
}
