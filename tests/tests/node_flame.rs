//! FLAME for real, on a real node (issue 21): an analysis created exactly as FLAME's pod orchestrator creates it
//! (with the documented change: the identity annotations, the per-analysis Secret, the Service `nginx-<DEP>` onto
//! the proxy's ingress, no nginx objects), in the namespace it shares with the FLAME node's services, runs to
//! completion through tollgate installed from `charts/tollgate/values-flame.yaml`.
//!
//! The node's services are stand-ins that check what the real ones check (tests/src/bin/flame_standins.rs), as
//! pods under the FLAME chart's Service names and labels: Keycloak (RS256 tokens with `client_id`, short-lived),
//! storage (the analysis is the token's `client_id`), Kong (key-auth on `apikey`, the project ACL; FHIR and an S3
//! bucket with a non-ASCII key), the broker (ownership; delivers to the webhook without a token), the hub adapter,
//! the pod orchestrator (status loop without a token, token refresh when the remaining time is low) and one service
//! tollgate has no business with. The analysis is tests/flame/analysis.py: the SDK's calls, in the SDK's order,
//! with the SDK's headers. Names resolve through the cluster's CoreDNS (scripts/cluster.sh), so the route table's
//! upstreams and the orchestrator's `nginx-<DEP>` are the real names.
//!
//! Needs `scripts/cluster.sh up` (its exports); `scripts/test.sh` runs this after tests/tests/node.rs, which ends
//! with tollgate uninstalled. The steps run in the order of `STEPS`, one after another, driven by the one test
//! `flame_suite` (each named on stderr as it starts and as it ends; the first failure stops the suite, naming its
//! step). The first step to run installs the FLAME profile (replacing any release) and runs the analysis once
//! (`setup_and_run`); every step reads what that run left, so any of them can run alone; the last uninstalls
//! tollgate.
//!
//! For development, `TOLLGATE_FLAME_STEPS` (comma-separated step names) runs only those steps, still in the
//! suite's order:
//!
//! ```sh
//! TOLLGATE_FLAME_STEPS=the_analysis_outlives_its_proxys_first_token \
//!   cargo test -p tollgate-e2e --locked --test node_flame -- --ignored
//! ```

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::node::NodeCluster;
use tollgate_testkit::{text, wait_until};

const NS: &str = "flame";
const AID: &str = "4bd3e5a0-2c4f-4f7e-9a61-0c8f5d2b7e13";
const PID: &str = "9e6f1c2a-7d3b-4a58-b0e4-5f1a2c3d4e5f";
const DEP: &str = "analysis-4bd3e5a0-2c4f-4f7e-9a61-0c8f5d2b7e13-0";
/// The analysis' Keycloak client's secret (the orchestrator creates the client, clientId = AID).
const CLIENT_SECRET: &str = "secret-of-the-analysis-client";
/// The analysis' Kong key-auth key (from the hub adapter; today the orchestrator gives it to the app).
const KONG_KEY: &str = "kong-key-of-the-analysis";
/// What FLAME's orchestrator account is (the FLAME chart's `<release>-po-sa`); values-flame.yaml trusts it.
const ORCHESTRATOR: &str = "system:serviceaccount:flame:flame-po-sa";
const ISSUER: &str = "http://flame-keycloak-http/keycloak/realms/flame";
/// Short: the analysis computes for 30 s (its image's CMD), past its proxy's first token.
const TOKEN_LIFETIME: u64 = 20;
const STANDINS: &str = "localhost/tollgate/flame-standins:0.1.0";
const ANALYSIS_IMAGE: &str = "localhost/tollgate/flame-analysis:0.1.0";

/// The node cluster (kubectl, helm and the cluster's directory, as `c.kubectl(…)`, `c.dir`), with what the FLAME
/// steps ask of it.
struct Cluster(NodeCluster);

fn cluster() -> Cluster {
    Cluster(NodeCluster::from_env())
}

impl std::ops::Deref for Cluster {
    type Target = NodeCluster;

    fn deref(&self) -> &NodeCluster {
        &self.0
    }
}

impl Cluster {
    /// `kubectl apply`, as the admin or (`as_user`) as someone else.
    fn apply(&self, manifest: &Value, as_user: Option<&str>) {
        let mut args = vec!["apply", "-f", "-"];
        let who;
        if let Some(user) = as_user {
            who = format!("--as={user}");
            args.push(&who);
        }
        let out = self.kubectl_stdin(&args, &manifest.to_string());
        assert!(out.status.success(), "kubectl apply {as_user:?}: {}\n{manifest:#}", text(&out));
    }

    fn pods(&self, selector: &str) -> Vec<Value> {
        self.json(&["get", "pods", "-n", NS, "-l", selector])["items"].as_array().cloned().unwrap_or_default()
    }

    /// The pod IP of the one running pod with these labels.
    fn pod_ip(&self, selector: &str) -> String {
        let pods = self.pods(selector);
        let running: Vec<&Value> =
            pods.iter().filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()).collect();
        assert_eq!(running.len(), 1, "one running pod for {selector}: {pods:#?}");
        running[0]["status"]["podIP"].as_str().unwrap().to_owned()
    }

    fn logs(&self, selector: &str, container: &str) -> String {
        text(&self.kubectl(&["logs", "-n", NS, "-l", selector, "-c", container, "--tail=-1"]))
    }
}

