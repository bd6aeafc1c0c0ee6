//! The pure core: (policy, pod) → JSONPatch plus the list of changes, or a denial naming every violation.
//!
//! Reads and writes go through one working copy of the pod as raw JSON, so fields this build of
//! k8s-openapi does not know survive untouched; a typed decode first rejects pods that are not pods.

mod checks;
pub mod egress;
pub mod record;
mod resources;
pub mod rules;
mod sidecar;
pub mod update;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::patch::{Patch, PatchBuilder, Path, Seg, join};
use crate::path;
use crate::policy::{EgressLock, OnExceed, OnViolation, Policy};
pub use record::RecordKeys;
pub use rules::{Denial, Rule, Violation};

pub use tollgate_api::names::*;
/// The changes annotation holds at most this much; the rest is counted on its last line.
const MAX_CHANGES_ANNOTATION: usize = 16 * 1024;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Init,
    App,
    Ephemeral,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Init, Kind::App, Kind::Ephemeral];

    fn field(self) -> &'static str {
        match self {
            Kind::Init => "initContainers",
            Kind::App => "containers",
            Kind::Ephemeral => "ephemeralContainers",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Init => "init container",
            Kind::App => "container",
            Kind::Ephemeral => "ephemeral container",
        }
    }
}

/// A container of the pod other than tollgate's own (the sidecar and the lock check).
#[derive(Clone, Debug)]
pub(crate) struct ContainerRef {
    kind: Kind,
    name: String,
    path: Path,
    scope: String,
}

fn containers(doc: &Value) -> Vec<ContainerRef> {
    let mut found = Vec::new();
    for kind in Kind::ALL {
        let Some(Value::Array(items)) = crate::patch::get(doc, &path!["spec", kind.field()]) else { continue };
        for (index, container) in items.iter().enumerate() {
            let name = container.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
            if kind != Kind::Ephemeral && TOLLGATE_CONTAINERS.contains(&name.as_str()) {
                continue;
            }
            let scope = format!("{} {name:?}", kind.label());
            found.push(ContainerRef { kind, name, path: path!["spec", kind.field(), index], scope });
        }
    }
    found
}

enum Fix {
    Set(Path, Value),
    Remove(Path),
}

/// The typed decode that rejects objects that are not pods; the error names the field.
fn decode(pod: &Value) -> Result<Pod, DecodeError> {
    // Tracking the path costs on every field; only a failing decode needs it, so that one runs again with it.
    if let Ok(typed) = Pod::deserialize(pod) {
        return Ok(typed);
    }
    serde_path_to_error::deserialize(pod).map_err(|e| {
        let path = e.path().to_string();
        DecodeError(if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) })
    })
}

/// What the read phase found: violations (each fixable or not under this policy) and plain settings.
struct Findings<'p> {
    policy: &'p Policy,
    /// The policy's, or the namespace's mode (`/mutate/warn`).
    on_violation: OnViolation,
    violations: Vec<(Violation, Option<(Fix, String)>)>,
}

impl<'p> Findings<'p> {
    fn new(policy: &'p Policy) -> Self {
        Findings { policy, on_violation: policy.on_violation, violations: Vec::new() }
    }

    fn violation(&mut self, rule: Rule, scope: &str, field: impl Into<String>, problem: impl Into<String>, fix: Option<(Fix, String)>) {
        let violation = Violation { rule, scope: scope.to_owned(), field: field.into(), problem: problem.into() };
        self.violations.push((violation, fix));
    }

    /// An insecure setting: fixed only when the policy says `onViolation: override`.
    fn insecure(&mut self, rule: Rule, scope: &str, field: &str, problem: impl Into<String>, fix: Fix, fixed: impl Into<String>) {
        let fix = (self.on_violation == OnViolation::Override).then(|| (fix, fixed.into()));
        self.violation(rule, scope, field, problem, fix);
    }

