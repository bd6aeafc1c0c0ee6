//! Prometheus metrics of the webhook (OpenMetrics text at `/metrics`): the registry only.
//!
//! Each layer owns its series behind a small type that registers them and observes what that layer knows:
//! `review::ReviewMetrics` (reviews, their duration, denied and warned rules, skips), `server::BadRequests`,
//! `reload::ReloadCounter`, `events::EventCounter` and `tls::CertificateExpiry`. `server.rs` wires them into one
//! [`Metrics`]; this module names none of them, so no layer depends on another through its metrics.

use prometheus_client::registry::Registry;

/// The registry every layer's series are registered in, under the prefix `tollgate_webhook`.
pub struct Metrics {
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics { registry: Registry::with_prefix("tollgate_webhook") }
    }

    /// Where a layer registers its series (in the order they are to be exported).
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
