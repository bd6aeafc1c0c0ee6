//! Credentials never go to the pod itself. Whoever creates the pod controls what names resolve to inside
//! it: `hostAliases` write /etc/hosts, `dnsConfig` picks the resolver, and the kubelet writes
//! `<pod IP> <pod name>` into /etc/hosts, so a pod named like an upstream's short name resolves that name
//! to itself, where the app container can listen. So a request that would carry a token or the client
//! secret is refused when the address it would connect to is loopback, link-local, unspecified, or one of
//! this network namespace's own addresses — unless the config names that address literally.
//!
//! The decision is pure ([`local_destination`], [`refusal`]); [`LocalGuard`] adds the one piece of I/O
//! (listing the interface addresses, cached for a second) and the counting.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Why an address is this pod's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalKind {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 169.254.0.0/16, fe80::/10 (also where cloud metadata services answer).
    LinkLocal,
    /// 0.0.0.0/8 ("this host"; connecting to 0.0.0.0 reaches the loopback), ::.
    Unspecified,
    /// An address of one of this network namespace's interfaces: the pod's own IPs.
    OwnAddress,
}

impl fmt::Display for LocalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LocalKind::Loopback => "a loopback address",
            LocalKind::LinkLocal => "a link-local address",
            LocalKind::Unspecified => "an unspecified address",
            LocalKind::OwnAddress => "an address of this pod",
        })
    }
}

/// Whether (and why) `ip` is local: loopback, link-local, unspecified or in `own` (this network
/// namespace's addresses). IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) count as their IPv4 address.
pub fn local_destination(ip: IpAddr, own: &[IpAddr]) -> Option<LocalKind> {
    let ip = ip.to_canonical();
    let kind = match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some(LocalKind::Loopback),
        IpAddr::V4(v4) if v4.is_link_local() => Some(LocalKind::LinkLocal),
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some(LocalKind::Unspecified),
        IpAddr::V6(v6) if v6.is_loopback() => Some(LocalKind::Loopback),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some(LocalKind::LinkLocal),
        IpAddr::V6(v6) if v6.is_unspecified() => Some(LocalKind::Unspecified),
        _ => None,
    };
    kind.or_else(|| own.iter().any(|o| o.to_canonical() == ip).then_some(LocalKind::OwnAddress))
}

pub fn is_local_destination(ip: IpAddr, own: &[IpAddr]) -> bool {
    local_destination(ip, own).is_some()
}

/// Why a credential must not be sent to `ip`, reached by resolving `host` as the config names it (`what`
/// says which host: "upstream host", "token endpoint host", "forward proxy host"). None when it may: the
/// address is not local, or the config names it literally (`127.0.0.1`, `::1` — the admin chose it).
/// A name, `localhost` included, never makes a local address acceptable.
pub fn refusal(what: &str, host: &str, ip: IpAddr, own: &[IpAddr]) -> Option<(LocalKind, String)> {
    if host.parse::<IpAddr>() == Ok(ip) {
        return None;
    }
    let kind = local_destination(ip, own)?;
    Some((
        kind,
        format!(
            "{what} {host:?} resolved to {ip}, {kind}: credentials are never sent to a local address unless the config names the address literally"
        ),
    ))
}

/// The addresses of this network namespace's interfaces (the pod's IPs, and loopback).
pub fn interface_addresses() -> Result<Vec<IpAddr>, String> {
    let addresses = nix::ifaddrs::getifaddrs().map_err(|e| format!("listing this pod's addresses: {e}"))?;
    Ok(addresses
        .filter_map(|a| a.address)
        .filter_map(|a| a.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())).or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))))
        .collect())
}

/// How long a list of interface addresses is reused. A pod's IPs are assigned before its containers
/// start, and changing them needs NET_ADMIN, which the webhook never grants; listing them costs tens of
/// microseconds, too much for every request.
const OWN_TTL: Duration = Duration::from_secs(1);

