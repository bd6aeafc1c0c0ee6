//! The guarantee holds for a pod's whole life, on a real kube-apiserver with tollgate registered exactly
//! as `manifests/` ships it, in an analysis namespace without Pod Security labels (tollgate is the only
//! guard). An attacker with pod rights in that namespace (`mallory`, by RBAC) tries every way to change a
//! hardened pod after admission, to claim another analysis's identity, or to steer the proxy: each is
//! refused with a message naming the field, and the stored pod is unchanged. What users and Kubernetes
//! itself legitimately do keeps working, also while the webhook is down.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tollgate_e2e::{ControlPlane, Webhook, settled};
use tollgate_testkit::text;

const NS: &str = "analyses";

/// An analysis namespace as an admin prepares it, without Pod Security labels, and `mallory`, who may do
/// anything with pods (and Jobs) there and nothing else.
fn prepare(plane: &ControlPlane) -> PathBuf {
    plane.apply(&format!(
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
    settled(|| plane.kubectl_as(kubeconfig, args))
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
    // ...and the webhook still refuses exec into its proxy and checks its debug containers.
    webhook = Webhook::start(&plane);
    refused(
        &plane,
        m,
        "survivor",
        &["exec", "survivor", "-n", NS, "-c", "tollgate-proxy", "--", "cat", "/var/run/secrets/tollgate/client-secret"],
        &[r#"container "tollgate-proxy": pods/exec is refused"#],
    );
    refused(
        &plane,
        m,
        "survivor",
        &patch(
            "survivor",
            &["--subresource=ephemeralcontainers"],
            r#"{"spec":{"ephemeralContainers":[{"name":"thief","image":"busybox:1.36","volumeMounts":[{"name":"tollgate-proxy-credentials","mountPath":"/c"}]}]}}"#,
        ),
        &[r#"ephemeral container "thief": volumeMounts[0] mounts volume "tollgate-proxy-credentials""#],
    );
    drop(webhook);
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

/// `manifest` (a pod, JSON) created by mallory: the output, and whether it was stored.
fn create_as(plane: &ControlPlane, kubeconfig: &Path, manifest: &str) -> (bool, String) {
    let out = settled(|| plane.kubectl_stdin_as(kubeconfig, &["create", "-n", NS, "-f", "-", "-o", "json"], manifest));
    (out.status.success(), text(&out))
}

/// Whether anything in the stored pod would hand a container a ServiceAccount token.
fn holds_token(pod: &serde_json::Value) -> bool {
    let volumes = pod["spec"]["volumes"].as_array().into_iter().flatten();
    let token =
        volumes.clone().any(|v| v["projected"]["sources"].as_array().into_iter().flatten().any(|s| s.get("serviceAccountToken").is_some()));
    let mounted = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
        .any(|c| {
            c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["mountPath"].as_str().is_some_and(|p| p.starts_with("/var/run/secrets/kubernetes.io")))
        });
    token || mounted || volumes.clone().any(|v| v.get("csi").is_some())
}

/// Issue 22, point 1: with the default policy (`allowServiceAccountToken: false`) no container but tollgate's
/// ends up with a Kubernetes API credential, however mallory asks for one: another ServiceAccount's token,
/// projected into a volume of any name for any audience, alone or beside other sources, through a CSI driver,
/// or in a namespace that only warns.
#[test]
fn no_app_container_gets_a_service_account_token() {
    let plane = ControlPlane::start();
    let _webhook = Webhook::start(&plane);
    let me = prepare(&plane);
    let m = me.as_path();
    // A ServiceAccount that can read the namespace's Secrets (the proxy's credentials among them).
    plane.apply(&format!(
            r#"{{"apiVersion":"v1","kind":"List","items":[
{{"apiVersion":"v1","kind":"ServiceAccount","metadata":{{"name":"builder","namespace":"{NS}"}}}},
{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{{"name":"secret-reader","namespace":"{NS}"}},"rules":[{{"apiGroups":[""],"resources":["secrets"],"verbs":["get","list"]}}]}},
{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{{"name":"builder","namespace":"{NS}"}},
  "roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"secret-reader"}},
  "subjects":[{{"kind":"ServiceAccount","name":"builder","namespace":"{NS}"}}]}}]}}"#
        ),
    );
    let pod = |name: &str, volume: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"serviceAccountName":"builder","restartPolicy":"Never",
