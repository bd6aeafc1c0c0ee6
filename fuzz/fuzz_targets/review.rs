//! The webhook's admission protocol as the server decodes it: [`tollgate_webhook::review::review_in`] on
//! AdmissionReview bodies — pod CREATE, UPDATE of the pod and through its subresources (`status`,
//! `ephemeralcontainers`, `resize`), CONNECT (`exec`, `attach`, `portforward`), workloads — and on raw bodies.
//!
//! Input: bytes not starting with `#` are a raw body. `#`, three selector bytes, then a pod (JSON, the
//! corpus holds the fixtures' pods, which the fuzzer mutates byte by byte): the target builds the reviews
//! around that pod, chosen by the selector: the policy (default, override, FLAME's), who asks (nobody
//! trusted, a trusted controller), the namespace mode (deny or warn); and then, over the pod as tollgate
//! stored it, an UPDATE with one edit (none; an app label; an app image; a `tollgate.dev/` label or annotation;
//! a field of tollgate's proxy; tollgate's volume; an ephemeral container, privileged or plain or named like
//! tollgate's; a resize) through one subresource, and a CONNECT into one container or to some ports.
//!
//! Properties: never panics; a raw body is answered or refused as a bad review (400), never both; every
//! answer is an `admission.k8s.io/v1` AdmissionReview with the request's uid, `allowed: false` exactly for a
//! denial or an undecodable object (status 403 or 400, with a message), a patch only on an allowed answer and
//! then a base64 JSON patch that applies to the object; a created pod that tollgate hardened, sent again
//! (reinvocation), is allowed unchanged; over the stored pod: an UPDATE that changes nothing is allowed with
//! no patch through every subresource; any change to what tollgate rendered (its containers, its volumes,
//! `tollgate.dev/` labels and annotations) is denied; an app label or image is allowed as is; an ephemeral
//! container is denied or hardened, and the hardened pod passes the independent "restricted" checker; exec or
//! attach into the proxy is denied, into the app allowed; a port-forward that names no port or the proxy's
//! egress port is denied to anyone the policy does not trust.

#![no_main]

#[path = "../../webhook/tests/common/pss.rs"]
mod pss;

use std::sync::OnceLock;

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use tollgate_webhook::policy::{OnViolation, Policy};
use tollgate_webhook::review::{ReviewOutcome, ReviewSummary, review_in};

fn policies() -> &'static [Policy; 3] {
    static POLICIES: OnceLock<[Policy; 3]> = OnceLock::new();
    POLICIES.get_or_init(|| {
        [
            Policy::default(),
            Policy::from_yaml("onViolation: override\nresources: { onExceed: clamp }\n").unwrap(),
            Policy::from_yaml(
                "onViolation: override\nproxy:\n  egressPort: 80\n  egressHostnames: ['nginx-{env:DEPLOYMENT_NAME}']\n  \
                 placeholderEnv: [{name: KEYCLOAK_TOKEN, kind: jwt}]\n  credentialsSecret: tollgate-proxy-credentials-{analysis_id}\n",
            )
            .unwrap(),
        ]
    })
}

struct Request<'a> {
    operation: &'a str,
    group: &'a str,
    kind: &'a str,
    subresource: &'a str,
    object: Value,
    old: Option<Value>,
    trusted: bool,
}

fn body(r: &Request, uid: &str) -> Vec<u8> {
    let resource = match r.kind {
        "Pod" | "PodExecOptions" | "PodAttachOptions" | "PodPortForwardOptions" => "pods",
        "Deployment" => "deployments",
        _ => "jobs",
    };
    let user = if r.trusted {
        json!({"username": "system:serviceaccount:flame:pod-orchestrator", "groups": ["system:masters", "system:authenticated"]})
    } else {
        json!({"username": "alice", "groups": ["system:authenticated"]})
    };
    let mut request = json!({
        "uid": uid,
        "kind": {"group": r.group, "version": "v1", "kind": r.kind},
        "resource": {"group": r.group, "version": "v1", "resource": resource},
        "namespace": "flame-analyses",
        "name": r.object["metadata"]["name"].as_str().unwrap_or(""),
        "operation": r.operation,
        "userInfo": user,
        "object": r.object,
        "oldObject": r.old.clone().unwrap_or(Value::Null),
        "dryRun": false,
    });
    if !r.subresource.is_empty() {
        request["subResource"] = json!(r.subresource);
    }
    serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})).unwrap()
}

