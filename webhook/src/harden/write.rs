//! Stage 4 of hardening, [`build`]: the plan (plan.rs) carried out on the pod, field by field, through the
//! patch builder; each change recorded as it is made; tollgate's containers (sidecar.rs) put in place once every
//! edit by index is done; last, the record of the changes, sealed. Also the patch for a pod let through as it
//! came ([`let_through`]).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::edit::{Editor, compact};
use super::findings::{Fix, Fixed};
use super::plan::{ContainerPlan, Field, Metadata, Plan, Volume};
use super::pod::{ContainerRef, Kind, containers};
use super::record::{self, RecordKeys};
use super::resources::Setting;
use super::sidecar::{Placement, Rendering};
use super::{
    ANNOTATION_CHANGES, ANNOTATION_DEFAULT_CONTAINER, ANNOTATION_EGRESS_LOCK, ANNOTATION_STATUS, Change, ENV_EGRESS_URL, Hardened,
    OWNED_PREFIX, SIDECAR_NAME, VERSION, VOLUME_TMP, checks, egress,
};
use crate::patch::{Patch, Path, Seg, join};
use crate::path;
use crate::policy::{EgressLock, Policy, ProxyMode};

/// The changes annotation holds at most this much; the rest is counted on its last line.
const MAX_CHANGES_ANNOTATION: usize = 16 * 1024;

/// `plan` and tollgate's containers (`placement`) written into `pod`; the record sealed with `keys`.
pub(super) fn build(policy: &Policy, keys: &RecordKeys, pod: &mut Value, plan: Plan, placement: Placement) -> Hardened {
    let mut e = Editor::new(pod);
    fixes(plan.fixes, &mut e);
    fields(&mut e, "pod", &path!["spec"], &plan.pod);
    egress::write_host_alias(plan.host_alias.as_ref(), &mut e);
    egress::write_sysctl(plan.low_port, &mut e);
    for container in &plan.containers {
        self::container(container, &mut e);
    }
    resource_defaults(plan.resource_defaults, &mut e);
    volumes(&plan.volumes, plan.containers.iter().map(|p| &p.c), &mut e);
    if plan.remove_token {
        remove_service_account_token(plan.containers.iter().map(|p| &p.c), &mut e);
    }
    // Index-based edits are done: now stale containers of tollgate's can go and ours come in.
    remove_stale(policy, &placement.stale, &mut e);
    insert(policy, placement.missing, &mut e);
    default_container(plan.default_container, &mut e);
    metadata(&plan.metadata, &mut e);
    seal_record(keys, &plan.annotations, plan.metadata.status, &mut e);
    let Editor { builder, changes } = e;
    Hardened { patch: builder.into_patch(), changes, notes: plan.notes }
}

/// Every fix, each change saying what it fixed.
pub(super) fn fixes(fixes: Vec<Fixed>, e: &mut Editor) {
    for Fixed { violation, fix, fixed } in fixes {
        match fix {
            Some(Fix::Set(path, value)) => {
                e.builder.set(&path, value);
            }
            Some(Fix::Remove(path)) => {
                e.builder.remove(&path);
            }
            None => {}
        }
        e.change(&violation.scope, format!("{fixed} (was: {} {}) [{}]", violation.field, violation.problem, violation.rule));
    }
}

fn fields(e: &mut Editor, scope: &str, base: &Path, fields: &[Field]) {
    for field in fields {
        if field.force {
            e.force(scope, base, field.rel, field.value.clone());
        } else {
            e.default(scope, base, field.rel, field.value.clone());
        }
    }
}

/// One container's settings: no privilege escalation, no capabilities, a read-only root with /tmp writable, the
/// placeholders, and the proxy's URL in its env.
pub(super) fn container(plan: &ContainerPlan, e: &mut Editor) {
    let c = &plan.c;
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
    if plan.read_only_root {
        e.force(&c.scope, &c.path, &["securityContext", "readOnlyRootFilesystem"], json!(true));
    }
    // Every container but tollgate's, ephemeral ones too: none holds what the placeholders stand for.
    egress::write_placeholders(&plan.placeholders, c, e);
    if let Some(url) = &plan.egress_url {
        egress_url(c, url, e);
    }
    if plan.tmp {
        tmp_mount(c, e);
    }
}

/// `TOLLGATE_EGRESS_URL=<url>`: the last definition of the name wins in the container, so that is the one to own.
fn egress_url(c: &ContainerRef, url: &str, e: &mut Editor) {
    let env_path = join(&c.path, [Seg::from("env")]);
    let wanted = json!({"name": ENV_EGRESS_URL, "value": url});
    let existing = match e.builder.get(&env_path) {
        Some(Value::Array(env)) => env.iter().rposition(|var| var.get("name").and_then(Value::as_str) == Some(ENV_EGRESS_URL)),
        _ => None,
    };
    match existing {
        Some(index) => {
            if e.builder.set(&join(&env_path, [Seg::Index(index)]), wanted) {
                e.change(&c.scope, format!("set env {ENV_EGRESS_URL}={url}"));
            }
        }
        None => {
            e.builder.append(&env_path, wanted);
            e.change(&c.scope, format!("set env {ENV_EGRESS_URL}={url}"));
        }
    }
}