/// A plain HTTP/1.1 call from the host (the node's own address reaches every pod, whatever the NetworkPolicies).
fn http(method: &str, addr: &str, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = tollgate_testkit::exchange(addr, request.as_bytes(), Duration::from_secs(30)).unwrap_or_else(|e| panic!("{addr}: {e}"));
    (response.status, response.body)
}

/// What a stand-in's observe port says (GET), as JSON.
fn observe(ip: &str, path: &str) -> Value {
    let (status, body) = http("GET", &format!("{ip}:9000"), path, "");
    assert_eq!(status, 200, "{ip}:9000{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{ip}:9000{path}: {e}: {body}"))
}

fn observe_post(ip: &str, path: &str, body: &Value) -> Value {
    let (status, answer) = http("POST", &format!("{ip}:9000"), path, &body.to_string());
    assert!((200..300).contains(&status), "{ip}:9000{path}: {status} {answer}");
    serde_json::from_str(&answer).unwrap_or(Value::Null)
}

// ---- the FLAME node: its services, as pods under the FLAME chart's names and labels ----

struct StandIn {
    /// Deployment and `component`-ish name.
    name: &'static str,
    /// The pods' labels (what values-flame.yaml's NetworkPolicies select).
    labels: Value,
    /// The FLAME chart's Service: name, port, the pods' port.
    service: (&'static str, u16, u16),
    args: Vec<String>,
}

fn realm_args() -> Vec<String> {
    vec!["--jwks-url".into(), format!("{ISSUER}/protocol/openid-connect/certs"), "--issuer".into(), ISSUER.into()]
}

fn standins() -> Vec<StandIn> {
    let args = |words: &[&str], realm: bool| {
        let mut all: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        if realm {
            all.extend(realm_args());
        }
        all
    };
    vec![
        StandIn {
            name: "keycloak",
            labels: json!({"app.kubernetes.io/name": "keycloak", "app.kubernetes.io/instance": "flame"}),
            service: ("flame-keycloak-http", 80, 8080),
            args: args(
                &[
                    "keycloak",
                    "--listen",
                    "0.0.0.0:8080",
                    "--key-file",
                    "/keys/key.pem",
                    "--issuer",
                    ISSUER,
                    "--token-lifetime",
                    &TOKEN_LIFETIME.to_string(),
                    "--client",
                    &format!("{AID}:{CLIENT_SECRET}"),
                    "--client",
                    "hub-adapter:hub-adapter-secret",
                ],
                false,
            ),
        },
        StandIn {
            name: "storage",
            labels: json!({"component": "flame-storage-service"}),
            service: ("flame-node-storage-service", 8080, 8080),
            args: args(&["storage", "--listen", "0.0.0.0:8080"], true),
        },
        StandIn {
            name: "kong",
            labels: json!({"app.kubernetes.io/name": "kong", "app.kubernetes.io/instance": "flame"}),
            service: ("flame-kong-proxy", 80, 8000),
            args: args(
                &[
                    "kong",
                    "--listen",
                    "0.0.0.0:8000",
                    "--consumer",
                    &format!("{AID}:{KONG_KEY}:{PID}"),
                    "--consumer",
                    "other-consumer:key-of-other-project:other-project",
                    "--service",
                    &format!("src-1:{PID}"),
                    "--service",
                    "other-source:other-project",
                ],
                false,
            ),
        },
        StandIn {
            name: "message-broker",
            labels: json!({"component": "flame-message-broker"}),
            service: ("flame-node-message-broker", 80, 8080),
            args: args(&["broker", "--listen", "0.0.0.0:8080", "--node-type", "aggregator"], true),
        },
        StandIn {
            name: "hub-adapter",
            labels: json!({"component": "flame-hub-adapter"}),
            service: ("flame-hub-adapter-service", 5000, 5000),
            args: args(&["hub-adapter", "--listen", "0.0.0.0:5000", "--datastore", &format!("{PID}:src-1")], true),
        },
        StandIn {
            name: "po",
            labels: json!({"component": "flame-po"}),
            service: ("flame-po-service", 8000, 8000),
            args: args(
                &[
                    "orchestrator",
                    "--listen",
                    "0.0.0.0:8000",
                    "--interval",
                    "2",
                    "--token-url",
                    &format!("{ISSUER}/protocol/openid-connect/token"),
                ],
                true,
            ),
        },
        // One of the node's services tollgate has no business with (the FLAME chart's UI, say).
        StandIn {
            name: "node-ui",
            labels: json!({"component": "flame-node-ui"}),
            service: ("flame-node-ui", 80, 8080),
            args: args(&["echo", "--listen", "0.0.0.0:8080"], false),
        },
    ]
}

fn standin_objects(s: &StandIn) -> Vec<Value> {
    let mut labels = s.labels.clone();
    labels["flame-standin"] = json!(s.name);
    let mut pod = json!({
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "automountServiceAccountToken": false,
        "containers": [{
            "name": s.name, "image": STANDINS, "imagePullPolicy": "Never", "args": s.args,
            "ports": [{"containerPort": s.service.2}, {"containerPort": 9000, "name": "observe"}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 9000}, "periodSeconds": 1},
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
        }],
    });
    if s.name == "keycloak" {
        pod["volumes"] = json!([{"name": "key", "secret": {"secretName": "flame-keycloak-realm-key"}}]);
        pod["containers"][0]["volumeMounts"] = json!([{"name": "key", "mountPath": "/keys", "readOnly": true}]);
    }
    if s.name == "po" {
        pod["serviceAccountName"] = json!("flame-po-sa");
    }
    vec![
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": format!("flame-{}", s.name), "namespace": NS, "labels": labels},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"flame-standin": s.name}},
                        "template": {"metadata": {"labels": labels}, "spec": pod}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": s.service.0, "namespace": NS},
               "spec": {"selector": {"flame-standin": s.name}, "ports": [{"port": s.service.1, "targetPort": s.service.2, "protocol": "TCP"}]}}),
    ]
}