    /// A value above the policy's maximum: fixed only when the policy says `onExceed: clamp`.
    fn excessive(&mut self, rule: Rule, scope: &str, field: &str, problem: impl Into<String>, fix: Fix, fixed: impl Into<String>) {
        let fix = (self.policy.resources.on_exceed == OnExceed::Clamp).then(|| (fix, fixed.into()));
        self.violation(rule, scope, field, problem, fix);
    }

    /// Never fixable: the request itself is wrong or hostile.
    fn refused(&mut self, rule: Rule, scope: &str, field: impl Into<String>, problem: impl Into<String>) {
        self.violation(rule, scope, field, problem, None);
    }

    /// The denial, when anything found cannot be fixed under this policy.
    fn denial(&self) -> Option<Denial> {
        self.violations
            .iter()
            .any(|(_, fix)| fix.is_none())
            .then(|| Denial { violations: self.violations.iter().map(|(v, _)| v.clone()).collect() })
    }

    /// Apply every fix (all are fixable once [`Findings::denial`] said none).
    fn apply(self, editor: &mut Editor) {
        for (violation, fix) in self.violations {
            let Some((fix, fixed)) = fix else { continue };
            match fix {
                Fix::Set(path, value) => {
                    editor.builder.set(&path, value);
                }
                Fix::Remove(path) => {
                    editor.builder.remove(&path);
                }
            }
            editor.change(&violation.scope, format!("{fixed} (was: {} {}) [{}]", violation.field, violation.problem, violation.rule));
        }
    }
}

/// Writes through the patch builder and records each change.
struct Editor<'d> {
    builder: PatchBuilder<'d>,
    changes: Vec<Change>,
}

impl Editor<'_> {
    fn change(&mut self, scope: &str, action: impl Into<String>) {
        self.changes.push(Change { scope: scope.to_owned(), action: action.into() });
    }

    /// Set `rel` under `base` (a field path for the message) when missing.
    fn default(&mut self, scope: &str, base: &Path, rel: &[&'static str], value: Value) {
        let path = join(base, rel.iter().map(|s| Seg::from(*s)));
        let shown = compact(&value);
        if self.builder.set_if_absent(&path, value) {
            self.change(scope, format!("set {}={shown}", rel.join(".")));
        }
    }

    /// Set `rel` under `base` to `value`, whatever was there.
    fn force(&mut self, scope: &str, base: &Path, rel: &[&'static str], value: Value) {
        let path = join(base, rel.iter().map(|s| Seg::from(*s)));
        let shown = compact(&value);
        if self.builder.set(&path, value) {
            self.change(scope, format!("set {}={shown}", rel.join(".")));
        }
    }
}

fn compact(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Serialize)]
struct Status<'a> {
    version: &'a str,
    policy: &'a str,
    proxy: &'a str,
    image: &'a str,
    containers: Vec<&'a str>,
}

/// The ids from the pod's annotations that reach the proxy and the labels.
pub(crate) struct PodIds {
    analysis: Option<String>,
    project: Option<String>,
    credentials_secret: String,
    /// Secrets no container but the proxy may touch: every name with this prefix (the policy's
    /// Secret and any the pod may name have it).
    secret_prefix: String,
    /// The names `proxy.egressHostnames` renders for the pod (its `hostAliases` entry, the proxy's env).
    egress_hostnames: Vec<String>,
}

/// tollgate's containers as a policy renders them for a pod without ids (kept with the policy).
#[derive(Debug, Clone)]
pub struct RenderedContainers {
    sidecar: sidecar::Template,
    lock_check: sidecar::Template,
}

impl PodIds {
    /// A pod that names no analysis, project or Secret of its own.
    fn none(policy: &Policy) -> Self {
        PodIds {
            analysis: None,
            project: None,
            credentials_secret: policy.proxy.credentials_secret.clone(),
            secret_prefix: policy.proxy.credentials_secret_prefix.clone(),
            egress_hostnames: Vec::new(),
        }
    }

