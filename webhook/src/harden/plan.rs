//! Stage 2 of hardening, [`plan`]: what to change in a pod the checks let through, decided from the policy and
//! from what the checks found, before anything is written: the fixes, the settings of the pod and of each of
//! its containers, tollgate's volumes, labels and annotations, and what goes. Every value is decided here;
//! write.rs carries the plan out on the pod, field by field, recording what it changed.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::checks::Checked;
use super::egress::{self, Placeholder};
use super::findings::Fixed;
use super::pod::{ContainerRef, Kind, PodIds};
use super::resources::Setting;
use super::{
    ANNOTATION_CHANGES, ANNOTATION_DEFAULT_CONTAINER, ANNOTATION_EGRESS_LOCK, ANNOTATION_STATUS, INPUT_ANNOTATIONS, LABEL_ANALYSIS_ID,
    LABEL_INJECTED, LABEL_PROJECT_ID, OWNED_PREFIX, TOLLGATE_CONTAINERS, VERSION, VOLUME_CONFIG, VOLUME_CREDENTIALS, VOLUME_TMP,
    egress_lock_annotation,
};
use crate::patch::get;
use crate::path;
use crate::policy::{EgressLock, Policy, ProxyMode};

/// Everything hardening changes in one pod, in the order it is written.
pub(super) struct Plan {
    /// The ids the pod's annotations give it (tollgate's containers are rendered with them: sidecar.rs).
    pub(super) ids: PodIds,
    /// The pod's annotations as it came: whether a record it brings is tollgate's is judged on them.
    pub(super) annotations: BTreeMap<String, String>,
    pub(super) notes: Vec<String>,
    /// The violations the policy fixes.
    pub(super) fixes: Vec<Fixed>,
    /// The pod's own settings, under `spec`.
    pub(super) pod: Vec<Field>,
    /// tollgate's `hostAliases` entry (`proxy.egressHostnames`), first.
    pub(super) host_alias: Option<Value>,
    /// `net.ipv4.ip_unprivileged_port_start`, for a proxy port below 1024.
    pub(super) low_port: Option<u16>,
    pub(super) containers: Vec<ContainerPlan>,
    /// Requests and limits where a container has none.
    pub(super) resource_defaults: Vec<Setting>,
    /// tollgate's volumes, in this order.
    pub(super) volumes: Vec<Volume>,
    /// Remove the ServiceAccount token volume the API server added, and its mounts.
    pub(super) remove_token: bool,
    /// What kubectl's default container is to be, where the annotation must change.
    pub(super) default_container: Option<String>,
    pub(super) metadata: Metadata,
}

/// A field under a base path, set when missing or, `force`d, whatever is there.
#[derive(Debug)]
pub(super) struct Field {
    pub(super) rel: &'static [&'static str],
    pub(super) value: Value,
    pub(super) force: bool,
}

impl Field {
    fn if_absent(rel: &'static [&'static str], value: Value) -> Field {
        Field { rel, value, force: false }
    }

    fn always(rel: &'static [&'static str], value: Value) -> Field {
        Field { rel, value, force: true }
    }
}

/// What one container (not tollgate's) gets.
#[derive(Debug)]
pub(super) struct ContainerPlan {
    pub(super) c: ContainerRef,
    /// `securityContext.readOnlyRootFilesystem: true`.
    pub(super) read_only_root: bool,
    /// The placeholders of `proxy.placeholderEnv`, for every container (ephemeral ones too).
    pub(super) placeholders: Vec<Placeholder>,
    /// The value of env `TOLLGATE_EGRESS_URL`, which tollgate owns; none for an ephemeral container.
    pub(super) egress_url: Option<String>,
    /// An emptyDir at /tmp, unless the container mounts something there (a read-only root filesystem); never
    /// for an ephemeral container.
    pub(super) tmp: bool,
}

/// One of tollgate's volumes.
#[derive(Debug)]
pub(super) struct Volume {
    pub(super) value: Value,
    /// Its type, for the change.
    pub(super) kind: &'static str,
    /// Only if a container mounts it (the /tmp emptyDir).
    pub(super) if_mounted: bool,
}

