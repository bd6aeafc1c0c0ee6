//! After admission: UPDATEs of a hardened pod, through the pod itself and its subresources
//! (`ephemeralcontainers` for `kubectl debug`, `resize`), decided by the pure core.

mod common;

use serde_json::{Value, json};
use tollgate_webhook::harden::update::{EPHEMERAL_CONTAINERS, RESIZE, update};
use tollgate_webhook::harden::{Outcome, Rule, harden};
use tollgate_webhook::policy::Policy;

/// A pod as the API server stores it after tollgate hardened it.
fn admitted() -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "analysis", "labels": {"app": "a"}, "annotations": {"tollgate.dev/analysis-id": "a1"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "registry.example.org/app:1.0"}]}
    });
    let Outcome::Hardened(_) = harden(&Policy::default(), &mut pod).unwrap() else { panic!("hardened") };
    pod
}

fn changed(edit: impl FnOnce(&mut Value)) -> Value {
    let mut pod = admitted();
    edit(&mut pod);
    pod
}

/// The message and rules of a denied update; the pod must be left as it came.
fn denied(policy: &Policy, new: &Value, subresource: &str) -> (String, Vec<Rule>) {
    let mut working = new.clone();
    match update(policy, &admitted(), &mut working, subresource).unwrap() {
        Outcome::Denied(denial) => {
            assert_eq!(&working, new, "a denial leaves the pod untouched");
            (denial.message_for("this update"), denial.violations.iter().map(|v| v.rule).collect())
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

/// The pod after an allowed update (patched where tollgate hardens something), checked against its patch.
fn allowed(policy: &Policy, new: &Value, subresource: &str) -> (Value, Vec<String>) {
    let mut working = new.clone();
    match update(policy, &admitted(), &mut working, subresource).unwrap() {
        Outcome::Hardened(hardened) => {
            let mut replayed = new.clone();
            json_patch::patch(&mut replayed, &hardened.patch.to_json_patch()).unwrap();
            assert_eq!(replayed, working, "patch and result agree");
            (working, hardened.changes.iter().map(ToString::to_string).collect())
        }
        other => panic!("expected the update to be allowed, got {other:?}"),
    }
}

#[test]
fn nothing_tollgate_rendered_can_change_after_admission() {
    let proxy = "/spec/initContainers/0";
    let cases: Vec<(Value, &str)> = vec![
        (
            changed(|p| p.pointer_mut(proxy).unwrap()["image"] = json!("attacker/proxy:1")),
            r#"init container "tollgate-proxy": image is tollgate's and cannot be changed after admission [tollgate-owned]"#,
        ),
        (
            changed(|p| p.pointer_mut(proxy).unwrap()["args"] = json!(["--config", "/tmp/mine.yaml"])),
            r#"init container "tollgate-proxy": args is tollgate's"#,
        ),
        (
            changed(|p| p.pointer_mut(proxy).unwrap()["env"][0]["value"] = json!("0.0.0.0:15001")),
            r#"init container "tollgate-proxy": env is tollgate's"#,
        ),
        (
            changed(|p| p.pointer_mut(proxy).unwrap()["securityContext"]["runAsUser"] = json!(0)),
            r#"init container "tollgate-proxy": securityContext is tollgate's"#,
        ),
        (
            changed(|p| p.pointer_mut(proxy).unwrap()["resources"]["limits"]["cpu"] = json!("4")),
            r#"init container "tollgate-proxy": resources is tollgate's"#,
        ),
        (
            changed(|p| p["spec"]["initContainers"] = json!([])),
            r#"pod: spec.initContainers["tollgate-proxy"] is tollgate's and cannot be added or removed after admission"#,
        ),
        (
            changed(|p| {
                let volumes = p["spec"]["volumes"].as_array_mut().unwrap();
                let creds = volumes.iter_mut().find(|v| v["name"] == "tollgate-proxy-credentials").unwrap();
                creds["secret"]["secretName"] = json!("tollgate-proxy-credentials-other");
            }),
            r#"pod: spec.volumes["tollgate-proxy-credentials"] is tollgate's and cannot be changed after admission"#,
        ),
        (
            changed(|p| p["metadata"]["labels"].as_object_mut().unwrap().remove("tollgate.dev/injected").map(drop).unwrap()),
            r#"pod: metadata.labels[tollgate.dev/injected] is tollgate's and cannot be added, changed or removed after admission (was "true", now absent)"#,
        ),
        (
            changed(|p| p["metadata"]["labels"]["tollgate.dev/analysis-id"] = json!("someone-else")),
            r#"metadata.labels[tollgate.dev/analysis-id] is tollgate's and cannot be added, changed or removed after admission (was "a1", now "someone-else")"#,
        ),
        (
            changed(|p| p["metadata"]["labels"]["tollgate.dev/project-id"] = json!("p9")),
            r#"metadata.labels[tollgate.dev/project-id] is tollgate's and cannot be added, changed or removed after admission (was absent, now "p9")"#,
        ),
        (
            changed(|p| p["metadata"]["annotations"].as_object_mut().unwrap().remove("tollgate.dev/status").map(drop).unwrap()),
            r#"pod: metadata.annotations[tollgate.dev/status] is tollgate's"#,
        ),
        (
            changed(|p| p["metadata"]["annotations"]["tollgate.dev/credentials-secret"] = json!("tollgate-proxy-credentials-b")),
            r#"pod: metadata.annotations[tollgate.dev/credentials-secret] is tollgate's"#,
        ),
    ];
    let policy = Policy::default();
    for subresource in ["", EPHEMERAL_CONTAINERS, RESIZE, "status"] {
        for (new, expected) in &cases {
            let (message, rules) = denied(&policy, new, subresource);
            assert!(rules.iter().all(|r| *r == Rule::TollgateOwned), "{message}");
            assert!(message.contains(expected), "{subresource:?}: {message:?} lacks {expected:?}");
        }
    }
}

#[test]
fn what_kubernetes_and_the_user_change_keeps_working() {
    let policy = Policy::default();
    for new in [
        changed(|p| p["spec"]["containers"][0]["image"] = json!("registry.example.org/app:2.0")),
        changed(|p| p["metadata"]["labels"]["mine"] = json!("yes")),
        changed(|p| p["metadata"]["annotations"]["note"] = json!("x")),
        changed(|p| p["metadata"]["finalizers"] = json!(["batch.kubernetes.io/job-tracking"])),
        changed(|p| {
            p["metadata"]["ownerReferences"] =
                json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "u", "controller": true}])
        }),
        changed(|p| {
            p["metadata"]["deletionTimestamp"] = json!("2026-11-23T10:00:00Z");
            p["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        }),
        changed(|p| p["spec"]["activeDeadlineSeconds"] = json!(600)),
        changed(|p| p["status"] = json!({"phase": "Running"})),
    ] {
        let (result, changes) = allowed(&policy, &new, "");
        assert_eq!(result, new);
        assert!(changes.is_empty(), "{changes:?}");
    }
}

fn debug(container: Value) -> Value {
    changed(|p| p["spec"]["ephemeralContainers"] = json!([container]))
}

#[test]
fn ephemeral_containers_are_hardened_like_any_other() {
    let policy = Policy::default();
    // kubectl debug --profile=restricted: allowed, and hardened where it says nothing.
    let restricted = debug(json!({"name": "debugger-r", "image": "busybox:1.36", "targetContainerName": "app",
        "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}));
    let (result, changes) = allowed(&policy, &restricted, EPHEMERAL_CONTAINERS);
    assert_eq!(result["spec"]["ephemeralContainers"][0]["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(changes, [r#"ephemeral container "debugger-r": set securityContext.readOnlyRootFilesystem=true"#]);

    let plain = debug(json!({"name": "debugger", "image": "busybox:1.36"}));
    let (result, _) = allowed(&policy, &plain, EPHEMERAL_CONTAINERS);
    let sc = &result["spec"]["ephemeralContainers"][0]["securityContext"];
    assert_eq!((sc["allowPrivilegeEscalation"].clone(), sc["capabilities"]["drop"].clone()), (json!(false), json!(["ALL"])));

    // Containers already there are not touched again; only the new one is.
    let mut second = result.clone();
    second["spec"]["ephemeralContainers"].as_array_mut().unwrap().push(json!({"name": "debugger-2", "image": "busybox:1.36"}));
    let mut working = second.clone();
    let Outcome::Hardened(h) = update(&policy, &result, &mut working, EPHEMERAL_CONTAINERS).unwrap() else { panic!() };
    assert!(h.changes.iter().all(|c| c.scope == r#"ephemeral container "debugger-2""#), "{:?}", h.changes);

    for (container, rule, expected) in [
        (
            json!({"name": "debugger", "image": "busybox:1.36", "securityContext": {"privileged": true}}),
            Rule::Privileged,
            r#"ephemeral container "debugger": securityContext.privileged is true [privileged]"#,
        ),
        (
            json!({"name": "debugger", "image": "busybox:1.36", "securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}}}),
            Rule::Capabilities,
            r#"ephemeral container "debugger": securityContext.capabilities.add adds SYS_PTRACE [capabilities]"#,
        ),
        (
            json!({"name": "debugger", "image": "busybox:1.36", "targetContainerName": "tollgate-proxy"}),
            Rule::TollgateOwned,
            r#"ephemeral container "debugger": targetContainerName is "tollgate-proxy": no container may share the proxy's processes"#,
        ),
        (
            json!({"name": "debugger", "image": "busybox:1.36", "volumeMounts": [{"name": "tollgate-proxy-credentials", "mountPath": "/c"}]}),
            Rule::CredentialsExposed,
            r#"ephemeral container "debugger": volumeMounts[0] mounts volume "tollgate-proxy-credentials", which carries the proxy credentials Secret"#,
        ),
        (
            json!({"name": "debugger", "image": "busybox:1.36", "volumeMounts": [{"name": "tollgate-proxy-config", "mountPath": "/c"}]}),
            Rule::TollgateOwned,
            r#"ephemeral container "debugger": volumeMounts[0] mounts volume "tollgate-proxy-config""#,
        ),
        (
            json!({"name": "debugger", "image": "busybox:1.36", "securityContext": {"runAsUser": 10001}}),
            Rule::ProxyIdentity,
            r#"ephemeral container "debugger": securityContext.runAsUser is 10001, the proxy's user [proxy-identity]"#,
        ),
        (
            json!({"name": "debugger", "image": "busybox:1.36", "securityContext": {"runAsUser": 0}}),
            Rule::RunAsRoot,
            r#"ephemeral container "debugger": securityContext.runAsUser is 0 (root) [run-as-root]"#,
        ),
        (
            json!({"name": "debugger", "image": "busybox:1.36", "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "tollgate-proxy-credentials", "key": "client-secret"}}}]}),
            Rule::CredentialsExposed,
            r#"ephemeral container "debugger": env["S"] reads the proxy credentials Secret"#,
        ),
    ] {
        let (message, rules) = denied(&policy, &debug(container), EPHEMERAL_CONTAINERS);
        assert_eq!(rules, vec![rule], "{message}");
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }

    // Under override, what can be fixed is fixed; reaching for the proxy never is.
    let override_policy = Policy::from_yaml("onViolation: override\n").unwrap();
    let sysadmin = debug(json!({"name": "debugger", "image": "busybox:1.36", "securityContext": {"privileged": true}}));
    let (result, _) = allowed(&override_policy, &sysadmin, EPHEMERAL_CONTAINERS);
    assert_eq!(result["spec"]["ephemeralContainers"][0]["securityContext"]["privileged"], false);
    let target = debug(json!({"name": "debugger", "image": "busybox:1.36", "targetContainerName": "tollgate-proxy"}));
    denied(&override_policy, &target, EPHEMERAL_CONTAINERS);
}

#[test]
fn resizes_stay_within_the_maximum() {
    let policy = Policy::default();
    let resize = |cpu: &str| changed(|p| p["spec"]["containers"][0]["resources"]["limits"]["cpu"] = json!(cpu));
    allowed(&policy, &resize("3"), RESIZE);
    let (message, rules) = denied(&policy, &resize("100"), RESIZE);
    assert_eq!(rules, vec![Rule::ResourcesExceedMaximum]);
    assert!(message.contains(r#"container "app": resources.limits.cpu 100 is above the maximum 8"#), "{message}");
    let pod_level = changed(|p| p["spec"]["resources"] = json!({"limits": {"memory": "512Gi"}}));
    let (message, _) = denied(&policy, &pod_level, RESIZE);
    assert!(message.contains("pod: spec.resources.limits.memory 512Gi is above the maximum 64Gi"), "{message}");

    let clamp = Policy::from_yaml("resources: { onExceed: clamp }\n").unwrap();
    let (result, changes) = allowed(&clamp, &resize("100"), RESIZE);
    assert_eq!(result["spec"]["containers"][0]["resources"]["limits"]["cpu"], "8");
    assert_eq!(changes.len(), 1, "{changes:?}");
}

#[test]
fn an_update_too_large_or_not_a_pod_is_refused_clearly() {
    let policy = Policy::default();
    let huge =
        changed(|p| p["spec"]["volumes"] = Value::Array((0..300).map(|i| json!({"name": format!("v{i}"), "emptyDir": {}})).collect()));
    let (message, rules) = denied(&policy, &huge, "");
    assert_eq!(rules, vec![Rule::TooLarge], "{message}");
    let mut broken = changed(|p| p["spec"]["containers"] = json!("nope"));
    assert!(update(&policy, &admitted(), &mut broken, "").is_err());
}

fn locked() -> Policy {
    Policy::from_yaml("proxy: { egressLock: required }\n").unwrap()
}

/// The pod as stored after tollgate hardened it under the egress lock.
fn admitted_locked() -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "analysis"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "registry.example.org/app:1.0"}]}
    });
    let Outcome::Hardened(_) = harden(&locked(), &mut pod).unwrap() else { panic!("hardened") };
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "tollgate-lock-check");
    pod
}

fn denied_over(policy: &Policy, old: &Value, new: &Value, subresource: &str) -> (String, Vec<Rule>) {
    let mut working = new.clone();
    match update(policy, old, &mut working, subresource).unwrap() {
        Outcome::Denied(denial) => {
            assert_eq!(&working, new, "a denial leaves the pod untouched");
            (denial.message_for("this update"), denial.violations.iter().map(|v| v.rule).collect())
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn the_lock_check_is_frozen_like_the_proxy() {
    let old = admitted_locked();
    let edit = |edit: &dyn Fn(&mut Value)| {
        let mut pod = old.clone();
        edit(&mut pod);
        pod
    };
    let check = "/spec/initContainers/0";
    let cases: Vec<(Value, &str)> = vec![
        (
            edit(&|p| p.pointer_mut(check).unwrap()["image"] = json!("evil.example.org/always-ok:1")),
            r#"init container "tollgate-lock-check": image is tollgate's and cannot be changed after admission [tollgate-owned]"#,
        ),
        (
            edit(&|p| p.pointer_mut(check).unwrap()["args"] = json!(["--version"])),
            r#"init container "tollgate-lock-check": args is tollgate's"#,
        ),
        (
            edit(&|p| p.pointer_mut(check).unwrap()["securityContext"]["runAsUser"] = json!(10001)),
            r#"init container "tollgate-lock-check": securityContext is tollgate's"#,
        ),
        (
            edit(&|p| p.pointer_mut(check).unwrap()["resources"]["limits"]["cpu"] = json!("2")),
            r#"init container "tollgate-lock-check": resources is tollgate's"#,
        ),
        (
            edit(&|p| {
                p["spec"]["initContainers"].as_array_mut().unwrap().remove(0);
            }),
            r#"pod: spec.initContainers["tollgate-lock-check"] is tollgate's and cannot be added or removed after admission"#,
        ),
        (
            edit(&|p| {
                p["metadata"]["annotations"]["tollgate.dev/egress-lock"] = json!(r#"{"proxyUid":10000,"inboundPorts":[15006,15021]}"#)
            }),
            r#"pod: metadata.annotations[tollgate.dev/egress-lock] is tollgate's and cannot be added, changed or removed after admission"#,
        ),
        (
            edit(&|p| {
                p["metadata"]["annotations"].as_object_mut().unwrap().remove("tollgate.dev/egress-lock");
            }),
            r#"metadata.annotations[tollgate.dev/egress-lock] is tollgate's"#,
        ),
    ];
    for subresource in ["", EPHEMERAL_CONTAINERS, RESIZE, "status"] {
        for (new, expected) in &cases {
            let (message, rules) = denied_over(&locked(), &old, new, subresource);
            assert!(rules.iter().all(|r| *r == Rule::TollgateOwned), "{message}");
            assert!(message.contains(expected), "{subresource:?}: {message:?} lacks {expected:?}");
        }
    }
    // Nor can one be added to a pod admitted without it (whatever the policy says now).
    let unlocked = admitted();
    let mut added = unlocked.clone();
    let check = old["spec"]["initContainers"][0].clone();
    added["spec"]["initContainers"].as_array_mut().unwrap().insert(0, check);
    let (message, _) = denied_over(&locked(), &unlocked, &added, "");
    assert!(
        message.contains(r#"pod: spec.initContainers["tollgate-lock-check"] is tollgate's and cannot be added or removed after admission"#),
        "{message}"
    );
    // What the user may change still changes.
    let mut working = edit(&|p| p["spec"]["containers"][0]["image"] = json!("registry.example.org/app:2.0"));
    let Outcome::Hardened(h) = update(&locked(), &old, &mut working, "").unwrap() else { panic!("allowed") };
    assert!(h.patch.is_empty());
}

#[test]
fn under_the_egress_lock_debug_containers_get_the_probe_rule_and_not_tollgates_names() {
    let old = admitted_locked();
    let debug = |container: Value| {
        let mut pod = old.clone();
        pod["spec"]["ephemeralContainers"] = json!([container]);
        pod
    };
    let probing = debug(json!({"name": "debugger", "image": "busybox:1.36", "readinessProbe": {"httpGet": {"port": 8080}}}));
    let (message, rules) = denied_over(&locked(), &old, &probing, EPHEMERAL_CONTAINERS);
    assert_eq!(rules, vec![Rule::LockBlocksProbe], "{message}");
    assert!(message.contains(r#"ephemeral container "debugger": readinessProbe.httpGet.port is 8080: the kubelet cannot reach it under the egress lock (only the proxy's ports 15006 and 15021 admit inbound connections; policy proxy.egressLock); use an exec probe [lock-blocks-probe]"#), "{message}");
    let override_locked = Policy::from_yaml("onViolation: override\nproxy: { egressLock: required }\n").unwrap();
    denied_over(&override_locked, &old, &probing, EPHEMERAL_CONTAINERS);

    for (policy, base) in [(locked(), old.clone()), (Policy::default(), admitted())] {
        let mut named = base.clone();
        named["spec"]["ephemeralContainers"] = json!([{"name": "tollgate-lock-check", "image": "busybox:1.36"}]);
        let (message, rules) = denied_over(&policy, &base, &named, EPHEMERAL_CONTAINERS);
        assert_eq!(rules, vec![Rule::TollgateOwned], "{message}");
        assert!(
            message.contains(r#"ephemeral container "tollgate-lock-check": name is "tollgate-lock-check", the name of a container tollgate renders [tollgate-owned]"#),
            "{message}"
        );
    }

    // kubectl debug --profile=restricted still works.
    let mut working = debug(json!({"name": "debugger", "image": "busybox:1.36", "targetContainerName": "app"}));
    let Outcome::Hardened(_) = update(&locked(), &old, &mut working, EPHEMERAL_CONTAINERS).unwrap() else { panic!("allowed") };
}

/// tollgate's own `hostAliases` entry and sysctl (`proxy.egressHostnames`, a proxy port below 1024) are part
/// of the admitted pod: the API server keeps both fixed (a pod's hostAliases and securityContext cannot
/// change), and nothing the webhook checks after admission takes them for the pod's own.
#[test]
fn tollgates_host_alias_and_sysctl_pass_every_update() {
    let policy = Policy::from_yaml(
        "proxy:\n  egressPort: 80\n  egressHostnames: ['nginx-{env:DEPLOYMENT_NAME}']\n  placeholderEnv: [{name: KEYCLOAK_TOKEN, kind: jwt}]\n",
    )
    .unwrap();
    let mut old = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "analysis", "labels": {"app": "a"}, "annotations": {"tollgate.dev/analysis-id": "a1"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example.org/app:1.0",
            "env": [{"name": "DEPLOYMENT_NAME", "value": "analysis-a1-0"}]}]}
    });
    let Outcome::Hardened(_) = harden(&policy, &mut old).unwrap() else { panic!("hardened") };
    assert_eq!(old["spec"]["hostAliases"][0]["hostnames"], json!(["nginx-analysis-a1-0"]));
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut new = old.clone();
        f(&mut new);
        new
    };
    for (subresource, new) in [
        ("", edit(&|p| p["metadata"]["labels"]["mine"] = json!("yes"))),
        ("", edit(&|p| p["status"] = json!({"phase": "Running"}))),
        (EPHEMERAL_CONTAINERS, edit(&|p| p["spec"]["ephemeralContainers"] = json!([{"name": "d", "image": "busybox:1.36"}]))),
        (RESIZE, edit(&|p| p["spec"]["containers"][0]["resources"]["limits"]["cpu"] = json!("3"))),
    ] {
        let mut working = new.clone();
        match update(&policy, &old, &mut working, subresource).unwrap() {
            Outcome::Hardened(h) => {
                assert_eq!(working["spec"]["hostAliases"], old["spec"]["hostAliases"], "{subresource}");
                assert_eq!(working["spec"]["securityContext"], old["spec"]["securityContext"], "{subresource}");
                assert!(h.changes.iter().all(|c| c.scope.starts_with("ephemeral container")), "{subresource}: {:?}", h.changes);
            }
            other => panic!("{subresource}: {other:?}"),
        }
    }
}
