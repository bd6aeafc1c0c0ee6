//! Proxy config parsing and validation ([`tollgate_proxy::config::Config::load`]) on arbitrary bytes.
//!
//! Properties: never panics; errors are errors (at least one, each with a field path and a message, the
//! same on a second load); an accepted config keeps the promises `config.rs` and the README make (egress
//! on loopback, three distinct ports, unique route names, only the documented methods, only asymmetric
//! algorithms, a shutdown grace of at most 25 s, a JWKS refetch interval of at least 1 s, routes answered by
//! the proxy itself without a credential, every `apiKeyFile` route's header among the credential headers
//! removed from callers' requests, an ingress prefix that is not the root); and a pod
//! without ids loses exactly what needs them, never gaining anything: loaded without ids, the same file
//! is accepted exactly when it is with them, its routes are those loaded with ids less the ones listed
//! as left out, and no route keeps fewer allow entries than it had without becoming one left out (a route
//! whose allow list empties would allow everything under its prefix).

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tollgate_proxy::config::{Config, ConfigErrors, Environment};

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

fn accepted(config: &Config) {
    assert!(config.egress_listen.ip().is_loopback(), "egress listens on {}", config.egress_listen);
    let ports = [config.egress_listen.port(), config.ingress_listen.port(), config.admin_listen.port()];
    assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2], "ports {ports:?}");
    assert!(config.shutdown_grace <= Duration::from_secs(25));
    let mut names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    assert!(names.windows(2).all(|w| w[0] != w[1]), "duplicate route names {names:?}");
    for route in &config.routes {
        assert!(!route.name.is_empty() && route.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(route.methods.iter().all(|m| METHODS.contains(&m.as_str())), "methods {:?}", route.methods);
        let Some(upstream) = route.upstream() else {
            // Answered by the proxy itself: never with a credential.
            assert_eq!(route.auth, tollgate_proxy::routes::AuthMode::None, "route {}", route.name);
            continue;
        };
        assert!(!upstream.host.is_empty() && upstream.port != 0);
        let base = &upstream.base_path;
        assert!(base.is_empty() || (base.starts_with('/') && !base.ends_with('/')), "base path {base:?}");
        assert!(base.split('/').all(|s| s != "." && s != ".."), "base path {base:?}");
    }
    // A caller's copy of a credential never reaches an upstream: every apiKeyFile route's header is among the
    // headers removed from every request, and none of them is one the proxy owns.
    for route in &config.routes {
        if let tollgate_proxy::routes::AuthMode::ApiKeyFile { header, .. } = &route.auth {
            assert!(config.credential_headers.contains(header), "route {}: {header} is not removed from callers' requests", route.name);
        }
    }
    for header in &config.credential_headers {
        assert!(!matches!(header.as_str(), "host" | "content-length" | "transfer-encoding"), "credential header {header}");
    }
    if let Some(ingress) = &config.ingress {
        // The ingress prefix is whole segments, never the root (which would admit everything).
        if let Some(prefix) = &ingress.prefix {
            assert!(!prefix.is_root(), "an ingress prefix of /");
        }
        assert!(!ingress.algorithms.is_empty());
        assert!(ingress.algorithms.iter().all(|a| !format!("{a:?}").starts_with("HS")), "{:?}", ingress.algorithms);
        assert!(!ingress.issuer.is_empty());
        assert!(!ingress.require_audience || !ingress.audiences.is_empty());
        assert!(ingress.jwks_refetch_interval >= Duration::from_secs(1));
    }
    if let Some(proxy) = &config.forward_proxy {
        assert!(!proxy.tls, "forward proxy over TLS");
    }
}

fn refused(errors: &ConfigErrors) {
    assert!(!errors.0.is_empty(), "an error without a message");
    for e in &errors.0 {
        assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(yaml) = std::str::from_utf8(data) else { return };
    let with_ids = Environment { analysis_id: Some("a1".into()), project_id: Some("p-1".into()), ..Environment::default() };
    let without = Environment::default();
    let a = Config::load(yaml, &with_ids);
    let b = Config::load(yaml, &without);
    match (&a, &b) {
        (Ok(a), Ok(b)) => {
            accepted(a);
            accepted(b);
            assert!(a.disabled.is_empty(), "with both ids nothing is left out: {:?}", a.disabled);
            for r in &b.routes {
                let full = a.routes.iter().find(|f| f.name == r.name).unwrap_or_else(|| panic!("route {} only without ids", r.name));
                assert_eq!(r.prefix, full.prefix, "route {}", r.name);
                assert!(r.allow.iter().all(|p| full.allow.contains(p)), "route {}: an allow entry only without ids", r.name);
                assert!(full.allow.is_empty() || !r.allow.is_empty(), "route {}: widened to its whole prefix", r.name);
                assert_eq!((&r.methods, &r.destination), (&full.methods, &full.destination), "route {}", r.name);
            }
            for f in &a.routes {
                let kept = b.routes.iter().any(|r| r.name == f.name);
                let gone = b.disabled.iter().any(|d| d.route == f.name && !d.path.contains(".allow["));
                assert!(kept != gone, "route {}: kept {kept}, left out {gone}", f.name);
            }
        }
        (Err(a), Err(b)) => {
            refused(a);
            refused(b);
        }
        (a, b) => panic!("accepted with ids: {}, without: {}", a.is_ok(), b.is_ok()),
    }
    // Deterministic.
    let again = Config::load(yaml, &with_ids);
    match (&a, &again) {
        (Ok(x), Ok(y)) => assert_eq!(format!("{x:?}"), format!("{y:?}")),
        (Err(x), Err(y)) => assert_eq!(x, y),
        _ => panic!("a second load decided differently"),
    }
});