/// tollgate's labels and annotations.
#[derive(Debug)]
pub(super) struct Metadata {
    /// `tollgate.dev/` labels the pod brought that are not tollgate's to set: removed.
    pub(super) foreign_labels: Vec<String>,
    /// tollgate's labels, under `metadata`.
    pub(super) labels: Vec<Field>,
    /// The egress lock's annotation; none without the lock (one the pod brought is removed).
    pub(super) egress_lock: Option<String>,
    /// `tollgate.dev/` annotations the pod brought that are neither its inputs nor tollgate's: removed.
    pub(super) foreign_annotations: Vec<String>,
    /// The status annotation, without its seal (sealed once every change is known).
    pub(super) status: String,
}

#[derive(Serialize)]
struct Status<'a> {
    version: &'a str,
    policy: &'a str,
    proxy: &'a str,
    image: &'a str,
    containers: Vec<&'a str>,
}

/// The plan for a pod (`doc`, as it came) the checks let through.
pub(super) fn plan(policy: &Policy, doc: &Value, checked: Checked) -> Plan {
    let Checked { annotations, ids, notes, own_alias, containers, fixes, resource_defaults } = checked;
    let default_container = default_container(policy, doc, &containers);
    let metadata = metadata(policy, doc, &ids, &containers);
    Plan {
        pod: pod_settings(policy, doc),
        host_alias: own_alias,
        low_port: egress::unprivileged_port_start(policy),
        containers: containers.into_iter().map(|c| container(policy, c)).collect(),
        volumes: volumes(policy, &ids),
        remove_token: !policy.security.allow_service_account_token,
        default_container,
        metadata,
        ids,
        annotations,
        notes,
        fixes,
        resource_defaults,
    }
}

/// The pod's securityContext defaults, no API token and no service links unless the policy allows them, and a
/// deadline for a pod that ends.
fn pod_settings(policy: &Policy, doc: &Value) -> Vec<Field> {
    let security = &policy.security;
    let mut fields = vec![
        Field::if_absent(&["securityContext", "runAsNonRoot"], json!(true)),
        Field::if_absent(&["securityContext", "runAsUser"], json!(security.run_as_user)),
        Field::if_absent(&["securityContext", "runAsGroup"], json!(security.run_as_group)),
        Field::if_absent(&["securityContext", "fsGroup"], json!(security.fs_group)),
        Field::if_absent(&["securityContext", "seccompProfile"], json!({"type": "RuntimeDefault"})),
    ];
    if !security.allow_service_account_token {
        fields.push(Field::always(&["automountServiceAccountToken"], json!(false)));
    }
    if !security.allow_service_links {
        fields.push(Field::always(&["enableServiceLinks"], json!(false)));
    }
    let restart_policy = get(doc, &path!["spec", "restartPolicy"]).and_then(Value::as_str).unwrap_or("Always");
    if matches!(restart_policy, "Never" | "OnFailure") {
        fields.push(Field::if_absent(&["activeDeadlineSeconds"], json!(policy.lifetime.active_deadline_seconds)));
    }
    fields
}

/// What container `c` gets under `policy` (also for an ephemeral container added later: update.rs).
pub(super) fn container(policy: &Policy, c: ContainerRef) -> ContainerPlan {
    let own = c.kind != Kind::Ephemeral;
    let read_only_root = policy.security.read_only_root_filesystem;
    ContainerPlan {
        read_only_root,
        placeholders: egress::placeholders(policy),
        egress_url: own.then(|| format!("http://127.0.0.1:{}", policy.proxy.egress_port)),
        tmp: own && read_only_root,
        c,
    }
}

