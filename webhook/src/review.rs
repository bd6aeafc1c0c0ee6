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

use crate::events::{Note, Regarding};
use crate::harden::{self, Change, DecodeError, Denial, Hardened, Outcome, RecordKeys, Requester, Rule, update};
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
    pub event: Option<Note>,
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
fn regarding(object: &Value, pod: &str) -> Regarding {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let owners = object.pointer("/metadata/ownerReferences").and_then(Value::as_array);
    match owners.and_then(|o| o.iter().find(|r| r.get("controller") == Some(&Value::Bool(true)))) {
        Some(owner) => Regarding {
            api_version: text(owner, "apiVersion"),
            kind: text(owner, "kind"),
            name: text(owner, "name"),
            uid: text(owner, "uid"),
        },
        None => Regarding { api_version: "v1".into(), kind: "Pod".into(), name: pod.to_owned(), uid: String::new() },
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

/// `patch` as the response's, unless there is none or it is empty: sets the response's patch type, and returns
/// the patch's bytes, which go into the body as base64 ([`encode`]).
fn with_patch(response: AdmissionResponse, patch: Option<Patch>) -> Result<(AdmissionResponse, Option<Vec<u8>>), BadReview> {
    let Some(patch) = patch.filter(|p| !p.is_empty()) else { return Ok((response, None)) };
    let mut response =
        response.with_patch(json_patch::Patch(Vec::new())).map_err(|e| BadReview(format!("patch does not serialize: {e}")))?;
    response.patch = None;
    Ok((response, Some(patch.to_json())))
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
///
/// In stages, each a function of its own: [`decode`] the body, [`decide`] what tollgate says about the request,
/// [`answer`] it (the response and the summary), [`encode`] the reply.
pub fn review_with(
    policy: &Policy,
    mode: Option<OnViolation>,
    keys: &RecordKeys,
    body: &[u8],
) -> Result<(Vec<u8>, ReviewSummary), BadReview> {
    let Decoded { request, object, old_object } = decode(body)?;
    let mut summary = ReviewSummary::of(&request, &object);
    // The namespace's policy: by the request's namespace alone, which its sender cannot choose.
    let policy = policy.for_namespace(&summary.namespace);
    let on_violation = mode.unwrap_or(policy.on_violation);
    let response = AdmissionResponse::from(&request);
    let (response, patch) = match decide(policy, on_violation, keys, &request, object, &old_object, &summary.name) {
        Some(decision) => answer(decision, policy.max_warnings, &mut summary, response)?,
        None => (response, None),
    };
    Ok((encode(response, patch)?, summary))
}

/// An AdmissionReview request, with the objects it carries as raw JSON.
struct Decoded {
    request: AdmissionRequest<DynamicObject>,
    /// `Null` when the request has none.
    object: Value,
    old_object: Value,
}

/// The body as an AdmissionReview v1 request; anything else is a [`BadReview`].
fn decode(body: &[u8]) -> Result<Decoded, BadReview> {
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
    Ok(Decoded { request, object, old_object })
}

impl ReviewSummary {
    /// Before any decision: ignored, nothing changed.
    fn of(request: &AdmissionRequest<DynamicObject>, object: &Value) -> ReviewSummary {
        ReviewSummary {
            uid: request.uid.clone(),
            namespace: request.namespace.clone().unwrap_or_default(),
            name: pod_name(object, &request.name),
            outcome: ReviewOutcome::Ignored,
            changes: 0,
            denied_rules: Vec::new(),
            skip_reason: None,
            event: None,
        }
    }
}

/// What tollgate decided about a request it guards, and what answering it needs besides.
#[derive(Debug)]
struct Decision {
    /// What a denial calls the object: `this pod`, `this update`, `this request`, `this workload`.
    what: &'static str,
    outcome: Result<Outcome, DecodeError>,
    /// For a pod created and let through as it came (skipped, or warned): its status annotation.
    status: Option<Patch>,
    /// What letting a pod through in warn mode changed (its API token removed), for the warnings.
    let_through: Vec<Change>,
    /// For a pod created and denied or warned: whom an Event about it is about.
    about: Option<Regarding>,
}

impl Decision {
    fn of(what: &'static str, outcome: Result<Outcome, DecodeError>) -> Decision {
        Decision { what, outcome, status: None, let_through: Vec::new(), about: None }
    }
}

/// What tollgate says about the request, by what it is; `None` for what tollgate does not decide (another
/// kind, a subresource it does not guard).
fn decide(
    policy: &Policy,
    on_violation: OnViolation,
    keys: &RecordKeys,
    request: &AdmissionRequest<DynamicObject>,
    object: Value,
    old_object: &Value,
    pod_name: &str,
) -> Option<Decision> {
    let groups = request.user_info.groups.clone().unwrap_or_default();
    let requester = Requester { username: request.user_info.username.as_deref().unwrap_or(""), groups: &groups };
    let subresource = request.sub_resource.as_deref().unwrap_or("");
    let kind = request.kind.kind.as_str();
    match (request.operation.clone(), request.kind.group.as_str(), kind) {
        (Operation::Create, "", "Pod") if subresource.is_empty() => {
            Some(create_pod(policy, on_violation, keys, object, requester, pod_name))
        }
        (Operation::Update, "", "Pod") => {
            let mut pod = object;
            Some(Decision::of("this update", update::update(policy, old_object, &mut pod, subresource)))
        }
        (Operation::Connect, "", "PodExecOptions" | "PodAttachOptions") => {
            let container = object.get("container").and_then(Value::as_str).unwrap_or("");
            Some(Decision::of("this request", Ok(denied_or_allowed(harden::check_connect(container, subresource)))))
        }
        // Whatever `ports` says: the kubelet forwards the ports each stream asks for.
        (Operation::Connect, "", "PodPortForwardOptions") => {
            Some(Decision::of("this request", Ok(denied_or_allowed(harden::check_port_forward(policy, requester)))))
        }
        (Operation::Create | Operation::Update, "" | "apps" | "batch", _)
            if subresource.is_empty() && workload::pod_pointer(kind).is_some() =>
        {
            let old = (request.operation == Operation::Update).then_some(old_object);
            let denial = workload::check_identity(policy, kind, &object, old, requester);
            Some(Decision::of("this workload", Ok(denied_or_allowed(denial))))
        }
        _ => None,
    }
}

/// A pod's creation: hardened, or let through as it came with its status annotation, or denied.
fn create_pod(
    policy: &Policy,
    on_violation: OnViolation,
    keys: &RecordKeys,
    object: Value,
    requester: Requester,
    pod_name: &str,
) -> Decision {
    // Hardened in place: on a skip (or a denial) harden leaves the pod as it came.
    let mut pod = object;
    let mut decision = Decision::of("this pod", harden::harden_with(policy, on_violation, &mut pod, Some(requester), keys));
    match &decision.outcome {
        Ok(Outcome::Skipped { reason }) => decision.status = Some(harden::skipped_status(policy, &pod, reason.as_str())),
        Ok(Outcome::Warned(_)) => {
            let (patch, changes) = harden::warned_status(policy, &pod);
            decision.status = Some(patch);
            decision.let_through = changes;
            decision.about = Some(regarding(&pod, pod_name));
        }
        // Only a pod that is not let through as hardened is worth an Event.
        Ok(Outcome::Denied(_)) => decision.about = Some(regarding(&pod, pod_name)),
        _ => {}
    }
    decision
}

/// The response to `decision` and the patch's bytes, if any; `summary` says what happened.
fn answer(
    decision: Decision,
    max_warnings: usize,
    summary: &mut ReviewSummary,
    mut response: AdmissionResponse,
) -> Result<(AdmissionResponse, Option<Vec<u8>>), BadReview> {
    let Decision { what, outcome, status, let_through, about } = decision;
    let mut patch = None;
    match outcome {
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
            summary.event = about.map(|about| Note::new(&summary.namespace, about, "Denied", &message));
            response.result = Status::failure(&message, "Forbidden").with_code(403);
        }
        Ok(Outcome::Warned(denial)) => {
            summary.outcome = ReviewOutcome::Warned;
            summary.denied_rules = denial.violations.iter().map(|v| v.rule).collect();
            let message = format!(
                "pod not hardened: the namespace only warns (onViolation: warn); in one that enforces, {}",
                denial.message_for(what)
            );
            summary.event = about.map(|about| Note::new(&summary.namespace, about, "Warned", &message));
            let lines = std::iter::once(message)
                .chain(denial.violations.iter().map(|v| format!("would deny: {v}")))
                .chain(let_through.iter().map(ToString::to_string))
                .collect::<Vec<_>>();
            response.warnings = Some(warnings(lines.into_iter(), max_warnings));
            (response, patch) = with_patch(response, status)?;
        }
        Ok(Outcome::Skipped { reason }) => {
            summary.outcome = ReviewOutcome::Skipped;
            summary.skip_reason = Some(reason.as_str());
            response.warnings = Some(vec![format!("tollgate: pod not hardened ({})", reason.as_str())]);
            (response, patch) = with_patch(response, status)?;
        }
        Ok(Outcome::Hardened(hardened)) => {
            summary.changes = hardened.changes.len();
            // Each line formatted once, straight into its warning.
            let notes = hardened.notes.iter().map(|note| note as &dyn std::fmt::Display);
            let lines = notes.chain(hardened.changes.iter().map(|change| change as &dyn std::fmt::Display)).collect::<Vec<_>>();
            if !lines.is_empty() {
                response.warnings = Some(warnings(lines.into_iter(), max_warnings));
            }
            summary.outcome = if hardened.patch.is_empty() { ReviewOutcome::Unchanged } else { ReviewOutcome::Patched };
            (response, patch) = with_patch(response, Some(hardened.patch))?;
        }
    }
    response.audit_annotations =
        HashMap::from([("outcome".to_owned(), summary.outcome.as_str().to_owned()), ("changes".to_owned(), summary.changes.to_string())]);
    Ok((response, patch))
}

/// The AdmissionReview reply: `response` last, with `patch` as base64 closing it.
fn encode(response: AdmissionResponse, patch: Option<Vec<u8>>) -> Result<Vec<u8>, BadReview> {
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
    Ok(body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::harden::{SkipReason, Violation};
    use crate::patch::PatchBuilder;

    fn body(request: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})).unwrap()
    }

    fn request(operation: &str, kind: &str, sub_resource: Option<&str>, object: Value) -> Value {
        let mut request = json!({
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "req-name",
            "namespace": "ns",
            "operation": operation,
            "userInfo": {"username": "alice", "groups": ["g"]},
            "object": object,
        });
        if let Some(sub) = sub_resource {
            request["subResource"] = json!(sub);
        }
        request
    }

    fn decoded(request: Value) -> Decoded {
        decode(&body(request)).expect("an AdmissionReview")
    }

    fn denial() -> Denial {
        Denial {
            violations: vec![Violation {
                rule: Rule::Privileged,
                scope: "container \"app\"".into(),
                field: "securityContext.privileged".into(),
                problem: "is true".into(),
            }],
        }
    }

    fn patch() -> Patch {
        let mut doc = json!({"metadata": {}});
        let mut builder = PatchBuilder::new(&mut doc);
        builder.set(&["metadata".into(), "labels".into()], json!({"a": "b"}));
        builder.into_patch()
    }

    fn patch_type(response: &AdmissionResponse) -> Value {
        serde_json::to_value(response).unwrap()["patchType"].take()
    }

    fn answered(decision: Decision) -> (ReviewSummary, AdmissionResponse, Option<Vec<u8>>) {
        let Decoded { request, object, .. } = decoded(request("CREATE", "Pod", None, json!({"metadata": {"name": "p"}})));
        let mut summary = ReviewSummary::of(&request, &object);
        let (response, patch) = answer(decision, 3, &mut summary, AdmissionResponse::from(&request)).unwrap();
        (summary, response, patch)
    }

    #[test]
    fn decode_refuses_what_is_not_an_admission_review_request() {
        let refused = |body: &[u8]| decode(body).err().map(|e| e.0).unwrap_or_default();
        assert!(refused(b"nope").starts_with("body is not JSON"));
        assert_eq!(refused(b"[]"), "body is not an AdmissionReview object");
        let other = serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"})).unwrap();
        assert!(refused(&other).starts_with("expected apiVersion admission.k8s.io/v1"), "{}", refused(&other));
        let empty = serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})).unwrap();
        assert_eq!(refused(&empty), "AdmissionReview has no request");
        // The objects come out raw, fields unknown to k8s-openapi kept.
        let Decoded { request, object, old_object } = decoded(request("CREATE", "Pod", None, json!({"spec": {"madeUp": 1}})));
        assert_eq!(request.uid, "u-1");
        assert_eq!(object, json!({"spec": {"madeUp": 1}}));
        assert_eq!(old_object, Value::Null);
    }

    #[test]
    fn a_summary_names_the_pod_by_its_name_its_generate_name_or_the_requests() {
        let named = |object: Value| {
            let Decoded { request, object, .. } = decoded(request("CREATE", "Pod", None, object));
            ReviewSummary::of(&request, &object)
        };
        let summary = named(json!({"metadata": {"name": "p"}}));
        assert_eq!((summary.uid.as_str(), summary.namespace.as_str(), summary.name.as_str()), ("u-1", "ns", "p"));
        assert_eq!(summary.outcome, ReviewOutcome::Ignored);
        assert_eq!(named(json!({"metadata": {"generateName": "job-"}})).name, "job-*");
        assert_eq!(named(json!({})).name, "req-name");
    }

    #[test]
    fn decide_takes_only_what_tollgate_guards() {
        let policy = Policy::default();
        let keys = RecordKeys::offline();
        let decided = |request: Value| {
            let Decoded { request, object, old_object } = decoded(request);
            decide(&policy, policy.on_violation, &keys, &request, object, &old_object, "p")
        };
        assert!(decided(request("CREATE", "ConfigMap", None, json!({}))).is_none());
        assert!(decided(request("CREATE", "Pod", Some("binding"), json!({}))).is_none());
        assert!(decided(request("DELETE", "Pod", None, json!({}))).is_none());
        // exec into the proxy: denied, as a request.
        let exec = decided(request("CONNECT", "PodExecOptions", Some("exec"), json!({"container": harden::SIDECAR_NAME}))).unwrap();
        assert_eq!(exec.what, "this request");
        assert!(matches!(exec.outcome, Ok(Outcome::Denied(_))), "{exec:?}");
        assert!(exec.about.is_none() && exec.status.is_none());
        let exec = decided(request("CONNECT", "PodExecOptions", Some("exec"), json!({"container": "app"}))).unwrap();
        assert!(matches!(exec.outcome, Ok(Outcome::Hardened(ref h)) if h.patch.is_empty()), "{exec:?}");
        // A pod created: hardened.
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "busybox"}]}});
        let created = decided(request("CREATE", "Pod", None, pod)).unwrap();
        assert_eq!(created.what, "this pod");
        assert!(matches!(created.outcome, Ok(Outcome::Hardened(ref h)) if !h.patch.is_empty()), "{created:?}");
        assert!(created.about.is_none());
    }

    #[test]
    fn a_denial_is_a_403_with_an_event_about_the_pods_controller() {
        let pod = json!({"metadata": {"ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "ju", "controller": true}]}});
        let about = regarding(&pod, "p");
        assert_eq!((about.kind.as_str(), about.name.as_str(), about.uid.as_str()), ("Job", "j", "ju"));
        let decision = Decision { about: Some(about), ..Decision::of("this pod", Ok(Outcome::Denied(denial()))) };
        let (summary, response, patch) = answered(decision);
        assert_eq!(summary.outcome, ReviewOutcome::Denied);
        assert_eq!(summary.denied_rules, [Rule::Privileged]);
        assert!(!response.allowed && patch.is_none());
        assert_eq!(response.result.code, 403);
        assert!(response.result.message.starts_with("tollgate denied this pod (1 violation): "), "{}", response.result.message);
        let event = summary.event.unwrap();
        assert_eq!((event.reason, event.regarding.kind.as_str()), ("Denied", "Job"));
        assert_eq!(response.audit_annotations["outcome"], "denied");
    }

    #[test]
    fn a_warned_pod_is_let_through_with_its_status_and_what_would_be_denied() {
        let let_through = vec![Change { scope: "pod".into(), action: "API token removed".into() }; 4];
        let decision = Decision {
            status: Some(patch()),
            let_through,
            about: Some(regarding(&json!({}), "p")),
            ..Decision::of("this pod", Ok(Outcome::Warned(denial())))
        };
        let (summary, response, patch) = answered(decision);
        assert_eq!(summary.outcome, ReviewOutcome::Warned);
        assert!(response.allowed && patch_type(&response) == "JSONPatch" && response.patch.is_none());
        assert!(patch.is_some_and(|p| !p.is_empty()));
        let warnings = response.warnings.unwrap();
        assert_eq!(warnings.len(), 3, "at most max_warnings: {warnings:?}");
        assert!(warnings[0].starts_with("tollgate: pod not hardened: the namespace only warns"), "{warnings:?}");
        assert!(warnings[1].starts_with("tollgate: would deny: "), "{warnings:?}");
        assert_eq!(warnings[2], "tollgate: ... and 4 more changes (run `tollgate-webhook inject` for the full list)");
        assert_eq!(summary.event.unwrap().reason, "Warned");
    }

    #[test]
    fn skipped_invalid_and_unchanged_pods() {
        let (summary, response, patch) = answered(Decision::of("this pod", Ok(Outcome::Skipped { reason: SkipReason::OptedOut })));
        assert_eq!((summary.outcome, summary.skip_reason), (ReviewOutcome::Skipped, Some("opted-out")));
        assert!(response.allowed && patch.is_none() && patch_type(&response).is_null(), "no status, no patch");
        let (summary, response, _) = answered(Decision::of("this pod", Err(DecodeError("spec: bad".into()))));
        assert_eq!(summary.outcome, ReviewOutcome::Invalid);
        assert_eq!(
            (response.allowed, response.result.code, response.result.message.as_str()),
            (false, 400, "tollgate: object is not a valid Pod: spec: bad")
        );
        let nothing = Hardened { patch: Patch::default(), changes: Vec::new(), notes: Vec::new() };
        let (summary, response, patch) = answered(Decision::of("this pod", Ok(Outcome::Hardened(nothing))));
        assert_eq!(summary.outcome, ReviewOutcome::Unchanged);
        assert!(response.allowed && patch.is_none() && response.warnings.is_none());
        assert_eq!(response.audit_annotations["changes"], "0");
    }

    #[test]
    fn encode_puts_the_response_last_and_the_patch_as_base64_closing_it() {
        let Decoded { request, .. } = decoded(request("CREATE", "Pod", None, json!({})));
        let (response, bytes) = with_patch(AdmissionResponse::from(&request), Some(patch())).unwrap();
        let bytes = bytes.unwrap();
        let body = encode(response, Some(bytes.clone())).unwrap();
        let text = String::from_utf8(body.clone()).unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert!(text.ends_with(&format!(",\"patch\":\"{encoded}\"}}}}")), "{text}");
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["response"]["patchType"], "JSONPatch");
        assert_eq!(parsed.as_object().unwrap().keys().next_back().map(String::as_str), Some("response"));
        let plain = encode(AdmissionResponse::from(&request), None).unwrap();
        assert!(!String::from_utf8(plain).unwrap().contains("patch"));
    }
}
