//! Routes and the egress decision: (routes, method, checked target) → forward or refuse. Pure.
//!
//! A route's prefix matches whole segments (`/kong` matches `/kong` and `/kong/x`, never `/kongX`);
//! its allow patterns, if any, must match the rest of the path exactly, segment by segment (`*` one
//! segment, `**` any number at the end). The path forwarded is exactly the path that was matched.
//! Percent-encoded non-ASCII characters in the path pass only on a route that allows them.

use std::path::PathBuf;
use std::time::Duration;

use crate::proxy::target::SafeTarget;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// Forward as is (the app's own Authorization is still removed).
    None,
    /// `Authorization: Bearer` with the proxy's OAuth2 client-credentials token.
    Token,
    /// `Authorization: Bearer` with the contents of a file, re-read when it changes.
    BearerFile(PathBuf),
    /// A key in a header of its own (Kong's key-auth reads `apikey`), from a file re-read when it changes.
    ApiKeyFile { header: http::HeaderName, file: PathBuf },
}

/// What answers a route's requests: an upstream, or the proxy itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Upstream(Upstream),
    Answer(Answer),
}

/// An answer the proxy gives itself, for callers that expect their sidecar to answer (FLAME's SDK waits for
/// `GET /healthz` on its nginx before anything else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 `healthy` while the proxy is ready (what `/readyz` says), 503 otherwise.
    Ready,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: any number of segments, including none; only last.
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
}

fn literal_ok(segment: &str) -> Result<(), String> {
    if segment == "." || segment == ".." {
        return Err("dot segments are not allowed".into());
    }
    if let Some(bad) = segment.chars().find(|c| !(c.is_ascii_alphanumeric() || "-._~!$&'()+,=:@".contains(*c))) {
        return Err(format!("segment {segment:?} contains {bad:?}"));
    }
    Ok(())
}

impl Pattern {
    /// A route prefix: literal segments only (`/` is everything).
    pub fn prefix(text: &str) -> Result<Pattern, String> {
        let rest = text.strip_prefix('/').ok_or_else(|| format!("{text:?} must start with '/'"))?;
        let mut segments = Vec::new();
        for segment in rest.split('/').filter(|s| !s.is_empty()) {
            literal_ok(segment).map_err(|e| format!("{text:?}: {e}"))?;
            segments.push(Segment::Literal(segment.to_owned()));
        }
        Ok(Pattern { segments })
    }

    /// An allow pattern for the path after the prefix: `""` is the prefix itself.
    pub fn rest(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Ok(Pattern { segments: Vec::new() });
        }
        let rest = text.strip_prefix('/').ok_or_else(|| format!("{text:?} must be empty or start with '/'"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "*" => Segment::One,
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => return Err(format!("{text:?}: '**' may only be last")),
                "" => return Err(format!("{text:?}: empty segment")),
                literal => {
                    literal_ok(literal).map_err(|e| format!("{text:?}: {e}"))?;
                    Segment::Literal(literal.to_owned())
                }
            });
        }
        Ok(Pattern { segments })
    }

    /// Whether this prefix is `/`, every path.
    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The rest of `path` (segments of a checked path) after this prefix, if it starts with it.
    pub fn strip<'a>(&self, path: &'a [&'a str]) -> Option<&'a [&'a str]> {
        self.match_prefix(path).map(|taken| &path[taken..])
    }

    /// Whether the prefix matches the start of `path`; returns how many segments it took.
    fn match_prefix(&self, path: &[&str]) -> Option<usize> {
        if self.segments.len() > path.len() {
            return None;
        }
        let all = self.segments.iter().zip(path).all(|(s, p)| matches!(s, Segment::Literal(l) if l == p));
        all.then_some(self.segments.len())
    }

    fn matches_all(&self, path: &[&str]) -> bool {
        let mut i = 0;
        for segment in &self.segments {
            match segment {
                Segment::Rest => return true,
                Segment::One if i < path.len() && !path[i].is_empty() => i += 1,
                Segment::Literal(l) if i < path.len() && path[i] == l => i += 1,
                _ => return false,
            }
        }
        i == path.len()
    }
}

/// Where a route forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Empty, or starting with '/' and without a trailing '/'.
    pub base_path: String,
}

