//! After admission: an UPDATE of a pod, through the main resource or a subresource.
//!
//! What tollgate rendered (the proxy container, the lock-check container, their volumes, the `tollgate.dev/` labels and annotations)
//! never changes; ephemeral containers (`kubectl debug`) are hardened and checked like any other
//! container; a resize stays within the policy's maximum. The same guard over tollgate's own fields also
//! ships as a ValidatingAdmissionPolicy, which holds while the webhook is down (see the README).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::{Map, Value};

use super::edit::Editor;
use super::findings::Findings;
use super::pod::{Kind, containers, decode};
use super::{
    ANNOTATION_DEFAULT_CONTAINER, Hardened, OWNED_PREFIX, Outcome, Rule, SIDECAR_NAME, TOLLGATE_CONTAINERS, VOLUME_CONFIG,
    VOLUME_CREDENTIALS, VOLUME_TMP, checks, plan, resources, write,
};
use crate::policy::Policy;

pub use super::DecodeError;

/// The subresources of a pod that change its spec; anything else is only guarded.
pub const EPHEMERAL_CONTAINERS: &str = "ephemeralcontainers";
pub const RESIZE: &str = "resize";

/// Decide an UPDATE of `new` (over `old`) through `subresource` (`""` for the pod itself).
///
/// `Outcome::Hardened` with an empty patch allows it unchanged; a non-empty patch hardens new ephemeral
/// containers. On a denial `new` is untouched.
pub fn update(policy: &Policy, old: &Value, new: &mut Value, subresource: &str) -> Result<Outcome, DecodeError> {
    if let Some(denial) = checks::bounds(policy, new) {
        return Ok(Outcome::Denied(denial));
    }
    let typed = decode(new)?;
    let annotations: BTreeMap<String, String> = typed.metadata.annotations.unwrap_or_default();
    let mut findings = Findings::new(policy);
    owned_fields(old, new, &mut findings);

    let mut editor = Editor::new(new);
    let all = containers(editor.builder.doc());
    let mut added = Vec::new();
    match subresource {
        EPHEMERAL_CONTAINERS => {
            let before = names(old, Kind::Ephemeral);
            added = all.into_iter().filter(|c| c.kind == Kind::Ephemeral && !before.contains(c.name.as_str())).collect();
            let ids = checks::pod_ids(policy, &annotations, &mut Findings::new(policy));
            let carrying = checks::credential_volumes(editor.builder.doc(), &ids);
            let tokens = checks::token_volumes(policy, editor.builder.doc());
            for container in &added {
                if TOLLGATE_CONTAINERS.contains(&container.name.as_str()) {
                    let problem = format!("is {:?}, the name of a container tollgate renders", container.name);
                    findings.refused(Rule::TollgateOwned, &container.scope, "name", problem);
                }
                checks::container(editor.builder.doc(), container, &ids, &carrying, &mut findings);
                checks::token_mounts(editor.builder.doc(), container, &tokens, &mut findings);
            }
        }
        RESIZE => resources::check_resize(policy, editor.builder.doc(), &all, &mut findings),
        _ => {}
    }
    if let Some(denial) = findings.denial() {
        return Ok(Outcome::Denied(denial));
    }
    // What the added containers get: planned and written as at creation.
    write::fixes(findings.into_fixes(), &mut editor);
    for container in added {
        write::container(&plan::container(policy, container), &mut editor);
    }
    let Editor { builder, changes } = editor;
    Ok(Outcome::Hardened(Hardened { patch: builder.into_patch(), changes, notes: Vec::new() }))
}

fn names(doc: &Value, kind: Kind) -> HashSet<&str> {
    let items = doc.pointer(&format!("/spec/{}", kind.field())).and_then(Value::as_array);
    items.into_iter().flatten().filter_map(|c| c.get("name").and_then(Value::as_str)).collect()
}

fn named<'v>(doc: &'v Value, list: &str, name: &str) -> Option<&'v Value> {
    doc.pointer(list)?.as_array()?.iter().find(|item| item.get("name").and_then(Value::as_str) == Some(name))
}

