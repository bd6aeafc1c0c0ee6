//! `tollgate check` on a real kube-apiserver, for the egress lock: with no lock asked for, one line that says it
//! is off; asked for by the policy with no DaemonSet, a failure; with the chart's DaemonSet (egressLock.enabled,
//! rendered by `helm template`) and its pods on four nodes, each node named with its verdict and what fixes it:
//! ready; the installer gave up (the termination message the real installer writes); a node directory missing
//! (a FailedMount Event, on a node that says it is microk8s's); no pod at all (the API server refusing the
//! DaemonSet's pods for want of a ResourceQuota for system-node-critical). No kubelet: the pods are bound to the
//! Node objects and their status written through the status subresource, as a kubelet would.

use std::process::Command;

use serde_json::{Value, json};
use tollgate_e2e::{ControlPlane, Webhook, namespace, workspace_bin};
use tollgate_testkit::text;

fn check(plane: &ControlPlane, json_output: bool) -> (Option<i32>, String) {
    check_as(&plane.kubeconfig, json_output)
}

fn check_as(kubeconfig: &std::path::Path, json_output: bool) -> (Option<i32>, String) {
    let mut command = Command::new(workspace_bin("tollgate"));
    command.arg("check").env("KUBECONFIG", kubeconfig);
    if json_output {
        command.args(["-o", "json"]);
    }
    let out = command.output().unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

fn checked(plane: &ControlPlane) -> (Option<i32>, Value) {
    let (code, stdout) = check(plane, true);
    (code, serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}")))
}

fn locks(report: &Value) -> Vec<&Value> {
    report["findings"].as_array().unwrap().iter().filter(|f| f["check"] == "egress-lock").collect()
}

fn lock<'a>(report: &'a Value, subject: &str) -> &'a Value {
    locks(report)
        .into_iter()
        .find(|f| f["subject"] == subject)
        .unwrap_or_else(|| panic!("no egress-lock finding for {subject}: {report:#}"))
}

fn contains(finding: &Value, field: &str, part: &str) {
    let text = finding[field].as_str().unwrap_or_else(|| panic!("no {field}: {finding:#}"));
    assert!(text.contains(part), "{part:?} not in the {field}: {finding:#}");
}

fn policy(plane: &ControlPlane, yaml: &str) {
    plane.apply(
        &json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "tollgate-policy", "namespace": "tollgate"},
            "data": {"policy.yaml": yaml},
        })
        .to_string(),
    );
}

/// The objects of one of the chart's templates, as `helm template` renders them with the egress lock on.
fn rendered(template: &str) -> Vec<Value> {
    let out = Command::new(tollgate_e2e::bin_dir().join("helm"))
        .args(["template", "tollgate"])
        .arg(tollgate_e2e::chart_files::chart_dir())
        .args(["-n", "tollgate", "--set", "egressLock.enabled=true", "--show-only", template])
        .output()
        .unwrap();
    assert!(out.status.success(), "helm template: {}", text(&out));
    let stream = String::from_utf8(out.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&stream)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|o| !o.is_null())
        .collect()
}

/// The chart's DaemonSet.
fn rendered_daemon_set() -> Value {
    rendered("templates/cni.yaml").into_iter().find(|o| o["kind"] == "DaemonSet").expect("the chart renders the DaemonSet")
}

/// A user with exactly the rights `helm test` gives `tollgate check` (the chart's tests/check.yaml), bound to
/// a user instead of the test pod's ServiceAccount: its kubeconfig.
fn helm_test_rights(plane: &ControlPlane) -> std::path::PathBuf {
    let user = json!([{"kind": "User", "name": "tollgate-test", "apiGroup": "rbac.authorization.k8s.io"}]);
    for mut object in rendered("templates/tests/check.yaml") {
        let kind = object["kind"].as_str().unwrap().to_owned();
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or("tollgate").to_owned();
        if !["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"].contains(&kind.as_str()) || namespace != "tollgate" {
            continue;
        }
        if kind.ends_with("Binding") {
            object["subjects"] = user.clone();
        }
        object["metadata"]["annotations"] = json!({});
        plane.apply(&object.to_string());
    }
    plane.user_kubeconfig("tollgate-test", &[])
}

/// The message the installer leaves in its termination log on a node whose configuration directory is empty:
/// the real installer, run with the DaemonSet's environment on a copy of such a node's directories.
fn installer_gives_up(plane: &ControlPlane, daemon_set: &Value, node: &str) -> String {
    let host = plane.dir.path().join("node-host");
    std::fs::create_dir_all(host.join("etc/cni/net.d")).unwrap();
    std::fs::create_dir_all(host.join("opt/cni/bin")).unwrap();
    let log = plane.dir.path().join("termination-log");
    std::fs::write(&log, "").unwrap();
    let mut installer = Command::new(workspace_bin("tollgate-cni"));
    installer.args(["install", "--once", "--termination-log"]).arg(&log).env("NODE_NAME", node);
    for var in daemon_set["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap() {
        let (name, value) = (var["name"].as_str().unwrap(), var["value"].as_str());
        if let (true, Some(value)) = (name.starts_with("TOLLGATE_CNI_"), value) {
            // Each node path P is mounted at /host/P: here, under the copy of the node.
            let value = match value.strip_prefix("/host") {
                Some(rest) => format!("{}{rest}", host.display()),
                None => value.to_owned(),
            };
            installer.env(name, value);
        }
    }
    let out = installer.output().unwrap();
    assert!(!out.status.success(), "the installer found nothing to chain into, and says so: {}", text(&out));
    let message = std::fs::read_to_string(&log).unwrap();
    assert!(message.contains("no CNI network configuration in /etc/cni/net.d"), "{message}");
    message
}

