//! The Grafana dashboard and the Prometheus alert rules name only `decision` labels the proxy writes.
//!
//! Every file under `charts/` and `manifests/` is read (JSON files as the strings in them, so that escaped
//! quotes read like plain ones; the rest, Helm templates included, as text) for PromQL label matchers on
//! `decision`: `decision="…"`, `!=`, `=~`, `!~`, with any of PromQL's quotes. Each value must be the label
//! of a [`Decision`]; each alternative of a regex must be one, or a pattern matching at least one. A
//! misspelt label would select nothing, and the panel or the alert would stay silent.

use std::path::{Path, PathBuf};

use tollgate_proxy::decision::Decision;

/// One `decision` matcher as found: the operator and the value between its quotes.
#[derive(Debug, PartialEq, Eq)]
struct Matcher {
    op: &'static str,
    value: String,
}

/// The `decision` matchers in `text`.
fn matchers(text: &str) -> Vec<Matcher> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("decision").map(|i| from + i) {
        from = at + "decision".len();
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        if at > 0 && word(bytes[at - 1]) || bytes.get(from).is_some_and(|&b| word(b)) {
            continue;
        }
        let rest = text[from..].trim_start();
        let Some(op) = ["=~", "!~", "!=", "="].into_iter().find(|op| rest.starts_with(op)) else { continue };
        let rest = &rest[op.len()..];
        if rest.starts_with('=') {
            continue; // `==` compares; it matches no label
        }
        let rest = rest.trim_start();
        // A quote, or one escaped inside a YAML or JSON string.
        let (escaped, rest) = match rest.strip_prefix('\\') {
            Some(rest) => (true, rest),
            None => (false, rest),
        };
        let Some(quote) = rest.chars().next().filter(|c| matches!(c, '"' | '\'' | '`')) else { continue };
        let close = if escaped { format!("\\{quote}") } else { quote.to_string() };
        let body = &rest[1..];
        let end = body.find(&close).unwrap_or_else(|| panic!("an unclosed decision matcher: {}", &text[at..]));
        found.push(Matcher { op, value: body[..end].to_owned() });
    }
    found
}

/// What is wrong with the matchers in `text`, one line each.
fn problems(text: &str) -> Vec<String> {
    let labels: Vec<&str> = Decision::ALL.iter().map(|d| d.label()).collect();
    let mut problems = Vec::new();
    for Matcher { op, value } in matchers(text) {
        match op {
            "=" | "!=" if !labels.contains(&value.as_str()) => {
                problems.push(format!("decision{op}{value:?}: no decision is labelled {value:?}"));
            }
            "=~" | "!~" if value.contains('$') => {} // a Grafana variable, filled from the series themselves
            "=~" | "!~" => {
                for alternative in alternatives(&value) {
                    if !labels.iter().any(|label| full_match(&alternative, label)) {
                        problems.push(format!("decision{op}{value:?}: {alternative:?} matches no decision label"));
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

/// A regex's top-level alternatives.
fn alternatives(regex: &str) -> Vec<String> {
    let (mut out, mut current, mut depth, mut chars) = (Vec::new(), String::new(), 0, regex.chars());
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.push(c);
                current.extend(chars.next());
                continue;
            }
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            '|' if depth == 0 => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current);
    out
}

/// Whether `pattern` matches all of `text` (PromQL anchors its regexes). Literals, `\`-escapes, `.`, and
/// the quantifiers `*`, `+`, `?` after one of those; anything else is beyond this test (it says so).
fn full_match(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy)]
    enum Atom {
        Any,
        Char(char),
    }
    let mut atoms: Vec<(Atom, char)> = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => atoms.push((Atom::Char(chars.next().expect("a regex ending in a backslash")), '1')),
            '.' => atoms.push((Atom::Any, '1')),
            '*' | '+' | '?' => atoms.last_mut().unwrap_or_else(|| panic!("{pattern:?}: a quantifier without an atom")).1 = c,
            '(' | ')' | '[' | ']' | '{' | '}' | '^' | '$' | '|' => {
                panic!("{pattern:?}: this test reads only literals, `.`, `*`, `+` and `?` in decision regexes; extend it")
            }
            c => atoms.push((Atom::Char(c), '1')),
        }
    }
    fn go(atoms: &[(Atom, char)], text: &[char]) -> bool {
        let Some(((atom, quantifier), rest)) = atoms.split_first() else { return text.is_empty() };
        let fits = |c: &char| match atom {
            Atom::Any => true,
            Atom::Char(a) => a == c,
        };
        let (min, max) = match quantifier {
            '*' => (0, usize::MAX),
            '+' => (1, usize::MAX),
            '?' => (0, 1),
            _ => (1, 1),
        };
        let run = text.iter().take_while(|c| fits(c)).count().min(max);
        (min..=run).rev().any(|n| go(rest, &text[n..]))
    }
    go(&atoms, &text.chars().collect::<Vec<_>>())
}

