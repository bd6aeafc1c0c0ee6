//! Prometheus metrics of the proxy (OpenMetrics text at the admin listener's `/metrics`).
//!
//! Each layer owns its series — their names, help texts and labels — as a small struct of counters it is
//! handed at construction: [`Requests`] (every answered request, beside its audit line), [`EgressMetrics`],
//! [`FetchMetrics`] (tokens), [`GuardMetrics`] (local destinations), [`ConnectionMetrics`]. No layer knows
//! this module; it has one series of its own, `tollgate_proxy_info` (what this proxy is, for the chart's
//! `TollgateStaleProxies`). Here they are registered in one registry, in the order `/metrics` lists them, and main.rs
//! hands each to its layer (linkerd2-proxy's `app/outbound/src/metrics.rs` is the model).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tollgate_api::names::VERSION;

use crate::audit::Requests;
use crate::connections::ConnectionMetrics;
use crate::egress::EgressMetrics;
use crate::local::GuardMetrics;
use crate::tokens::FetchMetrics;

pub struct Metrics {
    registry: Registry,
    /// For the ingress (the egress and the listeners have theirs in their own structs).
    pub requests: Requests,
    pub egress: EgressMetrics,
    pub token_fetches: FetchMetrics,
    pub local_destinations: GuardMetrics,
    pub connections: ConnectionMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    version: &'static str,
    policy: String,
}

impl Metrics {
    /// For a proxy rendered from no known policy (`policy=""`).
    pub fn new() -> Self {
        Self::for_policy("")
    }

    /// `policy` is the digest of the policy the webhook rendered this proxy from (its env
    /// `TOLLGATE_POLICY_DIGEST`, [`tollgate_api::names::ENV_POLICY_DIGEST`]; empty without it): exported with the
    /// proxy's release as `tollgate_proxy_info{version, policy} 1`, which the chart's alert compares with the
    /// webhook's `tollgate_webhook_policy_info`.
    pub fn for_policy(policy: &str) -> Self {
        let mut registry = Registry::with_prefix("tollgate_proxy");
        let requests = Requests::register(&mut registry);
        let egress = EgressMetrics::register(&mut registry, requests.clone());
        let token_fetches = FetchMetrics::register(&mut registry);
        let local_destinations = GuardMetrics::register(&mut registry);
        let connections = ConnectionMetrics::register(&mut registry, requests.clone());
        let info = Family::<InfoLabels, Gauge>::default();
        info.get_or_create(&InfoLabels { version: VERSION, policy: policy.to_owned() }).set(1);
        registry.register("info", "The proxy's release and the digest of the policy it was rendered from (always 1)", info);
        Metrics { registry, requests, egress, token_fetches, local_destinations, connections }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::connections::{Limits, Listener};
    use crate::decision::Decision;

    #[test]
    fn every_series_is_listed_under_its_name_in_registration_order() {
        let metrics = Metrics::new();
        metrics.requests.count("ingress", "", 401, Decision::Unauthenticated);
        // A family is listed once it has a series.
        let _route = metrics.egress.route("hub");
        let limits = Limits { head_timeout: Duration::from_secs(1), max_head_size: 1024, max_per_listener: 3, max_per_peer: None };
        let _listener = Listener::new("egress", limits, &metrics.connections);
        let text = metrics.encode();
        let order: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        assert_eq!(
            order,
            [
                "tollgate_proxy_requests counter",
                "tollgate_proxy_upstream_duration_seconds histogram",
                "tollgate_proxy_bytes_out counter",
                "tollgate_proxy_token_fetches counter",
                "tollgate_proxy_local_destination_refusals counter",
                "tollgate_proxy_connections gauge",
                "tollgate_proxy_info gauge",
            ]
        );
        for line in [
            "tollgate_proxy_requests_total{listener=\"ingress\",route=\"\",status=\"401\",decision=\"unauthenticated\"} 1",
            "tollgate_proxy_token_fetches_total{result=\"success\"} 0",
            "tollgate_proxy_token_fetches_total{result=\"failure\"} 0",
            "tollgate_proxy_local_destination_refusals_total{call=\"egress\"} 0",
            "tollgate_proxy_local_destination_refusals_total{call=\"token\"} 0",
            "tollgate_proxy_bytes_out_total{route=\"hub\"} 0",
            "tollgate_proxy_connections{listener=\"egress\"} 0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(text.contains(&format!("tollgate_proxy_info{{version=\"{VERSION}\",policy=\"\"}} 1")), "{text}");
    }

    #[test]
    fn the_info_series_names_the_release_and_the_policy() {
        let text = Metrics::for_policy("sha256:0123456789ab").encode();
        let info: Vec<&str> = text.lines().filter(|l| l.starts_with("tollgate_proxy_info")).collect();
        assert_eq!(info, [format!("tollgate_proxy_info{{version=\"{VERSION}\",policy=\"sha256:0123456789ab\"}} 1")]);
    }
}