fn node(plane: &ControlPlane, name: &str, labels: Value) {
    plane.apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}).to_string());
}

/// A pod of the DaemonSet bound to `node`, with `status` written as the node's kubelet would.
fn lock_pod(plane: &ControlPlane, daemon_set: &Value, name: &str, node: &str, status: Value) {
    let template = &daemon_set["spec"]["template"];
    let mut spec = template["spec"].clone();
    spec["nodeName"] = node.into();
    plane.apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "tollgate", "labels": template["metadata"]["labels"]},
            "spec": spec,
        })
        .to_string(),
    );
    let patch = json!({ "status": status }).to_string();
    let out = plane.kubectl(&["patch", "pod", name, "-n", "tollgate", "--subresource=status", "--type=merge", "-p", &patch]);
    assert!(out.status.success(), "{name}'s status: {}", text(&out));
}

fn ready() -> Value {
    json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "install", "image": "tollgate-cni", "imageID": "", "ready": true, "restartCount": 0,
                               "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}],
    })
}

fn event(plane: &ControlPlane, name: &str, kind: &str, object: &str, reason: &str, message: &str) {
    plane.apply(
        &json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": "tollgate"},
            "involvedObject": {"kind": kind, "name": object, "namespace": "tollgate"},
            "reason": reason, "message": message, "type": "Warning", "count": 3,
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:05:00Z",
        })
        .to_string(),
    );
}