/// The answer, checked for what every answer must be; returns it with the patch applied to the object, if any.
fn answer(policy: &Policy, mode: OnViolation, r: &Request) -> (Value, ReviewSummary, Option<Value>) {
    let uid = "705ab4f5-6393-11e8-b7cc-42010a800002";
    let (bytes, summary) = review_in(policy, mode, &body(r, uid)).unwrap_or_else(|e| panic!("a well-formed review refused: {e}"));
    let review: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("the answer is not JSON: {e}"));
    assert_eq!((review["apiVersion"].as_str(), review["kind"].as_str()), (Some("admission.k8s.io/v1"), Some("AdmissionReview")));
    let response = &review["response"];
    assert_eq!(response["uid"], uid);
    let allowed = response["allowed"].as_bool().expect("allowed");
    let refused = matches!(summary.outcome, ReviewOutcome::Denied | ReviewOutcome::Invalid);
    assert_eq!(allowed, !refused, "allowed {allowed} for outcome {:?}", summary.outcome);
    if !allowed {
        let code = response["status"]["code"].as_u64();
        assert!(code == Some(403) || code == Some(400), "refused with code {code:?}");
        assert!(response["status"]["message"].as_str().is_some_and(|m| !m.is_empty()), "refused without a message");
        assert!(response.get("patch").is_none(), "a patch on a refusal");
        return (review, summary, None);
    }
    let patched = response.get("patch").map(|patch| {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD.decode(patch.as_str().expect("a base64 string")).expect("base64");
        let ops: json_patch::Patch = serde_json::from_slice(&bytes).expect("a JSON patch");
        let mut object = r.object.clone();
        json_patch::patch(&mut object, &ops).unwrap_or_else(|e| panic!("the patch does not apply: {e}"));
        object
    });
    assert_eq!(
        patched.is_some(),
        matches!(summary.outcome, ReviewOutcome::Patched | ReviewOutcome::Skipped | ReviewOutcome::Warned),
        "a patch for outcome {:?}",
        summary.outcome
    );
    (review, summary, patched)
}

const PROXY: &str = "tollgate-proxy";

fn proxy_index(pod: &Value) -> Option<(&'static str, usize)> {
    ["initContainers", "containers"]
        .into_iter()
        .find_map(|list| pod["spec"][list].as_array().and_then(|items| items.iter().position(|c| c["name"] == PROXY)).map(|i| (list, i)))
}

fn app_index(pod: &Value) -> Option<usize> {
    pod["spec"]["containers"].as_array().and_then(|items| items.iter().position(|c| c["name"] != PROXY))
}