    fn is_protected(&self, secret: &str) -> bool {
        secret.starts_with(&self.secret_prefix) || secret == self.credentials_secret
    }
}

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
/// [`record`].
pub fn harden_with(
    policy: &Policy,
    on_violation: OnViolation,
    pod: &mut Value,
    requester: Option<Requester>,
    keys: &RecordKeys,
) -> Result<Outcome, DecodeError> {
    // Size first: everything after is linear in the pod, and the bounds keep that small.
    if let Some(denial) = checks::bounds(policy, pod) {
        return Ok(Outcome::Denied(denial));
    }
    let typed = decode(pod)?;
    let annotations: BTreeMap<String, String> = typed.metadata.annotations.unwrap_or_default();
    let mut notes = Vec::new();
    if annotations.get(ANNOTATION_INJECT).map(String::as_str) == Some("false") {
        if policy.allow_opt_out {
            return Ok(Outcome::Skipped { reason: SkipReason::OptedOut });
        }
        notes.push(format!("annotation {ANNOTATION_INJECT}=false ignored: the policy does not allow opting out"));
    }

    let mut findings = Findings { on_violation, ..Findings::new(policy) };
    let mut ids = checks::pod_ids(policy, &annotations, &mut findings);
    checks::identity(policy, &annotations, requester, "pod", "metadata.annotations", &mut findings);
    ids.egress_hostnames = egress::hostnames(policy, pod, &mut findings, &mut notes);
    let own_alias = egress::host_alias(&ids.egress_hostnames);

    let mut editor = Editor { builder: PatchBuilder::new(pod), changes: Vec::new() };
    let render = || RenderedContainers {
        sidecar: sidecar::Template::new(sidecar::render(policy, &PodIds::none(policy))),
        lock_check: sidecar::Template::new(sidecar::render_lock_check(policy)),
    };
    let made;
    let rendered = match policy.derived(render) {
        Some(kept) => kept,
        None => {
            made = render();
            &made
        }
    };
    let sidecar = rendered.sidecar.rendering(Some(&ids));
    let lock_check = (policy.proxy.egress_lock == EgressLock::Required).then(|| rendered.lock_check.rendering(None));
    let placement = sidecar::place(policy, editor.builder.doc(), sidecar, lock_check);

    // Read phase: find everything wrong before changing anything.
    let containers = containers(editor.builder.doc());
    checks::pod_level(editor.builder.doc(), &annotations, own_alias.as_ref(), &mut findings);
    let carrying = checks::credential_volumes(editor.builder.doc(), &ids);
    for container in &containers {
        checks::container(editor.builder.doc(), container, &ids, &carrying, &mut findings);
    }
    if !containers.iter().any(|c| c.kind == Kind::App) {
        no_container_of_its_own(policy, editor.builder.doc(), &mut findings);
    }
    let resource_defaults = resources::plan(policy, editor.builder.doc(), &containers, &mut findings);
    resources::pod_level(policy, editor.builder.doc(), &mut findings);
    if let Some(note) = resources::lifetime(policy, editor.builder.doc(), &mut findings) {
        notes.push(note);
    }

    if let Some(denial) = findings.denial() {
        // Warn: let the pod through as it came, not hardened (its settings and tollgate's would clash, e.g.
        // runAsNonRoot beside runAsUser 0), if every violation is one that concerns the pod alone.
        if on_violation == OnViolation::Warn && denial.violations.iter().all(|v| v.rule.warnable()) {
            return Ok(Outcome::Warned(denial));
        }
        return Ok(Outcome::Denied(denial));
    }

    // Write phase.
    findings.apply(&mut editor);
    harden_pod_level(policy, &mut editor);
    egress::write_host_alias(own_alias.as_ref(), &mut editor);
    egress::write_sysctl(policy, &mut editor);
    for container in &containers {
        harden_container(policy, container, &mut editor);
    }
    for (scope, path, field, value) in resource_defaults {
        let shown = compact(&value);
        if editor.builder.set(&path, value) {
            editor.change(&scope, format!("set {field}={shown}"));
        }
    }
    ensure_volumes(policy, &ids, &containers, &mut editor);
    if !policy.security.allow_service_account_token {
        remove_service_account_token(&containers, &mut editor);
    }
    // Index-based edits are done: now stale containers of tollgate's can go and ours come in.
    sidecar::remove_stale(policy, &placement.stale, &mut editor);
    sidecar::insert(policy, placement.missing, &mut editor);
    default_container(policy, &containers, &mut editor);
    let status = label_and_record(policy, &ids, &containers, &mut editor);
    seal_record(keys, &annotations, status, &mut editor);
    let Editor { builder, changes } = editor;
    Ok(Outcome::Hardened(Hardened { patch: builder.into_patch(), changes, notes }))
}

