//! The pure core: (policy, pod) → JSONPatch plus the list of changes, or a denial naming every violation.
//!
//! A pod's creation goes through four stages, each a module entered once ([`harden_with`]):
//!
//! 1. **checks** (checks.rs, with resources.rs and egress.rs): what is wrong with the pod, found before
//!    anything is changed; the pod is denied, warned about or skipped there, or goes on with the fixes the
//!    policy makes (findings.rs);
//! 2. **plan** (plan.rs): what to change, every value decided from the policy and the checks;
//! 3. **render** (sidecar.rs): tollgate's containers for the pod, and where they go;
//! 4. **write** (write.rs): the plan and the containers written through the patch builder (edit.rs), each
//!    change recorded, the record sealed (record.rs).
//!
//! Reads and writes go through one working copy of the pod as raw JSON, so fields this build of
//! k8s-openapi does not know survive untouched; a typed decode first rejects pods that are not pods (pod.rs).
//! An update of a pod (update.rs) goes through the same stages for what it adds.

mod checks;
mod edit;
pub mod egress;
mod findings;
mod plan;
mod pod;
pub mod record;
mod resources;
pub mod rules;
mod sidecar;
pub mod update;
mod write;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::patch::Patch;
use crate::policy::{OnViolation, Policy};
use checks::Verdict;
use findings::Findings;
pub use record::RecordKeys;
pub use rules::{Denial, Rule, Violation};
pub use sidecar::RenderedContainers;

pub use tollgate_api::names::*;

/// Who asks, from the AdmissionRequest's `userInfo`. Offline hardening (the CLI) has none: whoever runs
/// it applies the result with their own rights, and the API server's webhook judges them then.
#[derive(Clone, Copy, Debug)]
pub struct Requester<'a> {
    pub username: &'a str,
    pub groups: &'a [String],
}

/// One thing tollgate changed, e.g. `container "app": set securityContext.readOnlyRootFilesystem=true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub scope: String,
    pub action: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.scope, self.action)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The pod is (now) hardened; an empty patch means it already was.
    Hardened(Hardened),
    /// Left alone on purpose.
    Skipped {
        reason: SkipReason,
    },
    Denied(Denial),
    /// Would be denied, but the namespace only warns (`onViolation: warn`): let through as it came.
    Warned(Denial),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hardened {
    pub patch: Patch,
    pub changes: Vec<Change>,
    /// Remarks that are not changes (e.g. an opt-out that the policy does not honour).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    OptedOut,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::OptedOut => "opted-out",
        }
    }
}

/// The object is not a decodable Pod; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("object is not a valid Pod: {0}")]
pub struct DecodeError(pub String);

/// Harden `pod` in place according to `policy`.
///
/// On `Outcome::Hardened`, `pod` is the hardened pod and the patch turns the original into it. On a
/// denial or skip, `pod` is unchanged (all checks run before the first edit).
pub fn harden(policy: &Policy, pod: &mut Value) -> Result<Outcome, DecodeError> {
    harden_as(policy, pod, None)
}

/// [`harden`] for a request made by `requester` (who may or may not set identity annotations).
pub fn harden_as(policy: &Policy, pod: &mut Value, requester: Option<Requester>) -> Result<Outcome, DecodeError> {
    harden_in(policy, policy.on_violation, pod, requester)
}

/// [`harden_as`] with `on_violation` in place of the policy's: a namespace's mode (the webhook's
/// `/mutate/warn`).
pub fn harden_in(
    policy: &Policy,
    on_violation: OnViolation,
    pod: &mut Value,
    requester: Option<Requester>,
) -> Result<Outcome, DecodeError> {
    harden_with(policy, on_violation, pod, requester, &RecordKeys::offline())
}

/// [`harden_in`] sealing (and checking) the record `tollgate.dev/changes` with `keys`, the webhook's: see
/// [`record`]. The pipeline: checks → plan → render → write.
pub fn harden_with(
    policy: &Policy,
    on_violation: OnViolation,
    pod: &mut Value,
    requester: Option<Requester>,
    keys: &RecordKeys,
) -> Result<Outcome, DecodeError> {
    // 1. What is wrong, found before anything is changed: a denial, a warning or a skip ends here.
    let checked = match checks::check(policy, on_violation, pod, requester)? {
        Verdict::Harden(checked) => *checked,
        Verdict::Done(outcome) => return Ok(outcome),
    };
    // 2. What to change.
    let plan = plan::plan(policy, pod, checked);
    // 3. tollgate's containers for this pod, and where they go.
    let placement = sidecar::render(policy, &plan.ids, pod);
    // 4. The patch.
    Ok(Outcome::Hardened(write::build(policy, keys, pod, plan, placement)))
}