/// The orchestrator's account and rights in its namespace (the FLAME chart gives it these and more).
fn orchestrator_account() -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "flame-po-sa", "namespace": NS}, "automountServiceAccountToken": false},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "flame-po", "namespace": NS},
         "rules": [
            {"apiGroups": [""], "resources": ["secrets", "services", "configmaps", "pods"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "create", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "flame-po", "namespace": NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "flame-po"},
         "subjects": [{"kind": "ServiceAccount", "name": "flame-po-sa", "namespace": NS}]}]})
}

/// What the orchestrator creates for one analysis (../shared/flame/orchestrator.yaml), with the documented change:
/// the pod template's identity annotations, the per-analysis credentials Secret, the Service `nginx-<DEP>` onto the
/// proxy's ingress port; no nginx ConfigMap, Deployment or NetworkPolicy.
fn analysis_objects(keycloak_token: &str) -> Vec<Value> {
    let labels = json!({"app": DEP, "component": "flame-analysis"});
    vec![
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "flame-harbor-credentials", "namespace": NS},
               "type": "kubernetes.io/dockerconfigjson",
               "stringData": {".dockerconfigjson": r#"{"auths": {"harbor.privateaim.dev": {"username": "robot$node-example", "password": "example-password", "auth": "cm9ib3Qkbm9kZS1leGFtcGxlOmV4YW1wbGUtcGFzc3dvcmQ="}}}"#}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("tollgate-proxy-credentials-{AID}"), "namespace": NS},
               "stringData": {"client-id": AID, "client-secret": CLIENT_SECRET, "kong-apikey": KONG_KEY}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": DEP, "namespace": NS, "labels": labels},
               "spec": {"selector": {"matchLabels": labels}, "template": {
                   "metadata": {"labels": labels, "annotations": {"tollgate.dev/analysis-id": AID, "tollgate.dev/project-id": PID}},
                   "spec": {"imagePullSecrets": [{"name": "flame-harbor-credentials"}], "containers": [{
                       "name": DEP, "image": ANALYSIS_IMAGE, "imagePullPolicy": "IfNotPresent", "ports": [{"containerPort": 8000}],
                       "env": [{"name": "DATA_SOURCE_TOKEN", "value": KONG_KEY}, {"name": "KEYCLOAK_TOKEN", "value": keycloak_token},
                               {"name": "ANALYSIS_ID", "value": AID}, {"name": "PROJECT_ID", "value": PID}, {"name": "DEPLOYMENT_NAME", "value": DEP}]}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": DEP, "namespace": NS, "labels": labels},
               "spec": {"selector": {"app": DEP}, "ports": [{"port": 80, "targetPort": 8000}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("nginx-{DEP}"), "namespace": NS, "labels": {"app": format!("nginx-{DEP}")}},
               "spec": {"selector": {"app": DEP}, "ports": [{"port": 80, "targetPort": 15006}]}}),
    ]
}

// ---- the run: install, stand-ins, the analysis, once ----

/// What one run left, read by every test.
struct Run {
    /// Pod IP by stand-in name.
    ips: std::collections::BTreeMap<String, String>,
    analysis_pod: Value,
    analysis_ip: String,
    /// The app's report (its stdout, one JSON value per line).
    report: Vec<Value>,
    /// The orchestrator's view of the analysis.
    orchestrator: Value,
    /// The token the orchestrator put into KEYCLOAK_TOKEN, and the one it sent to /token_refresh.
    initial_token_jti: String,
    refreshed_token_jti: Option<String>,
    timings: Vec<(String, f64)>,
}

static RUN: OnceLock<Result<Run, String>> = OnceLock::new();

fn run() -> &'static Run {
    match RUN.get_or_init(|| std::panic::catch_unwind(setup_and_run).map_err(tollgate_testkit::panic_message)) {
        Ok(run) => run,
        Err(e) => panic!("the FLAME run failed: {e}"),
    }
}

fn claims_of(jwt: &str) -> Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn setup_and_run() -> Run {
    let c = cluster();
    let mut timings = Vec::new();
    let started = Instant::now();
    let mut mark = |what: &str, since: &mut Instant| {
        timings.push((what.to_owned(), since.elapsed().as_secs_f64()));
        println!("flame: {what} in {:.1} s", since.elapsed().as_secs_f64());
        *since = Instant::now();
    };
    let mut step = Instant::now();

    // A clean slate: whatever tollgate release is installed (the node tests' own) goes, and an earlier run's
    // namespace with it.
    let _ = c.helm(&["uninstall", "tollgate", "-n", "tollgate", "--wait", "--timeout=120s"]);
    c.ok(&["delete", "namespace", NS, "--ignore-not-found", "--wait=true", "--timeout=120s"]);
    c.ok(&["create", "namespace", NS]);
    mark("clean slate", &mut step);

    // tollgate, as values-flame.yaml installs it (egress lock on); the node's own settings besides (the egress
    // lock's CNI directories are this cluster's, Events on as in cluster.sh).
    let chart = format!("{}/../charts/tollgate", env!("CARGO_MANIFEST_DIR"));
    let install = c.helm(&[
        "install",
        "tollgate",
        &chart,
        "-n",
        "tollgate",
        "--create-namespace",
        "--wait",
        "--timeout=180s",
        "-f",
        &format!("{chart}/values-flame.yaml"),
        "--set",
        &format!("egressLock.binDir={}/cni/bin", c.dir),
        "--set",
        &format!("egressLock.confDir={}/cni/net.d", c.dir),
        "--set",
        "webhook.events.enabled=true",
    ]);
    assert!(install.status.success(), "helm install with values-flame.yaml: {}", text(&install));
    c.ok(&["label", "namespace", NS, "tollgate.dev/inject=enabled", "--overwrite"]);
    mark("helm install (values-flame.yaml)", &mut step);

    // The node's services, created after tollgate, through its webhooks: they must come out untouched.
    let key = Command::new("openssl").args(["genrsa", "-traditional", "2048"]).output().unwrap();
    assert!(key.status.success(), "openssl genrsa: {}", text(&key));
    c.apply(
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "flame-keycloak-realm-key", "namespace": NS},
                "stringData": {"key.pem": String::from_utf8_lossy(&key.stdout)}}),
        None,
    );
    c.apply(&orchestrator_account(), None);
    let items: Vec<Value> = standins().iter().flat_map(standin_objects).collect();
    c.apply(&json!({"apiVersion": "v1", "kind": "List", "items": items}), None);
    let mut ips = std::collections::BTreeMap::new();
    for s in standins() {
        let out = c.kubectl(&["rollout", "status", &format!("deployment/flame-{}", s.name), "-n", NS, "--timeout=120s"]);
        assert!(out.status.success(), "stand-in {}: {}\n{}", s.name, text(&out), c.logs(&format!("flame-standin={}", s.name), s.name));
        ips.insert(s.name.to_owned(), c.pod_ip(&format!("flame-standin={}", s.name)));
    }
    // Fixtures of the attack checks: another analysis' object in storage.
    observe_post(
        &ips["storage"],
        "/seed",
        &json!({"client_id": "other-analysis", "area": "local", "id": "other-object", "content": "not yours"}),
    );
    mark("the node's services (stand-ins) ready", &mut step);

    // The orchestrator starts the analysis: it fetches the analysis client's token (which it puts into the
    // Deployment's env today), then creates the objects, as its own ServiceAccount.
    let (status, body) = http(
        "POST",
        &format!("{}:8080", ips["keycloak"]),
        "/keycloak/realms/flame/protocol/openid-connect/token",
        &format!("grant_type=client_credentials&client_id={AID}&client_secret={CLIENT_SECRET}"),
    );
    assert_eq!(status, 200, "the orchestrator's token for the analysis: {body}");
    let initial_token = serde_json::from_str::<Value>(&body).unwrap()["access_token"].as_str().unwrap().to_owned();
    let initial_token_jti = claims_of(&initial_token)["jti"].as_str().unwrap().to_owned();
    for object in analysis_objects(&initial_token) {
        c.apply(&object, Some(ORCHESTRATOR));
    }
    observe_post(&ips["po"], "/analyses", &json!({"deployment": DEP, "analysis_id": AID, "client_secret": CLIENT_SECRET}));
    let out = c.kubectl(&["rollout", "status", &format!("deployment/{DEP}"), "-n", NS, "--timeout=120s"]);
    assert!(
        out.status.success(),
        "the analysis Deployment: {}\n{}",
        text(&out),
        text(&c.kubectl(&["describe", "pods", "-n", NS, "-l", &format!("app={DEP}")]))
    );
    let analysis_ip = c.pod_ip(&format!("app={DEP}"));
    mark("analysis pod ready", &mut step);

    // While it computes, the orchestrator refreshes its token once (as it does when the remaining time runs low;
    // with tollgate's placeholder it never does by itself): /token_refresh reaches the app, and the real token the
    // app then holds still never reaches a service.
    wait_until(Duration::from_secs(120), Duration::from_millis(500), "the analysis computing", || {
        let logs = c.logs(&format!("app={DEP}"), DEP);
        logs.contains("\"computing (").then_some(())
    });
    let refreshed = observe_post(&ips["po"], "/refresh", &json!({"deployment": DEP}));
    assert_eq!(refreshed["status"], 200, "the orchestrator's token refresh through nginx-{DEP}: {refreshed}");
    let refreshed_token_jti = refreshed["token"].as_str().map(|t| claims_of(t)["jti"].as_str().unwrap_or("").to_owned());

    // The orchestrator's status loop sees it finish.
    let orchestrator =
        wait_until(Duration::from_secs(300), Duration::from_millis(500), "the analysis finished (the orchestrator's status loop)", || {
            let analyses = observe(&ips["po"], "/analyses");
            let entry = analyses[DEP].clone();
            (!entry["final"].is_null()).then_some(entry)
        });
    mark("analysis run to completion", &mut step);
    let analysis_pod = c.pods(&format!("app={DEP}")).into_iter().next().unwrap();
    let logs = c.logs(&format!("app={DEP}"), DEP);
    let report: Vec<Value> = logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    println!("flame: everything in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(orchestrator["final"], "executed", "the orchestrator's verdict: {orchestrator:#}\n{logs}");
    Run { ips, analysis_pod, analysis_ip, report, orchestrator, initial_token_jti, refreshed_token_jti, timings }
}

