//! What the proxy did with a request: the audit line's `decision`, the `decision` label of
//! `tollgate_proxy_requests_total` and the `decision` of the proxy's JSON error body. Each variant's label,
//! and the status tollgate answers with when it decides so itself, are written once, in `Decision::parts`;
//! the Grafana dashboard and the Prometheus alert rules in the chart may name only these labels (a test,
//! `proxy/tests/decision_labels.rs`, reads them).

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// What became of a request. The label texts are a contract: audit lines, metric series, error bodies,
/// dashboards and alert rules read them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Nothing was decided: the request failed before tollgate's phases saw it (the label is empty).
    #[default]
    Undecided,
    /// Sent on to the upstream (egress) or the app (ingress); the status is theirs.
    Forwarded,
    /// Answered by the proxy itself (a route with `answer: ready`, while ready).
    Answered,
    /// A route with `answer: ready`, while the proxy is not.
    NotReady,
    /// A CONNECT request: nothing is ever tunnelled.
    ConnectRefused,
    /// A request that is malformed or ambiguous (Host, target, framing, a body cut short), or that pingora's
    /// parser refused.
    BadRequest,
    /// No route allows it (egress), or it is not under the ingress prefix.
    Denied,
    /// It asks to switch protocols where that is not allowed.
    UpgradeRefused,
    /// Its body is above the route's `maxRequestBody`.
    TooLarge,
    /// The route's `byteBudget` is used up.
    BudgetExceeded,
    /// The upstream (or the app) could not be reached or failed before answering.
    UpstreamError,
    /// The address a credential would go to is this pod's own (local.rs).
    LocalDestination,
    /// The route's credential could not be had (token endpoint, bearer or API key file).
    NoCredentials,
    /// Ingress: no token, or one that does not verify.
    Unauthenticated,
    /// Ingress: the issuer's keys cannot be loaded.
    KeysUnavailable,
    /// The upstream's answer had started when it failed; the caller got a body cut short.
    UpstreamAborted,
    /// A connection over the listener's limits (connections.rs).
    TooManyConnections,
    /// A request head not complete in time (connections.rs).
    HeadTimeout,
    /// A request head above the size cap (connections.rs).
    HeadTooLarge,
}

impl Decision {
    /// Every decision, [`Decision::Undecided`] first.
    pub const ALL: [Decision; 19] = [
        Decision::Undecided,
        Decision::Forwarded,
        Decision::Answered,
        Decision::NotReady,
        Decision::ConnectRefused,
        Decision::BadRequest,
        Decision::Denied,
        Decision::UpgradeRefused,
        Decision::TooLarge,
        Decision::BudgetExceeded,
        Decision::UpstreamError,
        Decision::LocalDestination,
        Decision::NoCredentials,
        Decision::Unauthenticated,
        Decision::KeysUnavailable,
        Decision::UpstreamAborted,
        Decision::TooManyConnections,
        Decision::HeadTimeout,
        Decision::HeadTooLarge,
    ];

    /// The label, and the status tollgate answers with when it decides so itself. No status where the answer
    /// is not the proxy's own: forwarded (the upstream's), upstream-aborted (what had been sent), undecided.
    /// A failure while proxying (`fail_to_proxy`) and a head pingora's parser refused carry the status of the
    /// error instead (a timeout is 504 `upstream-error`, for one).
    const fn parts(self) -> (&'static str, Option<u16>) {
        match self {
            Decision::Undecided => ("", None),
            Decision::Forwarded => ("forwarded", None),
            Decision::Answered => ("answered", Some(200)),
            Decision::NotReady => ("not-ready", Some(503)),
            Decision::ConnectRefused => ("connect-refused", Some(405)),
            Decision::BadRequest => ("bad-request", Some(400)),
            Decision::Denied => ("denied", Some(403)),
            Decision::UpgradeRefused => ("upgrade-refused", Some(403)),
            Decision::TooLarge => ("too-large", Some(413)),
            Decision::BudgetExceeded => ("budget-exceeded", Some(413)),
            Decision::UpstreamError => ("upstream-error", Some(502)),
            Decision::LocalDestination => ("local-destination", Some(502)),
            Decision::NoCredentials => ("no-credentials", Some(503)),
            Decision::Unauthenticated => ("unauthenticated", Some(401)),
            Decision::KeysUnavailable => ("keys-unavailable", Some(503)),
            Decision::UpstreamAborted => ("upstream-aborted", None),
            Decision::TooManyConnections => ("too-many-connections", Some(503)),
            Decision::HeadTimeout => ("head-timeout", Some(408)),
            Decision::HeadTooLarge => ("head-too-large", Some(431)),
        }
    }

