//! Stage 1 of hardening, [`check`]: what is wrong with the pod, decided before anything is changed. Every
//! insecure field of the pod and its containers, the ids its annotations give it, and (from resources.rs and
//! egress.rs) its resources, lifetime and the names tollgate gives its proxy; the pod is denied, warned about or
//! skipped here, or goes on to be planned (plan.rs) with the fixes the policy makes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::findings::{Findings, Fix, Fixed};
use super::pod::{ContainerRef, Kind, PodIds, containers, decode};
use super::resources::{self, Setting};
use super::rules::{ALLOWED_SELINUX_TYPES, ALLOWED_VOLUME_TYPES, SAFE_SYSCTLS, is_safe_sysctl, kubernetes_minor};
use super::{
    ANNOTATION_ANALYSIS_ID, ANNOTATION_CREDENTIALS_SECRET, ANNOTATION_INJECT, ANNOTATION_PROJECT_ID, API_ACCESS_VOLUME_PREFIX, DecodeError,
    Denial, ENV_EGRESS_URL, IDENTITY_ANNOTATIONS, Outcome, Requester, Rule, SIDECAR_NAME, SkipReason, TOLLGATE_CONTAINERS, VOLUME_CONFIG,
    VOLUME_CREDENTIALS, VOLUME_TMP, Violation, egress,
};
use crate::patch::{Path, Seg, get, join};
use crate::path;
use crate::policy::{EgressLock, OnViolation, Policy, ProxyMode, check_object_name};

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

/// What the checks found in a pod that is to be hardened: what the later stages need.
pub(super) struct Checked {
    /// The pod's annotations as it came.
    pub(super) annotations: BTreeMap<String, String>,
    pub(super) ids: PodIds,
    /// Remarks that are not changes (an opt-out not honoured, a hostname not rendered, an unbounded lifetime).
    pub(super) notes: Vec<String>,
    /// tollgate's own `hostAliases` entry for this pod (`proxy.egressHostnames`), if it gets one.
    pub(super) own_alias: Option<Value>,
    pub(super) containers: Vec<ContainerRef>,
    /// The violations the policy fixes, in the order found.
    pub(super) fixes: Vec<Fixed>,
    /// The resource requests and limits to set where the pod has none.
    pub(super) resource_defaults: Vec<Setting>,
}

/// The checks' verdict: harden the pod, or the outcome already (a denial, a warning, a skip).
pub(super) enum Verdict {
    Harden(Box<Checked>),
    Done(Outcome),
}

/// Every check of `pod` for a creation by `requester`, under `policy` with `on_violation` (the policy's, or the
/// namespace's mode). Reads only: the pod is not changed.
pub(super) fn check(policy: &Policy, on_violation: OnViolation, pod: &Value, requester: Option<Requester>) -> Result<Verdict, DecodeError> {
    // Size first: everything after is linear in the pod, and the bounds keep that small.
    if let Some(denial) = bounds(policy, pod) {
        return Ok(Verdict::Done(Outcome::Denied(denial)));
    }
    let typed = decode(pod)?;
    let annotations: BTreeMap<String, String> = typed.metadata.annotations.unwrap_or_default();
    let mut notes = Vec::new();
    if annotations.get(ANNOTATION_INJECT).map(String::as_str) == Some("false") {
        if policy.allow_opt_out {
            return Ok(Verdict::Done(Outcome::Skipped { reason: SkipReason::OptedOut }));
        }
        notes.push(format!("annotation {ANNOTATION_INJECT}=false ignored: the policy does not allow opting out"));
    }

    let mut f = Findings::in_mode(policy, on_violation);
    let mut ids = pod_ids(policy, &annotations, &mut f);
    identity(policy, &annotations, requester, "pod", "metadata.annotations", &mut f);
    ids.egress_hostnames = egress::hostnames(policy, pod, &mut f, &mut notes);
    let own_alias = egress::host_alias(&ids.egress_hostnames);
    let containers = containers(pod);
    pod_level(pod, &annotations, own_alias.as_ref(), &mut f);
    let carrying = credential_volumes(pod, &ids);
    for c in &containers {
        container(pod, c, &ids, &carrying, &mut f);
    }
    if !containers.iter().any(|c| c.kind == Kind::App) {
        no_container_of_its_own(policy, pod, &mut f);
    }
    let (resource_defaults, lifetime) = resources::check(policy, pod, &containers, &mut f);
    notes.extend(lifetime);

    if let Some(denial) = f.denial() {
        // Warn: let the pod through as it came, not hardened (its settings and tollgate's would clash, e.g.
        // runAsNonRoot beside runAsUser 0), if every violation is one that concerns the pod alone.
        if on_violation == OnViolation::Warn && denial.violations.iter().all(|v| v.rule.warnable()) {
            return Ok(Verdict::Done(Outcome::Warned(denial)));
        }
        return Ok(Verdict::Done(Outcome::Denied(denial)));
    }
    Ok(Verdict::Harden(Box::new(Checked { annotations, ids, notes, own_alias, containers, fixes: f.into_fixes(), resource_defaults })))
}

/// Ids reach URL paths in the proxy's routes: only characters that cannot change a path's meaning.
fn check_id(id: &str) -> Result<(), String> {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '+' | '=' | '~');
    if id.is_empty() || id.len() > 253 {
        return Err("must be 1 to 253 characters".into());
    }
    if id == "." || id == ".." {
        return Err("must not be a dot segment".into());
    }
    if let Some(bad) = id.chars().find(|c| !safe(*c)) {
        return Err(format!("contains {bad:?}; allowed are letters, digits and - _ . : @ + = ~"));
    }
    Ok(())
}

pub(super) fn pod_ids(policy: &Policy, annotations: &BTreeMap<String, String>, f: &mut Findings) -> PodIds {
    let mut id = |key: &str| {
        let value = annotations.get(key)?;
        match check_id(value) {
            Ok(()) => Some(value.clone()),
            Err(why) => {
                f.refused(Rule::InvalidAnnotation, "pod", format!("metadata.annotations[{key}]"), format!("{value:?} {why}"));
                None
            }
        }
    };
    let analysis = id(ANNOTATION_ANALYSIS_ID);
    let project = id(ANNOTATION_PROJECT_ID);
    let secret = annotations.get(ANNOTATION_CREDENTIALS_SECRET).map(String::as_str);
    let prefix = &policy.proxy.credentials_secret_prefix;
    let field = format!("metadata.annotations[{ANNOTATION_CREDENTIALS_SECRET}]");
    match secret.map(|name| (name, check_object_name(name))) {
        Some((_, Err(why))) => f.refused(Rule::InvalidAnnotation, "pod", field, why),
        // Only a credentials Secret: anything else could be a Secret the pod has no business with.
        Some((name, Ok(()))) if !name.starts_with(prefix.as_str()) => f.refused(
            Rule::InvalidAnnotation,
            "pod",
            field,
            format!(
                "{name:?} is not a proxy credentials Secret (its name must start with {prefix:?}, policy proxy.credentialsSecretPrefix)"
            ),
        ),
        _ => {}
    }
    let credentials_secret = match secret {
        Some(name) => name.to_owned(),
        None => policy_secret(policy, analysis.as_deref(), annotations.contains_key(ANNOTATION_ANALYSIS_ID), f),
    };
    PodIds { analysis, project, credentials_secret, secret_prefix: prefix.clone(), egress_hostnames: Vec::new() }
}

