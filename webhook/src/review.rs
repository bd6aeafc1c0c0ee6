//! AdmissionReview in, AdmissionReview out: the admission protocol around the pure core.

use std::collections::HashMap;

use base64::Engine;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, Status};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::Value;

use crate::harden::{self, Denial, Hardened, Outcome, RecordKeys, Requester, Rule, update};
use crate::patch::Patch;
use crate::policy::{OnViolation, Policy};
use crate::workload;

/// A check that only allows or denies.
fn denied_or_allowed(denial: Option<Denial>) -> Outcome {
    match denial {
        Some(denial) => Outcome::Denied(denial),
        None => Outcome::Hardened(Hardened { patch: Patch::default(), changes: Vec::new(), notes: Vec::new() }),
    }
}

/// The body is not an AdmissionReview request: answered with HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReviewOutcome {
    /// Hardened with a non-empty patch.
    Patched,
    /// Already hardened: allowed with no patch.
    Unchanged,
    Denied,
    /// Would have been denied; let through unhardened because the namespace only warns.
    Warned,
    /// Opted out, where the policy allows it.
    Skipped,
    /// Nothing tollgate decides (another kind, a subresource it does not guard): allowed untouched.
    Ignored,
    /// The object is not a decodable Pod.
    Invalid,
}

impl ReviewOutcome {
    pub const ALL: [ReviewOutcome; 7] = [
        ReviewOutcome::Patched,
        ReviewOutcome::Unchanged,
        ReviewOutcome::Denied,
        ReviewOutcome::Warned,
        ReviewOutcome::Skipped,
        ReviewOutcome::Ignored,
        ReviewOutcome::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReviewOutcome::Patched => "patched",
            ReviewOutcome::Unchanged => "unchanged",
            ReviewOutcome::Denied => "denied",
            ReviewOutcome::Warned => "warned",
            ReviewOutcome::Skipped => "skipped",
            ReviewOutcome::Ignored => "ignored",
            ReviewOutcome::Invalid => "invalid",
        }
    }
}

/// What happened, for the log line and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewSummary {
    pub uid: String,
    pub namespace: String,
    /// The pod's name, or its generateName followed by `*`.
    pub name: String,
    pub outcome: ReviewOutcome,
    pub changes: usize,
    /// The rules a denied (or, in warn mode, warned) pod broke.
    pub denied_rules: Vec<Rule>,
    pub skip_reason: Option<&'static str>,
    /// For a pod denied (or warned) at creation: the message, and whom to tell (its controller, or the pod),
    /// for an Event.
    pub event: Option<crate::events::Note>,
}

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

/// The reviews' series: how many by outcome, how long each took, the rules denied and warned pods broke, the
/// reasons pods were skipped.
#[derive(Clone)]
pub struct ReviewMetrics {
    reviews: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    denials: Family<RuleLabels, Counter>,
    warned: Family<RuleLabels, Counter>,
    skips: Family<ReasonLabels, Counter>,
}

impl ReviewMetrics {
    /// Registered in `registry`, every outcome and rule exported from the start (so rates and alerts work
    /// before the first review).
    pub fn register(registry: &mut Registry) -> ReviewMetrics {
        let reviews = Family::<OutcomeLabels, Counter>::default();
        // 50 µs .. ~0.8 s
        let duration = Histogram::new(exponential_buckets(0.00005, 2.0, 15));
        let denials = Family::<RuleLabels, Counter>::default();
        let warned = Family::<RuleLabels, Counter>::default();
        let skips = Family::<ReasonLabels, Counter>::default();
        registry.register("reviews", "AdmissionReviews answered, by outcome", reviews.clone());
        registry.register(
            "review_duration_seconds",
            "Time to answer an AdmissionReview, from the full body to the encoded response",
            duration.clone(),
        );
        registry.register("denials", "Violations in denied pods, by rule", denials.clone());
        registry.register("warned_violations", "Violations let through by onViolation: warn (not hardened), by rule", warned.clone());
        registry.register("skips", "Pods deliberately not hardened, by reason", skips.clone());
        for outcome in ReviewOutcome::ALL {
            let _ = reviews.get_or_create(&OutcomeLabels { outcome: outcome.as_str() });
        }
        for rule in Rule::ALL {
            let _ = denials.get_or_create(&RuleLabels { rule: rule.as_str() });
            let _ = warned.get_or_create(&RuleLabels { rule: rule.as_str() });
        }
        ReviewMetrics { reviews, duration, denials, warned, skips }
    }

