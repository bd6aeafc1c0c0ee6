//! The guarantee holds for a pod's whole life, on a real kube-apiserver with tollgate registered exactly
//! as `manifests/` ships it, in an analysis namespace without Pod Security labels (tollgate is the only
//! guard). An attacker with pod rights in that namespace (`mallory`, by RBAC) tries every way to change a
//! hardened pod after admission, to claim another analysis's identity, or to steer the proxy: each is
//! refused with a message naming the field, and the stored pod is unchanged. What users and Kubernetes
//! itself legitimately do keeps working, also while the webhook is down.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use tollgate_e2e::{ControlPlane, Webhook};

const NS: &str = "analyses";

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn apply(plane: &ControlPlane, manifest: &str) {
    let out = plane.kubectl_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.status.success(), "{}", text(&out));
}

/// An analysis namespace as an admin prepares it, without Pod Security labels, and `mallory`, who may do
/// anything with pods (and Jobs) there and nothing else.
fn prepare(plane: &ControlPlane) -> PathBuf {
    apply(
        plane,
        &format!(
            r#"{{"apiVersion":"v1","kind":"List","items":[
{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{NS}","labels":{{"tollgate.dev/inject":"enabled"}}}}}},
{{"apiVersion":"v1","kind":"ServiceAccount","metadata":{{"name":"default","namespace":"{NS}"}}}},
{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{{"name":"pod-rights","namespace":"{NS}"}},"rules":[
  {{"apiGroups":[""],"resources":["pods","pods/ephemeralcontainers","pods/resize","pods/exec","pods/attach","pods/portforward","pods/log"],"verbs":["*"]}},
  {{"apiGroups":["batch"],"resources":["jobs"],"verbs":["*"]}}]}},
{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{{"name":"mallory","namespace":"{NS}"}},
  "roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"pod-rights"}},
  "subjects":[{{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"mallory"}}]}}]}}"#
        ),
    );
    plane.user_kubeconfig("mallory", &["analysts"])
}