/// The policy's credentials Secret for a pod of `analysis` (`proxy.credentialsSecret`, `{analysis_id}` filled
/// in). A per-analysis Secret needs an analysis id that makes a valid name; without one, the pod is refused
/// (`has_annotation`: it carries one, already refused as invalid) and the template stands in.
fn policy_secret(policy: &Policy, analysis: Option<&str>, has_annotation: bool, f: &mut Findings) -> String {
    let template = &policy.proxy.credentials_secret;
    let field = format!("metadata.annotations[{ANNOTATION_ANALYSIS_ID}]");
    match policy.credentials_secret_for(analysis) {
        Some(name) => {
            if let (Some(id), Err(_)) = (analysis, check_object_name(&name)) {
                f.refused(
                    Rule::InvalidAnnotation,
                    "pod",
                    field,
                    format!(
                        "{id:?} would name the pod's credentials Secret {name:?} (policy proxy.credentialsSecret: {template:?}), which is not a valid object name (lowercase letters, digits, '-' and '.', at most 253, alphanumeric at both ends)"
                    ),
                );
            }
            name
        }
        None => {
            if !has_annotation {
                f.refused(
                    Rule::AnalysisIdRequired,
                    "pod",
                    field,
                    format!(
                        "is missing: the policy gives every analysis its own credentials Secret (proxy.credentialsSecret: {template:?}), and a pod without an analysis id has none; a trusted user (identity.trustedUsers, identity.trustedGroups) sets it on the pod or its workload's template"
                    ),
                );
            }
            template.clone()
        }
    }
}

/// Identity annotations (`IDENTITY_ANNOTATIONS` in `annotations`) are set only by trusted users, or by the
/// controllers that copy them from templates a trusted user wrote. `field` is where the annotations
/// sit (`metadata.annotations`, `spec.template.metadata.annotations`).
pub(super) fn identity(
    policy: &Policy,
    annotations: &BTreeMap<String, String>,
    requester: Option<Requester>,
    scope: &str,
    field: &str,
    f: &mut Findings,
) {
    let Some(requester) = requester else { return };
    let identity = &policy.identity;
    if identity.trusts(requester.username, requester.groups) || identity.is_controller(requester.username) {
        return;
    }
    for key in IDENTITY_ANNOTATIONS {
        if annotations.contains_key(key) {
            f.refused(Rule::UntrustedIdentity, scope, format!("{field}[{key}]"), untrusted(policy, requester));
        }
    }
}

/// Why `requester` may not set identity annotations, and who may.
pub(super) fn untrusted(policy: &Policy, requester: Requester) -> String {
    format!("may only be set by {}; {:?} is neither", trusted(policy), requester.username)
}

/// Who the policy trusts, for a message: `trusted users (a, b) or members of trusted groups (c) (policy …)`.
pub(super) fn trusted(policy: &Policy) -> String {
    let identity = &policy.identity;
    let list = |names: &[String]| if names.is_empty() { "none".to_owned() } else { names.join(", ") };
    format!(
        "trusted users ({}) or members of trusted groups ({}) (policy identity.trustedUsers, identity.trustedGroups)",
        list(&identity.trusted_users),
        list(&identity.trusted_groups)
    )
}

/// The pod's size against `policy.bounds`, read from the raw JSON before anything else is done with it.
pub(super) fn bounds(policy: &Policy, doc: &Value) -> Option<Denial> {
    let b = &policy.bounds;
    let mut violations = Vec::new();
    let mut too_large = |scope: String, field: String, count: usize, bound: usize, name: &str| {
        if count > bound {
            let problem = format!("has {count} entries; at most {bound} are allowed (policy bounds.{name})");
            violations.push(Violation { rule: Rule::TooLarge, scope, field, problem });
        }
    };
    // What tollgate adds itself (its containers, its volumes, the /tmp mount, the egress URL and placeholder env)
    // is not the creator's to count: else a pod at a bound is over it once hardened, and the webhook's second
    // call on the same pod (reinvocation) would deny what its first call admitted. A creator's entry of one of
    // these names is refused or replaced elsewhere.
    let own_env = |name: &str| name == ENV_EGRESS_URL || policy.proxy.placeholder_env.iter().any(|p| p.name == name);
    let own_volume = |name: &str| [VOLUME_TMP, VOLUME_CONFIG, VOLUME_CREDENTIALS].contains(&name);
    let count = |value: Option<&Value>, own: &dyn Fn(&str) -> bool| {
        value
            .and_then(Value::as_array)
            .map_or(0, |items| items.iter().filter(|item| !item.get("name").and_then(Value::as_str).is_some_and(own)).count())
    };
    let len = |value: Option<&Value>| count(value, &|_| false);
    let spec = doc.get("spec");
    let total: usize = Kind::ALL.iter().map(|k| count(spec.and_then(|s| s.get(k.field())), &|n| TOLLGATE_CONTAINERS.contains(&n))).sum();
    too_large("pod".into(), "spec.*containers".into(), total, b.containers, "containers");
    too_large("pod".into(), "spec.volumes".into(), count(spec.and_then(|s| s.get("volumes")), &own_volume), b.volumes, "volumes");
    if total <= b.containers {
        for kind in Kind::ALL {
            let Some(Value::Array(items)) = spec.and_then(|s| s.get(kind.field())) else { continue };
            for container in items {
                let name = container.get("name").and_then(Value::as_str).unwrap_or("");
                if TOLLGATE_CONTAINERS.contains(&name) {
                    continue;
                }
                let scope = format!("{} {name:?}", kind.label());
                let mounts = count(container.get("volumeMounts"), &own_volume);
                too_large(scope.clone(), "volumeMounts".into(), mounts, b.volume_mounts_per_container, "volumeMountsPerContainer");
                let env = count(container.get("env"), &own_env) + len(container.get("envFrom"));
                too_large(scope, "env and envFrom".into(), env, b.env_per_container, "envPerContainer");
            }
        }
    }
    (!violations.is_empty()).then_some(Denial { violations })
}

