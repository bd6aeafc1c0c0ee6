//! Stage 3 of hardening, [`render`]: tollgate's containers, the tollgate-proxy sidecar and, under the egress
//! lock, the tollgate-lock-check init container; rendered from the policy for the pod, placed first, never
//! twice. What the pod has that is not in place goes; the renderings missing come in (write.rs).

use serde_json::{Value, json};

use super::pod::{Kind, PodIds};
use super::{
    ENV_ADMIN_LISTEN, ENV_ANALYSIS_ID, ENV_EGRESS_HOSTNAMES, ENV_EGRESS_LISTEN, ENV_INGRESS_LISTEN, ENV_POLICY_DIGEST, ENV_PROJECT_ID,
    LOCK_CHECK_NAME, SIDECAR_NAME, TOLLGATE_CONTAINERS, VOLUME_CONFIG, VOLUME_CREDENTIALS,
};
use crate::patch::{Path, get};
use crate::path;
use crate::policy::{EgressLock, Policy, ProxyMode};

pub use tollgate_api::names::{CONFIG_DIR, CREDENTIALS_DIR, PROXY_BINARY};

/// tollgate's containers as a policy renders them for a pod without ids (kept with the policy).
#[derive(Debug, Clone)]
pub struct RenderedContainers {
    sidecar: Template,
    lock_check: Template,
}

/// tollgate's containers for a pod with these ids (the policy's renderings, made once per policy and kept with
/// it, completed with the pod's ids), and where they go in `doc`.
pub(super) fn render(policy: &Policy, ids: &PodIds, doc: &Value) -> Placement {
    let make = || RenderedContainers {
        sidecar: Template::new(render_sidecar(policy, &PodIds::none(policy))),
        lock_check: Template::new(render_lock_check(policy)),
    };
    let made;
    let rendered = match policy.derived(make) {
        Some(kept) => kept,
        None => {
            made = make();
            &made
        }
    };
    let sidecar = rendered.sidecar.rendering(Some(ids));
    let lock_check = (policy.proxy.egress_lock == EgressLock::Required).then(|| rendered.lock_check.rendering(None));
    place(policy, doc, sidecar, lock_check)
}