/// Run as mallory, retrying briefly while the webhook's registration settles.
fn mallory(plane: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = plane.kubectl_as(kubeconfig, args);
        let all = text(&out);
        if out.status.success()
            || Instant::now() > deadline
            || !(all.contains("failed calling webhook") || all.contains("connection refused"))
        {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stored(plane: &ControlPlane, name: &str) -> serde_json::Value {
    let out = plane.kubectl(&["get", "pod", name, "-n", NS, "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `args` must fail as mallory, the message containing every one of `expected`, and leave the pod as it was.
fn refused(plane: &ControlPlane, kubeconfig: &Path, pod: &str, args: &[&str], expected: &[&str]) {
    let before = stored(plane, pod);
    let out = mallory(plane, kubeconfig, args);
    let all = text(&out);
    assert!(!out.status.success(), "{args:?} was allowed: {all}");
    for needle in expected {
        assert!(all.contains(needle), "{args:?}: {all:?} lacks {needle:?}");
    }
    let after = stored(plane, pod);
    assert_eq!(before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"], "{args:?} changed the stored pod");
    assert_eq!(before["spec"], after["spec"]);
}

/// `kubectl patch pod POD -n NS FLAGS -p BODY` (a strategic merge patch unless FLAGS say otherwise).
fn patch<'a>(pod: &'a str, flags: &[&'a str], body: &'a str) -> Vec<&'a str> {
    let mut args = vec!["patch", "pod", pod, "-n", NS];
    args.extend_from_slice(flags);
    args.extend(["-p", body]);
    args
}

fn allowed(plane: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> String {
    let out = mallory(plane, kubeconfig, args);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    text(&out)
}

#[test]
fn after_admission_nothing_of_tollgates_changes_and_no_one_claims_another_analysis() {
    let plane = ControlPlane::start();
    let mut webhook = Webhook::start(&plane);
    let me = prepare(&plane);
    let m = me.as_path();
    let image = "--image=registry.example.org/app:1.0";

    // mallory's own pod, hardened at creation.
    allowed(&plane, m, &["run", "victim", "-n", NS, image, "--restart=Never"]);
    allowed(&plane, m, &["run", "survivor", "-n", NS, image, "--restart=Never"]);
    let pod = stored(&plane, "victim");
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "tollgate-proxy");
    assert_eq!(pod["metadata"]["labels"]["tollgate.dev/injected"], "true");
    let v = "victim";

    // The proxy's image, three ways.
    let proxy_image = r#"container "tollgate-proxy" is tollgate's and cannot be changed after admission (image: "#;
    refused(
        &plane,
        m,
        v,
        &patch(v, &["--type=json"], r#"[{"op":"replace","path":"/spec/initContainers/0/image","value":"attacker.example/proxy:1"}]"#),
        &[proxy_image, "attacker.example/proxy:1", "[tollgate-owned]"],
    );
    refused(
        &plane,
        m,
        v,
        &patch(v, &[], r#"{"spec":{"initContainers":[{"name":"tollgate-proxy","image":"attacker.example/proxy:2"}]}}"#),
        &[proxy_image, "attacker.example/proxy:2"],
    );
    refused(&plane, m, v, &["set", "image", "pod/victim", "-n", NS, "tollgate-proxy=attacker.example/proxy:3"], &[proxy_image]);

    // tollgate's labels and annotations: removed, changed, added.
    refused(
        &plane,
        m,
        v,
        &["label", "pod", v, "-n", NS, "tollgate.dev/injected-"],
        &["metadata.labels[tollgate.dev/injected] are tollgate's and cannot be added, changed or removed after admission"],
    );
    refused(
        &plane,
        m,
        v,
        &["label", "pod", v, "-n", NS, "--overwrite", "tollgate.dev/injected=false"],
        &["metadata.labels[tollgate.dev/injected]"],
    );
    refused(
        &plane,
        m,
        v,
        &["label", "pod", v, "-n", NS, "tollgate.dev/analysis-id=someone-else"],
        &["metadata.labels[tollgate.dev/analysis-id]"],
    );
    refused(&plane, m, v, &["annotate", "pod", v, "-n", NS, "tollgate.dev/status-"], &["metadata.annotations[tollgate.dev/status]"]);
    refused(
        &plane,
        m,
        v,
        &["annotate", "pod", v, "-n", NS, "tollgate.dev/credentials-secret=tollgate-proxy-credentials-other"],
        &["metadata.annotations[tollgate.dev/credentials-secret]"],
    );

    // kubectl debug: privileged (sysadmin profile), sharing the proxy's processes, mounting its credentials.
    refused(
        &plane,
        m,
        v,
        &["debug", v, "-n", NS, "--image=busybox:1.36", "--profile=sysadmin", "-c", "sysadmin"],
        &[r#"ephemeral container "sysadmin": securityContext.privileged is true [privileged]"#],
    );
    refused(
        &plane,
        m,
        v,
        &["debug", v, "-n", NS, "--image=busybox:1.36", "--profile=restricted", "--target=tollgate-proxy", "-c", "peek"],
        &[r#"ephemeral container "peek": targetContainerName is "tollgate-proxy""#, "[tollgate-owned]"],
    );
    refused(
        &plane,
        m,
        v,
        &patch(
            v,
            &["--subresource=ephemeralcontainers"],
            r#"{"spec":{"ephemeralContainers":[{"name":"thief","image":"busybox:1.36","volumeMounts":[{"name":"tollgate-proxy-credentials","mountPath":"/c"}]}]}}"#,
        ),
        &[
            r#"ephemeral container "thief": volumeMounts[0] mounts volume "tollgate-proxy-credentials", which carries the proxy credentials Secret"#,
        ],
    );

    // Resize far above the maximum (and the proxy's own resources, which are tollgate's).
    refused(
        &plane,
        m,
        v,
        &patch(
            v,
            &["--subresource=resize"],
            r#"{"spec":{"containers":[{"name":"victim","resources":{"requests":{"cpu":"2"},"limits":{"cpu":"100"}}}]}}"#,
        ),
        &[r#"container "victim": resources.limits.cpu 100 is above the maximum 8 [resources-exceed-maximum]"#],
    );
    refused(
        &plane,
        m,
        v,
        &patch(
            v,
            &["--subresource=resize"],
            r#"{"spec":{"initContainers":[{"name":"tollgate-proxy","resources":{"limits":{"cpu":"2"}}}]}}"#,
        ),
        &[r#"init container "tollgate-proxy": resources is tollgate's and cannot be changed after admission"#],
    );

    // Commands in the proxy, which holds the credentials.
    refused(
        &plane,
        m,
        v,
        &["exec", v, "-n", NS, "-c", "tollgate-proxy", "--", "cat", "/var/run/secrets/tollgate/client-secret"],
        &[r#"container "tollgate-proxy": pods/exec is refused: the proxy holds the analysis's credentials"#],
    );

    // Pods that would steer the proxy's name resolution, or claim an analysis, are never stored.
    for (name, manifest, expected) in [
        (
            "aliases",
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"aliases"},"spec":{"hostAliases":[{"ip":"127.0.0.1","hostnames":["keycloak.flame.svc"]}],"containers":[{"name":"app","image":"registry.example.org/app:1.0"}]}}"#,
            "pod: spec.hostAliases writes the pod's /etc/hosts, where the proxy resolves its upstreams",
        ),
        (
            "resolver",
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"resolver"},"spec":{"dnsPolicy":"None","dnsConfig":{"nameservers":["127.0.0.1"]},"containers":[{"name":"app","image":"registry.example.org/app:1.0"}]}}"#,
            "pod: spec.dnsPolicy is None: the pod would choose the resolver the proxy uses",
        ),
        (
            "claimant",
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"claimant","annotations":{"tollgate.dev/analysis-id":"someone-elses-analysis"}},"spec":{"containers":[{"name":"app","image":"registry.example.org/app:1.0"}]}}"#,
            r#"pod: metadata.annotations[tollgate.dev/analysis-id] may only be set by trusted users (none) or members of trusted groups (system:masters) (policy identity.trustedUsers, identity.trustedGroups); "mallory" is neither [untrusted-identity]"#,
        ),
        (
            "big-pod",
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"big-pod"},"spec":{"resources":{"limits":{"memory":"1Ti"}},"containers":[{"name":"app","image":"registry.example.org/app:1.0"}]}}"#,
            "pod: spec.resources.limits.memory 1Ti is above the maximum 64Gi",
        ),
    ] {
        let out = plane.kubectl_stdin_as(m, &["create", "-n", NS, "-f", "-"], manifest);
        assert!(!out.status.success(), "{name} was stored");
        assert!(text(&out).contains(expected), "{name}: {} lacks {expected:?}", text(&out));
        assert!(!plane.kubectl(&["get", "pod", name, "-n", NS]).status.success(), "{name} stored");
    }

    // A Job whose pods would claim an analysis: refused when mallory creates it, allowed for the admin.
    let job = r#"{"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"claim"},"spec":{"template":{"metadata":{"annotations":{"tollgate.dev/analysis-id":"someone-elses-analysis"}},"spec":{"restartPolicy":"Never","containers":[{"name":"app","image":"registry.example.org/app:1.0"}]}}}}"#;
    let out = plane.kubectl_stdin_as(m, &["create", "-n", NS, "-f", "-"], job);
    assert!(!out.status.success(), "mallory's Job was stored");
    assert!(
        text(&out).contains("template: spec.template.metadata.annotations[tollgate.dev/analysis-id] may only be set by trusted users"),
        "{}",
        text(&out)
    );
    let out = plane.kubectl_stdin(&["create", "-n", NS, "-f", "-"], job);
    assert!(out.status.success(), "the admin's Job: {}", text(&out));

    // What the user legitimately does keeps working.
    allowed(&plane, m, &["label", "pod", v, "-n", NS, "mine=yes"]);
    allowed(&plane, m, &["annotate", "pod", v, "-n", NS, "note=hello"]);
    allowed(&plane, m, &["set", "image", "pod/victim", "-n", NS, "victim=registry.example.org/app:2.0"]);
    allowed(&plane, m, &["debug", v, "-n", NS, "--image=busybox:1.36", "--profile=restricted", "--target=victim", "-c", "helper"]);
    allowed(
        &plane,
        m,
        &patch(v, &["--subresource=resize"], r#"{"spec":{"containers":[{"name":"victim","resources":{"limits":{"cpu":"3"}}}]}}"#),
    );
    let pod = stored(&plane, v);
    assert_eq!(pod["spec"]["containers"][0]["image"], "registry.example.org/app:2.0");
    assert_eq!(pod["spec"]["containers"][0]["resources"]["limits"]["cpu"], "3", "resized within the maximum");
    let debugger = &pod["spec"]["ephemeralContainers"][0];
    assert_eq!(debugger["name"], "helper");
    assert_eq!(debugger["securityContext"]["readOnlyRootFilesystem"], true, "hardened like any other container: {debugger}");
    assert_eq!(debugger["securityContext"]["allowPrivilegeEscalation"], false);

    // What Kubernetes does to pods keeps working, with the webhook down too: finalizers come and go (an
    // UPDATE only the API server's own policy sees), and the pod is deleted.
    let out = plane.kubectl(&patch(v, &["--type=merge"], r#"{"metadata":{"finalizers":["example.com/hold"]}}"#));
    assert!(out.status.success(), "{}", text(&out));
    webhook.process.stop();
    let out = plane.kubectl(&["delete", "pod", v, "-n", NS, "--wait=false"]);
    assert!(out.status.success(), "delete with the webhook down: {}", text(&out));
    let out = plane.kubectl(&patch(v, &["--type=json"], r#"[{"op":"remove","path":"/metadata/finalizers"}]"#));
    assert!(out.status.success(), "finalizer removal with the webhook down: {}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    while plane.kubectl(&["get", "pod", v, "-n", NS]).status.success() {
        assert!(Instant::now() < deadline, "the pod was not deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...while the API server's own guard still holds: no label of tollgate's comes off a pod.
    refused(
        &plane,
        m,
        "survivor",
        &["label", "pod", "survivor", "-n", NS, "tollgate.dev/injected-"],
        &["metadata.labels[tollgate.dev/injected] are tollgate's"],
    );
    // The guard follows the pod (its tollgate.dev/injected label), not the namespace: with the namespace's
    // label gone, the hardened pod's proxy is still tollgate's.
    let out = plane.kubectl(&["label", "namespace", NS, "tollgate.dev/inject-"]);
    assert!(out.status.success(), "{}", text(&out));
    refused(&plane, m, "survivor", &["set", "image", "pod/survivor", "-n", NS, "tollgate-proxy=attacker.example/proxy:4"], &[proxy_image]);
    refused(
        &plane,
        m,
        "survivor",
        &["annotate", "pod", "survivor", "-n", NS, "tollgate.dev/status-"],
        &["metadata.annotations[tollgate.dev/status]"],
    );
}

/// With the egress lock required, the lock check the webhook adds is tollgate's like the proxy: mallory can
/// neither swap its image nor drop the annotation the CNI plugin reads (which would unlock the pod's next
/// sandbox).
#[test]
fn after_admission_the_egress_locks_check_and_annotation_are_frozen() {
    let plane = ControlPlane::start();
    let _webhook = Webhook::start_with_policy(&plane, "proxy:\n  egressLock: required\n");
    let me = prepare(&plane);
    let m = me.as_path();
    allowed(&plane, m, &["run", "locked", "-n", NS, "--image=registry.example.org/app:1.0", "--restart=Never"]);
    let pod = stored(&plane, "locked");
    let names: Vec<&str> = pod["spec"]["initContainers"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["tollgate-lock-check", "tollgate-proxy"]);
    assert_eq!(pod["metadata"]["annotations"]["tollgate.dev/egress-lock"], r#"{"proxyUid":10001,"inboundPorts":[15006,15021]}"#);
    let frozen = r#"container "tollgate-lock-check" is tollgate's and cannot be changed after admission"#;
    refused(
        &plane,
        m,
        "locked",
        &patch(
            "locked",
            &["--type=json"],
            r#"[{"op":"replace","path":"/spec/initContainers/0/image","value":"attacker.example/check:1"}]"#,
        ),
        &[frozen, "[tollgate-owned]"],
    );
    refused(&plane, m, "locked", &["set", "image", "pod/locked", "-n", NS, "tollgate-lock-check=attacker.example/check:2"], &[frozen]);
    refused(
        &plane,
        m,
        "locked",
        &["annotate", "pod", "locked", "-n", NS, "tollgate.dev/egress-lock-"],
        &["metadata.annotations[tollgate.dev/egress-lock] are tollgate's"],
    );
    refused(
        &plane,
        m,
        "locked",
        &["annotate", "pod", "locked", "-n", NS, "--overwrite", r#"tollgate.dev/egress-lock={"proxyUid":10000,"inboundPorts":[8080]}"#],
        &["metadata.annotations[tollgate.dev/egress-lock] are tollgate's"],
    );
}