fn is_true(value: Option<&Value>) -> bool {
    value == Some(&Value::Bool(true))
}

/// `rel` below `node`; `null` counts as absent (as [`get`]).
fn lookup<'v>(node: Option<&'v Value>, rel: &[&str]) -> Option<&'v Value> {
    rel.iter().try_fold(node?, |node, key| node.get(*key)).filter(|v| !v.is_null())
}

fn str_at<'v>(doc: &'v Value, path: &[Seg]) -> Option<&'v str> {
    get(doc, path).and_then(Value::as_str)
}

/// Checks shared by the pod's and a container's securityContext.
fn security_context(doc: &Value, scope: &str, sc_path: &crate::patch::Path, prefix: &str, uid: i64, f: &mut Findings) {
    let at = |rel: &[&'static str]| join(sc_path, rel.iter().map(|s| Seg::from(*s)));
    // Looked up from the securityContext, found once; paths are built only for fixes.
    let sc = get(doc, sc_path);
    let look = |rel: &[&str]| lookup(sc, rel);
    let field = |rel: &str| format!("{prefix}securityContext.{rel}");
    let unconfined = |rel: &[&str]| look(rel).and_then(Value::as_str) == Some("Unconfined");
    let runtime_default = || json!({"type": "RuntimeDefault"});
    // Each found wrong, in this order: the rule, the field, what is wrong, where the fix writes, what, as shown.
    type Wrong = (Rule, &'static str, &'static str, &'static [&'static str], Value, String);
    let mut wrong: Vec<Wrong> = Vec::new();
    if look(&["runAsUser"]).and_then(Value::as_i64) == Some(0) {
        wrong.push((Rule::RunAsRoot, "runAsUser", "is 0 (root)", &["runAsUser"], json!(uid), uid.to_string()));
    }
    if look(&["runAsNonRoot"]) == Some(&Value::Bool(false)) {
        wrong.push((Rule::RunAsRoot, "runAsNonRoot", "is false", &["runAsNonRoot"], json!(true), "true".into()));
    }
    if unconfined(&["seccompProfile", "type"]) {
        wrong.push((
            Rule::Seccomp,
            "seccompProfile.type",
            "is Unconfined",
            &["seccompProfile"],
            runtime_default(),
            "RuntimeDefault".into(),
        ));
    }
    if unconfined(&["appArmorProfile", "type"]) {
        wrong.push((
            Rule::AppArmor,
            "appArmorProfile.type",
            "is Unconfined",
            &["appArmorProfile"],
            runtime_default(),
            "RuntimeDefault".into(),
        ));
    }
    for (rule, rel, problem, fix_rel, value, shown) in wrong.drain(..) {
        f.insecure(rule, scope, &field(rel), problem, Fix::Set(at(fix_rel), value), format!("set {}={shown}", field(rel)));
    }
    if let Some(problem) = look(&["seLinuxOptions"]).and_then(selinux_problem) {
        let fixed = format!("removed {}", field("seLinuxOptions"));
        f.insecure(Rule::SeLinux, scope, &field("seLinuxOptions"), problem, Fix::Remove(at(&["seLinuxOptions"])), fixed);
    }
    if is_true(look(&["windowsOptions", "hostProcess"])) {
        let (rel, fix) = ("windowsOptions.hostProcess", Fix::Set(at(&["windowsOptions", "hostProcess"]), json!(false)));
        f.insecure(Rule::HostProcess, scope, &field(rel), "is true", fix, format!("set {}=false", field(rel)));
    }
}

/// What is wrong with `seLinuxOptions`, if anything: a type outside the allowed ones, or a user or role.
fn selinux_problem(selinux: &Value) -> Option<String> {
    let selinux_type = selinux.get("type").and_then(Value::as_str).unwrap_or("");
    let sets_user_or_role = ["user", "role"].iter().any(|k| selinux.get(*k).and_then(Value::as_str).is_some_and(|v| !v.is_empty()));
    if sets_user_or_role {
        Some("sets a user or role".to_owned())
    } else if !selinux_type.is_empty() && !ALLOWED_SELINUX_TYPES.contains(&selinux_type) {
        Some(format!("has type {selinux_type:?}"))
    } else {
        None
    }
}

/// Everything wrong at the pod's level. `own_alias`: tollgate's own `hostAliases` entry for this pod
/// (`proxy.egressHostnames`), if it gets one.
pub(super) fn pod_level(doc: &Value, annotations: &BTreeMap<String, String>, own_alias: Option<&Value>, f: &mut Findings) {
    let uid = f.policy.security.run_as_user;
    operating_system(doc, f);
    host_namespaces(doc, f);
    security_context(doc, "pod", &path!["spec", "securityContext"], "spec.", uid, f);
    shared_process_namespace(doc, f);
    let run_as_user = path!["spec", "securityContext", "runAsUser"];
    proxy_identity(get(doc, &run_as_user), "pod", "spec.securityContext.runAsUser", run_as_user.clone(), f);
    dynamic_claims(get(doc, &path!["spec", "resourceClaims"]), "pod", "spec.resourceClaims", f);
    name_resolution(doc, own_alias, f);
    sysctls(doc, f);
    volume_types(doc, f);
    if !f.policy.security.allow_service_account_token {
        service_account_tokens(doc, f);
    }
    apparmor_annotations(annotations, f);
}

/// A pod for another operating system (Windows, the only other one Kubernetes knows) is denied: tollgate's
/// proxy image, its egress lock and the security context it sets are Linux's, and the API server refuses a
/// Windows pod with the Linux-only fields hardening writes (runAsUser, seccompProfile,
/// readOnlyRootFilesystem, ...); tollgate never passes on a pod it has not hardened.
fn operating_system(doc: &Value, f: &mut Findings) {
    if let Some(os) = get(doc, &path!["spec", "os", "name"])
        && os != "linux"
    {
        let shown = os.as_str().map_or_else(|| os.to_string(), str::to_owned);
        f.refused(
            Rule::OperatingSystem,
            "pod",
            "spec.os.name",
            format!("is {shown}: tollgate hardens Linux pods only (its proxy and egress lock run on Linux nodes)"),
        );
    }
}

/// `hostNetwork`, `hostPID`, `hostIPC`.
fn host_namespaces(doc: &Value, f: &mut Findings) {
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        if is_true(get(doc, &path!["spec", key])) {
            f.insecure(
                Rule::HostNamespaces,
                "pod",
                &format!("spec.{key}"),
                "is true",
                Fix::Set(path!["spec", key], json!(false)),
                format!("set spec.{key}=false"),
            );
        }
    }
}