/// The texts of a file: a JSON file's strings, any other file whole.
fn texts(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() }; // not text
    if path.extension().is_some_and(|e| e == "json") {
        fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
            match value {
                serde_json::Value::String(s) => out.push(s.clone()),
                serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
                serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
                _ => {}
            }
        }
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut out = Vec::new();
        strings(&value, &mut out);
        return out;
    }
    vec![text]
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn the_dashboard_and_the_alert_rules_name_only_decisions_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut all = Vec::new();
    for dir in ["charts", "manifests"] {
        files(&root.join(dir), &mut all);
    }
    // The files that query the proxy's requests are among those read.
    for known in ["charts/tollgate/dashboards/tollgate.json", "charts/tollgate/templates/monitoring.yaml"] {
        let path = root.join(known);
        assert!(all.contains(&path), "{known} is read");
        assert!(texts(&path).iter().any(|t| t.contains("tollgate_proxy_requests_total")), "{known} queries the requests");
    }
    let mut found = Vec::new();
    let mut seen = 0;
    for path in &all {
        for text in texts(path) {
            seen += matchers(&text).len();
            found.extend(problems(&text).into_iter().map(|p| format!("{}: {p}", path.strip_prefix(root).unwrap().display())));
        }
    }
    assert!(found.is_empty(), "decision labels that do not exist ({seen} matchers read):\n{}", found.join("\n"));
}

#[test]
fn matchers_are_read_in_every_quoting() {
    let text = r#"sum(rate(tollgate_proxy_requests_total{listener="egress", decision = "denied"}[5m]))
        and x{decision!='forwarded'} and y{decision=~`bad-request|too-.*`} and {"expr": "z{decision!~\"upstream-error\"}"}
        decision == 1, by (decision), {{decision}}, label_values(tollgate_proxy_requests_total, decision), decisions="x""#;
    assert_eq!(
        matchers(text),
        [
            Matcher { op: "=", value: "denied".into() },
            Matcher { op: "!=", value: "forwarded".into() },
            Matcher { op: "=~", value: "bad-request|too-.*".into() },
            Matcher { op: "!~", value: "upstream-error".into() },
        ]
    );
    assert!(problems(text).is_empty(), "{:?}", problems(text));
}

#[test]
fn a_misspelt_label_is_caught() {
    for (text, problem) in [
        (r#"tollgate_proxy_requests_total{decision="denid"}"#, r#"decision="denid": no decision is labelled "denid""#),
        (r#"x{decision!="bad_request"}"#, r#"decision!="bad_request": no decision is labelled "bad_request""#),
        (r#"x{decision=~"denied|upstream_error"}"#, r#"decision=~"denied|upstream_error": "upstream_error" matches no decision label"#),
        (r#"x{decision!~"head-.*|tokens-.+"}"#, r#"decision!~"head-.*|tokens-.+": "tokens-.+" matches no decision label"#),
        (r#""expr": "x{decision=\"Denied\"}""#, r#"decision="Denied": no decision is labelled "Denied""#),
    ] {
        assert_eq!(problems(text), [problem], "{text}");
    }
    for fine in [
        r#"x{decision=~"head-.*"}"#,
        r#"x{decision=~"denied|upgrade-refused"}"#,
        r#"x{decision=~"$decision"}"#,
        r#"x{decision=""}"#,
        r#"x{decision=~"upstream-error|upstream-aborted|head-too-large"}"#,
    ] {
        assert!(problems(fine).is_empty(), "{fine}: {:?}", problems(fine));
    }
    assert!(full_match("too-.*", "too-large") && full_match("too-.+", "too-large") && !full_match("too-.+", "too-"));
    assert!(full_match("head-?timeout", "head-timeout") && !full_match("head", "head-timeout"), "anchored");
}