/// tollgate's emptyDir at /tmp, unless something is mounted there already.
fn tmp_mount(c: &ContainerRef, e: &mut Editor) {
    let mounts_path = join(&c.path, [Seg::from("volumeMounts")]);
    let has_tmp = match e.builder.get(&mounts_path) {
        Some(Value::Array(mounts)) => mounts.iter().any(|m| matches!(m.get("mountPath").and_then(Value::as_str), Some("/tmp" | "/tmp/"))),
        _ => false,
    };
    if !has_tmp {
        e.builder.append(&mounts_path, json!({"name": VOLUME_TMP, "mountPath": "/tmp"}));
        e.change(&c.scope, format!("mounted emptyDir {VOLUME_TMP} at /tmp"));
    }
}

fn resource_defaults(settings: Vec<Setting>, e: &mut Editor) {
    for (scope, path, field, value) in settings {
        let shown = compact(&value);
        if e.builder.set(&path, value) {
            e.change(&scope, format!("set {field}={shown}"));
        }
    }
}

/// tollgate's volumes, each replacing one of its name or added; the /tmp emptyDir only where a container mounts it.
fn volumes<'c>(volumes: &[Volume], containers: impl IntoIterator<Item = &'c ContainerRef>, e: &mut Editor) {
    let mounts_tmp = containers.into_iter().any(|c| {
        matches!(e.builder.get(&join(&c.path, [Seg::from("volumeMounts")])), Some(Value::Array(mounts))
            if mounts.iter().any(|m| m.get("name").and_then(Value::as_str) == Some(VOLUME_TMP)))
    });
    let path = path!["spec", "volumes"];
    for Volume { value, kind, if_mounted } in volumes {
        if *if_mounted && !mounts_tmp {
            continue;
        }
        let name = value["name"].as_str().unwrap_or_default().to_owned();
        let index = match e.builder.get(&path) {
            Some(Value::Array(items)) => items.iter().position(|v| v.get("name").and_then(Value::as_str) == Some(&name)),
            _ => None,
        };
        match index {
            Some(index) => {
                if e.builder.set(&join(&path, [Seg::Index(index)]), value.clone()) {
                    e.change("pod", format!("replaced volume {name:?} with tollgate's {kind} volume"));
                }
            }
            None => {
                e.builder.append(&path, value.clone());
                e.change("pod", format!("added {kind} volume {name:?}"));
            }
        }
    }
}

