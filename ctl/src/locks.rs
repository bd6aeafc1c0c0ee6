//! `tollgate check`'s egress lock: per node, whether the tollgate-cni DaemonSet has installed the plugin there
//! and is ready, and, where it is not, why and what fixes it (the platform preset, the directories, the
//! ResourceQuota some managed clusters want for `system-node-critical` pods). The lock is asked for when the
//! policy in force requires it (`proxy.egressLock: required`) or the DaemonSet is installed (the chart's
//! `egressLock.enabled`); neither: one line that says it is off. Pure: [`crate::gather::locks`] reads.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Taint, Toleration};

use tollgate_api::names;

use crate::finding::{Finding, Read, Severity};
use crate::preflight::Distribution;

const CHECK: &str = "egress-lock";
const PRESETS: &str = "kubeadm, rke2, microk8s, k3s, gke";

/// What the check reads about the egress lock, in tollgate's namespace.
#[derive(Debug, Clone)]
pub struct LockView {
    /// tollgate's namespace.
    pub namespace: String,
    /// The installer's DaemonSet (`app.kubernetes.io/name=tollgate-cni`); `Ok(None)`: none.
    pub daemon_set: Read<Option<DaemonSetView>>,
    pub nodes: Read<Vec<NodeView>>,
    /// The DaemonSet's pods.
    pub pods: Read<Vec<PodView>>,
    /// The Events of the DaemonSet and of its pods, oldest first.
    pub events: Read<Vec<EventView>>,
}

#[derive(Debug, Clone, Default)]
pub struct DaemonSetView {
    pub name: String,
    /// The installer container's `TOLLGATE_CNI_*` variables with a literal value (the platform, the
    /// directories as mounted in the container).
    pub env: BTreeMap<String, String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub priority_class: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub provider_id: String,
    pub taints: Vec<Taint>,
}

#[derive(Debug, Clone, Default)]
pub struct PodView {
    pub name: String,
    /// The node it runs on, or, not scheduled yet, the node the DaemonSet made it for.
    pub node: Option<String>,
    pub phase: String,
    /// Its Ready condition is True.
    pub ready: bool,
    /// The installer container waits: its reason and message (`ContainerCreating`, `CrashLoopBackOff`, ...).
    pub waiting: Option<(String, String)>,
    /// The message of the installer's current or last termination (what it did not find, when it gave up).
    pub terminated: Option<String>,
    pub restarts: i32,
}

#[derive(Debug, Clone, Default)]
pub struct EventView {
    /// `Pod` or `DaemonSet`.
    pub kind: String,
    pub name: String,
    pub reason: String,
    pub message: String,
}

/// The taints a DaemonSet's pods tolerate without saying so (the DaemonSet controller adds these tolerations).
const DAEMONSET_TOLERATES: [(&str, &str); 6] = [
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];

/// `required`: whether the policy in force requires the lock (`Err`: it could not be read or does not load).
pub fn evaluate(view: &LockView, required: &Read<bool>) -> Vec<Finding> {
    let ns = &view.namespace;
    let daemon_set = match &view.daemon_set {
        Ok(Some(daemon_set)) => daemon_set,
        Ok(None) => return vec![not_installed(ns, required)],
        Err(why) => return vec![daemon_set_unread(ns, why)],
    };
    let mut findings = Vec::new();
    if *required == Ok(false) {
        findings.push(not_required(ns, daemon_set));
    }
    let pods = match &view.pods {
        Ok(pods) => pods.as_slice(),
        Err(why) => {
            findings.push(pods_unread(ns, daemon_set, why));
            return findings;
        }
    };
    let layout = Layout::of(daemon_set);
    let no_events = Vec::new();
    let events = view.events.as_ref().unwrap_or(&no_events);
    let nodes = nodes_to_judge(&view.nodes, pods);
    let context = Context { ns, daemon_set, layout: &layout, events, node_count: nodes.len() };
    let verdicts = judge_each(&context, &nodes, pods);
    let ready = verdicts.iter().filter(|f| f.severity == Severity::Ok).count();
    let mut worst = verdicts.iter().map(|f| f.severity).max().unwrap_or(Severity::Ok);
    findings.extend(verdicts);
    let gaps = reading_gaps(view, worst);
    worst = gaps.iter().map(|f| f.severity).fold(worst, Severity::max);
    findings.extend(gaps);
    findings.push(summary(&context, ready, worst));
    findings
}

