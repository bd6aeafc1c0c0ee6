//! The checks of resources and lifetime (part of stage 1, checks.rs): the policy's maximum, sanity, and the
//! defaults to set where a container has none.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::Rule;
use super::findings::{Findings, Fix};
use super::pod::{ContainerRef, Kind};
use crate::patch::{Path, Seg, get, join};
use crate::path;
use crate::policy::{Policy, RestartAlways};
use crate::quantity::Quantity;

/// A setting to make once the pod is known to be admissible: (scope, path, field for messages, value).
pub(super) type Setting = (String, Path, String, Value);

const UNBOUNDED_BY_DEFAULT: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];

/// Every check of the pod's resources and lifetime: the defaults to set (where the pod is admitted), and a note
/// when nothing bounds its lifetime.
pub(super) fn check(policy: &Policy, doc: &Value, containers: &[ContainerRef], f: &mut Findings) -> (Vec<Setting>, Option<String>) {
    let defaults = defaults(policy, doc, containers, f);
    pod_level(policy, doc, f);
    (defaults, lifetime(policy, doc, f))
}

/// Each app and init container's requests and limits against the policy, and the defaults it lacks.
fn defaults(policy: &Policy, doc: &Value, containers: &[ContainerRef], f: &mut Findings) -> Vec<Setting> {
    let mut settings = Vec::new();
    for c in containers.iter().filter(|c| c.kind != Kind::Ephemeral) {
        container_defaults(policy, doc, c, f, &mut settings);
    }
    settings
}

/// Parsed requests or limits, by resource name: (text, value).
type Parsed = BTreeMap<String, (String, Quantity)>;

/// Parsed requests or limits of one container, as (text, value); invalid entries are reported and left out.
fn parse_list(doc: &Value, path: &Path, field: &str, scope: &str, f: &mut Findings) -> Parsed {
    let mut parsed = BTreeMap::new();
    let Some(Value::Object(list)) = get(doc, path) else { return parsed };
    for (name, value) in list {
        let text = match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        match text.parse::<Quantity>() {
            Ok(quantity) if quantity.is_negative() => {
                f.refused(Rule::InvalidQuantity, scope, format!("{field}.{name}"), format!("{text:?} is negative"))
            }
            Ok(quantity) => {
                parsed.insert(name.clone(), (text, quantity));
            }
            Err(e) => f.refused(Rule::InvalidQuantity, scope, format!("{field}.{name}"), format!("is invalid: {e}")),
        }
    }
    parsed
}

fn container_defaults(policy: &Policy, doc: &Value, c: &ContainerRef, f: &mut Findings, settings: &mut Vec<Setting>) {
    let requests_path = join(&c.path, path!["resources", "requests"]);
    let limits_path = join(&c.path, path!["resources", "limits"]);
    let (requests, mut limits) = check_maximum(policy, doc, &join(&c.path, [Seg::from("resources")]), "resources", &c.scope, f);

    // Defaults where missing: a limit is never below the request, a request never above the limit.
    let defaults = &policy.resources.defaults;
    for (name, default) in &defaults.limits {
        if limits.contains_key(name) {
            continue;
        }
        let limit = match requests.get(name) {
            Some((text, request)) if *request > default.value => (text.clone(), *request),
            _ => (default.text.clone(), default.value),
        };
        settings.push((c.scope.clone(), join(&limits_path, [Seg::from(name.clone())]), format!("resources.limits.{name}"), json!(limit.0)));
        limits.insert(name.clone(), limit);
    }
    for (name, default) in &defaults.requests {
        if requests.contains_key(name) {
            continue;
        }
        let request = match limits.get(name) {
            Some((text, limit)) if *limit < default.value => text.clone(),
            _ => default.text.clone(),
        };
        settings.push((
            c.scope.clone(),
            join(&requests_path, [Seg::from(name.clone())]),
            format!("resources.requests.{name}"),
            json!(request),
        ));
    }
}