    /// A review answered in `seconds`.
    pub fn observe(&self, summary: &ReviewSummary, seconds: f64) {
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
}

/// The pod's controller (its ownerReference with `controller: true`), or else the pod itself, unstored.
fn regarding(object: &Value, pod: &str) -> crate::events::Regarding {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let owners = object.pointer("/metadata/ownerReferences").and_then(Value::as_array);
    match owners.and_then(|o| o.iter().find(|r| r.get("controller") == Some(&Value::Bool(true)))) {
        Some(owner) => crate::events::Regarding {
            api_version: text(owner, "apiVersion"),
            kind: text(owner, "kind"),
            name: text(owner, "name"),
            uid: text(owner, "uid"),
        },
        None => crate::events::Regarding { api_version: "v1".into(), kind: "Pod".into(), name: pod.to_owned(), uid: String::new() },
    }
}

fn pod_name(object: &Value, request_name: &str) -> String {
    let metadata = object.get("metadata");
    let field = |key| metadata.and_then(|m| m.get(key)).and_then(Value::as_str).filter(|s| !s.is_empty());
    match (field("name"), field("generateName")) {
        (Some(name), _) => name.to_owned(),
        (None, Some(prefix)) => format!("{prefix}*"),
        (None, None) => request_name.to_owned(),
    }
}

/// `tollgate: <change>` lines, at most `max` of them (the last one summarising the rest).
pub fn warnings<L: std::fmt::Display>(lines: impl ExactSizeIterator<Item = L>, max: usize) -> Vec<String> {
    let total = lines.len();
    let shown = if total > max { max.saturating_sub(1) } else { total };
    let mut warnings: Vec<String> = lines.take(shown).map(|line| format!("tollgate: {line}")).collect();
    if total > shown {
        warnings.push(format!("tollgate: ... and {} more changes (run `tollgate-webhook inject` for the full list)", total - shown));
    }
    warnings
}

/// Only the status annotation, for a pod let through as it came: it was seen, and left alone on purpose.
/// Sets the response's patch type; the patch itself goes into the body as base64.
fn status_only(response: AdmissionResponse, status: Option<Patch>) -> Result<(AdmissionResponse, Option<Vec<u8>>), BadReview> {
    let Some(status) = status.filter(|p| !p.is_empty()) else { return Ok((response, None)) };
    let mut response =
        response.with_patch(json_patch::Patch(Vec::new())).map_err(|e| BadReview(format!("patch does not serialize: {e}")))?;
    response.patch = None;
    Ok((response, Some(status.to_json())))
}

/// Answer one AdmissionReview body, under the policy of the request's namespace ([`Policy::for_namespace`]).
pub fn review(policy: &Policy, body: &[u8]) -> Result<(Vec<u8>, ReviewSummary), BadReview> {
    review_with(policy, None, &RecordKeys::offline(), body)
}

/// [`review`] with `on_violation` in place of the policy's (and the namespace's override's), for pod creation:
/// a namespace's mode (`tollgate.dev/mode=warn`, `/mutate/warn`).
pub fn review_in(policy: &Policy, on_violation: OnViolation, body: &[u8]) -> Result<(Vec<u8>, ReviewSummary), BadReview> {
    review_with(policy, Some(on_violation), &RecordKeys::offline(), body)
}

/// [`review_in`] sealing tollgate's records with `keys` (the webhook's, derived from its TLS key); `mode`: the
/// namespace's mode, `None` for what its policy says.
pub fn review_with(
    policy: &Policy,
    mode: Option<OnViolation>,
    keys: &RecordKeys,
    body: &[u8],
) -> Result<(Vec<u8>, ReviewSummary), BadReview> {
    let mut envelope: Value = serde_json::from_slice(body).map_err(|e| BadReview(format!("body is not JSON: {e}")))?;
    if !envelope.is_object() {
        return Err(BadReview("body is not an AdmissionReview object".into()));
    }
    // The pod stays raw JSON: fields unknown to k8s-openapi must survive, and its decode error
    // must become a denial with the uid, not a 400.
    let object = envelope.pointer_mut("/request/object").map(Value::take).unwrap_or(Value::Null);
    let old_object = envelope.pointer_mut("/request/oldObject").map(Value::take).unwrap_or(Value::Null);
    let review: AdmissionReview<DynamicObject> =
        AdmissionReview::deserialize(envelope).map_err(|e| BadReview(format!("body is not an AdmissionReview: {e}")))?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(BadReview(format!(
            "expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {:?}, {:?}",
            review.types.api_version, review.types.kind
        )));
    }
    let request: AdmissionRequest<DynamicObject> = review.try_into().map_err(|_| BadReview("AdmissionReview has no request".into()))?;