#[test]
fn each_node_is_named_with_whether_the_egress_lock_is_ready_and_what_fixes_it() {
    let plane = ControlPlane::start();
    let webhook = Webhook::start(&plane);
    namespace(&plane, "tollgate", false);
    // The rest of the install as `tollgate check` wants it, so that its exit code is the egress lock's.
    let out = plane.kubectl(&[
        "create",
        "secret",
        "generic",
        "tollgate-webhook-tls",
        "-n",
        "tollgate",
        &format!("--from-file=tls.crt={}", webhook.certs.join("tls.crt").display()),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new(workspace_bin("tollgate-webhook")).arg("default-policy").output().unwrap();
    let default_policy = String::from_utf8(out.stdout).unwrap();
    assert!(default_policy.contains("egressLock: off"), "{default_policy}");
    policy(&plane, &default_policy);

    // Not asked for, not installed: one line, and nothing wrong.
    let (code, report) = checked(&plane);
    let only = locks(&report);
    assert_eq!(only.len(), 1, "{report:#}");
    assert_eq!((only[0]["subject"].as_str(), only[0]["severity"].as_str()), (Some("egress lock"), Some("ok")));
    contains(only[0], "message", "off: the policy does not require it");
    assert_eq!(report["errors"], 0, "{report:#}");
    assert_eq!(code, Some(0), "{report:#}");

    // Required by the policy, with no DaemonSet: every hardened pod would fail its lock check.
    policy(&plane, &default_policy.replace("egressLock: off", "egressLock: required"));
    let (code, report) = checked(&plane);
    let missing = lock(&report, "egress lock");
    assert_eq!(missing["severity"], "error", "{report:#}");
    contains(missing, "message", "no tollgate-cni DaemonSet runs in tollgate");
    contains(missing, "hint", "egressLock.enabled=true");
    assert_eq!(code, Some(1), "{report:#}");

    // The chart's DaemonSet, and four nodes.
    let daemon_set = rendered_daemon_set();
    plane.apply(&daemon_set.to_string());
    node(&plane, "node-ready", json!({}));
    node(&plane, "node-crashed", json!({}));
    node(&plane, "node-mount", json!({"microk8s.io/cluster": "true"}));
    node(&plane, "node-empty", json!({}));
    lock_pod(&plane, &daemon_set, "tollgate-cni-ready", "node-ready", ready());
    let gave_up = installer_gives_up(&plane, &daemon_set, "node-crashed");
    lock_pod(
        &plane,
        &daemon_set,
        "tollgate-cni-crashed",
        "node-crashed",
        json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "install", "image": "tollgate-cni", "imageID": "", "ready": false, "restartCount": 3,
                                   "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
                                   "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": gave_up}}}],
        }),
    );
    lock_pod(
        &plane,
        &daemon_set,
        "tollgate-cni-mount",
        "node-mount",
        json!({
            "phase": "Pending",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "install", "image": "tollgate-cni", "imageID": "", "ready": false, "restartCount": 0,
                                   "state": {"waiting": {"reason": "ContainerCreating"}}}],
        }),
    );
    event(
        &plane,
        "tollgate-cni-mount.1",
        "Pod",
        "tollgate-cni-mount",
        "FailedMount",
        "MountVolume.SetUp failed for volume \"cni-conf\" : hostPath type check failed: /etc/cni/net.d is not a directory",
    );
    event(
        &plane,
        "tollgate-cni.1",
        "DaemonSet",
        "tollgate-cni",
        "FailedCreate",
        "Error creating: pods \"tollgate-cni-x7k2p\" is forbidden: insufficient quota to match these scopes: [{PriorityClass In [system-node-critical]}]",
    );

    let (code, report) = checked(&plane);
    let subjects: Vec<&str> = locks(&report).iter().map(|f| f["subject"].as_str().unwrap()).collect();
    assert_eq!(
        subjects,
        ["node node-crashed", "node node-empty", "node node-mount", "node node-ready", "DaemonSet tollgate/tollgate-cni"],
        "each node once, then the DaemonSet: {report:#}"
    );
    let ready_node = lock(&report, "node node-ready");
    assert_eq!(ready_node["severity"], "ok");
    contains(ready_node, "message", "installed and ready (pod tollgate-cni-ready)");

    let crashed = lock(&report, "node node-crashed");
    assert_eq!(crashed["severity"], "error");
    contains(
        crashed,
        "message",
        "the installer gave up (pod tollgate-cni-crashed): the egress lock cannot be installed on node node-crashed",
    );
    contains(crashed, "message", "no CNI network configuration in /etc/cni/net.d");
    contains(crashed, "hint", "egressLock.platform is kubeadm (configuration in /etc/cni/net.d, plugins in /opt/cni/bin)");
    contains(crashed, "hint", "egressLock.binDir and egressLock.confDir");

    let mount = lock(&report, "node node-mount");
    assert_eq!(mount["severity"], "error");
    contains(mount, "message", "its pod tollgate-cni-mount cannot start, a directory the DaemonSet mounts is not on the node");
    contains(mount, "message", "/etc/cni/net.d is not a directory");
    contains(mount, "hint", "this node looks like microk8s's: set egressLock.platform=microk8s");

    let empty = lock(&report, "node node-empty");
    assert_eq!(empty["severity"], "error");
    contains(empty, "message", "no lock: the DaemonSet has no pod on this node");
    contains(empty, "message", "insufficient quota to match these scopes");
    contains(empty, "hint", "egressLock.resourceQuota.enabled=true");
    contains(empty, "hint", "the number of nodes (4)");

    let summary = lock(&report, "DaemonSet tollgate/tollgate-cni");
    assert_eq!(summary["severity"], "error");
    contains(
        summary,
        "message",
        "installed and ready on 1 of 4 nodes; platform kubeadm: configuration in /etc/cni/net.d, plugins in /opt/cni/bin",
    );
    assert_eq!(code, Some(1), "{report:#}");

    // The same as an admin reads it.
    let (code, text_report) = check(&plane, false);
    eprintln!("{text_report}");
    assert_eq!(code, Some(1));
    for line in [
        "[ok  ] egress-lock          node node-ready: the lock is installed and ready (pod tollgate-cni-ready)",
        "[FAIL] egress-lock          node node-mount: cannot have the lock",
        "       hint: this node looks like microk8s's: set egressLock.platform=microk8s",
        "[FAIL] egress-lock          DaemonSet tollgate/tollgate-cni: installed and ready on 1 of 4 nodes",
    ] {
        assert!(text_report.contains(line), "{line:?} not in:\n{text_report}");
    }

    // `helm test` sees the same: the rights the chart gives it read the DaemonSet, its pods, their Events and
    // the nodes.
    let (_, limited) = check_as(&helm_test_rights(&plane), true);
    let limited: Value = serde_json::from_str(&limited).unwrap_or_else(|e| panic!("{e}: {limited}"));
    assert_eq!(locks(&limited), locks(&report), "with helm test's rights: {limited:#}");

    // Every node repaired: the lock's findings are all ok, and so is the exit code.
    for (pod, node) in [("tollgate-cni-crashed", "node-crashed"), ("tollgate-cni-mount", "node-mount")] {
        let patch = json!({ "status": ready() }).to_string();
        let out = plane.kubectl(&["patch", "pod", pod, "-n", "tollgate", "--subresource=status", "--type=merge", "-p", &patch]);
        assert!(out.status.success(), "{node}: {}", text(&out));
    }
    lock_pod(&plane, &daemon_set, "tollgate-cni-empty", "node-empty", ready());
    let (code, report) = checked(&plane);
    assert!(locks(&report).iter().all(|f| f["severity"] == "ok"), "{report:#}");
    contains(lock(&report, "DaemonSet tollgate/tollgate-cni"), "message", "installed and ready on 4 of 4 nodes");
    assert_eq!(code, Some(0), "{report:#}");
}