/// The changes annotation's value: `summary` (a record already written, or empty) with `changes` after it, one
/// per line, at most [`MAX_CHANGES_ANNOTATION`] bytes.
fn append_summary(mut summary: String, changes: &[Change]) -> String {
    for (shown, change) in changes.iter().enumerate() {
        if !summary.is_empty() {
            summary.push('\n');
        }
        let line = change.to_string();
        if summary.len() + line.len() > MAX_CHANGES_ANNOTATION - 64 {
            summary.push_str(&format!("... and {} more", changes.len() - shown));
            return summary;
        }
        summary.push_str(&line);
    }
    summary
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
    let_through(policy, pod, reason, false).0
}

/// The patch for a pod let through as it came in warn mode, and what it changes: its status, as for a skipped
/// pod, and — under `security.allowServiceAccountToken: false` — the ServiceAccount token volume the API
/// server's ServiceAccount plugin added, with its mounts, removed: a pod on trial holds no API credential
/// either. (A token volume of the pod's own is a violation no mode lets through.)
pub fn warned_status(policy: &Policy, pod: &Value) -> (Patch, Vec<Change>) {
    let_through(policy, pod, "warned", !policy.security.allow_service_account_token)
}

/// A pod tollgate did not harden carries nothing that says tollgate did: no `tollgate.dev/` label, no record of
/// changes, no egress lock; only the status that says why it was let through.
fn let_through(policy: &Policy, pod: &Value, reason: &str, remove_token: bool) -> (Patch, Vec<Change>) {
    #[derive(Serialize)]
    struct Skipped<'a> {
        version: &'a str,
        policy: &'a str,
        skipped: &'a str,
    }
    let status = serde_json::to_string(&Skipped { version: VERSION, policy: policy.digest(), skipped: reason }).expect("status serializes");
    let mut copy = pod.clone();
    let mut e = Editor { builder: PatchBuilder::new(&mut copy), changes: Vec::new() };
    if !matches!(e.builder.get(&path!["metadata"]), Some(Value::Object(_))) {
        return (Patch::default(), Vec::new());
    }
    e.builder.set(&path!["metadata", "annotations", ANNOTATION_STATUS], json!(status));
    // A pod tollgate did not harden is never locked on anyone's say but tollgate's, nor says tollgate changed it.
    for key in [ANNOTATION_EGRESS_LOCK, ANNOTATION_CHANGES] {
        let path = path!["metadata", "annotations", key];
        if e.builder.get(&path).is_some() {
            e.builder.remove(&path);
        }
    }
    let labels: Vec<String> = match e.builder.get(&path!["metadata", "labels"]) {
        Some(Value::Object(labels)) => labels.keys().filter(|k| k.starts_with(OWNED_PREFIX)).cloned().collect(),
        _ => Vec::new(),
    };
    for key in labels {
        e.builder.remove(&path!["metadata", "labels", key]);
    }
    if remove_token {
        let containers = containers(e.builder.doc());
        remove_service_account_token(&containers, &mut e);
    }
    (e.builder.into_patch(), e.changes)
}

