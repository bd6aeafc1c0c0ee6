//! The read phase for resources and lifetime: defaults where missing, the policy's maximum, sanity.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{ContainerRef, Findings, Fix, Kind, Rule, join};
use crate::patch::{Path, Seg, get};
use crate::path;
use crate::policy::Policy;
use crate::quantity::Quantity;

/// A setting to make once the pod is known to be admissible: (scope, path, field for messages, value).
pub(super) type Setting = (String, Path, String, Value);

const UNBOUNDED_BY_DEFAULT: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];

pub(super) fn plan(policy: &Policy, doc: &Value, containers: &[ContainerRef], f: &mut Findings) -> Vec<Setting> {
    let mut settings = Vec::new();
    for c in containers.iter().filter(|c| c.kind != Kind::Ephemeral) {
        plan_container(policy, doc, c, f, &mut settings);
    }
    settings
}

/// Parsed requests or limits of one container, as (text, value); invalid entries are reported and left out.
fn parse_list(doc: &Value, path: &Path, field: &str, scope: &str, f: &mut Findings) -> BTreeMap<String, (String, Quantity)> {
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

fn plan_container(policy: &Policy, doc: &Value, c: &ContainerRef, f: &mut Findings, settings: &mut Vec<Setting>) {
    let scope = c.scope.as_str();
    let requests_path = join(&c.path, path!["resources", "requests"]);
    let limits_path = join(&c.path, path!["resources", "limits"]);
    let mut requests = parse_list(doc, &requests_path, "resources.requests", scope, f);
    let mut limits = parse_list(doc, &limits_path, "resources.limits", scope, f);
    let maximum = &policy.resources.maximum;

    // The maximum (per container) and what is allowed at all.
    for (kind, list, list_path) in [("requests", &mut requests, &requests_path), ("limits", &mut limits, &limits_path)] {
        for (name, (text, value)) in list.iter_mut() {
            let field = format!("resources.{kind}.{name}");
            match maximum.get(name) {
                None if !UNBOUNDED_BY_DEFAULT.contains(&name.as_str()) => {
                    f.refused(Rule::ResourceNotAllowed, scope, field, "is not permitted by the policy (no entry in resources.maximum)");
                }
                Some(max) if *value > max.value => {
                    let fix = Fix::Set(join(list_path, [Seg::from(name.as_str())]), json!(max.text));
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
                format!("resources.requests.{name}"),
                format!("{text} is above the limit {limit_text}"),
            );
        }
    }

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
        settings.push((
            c.scope.clone(),
            join(&limits_path, [Seg::from(name.as_str())]),
            format!("resources.limits.{name}"),
            json!(limit.0),
        ));
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
            join(&requests_path, [Seg::from(name.as_str())]),
            format!("resources.requests.{name}"),
            json!(request),
        ));
    }
}

/// A deadline longer than the policy's is treated like a resource above the maximum.
pub(super) fn lifetime(policy: &Policy, doc: &Value, f: &mut Findings) {
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
}
