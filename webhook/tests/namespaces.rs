//! Per-namespace decisions of the cluster's admins (`namespaces:` in the policy): a namespace's pods get its
//! override, every other namespace the policy; the namespace is the admission request's, whatever the pod or
//! its Namespace says; the status records the policy's digest; reloads, updates, the warn endpoint, large
//! reviews and offline injection go by the same effective policy.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::net::{Client, TestCa, request};
use serde_json::{Value, json};
use tollgate_webhook::harden::Rule;
use tollgate_webhook::policy::Policy;
use tollgate_webhook::review::{ReviewOutcome, review, review_in};
use tollgate_webhook::server::{ServeConfig, Server};
use tollgate_webhook::workload::{ObjectReport, inject, inject_in};

const POLICY: &str = r#"
namespaces:
  gpu-analyses:
    resources:
      maximum: { cpu: 32, memory: 256Gi, ephemeral-storage: 50Gi, nvidia.com/gpu: 8 }
    lifetime: { activeDeadlineSeconds: 604800 }
  trial:
    onViolation: warn
    security: { readOnlyRootFilesystem: false }
  lenient:
    onViolation: override
    resources: { onExceed: clamp }
"#;

fn policy() -> Policy {
    Policy::from_yaml(POLICY).unwrap()
}

/// A bare pod asking for `cpu` and `gpus`, as kubectl sends it (no namespace of its own).
fn pod(cpu: &str, gpus: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "train"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "train",
                "image": "registry.example.org/train:1.0",
                "resources": {
                    "requests": {"cpu": cpu, "memory": "8Gi", "nvidia.com/gpu": gpus},
                    "limits": {"cpu": cpu, "memory": "8Gi", "nvidia.com/gpu": gpus}
                }
            }]
        }
    })
}

/// An AdmissionReview of `operation` on a pod in `namespace`, as kube-apiserver sends it.
fn body(namespace: &str, operation: &str, subresource: &str, object: &Value, old: &Value) -> Vec<u8> {
    let mut request = json!({
        "uid": "u1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace,
        "name": "train",
        "operation": operation,
        "userInfo": {"username": "analyst", "groups": ["system:authenticated"]},
        "object": object,
        "oldObject": old,
        "dryRun": false
    });
    if !subresource.is_empty() {
        request["subResource"] = json!(subresource);
    }
    serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})).unwrap()
}

fn create(namespace: &str, object: &Value) -> Vec<u8> {
    body(namespace, "CREATE", "", object, &Value::Null)
}

/// The response of a review, and its JSONPatch applied to `object` where there is one.
fn answer(reply: &[u8], object: &Value) -> (Value, Value) {
    let response = serde_json::from_slice::<Value>(reply).unwrap()["response"].clone();
    let mut patched = object.clone();
    if let Some(patch) = response["patch"].as_str() {
        let patch: json_patch::Patch = serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(patch).unwrap()).unwrap();
        json_patch::patch(&mut patched, &patch).unwrap();
    }
    (response, patched)
}

fn status(pod: &Value) -> Value {
    serde_json::from_str(pod["metadata"]["annotations"]["tollgate.dev/status"].as_str().unwrap()).unwrap()
}

fn message(response: &Value) -> &str {
    response["status"]["message"].as_str().unwrap_or("")
}

#[test]
fn a_namespace_with_an_override_gets_its_maximum_and_every_other_the_policys() {
    let policy = policy();
    let big = pod("16", "4");
    let (reply, summary) = review(&policy, &create("gpu-analyses", &big)).unwrap();
    let (response, stored) = answer(&reply, &big);
    assert_eq!((response["allowed"].as_bool(), summary.outcome), (Some(true), ReviewOutcome::Patched), "{response}");
    assert_eq!(stored["spec"]["containers"][0]["resources"]["limits"]["cpu"], "16");
    assert_eq!(stored["spec"]["activeDeadlineSeconds"], 604800, "the namespace's lifetime");
    assert_eq!(stored["spec"]["initContainers"][0]["name"], "tollgate-proxy", "hardened as anywhere");
    // The digest of the policy as a whole: what `tollgate check --proxy` compares every pod with.
    assert_eq!(status(&stored)["policy"], policy.digest());

    for namespace in ["analyses", "gpu-analyses-2", "gpu", ""] {
        let (reply, summary) = review(&policy, &create(namespace, &big)).unwrap();
        let (response, _) = answer(&reply, &big);
        assert_eq!(response["allowed"], false, "{namespace}: {response}");
        assert!(summary.denied_rules.iter().all(|r| *r == Rule::ResourcesExceedMaximum), "{namespace}: {:?}", summary.denied_rules);
        for part in [r#"container "train": resources.limits.cpu 16 is above the maximum 8"#, "nvidia.com/gpu 4 is above the maximum 2"] {
            assert!(message(&response).contains(part), "{namespace}: {}", message(&response));
        }
    }
    // Above the namespace's own maximum: denied there too, naming its maximum.
    let huge = pod("64", "1");
    let (reply, _) = review(&policy, &create("gpu-analyses", &huge)).unwrap();
    let (response, _) = answer(&reply, &huge);
    assert!(message(&response).contains("resources.limits.cpu 64 is above the maximum 32"), "{response}");
}