/// The ServiceAccount admission plugin runs before webhooks and has already added the token volume
/// (`kube-api-access-*`) and its mounts; `automountServiceAccountToken: false` alone would not undo that.
fn remove_service_account_token<'c>(containers: impl IntoIterator<Item = &'c ContainerRef>, e: &mut Editor) {
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

/// Every container named like one of tollgate's that is not its current rendering in its place goes.
fn remove_stale(policy: &Policy, stale: &[(Path, &str)], e: &mut Editor) {
    // Last first, so that the indices of the others hold.
    for (path, name) in stale.iter().rev() {
        e.builder.remove(path);
        let why = match *name {
            SIDECAR_NAME => "that was not tollgate's current sidecar",
            _ if policy.proxy.egress_lock == EgressLock::Off => "that the policy does not ask for (proxy.egressLock: off)",
            _ => "that was not tollgate's current lock check",
        };
        e.change("pod", format!("removed a container {name:?} {why}"));
    }
}

/// tollgate's renderings not in place come in, each at its index.
fn insert(policy: &Policy, missing: Vec<(Kind, usize, Rendering)>, e: &mut Editor) {
    let locked = policy.proxy.egress_lock == EgressLock::Required;
    for (kind, index, Rendering { value, json }) in missing {
        let name = value.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        e.builder.insert_json(&path!["spec", kind.field()], index, value, &json);
        let place = match (name == SIDECAR_NAME, policy.proxy.mode) {
            (false, _) => "first init container: the pod starts only if the egress lock is in place",
            (true, ProxyMode::Native) if locked => "native sidecar, init container after tollgate-lock-check",
            (true, ProxyMode::Native) => "native sidecar, first init container",
            (true, ProxyMode::Classic) => "first container",
        };
        e.change("pod", format!("injected {name} {} ({place})", policy.proxy.image));
    }
}

/// kubectl's default container, where the plan says it must change.
fn default_container(name: Option<String>, e: &mut Editor) {
    let Some(name) = name else { return };
    e.builder.set(&path!["metadata", "annotations", ANNOTATION_DEFAULT_CONTAINER], json!(name));
    e.change(
        "pod",
        format!("set annotation {ANNOTATION_DEFAULT_CONTAINER}={name}: kubectl exec, attach and logs without -c go to the pod's own container, never to {SIDECAR_NAME}"),
    );
}

/// tollgate's labels and annotations, but for the status and the record ([`seal_record`]).
fn metadata(plan: &Metadata, e: &mut Editor) {
    for key in &plan.foreign_labels {
        e.builder.remove(&path!["metadata", "labels", key.clone()]);
        e.change("pod", format!("removed label {key}: {OWNED_PREFIX} labels are set by tollgate alone"));
    }
    fields(e, "pod", &path!["metadata"], &plan.labels);
    let lock = path!["metadata", "annotations", ANNOTATION_EGRESS_LOCK];
    match &plan.egress_lock {
        Some(value) => {
            if e.builder.set(&lock, json!(value)) {
                e.change("pod", format!("recorded annotation {ANNOTATION_EGRESS_LOCK}={value}"));
            }
        }
        None => {
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
    for key in &plan.foreign_annotations {
        e.builder.remove(&path!["metadata", "annotations", key.clone()]);
        e.change("pod", format!("removed annotation {key}: {OWNED_PREFIX} annotations are tollgate's, but for the pod's own inputs"));
    }
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

/// A pod tollgate did not harden carries nothing that says tollgate did: no `tollgate.dev/` label, no record of
/// changes, no egress lock; only the status that says why it was let through (`reason`). With `remove_token`,
/// the ServiceAccount token volume the API server added goes, with its mounts.
pub(super) fn let_through(policy: &Policy, pod: &Value, reason: &str, remove_token: bool) -> (Patch, Vec<Change>) {
    #[derive(Serialize)]
    struct Skipped<'a> {
        version: &'a str,
        policy: &'a str,
        skipped: &'a str,
    }
    let status = serde_json::to_string(&Skipped { version: VERSION, policy: policy.digest(), skipped: reason }).expect("status serializes");
    let mut copy = pod.clone();
    let mut e = Editor::new(&mut copy);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harden::checks::{Verdict, check};
    use crate::harden::{plan, sidecar};
    use crate::policy::OnViolation;

    #[test]
    fn a_field_is_set_when_missing_or_whatever_is_there() {
        let mut doc = json!({"spec": {"a": 1, "b": 1}});
        let mut e = Editor::new(&mut doc);
        let fields = [
            Field { rel: &["a"], value: json!(2), force: false },
            Field { rel: &["b"], value: json!(2), force: true },
            Field { rel: &["c"], value: json!(2), force: false },
        ];
        self::fields(&mut e, "pod", &path!["spec"], &fields);
        let changes: Vec<String> = e.changes.iter().map(ToString::to_string).collect();
        assert_eq!(changes, ["pod: set b=2", "pod: set c=2"]);
        assert_eq!(doc, json!({"spec": {"a": 1, "b": 2, "c": 2}}));
    }

    #[test]
    fn the_stages_in_a_row_harden_and_a_second_pass_writes_nothing() {
        let policy = Policy::default();
        let keys = RecordKeys::from_secret(b"test");
        let pass = |pod: &mut Value| {
            let Verdict::Harden(checked) = check(&policy, OnViolation::Deny, pod, None).unwrap() else { panic!("hardened") };
            let plan = plan::plan(&policy, pod, *checked);
            let placement = sidecar::render(&policy, &plan.ids, pod);
            build(&policy, &keys, pod, plan, placement)
        };
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "x"}]}});
        let first = pass(&mut pod);
        let changes: Vec<String> = first.changes.iter().map(ToString::to_string).collect();
        assert_eq!(changes.first().map(String::as_str), Some("pod: set securityContext.runAsNonRoot=true"));
        assert_eq!(changes.last().map(String::as_str), Some("pod: recorded annotation tollgate.dev/status"));
        assert!(changes.iter().any(|c| c.starts_with(&format!("pod: injected {SIDECAR_NAME} "))), "{changes:#?}");
        let second = pass(&mut pod);
        assert!(second.patch.is_empty() && second.changes.is_empty(), "{:?}", second.changes);
    }

    #[test]
    fn a_pod_let_through_keeps_only_the_status() {
        let policy = Policy::default();
        let pod =
            json!({"metadata": {"labels": {"tollgate.dev/injected": "true", "app": "a"}, "annotations": {ANNOTATION_EGRESS_LOCK: "{}"}}});
        let (patch, changes) = let_through(&policy, &pod, "opted-out", true);
        let mut after = pod.clone();
        json_patch::patch(&mut after, &patch.to_json_patch()).unwrap();
        assert_eq!(after["metadata"]["labels"], json!({"app": "a"}));
        let annotations = after["metadata"]["annotations"].as_object().unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), [ANNOTATION_STATUS]);
        assert!(annotations[ANNOTATION_STATUS].as_str().unwrap().ends_with(r#""skipped":"opted-out"}"#));
        assert!(changes.is_empty(), "no token volume to remove");
        assert!(let_through(&policy, &json!({"metadata": "x"}), "warned", true).0.is_empty());
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