/// The value of `tollgate.dev/egress-lock` under `policy`, exactly: `{"proxyUid":10001,"inboundPorts":[15006,15021]}`
/// (the proxy's user, then its ingress and admin ports). The tollgate-cni plugin reads it.
pub fn egress_lock_annotation(policy: &Policy) -> String {
    let proxy = &policy.proxy;
    // A loaded policy's proxy.runAsUser is 1..=2^31-1 (validated), so it is a u32.
    let proxy_uid = u32::try_from(proxy.run_as_user).unwrap_or(u32::MAX);
    tollgate_api::egress_lock::EgressLock { proxy_uid, inbound_ports: vec![proxy.ingress_port, proxy.admin_port] }.to_annotation()
}

/// The identity annotations found at `field` of a workload's template, against who asks for them.
pub fn check_identity(policy: &Policy, annotations: &BTreeMap<String, String>, requester: Requester, field: &str) -> Option<Denial> {
    let mut findings = Findings::new(policy);
    checks::identity(policy, annotations, Some(requester), "template", field, &mut findings);
    findings.denial()
}

/// `pods/exec` or `pods/attach` into `container`: the proxy holds the analysis's credentials, so no one
/// may run commands in it or attach to it.
pub fn check_connect(container: &str, subresource: &str) -> Option<Denial> {
    (container == SIDECAR_NAME).then(|| Denial {
        violations: vec![Violation {
            rule: Rule::TollgateOwned,
            scope: format!("container {SIDECAR_NAME:?}"),
            field: format!("pods/{subresource}"),
            problem: "is refused: the proxy holds the analysis's credentials, and no one may run commands in it or attach to it".to_owned(),
        }],
    })
}

/// `pods/portforward`, refused as a whole to every user the policy does not trust. The request's `ports` mean
/// nothing: the kubelet forwards whatever port each stream of the connection asks for (kubectl 1.36 sends none
/// in the request), so a forward into an analysis pod reaches every port inside it — the proxy's egress
/// listener on 127.0.0.1, which sends requests with the analysis's credentials, and the app's own ports and the
/// proxy's ingress past every NetworkPolicy and the egress lock. The request names a pod but carries none of its
/// labels, so the webhook configuration sends every port-forward in an analysis namespace, whichever pod it
/// is for. A trusted user (`identity`) may already act as any analysis: a forward gives them nothing more.
pub fn check_port_forward(policy: &Policy, requester: Requester) -> Option<Denial> {
    let identity = &policy.identity;
    if identity.trusts(requester.username, requester.groups) {
        return None;
    }
    let problem = format!(
        "is refused in analysis namespaces: the kubelet forwards whatever port each connection asks for, whatever the request names, so a forward would reach the proxy's egress listener (port {}, which sends requests with the analysis's credentials) and every port of the pod past its NetworkPolicies; only {} may forward; {:?} is neither",
        policy.proxy.egress_port,
        checks::trusted(policy),
        requester.username
    );
    Some(Denial {
        violations: vec![Violation { rule: Rule::TollgateOwned, scope: "pod".to_owned(), field: "pods/portforward".to_owned(), problem }],
    })
}

/// The patch that records a skipped pod in `tollgate.dev/status`: the pod was seen by tollgate, which the
/// API server's `tollgate-require-hardening` policy asks of every pod in an analysis namespace.
pub fn skipped_status(policy: &Policy, pod: &Value, reason: &str) -> Patch {
    write::let_through(policy, pod, reason, false).0
}

/// The patch for a pod let through as it came in warn mode, and what it changes: its status, as for a skipped
/// pod, and — under `security.allowServiceAccountToken: false` — the ServiceAccount token volume the API
/// server's ServiceAccount plugin added, with its mounts, removed: a pod on trial holds no API credential
/// either. (A token volume of the pod's own is a violation no mode lets through.)
pub fn warned_status(policy: &Policy, pod: &Value) -> (Patch, Vec<Change>) {
    write::let_through(policy, pod, "warned", !policy.security.allow_service_account_token)
}
