//! The FLAME profile (charts/tollgate/values-flame.yaml, manifests/flame/): analyses in a namespace shared
//! with the node's services. Rendered by the chart, and on a real kube-apiserver with the webhook registered
//! as manifests/flame/ ships it: in ONE namespace, the pods labeled `component: flame-analysis` are hardened
//! and the node's services are stored untouched; a hardened pod stays guarded after its `component` label or
//! its namespace's label is removed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_e2e::{ControlPlane, Webhook, chart_files, settled};
use tollgate_testkit::text;

const NS: &str = "flame";
const ANALYSIS: &str = "4bd3e5a0-2c4f-4f7e-9a61-0c8f5d2b7e13";
const PROJECT: &str = "9e6f1c2a-7d3b-4a58-b0e4-5f1a2c3d4e5f";
const ORCHESTRATOR: &str = "system:serviceaccount:flame:flame-po-sa";

fn chart() -> PathBuf {
    chart_files::chart_dir()
}

fn values_flame() -> PathBuf {
    chart().join("values-flame.yaml")
}

fn helm_template(args: &[&str]) -> String {
    let helm = tollgate_e2e::bin_dir().join("helm");
    let out = Command::new(&helm).args(["template", "tollgate"]).arg(chart()).args(["-n", "tollgate"]).args(args).output().unwrap();
    assert!(out.status.success(), "helm template {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn documents(stream: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(stream).map(|d| Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect()
}

/// The one object `kind`/`name` of a YAML stream (`None`: there is none).
fn find(stream: &str, kind: &str, name: &str) -> Option<Value> {
    let mut found: Vec<Value> = documents(stream).into_iter().filter(|v| v["kind"] == kind && v["metadata"]["name"] == name).collect();
    assert!(found.len() <= 1, "two objects {kind} {name}");
    found.pop()
}

fn object(stream: &str, kind: &str, name: &str) -> Value {
    find(stream, kind, name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn webhook<'a>(configuration: &'a Value, name: &str) -> &'a Value {
    configuration["webhooks"].as_array().unwrap().iter().find(|w| w["name"] == name).unwrap_or_else(|| panic!("no webhook {name}"))
}

/// values-flame.yaml, parsed.
fn flame_values() -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(values_flame()).unwrap()).unwrap()
}

#[test]
fn the_flame_profile_is_the_route_table_of_proxy_examples_and_its_manifests_are_what_the_chart_renders() {
    // The same route table, parsed: proxy/examples/flame.yaml is what values-flame.yaml installs.
    let example: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(chart_files::flame_routes_path()).unwrap()).unwrap();
    assert!(example["routes"].as_array().is_some_and(|r| !r.is_empty()), "{example}");
    assert_eq!(flame_values()["proxyConfig"], example, "values-flame.yaml's proxyConfig is not proxy/examples/flame.yaml");
    // Both generated files are up to date (text, comments included).
    for (path, generate) in [
        (values_flame(), chart_files::flame_values as fn(&str) -> Result<String, String>),
        (chart_files::flame_manifests_path(), chart_files::flame_manifests),
    ] {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            generate(&current).unwrap() == current,
            "{} is out of date: run `cargo run -p tollgate-e2e --bin tollgate-chart-files -- --write`",
            path.display()
        );
    }
    // manifests/flame/ holds the objects the profile changes, as the chart renders them.
    let rendered = helm_template(&["-f", values_flame().to_str().unwrap()]);
    let shipped = std::fs::read_to_string(chart_files::flame_manifests_path()).unwrap();
    for (kind, name) in [
        ("MutatingWebhookConfiguration", "tollgate"),
        ("ValidatingAdmissionPolicyBinding", "tollgate-require-hardening"),
        ("ConfigMap", "tollgate-policy"),
        ("ConfigMap", "tollgate-proxy-routes"),
        ("NetworkPolicy", "tollgate-analysis"),
        ("NetworkPolicy", "tollgate-analysis-hardened"),
    ] {
        let (chart, plain) = (object(&rendered, kind, name), object(&shipped, kind, name));
        assert_eq!(chart["spec"], plain["spec"], "{kind} {name}");
        assert_eq!(chart["webhooks"], plain["webhooks"], "{kind} {name}");
        assert_eq!(chart["data"], plain["data"], "{kind} {name}");
        assert_eq!(plain["metadata"]["labels"]["app.kubernetes.io/part-of"], "tollgate", "{kind} {name}");
        assert!(plain["metadata"]["labels"]["helm.sh/chart"].is_null(), "{kind} {name}: Helm's labels in plain manifests");
    }
    // Everything else manifests/flame/ leaves to manifests/: the pod guard is the same for every profile.
    let default = helm_template(&[]);
    for (kind, name) in [("ValidatingAdmissionPolicy", "tollgate-pod-guard"), ("ValidatingAdmissionPolicyBinding", "tollgate-pod-guard")] {
        assert_eq!(object(&rendered, kind, name)["spec"], object(&default, kind, name)["spec"], "{kind} {name}");
        assert!(find(&shipped, kind, name).is_none(), "{kind} {name} is manifests/'s");
    }
}