#[test]
fn only_the_requests_namespace_chooses_not_the_pod_nor_anything_it_carries() {
    let policy = policy();
    let mut claiming = pod("16", "1");
    claiming["metadata"]["namespace"] = json!("gpu-analyses");
    claiming["metadata"]["labels"] = json!({"tollgate.dev/namespace": "gpu-analyses", "namespace": "gpu-analyses"});
    claiming["metadata"]["annotations"] = json!({"tollgate.dev/policy": "namespaces: {analyses: {resources: {maximum: {cpu: 64}}}}"});
    let (reply, _) = review(&policy, &create("analyses", &claiming)).unwrap();
    let (response, _) = answer(&reply, &claiming);
    assert_eq!(response["allowed"], false, "{response}");
    assert!(message(&response).contains("resources.limits.cpu 16 is above the maximum 8"), "{}", message(&response));
}

#[test]
fn a_namespace_on_trial_warns_and_the_warn_endpoint_wins_over_any_namespaces_mode() {
    let policy = policy();
    let mut root = pod("1", "0");
    root["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 0});
    let (reply, summary) = review(&policy, &create("trial", &root)).unwrap();
    let (response, stored) = answer(&reply, &root);
    assert_eq!((response["allowed"].as_bool(), summary.outcome), (Some(true), ReviewOutcome::Warned), "{response}");
    assert_eq!(status(&stored)["skipped"], "warned");
    assert_eq!(review(&policy, &create("analyses", &root)).unwrap().1.outcome, ReviewOutcome::Denied);
    // What breaks host isolation is denied in a namespace on trial all the same.
    let mut host = pod("1", "0");
    host["spec"]["hostNetwork"] = json!(true);
    assert_eq!(review(&policy, &create("trial", &host)).unwrap().1.outcome, ReviewOutcome::Denied);
    // /mutate/warn (a namespace labeled tollgate.dev/mode=warn) warns, whatever the namespace's override says.
    assert_eq!(
        review_in(&policy, tollgate_webhook::policy::OnViolation::Warn, &create("lenient", &root)).unwrap().1.outcome,
        ReviewOutcome::Warned
    );
    // onViolation: override, onExceed: clamp: rewritten instead of denied.
    let (reply, summary) = review(&policy, &create("lenient", &pod("16", "1"))).unwrap();
    let (response, stored) = answer(&reply, &pod("16", "1"));
    assert_eq!(summary.outcome, ReviewOutcome::Patched, "{response}");
    assert_eq!(stored["spec"]["containers"][0]["resources"]["limits"]["cpu"], "8");
    let (_, summary) = review(&policy, &create("lenient", &root)).unwrap();
    assert_eq!(summary.outcome, ReviewOutcome::Patched);
}

#[test]
fn a_writable_root_filesystem_is_the_apps_alone() {
    let policy = policy();
    let plain = pod("1", "0");
    let (reply, _) = review(&policy, &create("trial", &plain)).unwrap();
    let (_, stored) = answer(&reply, &plain);
    let app = &stored["spec"]["containers"][0];
    assert!(app["securityContext"].get("readOnlyRootFilesystem").is_none(), "{app}");
    assert!(app.get("volumeMounts").is_none(), "no /tmp of tollgate's: {app}");
    let proxy = &stored["spec"]["initContainers"][0];
    assert_eq!((proxy["name"].as_str(), &proxy["securityContext"]["readOnlyRootFilesystem"]), (Some("tollgate-proxy"), &json!(true)));
    // Everything else is hardened as anywhere.
    assert_eq!(app["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(stored["spec"]["automountServiceAccountToken"], false);
    assert_eq!(stored["spec"]["enableServiceLinks"], false);
    let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(stored).unwrap();
    assert_eq!(common::pss::restricted_violations(&typed), Vec::<String>::new());
}

#[test]
fn updates_are_held_to_the_namespaces_maximum() {
    let policy = policy();
    let admitted = |namespace: &str| {
        let (reply, _) = review(&policy, &create(namespace, &pod("4", "1"))).unwrap();
        answer(&reply, &pod("4", "1")).1
    };
    for (namespace, allowed) in [("gpu-analyses", true), ("analyses", false)] {
        let old = admitted(namespace);
        let mut new = old.clone();
        new["spec"]["containers"][0]["resources"]["limits"]["cpu"] = json!("16");
        new["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("16");
        let (reply, _) = review(&policy, &body(namespace, "UPDATE", "resize", &new, &old)).unwrap();
        let (response, _) = answer(&reply, &new);
        assert_eq!(response["allowed"].as_bool(), Some(allowed), "{namespace}: {response}");
    }
}

#[test]
fn offline_injection_uses_the_namespace_of_each_object() {
    let policy = policy();
    let mut in_gpu = pod("16", "1");
    in_gpu["metadata"]["namespace"] = json!("gpu-analyses");
    let stream = format!("{}\n---\n{}\n", serde_json::to_string(&in_gpu).unwrap(), serde_json::to_string(&pod("16", "1")).unwrap());
    let result = inject(&policy, &stream).unwrap();
    assert!(matches!(&result.reports[0], ObjectReport::Hardened { .. }), "{:?}", result.reports[0]);
    assert!(matches!(&result.reports[1], ObjectReport::Denied { .. }), "{:?}", result.reports[1]);
    // -n: for objects that name no namespace; an object's own still chooses for it.
    let result = inject_in(&policy, Some("gpu-analyses"), &stream).unwrap();
    assert!(!result.failed(), "{:?}", result.reports);
    let result = inject_in(&policy, Some("analyses"), &stream).unwrap();
    assert!(matches!(&result.reports[0], ObjectReport::Hardened { .. }) && result.failed(), "{:?}", result.reports);
}

/// Over the wire: an override added by a reload applies to the next review of that namespace (small and large
/// reviews alike), and one removed stops applying.
#[tokio::test]
async fn a_reloaded_override_applies_to_the_next_review() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.leaf("serving");
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, "onViolation: deny\n").unwrap();
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        policy: Some(policy_path.clone()),
        reload_interval: Duration::from_millis(50),
        drain_delay: Duration::ZERO,
        ..ServeConfig::new(dir.path().join("tls.crt"), dir.path().join("tls.key"))
    };
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let mut client = Client::connect(&ca.connector(&[b"h2"]), addr).await.unwrap().0;
    let big = pod("16", "1");
    // A large review (answered on the review threads): the same pod with a long annotation.
    let mut large = big.clone();
    large["metadata"]["annotations"] = json!({"example.org/notes": "x".repeat(64 * 1024)});
    let mut allowed = async |pod: &Value| {
        let reply = client.send(request("POST", "/mutate", create("gpu-analyses", pod))).await.unwrap();
        serde_json::from_slice::<Value>(&reply.body).unwrap()["response"]["allowed"].as_bool().unwrap()
    };
    assert!(!allowed(&big).await && !allowed(&large).await);

    std::fs::write(&policy_path, POLICY).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !allowed(&big).await {
        assert!(Instant::now() < deadline, "the override was not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(allowed(&large).await);

    std::fs::write(&policy_path, "onViolation: deny\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while allowed(&big).await {
        assert!(Instant::now() < deadline, "the override was not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!allowed(&large).await);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), done).await.unwrap().unwrap();
}

/// `tollgate-webhook check-policy` lists what each namespace's override changes, and names the field of every
/// problem; `inject -n` judges objects without a namespace as that namespace's.
#[test]
fn the_cli_reports_overrides_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-webhook"));
        let out = tollgate_testkit::output_with_stdin(command.args(args), stdin.unwrap_or("").as_bytes());
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, POLICY).unwrap();
    let (ok, stdout, stderr) = run(&["check-policy", good.to_str().unwrap()], None);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("valid (digest {})", policy().digest())), "{stdout}");
    for line in [
        "  namespace gpu-analyses overrides: lifetime.activeDeadlineSeconds: 86400 → 604800; resources.maximum.cpu: 8 → 32; resources.maximum.memory: 64Gi → 256Gi; resources.maximum.nvidia.com/gpu: 2 → 8\n",
        "  namespace trial overrides: onViolation: deny → warn; security.readOnlyRootFilesystem: true → false\n",
    ] {
        assert!(stdout.contains(line), "{stdout}");
    }
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "namespaces:\n  gpu-analyses:\n    resources: { maximum: { cpu: lots } }\n    proxy: { egressLock: off }\n")
        .unwrap();
    let (ok, _, stderr) = run(&["check-policy", bad.to_str().unwrap()], None);
    assert!(!ok);
    assert!(stderr.contains("namespaces.gpu-analyses.proxy: cannot be set per namespace: "), "{stderr}");
    assert!(stderr.contains(r#"namespaces.gpu-analyses.resources.maximum.cpu: quantity "lots" has no digits"#), "{stderr}");

    let manifest = serde_json::to_string(&pod("16", "1")).unwrap();
    let (ok, stdout, stderr) = run(&["inject", "-f", "-", "--policy", good.to_str().unwrap(), "-n", "gpu-analyses"], Some(&manifest));
    assert!(ok && stdout.contains("tollgate-proxy"), "{stderr}");
    let (ok, stdout, stderr) = run(&["inject", "-f", "-", "--policy", good.to_str().unwrap()], Some(&manifest));
    assert!(!ok && stdout.is_empty() && stderr.contains("resources.limits.cpu 16 is above the maximum 8"), "{stderr}");
}
