//! `tollgate check --pre` on a real kube-apiserver where tollgate is not installed: the cluster serves what
//! tollgate needs, and the pods already running in a namespace it would select are judged as the webhook would
//! judge them, the ones it would refuse named with the reason.

use std::process::Command;

use tollgate_e2e::{ControlPlane, namespace, workspace_bin};

#[test]
fn before_installing_the_pods_tollgate_would_refuse_are_named_and_nothing_changes() {
    let plane = ControlPlane::start();
    namespace(&plane, "analyses", false);
    assert!(plane.kubectl(&["label", "namespace", "analyses", "tollgate.dev/inject=enabled"]).status.success());
    namespace(&plane, "elsewhere", false);
    let pod = |ns: &str, name: &str, security: &str| {
        let manifest = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"containers":[{{"name":"app","image":"registry.example/app:1"{security}}}]}}}}"#
        );
        let out = plane.kubectl_stdin(&["create", "-f", "-"], &manifest);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    };
    pod("analyses", "plain", "");
    pod("analyses", "privileged", r#","securityContext":{"privileged":true}"#);
    pod("elsewhere", "root", r#","securityContext":{"privileged":true}"#);
    let before = plane.kubectl(&["get", "pods", "-A", "-o", "json"]);

    let out = Command::new(workspace_bin("tollgate"))
        .args(["check", "--pre", "-o", "json"])
        .env("KUBECONFIG", &plane.kubeconfig)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    let findings = report["findings"].as_array().unwrap();
    let find = |check: &str, subject: &str| {
        findings.iter().find(|f| f["check"] == check && f["subject"] == subject).unwrap_or_else(|| panic!("{check} {subject}: {report:#}"))
    };
    assert_eq!(find("kubernetes-version", "cluster")["severity"], "ok");
    assert_eq!(find("admission-apis", "cluster")["severity"], "ok");
    let refused = find("would-deny", "pod analyses/privileged");
    assert!(refused["message"].as_str().unwrap().contains("privileged"), "{refused}");
    assert_eq!(
        find("selection", "namespace analyses")["message"],
        "of its 2 pods, tollgate would harden 1 and refuse 1 if they were created now"
    );
    assert!(
        findings.iter().all(|f| !f["subject"].as_str().unwrap().contains("elsewhere")),
        "an unselected namespace is left out: {report:#}"
    );
    assert_eq!(out.status.code(), Some(0), "warnings only: {report:#}");
    // Nothing was changed.
    let after = plane.kubectl(&["get", "pods", "-A", "-o", "json"]);
    let versions = |out: &std::process::Output| {
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list["items"].as_array().unwrap().iter().map(|p| p["metadata"]["resourceVersion"].clone()).collect::<Vec<_>>()
    };
    assert_eq!(versions(&before), versions(&after));
}
