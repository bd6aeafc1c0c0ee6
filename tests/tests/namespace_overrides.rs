//! Per-namespace decisions of the cluster's admins (issue 24, point 6) on a real kube-apiserver, with tollgate
//! registered as `manifests/` ships it: the policy's `namespaces.gpu-analyses` raises the maximum there, so a
//! pod above the policy's maximum is stored in gpu-analyses and refused elsewhere. `mallory`, who may do what
//! she likes with pods and ConfigMaps in her namespace and may even annotate and label her Namespace object,
//! cannot grant herself an override: she cannot write the policy's ConfigMap in tollgate's namespace, and
//! nothing she may write (a ConfigMap named like the policy's, her Namespace's annotations and labels)
//! changes what tollgate decides. Once the admin adds her namespace to the policy, the same pod is stored.
//! `tollgate check` reports each override with what it changes; `tollgate check --proxy` holds the pods to
//! the policy's digest, which covers the overrides.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tollgate_e2e::{ControlPlane, Webhook, namespace, settled, workspace_bin};
use tollgate_testkit::text;

const GPU: &str = "namespaces:
  gpu-analyses:
    resources:
      maximum: { cpu: \"32\", memory: 256Gi, ephemeral-storage: 50Gi, nvidia.com/gpu: \"8\" }
    lifetime: { activeDeadlineSeconds: 604800 }
";

/// The same, and `analyses` too: what only the admin can make of the policy.
const GPU_AND_ANALYSES: &str = "namespaces:
  gpu-analyses:
    resources:
      maximum: { cpu: \"32\", memory: 256Gi, ephemeral-storage: 50Gi, nvidia.com/gpu: \"8\" }
    lifetime: { activeDeadlineSeconds: 604800 }
  analyses:
    resources:
      maximum: { cpu: \"16\", memory: 64Gi, ephemeral-storage: 50Gi }
";

const ABOVE_MAXIMUM: &str = "resources.limits.cpu 16 is above the maximum 8 [resources-exceed-maximum]";

/// A pod asking for 16 CPUs: twice the policy's maximum.
fn big_pod(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"restartPolicy":"Never",
"containers":[{{"name":"train","image":"registry.example.org/train:1.0","resources":{{"requests":{{"cpu":"16","memory":"8Gi"}},"limits":{{"cpu":"16","memory":"8Gi"}}}}}}]}}}}"#
    )
}

/// `kubectl create` of `manifest` in `namespace` with `kubeconfig`, retrying briefly while the webhook's
/// registration settles; whether it was stored, and what kubectl said.
fn create(plane: &ControlPlane, kubeconfig: &Path, namespace: &str, manifest: &str) -> (bool, String) {
    let out = settled(|| plane.kubectl_stdin_as(kubeconfig, &["create", "-n", namespace, "-f", "-"], manifest));
    (out.status.success(), text(&out))
}

fn stored(plane: &ControlPlane, namespace: &str, name: &str) -> serde_json::Value {
    let out = plane.kubectl(&["get", "pod", name, "-n", namespace, "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The policy as the chart keeps it: the ConfigMap tollgate-policy in tollgate's namespace, which the webhook's
/// pods mount; here also written to the local webhook's policy file, as the kubelet would.
fn set_policy(plane: &ControlPlane, webhook: &Webhook, yaml: &str) {
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "tollgate-policy", "namespace": "tollgate"},
        "data": {"policy.yaml": yaml},
    });
    plane.apply(&manifest.to_string());
    std::fs::write(plane.dir.path().join(format!("policy-{}.yaml", webhook.port)), yaml).unwrap();
}

fn check(plane: &ControlPlane, args: &[&str]) -> serde_json::Value {
    let out = Command::new(workspace_bin("tollgate"))
        .arg("check")
        .args(args)
        .args(["-o", "json"])
        .env("KUBECONFIG", &plane.kubeconfig)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

fn findings<'a>(report: &'a serde_json::Value, check: &str) -> Vec<&'a serde_json::Value> {
    report["findings"].as_array().unwrap().iter().filter(|f| f["check"] == check).collect()
}