fn finding(subject: String, severity: Severity, message: String, hint: Option<String>) -> Finding {
    Finding { check: CHECK, subject, severity, message, hint }
}

/// No DaemonSet: fine, an error or unknown, as the policy requires the lock or not.
fn not_installed(ns: &str, required: &Read<bool>) -> Finding {
    match required {
        Ok(false) => finding(
            "egress lock".into(),
            Severity::Ok,
            format!("off: the policy does not require it (proxy.egressLock: off) and no tollgate-cni DaemonSet runs in {ns}"),
            None,
        ),
        Ok(true) => finding(
            "egress lock".into(),
            Severity::Error,
            format!(
                "the policy requires it (proxy.egressLock: required), but no tollgate-cni DaemonSet runs in {ns}: no node has \
                 the plugin, and every hardened pod fails its tollgate-lock-check init container"
            ),
            Some(format!(
                "helm upgrade with egressLock.enabled=true and egressLock.platform set to your nodes' ({PRESETS}); plain \
                 manifests: kubectl apply -f manifests/optional/cni.yaml. Or, to run without the lock: proxy.egressLock: off"
            )),
        ),
        Err(why) => finding(
            "egress lock".into(),
            Severity::Warning,
            format!("no tollgate-cni DaemonSet runs in {ns}; whether the policy requires the lock is not known (the policy: {why})"),
            Some("fix the policy first (its finding above); if it requires the lock, install it (egressLock.enabled)".into()),
        ),
    }
}

fn daemon_set_unread(ns: &str, why: &str) -> Finding {
    finding(
        "egress lock".into(),
        Severity::Warning,
        format!("not checked: reading the tollgate-cni DaemonSet in {ns} failed: {why}"),
        Some("run tollgate check with rights to read DaemonSets, pods and Events in tollgate's namespace, and nodes".into()),
    )
}

/// The DaemonSet runs, but the policy in force does not ask hardened pods to check for the lock.
fn not_required(ns: &str, daemon_set: &DaemonSetView) -> Finding {
    finding(
        "egress lock".into(),
        Severity::Warning,
        format!(
            "DaemonSet {ns}/{} runs, but the policy in force does not require the lock (proxy.egressLock: off): hardened \
             pods are not locked",
            daemon_set.name
        ),
        Some(
            "set proxy.egressLock: required in the policy (the chart sets it with egressLock.enabled unless \
             policy.proxy.egressLock is given); off only while the nodes are made ready"
                .into(),
        ),
    )
}

fn pods_unread(ns: &str, daemon_set: &DaemonSetView, why: &str) -> Finding {
    finding(
        format!("DaemonSet {ns}/{}", daemon_set.name),
        Severity::Warning,
        format!("not checked: reading its pods failed: {why}"),
        Some("run tollgate check with rights to list pods in tollgate's namespace".into()),
    )
}

/// The nodes to judge, by name: every node, or, where nodes cannot be read, those the pods are on.
fn nodes_to_judge(nodes: &Read<Vec<NodeView>>, pods: &[PodView]) -> Vec<NodeView> {
    let mut nodes: Vec<NodeView> = match nodes {
        Ok(nodes) => nodes.clone(),
        Err(_) => {
            let mut names: Vec<&String> = pods.iter().filter_map(|p| p.node.as_ref()).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|name| NodeView { name: name.clone(), ..NodeView::default() }).collect()
        }
    };
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// One finding per node, in the order given, each judged on the pods on it.
fn judge_each(c: &Context, nodes: &[NodeView], pods: &[PodView]) -> Vec<Finding> {
    nodes
        .iter()
        .map(|node| {
            let on_node: Vec<&PodView> = pods.iter().filter(|p| p.node.as_deref() == Some(node.name.as_str())).collect();
            let (severity, message, hint) = judge(c, node, &on_node);
            finding(format!("node {}", node.name), severity, message, hint)
        })
        .collect()
}