fn shared_process_namespace(doc: &Value, f: &mut Findings) {
    if is_true(get(doc, &path!["spec", "shareProcessNamespace"])) {
        let fix = Fix::Set(path!["spec", "shareProcessNamespace"], json!(false));
        f.insecure(
            Rule::SharedProcessNamespace,
            "pod",
            "spec.shareProcessNamespace",
            "is true",
            fix,
            "set spec.shareProcessNamespace=false",
        );
    }
}

/// Only the proxy runs as the proxy's user: another process as that user could read its files (through /proc
/// when processes are shared). `run_as_user`: the value at `field` (`at`), of the pod or of a container.
fn proxy_identity(run_as_user: Option<&Value>, scope: &str, field: &str, at: Path, f: &mut Findings) {
    let (uid, proxy_uid) = (f.policy.security.run_as_user, f.policy.proxy.run_as_user);
    if run_as_user.and_then(Value::as_i64) == Some(proxy_uid) {
        let problem = format!("is {proxy_uid}, the proxy's user");
        f.insecure(Rule::ProxyIdentity, scope, field, problem, Fix::Set(at, json!(uid)), format!("set {field}={uid}"));
    }
}

/// Dynamic resource claims (`claims`: the pod's `spec.resourceClaims`, a container's `resources.claims`).
fn dynamic_claims(claims: Option<&Value>, scope: &str, field: &str, f: &mut Findings) {
    if let Some(Value::Array(claims)) = claims
        && !claims.is_empty()
    {
        f.refused(Rule::ResourceNotAllowed, scope, field, "uses dynamic resource claims, which the policy cannot bound");
    }
}

/// Sysctls outside the safe list (of the API server's version).
fn sysctls(doc: &Value, f: &mut Findings) {
    let Some(Value::Array(sysctls)) = get(doc, &path!["spec", "securityContext", "sysctls"]) else { return };
    // An entry tollgate cannot judge (no name, or a name that is not a string) is never passed on: it is
    // as unsafe as a name outside the list (the API server would refuse it too; found by the harden fuzz
    // target, corpus regression-nameless-sysctl).
    let safe = |s: &Value| s.get("name").and_then(Value::as_str).is_some_and(is_safe_sysctl);
    let unsafe_names: Vec<String> = sysctls
        .iter()
        .filter(|s| !safe(s))
        .map(|s| match s.get("name") {
            Some(Value::String(name)) => match SAFE_SYSCTLS.iter().find(|(safe, _)| safe == name) {
                Some((_, since)) => format!("{name} (safe from Kubernetes 1.{since}; the API server runs 1.{})", kubernetes_minor()),
                None => name.clone(),
            },
            None | Some(Value::Null) => "a sysctl without a name".to_owned(),
            Some(other) => format!("a sysctl named {other}"),
        })
        .collect();
    if !unsafe_names.is_empty() {
        let kept: Vec<Value> = sysctls.iter().filter(|s| safe(s)).cloned().collect();
        let fix_path = path!["spec", "securityContext", "sysctls"];
        let fix = if kept.is_empty() { Fix::Remove(fix_path) } else { Fix::Set(fix_path, Value::Array(kept)) };
        f.insecure(
            Rule::Sysctls,
            "pod",
            "spec.securityContext.sysctls",
            format!("sets unsafe {}", unsafe_names.join(", ")),
            fix,
            "removed the unsafe sysctls",
        );
    }
}

/// The volume's type (its first key but `name`) when it is outside the allowed list: the volume is then
/// replaced whole under override, whatever else is fixed in it.
fn disallowed_type(volume: &Value) -> Option<&str> {
    let kind = volume.as_object()?.keys().find(|k| *k != "name")?;
    (!ALLOWED_VOLUME_TYPES.contains(&kind.as_str())).then_some(kind.as_str())
}

/// Volumes of a type outside the allowed list (hostPath among them).
fn volume_types(doc: &Value, f: &mut Findings) {
    let Some(Value::Array(volumes)) = get(doc, &path!["spec", "volumes"]) else { return };
    for (index, volume) in volumes.iter().enumerate() {
        let name = volume.get("name").and_then(Value::as_str).unwrap_or("");
        let Some(kind) = disallowed_type(volume) else { continue };
        let rule = if kind == "hostPath" { Rule::HostPath } else { Rule::VolumeTypes };
        let fix = Fix::Set(path!["spec", "volumes", index], json!({"name": name, "emptyDir": {}}));
        f.insecure(
            rule,
            "pod",
            &format!("spec.volumes[{name:?}].{kind}"),
            "is not allowed",
            fix,
            format!("replaced volume {name:?} with an emptyDir"),
        );
    }
}

/// AppArmor unconfined, by the annotations that predate `appArmorProfile`.
fn apparmor_annotations(annotations: &BTreeMap<String, String>, f: &mut Findings) {
    for (key, value) in annotations {
        if let Some(container) = key.strip_prefix(APPARMOR_ANNOTATION_PREFIX)
            && value == "unconfined"
        {
            let fix = Fix::Set(path!["metadata", "annotations", key.clone()], json!("runtime/default"));
            f.insecure(
                Rule::AppArmor,
                &format!("container {container:?}"),
                &format!("metadata.annotations[{key}]"),
                "is unconfined",
                fix,
                format!("set annotation {key}=runtime/default"),
            );
        }
    }
}

/// The ServiceAccount admission plugin's token volume: tollgate removes it (and its mounts) in the write phase.
pub(super) fn is_api_access_volume(volume: &Value) -> bool {
    volume.get("name").and_then(Value::as_str).is_some_and(|name| name.starts_with(API_ACCESS_VOLUME_PREFIX)) && carries_token(volume)
}

fn is_token_source(source: &Value) -> bool {
    source.get("serviceAccountToken").is_some_and(|t| !t.is_null())
}

/// A projected volume with a `serviceAccountToken` source, of any audience, beside whatever else.
fn carries_token(volume: &Value) -> bool {
    matches!(volume.pointer("/projected/sources"), Some(Value::Array(sources)) if sources.iter().any(is_token_source))
}

/// An inline CSI volume whose driver the policy does not list: it may be handed the pod's token.
fn unlisted_csi_driver<'v>(policy: &Policy, volume: &'v Value) -> Option<&'v str> {
    let csi = volume.get("csi").filter(|c| !c.is_null())?;
    let driver = csi.get("driver").and_then(Value::as_str).unwrap_or("");
    (!policy.security.allowed_csi_drivers.iter().any(|d| d == driver)).then_some(driver)
}

