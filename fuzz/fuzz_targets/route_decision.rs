//! Route decisions ([`tollgate_proxy::routes::decide`]) on arbitrary methods and targets against the FLAME
//! route table (`proxy/examples/flame.yaml`) with both ids set, after the target check as the proxy runs
//! it (strict, or allowing non-ASCII for the route to decide).
//!
//! Input: the first byte picks the method (and the check), the rest is the request target.
//!
//! Properties: never panics; a forward goes to the route with the longest prefix that matches on whole
//! segments (checked against the prefixes as written in the file, not as compiled), whose allow patterns
//! (if any) match the rest of the path and whose methods include the method; the forwarded path is the
//! upstream's base path followed by the checked path with exactly that prefix cut off (or all of it), and
//! the query unchanged; it is itself a safe target; a "no route" refusal means no prefix matches; nothing
//! with percent-encoded non-ASCII is forwarded (no FLAME route allows it).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_proxy::config::{Config, Environment};
use tollgate_proxy::routes::{Decision, decide};
use tollgate_proxy::target::{check, check_allowing_non_ascii};

const FLAME: &str = include_str!("../../proxy/examples/flame.yaml");
const ANALYSIS: &str = "3f2c1b9e-1d7a-4c8e-9b1a-2e4f6a8c0d1e";
const PROJECT: &str = "7d1e4a2c-95b8-4f3e-a6d0-1b2c3d4e5f60";
const METHODS: [&str; 12] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "get", "", "BREW"];

/// A route as the file writes it, placeholders filled.
struct Written {
    name: String,
    prefix: Vec<String>,
    allow: Vec<Vec<String>>,
    methods: Vec<String>,
    strip_prefix: bool,
    allow_non_ascii: bool,
    /// `answer:` instead of an upstream.
    answers: bool,
}

struct Table {
    config: Config,
    written: Vec<Written>,
}

fn fill(text: &str) -> String {
    text.replace("{analysis_id}", ANALYSIS).replace("{project_id}", PROJECT)
}

fn segments(text: &str) -> Vec<String> {
    text.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let env = Environment { analysis_id: Some(ANALYSIS.into()), project_id: Some(PROJECT.into()), ..Environment::default() };
        let config = Config::load(FLAME, &env).expect("flame.yaml loads");
        assert!(config.disabled.is_empty(), "with both ids set, no route is left out");
        let raw: Value = serde_yaml_ng::from_str(FLAME).expect("flame.yaml is YAML");
        let written = raw["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .map(|r| Written {
                name: r["name"].as_str().unwrap().to_owned(),
                prefix: segments(&fill(r["prefix"].as_str().unwrap())),
                allow: r["allow"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| fill(a.as_str().unwrap()).split('/').skip(1).map(str::to_owned).collect())
                    .collect(),
                methods: r["methods"]
                    .as_array()
                    .map_or(vec!["GET".into(), "HEAD".into()], |m| m.iter().map(|m| m.as_str().unwrap().to_owned()).collect()),
                strip_prefix: r["stripPrefix"].as_bool().unwrap_or(true),
                allow_non_ascii: r["allowNonAsciiPath"].as_bool().unwrap_or(false),
                answers: r.get("answer").is_some(),
            })
            .collect::<Vec<_>>();
        assert_eq!(written.len(), config.routes.len());
        for (w, r) in written.iter().zip(&config.routes) {
            assert_eq!(w.name, r.name);
        }
        Table { config, written }
    })
}

/// `pattern` (segments of an allow entry: literal, `*`, `**` last) matches `rest` exactly.
fn glob(pattern: &[String], rest: &[&str]) -> bool {
    match (pattern.first().map(String::as_str), rest.first()) {
        (Some("**"), _) => true,
        (Some("*"), Some(segment)) => !segment.is_empty() && glob(&pattern[1..], &rest[1..]),
        (Some(literal), Some(segment)) => literal == *segment && glob(&pattern[1..], &rest[1..]),
        (Some(_), None) => false,
        (None, next) => next.is_none(),
    }
}

