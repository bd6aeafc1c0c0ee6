//! The tollgate-proxy sidecar: rendered from the policy, placed first, never twice.

use serde_json::{Value, json};

use super::{Editor, Kind, PodIds, SIDECAR_NAME, VOLUME_CONFIG, VOLUME_CREDENTIALS};
use crate::patch::{Path, get};
use crate::path;
use crate::policy::{Policy, ProxyMode};

pub const CONFIG_DIR: &str = "/etc/tollgate/proxy";
pub const CREDENTIALS_DIR: &str = "/var/run/secrets/tollgate";

/// The sidecar container. Fields the API server would default are spelled out, so that on
/// reinvocation the stored sidecar compares equal to a fresh rendering and is left alone.
pub(super) fn render(policy: &Policy, ids: &PodIds) -> Value {
    let proxy = &policy.proxy;
    let mut env = vec![
        json!({"name": "TOLLGATE_EGRESS_LISTEN", "value": format!("127.0.0.1:{}", proxy.egress_port)}),
        json!({"name": "TOLLGATE_INGRESS_LISTEN", "value": format!("0.0.0.0:{}", proxy.ingress_port)}),
        json!({"name": "TOLLGATE_ADMIN_LISTEN", "value": format!("0.0.0.0:{}", proxy.admin_port)}),
    ];
    if let Some(id) = &ids.analysis {
        env.push(json!({"name": "TOLLGATE_ANALYSIS_ID", "value": id}));
    }
    if let Some(id) = &ids.project {
        env.push(json!({"name": "TOLLGATE_PROJECT_ID", "value": id}));
    }
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": proxy.admin_port, "scheme": "HTTP"},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 1,
            "successThreshold": 1,
        })
    };
    let mut container = json!({
        "name": SIDECAR_NAME,
        "image": proxy.image,
        "imagePullPolicy": proxy.image_pull_policy.as_str(),
        "args": ["--config", format!("{CONFIG_DIR}/config.yaml")],
        "env": env,
        "ports": [
            {"name": "tg-ingress", "containerPort": proxy.ingress_port, "protocol": "TCP"},
            {"name": "tg-admin", "containerPort": proxy.admin_port, "protocol": "TCP"},
        ],
        "startupProbe": probe("/readyz", 1, proxy.startup_failure_threshold),
        "readinessProbe": probe("/readyz", 5, 3),
        "livenessProbe": probe("/healthz", 10, 3),
        "resources": proxy.resources,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": proxy.run_as_user,
            "runAsGroup": proxy.run_as_group,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": VOLUME_CONFIG, "mountPath": CONFIG_DIR, "readOnly": true},
            {"name": VOLUME_CREDENTIALS, "mountPath": CREDENTIALS_DIR, "readOnly": true},
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if proxy.mode == ProxyMode::Native {
        // An init container that keeps running: a native sidecar (Kubernetes >= 1.29).
        container["restartPolicy"] = json!("Always");
    }
    container
}

fn home(mode: ProxyMode) -> Kind {
    match mode {
        ProxyMode::Native => Kind::Init,
        ProxyMode::Classic => Kind::App,
    }
}

/// Whether `desired` already sits first where the mode puts it, and the paths of every other container
/// named like the sidecar (a stale rendering, a misplaced one, or an impostor), in document order.
pub(super) fn find_existing(policy: &Policy, doc: &Value, desired: &Value) -> (bool, Vec<Path>) {
    let home = home(policy.proxy.mode);
    let mut in_place = false;
    let mut stale = Vec::new();
    for kind in [Kind::Init, Kind::App] {
        let Some(Value::Array(items)) = get(doc, &path!["spec", kind.field()]) else { continue };
        for (index, container) in items.iter().enumerate() {
            if container.get("name").and_then(Value::as_str) != Some(SIDECAR_NAME) {
                continue;
            }
            if kind == home && index == 0 && container == desired {
                in_place = true;
            } else {
                stale.push(path!["spec", kind.field(), index]);
            }
        }
    }
    (in_place, stale)
}

pub(super) fn insert(policy: &Policy, sidecar: Value, e: &mut Editor) {
    let kind = home(policy.proxy.mode);
    e.builder.insert(&path!["spec", kind.field()], 0, sidecar);
    let mode = match policy.proxy.mode {
        ProxyMode::Native => "native sidecar, first init container",
        ProxyMode::Classic => "first container",
    };
    e.change("pod", format!("injected {SIDECAR_NAME} {} ({mode})", policy.proxy.image));
}