/// Under `security.allowServiceAccountToken: false`: every volume of the pod's own that would put a
/// ServiceAccount token within a container's reach. The API server's own token volume (`kube-api-access-*`)
/// is not the creator's doing and is removed instead (see `remove_service_account_token`).
fn service_account_tokens(doc: &Value, f: &mut Findings) {
    let Some(Value::Array(volumes)) = get(doc, &path!["spec", "volumes"]) else { return };
    let why = "no container may hold a Kubernetes ServiceAccount token (policy security.allowServiceAccountToken)";
    for (index, volume) in volumes.iter().enumerate() {
        let name = volume.get("name").and_then(Value::as_str).unwrap_or("");
        if let Some(Value::Array(sources)) = volume.pointer("/projected/sources")
            && sources.iter().any(is_token_source)
            && !is_api_access_volume(volume)
        {
            // Under override: the token goes, what else the volume projects stays (an emptyDir if nothing does).
            let kept: Vec<Value> = sources.iter().filter(|s| !is_token_source(s)).cloned().collect();
            // A volume replaced whole for its type is replaced here alike: both fixes set the same volume.
            let fixed = if kept.is_empty() || disallowed_type(volume).is_some() {
                json!({"name": name, "emptyDir": {}})
            } else {
                let mut fixed = volume.clone();
                fixed["projected"]["sources"] = Value::Array(kept);
                fixed
            };
            for (position, source) in sources.iter().enumerate().filter(|(_, s)| is_token_source(s)) {
                let audience = match source.pointer("/serviceAccountToken/audience").and_then(Value::as_str).filter(|a| !a.is_empty()) {
                    Some(audience) => format!("audience {audience:?}"),
                    None => "the Kubernetes API".to_owned(),
                };
                f.insecure(
                    Rule::ServiceAccountToken,
                    "pod",
                    &format!("spec.volumes[{name:?}].projected.sources[{position}].serviceAccountToken"),
                    format!("is a token of the pod's ServiceAccount for {audience}: {why}"),
                    Fix::Set(path!["spec", "volumes", index], fixed.clone()),
                    format!("removed the ServiceAccount token from volume {name:?}"),
                );
            }
        }
        if let Some(driver) = unlisted_csi_driver(f.policy, volume) {
            f.insecure(
                Rule::ServiceAccountToken,
                "pod",
                &format!("spec.volumes[{name:?}].csi.driver"),
                format!(
                    "is {driver:?}, which is not in security.allowedCsiDrivers: a CSI driver may be handed the pod's ServiceAccount token (tokenRequests in its CSIDriver, which tollgate cannot see), and {why}"
                ),
                Fix::Set(path!["spec", "volumes", index], json!({"name": name, "emptyDir": {}})),
                format!("replaced volume {name:?} with an emptyDir"),
            );
        }
    }
}

