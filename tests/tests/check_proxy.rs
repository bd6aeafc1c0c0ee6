//! `tollgate check --proxy` on a real kube-apiserver: pods tollgate hardened under another policy or proxy
//! image, and pods in a selected namespace tollgate never saw, are listed with the command that fixes each.

use std::process::Command;

use tollgate_e2e::{ControlPlane, Webhook, namespace, workspace_bin};

fn check(plane: &ControlPlane) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(workspace_bin("tollgate"))
        .args(["check", "--proxy", "-o", "json"])
        .env("KUBECONFIG", &plane.kubeconfig)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), report)
}

fn finding<'a>(report: &'a serde_json::Value, subject: &str) -> Option<&'a serde_json::Value> {
    report["findings"].as_array().unwrap().iter().find(|f| f["subject"] == subject)
}

fn policy_config_map(plane: &ControlPlane, yaml: &str) {
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "tollgate-policy", "namespace": "tollgate"},
        "data": {"policy.yaml": yaml},
    });
    let out = plane.kubectl_stdin(&["apply", "-f", "-"], &manifest.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn pod(plane: &ControlPlane, ns: &str, name: &str) {
    let manifest = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"containers":[{{"name":"app","image":"registry.example/app:1"}}]}}}}"#
    );
    let out = plane.kubectl_stdin(&["create", "-f", "-"], &manifest);
    assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn stale_and_unseen_pods_are_listed_with_the_command_that_fixes_each() {
    let plane = ControlPlane::start();
    let _webhook = Webhook::start(&plane);
    namespace(&plane, "tollgate", false);
    // The policy the webhook runs (the embedded default), as the chart would put it in its ConfigMap.
    let out = Command::new(workspace_bin("tollgate-webhook")).arg("default-policy").output().unwrap();
    let default_policy = String::from_utf8(out.stdout).unwrap();
    policy_config_map(&plane, &default_policy);
    // A pod created before its namespace was selected: tollgate never saw it.
    namespace(&plane, "analyses", false);
    pod(&plane, "analyses", "before");
    namespace(&plane, "analyses", true);
    pod(&plane, "analyses", "hardened");

    let (code, report) = check(&plane);
    assert!(finding(&report, "pod analyses/hardened").is_none(), "an up-to-date pod is not listed: {report:#}");
    let unseen = finding(&report, "pod analyses/before").unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(unseen["severity"], "error");
    assert!(unseen["message"].as_str().unwrap().contains("never saw"), "{unseen}");
    assert_eq!(unseen["hint"], "kubectl delete pod before -n analyses, then create it again");
    assert_eq!(finding(&report, "selected namespaces").unwrap()["message"], "1 of 2 pods run the proxy tollgate injects today");
    assert_eq!(code, Some(1), "{report:#}");

    // helm upgrade changes the proxy image: the running pod keeps the old one, and says so.
    assert!(plane.kubectl(&["delete", "pod", "before", "-n", "analyses", "--wait=false"]).status.success());
    let upgraded = format!("{default_policy}\n");
    let upgraded = upgraded.replacen("image: ghcr.io/privateaim/tollgate-proxy:", "image: ghcr.io/privateaim/tollgate-proxy:9.9.9-", 1);
    assert_ne!(upgraded, default_policy, "the default policy names the proxy image");
    policy_config_map(&plane, &upgraded);
    let (_, report) = check(&plane);
    let stale = finding(&report, "pod analyses/hardened").unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(stale["severity"], "warning");
    let message = stale["message"].as_str().unwrap();
    assert!(
        message.contains("the policy injects ghcr.io/privateaim/tollgate-proxy:9.9.9-") && message.contains("hardened under policy"),
        "{message}"
    );
    assert_eq!(stale["hint"], "kubectl delete pod hardened -n analyses, then create it again");
}