/// The sidecar container. Fields the API server would default are spelled out, so that on
/// reinvocation the stored sidecar compares equal to a fresh rendering and is left alone.
fn render_sidecar(policy: &Policy, ids: &PodIds) -> Value {
    let proxy = &policy.proxy;
    let mut env = vec![
        json!({"name": ENV_EGRESS_LISTEN, "value": format!("127.0.0.1:{}", proxy.egress_port)}),
        json!({"name": ENV_INGRESS_LISTEN, "value": format!("0.0.0.0:{}", proxy.ingress_port)}),
        json!({"name": ENV_ADMIN_LISTEN, "value": format!("0.0.0.0:{}", proxy.admin_port)}),
        // Exported by the proxy as `tollgate_proxy_info{policy}`: a proxy rendered from another policy than
        // the one in force is stale (the chart's TollgateStaleProxies). A namespace's effective policy
        // carries the policy's digest, so this is per policy and the rendering stays cached with it.
        json!({"name": ENV_POLICY_DIGEST, "value": policy.digest()}),
    ];
    if let Some(id) = &ids.analysis {
        env.push(json!({"name": ENV_ANALYSIS_ID, "value": id}));
    }
    if let Some(id) = &ids.project {
        env.push(json!({"name": ENV_PROJECT_ID, "value": id}));
    }
    if !ids.egress_hostnames.is_empty() {
        env.push(json!({"name": ENV_EGRESS_HOSTNAMES, "value": ids.egress_hostnames.join(",")}));
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
        // The kubelet starts the next container once this hook has returned: the app starts as soon as the
        // proxy is ready, where a startupProbe's first success waits for its next tick (at least a second).
        // In classic mode, too, the kubelet starts containers in order, each after its postStart hook.
        "lifecycle": {"postStart": {"exec": {"command": [
            PROXY_BINARY, "wait-ready", "--timeout", proxy.startup_failure_threshold.to_string(),
        ]}}},
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

/// One of tollgate's containers for a pod: the value that goes into the pod, and the same as JSON text,
/// which goes into the patch.
pub(super) struct Rendering {
    pub value: Value,
    pub json: String,
}

/// One of tollgate's containers as the policy renders it for a pod without ids, kept with the policy: the
/// value, and its JSON text cut where a pod's id entries go (the end of its env list), so that a review
/// neither serialises it nor builds it again.
#[derive(Debug, Clone)]
pub struct Template {
    value: Value,
    head: String,
    tail: String,
}

impl Template {
    fn new(value: Value) -> Self {
        let text = serde_json::to_string(&value).expect("a container serialises");
        // The env list's text is found as it is in the container's (serialisation is deterministic), its
        // closing bracket is the cut.
        let cut = value
            .get("env")
            .map(|env| serde_json::to_string(env).expect("a list serialises"))
            .and_then(|env| text.find(&env).map(|at| at + env.len() - 1))
            .unwrap_or(text.len());
        Template { head: text[..cut].to_owned(), tail: text[cut..].to_owned(), value }
    }

    /// For a pod: with its ids (and egress hostnames) appended to the env list when given, the same as
    /// rendering it for them.
    fn rendering(&self, ids: Option<&PodIds>) -> Rendering {
        let mut value = self.value.clone();
        let mut json = String::with_capacity(self.head.len() + self.tail.len() + 128);
        json.push_str(&self.head);
        if let (Some(ids), Some(Value::Array(env))) = (ids, value.get_mut("env")) {
            let hostnames = (!ids.egress_hostnames.is_empty()).then(|| ids.egress_hostnames.join(","));
            for (name, id) in [(ENV_ANALYSIS_ID, &ids.analysis), (ENV_PROJECT_ID, &ids.project), (ENV_EGRESS_HOSTNAMES, &hostnames)] {
                let Some(id) = id else { continue };
                let entry = json!({"name": name, "value": id});
                if !env.is_empty() {
                    json.push(',');
                }
                json.push_str(&entry.to_string());
                env.push(entry);
            }
        }
        json.push_str(&self.tail);
        debug_assert_eq!(serde_json::from_str::<Value>(&json).ok().as_ref(), Some(&value), "the text is the value");
        Rendering { value, json }
    }
}

/// The lock-check init container (`proxy.egressLock: required`): `tollgate-proxy lock-check` from the
/// proxy's image, run as the app's user (never the proxy's: the lock lets only the proxy's user out), with
/// no volumes, env, ports or probes. Defaults spelled out as for the sidecar.
fn render_lock_check(policy: &Policy) -> Value {
    let proxy = &policy.proxy;
    json!({
        "name": LOCK_CHECK_NAME,
        "image": proxy.image,
        "imagePullPolicy": proxy.image_pull_policy.as_str(),
        "args": ["lock-check"],
        "resources": proxy.resources,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": policy.security.run_as_user,
            "runAsGroup": policy.security.run_as_group,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// What leads each list, in order: native: `[lock check, sidecar]` in the init containers; classic: the
/// lock check first in the init containers, the sidecar first in the containers.
fn layout(mode: ProxyMode, sidecar: Rendering, lock_check: Option<Rendering>) -> [(Kind, Vec<Rendering>); 2] {
    let mut init: Vec<Rendering> = lock_check.into_iter().collect();
    match mode {
        ProxyMode::Native => {
            init.push(sidecar);
            [(Kind::Init, init), (Kind::App, Vec::new())]
        }
        ProxyMode::Classic => [(Kind::Init, init), (Kind::App, vec![sidecar])],
    }
}

/// Where tollgate's containers stand in a pod, and what to do about it.
pub(super) struct Placement {
    /// Every container named like one of tollgate's that is not its current rendering in its place (a
    /// stale rendering, a misplaced one, an impostor, or a lock check the policy no longer asks for), with
    /// its name, in document order.
    pub stale: Vec<(Path, &'static str)>,
    /// The renderings to insert once the stale ones are gone, in this order: (list, index, container).
    pub missing: Vec<(Kind, usize, Rendering)>,
}

/// A rendering is in place when it leads its list (only tollgate's containers before it) in layout order;
/// everything else named like one of tollgate's containers goes.
fn place(policy: &Policy, doc: &Value, sidecar: Rendering, lock_check: Option<Rendering>) -> Placement {
    let mut placement = Placement { stale: Vec::new(), missing: Vec::new() };
    for (kind, wanted) in layout(policy.proxy.mode, sidecar, lock_check) {
        let mut kept = vec![false; wanted.len()];
        if let Some(Value::Array(items)) = get(doc, &path!["spec", kind.field()]) {
            // The next rendering that may still be found in place, and whether only tollgate's came so far.
            let (mut next, mut leading) = (0, true);
            for (index, container) in items.iter().enumerate() {
                let name = container.get("name").and_then(Value::as_str).unwrap_or("");
                let Some(name) = TOLLGATE_CONTAINERS.into_iter().find(|n| *n == name) else {
                    leading = false;
                    continue;
                };
                let at = (next..wanted.len()).find(|m| wanted[*m].value["name"] == name).filter(|_| leading);
                match at {
                    Some(m) if *container == wanted[m].value => {
                        kept[m] = true;
                        next = m + 1;
                    }
                    _ => placement.stale.push((path!["spec", kind.field(), index], name)),
                }
            }
        }
        // The kept ones now lead the list in layout order: each missing one goes in at its own index.
        for (index, container) in wanted.into_iter().enumerate() {
            if !kept[index] {
                placement.missing.push((kind, index, container));
            }
        }
    }
    placement
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(init: Value, containers: Value) -> Value {
        json!({"spec": {"initContainers": init, "containers": containers}})
    }

    #[test]
    fn render_places_tollgates_containers_first_once() {
        let native = Policy::default();
        let ids = PodIds::none(&native);
        let app = json!({"name": "app", "image": "busybox"});
        let placement = render(&native, &ids, &pod(json!([]), json!([app])));
        assert!(placement.stale.is_empty());
        let missing: Vec<(Kind, usize, &Value)> = placement.missing.iter().map(|(k, i, r)| (*k, *i, &r.value["name"])).collect();
        assert_eq!(missing, [(Kind::Init, 0, &json!(SIDECAR_NAME))]);
        // Its own rendering in place stays; an impostor and a stale copy go.
        let sidecar = render_sidecar(&native, &ids);
        let placement = render(&native, &ids, &pod(json!([sidecar]), json!([app])));
        assert!(placement.stale.is_empty() && placement.missing.is_empty());
        let impostor = json!({"name": SIDECAR_NAME, "image": "evil"});
        let placement = render(&native, &ids, &pod(json!([impostor]), json!([app, impostor])));
        assert_eq!(placement.stale.len(), 2);
        assert_eq!(placement.missing.len(), 1);
        // Classic, locked: the lock check leads the init containers, the proxy the containers.
        let classic = Policy::from_yaml("proxy: { mode: classic, egressLock: required }\n").unwrap();
        let placement = render(&classic, &ids, &pod(json!([]), json!([app])));
        let missing: Vec<(Kind, usize, &Value)> = placement.missing.iter().map(|(k, i, r)| (*k, *i, &r.value["name"])).collect();
        assert_eq!(missing, [(Kind::Init, 0, &json!(LOCK_CHECK_NAME)), (Kind::App, 0, &json!(SIDECAR_NAME))]);
        // The text that goes into the patch is the value that goes into the pod.
        for (_, _, rendering) in &placement.missing {
            assert_eq!(serde_json::from_str::<Value>(&rendering.json).unwrap(), rendering.value);
        }
    }
}