/// What the check could not read and what that hides: Events, when some node is not ready; nodes, always.
fn reading_gaps(view: &LockView, worst: Severity) -> Vec<Finding> {
    let mut gaps = Vec::new();
    if let (Err(why), true) = (&view.events, worst != Severity::Ok) {
        gaps.push(finding(
            "egress lock".into(),
            Severity::Warning,
            format!("Events not read ({why}): why a node's pod does not start (a missing directory, a quota) is not known"),
            Some("run tollgate check with rights to list Events in tollgate's namespace".into()),
        ));
    }
    if let Err(why) = &view.nodes {
        gaps.push(finding(
            "egress lock".into(),
            Severity::Warning,
            format!("nodes not read ({why}): a node without a lock pod is not found"),
            Some("run tollgate check with rights to list nodes".into()),
        ));
    }
    gaps
}

/// The DaemonSet's line: on how many nodes it is ready, where it puts the plugin, at the worst severity found.
fn summary(c: &Context, ready: usize, worst: Severity) -> Finding {
    finding(
        format!("DaemonSet {}/{}", c.ns, c.daemon_set.name),
        worst,
        format!("installed and ready on {ready} of {} nodes; {}", c.node_count, c.layout.describe()),
        (worst != Severity::Ok).then(|| "each node above says what it lacks and what fixes it".into()),
    )
}

/// Where the DaemonSet puts the plugin, as the node knows the paths.
struct Layout {
    platform: Option<String>,
    conf: String,
    /// The bin directory, or k3s's data directory.
    bin: String,
    k3s: bool,
}

impl Layout {
    fn of(daemon_set: &DaemonSetView) -> Layout {
        let env = |key: &str| daemon_set.env.get(key).cloned();
        let root = env(names::ENV_CNI_HOST_ROOT).unwrap_or_default();
        let on_node = |path: String| match path.strip_prefix(root.trim_end_matches('/')) {
            Some(rest) if !root.is_empty() && rest.starts_with('/') => rest.to_owned(),
            _ => path,
        };
        // The installer's defaults where the DaemonSet sets nothing (cni/src/main.rs).
        let conf = on_node(env(names::ENV_CNI_CONF_DIR).unwrap_or_else(|| names::DEFAULT_CNI_CONF_DIR.into()));
        let (bin, k3s) = match env(names::ENV_CNI_K3S_DATA_DIR) {
            Some(data) => (on_node(data), true),
            None => (on_node(env(names::ENV_CNI_BIN_DIR).unwrap_or_else(|| names::DEFAULT_CNI_BIN_DIR.into())), false),
        };
        Layout { platform: env(names::ENV_CNI_PLATFORM), conf, bin, k3s }
    }

    /// The platform and the directories.
    fn describe(&self) -> String {
        let platform = self.platform.as_deref().map(|p| format!("platform {p}: ")).unwrap_or_default();
        format!("{platform}{}", self.directories())
    }

    fn directories(&self) -> String {
        let plugins = if self.k3s { format!("k3s's CNI bin directories under {}", self.bin) } else { self.bin.clone() };
        format!("configuration in {}, plugins in {plugins}", self.conf)
    }
}

struct Context<'a> {
    ns: &'a str,
    daemon_set: &'a DaemonSetView,
    layout: &'a Layout,
    events: &'a [EventView],
    node_count: usize,
}