fn prefix_matches(prefix: &[String], path: &[&str]) -> bool {
    prefix.len() <= path.len() && prefix.iter().zip(path).all(|(p, s)| p == s)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let Ok(target) = std::str::from_utf8(rest) else { return };
    let method = METHODS[usize::from(selector & 0x7f) % METHODS.len()];
    let lenient = selector & 0x80 != 0;
    let checked = if lenient { check_allowing_non_ascii(target, &[]) } else { check(target, &[]) };
    let Ok(safe) = checked else { return };
    let Table { config, written } = table();
    let decision = decide(&config.routes, method, &safe);

    let path: Vec<&str> = safe.path[1..].split('/').collect();
    let path: &[&str] = if path == [""] { &[] } else { &path };
    let longest = written.iter().filter(|w| prefix_matches(&w.prefix, path)).map(|w| w.prefix.len()).max();

    match &decision {
        Decision::Forward { route, upstream_target } => {
            let w = &written[*route];
            let r = &config.routes[*route];
            assert!(!safe.non_ascii || w.allow_non_ascii, "{target:?}: non-ASCII forwarded by {}, which does not allow it", w.name);
            // The matched prefix, on a segment boundary: the path is the prefix, or the prefix and '/'.
            let prefix_text = format!("/{}", w.prefix.join("/"));
            assert!(prefix_matches(&w.prefix, path), "{target:?}: forwarded by {} whose prefix does not match", w.name);
            assert!(
                w.prefix.is_empty()
                    || safe.path == prefix_text
                    || safe.path.strip_prefix(&prefix_text).is_some_and(|after| after.starts_with('/')),
                "{target:?}: {} does not start with {prefix_text} on a segment boundary",
                safe.path
            );
            assert_eq!(Some(w.prefix.len()), longest, "{target:?}: {} is not the longest matching prefix", w.name);
            assert!(
                written[..*route].iter().all(|other| other.prefix.len() < w.prefix.len() || !prefix_matches(&other.prefix, path)),
                "{target:?}: an earlier route with an equal prefix matches"
            );
            let after = &path[w.prefix.len()..];
            assert!(w.allow.is_empty() || w.allow.iter().any(|a| glob(a, after)), "{target:?}: {} does not allow {after:?}", w.name);
            assert!(w.methods.iter().any(|m| m == method), "{target:?}: {} does not allow {method}", w.name);
            // Exactly the checked path, less the prefix when stripped, after the base path; the query unchanged.
            let forwarded = match (w.strip_prefix, w.prefix.is_empty()) {
                (false, _) => safe.path.as_str(),
                _ if path.len() == w.prefix.len() => "",
                (true, true) => safe.path.as_str(),
                (true, false) => &safe.path[prefix_text.len()..],
            };
            let base = &r.upstream().expect("a forwarding route has an upstream").base_path;
            let mut expected = format!("{base}{forwarded}");
            if expected.is_empty() {
                expected.push('/');
            }
            assert_eq!(upstream_target, &safe.with_path(&expected), "{target:?}: forwarded target");
            // What goes upstream is itself a safe target, and says the same.
            let again = check(upstream_target, &[]).unwrap_or_else(|e| panic!("{target:?}: forwarded {upstream_target:?} is unsafe: {e}"));
            assert_eq!(again.with_path(&again.path), *upstream_target, "{target:?}: forwarded target is not normalized");
        }
        Decision::Refuse { reason } => {
            if reason.starts_with("no route") {
                assert_eq!(longest, None, "{target:?}: refused as unrouted but a prefix matches");
            } else {
                assert!(longest.is_some(), "{target:?}: refused by a route though no prefix matches: {reason}");
            }
        }
        Decision::Invalid { reason } => {
            assert!(safe.non_ascii, "{target:?}: 400 for an ASCII path: {reason}");
        }
        Decision::Answer { route, .. } => {
            let w = &written[*route];
            assert!(w.answers, "{target:?}: answered by {}, which has an upstream", w.name);
            assert_eq!(Some(w.prefix.len()), longest, "{target:?}: {} is not the longest matching prefix", w.name);
            let after = &path[w.prefix.len()..];
            assert!(w.allow.is_empty() || w.allow.iter().any(|a| glob(a, after)), "{target:?}: {} does not allow {after:?}", w.name);
            assert!(w.methods.iter().any(|m| m == method), "{target:?}: {} does not allow {method}", w.name);
        }
    }
    // Percent-encoded non-ASCII goes only where the longest matching route allows it.
    let best = written.iter().filter(|w| prefix_matches(&w.prefix, path)).fold(None, |best: Option<&Written>, w| match best {
        Some(b) if b.prefix.len() >= w.prefix.len() => Some(b),
        _ => Some(w),
    });
    if safe.non_ascii && !best.is_some_and(|w| w.allow_non_ascii) {
        assert!(matches!(decision, Decision::Invalid { .. }), "{target:?}: non-ASCII path not refused: {decision:?}");
    }
});