fn events<'r>(run: &'r Run, event: &str) -> Vec<&'r Value> {
    run.report.iter().filter(|e| e["event"] == event).collect()
}

fn done(run: &Run) -> &Value {
    events(run, "done").into_iter().next().unwrap_or_else(|| panic!("the analysis never reported done: {:#?}", run.report))
}

// ---- the tests ----

/// The suite, in its order: each step reads the one FLAME run the first of them performs; the last uninstalls tollgate.
const STEPS: &[(&str, fn())] = tollgate_testkit::steps![
    tollgate_hardens_the_analysis_pod_and_leaves_the_nodes_services_alone,
    the_unchanged_sdk_calls_run_to_completion_as_through_nginx,
    the_services_saw_the_proxys_credentials_never_the_apps,
    inbound_calls_from_the_orchestrator_and_the_broker_reach_the_app_without_a_token,
    the_analysis_outlives_its_proxys_first_token,
    the_app_reaches_no_service_with_its_own_key_nor_another_projects_or_analysis_data,
    a_pod_outside_the_selection_cannot_reach_a_proxys_ingress,
    uninstalling_tollgate_leaves_the_nodes_services_running,
];

#[test]
#[ignore = "needs scripts/cluster.sh up"]
fn flame_suite() {
    tollgate_testkit::run_steps("flame", "TOLLGATE_FLAME_STEPS", STEPS);
}