/// /tmp (where mounted), the proxy's configuration and its credentials.
fn volumes(policy: &Policy, ids: &PodIds) -> Vec<Volume> {
    vec![
        Volume {
            value: json!({"name": VOLUME_TMP, "emptyDir": {"sizeLimit": policy.security.tmp_size_limit.text}}),
            kind: "emptyDir",
            if_mounted: true,
        },
        Volume {
            value: json!({"name": VOLUME_CONFIG, "configMap": {"name": policy.proxy.config_map, "defaultMode": 0o444}}),
            kind: "configMap",
            if_mounted: false,
        },
        Volume {
            value: json!({"name": VOLUME_CREDENTIALS, "secret": {"secretName": ids.credentials_secret, "defaultMode": 0o440}}),
            kind: "secret",
            if_mounted: false,
        },
    ]
}

/// kubectl's default container (`exec`, `attach`, `logs` without `-c`) is never tollgate's: in classic mode,
/// where the proxy is the first container, the annotation names the pod's first container of its own unless it
/// names another of them; in either mode an annotation naming tollgate's container is replaced.
fn default_container(policy: &Policy, doc: &Value, containers: &[ContainerRef]) -> Option<String> {
    let first = containers.iter().find(|c| c.kind == Kind::App)?;
    let current = get(doc, &path!["metadata", "annotations", ANNOTATION_DEFAULT_CONTAINER]).and_then(Value::as_str);
    let classic = policy.proxy.mode == ProxyMode::Classic;
    let own = |name: &str| containers.iter().any(|c| c.kind != Kind::Ephemeral && c.name == name);
    let replace = match current {
        Some(name) if TOLLGATE_CONTAINERS.contains(&name) => true,
        Some(name) => classic && !own(name),
        None => classic,
    };
    replace.then(|| first.name.clone())
}