fn harden_pod_level(policy: &Policy, e: &mut Editor) {
    let security = &policy.security;
    let spec = path!["spec"];
    e.default("pod", &spec, &["securityContext", "runAsNonRoot"], json!(true));
    e.default("pod", &spec, &["securityContext", "runAsUser"], json!(security.run_as_user));
    e.default("pod", &spec, &["securityContext", "runAsGroup"], json!(security.run_as_group));
    e.default("pod", &spec, &["securityContext", "fsGroup"], json!(security.fs_group));
    e.default("pod", &spec, &["securityContext", "seccompProfile"], json!({"type": "RuntimeDefault"}));
    if !security.allow_service_account_token {
        e.force("pod", &spec, &["automountServiceAccountToken"], json!(false));
    }
    if !security.allow_service_links {
        e.force("pod", &spec, &["enableServiceLinks"], json!(false));
    }
    let restart_policy = e.builder.get(&path!["spec", "restartPolicy"]).and_then(Value::as_str).unwrap_or("Always");
    if matches!(restart_policy, "Never" | "OnFailure") {
        e.default("pod", &spec, &["activeDeadlineSeconds"], json!(policy.lifetime.active_deadline_seconds));
    }
}

fn harden_container(policy: &Policy, c: &ContainerRef, e: &mut Editor) {
    let sc = join(&c.path, [Seg::from("securityContext")]);
    e.default(&c.scope, &c.path, &["securityContext", "allowPrivilegeEscalation"], json!(false));
    let drop_path = join(&sc, path!["capabilities", "drop"]);
    match e.builder.get(&drop_path) {
        Some(Value::Array(drop)) if drop.iter().any(|cap| cap == "ALL") => {}
        Some(Value::Array(_)) => {
            e.builder.append(&drop_path, json!("ALL"));
            e.change(&c.scope, "added ALL to securityContext.capabilities.drop");
        }
        _ => e.force(&c.scope, &c.path, &["securityContext", "capabilities", "drop"], json!(["ALL"])),
    }
    if policy.security.read_only_root_filesystem {
        e.force(&c.scope, &c.path, &["securityContext", "readOnlyRootFilesystem"], json!(true));
    }
    // Every container but tollgate's, ephemeral ones too: none holds what the placeholders stand for.
    egress::write_placeholders(policy, c, e);
    if c.kind == Kind::Ephemeral {
        return;
    }

    let egress_url = format!("http://127.0.0.1:{}", policy.proxy.egress_port);
    let env_path = join(&c.path, [Seg::from("env")]);
    let wanted = json!({"name": ENV_EGRESS_URL, "value": egress_url});
    let existing = match e.builder.get(&env_path) {
        // The last definition of a name wins in the container, so that is the one to own.
        Some(Value::Array(env)) => env.iter().rposition(|var| var.get("name").and_then(Value::as_str) == Some(ENV_EGRESS_URL)),
        _ => None,
    };
    match existing {
        Some(index) => {
            if e.builder.set(&join(&env_path, [Seg::Index(index)]), wanted) {
                e.change(&c.scope, format!("set env {ENV_EGRESS_URL}={egress_url}"));
            }
        }
        None => {
            e.builder.append(&env_path, wanted);
            e.change(&c.scope, format!("set env {ENV_EGRESS_URL}={egress_url}"));
        }
    }

    if policy.security.read_only_root_filesystem {
        let mounts_path = join(&c.path, [Seg::from("volumeMounts")]);
        let has_tmp = match e.builder.get(&mounts_path) {
            Some(Value::Array(mounts)) => {
                mounts.iter().any(|m| matches!(m.get("mountPath").and_then(Value::as_str), Some("/tmp" | "/tmp/")))
            }
            _ => false,
        };
        if !has_tmp {
            e.builder.append(&mounts_path, json!({"name": VOLUME_TMP, "mountPath": "/tmp"}));
            e.change(&c.scope, format!("mounted emptyDir {VOLUME_TMP} at /tmp"));
        }
    }
}