#[test]
fn the_flame_profile_selects_analysis_pods_admits_only_the_orchestrator_and_broker_and_reaches_only_the_services() {
    let rendered = helm_template(&["-f", values_flame().to_str().unwrap()]);
    let analysis = json!({"matchLabels": {"component": "flame-analysis"}});
    let injected = json!({"matchLabels": {"tollgate.dev/injected": "true"}});

    // Admission: the pods labeled component: flame-analysis are hardened (or warned) and must have been seen;
    // hardened pods are followed by their own label wherever they are.
    let configuration = object(&rendered, "MutatingWebhookConfiguration", "tollgate");
    for name in ["harden.pods.tollgate.dev", "warn.pods.tollgate.dev"] {
        assert_eq!(webhook(&configuration, name)["objectSelector"], analysis, "{name}");
        assert_eq!(webhook(&configuration, name)["namespaceSelector"]["matchLabels"], json!({"tollgate.dev/inject": "enabled"}), "{name}");
    }
    let hardened = webhook(&configuration, "hardened.pods.tollgate.dev");
    assert_eq!(hardened["objectSelector"], injected);
    assert!(hardened["namespaceSelector"]["matchLabels"].is_null(), "not only in labeled namespaces: {hardened}");
    assert_eq!(hardened["rules"][0]["resources"], json!(["pods/ephemeralcontainers", "pods/resize"]));
    let connect = webhook(&configuration, "connect.pods.tollgate.dev");
    assert!(connect["namespaceSelector"]["matchLabels"].is_null(), "exec into the proxy is refused everywhere: {connect}");
    assert_eq!(connect["rules"][0]["resources"], json!(["pods/exec", "pods/attach"]));
    let binding = object(&rendered, "ValidatingAdmissionPolicyBinding", "tollgate-require-hardening");
    assert_eq!(binding["spec"]["matchResources"]["objectSelector"], analysis);
    let guard = object(&rendered, "ValidatingAdmissionPolicyBinding", "tollgate-pod-guard");
    assert_eq!(guard["spec"]["matchResources"], json!({"objectSelector": injected}), "the guard follows the pod, not the namespace");

    // The policy: the orchestrator is trusted, the SDK's addressing and env, a Secret per analysis.
    let policy: Value =
        serde_yaml_ng::from_str(object(&rendered, "ConfigMap", "tollgate-policy")["data"]["policy.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(policy["identity"]["trustedUsers"], json!([ORCHESTRATOR]));
    assert_eq!(policy["proxy"]["egressPort"], 80);
    assert_eq!(policy["proxy"]["egressHostnames"], json!(["nginx-{env:DEPLOYMENT_NAME}"]));
    assert_eq!(
        policy["proxy"]["placeholderEnv"],
        json!([{"name": "KEYCLOAK_TOKEN", "kind": "jwt"}, {"name": "DATA_SOURCE_TOKEN", "kind": "opaque"}])
    );
    assert_eq!(policy["proxy"]["credentialsSecret"], "tollgate-proxy-credentials-{analysis_id}");

    // The FLAME namespace: its route table, and NetworkPolicies for the analysis pods only.
    let routes = object(&rendered, "ConfigMap", "tollgate-proxy-routes");
    assert_eq!(routes["metadata"]["namespace"], NS);
    let config: Value = serde_yaml_ng::from_str(routes["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(config, flame_values()["proxyConfig"]);
    let selected = object(&rendered, "NetworkPolicy", "tollgate-analysis")["spec"].clone();
    let by_label = object(&rendered, "NetworkPolicy", "tollgate-analysis-hardened")["spec"].clone();
    assert_eq!(selected["podSelector"], analysis, "the node's services are not tollgate's to close");
    assert_eq!(by_label["podSelector"], injected, "a hardened pod whose component label is gone stays closed");
    let mut same = by_label.clone();
    same["podSelector"] = selected["podSelector"].clone();
    assert_eq!(same, selected, "both policies allow the same");
    assert_eq!(selected["policyTypes"], json!(["Ingress", "Egress"]));
    // In: the proxy's ingress port from the orchestrator's and the broker's pods only (they send no token).
    let ingress = selected["ingress"].as_array().unwrap();
    assert_eq!(ingress[0]["ports"], json!([{"port": 15006, "protocol": "TCP"}]));
    assert_eq!(
        ingress[0]["from"],
        json!([{"podSelector": {"matchLabels": {"component": "flame-po"}}}, {"podSelector": {"matchLabels": {"component": "flame-message-broker"}}}])
    );
    assert_eq!(ingress[1]["ports"], json!([{"port": 15021, "protocol": "TCP"}]), "the admin port (metrics)");
    assert_eq!(ingress.len(), 2, "nothing else in: not the app's own port");
    // Out: DNS and the FLAME services' pods on their ports, nothing else (no namespace-wide rule).
    let egress = selected["egress"].as_array().unwrap();
    assert_eq!(egress[0]["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "kube-system");
    assert_eq!(egress[0]["to"][0]["podSelector"]["matchLabels"], json!({"k8s-app": "kube-dns"}));
    let services: Vec<(Value, Value)> =
        egress[1..].iter().map(|r| (r["to"][0]["podSelector"]["matchLabels"].clone(), r["ports"][0]["port"].clone())).collect();
    assert_eq!(
        services,
        [
            (json!({"component": "flame-storage-service"}), json!(8080)),
            (json!({"component": "flame-hub-adapter"}), json!(5000)),
            (json!({"component": "flame-message-broker"}), json!(8080)),
            (json!({"component": "flame-po"}), json!(8000)),
            (json!({"app.kubernetes.io/name": "kong", "app.kubernetes.io/instance": "flame"}), json!(8000)),
            (json!({"app.kubernetes.io/name": "keycloak", "app.kubernetes.io/instance": "flame"}), json!(8080)),
        ]
    );
    for rule in &egress[1..] {
        assert!(rule["to"][0]["namespaceSelector"].is_null() && rule["to"].as_array().unwrap().len() == 1, "{rule}");
    }

    // The default: every pod of the analysis namespaces (today's behaviour), one NetworkPolicy, any caller.
    let default = helm_template(&["--set", "analysisNamespaces[0].name=analyses"]);
    let configuration = object(&default, "MutatingWebhookConfiguration", "tollgate");
    assert_eq!(webhook(&configuration, "harden.pods.tollgate.dev")["objectSelector"], json!({}));
    assert_eq!(
        object(&default, "ValidatingAdmissionPolicyBinding", "tollgate-require-hardening")["spec"]["matchResources"]["objectSelector"],
        json!({})
    );
    let policy = object(&default, "NetworkPolicy", "tollgate-analysis");
    assert_eq!(policy["spec"]["podSelector"], json!({}));
    assert!(policy["spec"]["ingress"][0]["from"].is_null(), "no ingressFrom: any caller (JWT-checked)");
    assert!(find(&default, "NetworkPolicy", "tollgate-analysis-hardened").is_none(), "podSelector {{}} already takes every pod");
    // matchExpressions work too, and reach every place the selection goes.
    let expressions = helm_template(&[
        "--set",
        "analysisNamespaces[0].name=analyses",
        "--set",
        "selection.podSelector.matchExpressions[0].key=role",
        "--set",
        "selection.podSelector.matchExpressions[0].operator=In",
        "--set",
        "selection.podSelector.matchExpressions[0].values[0]=analysis",
    ]);
    let selector = json!({"matchExpressions": [{"key": "role", "operator": "In", "values": ["analysis"]}]});
    assert_eq!(
        webhook(&object(&expressions, "MutatingWebhookConfiguration", "tollgate"), "warn.pods.tollgate.dev")["objectSelector"],
        selector
    );
    assert_eq!(object(&expressions, "NetworkPolicy", "tollgate-analysis")["spec"]["podSelector"], selector);

    // The schema refuses what the API server would refuse at install time.
    let helm = tollgate_e2e::bin_dir().join("helm");
    for (set, said) in [
        ("selection.podSelector.matchExpressions[0].key=role,selection.podSelector.matchExpressions[0].operator=Maybe", "operator"),
        ("selection.podSelector.matchLabel.component=x", "matchLabel"),
        ("analysisNamespaces[0].name=a,analysisNamespaces[0].ingressFrom[0].pods=x", "pods"),
        ("analysisNamespaces[0].name=a,analysisNamespaces[0].egressRules[0].ports[0].protocol=HTTP", "protocol"),
    ] {
        let out = Command::new(&helm).args(["template", "t"]).arg(chart()).args(["--set", set]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(said), "--set {set}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// On a real API server.

/// manifests/flame/ registered for the local webhook (by URL, with its CA), and its FLAME namespace objects
/// applied; the pod guard and the require-hardening policy are manifests/'s (registered by `Webhook`).
fn register_flame(plane: &ControlPlane, webhook: &Webhook) {
    let ca = base64::engine::general_purpose::STANDARD.encode(std::fs::read(webhook.certs.join("ca.crt")).unwrap());
    let shipped = std::fs::read_to_string(chart_files::flame_manifests_path()).unwrap();
    for mut object in documents(&shipped) {
        if object["metadata"]["namespace"] == "tollgate" {
            continue; // the policy ConfigMap: the local webhook reads the same policy from a file
        }
        if let Some(webhooks) = object["webhooks"].as_array_mut() {
            for w in webhooks.iter_mut() {
                let path = w["clientConfig"]["service"]["path"].as_str().unwrap().to_owned();
                w["clientConfig"] = json!({"url": format!("https://127.0.0.1:{}{path}", webhook.port), "caBundle": ca});
            }
        }
        let out = plane.kubectl_stdin(&["apply", "-f", "-"], &object.to_string());
        assert!(out.status.success(), "{} {}: {}", object["kind"], object["metadata"]["name"], text(&out));
    }
    // The API server takes changed admission configurations in through informers: wait until a pod of the
    // node's services is no longer tollgate's (a server-side dry run comes back as it was sent).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = plane.kubectl_stdin(&["create", "--dry-run=server", "-o", "json", "-f", "-"], SERVICE_POD);
        let seen: Option<Value> = out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap());
        if seen.as_ref().is_some_and(|pod| pod["spec"]["initContainers"].is_null() && pod["metadata"]["annotations"].is_null()) {
            return;
        }
        assert!(Instant::now() < deadline, "the FLAME selection never took effect: {}", text(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The FLAME namespace as the FLAME chart leaves it, labeled for tollgate (no Pod Security labels: the node's
/// services run there too); the orchestrator's ServiceAccount with the rights it has there; `mallory`, who
/// may do anything with pods there and nothing else.
fn prepare(plane: &ControlPlane) -> PathBuf {
    let manifest = format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[
{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{NS}","labels":{{"tollgate.dev/inject":"enabled"}}}}}},
{{"apiVersion":"v1","kind":"ServiceAccount","metadata":{{"name":"default","namespace":"{NS}"}}}},
{{"apiVersion":"v1","kind":"ServiceAccount","metadata":{{"name":"flame-po-sa","namespace":"{NS}"}}}},
{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{{"name":"pod-rights","namespace":"{NS}"}},"rules":[
  {{"apiGroups":[""],"resources":["pods","pods/ephemeralcontainers","pods/resize","pods/exec","pods/attach","pods/portforward","pods/log"],"verbs":["*"]}}]}},
{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{{"name":"pod-rights","namespace":"{NS}"}},
  "roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"pod-rights"}},
  "subjects":[{{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"mallory"}},
              {{"kind":"ServiceAccount","name":"flame-po-sa","namespace":"{NS}"}}]}}]}}"#
    );
    plane.apply(&manifest);
    plane.user_kubeconfig("mallory", &["analysts"])
}

/// An analysis pod as the orchestrator's Deployment template makes it (FACTS.md §5, with the documented
/// change: tollgate's analysis and project annotations), created by the orchestrator's ServiceAccount.
fn analysis_pod(name: &str, labels: Value) -> String {
    let deployment = format!("analysis-{ANALYSIS}-0");
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": NS, "labels": labels,
            "annotations": {"tollgate.dev/analysis-id": ANALYSIS, "tollgate.dev/project-id": PROJECT}
        },
        "spec": {
            "imagePullSecrets": [{"name": "flame-harbor-credentials"}],
            "containers": [{
                "name": deployment, "image": format!("harbor.privateaim.dev/master/{ANALYSIS}:latest"),
                "imagePullPolicy": "IfNotPresent", "ports": [{"containerPort": 8000}],
                "env": [
                    {"name": "DATA_SOURCE_TOKEN", "value": "example-kong-key-auth-key-of-the-analysis"},
                    {"name": "KEYCLOAK_TOKEN", "value": "eyJhbGciOiJSUzI1NiJ9.example-client-credentials-token.signature"},
                    {"name": "ANALYSIS_ID", "value": ANALYSIS},
                    {"name": "PROJECT_ID", "value": PROJECT},
                    {"name": "DEPLOYMENT_NAME", "value": deployment}
                ]
            }]
        }
    })
    .to_string()
}

fn analysis_labels() -> Value {
    json!({"app": format!("analysis-{ANALYSIS}-0"), "component": "flame-analysis"})
}

/// A pod of the node's services (Keycloak here), as its chart makes it: not hardened, and not meant to be.
const SERVICE_POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"flame-keycloak-0","namespace":"flame",
"labels":{"app.kubernetes.io/name":"keycloak","app.kubernetes.io/instance":"flame"}},
"spec":{"containers":[{"name":"keycloak","image":"quay.io/keycloak/keycloak:26.0","ports":[{"containerPort":8080}],
"securityContext":{"runAsUser":0}}]}}"#;

fn orchestrator_creates(plane: &ControlPlane, pod: &str) -> Output {
    settled(|| plane.kubectl_stdin(&["create", "--as", ORCHESTRATOR, "-f", "-"], pod))
}

fn stored(plane: &ControlPlane, name: &str) -> Value {
    let out = plane.kubectl(&["get", "pod", name, "-n", NS, "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn is_hardened(pod: &Value) -> bool {
    pod["metadata"]["labels"]["tollgate.dev/injected"] == "true"
        && pod["spec"]["initContainers"].as_array().is_some_and(|c| c.iter().any(|c| c["name"] == "tollgate-proxy"))
}

/// Stored as it came: nothing of tollgate's on it.
fn assert_untouched(pod: &Value) {
    let name = &pod["metadata"]["name"];
    assert!(pod["spec"]["initContainers"].is_null(), "{name}: {}", pod["spec"]);
    let tollgates = |map: &Value| map.as_object().is_some_and(|m| m.keys().any(|k| k.starts_with("tollgate.dev/")));
    assert!(!tollgates(&pod["metadata"]["labels"]) && !tollgates(&pod["metadata"]["annotations"]), "{name}: {}", pod["metadata"]);
    assert!(pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"].is_null(), "{name}: {}", pod["spec"]);
    assert!(pod["spec"]["securityContext"]["seccompProfile"].is_null(), "{name}: {}", pod["spec"]);
}

fn as_mallory(plane: &ControlPlane, mallory: &Path, args: &[&str]) -> Output {
    settled(|| plane.kubectl_as(mallory, args))
}

/// `args` fail as mallory, the message containing `expected`, and the pod stays as it was.
fn refused(plane: &ControlPlane, mallory: &Path, pod: &str, args: &[&str], expected: &str) {
    let before = stored(plane, pod);
    let out = as_mallory(plane, mallory, args);
    assert!(!out.status.success(), "{args:?} was allowed: {}", text(&out));
    assert!(text(&out).contains(expected), "{args:?}: {} lacks {expected:?}", text(&out));
    let after = stored(plane, pod);
    assert_eq!(before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"], "{args:?} changed the pod");
}

fn allowed(plane: &ControlPlane, mallory: &Path, args: &[&str]) {
    let out = as_mallory(plane, mallory, args);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
}

/// Every way mallory could take tollgate's proxy out of a hardened pod: each refused.
fn still_guarded(plane: &ControlPlane, mallory: &Path, pod: &str, why: &str) {
    let image = format!(r#"[{{"op":"replace","path":"/spec/initContainers/0/image","value":"attacker.example/proxy:{why}"}}]"#);
    refused(
        plane,
        mallory,
        pod,
        &["patch", "pod", pod, "-n", NS, "--type=json", "-p", &image],
        r#"container "tollgate-proxy" is tollgate's and cannot be changed after admission (image: "#,
    );
    refused(
        plane,
        mallory,
        pod,
        &["label", "pod", pod, "-n", NS, "tollgate.dev/injected-"],
        "metadata.labels[tollgate.dev/injected] are tollgate's",
    );
    refused(
        plane,
        mallory,
        pod,
        &["debug", pod, "-n", NS, "--image=busybox:1.36", "--profile=sysadmin", "-c", &format!("root-{why}")],
        "securityContext.privileged is true [privileged]",
    );
    let thief = format!(
        r#"{{"spec":{{"ephemeralContainers":[{{"name":"thief-{why}","image":"busybox:1.36","volumeMounts":[{{"name":"tollgate-proxy-credentials","mountPath":"/c"}}]}}]}}}}"#
    );
    refused(
        plane,
        mallory,
        pod,
        &["patch", "pod", pod, "-n", NS, "--subresource=ephemeralcontainers", "-p", &thief],
        "which carries the proxy credentials Secret",
    );
    refused(
        plane,
        mallory,
        pod,
        &["exec", pod, "-n", NS, "-c", "tollgate-proxy", "--", "cat", "/var/run/secrets/tollgate/client-secret"],
        "pods/exec is refused: the proxy holds the analysis's credentials",
    );
}

#[test]
fn in_a_shared_namespace_only_analysis_pods_are_hardened_and_relabelling_releases_none() {
    let plane = ControlPlane::start();
    let policy = serde_yaml_ng::to_string(&flame_values()["policy"]).unwrap();
    let webhook = Webhook::start_with_policy(&plane, &policy);
    let mallory = prepare(&plane);
    register_flame(&plane, &webhook);
    let m = mallory.as_path();

    // The analysis pod, as the orchestrator creates it: hardened, the FLAME way.
    let out = orchestrator_creates(&plane, &analysis_pod("analysis", analysis_labels()));
    assert!(out.status.success(), "{}\n{}", text(&out), webhook.process.logs());
    let pod = stored(&plane, "analysis");
    assert!(is_hardened(&pod), "{pod:#}");
    let spec = &pod["spec"];
    let deployment = format!("analysis-{ANALYSIS}-0");
    assert_eq!(spec["hostAliases"], json!([{"ip": "127.0.0.1", "hostnames": [format!("nginx-{deployment}")]}]), "{spec:#}");
    let proxy = &spec["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "tollgate-proxy").unwrap();
    let env = |container: &Value, name: &str| -> Value {
        container["env"].as_array().unwrap().iter().find(|e| e["name"] == name).map(|e| e["value"].clone()).unwrap_or(Value::Null)
    };
    assert_eq!(env(proxy, "TOLLGATE_EGRESS_HOSTNAMES"), json!(format!("nginx-{deployment}")));
    assert_eq!(env(proxy, "TOLLGATE_EGRESS_LISTEN"), "127.0.0.1:80");
    let credentials = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "tollgate-proxy-credentials").unwrap();
    assert_eq!(credentials["secret"]["secretName"], json!(format!("tollgate-proxy-credentials-{ANALYSIS}")));
    let app = &spec["containers"][0];
    assert_eq!(env(app, "DATA_SOURCE_TOKEN"), "tollgate-placeholder", "the app holds no data-source key");
    let token = env(app, "KEYCLOAK_TOKEN");
    assert!(token.as_str().is_some_and(|t| t.starts_with("eyJ") && t.ends_with('.') && !t.contains("example")), "{token}");
    assert_eq!(env(app, "DEPLOYMENT_NAME"), json!(deployment), "the SDK's own env stays");
    let sysctls = spec["securityContext"]["sysctls"].as_array().cloned().unwrap_or_default();
    assert!(sysctls.contains(&json!({"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"})), "{sysctls:?}");

    // A pod of the node's services beside it, in the same namespace: stored exactly as it came (a root
    // user and all: tollgate neither hardens nor refuses it), and free to change.
    let out = settled(|| plane.kubectl_stdin(&["create", "-f", "-"], SERVICE_POD));
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("tollgate"), "no word from tollgate: {}", text(&out));
    let service = stored(&plane, "flame-keycloak-0");
    assert_untouched(&service);
    assert_eq!(service["spec"]["containers"][0]["securityContext"]["runAsUser"], 0);
    allowed(&plane, m, &["label", "pod", "flame-keycloak-0", "-n", NS, "tollgate.dev/note=mine"]);
    allowed(&plane, m, &["debug", "flame-keycloak-0", "-n", NS, "--image=busybox:1.36", "--profile=general", "-c", "look"]);
    let service = stored(&plane, "flame-keycloak-0");
    let look = &service["spec"]["ephemeralContainers"][0];
    assert!(look["securityContext"]["readOnlyRootFilesystem"].is_null(), "not tollgate's to harden: {look}");
    // The orchestrator's own pods too (the labels tollgate's NetworkPolicy admits callers by).
    let orchestrator = SERVICE_POD
        .replace("flame-keycloak-0", "flame-po-0")
        .replace(r#""app.kubernetes.io/name":"keycloak","app.kubernetes.io/instance":"flame""#, r#""component":"flame-po""#);
    assert!(settled(|| plane.kubectl_stdin(&["create", "-f", "-"], &orchestrator)).status.success());
    assert_untouched(&stored(&plane, "flame-po-0"));

    // Selected pods are tollgate's: one without an analysis id (needed for its credentials Secret) is refused,
    // and none may claim one but the orchestrator.
    let anonymous = analysis_pod("anonymous", analysis_labels()).replace(&format!(r#""tollgate.dev/analysis-id":"{ANALYSIS}","#), "");
    let out = orchestrator_creates(&plane, &anonymous);
    assert!(!out.status.success() && text(&out).contains("tollgate denied this pod"), "{}", text(&out));
    let out = settled(|| plane.kubectl_stdin_as(m, &["create", "-f", "-"], &analysis_pod("claimant", analysis_labels())));
    assert!(!out.status.success() && text(&out).contains("[untrusted-identity]"), "{}", text(&out));

    // A second analysis pod for the namespace-label step below.
    let second = analysis_pod("second", json!({"app": "analysis-second-0", "component": "flame-analysis"}));
    assert!(orchestrator_creates(&plane, &second).status.success());
    assert!(is_hardened(&stored(&plane, "second")));

    // mallory takes the analysis pod out of the selection: allowed (the label is not tollgate's) ...
    allowed(&plane, m, &["label", "pod", "analysis", "-n", NS, "component-", "app-"]);
    let relabelled = stored(&plane, "analysis");
    assert!(relabelled["metadata"]["labels"]["component"].is_null());
    // ... and the pod is still tollgate's: nothing of the proxy can be changed, reached or added to.
    still_guarded(&plane, m, "analysis", "relabelled");
    // What is legitimately done with a hardened pod still works, and is still hardened.
    allowed(
        &plane,
        m,
        &["debug", "analysis", "-n", NS, "--image=busybox:1.36", "--profile=restricted", "--target", &deployment, "-c", "helper"],
    );
    let helper = &stored(&plane, "analysis")["spec"]["ephemeralContainers"][0];
    assert_eq!(helper["securityContext"]["readOnlyRootFilesystem"], true, "hardened though unselected: {helper}");

    // The admin removes the namespace's label (tollgate no longer asked for there): new pods are plain ...
    let out = plane.kubectl(&["label", "namespace", NS, "tollgate.dev/inject-"]);
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = orchestrator_creates(&plane, &analysis_pod("after", analysis_labels()));
        if out.status.success() && !is_hardened(&stored(&plane, "after")) {
            break;
        }
        // (admission sees namespace labels through an informer: allow it a moment)
        let _ = plane.kubectl(&["delete", "pod", "after", "-n", NS, "--ignore-not-found", "--wait=false", "--grace-period=0", "--force"]);
        assert!(Instant::now() < deadline, "pods are still hardened in an unlabeled namespace: {}", text(&out));
        std::thread::sleep(Duration::from_millis(300));
    }
    // ... and the pods tollgate hardened stay guarded, selected or not.
    still_guarded(&plane, m, "second", "unlabelled");
    still_guarded(&plane, m, "analysis", "both");
}

/// With the webhook configuration gone (an uninstall that forgot the namespace label), the API server's own
/// require-hardening policy refuses analysis pods that tollgate did not see, and only those: the node's
/// services in the same namespace are created as ever.
#[test]
fn without_the_webhook_only_analysis_pods_are_refused_in_the_shared_namespace() {
    let plane = ControlPlane::start();
    let policy = serde_yaml_ng::to_string(&flame_values()["policy"]).unwrap();
    let webhook = Webhook::start_with_policy(&plane, &policy);
    prepare(&plane);
    register_flame(&plane, &webhook);
    let out = plane.kubectl(&["delete", "mutatingwebhookconfiguration", "tollgate"]);
    assert!(out.status.success(), "{}", text(&out));
    drop(webhook);
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = plane.kubectl_stdin(&["create", "--as", ORCHESTRATOR, "-f", "-"], &analysis_pod("plain", analysis_labels()));
        if text(&out).contains("tollgate's webhook did not see it") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!out.status.success(), "an unhardened analysis pod was stored: {}", text(&out));
    let out = plane.kubectl_stdin(&["create", "-f", "-"], SERVICE_POD);
    assert!(out.status.success(), "the node's service: {}", text(&out));
    assert_untouched(&stored(&plane, "flame-keycloak-0"));
}