/// One edit of the stored pod: (description, subresource, whether it changes what tollgate owns).
fn edit(pod: &Value, choice: u8, policy: &Policy) -> (Value, &'static str, &'static str, bool) {
    let mut new = pod.clone();
    let subresources = ["", "status", EPHEMERAL, "resize"];
    let subresource = subresources[usize::from(choice >> 5) % subresources.len()];
    let (what, owned) = match choice % 12 {
        0 => ("nothing", false),
        1 => {
            new["metadata"]["labels"]["team"] = json!("b");
            ("an app label", false)
        }
        2 => match app_index(&new) {
            Some(i) => {
                new["spec"]["containers"][i]["image"] = json!("registry.example.org/app:2");
                ("an app image", false)
            }
            None => ("nothing", false),
        },
        3 => {
            new["metadata"]["labels"]["tollgate.dev/injected"] = json!("false");
            ("tollgate's label", true)
        }
        4 => {
            new["metadata"]["annotations"]["tollgate.dev/status"] = json!("{}");
            ("tollgate's annotation", true)
        }
        5 => match proxy_index(&new) {
            Some((list, i)) => {
                new["spec"][list][i]["image"] = json!("evil.example/proxy:1");
                ("the proxy's image", true)
            }
            None => ("nothing", false),
        },
        6 => match proxy_index(&new) {
            Some((list, i)) => {
                new["spec"][list][i]["env"] = json!([{"name": "TOLLGATE_CONFIG", "value": "/tmp/mine.yaml"}]);
                ("the proxy's env", true)
            }
            None => ("nothing", false),
        },
        7 => match new["spec"]["volumes"].as_array_mut().and_then(|v| v.iter_mut().find(|v| v["name"] == "tollgate-proxy-credentials")) {
            Some(volume) => {
                *volume = json!({"name": "tollgate-proxy-credentials", "secret": {"secretName": "someone-elses"}});
                ("tollgate's volume", true)
            }
            None => ("nothing", false),
        },
        8..=10 => {
            let container = match choice % 12 {
                8 => json!({"name": "debugger", "image": "busybox", "targetContainerName": "app"}),
                9 => json!({"name": "debugger", "image": "busybox", "securityContext": {"privileged": true, "runAsUser": 0}}),
                _ => json!({"name": PROXY, "image": "busybox"}),
            };
            match new["spec"]["ephemeralContainers"].as_array_mut() {
                Some(list) => list.push(container),
                None => new["spec"]["ephemeralContainers"] = json!([container]),
            }
            // A new container named like tollgate's in ephemeralContainers is not one of tollgate's rendered
            // containers, but is refused when added through the subresource.
            ("an ephemeral container", false)
        }
        _ => match app_index(&new) {
            Some(i) => {
                let cpu = if choice & 0x10 != 0 { "100" } else { "250m" };
                new["spec"]["containers"][i]["resources"]["limits"]["cpu"] = json!(cpu);
                ("a resize", false)
            }
            None => ("nothing", false),
        },
    };
    let _ = policy;
    (new, what, subresource, owned)
}

const EPHEMERAL: &str = "ephemeralcontainers";