    /// The text in audit lines, metric labels and error bodies.
    pub const fn label(self) -> &'static str {
        self.parts().0
    }

    /// The status of the proxy's own answer with this decision (see `Decision::parts`).
    pub const fn status(self) -> Option<u16> {
        self.parts().1
    }

    /// The decision labelled `label`, if there is one.
    pub fn from_label(label: &str) -> Option<Decision> {
        Decision::ALL.into_iter().find(|d| d.label() == label)
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl EncodeLabelValue for Decision {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.label())
    }
}

/// A request tollgate refuses itself: the decision, whose status the caller gets, and the reason (the
/// error body's `error` and the audit line's `reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub decision: Decision,
    pub reason: String,
}

impl Refusal {
    pub fn new(decision: Decision, reason: impl Into<String>) -> Refusal {
        debug_assert!(decision.status().is_some(), "{decision:?} is no refusal of the proxy's own");
        Refusal { decision, reason: reason.into() }
    }

    /// The status of the answer: the decision's. A decision that is not the proxy's own to answer (caught in
    /// debug builds by [`Refusal::new`]) answers 500 rather than take the proxy down.
    pub fn status(&self) -> u16 {
        self.decision.status().unwrap_or(500)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn labels_are_todays_texts_each_once() {
        let labels: Vec<&str> = Decision::ALL.iter().map(|d| d.label()).collect();
        assert_eq!(
            labels,
            [
                "",
                "forwarded",
                "answered",
                "not-ready",
                "connect-refused",
                "bad-request",
                "denied",
                "upgrade-refused",
                "too-large",
                "budget-exceeded",
                "upstream-error",
                "local-destination",
                "no-credentials",
                "unauthenticated",
                "keys-unavailable",
                "upstream-aborted",
                "too-many-connections",
                "head-timeout",
                "head-too-large",
            ]
        );
        assert_eq!(labels.iter().collect::<HashSet<_>>().len(), labels.len(), "no label twice");
        for decision in Decision::ALL {
            assert_eq!(Decision::from_label(decision.label()), Some(decision));
            assert_eq!(decision.to_string(), decision.label());
        }
        assert_eq!(Decision::from_label("bad_request"), None);
        assert_eq!(Decision::default(), Decision::Undecided);
    }

    #[test]
    fn the_proxys_own_answers_have_their_status_the_others_none() {
        let statuses: Vec<(Decision, Option<u16>)> = Decision::ALL.iter().map(|d| (*d, d.status())).collect();
        let none: Vec<Decision> = statuses.iter().filter(|(_, s)| s.is_none()).map(|(d, _)| *d).collect();
        assert_eq!(none, [Decision::Undecided, Decision::Forwarded, Decision::UpstreamAborted]);
        for (decision, status) in [
            (Decision::Answered, 200),
            (Decision::BadRequest, 400),
            (Decision::Unauthenticated, 401),
            (Decision::Denied, 403),
            (Decision::UpgradeRefused, 403),
            (Decision::ConnectRefused, 405),
            (Decision::HeadTimeout, 408),
            (Decision::TooLarge, 413),
            (Decision::BudgetExceeded, 413),
            (Decision::HeadTooLarge, 431),
            (Decision::UpstreamError, 502),
            (Decision::LocalDestination, 502),
            (Decision::NotReady, 503),
            (Decision::NoCredentials, 503),
            (Decision::KeysUnavailable, 503),
            (Decision::TooManyConnections, 503),
        ] {
            assert_eq!(decision.status(), Some(status), "{decision:?}");
            assert_eq!(Refusal::new(decision, "why").status(), status, "{decision:?}");
        }
    }

    #[test]
    fn a_metric_label_is_the_decisions_text() {
        use prometheus_client::encoding::EncodeLabelSet;
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::registry::Registry;

        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Labels {
            decision: Decision,
        }
        let mut registry = Registry::default();
        let family = Family::<Labels, Counter>::default();
        registry.register("requests", "requests", family.clone());
        family.get_or_create(&Labels { decision: Decision::TooManyConnections }).inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("requests_total{decision=\"too-many-connections\"} 1"), "{text}");
    }
}