impl Context<'_> {
    /// The last Event of `reason` on the object, if any.
    fn event(&self, kind: &str, name: &str, reason: &str) -> Option<&EventView> {
        self.events.iter().rev().find(|e| e.kind == kind && e.name == name && e.reason == reason)
    }

    /// What fixes a node whose directories are not the DaemonSet's.
    fn directories_hint(&self, node: &NodeView) -> String {
        let current = self.layout.platform.as_deref();
        let looks_like = Distribution::of(&node.labels, &node.provider_id).preset().filter(|p| Some(*p) != current);
        let platform = match (looks_like, current) {
            (Some(preset), _) => format!("this node looks like {preset}'s: set egressLock.platform={preset}"),
            (None, Some(current)) => {
                format!("egressLock.platform is {current} ({}): set it to this node's ({PRESETS})", self.layout.directories())
            }
            (None, None) => format!("set egressLock.platform to this node's ({PRESETS})"),
        };
        format!(
            "{platform}, or egressLock.binDir and egressLock.confDir to the directories its container runtime uses (containerd: \
             the CRI plugin's cni bin_dir and conf_dir); plain manifests: TOLLGATE_CNI_CONF_DIR, TOLLGATE_CNI_BIN_DIR and the \
             hostPaths together"
        )
    }

    /// What fixes a DaemonSet whose pods the API server refuses.
    fn failed_create_hint(&self, message: &str) -> String {
        let class = self.daemon_set.priority_class.as_deref().unwrap_or("system-node-critical");
        let nodes = self.node_count;
        if message.contains("insufficient quota to match these scopes") {
            format!(
                "this cluster admits {class} pods outside kube-system only under a ResourceQuota for that class: \
                 egressLock.resourceQuota.enabled=true (egressLock.platform=gke turns it on), with egressLock.resourceQuota.pods \
                 at least the number of nodes ({nodes})"
            )
        } else if message.contains("exceeded quota") {
            format!("raise egressLock.resourceQuota.pods to at least the number of nodes ({nodes})")
        } else {
            format!("kubectl describe daemonset {} -n {}: its events say why it creates no pod", self.daemon_set.name, self.ns)
        }
    }
}

/// A verdict: its severity, message and hint.
type Verdict = (Severity, String, Option<String>);

/// One node's verdict.
fn judge(c: &Context, node: &NodeView, pods: &[&PodView]) -> Verdict {
    if let Some(pod) = pods.iter().find(|p| p.ready) {
        return (Severity::Ok, format!("the lock is installed and ready (pod {})", pod.name), None);
    }
    let Some(pod) = current(pods) else {
        return no_pod(c, node);
    };
    cannot_install(c, node, pod).or_else(|| unscheduled(c, pod)).or_else(|| failing(c, pod)).unwrap_or_else(|| not_ready_yet(c, pod))
}

/// The pod that speaks for the node: an evicted or finished pod beside the DaemonSet's current one says nothing.
fn current<'a>(pods: &[&'a PodView]) -> Option<&'a PodView> {
    pods.iter().find(|p| p.phase != "Failed" && p.phase != "Succeeded").or(pods.first()).copied()
}

/// The node lacks what the installer needs: a directory the DaemonSet mounts, or what the installer looks for.
fn cannot_install(c: &Context, node: &NodeView, pod: &PodView) -> Option<Verdict> {
    let name = &pod.name;
    // A running pod has its volumes: an earlier FailedMount is history.
    if let Some(event) = c.event("Pod", name, "FailedMount").filter(|_| pod.phase.is_empty() || pod.phase == "Pending") {
        return Some((
            Severity::Error,
            format!(
                "cannot have the lock: its pod {name} cannot start, a directory the DaemonSet mounts is not on the node: {}",
                event.message
            ),
            Some(c.directories_hint(node)),
        ));
    }
    let message = pod.terminated.as_ref()?;
    Some((
        Severity::Error,
        format!("cannot have the lock: the installer gave up (pod {name}): {}", message.trim()),
        Some(c.directories_hint(node)),
    ))
}

/// The pod waits for the scheduler.
fn unscheduled(c: &Context, pod: &PodView) -> Option<Verdict> {
    let name = &pod.name;
    let event = c.event("Pod", name, "FailedScheduling").filter(|_| pod.phase == "Pending")?;
    Some((
        Severity::Error,
        format!("no lock: its pod {name} is not scheduled: {}", event.message),
        Some(format!(
            "kubectl describe pod {name} -n {}; the DaemonSet's priorityClassName (egressLock.priorityClassName) lets it preempt",
            c.ns
        )),
    ))
}

