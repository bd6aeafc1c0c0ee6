//! Upstream name resolution off the request path's critical section: pingora's `HttpPeer::new` with a
//! host name resolves synchronously (blocking getaddrinfo on the worker thread) on every request, so the
//! proxy resolves asynchronously itself and keeps answers for a short while.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer is reused; Kubernetes Service IPs are stable, and 10 s bounds staleness.
const TTL: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Resolver {
    cache: Mutex<HashMap<(String, u16), (Instant, SocketAddr)>>,
}

impl Resolver {
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_owned(), port);
        if let Some((at, addr)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && at.elapsed() < TTL
        {
            return Ok(*addr);
        }
        let addr = lookup(host, port).await?;
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (Instant::now(), addr));
        Ok(addr)
    }
}

/// The address a connection to `host` would use (the first the system resolver gives), uncached; an IP
/// address is taken as it is.
pub async fn lookup(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolving {host}: no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ips_pass_through_and_names_are_resolved_then_cached() {
        let resolver = Resolver::default();
        assert_eq!(resolver.resolve("10.1.2.3", 80).await.unwrap(), "10.1.2.3:80".parse().unwrap());
        assert_eq!(resolver.resolve("::1", 8080).await.unwrap(), "[::1]:8080".parse().unwrap());
        let first = resolver.resolve("localhost", 5000).await.unwrap();
        assert!(first.ip().is_loopback() && first.port() == 5000, "{first}");
        assert_eq!(resolver.cache.lock().unwrap().len(), 1);
        assert_eq!(resolver.resolve("localhost", 5000).await.unwrap(), first);
        let error = resolver.resolve("no-such-host.invalid", 80).await.unwrap_err();
        assert!(error.starts_with("resolving no-such-host.invalid"), "{error}");
    }
}
