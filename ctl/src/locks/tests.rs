use super::*;

fn kubeadm() -> DaemonSetView {
    let env = [
        ("TOLLGATE_CNI_PLATFORM", "kubeadm"),
        ("TOLLGATE_CNI_HOST_ROOT", "/host"),
        ("TOLLGATE_CNI_CONF_DIR", "/host/etc/cni/net.d"),
        ("TOLLGATE_CNI_BIN_DIR", "/host/opt/cni/bin"),
        ("TOLLGATE_CNI_VERIFY_BIN_DIR", "true"),
    ];
    DaemonSetView {
        name: "tollgate-cni".into(),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        node_selector: BTreeMap::new(),
        tolerations: vec![Toleration { operator: Some("Exists".into()), ..Toleration::default() }],
        priority_class: Some("system-node-critical".into()),
    }
}

fn node(name: &str) -> NodeView {
    NodeView { name: name.into(), ..NodeView::default() }
}

fn labeled(name: &str, key: &str, value: &str) -> NodeView {
    NodeView { labels: BTreeMap::from([(key.into(), value.into())]), ..node(name) }
}

fn tainted(name: &str, key: &str, effect: &str) -> NodeView {
    NodeView { taints: vec![Taint { key: key.into(), value: Some("yes".into()), effect: effect.into(), ..Taint::default() }], ..node(name) }
}

fn ready(name: &str, on: &str) -> PodView {
    PodView { name: name.into(), node: Some(on.into()), phase: "Running".into(), ready: true, ..PodView::default() }
}

fn unready(name: &str, on: &str) -> PodView {
    PodView { ready: false, ..ready(name, on) }
}

fn event(kind: &str, name: &str, reason: &str, message: &str) -> EventView {
    EventView { kind: kind.into(), name: name.into(), reason: reason.into(), message: message.into() }
}

fn installed(nodes: Vec<NodeView>, pods: Vec<PodView>, events: Vec<EventView>) -> LockView {
    LockView { namespace: "tollgate".into(), daemon_set: Ok(Some(kubeadm())), nodes: Ok(nodes), pods: Ok(pods), events: Ok(events) }
}

fn absent() -> LockView {
    LockView {
        namespace: "tollgate".into(),
        daemon_set: Ok(None),
        nodes: Err("no DaemonSet".into()),
        pods: Err("no DaemonSet".into()),
        events: Err("no DaemonSet".into()),
    }
}