/// What the guard counts (registered by metrics.rs): its refusals, by the call refused (`egress`, `token`).
/// Clones share the series.
#[derive(Clone, Default)]
pub struct GuardMetrics(Family<CallLabels, Counter>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

impl GuardMetrics {
    pub fn register(registry: &mut Registry) -> GuardMetrics {
        let refusals = GuardMetrics::default();
        registry.register(
            "local_destination_refusals",
            "Requests (egress) and token calls (token) refused because the address they would reach is this pod's own",
            refusals.0.clone(),
        );
        for call in ["egress", "token"] {
            let _ = refusals.0.get_or_create(&CallLabels { call });
        }
        refusals
    }

    fn refused(&self, call: &'static str) {
        self.0.get_or_create(&CallLabels { call }).inc();
    }
}

/// Checks destinations of credential-carrying calls, and counts and logs what it refuses.
pub struct LocalGuard {
    own: Mutex<Option<(Instant, Arc<[IpAddr]>)>>,
    metrics: GuardMetrics,
}

impl LocalGuard {
    pub fn new(metrics: GuardMetrics) -> Self {
        LocalGuard { own: Mutex::new(None), metrics }
    }

    /// This network namespace's addresses, listed at most once per [`OWN_TTL`]. If listing fails, the
    /// last list is kept; with none at all, the error is returned (and the caller refuses).
    fn own_addresses(&self) -> Result<Arc<[IpAddr]>, String> {
        let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, list)) = own.as_ref()
            && at.elapsed() < OWN_TTL
        {
            return Ok(list.clone());
        }
        match interface_addresses() {
            Ok(list) => {
                let list: Arc<[IpAddr]> = list.into();
                *own = Some((Instant::now(), list.clone()));
                Ok(list)
            }
            Err(e) => match own.as_mut() {
                Some((at, list)) => {
                    tracing::warn!(error = %e, "keeping the last list of this pod's addresses");
                    *at = Instant::now();
                    Ok(list.clone())
                }
                None => Err(e),
            },
        }
    }

    /// `Err(reason)` when a credential must not go to `ip`, reached by resolving `host` (see [`refusal`]);
    /// `call` names the caller in the metric (`egress`, `token`).
    pub fn check(&self, call: &'static str, what: &str, host: &str, ip: IpAddr) -> Result<(), String> {
        if host.parse::<IpAddr>() == Ok(ip) {
            return Ok(());
        }
        let refused = match self.own_addresses() {
            Ok(own) => refusal(what, host, ip, &own),
            Err(e) => Some((LocalKind::OwnAddress, format!("{e}: credentials are not sent while it cannot be told whether {ip} is local"))),
        };
        match refused {
            None => Ok(()),
            Some((kind, reason)) => {
                self.metrics.refused(call);
                tracing::warn!(call, host, address = %ip, kind = %kind, "credentials withheld from a local address");
                Err(reason)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn loopback_link_local_and_unspecified_are_local_in_every_form() {
        for (address, kind) in [
            ("127.0.0.1", LocalKind::Loopback),
            ("127.1.2.3", LocalKind::Loopback),
            ("127.255.255.254", LocalKind::Loopback),
            ("::1", LocalKind::Loopback),
            ("::ffff:127.0.0.1", LocalKind::Loopback),
            ("::ffff:127.9.9.9", LocalKind::Loopback),
            ("169.254.0.1", LocalKind::LinkLocal),
            ("169.254.169.254", LocalKind::LinkLocal),
            ("::ffff:169.254.169.254", LocalKind::LinkLocal),
            ("fe80::1", LocalKind::LinkLocal),
            ("fe80::fc:ff:fe00:1", LocalKind::LinkLocal),
            ("febf:ffff::1", LocalKind::LinkLocal),
            ("0.0.0.0", LocalKind::Unspecified),
            ("0.1.2.3", LocalKind::Unspecified),
            ("::ffff:0.0.0.0", LocalKind::Unspecified),
            ("::", LocalKind::Unspecified),
        ] {
            assert_eq!(local_destination(ip(address), &[]), Some(kind), "{address}");
            assert!(is_local_destination(ip(address), &[]), "{address}");
        }
    }

    #[test]
    fn other_addresses_are_not_local() {
        for address in [
            "10.96.0.10",
            "192.0.2.2",
            "172.16.0.1",
            "8.8.8.8",
            "1.0.0.1",
            "128.0.0.1",
            "169.253.255.255",
            "169.255.0.1",
            "::ffff:10.0.0.1",
            "fd00::2",
            "2001:db8::1",
            "fec0::1",
            "fe00::1",
            "::2",
        ] {
            assert_eq!(local_destination(ip(address), &[]), None, "{address}");
        }
    }

    #[test]
    fn the_pods_own_addresses_are_local_in_either_form() {
        let own = [ip("127.0.0.1"), ip("10.244.1.7"), ip("fd00::2"), ip("fe80::fc:ff:fe00:1")];
        assert_eq!(local_destination(ip("10.244.1.7"), &own), Some(LocalKind::OwnAddress));
        assert_eq!(local_destination(ip("::ffff:10.244.1.7"), &own), Some(LocalKind::OwnAddress));
        assert_eq!(local_destination(ip("fd00::2"), &own), Some(LocalKind::OwnAddress));
        // A neighbour in the same subnet is another pod.
        assert_eq!(local_destination(ip("10.244.1.8"), &own), None);
        assert_eq!(local_destination(ip("fd00::3"), &own), None);
        // An own address listed in mapped form still matches the plain one.
        let mapped = [IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped())];
        assert_eq!(local_destination(ip("10.1.2.3"), &mapped), Some(LocalKind::OwnAddress));
        // Loopback says loopback even when it is also listed as an own address.
        assert_eq!(local_destination(IpAddr::V6(Ipv6Addr::LOCALHOST), &own), Some(LocalKind::Loopback));
    }

    #[test]
    fn a_literal_address_in_the_config_is_the_admins_choice_and_a_name_never_is() {
        let own = [ip("10.244.1.7")];
        for (host, address) in
            [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("10.244.1.7", "10.244.1.7"), ("169.254.169.254", "169.254.169.254")]
        {
            assert_eq!(refusal("upstream host", host, ip(address), &own), None, "{host}");
        }
        for (host, address, kind) in [
            ("localhost", "127.0.0.1", LocalKind::Loopback),
            ("localhost", "::1", LocalKind::Loopback),
            ("hub", "127.0.0.1", LocalKind::Loopback),
            ("hub", "::ffff:127.0.0.1", LocalKind::Loopback),
            ("hub", "169.254.169.254", LocalKind::LinkLocal),
            ("hub", "0.0.0.0", LocalKind::Unspecified),
            ("analysis-7", "10.244.1.7", LocalKind::OwnAddress),
            // Not the standard notation: resolved like a name, so it is no literal choice.
            ("127.1", "127.0.0.1", LocalKind::Loopback),
            // A literal that is not what it resolved to (cannot happen: literals are not resolved).
            ("127.0.0.2", "127.0.0.1", LocalKind::Loopback),
        ] {
            let (got, reason) = refusal("upstream host", host, ip(address), &own).unwrap_or_else(|| panic!("{host} → {address}"));
            assert_eq!(got, kind, "{host} → {address}");
            assert!(reason.starts_with(&format!("upstream host {host:?} resolved to {address}, ")), "{reason}");
            assert!(reason.contains("credentials are never sent to a local address"), "{reason}");
        }
        assert_eq!(refusal("token endpoint host", "keycloak", ip("10.96.0.10"), &own), None);
    }

    #[test]
    fn the_interface_list_has_loopback_and_the_guard_counts_what_it_refuses() {
        let listed = interface_addresses().unwrap();
        assert!(listed.iter().any(IpAddr::is_loopback), "{listed:?}");
        let mut registry = Registry::with_prefix("tollgate_proxy");
        let guard = LocalGuard::new(GuardMetrics::register(&mut registry));
        assert!(guard.check("egress", "upstream host", "127.0.0.1", ip("127.0.0.1")).is_ok());
        assert!(guard.check("egress", "upstream host", "hub", ip("10.96.0.10")).is_ok() || listed.contains(&ip("10.96.0.10")));
        let reason = guard.check("egress", "upstream host", "localhost", ip("127.0.0.1")).unwrap_err();
        assert!(reason.contains("a loopback address"), "{reason}");
        for own in listed.iter().filter(|a| !a.is_loopback()) {
            let reason = guard.check("token", "token endpoint host", "keycloak", *own).unwrap_err();
            assert!(reason.contains(&own.to_string()), "{reason}");
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("tollgate_proxy_local_destination_refusals_total{call=\"egress\"} 1"), "{text}");
    }
}