fn ensure_volumes(policy: &Policy, ids: &PodIds, containers: &[ContainerRef], e: &mut Editor) {
    let mounts_tmp = containers.iter().any(|c| {
        matches!(e.builder.get(&join(&c.path, [Seg::from("volumeMounts")])), Some(Value::Array(mounts))
            if mounts.iter().any(|m| m.get("name").and_then(Value::as_str) == Some(VOLUME_TMP)))
    });
    let mut wanted = Vec::new();
    if mounts_tmp {
        wanted.push(json!({"name": VOLUME_TMP, "emptyDir": {"sizeLimit": policy.security.tmp_size_limit.text}}));
    }
    wanted.push(json!({"name": VOLUME_CONFIG, "configMap": {"name": policy.proxy.config_map, "defaultMode": 0o444}}));
    wanted.push(json!({"name": VOLUME_CREDENTIALS, "secret": {"secretName": ids.credentials_secret, "defaultMode": 0o440}}));

    let volumes = path!["spec", "volumes"];
    for volume in wanted {
        let name = volume["name"].as_str().unwrap_or_default().to_owned();
        let index = match e.builder.get(&volumes) {
            Some(Value::Array(items)) => items.iter().position(|v| v.get("name").and_then(Value::as_str) == Some(&name)),
            _ => None,
        };
        let kind = if name == VOLUME_TMP {
            "emptyDir"
        } else if name == VOLUME_CONFIG {
            "configMap"
        } else {
            "secret"
        };
        match index {
            Some(index) => {
                if e.builder.set(&join(&volumes, [Seg::Index(index)]), volume) {
                    e.change("pod", format!("replaced volume {name:?} with tollgate's {kind} volume"));
                }
            }
            None => {
                e.builder.append(&volumes, volume);
                e.change("pod", format!("added {kind} volume {name:?}"));
            }
        }
    }
}

/// The ServiceAccount admission plugin runs before webhooks and has already added the token volume
/// (`kube-api-access-*`) and its mounts; `automountServiceAccountToken: false` alone would not undo that.
fn remove_service_account_token(containers: &[ContainerRef], e: &mut Editor) {
    let volumes_path = path!["spec", "volumes"];
    let doomed: Vec<(usize, String)> = match e.builder.get(&volumes_path) {
        Some(Value::Array(volumes)) => volumes
            .iter()
            .enumerate()
            .filter(|(_, v)| checks::is_api_access_volume(v))
            .filter_map(|(i, v)| Some((i, v.get("name").and_then(Value::as_str)?.to_owned())))
            .collect(),
        _ => return,
    };
    if doomed.is_empty() {
        return;
    }
    // A set, so that many such volumes and mounts stay linear.
    let names: std::collections::HashSet<&str> = doomed.iter().map(|(_, name)| name.as_str()).collect();
    for c in containers {
        let mounts_path = join(&c.path, [Seg::from("volumeMounts")]);
        let Some(Value::Array(mounts)) = e.builder.get(&mounts_path) else { continue };
        let indices: Vec<usize> = mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| m.get("name").and_then(Value::as_str).is_some_and(|name| names.contains(name)))
            .map(|(i, _)| i)
            .collect();
        for index in indices.into_iter().rev() {
            e.builder.remove(&join(&mounts_path, [Seg::Index(index)]));
            e.change(&c.scope, "removed the service account token mount");
        }
    }
    for (index, name) in doomed.iter().rev() {
        e.builder.remove(&join(&volumes_path, [Seg::Index(*index)]));
        e.change("pod", format!("removed the service account token volume {name:?}"));
    }
}

