//! Offline injection (`tollgate-webhook inject`): Pods and the pod templates of workload objects.

use serde::Deserialize;
use serde_json::Value;

use crate::harden::{self, Change, Denial, Outcome};
use crate::policy::Policy;

/// Where a kind keeps its pod, as a JSON pointer; `None` for kinds without one.
pub fn pod_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" | "PodTemplate" => {
            Some("/spec/template")
        }
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// What happened to one object of the stream.
#[derive(Debug)]
pub enum ObjectReport {
    Hardened { object: String, changes: Vec<Change>, notes: Vec<String> },
    Skipped { object: String, reason: String },
    Denied { object: String, denial: Denial },
    Invalid { object: String, error: String },
}

#[derive(Debug, Default)]
pub struct InjectResult {
    /// The objects, hardened where they hold a pod, in input order.
    pub documents: Vec<Value>,
    pub reports: Vec<ObjectReport>,
}

impl InjectResult {
    pub fn failed(&self) -> bool {
        self.reports.iter().any(|r| matches!(r, ObjectReport::Denied { .. } | ObjectReport::Invalid { .. }))
    }

    /// The hardened stream as YAML documents.
    pub fn to_yaml(&self) -> Result<String, String> {
        let mut out = String::new();
        for (i, document) in self.documents.iter().enumerate() {
            if i > 0 {
                out.push_str("---\n");
            }
            out.push_str(&serde_yaml_ng::to_string(document).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }
}

fn describe(document: &Value, index: usize) -> String {
    let kind = document.get("kind").and_then(Value::as_str).unwrap_or("object");
    let metadata = document.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str)
        .map_or_else(|| format!("#{}", index + 1), str::to_owned);
    format!("{}/{name}", kind.to_ascii_lowercase())
}

/// Harden every pod in a YAML or JSON stream of Kubernetes objects (`List`s are unpacked in place), each under
/// the policy of its `metadata.namespace` ([`Policy::for_namespace`]).
pub fn inject(policy: &Policy, text: &str) -> Result<InjectResult, String> {
    inject_in(policy, None, text)
}

/// [`inject`], with `namespace` for objects that name none (as `kubectl apply -n` would create them there).
pub fn inject_in(policy: &Policy, namespace: Option<&str>, text: &str) -> Result<InjectResult, String> {
    let mut result = InjectResult::default();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).map_err(|e| format!("document {}: {e}", index + 1))?;
        if value.is_null() {
            continue;
        }
        let value = inject_object(policy, namespace, value, index, &mut result.reports);
        result.documents.push(value);
    }
    Ok(result)
}

fn inject_object(policy: &Policy, namespace: Option<&str>, mut value: Value, index: usize, reports: &mut Vec<ObjectReport>) -> Value {
    let object = describe(&value, index);
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("").to_owned();
    if kind.ends_with("List")
        && let Some(Value::Array(items)) = value.get_mut("items")
    {
        let taken = std::mem::take(items);
        *items = taken.into_iter().map(|item| inject_object(policy, namespace, item, index, reports)).collect();
        return value;
    }
    let namespace = value.pointer("/metadata/namespace").and_then(Value::as_str).filter(|ns| !ns.is_empty()).or(namespace);
    let policy = policy.for_namespace(namespace.unwrap_or(""));
    let Some(pointer) = pod_pointer(&kind) else {
        reports.push(ObjectReport::Skipped { object, reason: format!("kind {kind:?} has no pod template") });
        return value;
    };
    let Some(pod) = value.pointer_mut(pointer) else {
        reports.push(ObjectReport::Invalid { object, error: format!("no pod template at {pointer}") });
        return value;
    };
    let report = match harden::harden(policy, pod) {
        Ok(Outcome::Hardened(hardened)) => ObjectReport::Hardened { object, changes: hardened.changes, notes: hardened.notes },
        Ok(Outcome::Skipped { reason }) => ObjectReport::Skipped { object, reason: reason.as_str().to_owned() },
        Ok(Outcome::Denied(denial) | Outcome::Warned(denial)) => ObjectReport::Denied { object, denial },
        Err(e) => ObjectReport::Invalid { object, error: e.to_string() },
    };
    reports.push(report);
    value
}

/// The pod template of a workload (`kind` as in [`pod_pointer`]), checked when the workload is created or
/// changed: its identity annotations (`tollgate.dev/analysis-id`, ...) may only be set by a trusted
/// user, so that the controller that later creates its pods (trusted by the pod webhook) carries only
/// what a trusted user wrote. `old` is the workload before an UPDATE: unchanged identity is allowed.
pub fn check_identity(policy: &Policy, kind: &str, new: &Value, old: Option<&Value>, requester: harden::Requester) -> Option<Denial> {
    let pointer = pod_pointer(kind).filter(|p| !p.is_empty())?;
    let identity = |object: Option<&Value>| -> Vec<(&'static str, Option<String>)> {
        let annotations = object.and_then(|o| o.pointer(&format!("{pointer}/metadata/annotations")));
        harden::IDENTITY_ANNOTATIONS
            .iter()
            .map(|key| (*key, annotations.and_then(|a| a.get(*key)).and_then(Value::as_str).map(str::to_owned)))
            .collect()
    };
    let now = identity(Some(new));
    if old.is_some() && identity(old) == now {
        return None;
    }
    let field = format!("{}.metadata.annotations", pointer.trim_start_matches('/').replace('/', "."));
    let annotations = now.into_iter().filter_map(|(key, value)| Some((key.to_owned(), value?))).collect();
    harden::check_identity(policy, &annotations, requester, &field)
}