/// tollgate's labels and annotations: what tollgate decided, which NetworkPolicies, people and the tollgate-cni
/// plugin go by, so none is the pod's to bring.
fn metadata(policy: &Policy, doc: &Value, ids: &PodIds, containers: &[ContainerRef]) -> Metadata {
    // tollgate.dev/ labels say what tollgate decided (NetworkPolicies and people select on them): a pod
    // may not bring its own.
    let ours = |key: &str| {
        key == LABEL_INJECTED || (key == LABEL_ANALYSIS_ID && ids.analysis.is_some()) || (key == LABEL_PROJECT_ID && ids.project.is_some())
    };
    let foreign_labels = match get(doc, &path!["metadata", "labels"]) {
        Some(Value::Object(labels)) => labels.keys().filter(|k| k.starts_with(OWNED_PREFIX) && !ours(k)).cloned().collect(),
        _ => Vec::new(),
    };
    let mut labels = vec![Field::always(&["labels", LABEL_INJECTED], json!("true"))];
    if let Some(id) = &ids.analysis {
        labels.push(Field::always(&["labels", LABEL_ANALYSIS_ID], json!(crate::labels::label_value_for(id))));
    }
    if let Some(id) = &ids.project {
        labels.push(Field::always(&["labels", LABEL_PROJECT_ID], json!(crate::labels::label_value_for(id))));
    }
    // The egress lock's annotation is the tollgate-cni plugin's only instruction: tollgate's alone to write.
    let egress_lock = (policy.proxy.egress_lock == EgressLock::Required).then(|| egress_lock_annotation(policy));
    // Under tollgate's prefix, every annotation but the creator's inputs is tollgate's: one the pod brings is not
    // (the status and the record are written last, the lock before).
    let foreign_annotations = match get(doc, &path!["metadata", "annotations"]) {
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
    let status = Status {
        version: VERSION,
        policy: policy.digest(),
        proxy: match policy.proxy.mode {
            ProxyMode::Native => "native",
            ProxyMode::Classic => "classic",
        },
        image: &policy.proxy.image,
        containers: containers.iter().map(|c| c.name.as_str()).collect(),
    };
    let status = serde_json::to_string(&status).expect("status serializes");
    Metadata { foreign_labels, labels, egress_lock, foreign_annotations, status }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harden::SIDECAR_NAME;
    use crate::harden::checks::{Verdict, check};
    use crate::policy::OnViolation;

    fn planned(policy: &Policy, doc: &Value) -> Plan {
        match check(policy, OnViolation::Deny, doc, None).expect("a pod") {
            Verdict::Harden(checked) => plan(policy, doc, *checked),
            Verdict::Done(outcome) => panic!("not hardened: {outcome:?}"),
        }
    }

    fn job() -> Value {
        json!({
            "metadata": {
                "name": "p",
                "labels": {"tollgate.dev/injected": "no", "tollgate.dev/mine": "x", "app": "a"},
                "annotations": {"tollgate.dev/analysis-id": "a1", "tollgate.dev/forged": "x", ANNOTATION_DEFAULT_CONTAINER: SIDECAR_NAME},
            },
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "app", "image": "busybox"}],
                "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
            },
        })
    }

    #[test]
    fn every_value_is_decided_from_the_policy_and_the_checks() {
        let policy = Policy::default();
        let plan = planned(&policy, &job());
        let pod: Vec<String> = plan.pod.iter().map(|f| f.rel.join(".")).collect();
        assert_eq!(pod.last().map(String::as_str), Some("activeDeadlineSeconds"), "a pod that ends gets a deadline: {pod:?}");
        assert!(plan.pod.iter().all(|f| f.force == matches!(f.rel, ["automountServiceAccountToken"] | ["enableServiceLinks"])));
        let [app, debug] = &plan.containers[..] else { panic!("{:?}", plan.containers) };
        assert_eq!((app.egress_url.as_deref(), app.tmp), (Some(format!("http://127.0.0.1:{}", policy.proxy.egress_port).as_str()), true));
        assert_eq!((debug.egress_url.as_deref(), debug.tmp), (None, false), "an ephemeral container gets no URL and no /tmp");
        assert_eq!(
            plan.volumes.iter().map(|v| (v.kind, v.if_mounted)).collect::<Vec<_>>(),
            [("emptyDir", true), ("configMap", false), ("secret", false)]
        );
        assert!(plan.remove_token);
        // An annotation naming tollgate's container is replaced, in either mode.
        assert_eq!(plan.default_container.as_deref(), Some("app"));
        let m = &plan.metadata;
        assert_eq!(m.foreign_labels, ["tollgate.dev/mine"], "tollgate's own label is set, not removed");
        let labels: Vec<(&str, &Value)> = m.labels.iter().map(|f| (f.rel[1], &f.value)).collect();
        assert_eq!(labels, [(LABEL_INJECTED, &json!("true")), (LABEL_ANALYSIS_ID, &json!("a1"))]);
        assert_eq!(m.foreign_annotations, ["tollgate.dev/forged"], "the analysis id is the creator's input");
        assert_eq!(m.egress_lock, None);
        assert!(m.status.ends_with(r#""containers":["app","debug"]}"#), "{}", m.status);
    }

    #[test]
    fn what_a_policy_changes_in_the_plan() {
        let policy = Policy::from_yaml(
            "proxy: { mode: classic, egressLock: required, egressPort: 80 }\nsecurity: { readOnlyRootFilesystem: false, allowServiceAccountToken: true, allowServiceLinks: true }\n",
        )
        .unwrap();
        let mut doc = job();
        doc["metadata"]["annotations"] = json!({});
        doc["spec"]["restartPolicy"] = json!("Always");
        let plan = planned(&policy, &doc);
        assert!(plan.pod.iter().all(|f| !f.force), "{:?}", plan.pod);
        assert_eq!(plan.pod.len(), 5, "no deadline for a pod that restarts");
        assert_eq!((plan.containers[0].read_only_root, plan.containers[0].tmp), (false, false));
        assert!(!plan.remove_token);
        assert_eq!(plan.low_port, Some(80));
        // Classic: the proxy leads the containers, so kubectl's default container is named.
        assert_eq!(plan.default_container.as_deref(), Some("app"));
        assert_eq!(plan.metadata.egress_lock.as_deref(), Some(egress_lock_annotation(&policy).as_str()));
    }
}