/// The pod's volumes that carry a ServiceAccount token (any projected `serviceAccountToken`, an unlisted CSI
/// driver's), under `security.allowServiceAccountToken: false`; none otherwise.
pub(super) fn token_volumes(policy: &Policy, doc: &Value) -> BTreeSet<String> {
    if policy.security.allow_service_account_token {
        return BTreeSet::new();
    }
    let Some(Value::Array(volumes)) = get(doc, &path!["spec", "volumes"]) else { return BTreeSet::new() };
    volumes
        .iter()
        .filter(|v| carries_token(v) || unlisted_csi_driver(policy, v).is_some())
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// An ephemeral container added to a pod (`kubectl debug`) may not mount a volume that carries a
/// ServiceAccount token (`tokens`: [`token_volumes`]). At creation the volumes themselves are judged.
pub(super) fn token_mounts(doc: &Value, c: &ContainerRef, tokens: &BTreeSet<String>, f: &mut Findings) {
    if c.kind != Kind::Ephemeral || tokens.is_empty() {
        return;
    }
    let Some(Value::Array(mounts)) = get(doc, &join(&c.path, [Seg::from("volumeMounts")])) else { return };
    for (index, mount) in mounts.iter().enumerate() {
        let name = mount.get("name").and_then(Value::as_str).unwrap_or("");
        if tokens.contains(name) {
            f.refused(
                Rule::ServiceAccountToken,
                &c.scope,
                format!("volumeMounts[{index}]"),
                format!(
                    "mounts volume {name:?}, which carries a ServiceAccount token: no container may hold a Kubernetes ServiceAccount token (policy security.allowServiceAccountToken)"
                ),
            );
        }
    }
}

/// What names resolve to inside the pod is the proxy's business too: it resolves its upstreams and its
/// token endpoint there, so a pod that maps those names to its own app would receive the credentials.
/// tollgate's own entry (`own_alias`, exactly as it renders it for this pod) is not the pod's: found on
/// reinvocation, it is left alone.
fn name_resolution(doc: &Value, own_alias: Option<&Value>, f: &mut Findings) {
    let security = &f.policy.security;
    let (allow_aliases, allow_dns) = (security.allow_host_aliases, security.allow_dns_config);
    let foreign = |aliases: &Vec<Value>| aliases.iter().any(|entry| Some(entry) != own_alias);
    if !allow_aliases && get(doc, &path!["spec", "hostAliases"]).and_then(Value::as_array).is_some_and(foreign) {
        f.insecure(
            Rule::NameResolution,
            "pod",
            "spec.hostAliases",
            "writes the pod's /etc/hosts, where the proxy resolves its upstreams (policy security.allowHostAliases)",
            Fix::Remove(path!["spec", "hostAliases"]),
            "removed spec.hostAliases",
        );
    }
    if allow_dns {
        return;
    }
    if str_at(doc, &path!["spec", "dnsPolicy"]) == Some("None") {
        f.insecure(
            Rule::NameResolution,
            "pod",
            "spec.dnsPolicy",
            "is None: the pod would choose the resolver the proxy uses (policy security.allowDnsConfig)",
            Fix::Set(path!["spec", "dnsPolicy"], json!("ClusterFirst")),
            "set spec.dnsPolicy=ClusterFirst",
        );
    }
    if get(doc, &path!["spec", "dnsConfig"]).is_some_and(|c| c.as_object().is_none_or(|c| c.values().any(|v| !v.is_null()))) {
        f.insecure(
            Rule::NameResolution,
            "pod",
            "spec.dnsConfig",
            "sets nameservers, searches or options the proxy would resolve with (policy security.allowDnsConfig)",
            Fix::Remove(path!["spec", "dnsConfig"]),
            "removed spec.dnsConfig",
        );
    }
}

/// Volumes of the pod that carry one of the protected Secrets (by volume name, with the Secret's name),
/// and the reserved name of tollgate's own.
pub(super) fn credential_volumes(doc: &Value, ids: &PodIds) -> BTreeMap<String, String> {
    let protected = |name: Option<&str>| name.filter(|n| ids.is_protected(n)).map(str::to_owned);
    let mut names = BTreeMap::from([(VOLUME_CREDENTIALS.to_owned(), ids.credentials_secret.clone())]);
    if let Some(Value::Array(volumes)) = get(doc, &path!["spec", "volumes"]) {
        for volume in volumes {
            let direct = protected(volume.pointer("/secret/secretName").and_then(Value::as_str));
            let projected = match volume.pointer("/projected/sources") {
                Some(Value::Array(sources)) => sources.iter().find_map(|s| protected(s.pointer("/secret/name").and_then(Value::as_str))),
                _ => None,
            };
            if let (Some(secret), Some(name)) = (direct.or(projected), volume.get("name").and_then(Value::as_str)) {
                names.insert(name.to_owned(), secret);
            }
        }
    }
    names
}

/// Everything wrong with container `c`. `carrying`: the pod's volumes that carry a protected Secret
/// ([`credential_volumes`], computed once per pod).
pub(super) fn container(doc: &Value, c: &ContainerRef, ids: &PodIds, carrying: &BTreeMap<String, String>, f: &mut Findings) {
    // Looked up from the container, found once; paths are built only for fixes.
    let container = get(doc, &c.path);
    privileges(doc, c, container, f);
    host_and_reserved_ports(doc, c, f);
    credentials(c, container, ids, carrying, f);
    probe_hosts(c, container, f);
    if f.policy.proxy.egress_lock == EgressLock::Required {
        lock_blocked_probes(doc, c, f);
    }
    let run_as_user = join(&c.path, path!["securityContext", "runAsUser"]);
    proxy_identity(lookup(container, &["securityContext", "runAsUser"]), &c.scope, "securityContext.runAsUser", run_as_user, f);
    dynamic_claims(lookup(container, &["resources", "claims"]), &c.scope, "resources.claims", f);
    shares_the_proxys_processes(c, container, f);
}

/// The container's securityContext: privileged, privilege escalation, added capabilities, an unmasked /proc,
/// and the checks it shares with the pod's.
fn privileges(doc: &Value, c: &ContainerRef, container: Option<&Value>, f: &mut Findings) {
    let scope = c.scope.as_str();
    let sc = join(&c.path, [Seg::from("securityContext")]);
    let at = |rel: &[&'static str]| join(&sc, rel.iter().map(|s| Seg::from(*s)));
    let sc_value = lookup(container, &["securityContext"]);
    let look = |rel: &[&str]| lookup(sc_value, rel);
    if is_true(look(&["privileged"])) {
        f.insecure(
            Rule::Privileged,
            scope,
            "securityContext.privileged",
            "is true",
            Fix::Set(at(&["privileged"]), json!(false)),
            "set securityContext.privileged=false",
        );
    }
    if is_true(look(&["allowPrivilegeEscalation"])) {
        let fix = Fix::Set(at(&["allowPrivilegeEscalation"]), json!(false));
        f.insecure(
            Rule::PrivilegeEscalation,
            scope,
            "securityContext.allowPrivilegeEscalation",
            "is true",
            fix,
            "set securityContext.allowPrivilegeEscalation=false",
        );
    }
    if let Some(Value::Array(added)) = look(&["capabilities", "add"]) {
        let extra: Vec<&str> = added.iter().filter_map(Value::as_str).filter(|cap| *cap != "NET_BIND_SERVICE").collect();
        if !extra.is_empty() || added.iter().any(|cap| !cap.is_string()) {
            let kept: Vec<Value> = added.iter().filter(|cap| cap.as_str() == Some("NET_BIND_SERVICE")).cloned().collect();
            let fix = if kept.is_empty() {
                Fix::Remove(at(&["capabilities", "add"]))
            } else {
                Fix::Set(at(&["capabilities", "add"]), Value::Array(kept))
            };
            f.insecure(
                Rule::Capabilities,
                scope,
                "securityContext.capabilities.add",
                format!("adds {}", extra.join(", ")),
                fix,
                "removed the added capabilities",
            );
        }
    }
    if look(&["procMount"]).and_then(Value::as_str) == Some("Unmasked") {
        f.insecure(
            Rule::ProcMount,
            scope,
            "securityContext.procMount",
            "is Unmasked",
            Fix::Set(at(&["procMount"]), json!("Default")),
            "set securityContext.procMount=Default",
        );
    }
    security_context(doc, scope, &sc, "", f.policy.security.run_as_user, f);
}

/// Host ports, and container ports the proxy's listeners take.
fn host_and_reserved_ports(doc: &Value, c: &ContainerRef, f: &mut Findings) {
    let ports = join(&c.path, [Seg::from("ports")]);
    let Some(Value::Array(items)) = get(doc, &ports) else { return };
    let proxy = &f.policy.proxy;
    let reserved = [proxy.egress_port, proxy.ingress_port, proxy.admin_port];
    for (index, port) in items.iter().enumerate() {
        if port.get("hostPort").and_then(Value::as_i64).is_some_and(|p| p != 0) {
            let fix = Fix::Remove(join(&ports, [Seg::Index(index), Seg::from("hostPort")]));
            f.insecure(
                Rule::HostPorts,
                &c.scope,
                &format!("ports[{index}].hostPort"),
                "is set",
                fix,
                format!("removed ports[{index}].hostPort"),
            );
        }
        if let Some(number) = port.get("containerPort").and_then(Value::as_i64).filter(|p| reserved.iter().any(|r| i64::from(*r) == *p)) {
            f.refused(
                Rule::PortConflict,
                &c.scope,
                format!("ports[{index}].containerPort"),
                format!("{number} is reserved for {SIDECAR_NAME}"),
            );
        }
    }
}

/// The proxy's credentials are for the proxy alone: any other container asking for them is refused, by a
/// mount of a volume that carries them (or of the proxy's configuration), or by env.
fn credentials(c: &ContainerRef, container: Option<&Value>, ids: &PodIds, carrying: &BTreeMap<String, String>, f: &mut Findings) {
    let scope = c.scope.as_str();
    if let Some(Value::Array(mounts)) = lookup(container, &["volumeMounts"]) {
        for (index, mount) in mounts.iter().enumerate() {
            let name = mount.get("name").and_then(Value::as_str).unwrap_or("");
            if let Some(secret) = carrying.get(name) {
                let problem = format!("mounts volume {name:?}, which carries the proxy credentials Secret {secret:?}");
                f.refused(Rule::CredentialsExposed, scope, format!("volumeMounts[{index}]"), problem);
            } else if name == VOLUME_CONFIG {
                let problem = format!("mounts volume {name:?}, which is {SIDECAR_NAME}'s alone");
                f.refused(Rule::TollgateOwned, scope, format!("volumeMounts[{index}]"), problem);
            }
        }
    }
    fn protected<'a>(ids: &PodIds, name: Option<&'a str>) -> Option<&'a str> {
        name.filter(|n| ids.is_protected(n))
    }
    if let Some(Value::Array(env)) = lookup(container, &["env"]) {
        for var in env {
            // Field by field: Value::pointer allocates for every segment, and a pod may have thousands of these.
            let secret = var.get("valueFrom").and_then(|v| v.get("secretKeyRef")).and_then(|v| v.get("name")).and_then(Value::as_str);
            if let Some(secret) = protected(ids, secret) {
                let name = var.get("name").and_then(Value::as_str).unwrap_or("");
                f.refused(
                    Rule::CredentialsExposed,
                    scope,
                    format!("env[{name:?}]"),
                    format!("reads the proxy credentials Secret {secret:?}"),
                );
            }
        }
    }
    if let Some(Value::Array(env_from)) = lookup(container, &["envFrom"]) {
        for (index, source) in env_from.iter().enumerate() {
            if let Some(secret) = protected(ids, source.get("secretRef").and_then(|v| v.get("name")).and_then(Value::as_str)) {
                f.refused(
                    Rule::CredentialsExposed,
                    scope,
                    format!("envFrom[{index}]"),
                    format!("reads the proxy credentials Secret {secret:?}"),
                );
            }
        }
    }
}