/// tollgate's labels and annotations; returns the status annotation's text without its seal (written by
/// [`seal_record`] once the list of changes is complete).
fn label_and_record(policy: &Policy, ids: &PodIds, containers: &[ContainerRef], e: &mut Editor) -> String {
    let metadata = path!["metadata"];
    // tollgate.dev/ labels say what tollgate decided (NetworkPolicies and people select on them): a pod
    // may not bring its own.
    let ours = |key: &str| {
        key == LABEL_INJECTED || (key == LABEL_ANALYSIS_ID && ids.analysis.is_some()) || (key == LABEL_PROJECT_ID && ids.project.is_some())
    };
    let foreign: Vec<String> = match e.builder.get(&path!["metadata", "labels"]) {
        Some(Value::Object(labels)) => labels.keys().filter(|k| k.starts_with(OWNED_PREFIX) && !ours(k)).cloned().collect(),
        _ => Vec::new(),
    };
    for key in foreign {
        e.builder.remove(&path!["metadata", "labels", key.clone()]);
        e.change("pod", format!("removed label {key}: {OWNED_PREFIX} labels are set by tollgate alone"));
    }
    e.force("pod", &metadata, &["labels", LABEL_INJECTED], json!("true"));
    if let Some(id) = &ids.analysis {
        e.force("pod", &metadata, &["labels", LABEL_ANALYSIS_ID], json!(crate::labels::label_value_for(id)));
    }
    if let Some(id) = &ids.project {
        e.force("pod", &metadata, &["labels", LABEL_PROJECT_ID], json!(crate::labels::label_value_for(id)));
    }
    // The egress lock's annotation is the tollgate-cni plugin's only instruction: tollgate's alone to write.
    let lock = path!["metadata", "annotations", ANNOTATION_EGRESS_LOCK];
    match policy.proxy.egress_lock {
        EgressLock::Required => {
            let value = egress_lock_annotation(policy);
            if e.builder.set(&lock, json!(value)) {
                e.change("pod", format!("recorded annotation {ANNOTATION_EGRESS_LOCK}={value}"));
            }
        }
        EgressLock::Off => {
            if e.builder.get(&lock).is_some() {
                e.builder.remove(&lock);
                e.change(
                    "pod",
                    format!(
                        "removed annotation {ANNOTATION_EGRESS_LOCK}: the policy does not ask for the egress lock (proxy.egressLock: off)"
                    ),
                );
            }
        }
    }
    let status = Status {
        version: VERSION,
        policy: policy.digest(),
        proxy: match policy.proxy.mode {
            crate::policy::ProxyMode::Native => "native",
            crate::policy::ProxyMode::Classic => "classic",
        },
        image: &policy.proxy.image,
        containers: containers.iter().map(|c| c.name.as_str()).collect(),
    };
    // Under tollgate's prefix, every annotation but the creator's inputs is tollgate's: one the pod brings is not
    // (the status and the record are written below, the lock above).
    let foreign: Vec<String> = match e.builder.get(&path!["metadata", "annotations"]) {
        Some(Value::Object(annotations)) => annotations
            .keys()
            .filter(|k| {
                k.starts_with(OWNED_PREFIX)
                    && !INPUT_ANNOTATIONS.contains(&k.as_str())
                    && ![ANNOTATION_STATUS, ANNOTATION_CHANGES, ANNOTATION_EGRESS_LOCK].contains(&k.as_str())
            })
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    for key in foreign {
        e.builder.remove(&path!["metadata", "annotations", key.clone()]);
        e.change("pod", format!("removed annotation {key}: {OWNED_PREFIX} annotations are tollgate's, but for the pod's own inputs"));
    }
    serde_json::to_string(&status).expect("status serializes")
}

/// The record of this pass's changes, `tollgate.dev/changes`, and the status annotation that seals it (see
/// [`record`]). `incoming`: the pod's annotations as it came. A record the pod came with is kept (and this
/// pass's changes appended) only when its seal is tollgate's, for this pod and the status beside it: a
/// reinvocation's first pass. Any other is not tollgate's record, and is replaced.
fn seal_record(keys: &RecordKeys, incoming: &BTreeMap<String, String>, status: String, e: &mut Editor) {
    let (namespace, name) = record::pod_identity(e.builder.doc());
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    let came_with = incoming.get(ANNOTATION_CHANGES);
    let (status_before, seal) = match incoming.get(ANNOTATION_STATUS) {
        Some(text) => record::split_status(text).unwrap_or_else(|| (text.clone(), String::new())),
        None => (String::new(), String::new()),
    };
    let sealed = !seal.is_empty() && keys.verify(&namespace, &name, came_with.map_or("", String::as_str), &status_before, &seal);
    if came_with.is_some() && !sealed {
        e.change(
            "pod",
            format!("removed annotation {ANNOTATION_CHANGES}: the pod came with it, and it is not a record tollgate wrote (no seal of tollgate's in {ANNOTATION_STATUS})"),
        );
    }
    if status != status_before || !sealed {
        e.change("pod", format!("recorded annotation {ANNOTATION_STATUS}"));
    }
    let prior = came_with.filter(|_| sealed);
    let record = match (prior, e.changes.is_empty()) {
        (Some(prior), true) => Some(prior.clone()),
        (prior, false) => Some(append_summary(prior.cloned().unwrap_or_default(), &e.changes)),
        (None, true) => None,
    };
    if let Some(record) = &record {
        e.builder.set(&path!["metadata", "annotations", ANNOTATION_CHANGES], json!(record));
    }
    let seal = keys.seal(&namespace, &name, record.as_deref().unwrap_or(""), &status);
    let mut sealed_status = status;
    sealed_status.pop();
    sealed_status.push_str(&format!(",\"seal\":\"{seal}\"}}"));
    e.builder.set(&path!["metadata", "annotations", ANNOTATION_STATUS], json!(sealed_status));
}

/// A pod with no container of its own (every one named like tollgate's, which are replaced): in classic mode
/// the proxy would be its only container, so `kubectl exec`, `attach` and `logs` without `-c` would land in
/// the holder of the credentials; in native mode it would have none.
fn no_container_of_its_own(policy: &Policy, doc: &Value, f: &mut Findings) {
    let names: Vec<&str> = match crate::patch::get(doc, &path!["spec", "containers"]) {
        Some(Value::Array(items)) => items.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).collect(),
        _ => Vec::new(),
    };
    let after = match policy.proxy.mode {
        crate::policy::ProxyMode::Classic => {
            format!("only {SIDECAR_NAME}, which would be the default container of kubectl exec, attach and logs")
        }
        crate::policy::ProxyMode::Native => "none".to_owned(),
    };
    f.refused(
        Rule::TollgateOwned,
        "pod",
        "spec.containers",
        format!(
            "has no container of the pod's own ({names:?}: names of tollgate's containers, which tollgate replaces with its own), leaving {after}"
        ),
    );
}