impl Upstream {
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("{url:?} must start with http:// or https://"));
        };
        if url.contains(['?', '#', '\\', ' ']) || url.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err(format!("{url:?} must not contain a query, fragment, backslash, space or control characters"));
        }
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if authority.contains('@') {
            return Err(format!("{url:?} must not carry credentials"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                (host, port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("{url:?} has an invalid port"))?)
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let base_path = path.trim_end_matches('/').to_owned();
        for segment in base_path.split('/').skip(1) {
            literal_ok(segment).map_err(|e| format!("{url:?}: {e}"))?;
        }
        Ok(Upstream { tls, host: host.trim_start_matches('[').trim_end_matches(']').to_owned(), port, base_path })
    }

    /// `host:port` for connecting (IPv6 in brackets).
    pub fn address(&self) -> String {
        if self.host.contains(':') { format!("[{}]:{}", self.host, self.port) } else { format!("{}:{}", self.host, self.port) }
    }

    /// The Host header value.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == default { host } else { format!("{host}:{}", self.port) }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub prefix: Pattern,
    pub allow: Vec<Pattern>,
    pub methods: Vec<String>,
    pub destination: Destination,
    pub strip_prefix: bool,
    pub auth: AuthMode,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub max_request_body: u64,
    pub byte_budget: Option<u64>,
    /// Whether paths may carry percent-encoded non-ASCII characters (valid UTF-8; never anything else).
    pub allow_non_ascii_path: bool,
    /// Whether requests may ask to switch protocols; the tunnel after a 101 is opaque.
    pub allow_upgrade: bool,
}

impl Route {
    /// Where the route forwards to; `None` when the proxy answers itself.
    pub fn upstream(&self) -> Option<&Upstream> {
        match &self.destination {
            Destination::Upstream(upstream) => Some(upstream),
            Destination::Answer(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward to `routes[route]` with this path and query.
    Forward { route: usize, upstream_target: String },
    /// `routes[route]` is answered by the proxy itself; nothing is forwarded.
    Answer { route: usize, answer: Answer },
    /// Refuse with 403 and this reason; nothing is forwarded.
    Refuse { reason: String },
    /// Refuse with 400 and this reason (the path is one no route may take); nothing is forwarded.
    Invalid { reason: String },
}

/// Decide what to do with a request: the route with the longest matching prefix (the first of equals)
/// must also allow the rest of the path and the method.
pub fn decide(routes: &[Route], method: &str, target: &SafeTarget) -> Decision {
    let segments: Vec<&str> = target.segments().collect();
    let segments: &[&str] = if segments == [""] { &[] } else { &segments };
    let best = routes.iter().enumerate().filter_map(|(i, r)| r.prefix.match_prefix(segments).map(|taken| (i, taken))).fold(
        None,
        |best: Option<(usize, usize)>, (i, taken)| match best {
            Some((_, best_taken)) if best_taken >= taken => best,
            _ => Some((i, taken)),
        },
    );
    if target.non_ascii && !best.is_some_and(|(i, _)| routes[i].allow_non_ascii_path) {
        let reason = match best {
            Some((i, _)) => format!(
                "path contains percent-encoded non-ASCII characters, which route {:?} does not allow (allowNonAsciiPath)",
                routes[i].name
            ),
            None => format!("path contains percent-encoded non-ASCII characters, and no route for {} allows them", target.path),
        };
        return Decision::Invalid { reason };
    }
    let Some((index, taken)) = best else {
        return Decision::Refuse { reason: format!("no route for {}", target.path) };
    };
    let route = &routes[index];
    let rest = &segments[taken..];
    if !route.allow.is_empty() && !route.allow.iter().any(|p| p.matches_all(rest)) {
        return Decision::Refuse { reason: format!("route {:?} does not allow {}", route.name, target.path) };
    }
    if !route.methods.iter().any(|m| m == method) {
        return Decision::Refuse { reason: format!("route {:?} does not allow method {method}", route.name) };
    }
    let upstream = match &route.destination {
        Destination::Upstream(upstream) => upstream,
        Destination::Answer(answer) => return Decision::Answer { route: index, answer: *answer },
    };
    // The upstream's base path, then the rest of the path (or all of it): built in one string, as this
    // runs for every request.
    let base = &upstream.base_path;
    let query = target.query.as_deref();
    let mut path = String::with_capacity(base.len() + target.path.len() + 2 + query.map_or(0, str::len));
    path.push_str(base);
    if route.strip_prefix {
        for segment in rest {
            path.push('/');
            path.push_str(segment);
        }
    } else {
        path.push_str(&target.path);
    }
    if path.is_empty() {
        path.push('/');
    }
    if let Some(query) = query {
        path.push('?');
        path.push_str(query);
    }
    Decision::Forward { route: index, upstream_target: path }
}
