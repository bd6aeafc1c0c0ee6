//! Prometheus metrics of the webhook (OpenMetrics text at `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::harden::Rule;
use crate::review::{ReviewOutcome, ReviewSummary};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    file: &'static str,
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    reviews: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    denials: Family<RuleLabels, Counter>,
    warned: Family<RuleLabels, Counter>,
    skips: Family<ReasonLabels, Counter>,
    bad_requests: Family<ReasonLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    certificate_expiry: Gauge,
    events: Family<ResultLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// `tollgate_webhook_events_total`, shared with the task that writes Events.
#[derive(Clone)]
pub struct EventCounter(Family<ResultLabels, Counter>);

impl EventCounter {
    /// An Event `written`, `repeated` (not written again), `failed` or `dropped` (queue full).
    pub fn observe(&self, result: &'static str) {
        self.0.get_or_create(&ResultLabels { result }).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate_webhook");
        let reviews = Family::<OutcomeLabels, Counter>::default();
        // 50 µs .. ~0.8 s
        let duration = Histogram::new(exponential_buckets(0.00005, 2.0, 15));
        let denials = Family::<RuleLabels, Counter>::default();
        let warned = Family::<RuleLabels, Counter>::default();
        let skips = Family::<ReasonLabels, Counter>::default();
        let bad_requests = Family::<ReasonLabels, Counter>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let certificate_expiry = Gauge::default();
        let events = Family::<ResultLabels, Counter>::default();
        registry.register("reviews", "AdmissionReviews answered, by outcome", reviews.clone());
        registry.register(
            "review_duration_seconds",
            "Time to answer an AdmissionReview, from the full body to the encoded response",
            duration.clone(),
        );
        registry.register("denials", "Violations in denied pods, by rule", denials.clone());
        registry.register("warned_violations", "Violations let through by onViolation: warn (not hardened), by rule", warned.clone());
        registry.register("skips", "Pods deliberately not hardened, by reason", skips.clone());
        registry.register("bad_requests", "Requests answered with an HTTP error, by reason", bad_requests.clone());
        registry.register("reloads", "Reloads of watched files, by file and result", reloads.clone());
        // A timestamp, as cert-manager's certmanager_certificate_expiration_timestamp_seconds: an alert
        // compares it with time(), and a renewal shows as a step up.
        registry.register("events", "Events about denied and warned pods (serve --events), by result", events.clone());
        registry.register(
            "certificate_expiry_seconds",
            "When the serving certificate expires, in seconds since the Unix epoch (0: unreadable)",
            certificate_expiry.clone(),
        );
        // Export every series from the start, so rates and alerts work before the first event.
        for outcome in [
            ReviewOutcome::Patched,
            ReviewOutcome::Unchanged,
            ReviewOutcome::Denied,
            ReviewOutcome::Warned,
            ReviewOutcome::Skipped,
            ReviewOutcome::Ignored,
            ReviewOutcome::Invalid,
        ] {
            let _ = reviews.get_or_create(&OutcomeLabels { outcome: outcome.as_str() });
        }
        for rule in Rule::ALL {
            let _ = denials.get_or_create(&RuleLabels { rule: rule.as_str() });
            let _ = warned.get_or_create(&RuleLabels { rule: rule.as_str() });
        }
        Metrics { registry, reviews, duration, denials, warned, skips, bad_requests, reloads, certificate_expiry, events }
    }

    pub fn observe_review(&self, summary: &ReviewSummary, seconds: f64) {
        self.reviews.get_or_create(&OutcomeLabels { outcome: summary.outcome.as_str() }).inc();
        self.duration.observe(seconds);
        let per_rule = if summary.outcome == ReviewOutcome::Warned { &self.warned } else { &self.denials };
        for rule in &summary.denied_rules {
            per_rule.get_or_create(&RuleLabels { rule: rule.as_str() }).inc();
        }
        if let Some(reason) = summary.skip_reason {
            self.skips.get_or_create(&ReasonLabels { reason }).inc();
        }
    }

    pub fn observe_bad_request(&self, reason: &'static str) {
        self.bad_requests.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn observe_reload(&self, file: &'static str, ok: bool) {
        self.reloads.get_or_create(&ReloadLabels { file, result: if ok { "success" } else { "failure" } }).inc();
    }

    /// The Events' counter, for the task that writes them.
    pub fn events(&self) -> EventCounter {
        EventCounter(self.events.clone())
    }

    /// The serving certificate now in use expires at `unix_seconds` (`None`: its expiry could not be read).
    pub fn observe_certificate(&self, unix_seconds: Option<i64>) {
        self.certificate_expiry.set(unix_seconds.unwrap_or(0));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