#[test]
fn a_namespace_gets_its_admins_override_and_its_users_cannot_grant_themselves_one() {
    let plane = ControlPlane::start();
    let webhook = Webhook::start_with_policy(&plane, GPU);
    namespace(&plane, "tollgate", false);
    namespace(&plane, "gpu-analyses", true);
    namespace(&plane, "analyses", true);
    set_policy(&plane, &webhook, GPU);
    // mallory: pods and ConfigMaps in analyses, and her own Namespace object (more than a namespace's user
    // usually gets); nothing in tollgate's namespace or gpu-analyses.
    plane.apply(
        r#"{"apiVersion":"v1","kind":"List","items":[
{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{"name":"analyst","namespace":"analyses"},"rules":[
  {"apiGroups":[""],"resources":["pods","configmaps"],"verbs":["*"]}]},
{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"mallory","namespace":"analyses"},
  "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"analyst"},
  "subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"mallory"}]},
{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"own-namespace-analyses"},"rules":[
  {"apiGroups":[""],"resources":["namespaces"],"resourceNames":["analyses"],"verbs":["get","patch","update"]}]},
{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"mallory-own-namespace"},
  "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"own-namespace-analyses"},
  "subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"mallory"}]}]}"#,
    );
    let mallory = plane.user_kubeconfig("mallory", &["analysts"]);
    let admin = plane.kubeconfig.clone();

    // The override: above the policy's maximum, stored in gpu-analyses, with its lifetime.
    let (ok, out) = create(&plane, &admin, "gpu-analyses", &big_pod("train"));
    assert!(ok, "{out}");
    let pod = stored(&plane, "gpu-analyses", "train");
    assert_eq!(pod["spec"]["containers"][0]["resources"]["limits"]["cpu"], "16");
    assert_eq!(pod["spec"]["activeDeadlineSeconds"], 604800);
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "tollgate-proxy", "hardened as anywhere");
    let status: serde_json::Value = serde_json::from_str(pod["metadata"]["annotations"]["tollgate.dev/status"].as_str().unwrap()).unwrap();
    let policy_file = plane.dir.path().join(format!("policy-{}.yaml", webhook.port));
    let out = Command::new(workspace_bin("tollgate-webhook")).arg("check-policy").arg(&policy_file).output().unwrap();
    let digest = text(&out).split("(digest ").nth(1).unwrap().split(')').next().unwrap().to_owned();
    assert_eq!(status["policy"], digest.as_str(), "the policy's digest, overrides included");
    // Elsewhere the policy's maximum: refused, for the admin as for mallory.
    for kubeconfig in [&admin, &mallory] {
        let (ok, out) = create(&plane, kubeconfig, "analyses", &big_pod("train"));
        assert!(!ok && out.contains(ABOVE_MAXIMUM), "{out}");
    }

    // mallory cannot write the policy, nor create pods where the override is.
    for args in [
        vec![
            "patch",
            "configmap",
            "tollgate-policy",
            "-n",
            "tollgate",
            "--type=merge",
            "-p",
            r#"{"data":{"policy.yaml":"namespaces: {analyses: {resources: {maximum: {cpu: '64'}}}}"}"#,
        ],
        vec!["create", "configmap", "tollgate-policy-2", "-n", "tollgate", "--from-literal=policy.yaml=onViolation: warn"],
        vec!["delete", "configmap", "tollgate-policy", "-n", "tollgate"],
        vec!["run", "sneak", "-n", "gpu-analyses", "--image=registry.example.org/train:1.0", "--restart=Never"],
    ] {
        let out = plane.kubectl_as(&mallory, &args);
        assert!(!out.status.success() && text(&out).to_lowercase().contains("forbidden"), "{args:?}: {}", text(&out));
    }
    let out = plane.kubectl_as(&mallory, &["auth", "can-i", "update", "configmap/tollgate-policy", "-n", "tollgate"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");

    // What she may write changes nothing: a ConfigMap named like the policy's in her namespace, and her
    // Namespace's annotations and labels (tollgate reads neither; the namespace's name alone chooses).
    let own = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tollgate-policy"},
        "data": {"policy.yaml": "namespaces: {analyses: {resources: {maximum: {cpu: '64'}}}}"},
    });
    let out = plane.kubectl_stdin_as(&mallory, &["apply", "-n", "analyses", "-f", "-"], &own.to_string());
    assert!(out.status.success(), "{}", text(&out));
    for args in [
        vec!["annotate", "namespace", "analyses", "tollgate.dev/policy=namespaces: {analyses: {resources: {maximum: {cpu: '64'}}}}"],
        vec!["annotate", "namespace", "analyses", "tollgate.dev/resources-maximum-cpu=64", "tollgate.dev/namespace-policy=gpu-analyses"],
        vec!["label", "namespace", "analyses", "tollgate.dev/policy=gpu-analyses", "tollgate.dev/namespace=gpu-analyses"],
    ] {
        let out = plane.kubectl_as(&mallory, &args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    // Given time to take effect, were anything to read them: still refused.
    std::thread::sleep(Duration::from_secs(2));
    let (ok, out) = create(&plane, &mallory, "analyses", &big_pod("train"));
    assert!(!ok && out.contains(ABOVE_MAXIMUM), "{out}");
    let (ok, out) = create(&plane, &mallory, "analyses", &big_pod("small").replace("\"16\"", "\"2\""));
    assert!(ok, "a pod within the maximum is hardened and stored: {out}");

    // tollgate check reports the override, saying what it changes, and none for analyses.
    let report = check(&plane, &[]);
    let overrides = findings(&report, "namespace-override");
    assert_eq!(overrides.len(), 1, "{report:#}");
    assert_eq!(overrides[0]["subject"], "namespace gpu-analyses");
    assert_eq!(overrides[0]["severity"], "ok", "{:#}", overrides[0]);
    assert_eq!(
        overrides[0]["message"],
        "the policy overrides for its pods (namespaces.gpu-analyses): lifetime.activeDeadlineSeconds: 86400 → 604800; resources.maximum.cpu: 8 → 32; resources.maximum.memory: 64Gi → 256Gi; resources.maximum.nvidia.com/gpu: 2 → 8"
    );
    // ... and the pod in gpu-analyses runs what tollgate injects today.
    let report = check(&plane, &["--proxy"]);
    let summary = findings(&report, "proxies");
    assert_eq!(summary[0]["message"], "2 of 2 pods run the proxy tollgate injects today", "{report:#}");

    // The admin gives analyses an override: the same pod of mallory's is stored now.
    set_policy(&plane, &webhook, GPU_AND_ANALYSES);
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let (ok, out) = create(&plane, &mallory, "analyses", &big_pod("train"));
        if ok {
            break out;
        }
        assert!(out.contains(ABOVE_MAXIMUM) && Instant::now() < deadline, "the admin's override did not apply: {out}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(out.contains("pod/train created"), "{out}");
    assert_eq!(stored(&plane, "analyses", "train")["spec"]["containers"][0]["resources"]["limits"]["cpu"], "16");
    let report = check(&plane, &[]);
    let subjects: Vec<&str> = findings(&report, "namespace-override").iter().map(|f| f["subject"].as_str().unwrap()).collect();
    assert_eq!(subjects, ["namespace analyses", "namespace gpu-analyses"], "{report:#}");
    // The digest covers the whole policy: the pods admitted before the change are listed as admitted under
    // another policy (the cautious way: never one too few), the new one is not.
    let report = check(&plane, &["--proxy"]);
    let mut stale: Vec<&str> = findings(&report, "proxy").iter().map(|f| f["subject"].as_str().unwrap()).collect();
    stale.sort_unstable();
    assert_eq!(stale, ["pod analyses/small", "pod gpu-analyses/train"], "{report:#}");
    assert!(findings(&report, "proxy")[0]["message"].as_str().unwrap().contains("hardened under policy"), "{report:#}");
}
