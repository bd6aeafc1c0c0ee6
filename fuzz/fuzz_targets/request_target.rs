//! The proxy's request-target check ([`tollgate_proxy::target::check`]) and Host check on arbitrary bytes.
//!
//! Properties, from what `target.rs` and the README promise: it never panics; whatever it accepts is a
//! path that starts with '/', has no empty segment but a trailing one, no '.' or '..' segment (literal or
//! encoded), only printable ASCII, no '\', ';', '?' or '#', percent-encodings of two uppercase hex digits
//! and only where needed (never an unreserved byte, a separator, '%', ';' or a control byte), no
//! non-ASCII unless asked for and then only valid UTF-8; the query is the target's own; the normalized
//! path means the same as the original (decoded segment by segment, empty ones collapsed); and checking
//! the result again gives the result (normalization is a fixed point). An accepted Host is one
//! `host[:port]`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_proxy::target::{SafeTarget, check, check_allowing_non_ascii, check_host};

const OWN: &str = "127.0.0.1:15001";

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-decode one segment (the input is known to be well-formed where this is called on it).
fn decode(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The segments of a path as the upstream will see them: decoded, empty ones collapsed except a last one.
fn meaning(path: &str) -> Vec<Vec<u8>> {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    segments.iter().enumerate().filter(|(i, s)| !s.is_empty() || *i == last).map(|(_, s)| decode(s)).collect()
}

fn assert_safe(input: &str, safe: &SafeTarget, allow_non_ascii: bool) {
    let path = &safe.path;
    assert!(path.starts_with('/'), "{input:?} -> {path:?}: must start with '/'");
    let bytes = path.as_bytes();
    assert!(bytes.iter().all(|b| (0x21..0x7f).contains(b)), "{input:?} -> {path:?}: control, space or non-ASCII byte");
    for forbidden in ['\\', ';', '?', '#'] {
        assert!(!path.contains(forbidden), "{input:?} -> {path:?}: contains {forbidden:?}");
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        assert!(!segment.is_empty() || i == segments.len() - 1 || path == "/", "{input:?} -> {path:?}: empty segment");
        assert!(*segment != "." && *segment != "..", "{input:?} -> {path:?}: dot segment");
        let mut plain = Vec::new();
        let s = segment.as_bytes();
        let mut j = 0;
        while j < s.len() {
            if s[j] == b'%' {
                let hex = &s[j + 1..(j + 3).min(s.len())];
                assert!(
                    hex.len() == 2 && hex.iter().all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)),
                    "{input:?} -> {path:?}: percent-encoding not two uppercase hex digits"
                );
                let byte = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
                assert!(!unreserved(byte), "{input:?} -> {path:?}: %{byte:02X} needs no encoding");
                assert!(
                    !matches!(byte, b'/' | b'\\' | b'.' | b'%' | b';' | 0..=0x1f | 0x7f),
                    "{input:?} -> {path:?}: encoded separator, '%', ';' or control byte %{byte:02X}"
                );
                plain.push(byte);
                j += 3;
            } else {
                plain.push(s[j]);
                j += 1;
            }
        }
        if !plain.is_ascii() {
            assert!(allow_non_ascii && safe.non_ascii, "{input:?} -> {path:?}: non-ASCII not allowed here");
            assert!(std::str::from_utf8(&plain).is_ok(), "{input:?} -> {path:?}: encoded bytes that are not UTF-8");
        }
        // What the upstream decodes is never a dot segment either.
        assert!(plain != b"." && plain != b"..", "{input:?} -> {path:?}: decodes to a dot segment");
    }
    if safe.non_ascii {
        assert!(allow_non_ascii, "{input:?}: marked non-ASCII by the strict check");
        assert!(!meaning(path).iter().all(|s| s.is_ascii()), "{input:?} -> {path:?}: marked non-ASCII but is not");
    }

    // The query is the target's own, as received.
    let origin = match input.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => {
            &rest[rest.find(['/', '?']).unwrap_or(rest.len())..]
        }
        _ => input,
    };
    let (raw_path, raw_query) = match origin.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (origin, None),
    };
    assert_eq!(safe.query.as_deref(), raw_query, "{input:?}: query changed");
    if let Some(query) = &safe.query {
        assert!(query.bytes().all(|b| (0x20..0x7f).contains(&b)) && !query.contains('#'), "{input:?}: query {query:?}");
    }

    // Same meaning: the normalized path decodes, segment by segment, to what the original did.
    let raw_path = if raw_path.is_empty() { "/" } else { raw_path };
    assert_eq!(meaning(path), meaning(raw_path), "{input:?} -> {path:?}: meaning changed");

    // A fixed point: the result passes again, unchanged.
    let again_target = safe.with_path(path);
    let again = if allow_non_ascii { check_allowing_non_ascii(&again_target, &[]) } else { check(&again_target, &[]) };
    assert_eq!(again.as_ref(), Ok(safe), "{input:?} -> {again_target:?}: not a fixed point");
}

fuzz_target!(|data: &[u8]| {
    // Host: bytes as received.
    if let Ok(()) = check_host(true, &[data]) {
        let text = std::str::from_utf8(data).expect("an accepted Host is ASCII");
        assert!(!text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic()), "Host {text:?}");
        assert!(!text.contains(['/', '?', '#', '@', '\\', '%']), "Host {text:?}");
        let port = match text.strip_prefix('[') {
            Some(rest) => rest.split_once(']').expect("an accepted IP literal is closed").1.strip_prefix(':'),
            None => text.rsplit_once(':').map(|(_, p)| p),
        };
        if let Some(port) = port {
            assert!((1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit()), "Host {text:?}");
        }
    }
    assert_eq!(check_host(true, &[data, data]), Err(tollgate_proxy::target::TargetError::SeveralHosts));

    // The target as pingora hands it over: a str (bytes that are not UTF-8 never get that far).
    let Ok(input) = std::str::from_utf8(data) else { return };
    let own = [OWN.to_owned()];
    let strict = check(input, &own);
    let lenient = check_allowing_non_ascii(input, &own);
    if let Ok(safe) = &strict {
        assert!(!safe.non_ascii, "{input:?}: the strict check let non-ASCII through");
        assert_safe(input, safe, false);
        assert_eq!(lenient.as_ref(), Ok(safe), "{input:?}: the lenient check disagrees");
    }
    if let Ok(safe) = &lenient {
        assert_safe(input, safe, true);
        if !safe.non_ascii {
            assert_eq!(strict.as_ref(), Ok(safe), "{input:?}: ASCII target refused only by the strict check");
        }
    }
    // Absolute-form naming another host is never accepted.
    if let Some((scheme, rest)) = input.split_once("://")
        && (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
    {
        let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
        if !authority.eq_ignore_ascii_case(OWN) {
            assert!(lenient.is_err(), "{input:?}: foreign authority {authority:?} accepted");
        }
    }
});