"containers":[{{"name":"app","image":"registry.example.org/app:1.0","volumeMounts":[{{"name":"creds","mountPath":"/var/run/creds"}}]}}],
"volumes":[{volume}]}}}}"#
        )
    };
    // The finding: a projected token of another ServiceAccount, mounted in the app.
    for (name, volume, expected) in [
        (
            "projected",
            r#"{"name":"creds","projected":{"sources":[{"serviceAccountToken":{"audience":"https://kubernetes.default.svc","path":"token"}}]}}"#,
            r#"pod: spec.volumes["creds"].projected.sources[0].serviceAccountToken is a token of the pod's ServiceAccount for audience "https://kubernetes.default.svc": no container may hold a Kubernetes ServiceAccount token (policy security.allowServiceAccountToken) [service-account-token]"#,
        ),
        (
            "mixed",
            r#"{"name":"creds","projected":{"sources":[{"configMap":{"name":"kube-root-ca.crt"}},{"serviceAccountToken":{"path":"token"}}]}}"#,
            r#"pod: spec.volumes["creds"].projected.sources[1].serviceAccountToken is a token of the pod's ServiceAccount for the Kubernetes API"#,
        ),
        (
            "csi",
            r#"{"name":"creds","csi":{"driver":"secrets-store.csi.k8s.io","readOnly":true}}"#,
            r#"pod: spec.volumes["creds"].csi.driver is "secrets-store.csi.k8s.io", which is not in security.allowedCsiDrivers"#,
        ),
    ] {
        let (stored, out) = create_as(&plane, m, &pod(name, volume));
        assert!(!stored, "{name} was stored: {out}");
        assert!(out.contains(expected), "{name}: {out:?} lacks {expected:?}");
        assert!(!plane.kubectl(&["get", "pod", name, "-n", NS]).status.success(), "{name} stored");
    }
    // The API server's own token volume, for builder, and a volume named like it: stored without either.
    let (ok, out) = create_as(
        &plane,
        m,
        &pod(
            "named-like-the-plugins",
            r#"{"name":"kube-api-access-mine","projected":{"sources":[{"serviceAccountToken":{"audience":"vault","path":"t"}}]}}"#,
        )
        .replace(r#""name":"creds","mountPath""#, r#""name":"kube-api-access-mine","mountPath""#),
    );
    assert!(ok, "{out}");
    let (ok, out) = create_as(&plane, m, &pod("plain", r#"{"name":"creds","emptyDir":{}}"#));
    assert!(ok, "{out}");
    for name in ["named-like-the-plugins", "plain"] {
        let pod = stored(&plane, name);
        assert_eq!(pod["spec"]["serviceAccountName"], "builder");
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        assert!(!holds_token(&pod), "{name}: {}", pod["spec"]);
    }

    // In a namespace that only warns, a pod let through as it came loses the API server's token volume all
    // the same; a token of its own is denied there too.
    let out = plane.kubectl(&["label", "namespace", NS, "tollgate.dev/mode=warn"]);
    assert!(out.status.success(), "{}", text(&out));
    let root = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"on-trial"},"spec":{"serviceAccountName":"builder","restartPolicy":"Never",
"containers":[{"name":"app","image":"registry.example.org/app:1.0","securityContext":{"runAsUser":0}}]}}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let (ok, out) = create_as(&plane, m, root);
        // The webhook configuration takes a moment to see the namespace's new label.
        if ok && out.contains("would deny") || Instant::now() > deadline {
            break out;
        }
        let _ = plane.kubectl(&["delete", "pod", "on-trial", "-n", NS, "--wait=false"]);
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(out.contains("would deny"), "{out}");
    assert!(out.contains(r#"tollgate: pod: removed the service account token volume "kube-api-access-"#), "{out}");
    let trial = stored(&plane, "on-trial");
    assert_eq!(trial["spec"]["containers"][0]["securityContext"]["runAsUser"], 0, "let through as it came");
    assert!(!holds_token(&trial), "{}", trial["spec"]);
    let (stored_, out) =
        create_as(&plane, m, &pod("trial-token", r#"{"name":"creds","projected":{"sources":[{"serviceAccountToken":{"path":"token"}}]}}"#));
    assert!(!stored_ && out.contains("[service-account-token]"), "{out}");
}

/// Issue 22, point 3: what tollgate presents as its record of changes is written or verified by tollgate. A
/// server dry run's output, created as it is, keeps tollgate's record (its seal checks out); with mallory's
/// own text in `tollgate.dev/changes`, that text is not stored.
#[test]
fn tollgates_record_of_changes_cannot_be_forged() {
    let plane = ControlPlane::start();
    let _webhook = Webhook::start(&plane);
    let me = prepare(&plane);
    let m = me.as_path();
    let plain = |name: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"restartPolicy":"Never","containers":[{{"name":"app","image":"registry.example.org/app:1.0"}}]}}}}"#
        )
    };
    let dry_run = |name: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = plane.kubectl_stdin_as(m, &["create", "-n", NS, "--dry-run=server", "-o", "json", "-f", "-"], &plain(name));
            if out.status.success() || Instant::now() > deadline {
                assert!(out.status.success(), "{}", text(&out));
                let mut pod: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                // What a creator strips before creating: the fields the API server sets.
                for key in ["uid", "creationTimestamp", "resourceVersion", "managedFields"] {
                    pod["metadata"].as_object_mut().unwrap().remove(key);
                }
                pod.as_object_mut().unwrap().remove("status");
                return pod;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let record = |pod: &serde_json::Value| pod["metadata"]["annotations"]["tollgate.dev/changes"].as_str().unwrap_or("").to_owned();

    // Created as the dry run gave it: tollgate's own record, kept.
    let genuine = dry_run("genuine");
    let expected = record(&genuine);
    assert!(expected.contains(r#"container "app": set securityContext.readOnlyRootFilesystem=true"#), "{expected}");
    let (ok, out) = create_as(&plane, m, &genuine.to_string());
    assert!(ok, "{out}");
    assert_eq!(record(&stored(&plane, "genuine")), expected);

    // With mallory's own text: not stored; the record says what tollgate did.
    let forged_text = "nothing was changed: this pod was reviewed and approved by the security team";
    let mut forged = dry_run("forged");
    forged["metadata"]["annotations"]["tollgate.dev/changes"] = serde_json::json!(forged_text);
    let (ok, out) = create_as(&plane, m, &forged.to_string());
    assert!(ok, "{out}");
    let kept = record(&stored(&plane, "forged"));
    assert!(!kept.contains(forged_text), "{kept}");
    assert!(
        kept.starts_with("pod: removed annotation tollgate.dev/changes: the pod came with it, and it is not a record tollgate wrote"),
        "{kept}"
    );
    // Nor with the record of another pod, nor an annotation of its own under tollgate's prefix.
    let mut copied = dry_run("copied");
    copied["metadata"]["annotations"]["tollgate.dev/changes"] = serde_json::json!(expected.clone());
    copied["metadata"]["annotations"]["tollgate.dev/status"] = genuine["metadata"]["annotations"]["tollgate.dev/status"].clone();
    copied["metadata"]["annotations"]["tollgate.dev/reviewed-by"] = serde_json::json!("security-team");
    let (ok, out) = create_as(&plane, m, &copied.to_string());
    assert!(ok, "{out}");
    let pod = stored(&plane, "copied");
    assert!(record(&pod).contains("pod: removed annotation tollgate.dev/changes: the pod came with it"), "{}", record(&pod));
    assert!(!record(&pod).contains("set securityContext"), "{}", record(&pod));
    assert!(pod["metadata"]["annotations"].get("tollgate.dev/reviewed-by").is_none(), "{}", pod["metadata"]);
    // And after admission the record is frozen like every tollgate.dev/ annotation.
    refused(
        &plane,
        m,
        "genuine",
        &["annotate", "pod", "genuine", "-n", NS, "--overwrite", &format!("tollgate.dev/changes={forged_text}")],
        &["metadata.annotations[tollgate.dev/changes] are tollgate's"],
    );
}

/// Make a stored pod look running on a node, as kubectl port-forward and exec require before they send
/// anything (there is no kubelet here: whatever admission lets through then fails to reach the node).
fn running(plane: &ControlPlane, name: &str) {
    let out =
        plane.kubectl(&["patch", "pod", name, "-n", NS, "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Running"}}"#]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Issue 22, point 4: a port-forward into an analysis namespace is refused as a whole to anyone the policy
/// does not trust — kubectl port-forward as kubectl 1.36 sends it (no ports in the request) and a raw request
/// naming `?ports=`, which the kubelet would ignore — and a trusted user's gets past admission.
#[test]
fn a_port_forward_is_refused_whatever_ports_it_names() {
    let plane = ControlPlane::start();
    let _webhook = Webhook::start(&plane);
    let me = prepare(&plane);
    let m = me.as_path();
    let (ok, out) = create_as(
        &plane,
        m,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"target"},"spec":{"nodeName":"node-1","restartPolicy":"Never","containers":[{"name":"app","image":"registry.example.org/app:1.0","ports":[{"containerPort":8080}]}]}}"#,
    );
    assert!(ok, "{out}");
    running(&plane, "target");
    let refusal = "pod: pods/portforward is refused in analysis namespaces: the kubelet forwards whatever port each connection asks for";
    let path = format!("/api/v1/namespaces/{NS}/pods/target/portforward");
    let empty = plane.dir.path().join("empty.json");
    std::fs::write(&empty, "{}").unwrap();
    let attempts: Vec<(&str, Vec<String>)> = vec![
        ("kubectl port-forward", ["port-forward", "-n", NS, "pod/target", "8080:8080"].map(String::from).to_vec()),
        ("kubectl port-forward to the egress port", ["port-forward", "-n", NS, "pod/target", "15001"].map(String::from).to_vec()),
        ("raw ?ports=8080", vec!["create".into(), "--raw".into(), format!("{path}?ports=8080"), "-f".into(), empty.display().to_string()]),
        ("raw GET ?ports=8080", vec!["get".into(), "--raw".into(), format!("{path}?ports=8080")]),
        ("raw, no ports", vec!["create".into(), "--raw".into(), path.clone(), "-f".into(), empty.display().to_string()]),
    ];
    for (what, args) in &attempts {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = Command::new(plane.bin.join("kubectl")).arg(format!("--kubeconfig={}", m.display())).args(&args).output().unwrap();
        let all = text(&out);
        assert!(!out.status.success(), "{what}: {all}");
        assert!(all.contains(refusal), "{what}: {all:?} lacks {refusal:?}");
    }
    // A trusted user (the admin, in system:masters) gets past tollgate (and then finds no kubelet here).
    for (what, args) in &attempts[..3] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = Command::new(plane.bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", plane.kubeconfig.display()))
            .args(&args)
            .output()
            .unwrap();
        assert!(!text(&out).contains("tollgate denied"), "{what}, admin: {}", text(&out));
    }
}

/// Issue 22, point 5: in classic mode no pod is left whose default exec/attach/logs container is the proxy.
/// A pod whose only container is named tollgate-proxy (an impostor the proxy would replace) is refused; a
/// pod of its own gets kubectl's default-container annotation naming its container, which kubectl follows and
/// which stays so after admission.
#[test]
fn in_classic_mode_kubectl_never_defaults_to_the_proxy() {
    let plane = ControlPlane::start();
    let _webhook = Webhook::start_with_policy(&plane, "proxy:\n  mode: classic\n");
    let me = prepare(&plane);
    let m = me.as_path();
    let (stored_, out) = create_as(
        &plane,
        m,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"impostor"},"spec":{"restartPolicy":"Never","containers":[{"name":"tollgate-proxy","image":"registry.example.org/shell:1.0"}]}}"#,
    );
    assert!(!stored_, "{out}");
    assert!(
        out.contains(r#"pod: spec.containers has no container of the pod's own (["tollgate-proxy"]: names of tollgate's containers, which tollgate replaces with its own), leaving only tollgate-proxy, which would be the default container of kubectl exec, attach and logs [tollgate-owned]"#),
        "{out}"
    );

    allowed(
        &plane,
        m,
        &[
            "run",
            "classic",
            "-n",
            NS,
            "--image=registry.example.org/app:1.0",
            "--restart=Never",
            "--overrides",
            r#"{"spec":{"nodeName":"node-1"}}"#,
        ],
    );
    let pod = stored(&plane, "classic");
    let names: Vec<&str> = pod["spec"]["containers"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["tollgate-proxy", "classic"]);
    assert_eq!(pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"], "classic");
    // kubectl exec and logs without -c go to the pod's own container (and then find no kubelet here).
    running(&plane, "classic");
    for args in [["exec", "classic", "-n", NS, "-v=6", "--", "true"].as_slice(), ["logs", "classic", "-n", NS, "-v=6"].as_slice()] {
        let out = plane.kubectl_as(m, args);
        let all = text(&out);
        assert!(all.contains("container=classic"), "{args:?}: {all}");
        assert!(!all.contains("container=tollgate-proxy"), "{args:?}: {all}");
    }
    // After admission the annotation names only a container of the pod's own.
    for args in [
        ["annotate", "pod", "classic", "-n", NS, "--overwrite", "kubectl.kubernetes.io/default-container=tollgate-proxy"].as_slice(),
        ["annotate", "pod", "classic", "-n", NS, "kubectl.kubernetes.io/default-container-"].as_slice(),
    ] {
        refused(
            &plane,
            m,
            "classic",
            args,
            &[
                "metadata.annotations[kubectl.kubernetes.io/default-container] may name only a container of the pod's own",
                "[tollgate-owned]",
            ],
        );
    }
}