/// The pod's container cannot pull its image, or fails and restarts.
fn failing(c: &Context, pod: &PodView) -> Option<Verdict> {
    let (name, ns) = (&pod.name, c.ns);
    let logs = || Some(format!("kubectl logs {name} -n {ns} --previous, and kubectl describe pod {name} -n {ns}"));
    match &pod.waiting {
        Some((reason, message)) if ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"].contains(&reason.as_str()) => {
            return Some((
                Severity::Error,
                format!("no lock: its pod {name} cannot pull its image ({reason}: {message})"),
                Some("the node must be able to pull image.cni (a mirror: the chart's image values; imagePullSecrets)".into()),
            ));
        }
        Some((reason, message)) if reason != "ContainerCreating" && reason != "PodInitializing" => {
            return Some((
                Severity::Error,
                format!("no lock: its pod {name} is not ready ({reason}{}{message}), restarted {} times", sep(message), pod.restarts),
                logs(),
            ));
        }
        _ => {}
    }
    (pod.restarts > 0).then(|| (Severity::Error, format!("no lock: its pod {name} is not ready, restarted {} times", pod.restarts), logs()))
}

/// Nothing wrong seen yet: the installer is still at work.
fn not_ready_yet(c: &Context, pod: &PodView) -> Verdict {
    let (name, ns) = (&pod.name, c.ns);
    (
        Severity::Warning,
        format!(
            "not ready yet (pod {name}, {}): the installer re-checks every few seconds and, when the node cannot have the \
             lock, fails after egressLock.failAfterSeconds with what it lacks",
            if pod.phase.is_empty() { "Pending" } else { &pod.phase }
        ),
        Some(format!("run tollgate check again in a minute; kubectl logs {name} -n {ns} says what it waits for")),
    )
}

fn sep(message: &str) -> &'static str {
    if message.is_empty() { "" } else { ": " }
}

/// A node the DaemonSet has no pod on: one it excludes (a taint it does not tolerate, its nodeSelector), or one
/// it could not make a pod for.
fn no_pod(c: &Context, node: &NodeView) -> Verdict {
    if let Some(taint) = node.taints.iter().find(|t| blocks(t) && !tolerated(t, &c.daemon_set.tolerations)) {
        let value = taint.value.as_deref().map(|v| format!("={v}")).unwrap_or_default();
        return (
            Severity::Warning,
            format!(
                "no lock pod: the DaemonSet does not tolerate its taint {}{value}:{}; a locked pod scheduled here will not start",
                taint.key, taint.effect
            ),
            Some(
                "if analyses may run here, tolerate the taint in egressLock.tolerations (the default, [{operator: Exists}], \
                 tolerates every taint); if not, nothing to do"
                    .into(),
            ),
        );
    }
    let unmatched: Vec<String> =
        c.daemon_set.node_selector.iter().filter(|(k, v)| node.labels.get(*k) != Some(*v)).map(|(k, v)| format!("{k}={v}")).collect();
    if !unmatched.is_empty() {
        return (
            Severity::Warning,
            format!(
                "no lock pod: egressLock.nodeSelector does not select it ({}); a locked pod scheduled here will not start",
                unmatched.join(", ")
            ),
            Some(
                "if analyses may run here, widen egressLock.nodeSelector; if not, keep them off it (the same nodeSelector on them)".into(),
            ),
        );
    }
    let failed = c.event("DaemonSet", &c.daemon_set.name, "FailedCreate");
    let why = failed.map(|e| format!("; the DaemonSet's last FailedCreate: {}", e.message)).unwrap_or_default();
    let hint = match failed {
        Some(event) => c.failed_create_hint(&event.message),
        None => format!("kubectl describe daemonset {} -n {}: its events say why it has no pod on this node", c.daemon_set.name, c.ns),
    };
    (Severity::Error, format!("no lock: the DaemonSet has no pod on this node{why}"), Some(hint))
}

/// A taint that keeps pods off the node (PreferNoSchedule only discourages).
fn blocks(taint: &Taint) -> bool {
    (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
        && !DAEMONSET_TOLERATES.iter().any(|(key, effect)| taint.key == *key && taint.effect == *effect)
}

/// Kubernetes' matching of a taint by tolerations.
fn tolerated(taint: &Taint, tolerations: &[Toleration]) -> bool {
    tolerations.iter().any(|t| {
        let effect = t.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
        let key = t.key.as_deref().unwrap_or("");
        match t.operator.as_deref() {
            Some("Exists") => effect && (key.is_empty() || key == taint.key),
            _ => effect && key == taint.key && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        }
    })
}

#[cfg(test)]
mod tests;