/// A deadline longer than the policy's is treated like a resource above the maximum. Pods that restart
/// `Always` have no deadline (their ReplicaSet would replace them): the policy warns or denies; the
/// warning is returned as a note.
fn lifetime(policy: &Policy, doc: &Value, f: &mut Findings) -> Option<String> {
    let max = policy.lifetime.active_deadline_seconds;
    if let Some(deadline) = get(doc, &path!["spec", "activeDeadlineSeconds"]).and_then(Value::as_i64).filter(|d| *d > max) {
        let fix = Fix::Set(path!["spec", "activeDeadlineSeconds"], json!(max));
        f.excessive(
            Rule::LifetimeExceedsMaximum,
            "pod",
            "spec.activeDeadlineSeconds",
            format!("{deadline} is above the maximum {max}"),
            fix,
            format!("set spec.activeDeadlineSeconds={max}"),
        );
    }
    let restart = get(doc, &path!["spec", "restartPolicy"]).and_then(Value::as_str).unwrap_or("Always");
    if restart != "Always" || get(doc, &path!["spec", "activeDeadlineSeconds"]).is_some() {
        return None;
    }
    match policy.lifetime.restart_always {
        RestartAlways::Warn => Some(
            "pod: restartPolicy Always: no activeDeadlineSeconds bounds its lifetime; it runs until it or its owner is deleted".to_owned(),
        ),
        RestartAlways::Deny => {
            f.refused(
                Rule::LifetimeUnbounded,
                "pod",
                "spec.restartPolicy",
                "is Always: no deadline would bound the pod's lifetime (policy lifetime.restartAlways: deny); use Never or OnFailure",
            );
            None
        }
    }
}

/// Pod-level `spec.resources` (PodLevelResources): the whole pod is held to the per-container maximum.
fn pod_level(policy: &Policy, doc: &Value, f: &mut Findings) {
    let base = path!["spec", "resources"];
    check_maximum(policy, doc, &base, "spec.resources", "pod", f);
}

/// Requests and limits under `base` against the policy's maximum, and requests against limits; with
/// `onExceed: clamp`, values above the maximum are lowered to it. Returns the lists as they will be.
fn check_maximum(policy: &Policy, doc: &Value, base: &Path, field: &str, scope: &str, f: &mut Findings) -> (Parsed, Parsed) {
    let requests_path = join(base, [Seg::from("requests")]);
    let limits_path = join(base, [Seg::from("limits")]);
    let mut requests = parse_list(doc, &requests_path, &format!("{field}.requests"), scope, f);
    let mut limits = parse_list(doc, &limits_path, &format!("{field}.limits"), scope, f);
    let maximum = &policy.resources.maximum;
    for (kind, list, list_path) in [("requests", &mut requests, &requests_path), ("limits", &mut limits, &limits_path)] {
        for (name, (text, value)) in list.iter_mut() {
            let field = format!("{field}.{kind}.{name}");
            match maximum.get(name) {
                None if !UNBOUNDED_BY_DEFAULT.contains(&name.as_str()) => {
                    f.refused(Rule::ResourceNotAllowed, scope, field, "is not permitted by the policy (no entry in resources.maximum)");
                }
                Some(max) if *value > max.value => {
                    let fix = Fix::Set(join(list_path, [Seg::from(name.clone())]), json!(max.text));
                    f.excessive(
                        Rule::ResourcesExceedMaximum,
                        scope,
                        &field,
                        format!("{text} is above the maximum {}", max.text),
                        fix,
                        format!("set {field}={}", max.text),
                    );
                    // Go on with the clamped value so the checks below see what will be stored.
                    *text = max.text.clone();
                    *value = max.value;
                }
                _ => {}
            }
        }
    }
    for (name, (text, value)) in &requests {
        if let Some((limit_text, _)) = limits.get(name).filter(|(_, limit)| value > limit) {
            f.refused(
                Rule::RequestsExceedLimits,
                scope,
                format!("{field}.requests.{name}"),
                format!("{text} is above the limit {limit_text}"),
            );
        }
    }
    (requests, limits)
}

/// The maximum for every app and init container and for the pod as a whole, without defaults: what a
/// resize (`pods/resize`) must respect.
pub(super) fn check_resize(policy: &Policy, doc: &Value, containers: &[ContainerRef], f: &mut Findings) {
    for c in containers.iter().filter(|c| c.kind != Kind::Ephemeral) {
        check_maximum(policy, doc, &join(&c.path, [Seg::from("resources")]), "resources", &c.scope, f);
    }
    pod_level(policy, doc, f);
}