/// kubectl's default container (`exec`, `attach`, `logs` without `-c`) is never tollgate's: in classic mode,
/// where the proxy is the first container, the annotation names the pod's first container of its own unless it
/// names another of them; in either mode an annotation naming tollgate's container is replaced.
fn default_container(policy: &Policy, containers: &[ContainerRef], e: &mut Editor) {
    let Some(first) = containers.iter().find(|c| c.kind == Kind::App) else { return };
    let path = path!["metadata", "annotations", ANNOTATION_DEFAULT_CONTAINER];
    let current = e.builder.get(&path).and_then(Value::as_str);
    let classic = policy.proxy.mode == crate::policy::ProxyMode::Classic;
    let own = |name: &str| containers.iter().any(|c| c.kind != Kind::Ephemeral && c.name == name);
    let replace = match current {
        Some(name) if TOLLGATE_CONTAINERS.contains(&name) => true,
        Some(name) => classic && !own(name),
        None => classic,
    };
    if replace {
        let name = first.name.clone();
        e.builder.set(&path, json!(name));
        e.change(
            "pod",
            format!("set annotation {ANNOTATION_DEFAULT_CONTAINER}={name}: kubectl exec, attach and logs without -c go to the pod's own container, never to {SIDECAR_NAME}"),
        );
    }
}

#[cfg(test)]
mod changes_annotation {
    use super::*;

    #[test]
    fn lists_every_change_and_stays_within_its_bound() {
        let change = |i: usize| Change { scope: format!("container \"c{i}\""), action: "set securityContext.runAsNonRoot=true".into() };
        assert_eq!(
            append_summary(String::new(), &[change(1), change(2)]),
            "container \"c1\": set securityContext.runAsNonRoot=true\ncontainer \"c2\": set securityContext.runAsNonRoot=true"
        );
        let many: Vec<Change> = (0..2000).map(change).collect();
        let summary = append_summary(String::new(), &many);
        assert!(summary.len() <= MAX_CHANGES_ANNOTATION, "{}", summary.len());
        let shown = summary.lines().count() - 1;
        assert_eq!(summary.lines().last().unwrap(), format!("... and {} more", 2000 - shown));
    }
}