/// Kubelet-run probes and hooks reach whatever `host` names, past the proxy and any NetworkPolicy.
fn probe_hosts(c: &ContainerRef, container: Option<&Value>, f: &mut Findings) {
    for probe in ["livenessProbe", "readinessProbe", "startupProbe", "lifecycle.postStart", "lifecycle.preStop"] {
        for handler in ["httpGet", "tcpSocket"] {
            let mut rel: Vec<&str> = probe.split('.').collect();
            rel.extend([handler, "host"]);
            if let Some(host) = lookup(container, &rel).and_then(Value::as_str).filter(|h| !h.is_empty()) {
                let path = join(&c.path, rel.iter().map(|s| Seg::from(*s)));
                let field = format!("{probe}.{handler}.host");
                f.insecure(Rule::ProbeHost, &c.scope, &field, format!("is {host:?}"), Fix::Remove(path), format!("removed {field}"));
            }
        }
    }
}

/// `kubectl debug --target`: sharing the proxy's process namespace reaches its files through /proc.
fn shares_the_proxys_processes(c: &ContainerRef, container: Option<&Value>, f: &mut Findings) {
    if c.kind == Kind::Ephemeral && lookup(container, &["targetContainerName"]).and_then(Value::as_str) == Some(SIDECAR_NAME) {
        f.refused(
            Rule::TollgateOwned,
            &c.scope,
            "targetContainerName",
            format!("is {SIDECAR_NAME:?}: no container may share the proxy's processes (and through them its credentials)"),
        );
    }
}

/// Under the egress lock only the proxy's ingress and admin ports admit connections from outside the pod,
/// and the kubelet's probes and hooks come from outside (the node): any other port would never answer.
fn lock_blocked_probes(doc: &Value, c: &ContainerRef, f: &mut Findings) {
    let proxy = &f.policy.proxy;
    let open = [i64::from(proxy.ingress_port), i64::from(proxy.admin_port)];
    let ports = get(doc, &join(&c.path, [Seg::from("ports")])).and_then(Value::as_array);
    let named = |name: &str| {
        ports.into_iter().flatten().find(|p| p.get("name").and_then(Value::as_str) == Some(name))?.get("containerPort")?.as_i64()
    };
    let probe = ["httpGet", "tcpSocket", "grpc"].as_slice();
    let hook = ["httpGet", "tcpSocket"].as_slice();
    for (field, handlers, instead) in [
        ("livenessProbe", probe, "an exec probe"),
        ("readinessProbe", probe, "an exec probe"),
        ("startupProbe", probe, "an exec probe"),
        ("lifecycle.postStart", hook, "an exec hook"),
        ("lifecycle.preStop", hook, "an exec hook"),
    ] {
        for handler in handlers {
            let mut rel: Vec<&str> = field.split('.').collect();
            rel.push(handler);
            let Some(Value::Object(action)) = get(doc, &join(&c.path, rel.iter().map(|s| Seg::from(*s)))) else { continue };
            let (shown, port) = match action.get("port") {
                Some(Value::Number(n)) => (n.to_string(), n.as_i64()),
                Some(Value::String(name)) => match named(name) {
                    Some(port) => (format!("{name:?} (port {port})"), Some(port)),
                    None => (format!("{name:?}, which names no port of this container"), None),
                },
                Some(other) => (other.to_string(), None),
                None => ("absent".to_owned(), None),
            };
            if port.is_some_and(|p| open.contains(&p)) {
                continue;
            }
            let problem = format!(
                "is {shown}: the kubelet cannot reach it under the egress lock (only the proxy's ports {} and {} admit inbound connections; policy proxy.egressLock); use {instead}",
                open[0], open[1]
            );
            f.refused(Rule::LockBlocksProbe, &c.scope, format!("{field}.{handler}.port"), problem);
        }
    }
}

