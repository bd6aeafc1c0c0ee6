//! Prometheus metrics of the proxy (OpenMetrics text at the admin listener's `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: &'static str,
    pub route: &'static str,
    pub status: u16,
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

/// One route's series (clones share the values registered in [`Metrics`]).
pub struct RouteMetrics {
    pub bytes_out: Counter,
    pub upstream_duration: Histogram,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_duration: Family<RouteLabels, Histogram>,
    bytes_out: Family<RouteLabels, Counter>,
    token_fetches: Family<ResultLabels, Counter>,
    local_destination_refusals: Family<CallLabels, Counter>,
    connections: Family<ListenerLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let upstream_duration =
            Family::<RouteLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)) as Histogram);
        let bytes_out = Family::<RouteLabels, Counter>::default();
        let token_fetches = Family::<ResultLabels, Counter>::default();
        registry.register("requests", "Requests answered, by listener, route, status and decision", requests.clone());
        registry.register(
            "upstream_duration_seconds",
            "Time from forwarding a request to the end of its response, by route",
            upstream_duration.clone(),
        );
        registry.register("bytes_out", "Request body bytes sent upstream, by route", bytes_out.clone());
        registry.register("token_fetches", "Calls to the token endpoint, by result", token_fetches.clone());
        for result in ["success", "failure"] {
            let _ = token_fetches.get_or_create(&ResultLabels { result });
        }
        let local_destination_refusals = Family::<CallLabels, Counter>::default();
        registry.register(
            "local_destination_refusals",
            "Requests (egress) and token calls (token) refused because the address they would reach is this pod's own",
            local_destination_refusals.clone(),
        );
        for call in ["egress", "token"] {
            let _ = local_destination_refusals.get_or_create(&CallLabels { call });
        }
        let connections = Family::<ListenerLabels, Gauge>::default();
        registry.register("connections", "Open downstream connections, by listener", connections.clone());
        Metrics { registry, requests, upstream_duration, bytes_out, token_fetches, local_destination_refusals, connections }
    }

    pub fn request(&self, labels: RequestLabels) {
        self.requests.get_or_create(&labels).inc();
    }

    /// A route's own series, made once: the per-request path then touches no label map.
    pub fn route(&self, route: &'static str) -> RouteMetrics {
        RouteMetrics {
            bytes_out: self.bytes_out.get_or_create(&RouteLabels { route }).clone(),
            upstream_duration: self.upstream_duration.get_or_create(&RouteLabels { route }).clone(),
        }
    }

    pub fn local_destination_refused(&self, call: &'static str) {
        self.local_destination_refusals.get_or_create(&CallLabels { call }).inc();
    }

    pub fn connections_open(&self, listener: &'static str, open: usize) {
        self.connections.get_or_create(&ListenerLabels { listener }).set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl crate::tokens::TokenObserver for Metrics {
    fn token_fetch(&self, ok: bool) {
        self.token_fetches.get_or_create(&ResultLabels { result: if ok { "success" } else { "failure" } }).inc();
    }
}