fn tollgate_hardens_the_analysis_pod_and_leaves_the_nodes_services_alone() {
    let run = run();
    let c = cluster();
    let pod = &run.analysis_pod;
    // Hardened, as the FLAME profile says: its own hostAliases entry for nginx-<DEP>, the proxy on port 80 for
    // that name, the SDK's credentials replaced by placeholders, the per-analysis Secret.
    assert_eq!(pod["metadata"]["labels"]["tollgate.dev/injected"], "true", "{pod:#}");
    assert_eq!(pod["spec"]["hostAliases"], json!([{"ip": "127.0.0.1", "hostnames": [format!("nginx-{DEP}")]}]));
    let sysctls = pod["spec"]["securityContext"]["sysctls"].as_array().cloned().unwrap_or_default();
    assert!(sysctls.contains(&json!({"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"})), "{sysctls:?}");
    let proxy = pod["spec"]["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "tollgate-proxy").unwrap();
    let env = |container: &Value, name: &str| {
        container["env"].as_array().unwrap().iter().find(|e| e["name"] == name).map(|e| e["value"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(env(proxy, "TOLLGATE_EGRESS_HOSTNAMES").as_deref(), Some(format!("nginx-{DEP}").as_str()));
    assert_eq!(env(proxy, "TOLLGATE_EGRESS_LISTEN").as_deref(), Some("127.0.0.1:80"));
    let app = pod["spec"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == DEP).unwrap();
    assert_eq!(env(app, "DATA_SOURCE_TOKEN").as_deref(), Some("tollgate-placeholder"));
    let placeholder = env(app, "KEYCLOAK_TOKEN").unwrap();
    assert!(claims_of(&placeholder)["exp"] == 4102444800_u64, "{placeholder}");
    let secrets: Vec<&str> = pod["spec"]["volumes"].as_array().unwrap().iter().filter_map(|v| v["secret"]["secretName"].as_str()).collect();
    assert!(secrets.contains(&format!("tollgate-proxy-credentials-{AID}").as_str()), "{secrets:?}");
    // The app never got a credential of the analysis: the Kong key the orchestrator wrote is nowhere in the pod.
    assert!(!pod["spec"].to_string().contains(KONG_KEY), "the Kong key is still in the pod");

    // The node's services in the same namespace: created through tollgate's webhooks, exactly as written.
    for s in standins() {
        let pods = c.pods(&format!("flame-standin={}", s.name));
        for pod in pods {
            let name = pod["metadata"]["name"].as_str().unwrap();
            let labels = pod["metadata"]["labels"].as_object().unwrap();
            assert!(labels.keys().all(|k| !k.starts_with("tollgate.dev/")), "{name}: {labels:?}");
            let annotations = pod["metadata"]["annotations"].as_object().cloned().unwrap_or_default();
            assert!(annotations.keys().all(|k| !k.starts_with("tollgate.dev/")), "{name}: {annotations:?}");
            assert!(pod["spec"]["initContainers"].is_null(), "{name} got init containers");
            assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1, "{name}");
            assert!(pod["spec"]["hostAliases"].is_null(), "{name}");
        }
    }
    for (what, seconds) in &run.timings {
        println!("timing: {what}: {seconds:.1} s");
    }
}

fn the_unchanged_sdk_calls_run_to_completion_as_through_nginx() {
    let run = run();
    let done = done(run);
    assert_eq!(done["failures"], json!([]), "every call answered as through nginx: {done:#}");
    assert_eq!(done["token_is_placeholder"], false, "after the orchestrator's refresh the app holds a real token");
    // The SDK's calls, in the SDK's order (E01 first, then the broker, the PO's log stream, the data API...).
    let calls: Vec<&str> = events(run, "call").iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut order: Vec<&str> = Vec::new();
    for id in &calls {
        if *id != "E06" && *id != "attack" && !order.contains(id) {
            order.push(id);
        }
    }
    assert_eq!(
        order,
        ["E01", "E02", "E03", "E04", "E05", "E07", "E08", "E09", "E10", "E11", "E12", "E13", "E14", "E15", "E16", "E19", "E17", "E18"],
        "{calls:?}"
    );
    assert!(calls.iter().filter(|id| **id == "E06").count() >= 10, "log lines streamed to the PO: {calls:?}");
    // The very first call was answered by the proxy itself: no retry.
    let first = events(run, "call")[0];
    assert_eq!((first["id"].as_str(), first["status"].as_u64()), (Some("E01"), Some(200)), "{first}");
    // Every non-attack call was answered 2xx, the non-ASCII S3 key included.
    for call in events(run, "call").iter().filter(|e| e["id"] != "attack") {
        let status = call["status"].as_u64().unwrap();
        assert!((200..300).contains(&status), "{call}");
    }
    let keys = events(run, "s3_keys")[0]["keys"].clone();
    assert!(keys.as_array().unwrap().iter().any(|k| k == "Befund Müller.csv"), "{keys}");
    assert!(
        events(run, "call").iter().any(|e| e["target"] == "/kong/src-1/s3/Befund%20M%C3%BCller.csv" && e["status"] == 200),
        "the non-ASCII key, percent-encoded as httpx sends it"
    );
    // What the stand-ins got: storage holds the results, the broker delivered the partner's messages.
    let objects = observe(&run.ips["storage"], "/objects");
    let mine: Vec<&Value> = objects.as_array().unwrap().iter().filter(|o| o["client"] == AID).collect();
    for (area, count) in [("local", 2), ("intermediate", 1), ("final", 2)] {
        assert_eq!(mine.iter().filter(|o| o["area"] == area).count(), count, "{area}: {objects:#}");
    }
    assert!(
        mine.iter().any(|o| o["fields"]["epsilon"] == "1.0" && o["fields"]["sensitivity"] == "0.5"),
        "the local-DP result: {objects:#}"
    );
    let logs = observe(&run.ips["po"], "/logs");
    assert!(logs.as_array().unwrap().iter().any(|l| l["log"] == "analysis finished" && l["analysis_id"] == AID), "{logs:#}");
}

/// Every request a stand-in received from the analysis pod (its proxy).
fn from_analysis(run: &Run, service: &str) -> Vec<Value> {
    let seen = observe(&run.ips[service], "/seen");
    seen.as_array().unwrap().iter().filter(|r| r["peer"] == run.analysis_ip).cloned().collect()
}

fn the_services_saw_the_proxys_credentials_never_the_apps() {
    let run = run();
    // The tokens Keycloak issued: to the proxy (from the analysis pod), and to the orchestrator (its own pod).
    let issued = observe(&run.ips["keycloak"], "/issued");
    let proxy_jtis: Vec<&str> =
        issued.as_array().unwrap().iter().filter(|t| t["peer"] == run.analysis_ip).map(|t| t["jti"].as_str().unwrap()).collect();
    assert!(!proxy_jtis.is_empty(), "the proxy fetched its tokens itself: {issued:#}");
    assert!(issued.as_array().unwrap().iter().filter(|t| t["peer"] == run.analysis_ip).all(|t| t["client_id"] == AID), "{issued:#}");
    for service in ["storage", "message-broker", "hub-adapter", "po"] {
        let requests = from_analysis(run, service);
        assert!(!requests.is_empty(), "{service} was not called");
        for r in &requests {
            let jti = r["note"]["jti"].as_str();
            assert!(jti.is_some_and(|j| proxy_jtis.contains(&j)), "{service} got a token the proxy did not fetch: {r:#}");
            assert_ne!(jti, Some(run.initial_token_jti.as_str()), "{service} got the orchestrator's token: {r:#}");
            assert_ne!(jti, run.refreshed_token_jti.as_deref(), "{service} got the token the app was refreshed with: {r:#}");
            let headers = r["headers"].to_string();
            assert!(!headers.contains("tollgate placeholder") && !headers.contains("tollgate-placeholder"), "{service}: {r:#}");
            assert!(r["headers"]["apikey"].is_null(), "{service} got an apikey: {r:#}");
        }
    }
    // Kong: the analysis' key, from the proxy, on every request; never the app's placeholder or a key of its own.
    let kong = from_analysis(run, "kong");
    assert!(kong.len() >= 5, "{kong:#?}");
    for r in &kong {
        assert_eq!(r["headers"]["apikey"], KONG_KEY, "{r:#}");
        assert!(r["headers"]["authorization"].is_null(), "no bearer on the Kong route: {r:#}");
    }
    // The broker never handed the app a token either: deliveries carry none (and need none).
    let broker = observe(&run.ips["message-broker"], "/deliveries");
    assert!(!broker.as_array().unwrap().is_empty());
}

fn inbound_calls_from_the_orchestrator_and_the_broker_reach_the_app_without_a_token() {
    let run = run();
    let inbound = events(run, "inbound");
    let paths: Vec<(&str, &str)> = inbound.iter().map(|i| (i["method"].as_str().unwrap(), i["path"].as_str().unwrap())).collect();
    for expected in [("GET", "/healthz"), ("POST", "/webhook"), ("POST", "/token_refresh"), ("POST", "/partner_status")] {
        assert!(paths.contains(&expected), "{expected:?} never reached the app: {paths:?}");
    }
    // Without /analysis, without a token, and with the message categories the broker delivered.
    assert!(inbound.iter().all(|i| i["authorization"].is_null()), "{inbound:#?}");
    assert!(paths.iter().all(|(_, p)| !p.starts_with("/analysis")), "{paths:?}");
    let categories: Vec<&str> = inbound.iter().filter_map(|i| i["category"].as_str()).collect();
    for category in ["intermediate_ready", "partner_result", "analysis_finished"] {
        assert!(categories.contains(&category), "{category}: {categories:?}");
    }
    // Every message delivered (an attempt may find the Service without a ready endpoint yet, as it would with
    // nginx: the broker tries again).
    let deliveries = observe(&run.ips["message-broker"], "/deliveries");
    let deliveries = deliveries.as_array().unwrap();
    let ids: std::collections::BTreeSet<String> = deliveries.iter().map(|d| format!("{}/{}", d["message_id"], d["akn_id"])).collect();
    for id in &ids {
        let delivered = deliveries.iter().any(|d| &format!("{}/{}", d["message_id"], d["akn_id"]) == id && d["status"] == 200);
        assert!(delivered, "message {id} never delivered: {deliveries:#?}");
    }
    assert!(ids.len() >= 3, "{deliveries:#?}");
    assert!(
        deliveries.iter().all(|d| d["url"] == format!("http://nginx-{DEP}/analysis/webhook")),
        "the webhook URL the SDK registered: {deliveries:#?}"
    );
    // The orchestrator's status loop: every poll answered through nginx-<DEP>. While the app held tollgate's
    // placeholder, the remaining time it reported was decades, and the orchestrator refreshed nothing by itself;
    // once the test had it hand the app a real (short) token, it refreshed by itself when that ran low.
    let o = &run.orchestrator;
    let polls = o["polls"].as_array().unwrap();
    assert!(polls.len() >= 5, "{o:#}");
    let answered: Vec<&Value> = polls.iter().filter(|p| p["status"] == 200).collect();
    assert!(answered.len() + 2 >= polls.len(), "healthz through nginx-{DEP}: {polls:#?}");
    let refreshes = o["refreshes"].as_array().unwrap();
    let forced = refreshes.iter().find(|r| r["why"] == "asked by the test").unwrap_or_else(|| panic!("{refreshes:#?}"));
    let forced_at = forced["time"].as_f64().unwrap();
    assert!(
        refreshes.iter().filter(|r| r["why"] != "asked by the test").all(|r| r["time"].as_f64().unwrap() > forced_at),
        "{refreshes:#?}"
    );
    let before: Vec<Value> = answered
        .iter()
        .filter(|p| p["time"].as_f64().unwrap() < forced_at)
        .map(|p| serde_json::from_str(p["answer"].as_str().unwrap()).unwrap())
        .collect();
    assert!(!before.is_empty(), "{polls:#?}");
    for health in &before {
        assert!(health["token_remaining_time"].as_i64().unwrap() > 1_000_000_000, "the placeholder's lifetime: {health}");
        assert_eq!(health["status"], "executing", "{health}");
    }
    assert!(o["partner_status"].as_array().unwrap().iter().any(|p| p["status"] == 200), "{o:#}");
}

fn the_analysis_outlives_its_proxys_first_token() {
    let run = run();
    let issued = observe(&run.ips["keycloak"], "/issued");
    let proxy_tokens: Vec<&Value> = issued.as_array().unwrap().iter().filter(|t| t["peer"] == run.analysis_ip).collect();
    assert!(proxy_tokens.len() >= 2, "the proxy renewed its token: {issued:#}");
    let first_exp = proxy_tokens.iter().map(|t| t["exp"].as_f64().unwrap()).fold(f64::MAX, f64::min);
    // Calls after the first token had expired, with a later token, answered.
    let late: Vec<Value> = from_analysis(run, "storage")
        .into_iter()
        .filter(|r| r["time"].as_f64().unwrap() > first_exp && r["status"].as_u64() < Some(300))
        .collect();
    assert!(!late.is_empty(), "no storage call after the first token expired ({first_exp})");
    let first_jti = proxy_tokens.iter().min_by(|a, b| a["exp"].as_f64().partial_cmp(&b["exp"].as_f64()).unwrap()).unwrap()["jti"].clone();
    assert!(late.iter().all(|r| r["note"]["jti"] != first_jti), "{late:#?}");
    println!("f5: {} tokens for the proxy; {} storage calls after the first expired", proxy_tokens.len(), late.len());
}

fn the_app_reaches_no_service_with_its_own_key_nor_another_projects_or_analysis_data() {
    let run = run();
    let attacks: std::collections::BTreeMap<&str, &Value> =
        events(run, "attack").into_iter().map(|a| (a["name"].as_str().unwrap(), a)).collect();
    let status = |name: &str| attacks.get(name).and_then(|a| a["status"].as_u64());
    // Another project's Kong data store, with a valid key of that project: Kong saw the analysis' key instead.
    assert_eq!(status("kong-other-project-with-own-key"), Some(403), "{:#?}", attacks.get("kong-other-project-with-own-key"));
    let kong = from_analysis(run, "kong");
    assert!(kong.iter().all(|r| r["headers"]["apikey"] != "key-of-other-project"), "Kong saw the app's own key");
    // Its own data store with that key: answered with the analysis' key (the app's is not what Kong saw).
    assert_eq!(status("kong-own-source-with-own-key"), Some(200));
    // Storage with a forged token of another analysis: the proxy's token went instead; another analysis' object is
    // not this analysis'.
    assert_eq!(status("storage-other-analysis-object-with-own-token"), Some(404));
    let storage = from_analysis(run, "storage");
    assert!(storage.iter().all(|r| !r["headers"].to_string().contains("forged")), "storage saw the app's token");
    // Methods the SDK does not use, another project's datastore, another analysis' broker paths, Keycloak, the
    // analysis' own inbound path: refused by the proxy.
    assert!(matches!(status("storage-delete-local"), Some(403 | 405)), "{:#?}", attacks.get("storage-delete-local"));
    for name in [
        "hub-other-project",
        "broker-other-analysis-participants",
        "broker-other-analysis-messages",
        "keycloak-through-the-sidecar",
        "own-ingress-through-the-sidecar",
    ] {
        assert_eq!(status(name), Some(403), "{name}: {:#?}", attacks.get(name));
    }
    let hub = from_analysis(run, "hub-adapter");
    assert!(hub.iter().all(|r| !r["target"].as_str().unwrap().contains("other-project")), "{hub:#?}");
    let broker = from_analysis(run, "message-broker");
    assert!(broker.iter().all(|r| !r["target"].as_str().unwrap().contains("other-analysis")), "{broker:#?}");
    // Past the proxy: no name resolves, no address answers (the egress lock).
    for name in ["direct-kong", "direct-storage", "direct-dns-server"] {
        let attack = attacks.get(name).unwrap_or_else(|| panic!("{name} not tried"));
        assert_eq!(attack["refused"], true, "{attack}");
    }
}

fn a_pod_outside_the_selection_cannot_reach_a_proxys_ingress() {
    let run = run();
    let c = cluster();
    // The node's UI service (not selected, so not hardened and not NetworkPolicy-restricted) probes the analysis'
    // ingress by its Service and by its pod IP: the NetworkPolicy admits only the orchestrator's and the broker's pods.
    let ui = c.pods("flame-standin=node-ui")[0]["metadata"]["name"].as_str().unwrap().to_owned();
    let probe = |urls: &[String]| {
        let mut args = vec!["exec", ui.as_str(), "-n", NS, "--", "/usr/local/bin/flame_standins", "probe", "--timeout", "3"];
        args.extend(urls.iter().map(String::as_str));
        let out = c.kubectl(&args);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect::<Vec<Value>>()
    };
    let refused = probe(&[format!("http://nginx-{DEP}:80/analysis/healthz"), format!("http://{}:15006/analysis/healthz", run.analysis_ip)]);
    for r in &refused {
        assert!(r["error"].is_string() && r["status"].is_null(), "a pod outside the selection reached the proxy's ingress: {r}");
    }
    // The same pod reaches the node's other services (tollgate restricts none of them).
    let allowed = probe(&["http://flame-kong-proxy/src-1/fhir/Patient".to_owned()]);
    assert_eq!(allowed[0]["status"], 401, "Kong answered (no key): {}", allowed[0]);
    // While the orchestrator's and the broker's pods got through (their calls above).
    assert!(run.orchestrator["polls"].as_array().unwrap().iter().any(|p| p["status"] == 200));
}

fn uninstalling_tollgate_leaves_the_nodes_services_running() {
    let _ = run();
    let c = cluster();
    let uninstall = c.helm(&["uninstall", "tollgate", "-n", "tollgate", "--wait", "--timeout=120s"]);
    assert!(uninstall.status.success(), "{}", text(&uninstall));
    c.ok(&["label", "namespace", NS, "tollgate.dev/inject-"]);
    for s in standins() {
        let out = c.kubectl(&["rollout", "status", &format!("deployment/flame-{}", s.name), "-n", NS, "--timeout=5s"]);
        assert!(out.status.success(), "{}: {}", s.name, text(&out));
    }
    c.ok(&["delete", "namespace", NS, "--wait=false"]);
}
