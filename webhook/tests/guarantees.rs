//! What a second attacker found (issue 22), decided in the pure core: no container but tollgate's gets a
//! Kubernetes API credential, tollgate's record of its changes is tollgate's, a port-forward is refused as a
//! whole whatever ports it names, and in classic mode kubectl's default container is never the proxy.

mod common;

use serde_json::{Value, json};
use tollgate_webhook::harden::update::{EPHEMERAL_CONTAINERS, update};
use tollgate_webhook::harden::{
    Outcome, RecordKeys, Requester, Rule, check_port_forward, harden, harden_in, harden_with, skipped_status, warned_status,
};
use tollgate_webhook::policy::{OnViolation, Policy};

const CHANGES: &str = "tollgate.dev/changes";
const STATUS: &str = "tollgate.dev/status";
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

fn pod(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "analyses", "annotations": {}}, "spec": spec})
}

fn app(mounts: Value) -> Value {
    json!({"name": "app", "image": "registry.example.org/app:1.0", "volumeMounts": mounts})
}

/// What the API server's ServiceAccount plugin adds to a pod before any webhook sees it.
fn api_access_volume(name: &str) -> Value {
    json!({"name": name, "projected": {"sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
    ]}})
}

fn hardened(policy: &Policy, pod: &Value) -> (Value, Vec<String>) {
    let mut working = pod.clone();
    match harden(policy, &mut working).unwrap() {
        Outcome::Hardened(h) => (working, h.changes.iter().map(ToString::to_string).collect()),
        other => panic!("expected hardened, got {other:?}"),
    }
}

fn denied(policy: &Policy, pod: &Value) -> (String, Vec<Rule>) {
    let mut working = pod.clone();
    match harden(policy, &mut working).unwrap() {
        Outcome::Denied(d) => (d.message(), d.violations.iter().map(|v| v.rule).collect()),
        other => panic!("expected a denial, got {other:?}"),
    }
}

/// Whether anything in the pod would hand a container a ServiceAccount token.
fn carries_token(pod: &Value) -> bool {
    pod["spec"]["volumes"].as_array().into_iter().flatten().any(|v| {
        v["projected"]["sources"].as_array().into_iter().flatten().any(|s| s.get("serviceAccountToken").is_some()) || v.get("csi").is_some()
    })
}