    let mut summary = ReviewSummary {
        uid: request.uid.clone(),
        namespace: request.namespace.clone().unwrap_or_default(),
        name: pod_name(&object, &request.name),
        outcome: ReviewOutcome::Ignored,
        changes: 0,
        denied_rules: Vec::new(),
        skip_reason: None,
        event: None,
    };
    // The namespace's policy: by the request's namespace alone, which its sender cannot choose.
    let policy = policy.for_namespace(&summary.namespace);
    let on_violation = mode.unwrap_or(policy.on_violation);
    let mut response = AdmissionResponse::from(&request);
    let mut patch = None;
    let mut skipped_patch = None;
    // What letting a pod through in warn mode changed (its API token removed), for the warnings.
    let mut let_through = Vec::new();
    let groups = request.user_info.groups.clone().unwrap_or_default();
    let requester = Requester { username: request.user_info.username.as_deref().unwrap_or(""), groups: &groups };
    let subresource = request.sub_resource.as_deref().unwrap_or("");
    let kind = request.kind.kind.as_str();
    let mut about = None;
    let decision = match (request.operation.clone(), request.kind.group.as_str(), kind) {
        (Operation::Create, "", "Pod") if subresource.is_empty() => {
            // Hardened in place: on a skip (or a denial) harden leaves the pod as it came.
            let mut pod = object;
            let outcome = harden::harden_with(policy, on_violation, &mut pod, Some(requester), keys);
            match &outcome {
                Ok(Outcome::Skipped { reason }) => skipped_patch = Some(harden::skipped_status(policy, &pod, reason.as_str())),
                Ok(Outcome::Warned(_)) => {
                    let (patch, changes) = harden::warned_status(policy, &pod);
                    skipped_patch = Some(patch);
                    let_through = changes;
                    about = Some(regarding(&pod, &summary.name));
                }
                // Only a pod that is not let through as hardened is worth an Event.
                Ok(Outcome::Denied(_)) => about = Some(regarding(&pod, &summary.name)),
                _ => {}
            }
            Some(("this pod", outcome))
        }
        (Operation::Update, "", "Pod") => {
            let mut pod = object;
            Some(("this update", update::update(policy, &old_object, &mut pod, subresource)))
        }
        (Operation::Connect, "", "PodExecOptions" | "PodAttachOptions") => {
            let container = object.get("container").and_then(Value::as_str).unwrap_or("");
            Some(("this request", Ok(denied_or_allowed(harden::check_connect(container, subresource)))))
        }
        // Whatever `ports` says: the kubelet forwards the ports each stream asks for.
        (Operation::Connect, "", "PodPortForwardOptions") => {
            Some(("this request", Ok(denied_or_allowed(harden::check_port_forward(policy, requester)))))
        }
        (Operation::Create | Operation::Update, "" | "apps" | "batch", _)
            if subresource.is_empty() && workload::pod_pointer(kind).is_some() =>
        {
            let old = (request.operation == Operation::Update).then_some(&old_object);
            let denial = workload::check_identity(policy, kind, &object, old, requester);
            Some(("this workload", Ok(denied_or_allowed(denial))))
        }
        _ => None,
    };
    if let Some((what, decision)) = decision {
        match decision {
            Err(decode) => {
                summary.outcome = ReviewOutcome::Invalid;
                response.allowed = false;
                response.result = Status::failure(&format!("tollgate: {decode}"), "BadRequest").with_code(400);
            }
            Ok(Outcome::Denied(denial)) => {
                summary.outcome = ReviewOutcome::Denied;
                summary.denied_rules = denial.violations.iter().map(|v| v.rule).collect();
                response.allowed = false;
                let message = denial.message_for(what);
                summary.event = about.map(|about| crate::events::Note::new(&summary.namespace, about, "Denied", &message));
                response.result = Status::failure(&message, "Forbidden").with_code(403);
            }
            Ok(Outcome::Warned(denial)) => {
                summary.outcome = ReviewOutcome::Warned;
                summary.denied_rules = denial.violations.iter().map(|v| v.rule).collect();
                let message = format!(
                    "pod not hardened: the namespace only warns (onViolation: warn); in one that enforces, {}",
                    denial.message_for(what)
                );
                summary.event = about.map(|about| crate::events::Note::new(&summary.namespace, about, "Warned", &message));
                let lines = std::iter::once(message)
                    .chain(denial.violations.iter().map(|v| format!("would deny: {v}")))
                    .chain(let_through.iter().map(ToString::to_string))
                    .collect::<Vec<_>>();
                response.warnings = Some(warnings(lines.into_iter(), policy.max_warnings));
                (response, patch) = status_only(response, skipped_patch)?;
            }
            Ok(Outcome::Skipped { reason }) => {
                summary.outcome = ReviewOutcome::Skipped;
                summary.skip_reason = Some(reason.as_str());
                response.warnings = Some(vec![format!("tollgate: pod not hardened ({})", reason.as_str())]);
                (response, patch) = status_only(response, skipped_patch)?;
            }
            Ok(Outcome::Hardened(hardened)) => {
                summary.changes = hardened.changes.len();
                // Each line formatted once, straight into its warning.
                let notes = hardened.notes.iter().map(|note| note as &dyn std::fmt::Display);
                let lines = notes.chain(hardened.changes.iter().map(|change| change as &dyn std::fmt::Display)).collect::<Vec<_>>();
                if !lines.is_empty() {
                    response.warnings = Some(warnings(lines.into_iter(), policy.max_warnings));
                }
                if hardened.patch.is_empty() {
                    summary.outcome = ReviewOutcome::Unchanged;
                } else {
                    summary.outcome = ReviewOutcome::Patched;
                    patch = Some(hardened.patch.to_json());
                    // Sets patchType; the patch itself is added below as base64.
                    response = response
                        .with_patch(json_patch::Patch(Vec::new()))
                        .map_err(|e| BadReview(format!("patch does not serialize: {e}")))?;
                    response.patch = None;
                }
            }
        }
        response.audit_annotations = HashMap::from([
            ("outcome".to_owned(), summary.outcome.as_str().to_owned()),
            ("changes".to_owned(), summary.changes.to_string()),
        ]);
    }
    let mut review = serde_json::to_value(response.into_review()).map_err(|e| BadReview(format!("response does not serialize: {e}")))?;
    // The response last, so that its object closes the body: `…}}`.
    let response = review.as_object_mut().and_then(|r| r.shift_remove("response"));
    if let (Some(response), Some(review)) = (response, review.as_object_mut()) {
        review.insert("response".to_owned(), response);
    }
    let mut body = serde_json::to_vec(&review).map_err(|e| BadReview(format!("response does not serialize: {e}")))?;
    if let Some(patch) = patch {
        // kube-core would encode the bytes as a JSON array of numbers; the API's []byte is base64. Base64
        // needs no escaping, so it is written into the body as it is, the response's last member.
        assert!(body.ends_with(b"}}"), "the response closes the body");
        let closing = body.split_off(body.len() - 2);
        body.extend_from_slice(b",\"patch\":\"");
        let start = body.len();
        body.resize(start + base64::encoded_len(patch.len(), true).expect("the patch is small"), 0);
        base64::engine::general_purpose::STANDARD.encode_slice(&patch, &mut body[start..]).expect("sized for the encoding");
        body.extend_from_slice(b"\"");
        body.extend_from_slice(&closing);
    }
    Ok((body, summary))
}