/// A finding expected: its subject, severity, a part of its message, a part of its hint (`""`: none at all).
type Expected = (&'static str, Severity, &'static str, &'static str);

struct Case {
    name: &'static str,
    view: LockView,
    required: Read<bool>,
    /// Every finding, in order: nothing more is reported.
    expect: Vec<Expected>,
}

const SUMMARY: &str = "DaemonSet tollgate/tollgate-cni";
const KUBEADM: &str = "platform kubeadm: configuration in /etc/cni/net.d, plugins in /opt/cni/bin";

fn cases() -> Vec<Case> {
    use Severity::{Error, Ok as Fine, Warning};
    let quota =
        "pods \"tollgate-cni-x\" is forbidden: insufficient quota to match these scopes: [{PriorityClass In [system-node-critical]}]";
    let gave_up = "the egress lock cannot be installed on node n2: no network configuration (*.conflist, *.conf, *.json) in /etc/cni/net.d. Locked pods will not start there.";
    let mount = "MountVolume.SetUp failed for volume \"cni-conf\" : hostPath type check failed: /etc/cni/net.d is not a directory";
    vec![
        Case {
            name: "neither asked for nor installed: one line, no noise",
            view: absent(),
            required: Ok(false),
            expect: vec![("egress lock", Fine, "off: the policy does not require it", "")],
        },
        Case {
            name: "required by the policy, no DaemonSet",
            view: absent(),
            required: Ok(true),
            expect: vec![("egress lock", Error, "no tollgate-cni DaemonSet runs in tollgate", "egressLock.enabled=true")],
        },
        Case {
            name: "the policy unreadable, no DaemonSet",
            view: absent(),
            required: Err("reading it failed: forbidden".into()),
            expect: vec![("egress lock", Warning, "not known (the policy: reading it failed: forbidden)", "fix the policy first")],
        },
        Case {
            name: "the DaemonSet unreadable",
            view: LockView { daemon_set: Err("forbidden (403)".into()), ..absent() },
            required: Ok(true),
            expect: vec![(
                "egress lock",
                Warning,
                "not checked: reading the tollgate-cni DaemonSet in tollgate failed: forbidden (403)",
                "rights",
            )],
        },
        Case {
            name: "ready everywhere (Events unreadable do not matter then)",
            view: LockView {
                events: Err("forbidden".into()),
                ..installed(vec![node("n1"), node("n2")], vec![ready("tollgate-cni-a", "n1"), ready("tollgate-cni-b", "n2")], vec![])
            },
            required: Ok(true),
            expect: vec![
                ("node n1", Fine, "installed and ready (pod tollgate-cni-a)", ""),
                ("node n2", Fine, "installed and ready (pod tollgate-cni-b)", ""),
                (SUMMARY, Fine, "installed and ready on 2 of 2 nodes; platform kubeadm", ""),
            ],
        },
        Case {
            name: "installed while the policy does not require it",
            view: installed(vec![node("n1")], vec![ready("tollgate-cni-a", "n1")], vec![]),
            required: Ok(false),
            expect: vec![
                ("egress lock", Warning, "the policy in force does not require the lock", "proxy.egressLock: required"),
                ("node n1", Fine, "installed and ready", ""),
                (SUMMARY, Fine, "installed and ready on 1 of 1 nodes", ""),
            ],
        },
        Case {
            name: "a directory missing on a microk8s node: FailedMount, and the preset named",
            view: installed(
                vec![labeled("m1", "microk8s.io/cluster", "true")],
                vec![PodView {
                    phase: "Pending".into(),
                    waiting: Some(("ContainerCreating".into(), String::new())),
                    ..unready("tollgate-cni-m", "m1")
                }],
                vec![event("Pod", "tollgate-cni-m", "FailedMount", mount), event("Pod", "other", "FailedMount", "not this pod's")],
            ),
            required: Ok(true),
            expect: vec![
                (
                    "node m1",
                    Error,
                    "a directory the DaemonSet mounts is not on the node: MountVolume.SetUp failed",
                    "this node looks like microk8s's: set egressLock.platform=microk8s",
                ),
                (SUMMARY, Error, "installed and ready on 0 of 1 nodes", "each node above"),
            ],
        },
        Case {
            name: "the installer gave up: its termination message, and the platform in force",
            view: installed(
                vec![node("n2")],
                vec![PodView {
                    waiting: Some(("CrashLoopBackOff".into(), "back-off".into())),
                    terminated: Some(gave_up.into()),
                    restarts: 3,
                    ..unready("tollgate-cni-b", "n2")
                }],
                vec![],
            ),
            required: Ok(true),
            expect: vec![
                (
                    "node n2",
                    Error,
                    "the installer gave up (pod tollgate-cni-b): the egress lock cannot be installed on node n2: no network configuration",
                    "egressLock.platform is kubeadm (configuration in /etc/cni/net.d, plugins in /opt/cni/bin): set it to this node's (kubeadm, rke2, microk8s, k3s, gke), or egressLock.binDir and egressLock.confDir",
                ),
                (SUMMARY, Error, KUBEADM, "each node above"),
            ],
        },
        Case {
            name: "no pod: a taint the DaemonSet does not tolerate, one it tolerates by itself, and its nodeSelector",
            view: LockView {
                daemon_set: Ok(Some(DaemonSetView {
                    tolerations: vec![Toleration { key: Some("gpu".into()), operator: Some("Exists".into()), ..Toleration::default() }],
                    node_selector: BTreeMap::from([("tollgate.dev/lock".into(), "yes".into())]),
                    ..kubeadm()
                })),
                ..installed(
                    vec![
                        NodeView {
                            labels: BTreeMap::from([("tollgate.dev/lock".into(), "yes".into())]),
                            ..tainted("t1", "dedicated", "NoSchedule")
                        },
                        NodeView {
                            labels: BTreeMap::from([("tollgate.dev/lock".into(), "yes".into())]),
                            ..tainted("t2", "gpu", "NoExecute")
                        },
                        NodeView {
                            labels: BTreeMap::from([("tollgate.dev/lock".into(), "yes".into())]),
                            ..tainted("t3", "node.kubernetes.io/unschedulable", "NoSchedule")
                        },
                        NodeView {
                            labels: BTreeMap::from([("tollgate.dev/lock".into(), "yes".into())]),
                            ..tainted("t4", "soft", "PreferNoSchedule")
                        },
                        node("u1"),
                    ],
                    vec![ready("tollgate-cni-2", "t2")],
                    vec![],
                )
            },
            required: Ok(true),
            expect: vec![
                ("node t1", Warning, "does not tolerate its taint dedicated=yes:NoSchedule", "egressLock.tolerations"),
                ("node t2", Fine, "installed and ready", ""),
                ("node t3", Error, "no lock: the DaemonSet has no pod on this node", "kubectl describe daemonset tollgate-cni -n tollgate"),
                ("node t4", Error, "no lock: the DaemonSet has no pod on this node", "kubectl describe daemonset"),
                ("node u1", Warning, "egressLock.nodeSelector does not select it (tollgate.dev/lock=yes)", "widen egressLock.nodeSelector"),
                (SUMMARY, Error, "installed and ready on 1 of 5 nodes", "each node above"),
            ],
        },
        Case {
            name: "no pod: a managed cluster's quota for system-node-critical",
            view: installed(
                vec![node("g1"), node("g2")],
                vec![],
                vec![event("DaemonSet", "tollgate-cni", "FailedCreate", "old"), event("DaemonSet", "tollgate-cni", "FailedCreate", quota)],
            ),
            required: Ok(true),
            expect: vec![
                (
                    "node g1",
                    Error,
                    "the DaemonSet's last FailedCreate: pods \"tollgate-cni-x\" is forbidden: insufficient quota",
                    "egressLock.resourceQuota.enabled=true (egressLock.platform=gke turns it on), with egressLock.resourceQuota.pods at least the number of nodes (2)",
                ),
                ("node g2", Error, "insufficient quota", "ResourceQuota for that class"),
                (SUMMARY, Error, "installed and ready on 0 of 2 nodes", "each node above"),
            ],
        },
        Case {
            name: "a quota too small",
            view: installed(
                vec![node("g1")],
                vec![],
                vec![event("DaemonSet", "tollgate-cni", "FailedCreate", "exceeded quota: tollgate-cni-critical-pods")],
            ),
            required: Ok(true),
            expect: vec![
                ("node g1", Error, "exceeded quota", "raise egressLock.resourceQuota.pods to at least the number of nodes (1)"),
                (SUMMARY, Error, "0 of 1", "each node above"),
            ],
        },
        Case {
            name: "an image that cannot be pulled, a crash loop without a message, a pod not scheduled, one starting",
            view: installed(
                vec![node("i1"), node("c1"), node("p1"), node("s1")],
                vec![
                    PodView {
                        phase: "Pending".into(),
                        waiting: Some(("ImagePullBackOff".into(), "Back-off pulling image".into())),
                        ..unready("tollgate-cni-i", "i1")
                    },
                    PodView { waiting: Some(("CrashLoopBackOff".into(), String::new())), restarts: 4, ..unready("tollgate-cni-c", "c1") },
                    PodView { phase: "Pending".into(), ..unready("tollgate-cni-p", "p1") },
                    unready("tollgate-cni-s", "s1"),
                ],
                vec![event("Pod", "tollgate-cni-p", "FailedScheduling", "0/4 nodes are available: 1 Insufficient cpu.")],
            ),
            required: Ok(true),
            expect: vec![
                (
                    "node c1",
                    Error,
                    "is not ready (CrashLoopBackOff), restarted 4 times",
                    "kubectl logs tollgate-cni-c -n tollgate --previous",
                ),
                ("node i1", Error, "cannot pull its image (ImagePullBackOff: Back-off pulling image)", "image.cni"),
                ("node p1", Error, "is not scheduled: 0/4 nodes are available: 1 Insufficient cpu.", "egressLock.priorityClassName"),
                ("node s1", Warning, "not ready yet (pod tollgate-cni-s, Running)", "run tollgate check again in a minute"),
                (SUMMARY, Error, "installed and ready on 0 of 4 nodes", "each node above"),
            ],
        },
        Case {
            name: "history: a FailedMount before the pod ran, an evicted pod beside the current one",
            view: installed(
                vec![node("h1"), node("h2")],
                vec![
                    PodView { terminated: Some("no network configuration".into()), restarts: 1, ..unready("tollgate-cni-h", "h1") },
                    PodView { phase: "Failed".into(), ..unready("tollgate-cni-evicted", "h2") },
                    ready("tollgate-cni-h2", "h2"),
                ],
                vec![event("Pod", "tollgate-cni-h", "FailedMount", "hostPath type check failed")],
            ),
            required: Ok(true),
            expect: vec![
                (
                    "node h1",
                    Error,
                    "the installer gave up (pod tollgate-cni-h): no network configuration",
                    "egressLock.platform is kubeadm",
                ),
                ("node h2", Fine, "installed and ready (pod tollgate-cni-h2)", ""),
                (SUMMARY, Error, "installed and ready on 1 of 2 nodes", "each node above"),
            ],
        },
        Case {
            name: "an evicted pod only: not ready yet; and Events unreadable, which matters here",
            view: LockView {
                events: Err("forbidden".into()),
                ..installed(
                    vec![node("e1"), node("e2")],
                    vec![PodView { phase: "Failed".into(), ..unready("tollgate-cni-old", "e1") }, ready("tollgate-cni-e2", "e2")],
                    vec![],
                )
            },
            required: Ok(true),
            expect: vec![
                ("node e1", Warning, "not ready yet (pod tollgate-cni-old, Failed)", "run tollgate check again"),
                ("node e2", Fine, "installed and ready", ""),
                ("egress lock", Warning, "Events not read (forbidden)", "list Events"),
                (SUMMARY, Warning, "installed and ready on 1 of 2 nodes", "each node above"),
            ],
        },
        Case {
            name: "nodes unreadable: the pods' nodes are judged, and the gap said",
            view: LockView {
                nodes: Err("nodes is forbidden (403)".into()),
                events: Err("forbidden".into()),
                ..installed(
                    vec![],
                    vec![ready("tollgate-cni-a", "n1"), PodView { terminated: Some(gave_up.into()), ..unready("tollgate-cni-b", "n2") }],
                    vec![],
                )
            },
            required: Ok(true),
            expect: vec![
                ("node n1", Fine, "installed and ready", ""),
                ("node n2", Error, "the installer gave up", "egressLock.platform is kubeadm"),
                ("egress lock", Warning, "Events not read (forbidden): why a node's pod does not start", "list Events"),
                ("egress lock", Warning, "nodes not read (nodes is forbidden (403)): a node without a lock pod is not found", "list nodes"),
                (SUMMARY, Error, "installed and ready on 1 of 2 nodes", "each node above"),
            ],
        },
        Case {
            name: "k3s's layout, on a node that looks like k3s: no other preset to name",
            view: LockView {
                daemon_set: Ok(Some(DaemonSetView {
                    env: [
                        ("TOLLGATE_CNI_PLATFORM", "k3s"),
                        ("TOLLGATE_CNI_HOST_ROOT", "/host"),
                        ("TOLLGATE_CNI_CONF_DIR", "/host/var/lib/rancher/k3s/agent/etc/cni/net.d"),
                        ("TOLLGATE_CNI_K3S_DATA_DIR", "/host/var/lib/rancher/k3s/data"),
                    ]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                    ..kubeadm()
                })),
                ..installed(
                    vec![labeled("k1", "node.kubernetes.io/instance-type", "k3s")],
                    vec![PodView { terminated: Some("no network configuration".into()), ..unready("tollgate-cni-k", "k1") }],
                    vec![],
                )
            },
            required: Ok(true),
            expect: vec![
                (
                    "node k1",
                    Error,
                    "the installer gave up",
                    "egressLock.platform is k3s (configuration in /var/lib/rancher/k3s/agent/etc/cni/net.d, plugins in k3s's CNI bin directories under /var/lib/rancher/k3s/data): set it to this node's",
                ),
                (SUMMARY, Error, "plugins in k3s's CNI bin directories under /var/lib/rancher/k3s/data", "each node above"),
            ],
        },
    ]
}

#[test]
fn each_state_of_the_lock_is_judged_with_the_fix_named() {
    for case in cases() {
        let findings = evaluate(&case.view, &case.required);
        let got: Vec<(&str, Severity)> = findings.iter().map(|f| (f.subject.as_str(), f.severity)).collect();
        let want: Vec<(&str, Severity)> = case.expect.iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(got, want, "{}: {findings:#?}", case.name);
        for (finding, (_, _, message, hint)) in findings.iter().zip(&case.expect) {
            assert_eq!(finding.check, "egress-lock");
            assert!(finding.message.contains(message), "{}: {message:?} not in {:?}", case.name, finding.message);
            match (hint, &finding.hint) {
                (&"", None) => {}
                (&"", Some(h)) => panic!("{}: {} has a hint: {h}", case.name, finding.subject),
                (part, Some(h)) => assert!(h.contains(part), "{}: {part:?} not in the hint {h:?}", case.name),
                (part, None) => panic!("{}: {} has no hint, wanted {part:?}", case.name, finding.subject),
            }
        }
    }
}

#[test]
fn tolerations_match_taints_as_kubernetes_matches_them() {
    let taint = Taint { key: "k".into(), value: Some("v".into()), effect: "NoSchedule".into(), ..Taint::default() };
    let toleration = |key: Option<&str>, operator: Option<&str>, value: Option<&str>, effect: Option<&str>| Toleration {
        key: key.map(Into::into),
        operator: operator.map(Into::into),
        value: value.map(Into::into),
        effect: effect.map(Into::into),
        ..Toleration::default()
    };
    let rows = [
        (toleration(None, Some("Exists"), None, None), true),
        (toleration(Some("k"), Some("Exists"), None, None), true),
        (toleration(Some("k"), Some("Exists"), None, Some("NoExecute")), false),
        (toleration(Some("k"), None, Some("v"), Some("NoSchedule")), true),
        (toleration(Some("k"), Some("Equal"), Some("w"), None), false),
        (toleration(Some("other"), Some("Exists"), None, None), false),
        (toleration(None, Some("Equal"), None, None), false),
    ];
    for (t, expected) in rows {
        assert_eq!(tolerated(&taint, std::slice::from_ref(&t)), expected, "{t:?}");
    }
}

#[test]
fn the_current_pod_speaks_for_its_node_and_a_finished_one_only_when_alone() {
    let phase = |name: &str, phase: &str| PodView { phase: phase.into(), ..unready(name, "n1") };
    let rows: [(Vec<PodView>, Option<&str>); 5] = [
        (vec![], None),
        (vec![phase("evicted", "Failed"), phase("current", "Running")], Some("current")),
        (vec![phase("done", "Succeeded"), phase("current", "")], Some("current")),
        (vec![phase("evicted", "Failed"), phase("done", "Succeeded")], Some("evicted")),
        (vec![phase("first", "Pending"), phase("second", "Running")], Some("first")),
    ];
    for (pods, expected) in rows {
        let pods: Vec<&PodView> = pods.iter().collect();
        assert_eq!(current(&pods).map(|p| p.name.as_str()), expected, "{pods:?}");
    }
}

#[test]
fn nodes_are_judged_by_name_and_unread_ones_are_those_the_pods_are_on_once_each() {
    let names = |nodes: Vec<NodeView>| nodes.into_iter().map(|n| n.name).collect::<Vec<_>>();
    let pods = [ready("a", "n2"), unready("b", "n1"), unready("c", "n2"), PodView { node: None, ..unready("d", "n3") }];
    assert_eq!(names(nodes_to_judge(&Err("forbidden".into()), &pods)), ["n1", "n2"]);
    assert_eq!(names(nodes_to_judge(&Ok(vec![node("z"), labeled("a", "k", "v")]), &pods)), ["a", "z"]);
}