fn structured(selector: u8, edit_choice: u8, connect: u8, pod: Value) {
    let policy = &policies()[usize::from(selector % 3)];
    let trusted = selector & 0x04 != 0;
    let mode = if selector & 0x08 != 0 { OnViolation::Warn } else { policy.on_violation };
    let create = Request { operation: "CREATE", group: "", kind: "Pod", subresource: "", object: pod, old: None, trusted };
    let (_, summary, patched) = answer(policy, mode, &create);
    // A volume without a name, or two of one name: the API server's validation refuses the pod whatever tollgate
    // does, so it is never stored (see the harden target).
    let refused_anyway = {
        let mut names = std::collections::BTreeSet::new();
        create.object["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v.get("name").and_then(Value::as_str).is_none_or(|name| name.is_empty() || !names.insert(name)))
    };
    if refused_anyway {
        return;
    }
    let stored = match (summary.outcome, patched) {
        (ReviewOutcome::Patched, Some(hardened)) => {
            // Reinvocation: the hardened pod, sent again, is allowed unchanged.
            let again = Request { object: hardened.clone(), ..create };
            let (_, summary, patch) = answer(policy, mode, &again);
            assert_eq!(summary.outcome, ReviewOutcome::Unchanged, "reinvocation changed the pod: {patch:?}");
            hardened
        }
        (ReviewOutcome::Unchanged, None) => create.object.clone(),
        _ => return,
    };

    // UPDATE over the stored pod.
    let (new, what, subresource, owned) = edit(&stored, edit_choice, policy);
    let update =
        Request { operation: "UPDATE", group: "", kind: "Pod", subresource, object: new.clone(), old: Some(stored.clone()), trusted };
    let (review, summary, patched) = answer(policy, policy.on_violation, &update);
    let allowed = review["response"]["allowed"] == true;
    let message = review["response"]["status"]["message"].as_str().unwrap_or("").to_owned();
    if owned {
        assert!(!allowed && message.contains("[tollgate-owned]"), "a change to {what} via {subresource:?} was not refused: {message}");
    }
    match what {
        "nothing" | "an app label" | "an app image" => {
            assert!(allowed && patched.is_none(), "{what} via {subresource:?}: refused or patched: {message}");
        }
        "an ephemeral container" if subresource == EPHEMERAL && allowed => {
            let hardened = patched.unwrap_or(new);
            // Judged only where the stored pod is itself restricted (not where the API server's validation
            // would refuse it anyway: see the harden target).
            let before: Pod = serde_json::from_value(stored.clone()).expect("a Pod");
            if !pss::restricted_violations(&before).is_empty() {
                return;
            }
            let typed: Pod = serde_json::from_value(hardened.clone()).expect("a Pod");
            let violations = pss::restricted_violations(&typed);
            assert!(violations.is_empty(), "an ephemeral container let in unrestricted: {violations:?}\n{hardened}");
            let debuggers =
                hardened["spec"]["ephemeralContainers"].as_array().map_or(0, |l| l.iter().filter(|c| c["name"] == PROXY).count());
            let before = stored["spec"]["ephemeralContainers"].as_array().map_or(0, |l| l.iter().filter(|c| c["name"] == PROXY).count());
            assert_eq!(debuggers, before, "an ephemeral container named {PROXY} added");
        }
        _ => {}
    }
    let _ = summary;

    // CONNECT into the stored pod.
    let (kind, subresource, object) = match connect % 4 {
        0 => ("PodExecOptions", "exec", json!({"kind": "PodExecOptions", "apiVersion": "v1", "container": PROXY, "command": ["sh"]})),
        1 => ("PodAttachOptions", "attach", json!({"kind": "PodAttachOptions", "apiVersion": "v1", "container": "app"})),
        2 => {
            let ports = match connect >> 2 & 3 {
                0 => json!([]),
                1 => json!([policy.proxy.egress_port]),
                2 => json!([8080, policy.proxy.egress_port]),
                _ => json!([8080]),
            };
            ("PodPortForwardOptions", "portforward", json!({"kind": "PodPortForwardOptions", "apiVersion": "v1", "ports": ports}))
        }
        _ => ("PodExecOptions", "exec", json!({"kind": "PodExecOptions", "apiVersion": "v1", "container": "app", "command": ["ls"]})),
    };
    let ports: Option<Vec<i64>> = object["ports"].as_array().map(|p| p.iter().filter_map(Value::as_i64).collect());
    let to_the_proxy = object["container"] == PROXY;
    let forward_to_the_proxy = ports.as_deref().is_none_or(|p| p.is_empty() || p.contains(&i64::from(policy.proxy.egress_port)));
    let connect = Request { operation: "CONNECT", group: "", kind, subresource, object, old: None, trusted };
    let (review, ..) = answer(policy, policy.on_violation, &connect);
    let refused = review["response"]["allowed"] == false;
    match kind {
        // A forward may reach the proxy's egress port: refused for anyone the policy does not trust.
        "PodPortForwardOptions" => assert!(refused || (trusted && !forward_to_the_proxy) || trusted, "{kind}: {review}"),
        _ => assert_eq!(refused, to_the_proxy, "{kind} {subresource}: {review}"),
    }
    if kind == "PodPortForwardOptions" && !trusted && forward_to_the_proxy {
        assert!(refused, "a port-forward that may reach the proxy's egress port let through: {review}");
    }
}

fuzz_target!(|data: &[u8]| {
    match data {
        [b'#', selector, edit_choice, connect, pod @ ..] => {
            let Ok(pod) = serde_json::from_slice::<Value>(pod) else { return };
            if !pod.is_object() {
                return;
            }
            structured(*selector, *edit_choice, *connect, pod);
        }
        _ => {
            // A raw body: answered or refused, never a panic; an answer is a well-formed review.
            for policy in policies() {
                if let Ok((bytes, _)) = review_in(policy, policy.on_violation, data) {
                    let review: Value = serde_json::from_slice(&bytes).expect("an answer is JSON");
                    assert!(review["response"]["allowed"].is_boolean(), "{review}");
                }
            }
        }
    }
});