fn mounts(pod: &Value, list: &str, index: usize) -> Vec<String> {
    pod["spec"][list][index]["volumeMounts"].as_array().into_iter().flatten().map(|m| m["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn no_container_gets_a_service_account_token() {
    let policy = Policy::default();
    // The API server's own token volume, for the pod's ServiceAccount whatever it is: removed with its mounts.
    let plugin = pod(json!({
        "serviceAccountName": "builder",
        "containers": [app(json!([{"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]))],
        "initContainers": [{"name": "setup", "image": "x:1", "volumeMounts": [{"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
        "volumes": [api_access_volume("kube-api-access-x7k2p")]
    }));
    let (out, changes) = hardened(&policy, &plugin);
    assert!(!carries_token(&out), "{out}");
    assert_eq!(out["spec"]["automountServiceAccountToken"], false);
    assert_eq!(mounts(&out, "containers", 0), ["tollgate-tmp"]);
    assert!(changes.contains(&r#"pod: removed the service account token volume "kube-api-access-x7k2p""#.to_owned()), "{changes:?}");

    // A token volume of the pod's own, of any name and audience, alone or beside other sources: denied, each
    // token named; under override the token goes and the rest of the volume stays.
    let own = pod(json!({
        "serviceAccountName": "builder",
        "containers": [app(json!([{"name": "token", "mountPath": "/t"}, {"name": "mixed", "mountPath": "/m"}, {"name": "api", "mountPath": "/a"}]))],
        "volumes": [
            {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"audience": "https://kubernetes.default.svc", "path": "token"}}]}},
            {"name": "mixed", "projected": {"sources": [{"configMap": {"name": "ca"}}, {"serviceAccountToken": {"audience": "vault", "path": "v"}}, {"serviceAccountToken": {"path": "k"}}]}},
            // Named like the plugin's: removed as the plugin's, never kept.
            {"name": "kube-api-access-mine", "projected": {"sources": [{"serviceAccountToken": {"audience": "vault", "path": "t"}}]}},
            {"name": "api", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}
        ]
    }));
    let (message, rules) = denied(&policy, &own);
    assert_eq!(rules, vec![Rule::ServiceAccountToken; 3], "{message}");
    for needle in [
        r#"spec.volumes["token"].projected.sources[0].serviceAccountToken is a token of the pod's ServiceAccount for audience "https://kubernetes.default.svc""#,
        r#"spec.volumes["mixed"].projected.sources[1].serviceAccountToken is a token of the pod's ServiceAccount for audience "vault""#,
        r#"spec.volumes["mixed"].projected.sources[2].serviceAccountToken is a token of the pod's ServiceAccount for the Kubernetes API"#,
    ] {
        assert!(message.contains(needle), "{message} lacks {needle}");
    }
    let override_policy = Policy::from_yaml("onViolation: override\n").unwrap();
    let (out, changes) = hardened(&override_policy, &own);
    assert!(!carries_token(&out), "{out}");
    let volume = |name: &str| out["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).cloned();
    assert_eq!(volume("token"), Some(json!({"name": "token", "emptyDir": {}})));
    assert_eq!(volume("mixed"), Some(json!({"name": "mixed", "projected": {"sources": [{"configMap": {"name": "ca"}}]}})));
    assert_eq!(volume("kube-api-access-mine"), None);
    assert!(volume("api").is_some());
    assert_eq!(mounts(&out, "containers", 0), ["token", "mixed", "api", "tollgate-tmp"]);
    assert!(changes.iter().any(|c| c.starts_with(r#"pod: removed the ServiceAccount token from volume "mixed""#)), "{changes:?}");
    // Warn mode lets no token through either: a token is no violation that concerns the pod alone.
    let mut working = own.clone();
    assert!(matches!(harden_in(&policy, OnViolation::Warn, &mut working, None).unwrap(), Outcome::Denied(_)));

    // A CSI driver may be handed the pod's token: inline CSI volumes only of the drivers the policy lists.
    let csi = pod(
        json!({"containers": [app(json!([{"name": "s", "mountPath": "/s"}]))], "volumes": [{"name": "s", "csi": {"driver": "secrets-store.csi.k8s.io"}}]}),
    );
    let (message, rules) = denied(&policy, &csi);
    assert_eq!(rules, [Rule::ServiceAccountToken], "{message}");
    let listed = Policy::from_yaml("security: { allowedCsiDrivers: [secrets-store.csi.k8s.io] }\n").unwrap();
    let (out, _) = hardened(&listed, &csi);
    assert_eq!(out["spec"]["volumes"][0]["csi"]["driver"], "secrets-store.csi.k8s.io");
    assert!(Policy::from_yaml("security: { allowedCsiDrivers: [' x'] }\n").is_err());

    // Where the policy allows tokens, all of it stays.
    let allowing = Policy::from_yaml("security: { allowServiceAccountToken: true }\n").unwrap();
    for input in [&plugin, &own, &csi] {
        let (out, _) = hardened(&allowing, input);
        for volume in input["spec"]["volumes"].as_array().unwrap() {
            assert!(out["spec"]["volumes"].as_array().unwrap().contains(volume), "{volume} went");
        }
    }
}

#[test]
fn a_token_added_later_is_caught_on_reinvocation_and_by_kubectl_debug() {
    let policy = Policy::default();
    let (first, _) = hardened(&policy, &pod(json!({"containers": [app(json!([]))]})));
    // A later webhook adds a token volume and mounts it in the app: the reinvocation denies the pod.
    let mut later = first.clone();
    later["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "vault", "projected": {"sources": [{"serviceAccountToken": {"audience": "vault", "path": "t"}}]}}));
    later["spec"]["containers"][0]["volumeMounts"].as_array_mut().unwrap().push(json!({"name": "vault", "mountPath": "/vault"}));
    let (message, _) = denied(&policy, &later);
    assert!(message.contains(r#"spec.volumes["vault"].projected.sources[0].serviceAccountToken"#), "{message}");

    // A pod admitted while the policy allowed tokens keeps its volume; an ephemeral container added under a
    // policy that does not may not mount it.
    let allowing = Policy::from_yaml("security: { allowServiceAccountToken: true }\n").unwrap();
    let with_token = pod(json!({"containers": [app(json!([]))], "volumes": [api_access_volume("kube-api-access-abcde")]}));
    let (old, _) = hardened(&allowing, &with_token);
    for (name, volume) in [("kube-api-access-abcde", true), ("tollgate-tmp", false)] {
        let mut new = old.clone();
        new["spec"]["ephemeralContainers"] =
            json!([{"name": "debugger", "image": "busybox:1.36", "volumeMounts": [{"name": name, "mountPath": "/t"}]}]);
        let outcome = update(&policy, &old, &mut new, EPHEMERAL_CONTAINERS).unwrap();
        match outcome {
            Outcome::Denied(d) => {
                assert!(volume, "{name}: {d}");
                assert!(
                    d.message().contains(r#"ephemeral container "debugger": volumeMounts[0] mounts volume "kube-api-access-abcde", which carries a ServiceAccount token"#),
                    "{d}"
                );
            }
            Outcome::Hardened(_) => assert!(!volume, "{name}: allowed"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_pod_let_through_in_warn_mode_holds_no_token_and_no_claim_of_tollgates() {
    let policy = Policy::default();
    let input = {
        let mut p = pod(json!({
            "serviceAccountName": "builder",
            "containers": [{"name": "app", "image": "x:1", "securityContext": {"runAsUser": 0},
                            "volumeMounts": [{"name": "kube-api-access-q", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
            "volumes": [api_access_volume("kube-api-access-q")]
        }));
        p["metadata"]["labels"] = json!({"tollgate.dev/injected": "true", "app": "a"});
        p["metadata"]["annotations"] = json!({CHANGES: "pod: nothing to see here", "tollgate.dev/egress-lock": "{}"});
        p
    };
    let mut working = input.clone();
    assert!(matches!(harden_in(&policy, OnViolation::Warn, &mut working, None).unwrap(), Outcome::Warned(_)));
    let (patch, changes) = warned_status(&policy, &input);
    let mut out = input.clone();
    json_patch::patch(&mut out, &patch.to_json_patch()).unwrap();
    assert!(!carries_token(&out), "{out}");
    assert_eq!(out["spec"]["containers"][0].get("volumeMounts").map(|m| m.as_array().unwrap().len()).unwrap_or(0), 0, "{out}");
    assert!(changes.iter().any(|c| c.to_string() == r#"pod: removed the service account token volume "kube-api-access-q""#), "{changes:?}");
    assert_eq!(out["metadata"]["labels"], json!({"app": "a"}));
    let annotations = out["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(annotations.keys().collect::<Vec<_>>(), [STATUS], "{out}");
    // Opted out (where the policy allows it): no claim either, and the token is the policy's choice to allow.
    let mut opted = input.clone();
    json_patch::patch(&mut opted, &skipped_status(&policy, &input, "opted-out").to_json_patch()).unwrap();
    assert!(opted["metadata"]["annotations"].get(CHANGES).is_none() && opted["metadata"]["labels"].get("tollgate.dev/injected").is_none());
}

fn keys() -> RecordKeys {
    RecordKeys::from_secret(b"the webhook's TLS key")
}

fn harden_keyed(keys: &RecordKeys, pod: &Value) -> (Value, Vec<String>, bool) {
    let mut working = pod.clone();
    match harden_with(&Policy::default(), OnViolation::Deny, &mut working, None, keys).unwrap() {
        Outcome::Hardened(h) => (working, h.changes.iter().map(ToString::to_string).collect(), h.patch.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn tollgates_record_is_written_or_verified_by_tollgate() {
    let keys = keys();
    let plain = pod(json!({"containers": [app(json!([]))]}));
    let (dry_run, changes, _) = harden_keyed(&keys, &plain);
    let record = dry_run["metadata"]["annotations"][CHANGES].as_str().unwrap().to_owned();
    assert_eq!(record, changes.join("\n"));
    assert!(dry_run["metadata"]["annotations"][STATUS].as_str().unwrap().contains(r#","seal":"v1:"#));

    // The dry run's output, unedited, is tollgate's own: it hardens to nothing.
    let (again, changes, empty) = harden_keyed(&keys, &dry_run);
    assert!(empty && changes.is_empty(), "{changes:?}");
    assert_eq!(again, dry_run);

    // Its record edited (issue 22's third finding): not kept; the record says what tollgate did.
    let forged_text = "pod: nothing changed; approved by the security team";
    let mut forged = dry_run.clone();
    forged["metadata"]["annotations"][CHANGES] = json!(forged_text);
    let (out, changes, _) = harden_keyed(&keys, &forged);
    let stored = out["metadata"]["annotations"][CHANGES].as_str().unwrap();
    assert!(!stored.contains(forged_text), "{stored}");
    assert_eq!(
        stored,
        "pod: removed annotation tollgate.dev/changes: the pod came with it, and it is not a record tollgate wrote (no seal of tollgate's in tollgate.dev/status)\npod: recorded annotation tollgate.dev/status"
    );
    assert_eq!(changes.join("\n"), stored);
    // ...and what tollgate wrote instead is its own on the next pass.
    assert!(harden_keyed(&keys, &out).2);

    // The status edited beside it, the seal copied to another pod, another key (the CLI's, another
    // webhook's): none of them is believed.
    let mut restatused = dry_run.clone();
    let status =
        restatused["metadata"]["annotations"][STATUS].as_str().unwrap().replace(r#""containers":["app"]"#, r#""containers":["app","x"]"#);
    restatused["metadata"]["annotations"][STATUS] = json!(status);
    let mut renamed = dry_run.clone();
    renamed["metadata"]["name"] = json!("other");
    for (what, input, keys) in
        [("status", &restatused, keys.clone()), ("name", &renamed, keys.clone()), ("key", &dry_run, RecordKeys::from_secret(b"another"))]
    {
        let (out, changes, _) = harden_keyed(&keys, input);
        assert!(changes[0].starts_with("pod: removed annotation tollgate.dev/changes: the pod came with it"), "{what}: {changes:?}");
        assert!(!out["metadata"]["annotations"][CHANGES].as_str().unwrap().contains("set securityContext"), "{what}");
    }
    // Under a renewed key, a record of the previous one is still believed (a reinvocation in flight).
    let (out, changes, _) = harden_keyed(&keys.rotated(b"renewed"), &dry_run);
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(out["metadata"]["annotations"][CHANGES], dry_run["metadata"]["annotations"][CHANGES]);

    // A reinvocation after a later webhook added a container: the first pass's record, then the second's.
    let mut later = dry_run.clone();
    later["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": "log-shipper", "image": "fluent/fluent-bit:3.1.4"}));
    let (out, changes, _) = harden_keyed(&keys, &later);
    let stored = out["metadata"]["annotations"][CHANGES].as_str().unwrap();
    assert_eq!(stored, format!("{record}\n{}", changes.join("\n")));
    assert!(changes.iter().any(|c| c.starts_with(r#"container "log-shipper""#)), "{changes:?}");

    // A status with a seal that is not tollgate's, no record: the status is rewritten, and that is recorded.
    let mut sealed_by_someone = dry_run.clone();
    let annotations = sealed_by_someone["metadata"]["annotations"].as_object_mut().unwrap();
    annotations.remove(CHANGES);
    let status = annotations[STATUS].as_str().unwrap();
    let status = format!("{}\"v1:00000000000000000000000000000000\"}}", &status[..status.find("\"v1:").unwrap()]);
    annotations.insert(STATUS.to_owned(), json!(status));
    let (_, changes, _) = harden_keyed(&keys, &sealed_by_someone);
    assert_eq!(changes, ["pod: recorded annotation tollgate.dev/status"]);

    // Under tollgate's prefix, an annotation that is neither an input nor tollgate's is not kept.
    let mut claiming = plain.clone();
    claiming["metadata"]["annotations"]["tollgate.dev/approved-by"] = json!("security-team");
    let (out, changes, _) = harden_keyed(&keys, &claiming);
    assert!(out["metadata"]["annotations"].get("tollgate.dev/approved-by").is_none());
    assert!(
        changes.contains(
            &"pod: removed annotation tollgate.dev/approved-by: tollgate.dev/ annotations are tollgate's, but for the pod's own inputs"
                .to_owned()
        )
    );
}

#[test]
fn a_port_forward_is_refused_as_a_whole_to_everyone_the_policy_does_not_trust() {
    let policy = Policy::from_yaml("identity: { trustedUsers: [system:serviceaccount:flame:flame-po-sa] }\n").unwrap();
    let groups = ["system:authenticated".to_owned()];
    let mallory = Requester { username: "mallory", groups: &groups };
    let denial = check_port_forward(&policy, mallory).expect("refused");
    assert_eq!(denial.violations[0].rule, Rule::TollgateOwned);
    assert!(
        denial.message().contains("pod: pods/portforward is refused in analysis namespaces: the kubelet forwards whatever port each connection asks for, whatever the request names, so a forward would reach the proxy's egress listener (port 15001"),
        "{}",
        denial.message()
    );
    assert!(
        denial
            .message()
            .contains(r#"only trusted users (system:serviceaccount:flame:flame-po-sa) or members of trusted groups (system:masters)"#)
    );
    let orchestrator = Requester { username: "system:serviceaccount:flame:flame-po-sa", groups: &groups };
    assert!(check_port_forward(&policy, orchestrator).is_none());
    let masters = ["system:masters".to_owned()];
    assert!(check_port_forward(&policy, Requester { username: "admin", groups: &masters }).is_none());
}

#[test]
fn kubectls_default_container_is_never_the_proxy() {
    let classic = Policy::from_yaml("proxy: { mode: classic }\n").unwrap();
    let two = |annotation: Option<&str>| {
        let mut p = pod(json!({"containers": [{"name": "analysis", "image": "x:1"}, {"name": "sidecar", "image": "y:1"}]}));
        if let Some(name) = annotation {
            p["metadata"]["annotations"][DEFAULT_CONTAINER] = json!(name);
        }
        p
    };
    // Classic: the proxy leads the containers, so the annotation names the pod's first container of its own…
    let (out, changes) = hardened(&classic, &two(None));
    assert_eq!(out["spec"]["containers"][0]["name"], "tollgate-proxy");
    assert_eq!(out["metadata"]["annotations"][DEFAULT_CONTAINER], "analysis");
    assert!(changes.iter().any(|c| c.starts_with("pod: set annotation kubectl.kubernetes.io/default-container=analysis")), "{changes:?}");
    // …unless it names another of them; naming the proxy, or no container (kubectl would fall back to the
    // first: the proxy), it is replaced.
    for (annotation, expected) in
        [("sidecar", "sidecar"), ("tollgate-proxy", "analysis"), ("gone", "analysis"), ("tollgate-lock-check", "analysis")]
    {
        let (out, _) = hardened(&classic, &two(Some(annotation)));
        assert_eq!(out["metadata"]["annotations"][DEFAULT_CONTAINER], expected, "{annotation}");
    }
    // Native: the app leads the containers; only an annotation naming tollgate's container is replaced.
    let native = Policy::default();
    let (out, _) = hardened(&native, &two(None));
    assert!(out["metadata"]["annotations"].get(DEFAULT_CONTAINER).is_none());
    let (out, _) = hardened(&native, &two(Some("tollgate-proxy")));
    assert_eq!(out["metadata"]["annotations"][DEFAULT_CONTAINER], "analysis");

    // A pod whose only container is an impostor named tollgate-proxy would be left with the real proxy as its
    // only container (issue 22's fifth finding): denied.
    let impostor = pod(json!({"containers": [{"name": "tollgate-proxy", "image": "attacker.example/shell:1"}]}));
    let (message, rules) = denied(&classic, &impostor);
    assert_eq!(rules, [Rule::TollgateOwned]);
    assert!(
        message.contains("leaving only tollgate-proxy, which would be the default container of kubectl exec, attach and logs"),
        "{message}"
    );
    let both = pod(
        json!({"containers": [{"name": "tollgate-proxy", "image": "a:1"}], "initContainers": [{"name": "tollgate-lock-check", "image": "b:1"}]}),
    );
    assert_eq!(denied(&native, &both).1, [Rule::TollgateOwned]);

    // After admission, in a classic pod, the annotation may change only to another container of its own.
    let (old, _) = hardened(&classic, &two(None));
    for (annotation, allowed) in [(Some("sidecar"), true), (Some("tollgate-proxy"), false), (Some("gone"), false), (None, false)] {
        let mut new = old.clone();
        match annotation {
            Some(name) => new["metadata"]["annotations"][DEFAULT_CONTAINER] = json!(name),
            None => {
                new["metadata"]["annotations"].as_object_mut().unwrap().remove(DEFAULT_CONTAINER);
            }
        }
        match update(&classic, &old, &mut new, "").unwrap() {
            Outcome::Denied(d) => {
                assert!(!allowed, "{annotation:?}: {d}");
                assert!(
                    d.message().contains(
                        "metadata.annotations[kubectl.kubernetes.io/default-container] may name only a container of the pod's own"
                    ),
                    "{d}"
                );
            }
            Outcome::Hardened(_) => assert!(allowed, "{annotation:?} allowed"),
            other => panic!("{other:?}"),
        }
    }
    // In a native pod it is the pod's own business.
    let (old, _) = hardened(&native, &two(None));
    let mut new = old.clone();
    new["metadata"]["annotations"][DEFAULT_CONTAINER] = json!("tollgate-proxy");
    assert!(matches!(update(&native, &old, &mut new, "").unwrap(), Outcome::Hardened(_)));
}