fn shown(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "absent".to_owned(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(other) => other.to_string(),
    }
}

/// Everything tollgate rendered is compared with what was admitted; each difference is named.
fn owned_fields(old: &Value, new: &Value, f: &mut Findings) {
    for name in TOLLGATE_CONTAINERS {
        for kind in [Kind::Init, Kind::App] {
            let list = format!("/spec/{}", kind.field());
            match (named(old, &list, name), named(new, &list, name)) {
                (Some(before), Some(after)) if before != after => {
                    let empty = Map::new();
                    let (b, a) = (before.as_object().unwrap_or(&empty), after.as_object().unwrap_or(&empty));
                    let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
                    let scope = format!("{} {name:?}", kind.label());
                    for key in keys.into_iter().filter(|k| b.get(*k) != a.get(*k)) {
                        f.refused(Rule::TollgateOwned, &scope, key.as_str(), "is tollgate's and cannot be changed after admission");
                    }
                }
                (Some(_), None) | (None, Some(_)) => {
                    let field = format!("spec.{}[{name:?}]", kind.field());
                    f.refused(Rule::TollgateOwned, "pod", field, "is tollgate's and cannot be added or removed after admission");
                }
                _ => {}
            }
        }
    }
    for volume in [VOLUME_CONFIG, VOLUME_CREDENTIALS, VOLUME_TMP] {
        if named(old, "/spec/volumes", volume) != named(new, "/spec/volumes", volume) {
            let field = format!("spec.volumes[{volume:?}]");
            f.refused(Rule::TollgateOwned, "pod", field, "is tollgate's and cannot be changed after admission");
        }
    }
    default_container(old, new, f);
    for map in ["labels", "annotations"] {
        let pointer = format!("/metadata/{map}");
        let (before, after) = (old.pointer(&pointer).and_then(Value::as_object), new.pointer(&pointer).and_then(Value::as_object));
        let keys: BTreeSet<&String> =
            before.into_iter().chain(after).flat_map(|m| m.keys()).filter(|k| k.starts_with(OWNED_PREFIX)).collect();
        for key in keys {
            let (was, now) = (before.and_then(|m| m.get(key)), after.and_then(|m| m.get(key)));
            if was != now {
                let problem = format!(
                    "is tollgate's and cannot be added, changed or removed after admission (was {}, now {})",
                    shown(was),
                    shown(now)
                );
                f.refused(Rule::TollgateOwned, "pod", format!("metadata.{map}[{key}]"), problem);
            }
        }
    }
}

/// In a classic-mode pod (the proxy its first container) kubectl's default container, which tollgate set to
/// the pod's own, may change only to another container of the pod's own: removed, or naming tollgate's or no
/// container, kubectl would fall back to the first — the proxy.
fn default_container(old: &Value, new: &Value, f: &mut Findings) {
    let classic = new.pointer("/spec/containers/0/name").and_then(Value::as_str) == Some(SIDECAR_NAME);
    let pointer = format!("/metadata/annotations/{}", ANNOTATION_DEFAULT_CONTAINER.replace('/', "~1"));
    // Empty is absent, to kubectl (and to the pod guard's CEL).
    let at = |pod: &'_ Value| pod.pointer(&pointer).filter(|v| v.as_str() != Some("")).cloned();
    let (was, now) = (at(old), at(new));
    let (was, now) = (was.as_ref(), now.as_ref());
    if !classic || was == now {
        return;
    }
    let own = now.and_then(Value::as_str).is_some_and(|name| {
        !TOLLGATE_CONTAINERS.contains(&name) && Kind::ALL.iter().any(|kind| named(new, &format!("/spec/{}", kind.field()), name).is_some())
    });
    if !own {
        f.refused(
            Rule::TollgateOwned,
            "pod",
            format!("metadata.annotations[{ANNOTATION_DEFAULT_CONTAINER}]"),
            format!(
                "may name only a container of the pod's own (was {}, now {}): kubectl exec, attach and logs without -c would go to {SIDECAR_NAME}, the pod's first container",
                shown(was),
                shown(now)
            ),
        );
    }
}