/// A pod with no container of its own (every one named like tollgate's, which are replaced): in classic mode
/// the proxy would be its only container, so `kubectl exec`, `attach` and `logs` without `-c` would land in
/// the holder of the credentials; in native mode it would have none.
fn no_container_of_its_own(policy: &Policy, doc: &Value, f: &mut Findings) {
    let names: Vec<&str> = match get(doc, &path!["spec", "containers"]) {
        Some(Value::Array(items)) => items.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).collect(),
        _ => Vec::new(),
    };
    let after = match policy.proxy.mode {
        ProxyMode::Classic => format!("only {SIDECAR_NAME}, which would be the default container of kubectl exec, attach and logs"),
        ProxyMode::Native => "none".to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}, "spec": spec})
    }

    fn app() -> Value {
        json!({"name": "app", "image": "busybox"})
    }

    /// What `run` finds under `policy` (denied or not): (rule, scope, field).
    fn found(policy: &Policy, run: impl FnOnce(&mut Findings)) -> Vec<(Rule, String, String)> {
        let mut f = Findings::in_mode(policy, OnViolation::Deny);
        run(&mut f);
        f.denial().map_or_else(Vec::new, |d| d.violations.into_iter().map(|v| (v.rule, v.scope, v.field)).collect())
    }

    fn verdict(policy: &Policy, on_violation: OnViolation, pod: &Value) -> Verdict {
        check(policy, on_violation, pod, None).expect("a pod")
    }

    #[test]
    fn check_decides_every_verdict_before_anything_is_changed() {
        let policy = Policy::default();
        let plain = pod(json!({"containers": [app()]}));
        let Verdict::Harden(checked) = verdict(&policy, OnViolation::Deny, &plain) else { panic!("a plain pod is hardened") };
        assert_eq!(checked.containers.iter().map(|c| c.scope.as_str()).collect::<Vec<_>>(), ["container \"app\""]);
        assert!(checked.fixes.is_empty() && checked.own_alias.is_none());
        assert_eq!(checked.resource_defaults.len(), 6, "requests and limits of cpu, memory, ephemeral storage");

        let root = pod(json!({"containers": [app()], "securityContext": {"runAsUser": 0}}));
        assert!(matches!(verdict(&policy, OnViolation::Deny, &root), Verdict::Done(Outcome::Denied(_))));
        assert!(matches!(verdict(&policy, OnViolation::Warn, &root), Verdict::Done(Outcome::Warned(_))));
        let Verdict::Harden(checked) = verdict(&policy, OnViolation::Override, &root) else { panic!("fixed under override") };
        assert_eq!(checked.fixes.len(), 1);
        assert_eq!(checked.fixes[0].fixed, format!("set spec.securityContext.runAsUser={}", policy.security.run_as_user));
        // Host isolation is never only warned about.
        let host = pod(json!({"containers": [app()], "hostNetwork": true}));
        assert!(matches!(verdict(&policy, OnViolation::Warn, &host), Verdict::Done(Outcome::Denied(_))));

        let mut opted_out = plain.clone();
        opted_out["metadata"]["annotations"] = json!({ANNOTATION_INJECT: "false"});
        let lenient = Policy::from_yaml("allowOptOut: true\n").unwrap();
        assert!(matches!(verdict(&lenient, OnViolation::Deny, &opted_out), Verdict::Done(Outcome::Skipped { .. })));
        let Verdict::Harden(checked) = verdict(&policy, OnViolation::Deny, &opted_out) else { panic!("not honoured") };
        // In the order found: the opt-out first, the lifetime (resources.rs) last.
        assert_eq!(checked.notes.len(), 2, "{:?}", checked.notes);
        assert_eq!(checked.notes[0], format!("annotation {ANNOTATION_INJECT}=false ignored: the policy does not allow opting out"));
        assert!(checked.notes[1].starts_with("pod: restartPolicy Always: no activeDeadlineSeconds"), "{:?}", checked.notes);

        assert!(check(&policy, OnViolation::Deny, &json!({"spec": {"containers": "none"}}), None).is_err());
    }

    #[test]
    fn the_pods_own_checks_one_by_one() {
        let policy = Policy::default();
        let doc = pod(json!({"os": {"name": "windows"}, "hostPID": true, "resourceClaims": [{"name": "gpu"}]}));
        assert_eq!(found(&policy, |f| operating_system(&doc, f)), [(Rule::OperatingSystem, "pod".into(), "spec.os.name".into())]);
        assert_eq!(found(&policy, |f| host_namespaces(&doc, f)), [(Rule::HostNamespaces, "pod".into(), "spec.hostPID".into())]);
        let claims = get(&doc, &path!["spec", "resourceClaims"]);
        assert_eq!(found(&policy, |f| dynamic_claims(claims, "pod", "spec.resourceClaims", f)).len(), 1);
        assert_eq!(found(&policy, |f| dynamic_claims(Some(&json!([])), "pod", "spec.resourceClaims", f)), []);
        let proxy_uid = json!(policy.proxy.run_as_user);
        let field = "spec.securityContext.runAsUser";
        assert_eq!(found(&policy, |f| proxy_identity(Some(&proxy_uid), "pod", field, path!["spec"], f)).len(), 1);
        assert_eq!(found(&policy, |f| proxy_identity(Some(&json!(1000)), "pod", field, path!["spec"], f)), []);
        let sysctl = pod(json!({"securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}, {"value": "1"}]}}));
        assert_eq!(found(&policy, |f| sysctls(&sysctl, f)), [(Rule::Sysctls, "pod".into(), "spec.securityContext.sysctls".into())]);
        let volumes = pod(json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "e", "emptyDir": {}}]}));
        assert_eq!(found(&policy, |f| volume_types(&volumes, f)), [(Rule::HostPath, "pod".into(), "spec.volumes[\"h\"].hostPath".into())]);
        let apparmor = BTreeMap::from([(format!("{APPARMOR_ANNOTATION_PREFIX}app"), "unconfined".to_owned())]);
        assert_eq!(found(&policy, |f| apparmor_annotations(&apparmor, f))[0].1, "container \"app\"");
    }

    #[test]
    fn a_containers_checks_one_by_one() {
        let policy = Policy::default();
        let ids = PodIds::none(&policy);
        let debug = json!({
            "name": "app",
            "securityContext": {"privileged": true, "capabilities": {"add": ["NET_BIND_SERVICE", "SYS_ADMIN"]}},
            "ports": [{"containerPort": policy.proxy.admin_port, "hostPort": 8080}],
            "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": policy.proxy.credentials_secret, "key": "k"}}}],
            "livenessProbe": {"httpGet": {"host": "example.com", "port": 80}},
            "targetContainerName": SIDECAR_NAME,
        });
        let doc = pod(json!({"ephemeralContainers": [debug]}));
        let c = containers(&doc).remove(0);
        let value = get(&doc, &c.path);
        let rules = |found: Vec<(Rule, String, String)>| found.into_iter().map(|(rule, _, field)| (rule, field)).collect::<Vec<_>>();
        assert_eq!(
            rules(found(&policy, |f| privileges(&doc, &c, value, f))),
            [(Rule::Privileged, "securityContext.privileged".into()), (Rule::Capabilities, "securityContext.capabilities.add".into())]
        );
        assert_eq!(
            rules(found(&policy, |f| host_and_reserved_ports(&doc, &c, f))),
            [(Rule::HostPorts, "ports[0].hostPort".into()), (Rule::PortConflict, "ports[0].containerPort".into())]
        );
        assert_eq!(
            rules(found(&policy, |f| credentials(&c, value, &ids, &BTreeMap::new(), f))),
            [(Rule::CredentialsExposed, "env[\"T\"]".into())]
        );
        assert_eq!(rules(found(&policy, |f| probe_hosts(&c, value, f))), [(Rule::ProbeHost, "livenessProbe.httpGet.host".into())]);
        assert_eq!(
            rules(found(&policy, |f| shares_the_proxys_processes(&c, value, f))),
            [(Rule::TollgateOwned, "targetContainerName".into())]
        );
        // All of them, in this order, from the one entry point.
        let all = rules(found(&policy, |f| container(&doc, &c, &ids, &BTreeMap::new(), f)));
        assert_eq!(all.first().map(|r| r.0), Some(Rule::Privileged));
        assert_eq!(all.last().map(|r| r.0), Some(Rule::TollgateOwned));
    }
}
