//! tollgate on a real node: hardened pods actually run. Needs the cluster of `scripts/cluster.sh up` (its
//! exports in the environment); `scripts/test.sh` brings it up, runs this suite (`cargo test -p tollgate-e2e
//! --test node -- --ignored`) and takes it down.
//!
//! The steps share that one cluster and run in the order of `STEPS`, one after another, driven by the one test
//! `node_suite`: each is named on stderr as it starts and as it ends, and the first failure stops the suite,
//! naming its step. Every step up to the uninstall needs tollgate as `scripts/cluster.sh up` installed it (the
//! analysis namespace labeled) and leaves it so; the last two uninstall tollgate
//! (`helm_uninstall_leaves_no_webhook_…`), then install and uninstall it once more with an existing Secret
//! (`helm_install_wait_with_an_existing_secret_…`, which needs the uninstall before it).
//!
//! For development, `TOLLGATE_NODE_STEPS` (comma-separated step names) runs only those steps, still in the
//! suite's order:
//!
//! ```sh
//! TOLLGATE_NODE_STEPS=the_egress_lock_lets_only_the_proxy_out_of_a_hardened_pod \
//!   cargo test -p tollgate-e2e --locked --test node -- --ignored
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_e2e::node::{NodeCluster, cluster_var};
use tollgate_testkit::text;

const EXAMPLE: &str = "localhost/tollgate/example-analysis:0.1.0";

/// The node cluster, with the node's address and the analysis namespace `scripts/cluster.sh up` made.
struct Cluster {
    node: NodeCluster,
    node_ip: String,
    namespace: String,
}

fn cluster() -> Cluster {
    Cluster {
        node: NodeCluster::from_env(),
        node_ip: cluster_var("TOLLGATE_NODE_IP"),
        namespace: cluster_var("TOLLGATE_ANALYSIS_NAMESPACE"),
    }
}

/// kubectl, helm and the cluster's directory, as `c.kubectl(…)`, `c.dir`.
impl std::ops::Deref for Cluster {
    type Target = NodeCluster;

    fn deref(&self) -> &NodeCluster {
        &self.node
    }
}

impl Cluster {
    /// Remove what an earlier run of a test left behind, so every test can run again.
    fn fresh(&self, kind: &str, name: &str, namespace: &str) {
        let mut args = vec!["delete", kind, name, "--ignore-not-found", "--wait=true", "--timeout=90s"];
        if !namespace.is_empty() {
            args.extend(["-n", namespace]);
        }
        self.ok(&args);
    }

    fn apply(&self, manifest: &str) {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], manifest);
        assert!(out.status.success(), "kubectl apply: {}\n{manifest}", text(&out));
    }

    fn pod(&self, namespace: &str, name: &str) -> Value {
        self.json(&["get", "pod", name, "-n", namespace])
    }

    /// Wait until `check` holds for the pod, at most `seconds`; the pod as it was then.
    fn wait_pod(&self, namespace: &str, name: &str, seconds: u64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let out = self.kubectl(&["get", "pod", name, "-n", namespace, "-o", "json"]);
            if out.status.success() {
                let pod: Value = serde_json::from_slice(&out.stdout).unwrap();
                if check(&pod) {
                    return pod;
                }
                if Instant::now() > deadline {
                    let events =
                        self.kubectl(&["get", "events", "-n", namespace, "--field-selector", &format!("involvedObject.name={name}")]);
                    panic!(
                        "pod {namespace}/{name}: not {what} after {seconds} s:\n{}\n{}",
                        serde_json::to_string_pretty(&pod["status"]).unwrap(),
                        text(&events)
                    );
                }
            } else if Instant::now() > deadline {
                panic!("pod {namespace}/{name}: {}", text(&out));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The one pod of a Job or Deployment, by label.
    fn pod_of(&self, namespace: &str, selector: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.ok(&["get", "pods", "-n", namespace, "-l", selector, "-o", "jsonpath={.items[*].metadata.name}"]);
            let names: Vec<&str> = out.split_whitespace().collect();
            if names.len() == 1 {
                return names[0].to_owned();
            }
            assert!(Instant::now() < deadline, "pods for {selector}: {names:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn logs(&self, namespace: &str, pod: &str, container: &str) -> String {
        self.ok(&["logs", pod, "-n", namespace, "-c", container])
    }

    /// What the host-side stand-ins received, one JSON value per request.
    fn standin_requests(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(format!("{}/standins.jsonl", self.dir)).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// A token for the proxy's ingress, minted by the stand-in issuer for `client`.
    fn mint(&self, client: &str) -> String {
        let request = format!(
            "POST /mint?client={client}&audience=flame-analysis HTTP/1.1\r\nhost: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            self.node_ip
        );
        let response = tollgate_testkit::exchange((self.node_ip.as_str(), 18083), request.as_bytes(), Duration::from_secs(30))
            .expect("the stand-in issuer");
        assert!(response.head.starts_with("HTTP/1.1 200"), "minting a token: {response:?}");
        let body: Value = serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("minting a token: {e}: {}", response.body));
        body["access_token"].as_str().unwrap_or_else(|| panic!("no access_token in {body}")).to_owned()
    }
}

fn container_status<'p>(pod: &'p Value, list: &str, name: &str) -> &'p Value {
    pod["status"][list].as_array().and_then(|a| a.iter().find(|c| c["name"] == name)).unwrap_or(&Value::Null)
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("")
}

fn time(value: &Value) -> chrono_free::Stamp {
    chrono_free::Stamp::parse(value.as_str().unwrap_or_else(|| panic!("no timestamp: {value}")))
}

/// RFC 3339 timestamps as Kubernetes writes them (`2026-11-23T08:00:01Z`), compared without a date crate.
mod chrono_free {
    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
    pub struct Stamp(u64);

    impl Stamp {
        pub fn parse(text: &str) -> Stamp {
            let digits: String = text.chars().filter(char::is_ascii_digit).take(14).collect();
            Stamp(digits.parse().unwrap_or_else(|_| panic!("not a timestamp: {text}")))
        }
    }
}

/// The suite, in its order. Every step up to the uninstall needs tollgate as `scripts/cluster.sh up` installed it
/// (and leaves it so); the two after it need the cluster as the uninstall left it.
const STEPS: &[(&str, fn())] = tollgate_testkit::steps![
    helm_install_with_wait_made_the_certificates_first_and_left_no_hook_behind,
    a_plain_kubectl_run_pod_runs_hardened_as_the_app_user_on_a_read_only_root,
    a_job_runs_after_its_proxy_is_ready_reaches_the_services_with_the_proxys_token_and_completes,
    a_forbidden_path_is_refused_and_the_app_cannot_read_the_credentials,
    a_job_whose_pods_are_denied_says_why_in_its_events,
    a_deployment_shaped_analysis_serves_through_its_jwt_checked_ingress,
    a_broken_route_config_fails_the_pod_visibly_and_the_app_never_starts,
    deleting_a_pod_drains_its_proxy_within_the_grace_period,
    the_egress_lock_lets_only_the_proxy_out_of_a_hardened_pod,
    the_network_policy_the_chart_renders_for_the_analysis_namespace_is_enforced,
    rolling_the_webhook_fails_no_pod_creation,
    renewing_the_certificates_and_upgrading_the_release_fail_no_pod_creation,
    a_bad_policy_or_route_table_fails_the_upgrade_naming_the_field_and_changes_nothing,
    helm_test_runs_tollgate_check_in_the_cluster_and_leaves_no_rights_behind,
    // tollgate uninstalled from here on: the steps above cannot follow these.
    helm_uninstall_leaves_no_webhook_and_labeled_namespaces_take_no_plain_pods,
    // Needs the uninstall before it: no release, the analysis namespace unlabeled.
    helm_install_wait_with_an_existing_secret_hardens_pods_and_uninstalls_clean,
];

#[test]
#[ignore = "needs scripts/cluster.sh up"]
fn node_suite() {
    tollgate_testkit::run_steps("node", "TOLLGATE_NODE_STEPS", STEPS);
}

fn helm_install_with_wait_made_the_certificates_first_and_left_no_hook_behind() {
    let c = cluster();
    // scripts/cluster.sh installed with --wait: helm returned only once the webhook and the lock were ready.
    let status = c.helm(&["status", "tollgate", "-n", "tollgate", "-o", "json"]);
    assert!(status.status.success(), "{}", text(&status));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["info"]["status"], "deployed", "{status}");
    // The Secrets came first (a pre-install hook), so no webhook pod ever waited for them.
    let tls = c.json(&["get", "secret", "tollgate-webhook-tls", "-n", "tollgate"]);
    let made = tls["metadata"]["creationTimestamp"].as_str().unwrap().to_owned();
    let pods = c.json(&["get", "pods", "-n", "tollgate", "-l", "app.kubernetes.io/name=tollgate-webhook"]);
    let pods = pods["items"].as_array().unwrap();
    assert!(!pods.is_empty());
    for pod in pods {
        let started = pod["metadata"]["creationTimestamp"].as_str().unwrap();
        assert!(made.as_str() <= started, "Secret made {made}, after webhook pod {} ({started})", pod["metadata"]["name"]);
    }
    // The post-install hook put the CA into the webhook configuration.
    let config = c.json(&["get", "mutatingwebhookconfiguration", "tollgate"]);
    for webhook in config["webhooks"].as_array().unwrap() {
        assert_eq!(webhook["clientConfig"]["caBundle"], tls["data"]["ca.crt"], "caBundle of {}", webhook["name"]);
    }
    // The hooks' Jobs and the pre-install hook's own account and rights are gone once they succeeded.
    for (kind, name) in [
        ("job", "tollgate-certs-secrets"),
        ("job", "tollgate-certs"),
        ("serviceaccount", "tollgate-certs-secrets"),
        ("role", "tollgate-certs-secrets"),
        ("rolebinding", "tollgate-certs-secrets"),
        ("clusterrole", "tollgate-certs-secrets"),
        ("clusterrolebinding", "tollgate-certs-secrets"),
        ("job", "tollgate-validate"),
        ("configmap", "tollgate-validate"),
    ] {
        let left = c.ok(&["get", kind, name, "-n", "tollgate", "--ignore-not-found", "-o", "name"]);
        assert!(left.trim().is_empty(), "{kind} {name} left behind: {left}");
    }
}

fn a_plain_kubectl_run_pod_runs_hardened_as_the_app_user_on_a_read_only_root() {
    let c = cluster();
    let ns = c.namespace.as_str();
    c.fresh("pod", "plain", ns);
    c.ok(&["run", "plain", "-n", ns, &format!("--image={EXAMPLE}"), "--restart=Never", "--", "whoami"]);
    let pod = c.wait_pod(ns, "plain", 90, "Succeeded", |p| phase(p) == "Succeeded" || phase(p) == "Failed");
    assert_eq!(phase(&pod), "Succeeded", "{}", c.logs(ns, "plain", "plain"));
    let out = c.logs(ns, "plain", "plain");
    assert!(out.contains("uid=10000"), "runs as the app user: {out}");
    assert!(out.contains("root-writable=false"), "read-only root filesystem: {out}");
    let proxy = container_status(&pod, "initContainerStatuses", "tollgate-proxy");
    assert_eq!(proxy["ready"], false, "the proxy stopped once the app was done: {proxy}");
    assert!(proxy["state"]["terminated"].is_object(), "{proxy}");
}

fn a_job_runs_after_its_proxy_is_ready_reaches_the_services_with_the_proxys_token_and_completes() {
    let c = cluster();
    let ns = c.namespace.as_str();
    c.fresh("job", "analysis", ns);
    let before = c.standin_requests().len();
    c.apply(&format!(
        r#"{{"apiVersion":"batch/v1","kind":"Job","metadata":{{"name":"analysis","namespace":"{ns}"}},"spec":{{"backoffLimit":0,"template":{{
"metadata":{{"labels":{{"job":"analysis"}},"annotations":{{"tollgate.dev/analysis-id":"a1","tollgate.dev/project-id":"p1"}}}},
"spec":{{"restartPolicy":"Never","containers":[{{"name":"analysis","image":"{EXAMPLE}","args":["run"],
"env":[{{"name":"ANALYSIS_ID","value":"a1"}},{{"name":"PROJECT_ID","value":"p1"}},
  {{"name":"EXTRA_HEADERS","value":"Authorization: Bearer app-supplied-credential;Cookie: app-session=1"}}]}}]}}}}}}}}"#
    ));
    let out = c.kubectl(&["wait", "-n", ns, "--for=condition=Complete", "job/analysis", "--timeout=120s"]);
    let name = c.pod_of(ns, "job=analysis");
    assert!(out.status.success(), "the Job completes: {}\n{}", text(&out), c.logs(ns, &name, "analysis"));
    let pod = c.pod(ns, &name);

    // The order, as it happened: the proxy started, became ready, and only then did the app start.
    let proxy = container_status(&pod, "initContainerStatuses", "tollgate-proxy");
    let app = container_status(&pod, "containerStatuses", "analysis");
    let proxy_started = time(&proxy["state"]["terminated"]["startedAt"]);
    let app_started = time(&app["state"]["terminated"]["startedAt"]);
    assert!(app_started >= proxy_started, "app {app_started:?} before proxy {proxy_started:?}");
    // How long the app waited for its proxy: from the proxy's first log line (its process starting) to the
    // app's (its first call's answer), as the container runtime stamped them (nanoseconds). The postStart
    // hook lets the kubelet start the app once the proxy is ready; what is left is mostly the kubelet's own
    // pace (it learns that the proxy runs at its next 1 s relist).
    let first_stamp = |container: &str| {
        let out = c.ok(&["logs", &name, "-n", ns, "-c", container, "--timestamps"]);
        tollgate_e2e::precise::seconds(out.split_whitespace().next().unwrap_or_else(|| panic!("no log line of {container}")))
    };
    let waited = first_stamp("analysis") - first_stamp("tollgate-proxy");
    println!("t2: the app's first call was answered {:.0} ms after its proxy started", waited * 1000.0);
    assert!((0.0..3.0).contains(&waited), "the app waited {waited:.3} s for its proxy");
    let logs = c.logs(ns, &name, "analysis");
    // The app's very first call went through the proxy and succeeded: it was ready when the app started.
    let first = logs.lines().next().unwrap_or_default();
    assert!(first.contains("200"), "the first call succeeded: {logs}");

    // The stand-ins saw the proxy's token, never a credential of the app's.
    let seen: Vec<Value> = c.standin_requests().into_iter().skip(before).collect();
    let services: Vec<&str> = seen.iter().filter_map(|r| r["service"].as_str()).collect();
    for service in ["hub", "broker", "storage"] {
        assert!(services.contains(&service), "{service} was not called: {seen:#?}");
    }
    for request in seen.iter().filter(|r| r["service"] != "keycloak") {
        let auth = request["authorization"].as_str().unwrap_or("");
        assert!(auth.starts_with("Bearer standin-token-"), "the proxy's token, not the app's: {request}");
        let headers = request["headers"].as_array().cloned().unwrap_or_default();
        assert!(!headers.iter().any(|h| h == "cookie"), "none of the app's headers: {request}");
    }
    assert!(seen.iter().any(|r| r["service"] == "keycloak"), "the proxy fetched its token itself");
}

fn a_forbidden_path_is_refused_and_the_app_cannot_read_the_credentials() {
    let c = cluster();
    let ns = c.namespace.as_str();
    c.fresh("pod", "prober", ns);
    c.apply(&format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"prober","namespace":"{ns}"}},"spec":{{"restartPolicy":"Never",
"containers":[{{"name":"app","image":"{EXAMPLE}","args":["serve"]}}]}}}}"#
    ));
    c.wait_pod(ns, "prober", 90, "Running", |p| container_status(p, "containerStatuses", "app")["ready"] == true);
    let exec = |args: &[&str]| {
        let mut all = vec!["exec", "prober", "-n", ns, "-c", "app", "--", "tollgate-example-analysis"];
        all.extend_from_slice(args);
        c.kubectl(&all)
    };
    // Another project's data, and a path outside every route: 403 from the proxy.
    for path in ["/hub-adapter/kong/datastore/other-project", "/storage/secrets", "/admin"] {
        let out = exec(&["get", &format!("http://127.0.0.1:15001{path}")]);
        assert!(text(&out).contains("status=403"), "{path}: {}", text(&out));
    }
    // The credentials are not in the app's filesystem at all.
    let out = exec(&["read", "/var/run/secrets/tollgate/client-secret"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("No such file or directory"), "{}", text(&out));
    // ...and no one gets a shell in the proxy to read them there.
    let out = c.kubectl(&["exec", "prober", "-n", ns, "-c", "tollgate-proxy", "--", "/usr/local/bin/tollgate-proxy", "--version"]);
    assert!(text(&out).contains("pods/exec is refused"), "{}", text(&out));
    c.ok(&["delete", "pod", "prober", "-n", ns, "--wait=false"]);
}

fn a_job_whose_pods_are_denied_says_why_in_its_events() {
    let c = cluster();
    let ns = c.namespace.as_str();
    c.fresh("job", "host-network", ns);
    // The Job controller creates the pod; tollgate denies it; the controller's warning reaches no one, the
    // Event on the Job does.
    c.apply(&format!(
        r#"{{"apiVersion":"batch/v1","kind":"Job","metadata":{{"name":"host-network","namespace":"{ns}"}},"spec":{{"backoffLimit":0,"template":{{"spec":{{"restartPolicy":"Never","hostNetwork":true,"containers":[{{"name":"app","image":"{EXAMPLE}"}}]}}}}}}}}"#
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    let event = loop {
        let events =
            c.json(&["get", "events.events.k8s.io", "-n", ns, "--field-selector", "regarding.kind=Job,regarding.name=host-network"]);
        let found = events["items"].as_array().unwrap().iter().find(|e| e["reportingController"] == "tollgate.dev/webhook").cloned();
        if let Some(event) = found {
            break event;
        }
        assert!(Instant::now() < deadline, "no Event from tollgate on the Job: {events}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(event["reason"], "Denied");
    let note = event["note"].as_str().unwrap();
    assert!(note.contains("pod: spec.hostNetwork is true [host-namespaces]"), "{note}");
    let described = c.ok(&["describe", "job", "host-network", "-n", ns]);
    assert!(described.contains("tollgate denied this pod"), "{described}");
    c.ok(&["delete", "job", "host-network", "-n", ns, "--wait=false"]);
}

fn a_deployment_shaped_analysis_serves_through_its_jwt_checked_ingress() {
    let c = cluster();
    let ns = c.namespace.as_str();
    c.apply(&format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"served","namespace":"{ns}"}},"spec":{{"replicas":1,
"selector":{{"matchLabels":{{"app":"served"}}}},"template":{{"metadata":{{"labels":{{"app":"served"}},"annotations":{{"tollgate.dev/analysis-id":"a2","tollgate.dev/project-id":"p1"}}}},
"spec":{{"containers":[{{"name":"analysis","image":"{EXAMPLE}","args":["serve"]}}]}}}}}}}}"#
    ));
    let out = c.kubectl(&["rollout", "status", "deployment/served", "-n", ns, "--timeout=120s"]);
    assert!(out.status.success(), "{}", text(&out));
    let name = c.pod_of(ns, "app=served");
    let ip = c.pod(ns, &name)["status"]["podIP"].as_str().unwrap().to_owned();

    // From another pod (a namespace tollgate does not manage), with and without a token from the issuer.
    c.apply(r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"callers"}}"#);
    let token = c.mint("message-broker");
    for (name, bearer, expected) in [("with-token", token.as_str(), "status=200"), ("without-token", "", "status=401")] {
        c.fresh("pod", name, "callers");
        let mut args = vec!["get".to_owned(), format!("http://{ip}:15006/analysis/hello")];
        if !bearer.is_empty() {
            args.extend(["--bearer".to_owned(), bearer.to_owned()]);
        }
        let args_json = serde_json::to_string(&args).unwrap();
        c.apply(&format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"callers"}},"spec":{{"restartPolicy":"Never",
"securityContext":{{"runAsNonRoot":true,"runAsUser":20000,"seccompProfile":{{"type":"RuntimeDefault"}}}},
"containers":[{{"name":"caller","image":"{EXAMPLE}","args":{args_json},
"securityContext":{{"allowPrivilegeEscalation":false,"capabilities":{{"drop":["ALL"]}}}}}}]}}}}"#
        ));
        c.wait_pod("callers", name, 60, "done", |p| phase(p) == "Succeeded" || phase(p) == "Failed");
        let logs = c.logs("callers", name, "caller");
        assert!(logs.contains(expected), "{name}: {logs}");
        if expected == "status=200" {
            assert!(logs.contains("tollgate-example-analysis"), "the analysis answered: {logs}");
        }
    }
}

fn a_broken_route_config_fails_the_pod_visibly_and_the_app_never_starts() {
    let c = cluster();
    c.fresh("namespace", "broken", "");
    c.apply(
        r#"{"apiVersion":"v1","kind":"List","items":[
{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"broken","labels":{"tollgate.dev/inject":"enabled"}}},
{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"tollgate-proxy-routes","namespace":"broken"},"data":{"config.yaml":"routes:\n  - name: x\n    prefx: /oops\n"}},
{"apiVersion":"v1","kind":"Secret","metadata":{"name":"tollgate-proxy-credentials","namespace":"broken"},"stringData":{"client-id":"a","client-secret":"b"}}]}"#,
    );
    c.ok(&["run", "doomed", "-n", "broken", &format!("--image={EXAMPLE}"), "--restart=Never", "--", "whoami"]);
    let pod = c.wait_pod("broken", "doomed", 60, "showing the proxy's failure", |p| {
        let proxy = container_status(p, "initContainerStatuses", "tollgate-proxy");
        proxy["restartCount"].as_u64().unwrap_or(0) >= 1 && proxy["lastState"]["terminated"]["message"].is_string()
    });
    let proxy = container_status(&pod, "initContainerStatuses", "tollgate-proxy");
    let message = proxy["lastState"]["terminated"]["message"].as_str().unwrap();
    assert!(message.contains("prefx"), "the pod status says why: {message}");
    let app = container_status(&pod, "containerStatuses", "doomed");
    assert!(app["state"]["running"].is_null() && app["state"]["terminated"].is_null(), "the app never started: {app}");
    assert_eq!(phase(&pod), "Pending");
    c.ok(&["delete", "namespace", "broken", "--wait=false"]);
}

fn deleting_a_pod_drains_its_proxy_within_the_grace_period() {
    let c = cluster();
    let ns = c.namespace.as_str();
    c.fresh("pod", "drained", ns);
    c.apply(&format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"drained","namespace":"{ns}"}},"spec":{{"terminationGracePeriodSeconds":30,
"containers":[{{"name":"app","image":"{EXAMPLE}","args":["serve"]}}]}}}}"#
    ));
    c.wait_pod(ns, "drained", 90, "ready", |p| container_status(p, "containerStatuses", "app")["ready"] == true);
    let started = Instant::now();
    c.ok(&["delete", "pod", "drained", "-n", ns, "--wait=true", "--timeout=60s"]);
    let took = started.elapsed();
    println!("pod with its proxy deleted in {took:?}");
    assert!(took < Duration::from_secs(25), "the proxy drained and exited well within its 30 s grace: {took:?}");
}

fn the_egress_lock_lets_only_the_proxy_out_of_a_hardened_pod() {
    let c = cluster();
    let ns = c.namespace.as_str();
    let storage = format!("{}:18081", c.node_ip);
    c.fresh("pod", "locked", ns);
    // A namespace tollgate does not manage: its pods are untouched by the plugin.
    c.fresh("namespace", "unmanaged", "");
    c.ok(&["create", "namespace", "unmanaged"]);
    let serving = |name: &str, namespace: &str, annotations: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"{namespace}","annotations":{{{annotations}}}}},
"spec":{{"restartPolicy":"Never","containers":[{{"name":"app","image":"{EXAMPLE}","args":["serve","--listen","0.0.0.0:8007"]}}]}}}}"#
        )
    };
    c.apply(&serving("locked", ns, r#""tollgate.dev/analysis-id":"a7","tollgate.dev/project-id":"p1""#));
    c.apply(&serving("open", "unmanaged", ""));
    let pod = c.wait_pod(ns, "locked", 90, "Running", |p| container_status(p, "containerStatuses", "app")["ready"] == true);
    c.wait_pod("unmanaged", "open", 90, "Running", |p| container_status(p, "containerStatuses", "app")["ready"] == true);

    // The webhook asked for the lock; the lock check ran first, as another UID than the proxy's, and passed;
    // the proxy's probes (the kubelet, from outside the pod) reached its admin port.
    let lock = pod["metadata"]["annotations"]["tollgate.dev/egress-lock"].as_str().unwrap_or_default();
    assert_eq!(lock, r#"{"proxyUid":10001,"inboundPorts":[15006,15021]}"#);
    let check = container_status(&pod, "initContainerStatuses", "tollgate-lock-check");
    assert_eq!(check["state"]["terminated"]["exitCode"], 0, "{check}");
    assert_eq!(container_status(&pod, "initContainerStatuses", "tollgate-proxy")["ready"], true);

    let exec = |namespace: &str, name: &str, args: &[&str]| {
        let mut all = vec!["exec", name, "-n", namespace, "-c", "app", "--", "tollgate-example-analysis"];
        all.extend_from_slice(args);
        text(&c.kubectl(&all))
    };
    // Straight to the storage stand-in, and a DNS query to the pod's nameserver: refused by the kernel.
    let direct = exec(ns, "locked", &["connect", &storage, "--timeout-seconds", "2"]);
    assert!(direct.contains("connect=failed"), "the app reached storage past the proxy: {direct}");
    let dns = exec(ns, "locked", &["dns", "storage.flame.svc.cluster.local"]);
    assert!(dns.contains("dns=refused") && dns.contains("Operation not permitted"), "the app sent DNS: {dns}");
    // The same service through the proxy works (the proxy's own token call and upstream connection included).
    let via_proxy = exec(ns, "locked", &["get", "http://127.0.0.1:15001/hub-adapter/kong/datastore/p1"]);
    assert!(via_proxy.contains("status=200"), "through the proxy: {via_proxy}");
    // The kernel counted what it dropped: the plugin the DaemonSet installed, read on the node.
    let pid = std::process::Command::new("pgrep").args(["-f", "tollgate-example-analysis serve --listen 0.0.0.0:8007"]).output().unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&pid.stdout).split_whitespace().map(String::from).collect();
    let plugin = format!("{}/cni/bin/tollgate-cni", c.dir);
    let statuses: Vec<Value> = pids
        .iter()
        .filter_map(|pid| {
            let out = std::process::Command::new(&plugin).args(["status", "--netns", &format!("/proc/{pid}/ns/net")]).output().ok()?;
            serde_json::from_slice(&out.stdout).ok()
        })
        .collect();
    let locked: Vec<&Value> = statuses.iter().filter(|s| s["locked"] == true).collect();
    assert_eq!(locked.len(), 1, "exactly the hardened pod is locked: {statuses:?}");
    assert!(locked[0]["droppedPackets"]["output"].as_u64().unwrap_or(0) >= 2, "{}", locked[0]);

    // A pod tollgate does not manage: untouched.
    let open = exec("unmanaged", "open", &["connect", &storage, "--timeout-seconds", "2"]);
    assert!(open.contains("connect=ok"), "{open}");
    assert!(exec("unmanaged", "open", &["dns", "storage"]).contains("dns=sent"));

    // Labels and annotations do not carry the lock (and tollgate's cannot be removed anyway).
    for args in [["label", "pod", "locked", "tollgate.dev/injected-"], ["annotate", "pod", "locked", "tollgate.dev/egress-lock-"]] {
        let mut all = args.to_vec();
        all.extend(["-n", ns]);
        let out = c.kubectl(&all);
        assert!(!out.status.success() && text(&out).contains("tollgate-owned"), "{}", text(&out));
    }
    let again = exec(ns, "locked", &["connect", &storage, "--timeout-seconds", "2"]);
    assert!(again.contains("connect=failed"), "{again}");

    // A pod whose lock cannot be installed does not start: the plugin fails the sandbox with the reason.
    c.apply(&serving("unenforceable", "unmanaged", r#""tollgate.dev/egress-lock":"{\"proxyUid\":0,\"inboundPorts\":[15006]}""#));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = c.ok(&["get", "events", "-n", "unmanaged", "--field-selector", "involvedObject.name=unenforceable"]);
        if events.contains("FailedCreatePodSandBox") && events.contains("cannot be enforced") {
            break;
        }
        assert!(Instant::now() < deadline, "no sandbox failure for an unenforceable lock: {events}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(phase(&c.pod("unmanaged", "unenforceable")), "Pending");
    c.ok(&["delete", "namespace", "unmanaged", "--wait=false"]);
    c.ok(&["delete", "pod", "locked", "-n", ns, "--wait=false"]);
}

fn the_network_policy_the_chart_renders_for_the_analysis_namespace_is_enforced() {
    let c = cluster();
    let ns = c.namespace.as_str();
    // The chart's closing policy for the analysis namespace, as rendered: every pod, in only on the proxy's
    // ingress and admin ports.
    let policy = c.json(&["get", "networkpolicy", "tollgate-analysis", "-n", ns]);
    assert_eq!(policy["spec"]["podSelector"], serde_json::json!({}), "{policy}");
    let ports: Vec<&Value> =
        policy["spec"]["ingress"].as_array().unwrap().iter().flat_map(|rule| rule["ports"].as_array().unwrap()).collect();
    assert!(ports.iter().any(|p| p["port"] == 15006) && !ports.iter().any(|p| p["port"] == 8007), "{policy}");

    c.fresh("pod", "np-target", ns);
    c.fresh("namespace", "np-callers", "");
    c.ok(&["create", "namespace", "np-callers"]);
    // The same server twice: hardened in the analysis namespace (the policy applies), and in a namespace
    // without policies (nothing applies); both listen on 8007.
    let serving = |name: &str, namespace: &str, annotations: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"{namespace}","annotations":{{{annotations}}}}},
"spec":{{"restartPolicy":"Never","containers":[{{"name":"app","image":"{EXAMPLE}","args":["serve","--listen","0.0.0.0:8007"]}}]}}}}"#
        )
    };
    c.apply(&serving("np-target", ns, r#""tollgate.dev/analysis-id":"a7b","tollgate.dev/project-id":"p1""#));
    c.apply(&serving("np-open", "np-callers", ""));
    c.apply(&format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"caller","namespace":"np-callers"}},"spec":{{"restartPolicy":"Never",
"containers":[{{"name":"app","image":"{EXAMPLE}","args":["serve","--listen","0.0.0.0:8000"]}}]}}}}"#
    ));
    let ready = |p: &Value| container_status(p, "containerStatuses", "app")["ready"] == true;
    let target = c.wait_pod(ns, "np-target", 90, "ready", ready);
    let open = c.wait_pod("np-callers", "np-open", 90, "ready", ready);
    c.wait_pod("np-callers", "caller", 90, "ready", ready);
    let ip = |pod: &Value| pod["status"]["podIP"].as_str().unwrap().to_owned();
    let (target_ip, open_ip) = (ip(&target), ip(&open));
    let connect = |addr: String| {
        let out = c.kubectl(&[
            "exec",
            "caller",
            "-n",
            "np-callers",
            "-c",
            "app",
            "--",
            "tollgate-example-analysis",
            "connect",
            &addr,
            "--timeout-seconds",
            "3",
        ]);
        text(&out)
    };
    // Allowed by the policy: the proxy's ingress port.
    let allowed = connect(format!("{target_ip}:15006"));
    assert!(allowed.contains("connect=ok"), "the ingress port the policy opens: {allowed}");
    // Refused by the policy: the app's own port, which listens (the same server without a policy answers).
    let refused = connect(format!("{target_ip}:8007"));
    assert!(refused.contains("connect=failed"), "a port the policy does not open was reached: {refused}");
    let unpoliced = connect(format!("{open_ip}:8007"));
    assert!(unpoliced.contains("connect=ok"), "the same server without a policy: {unpoliced}");
    // The kernel's rules are kube-router's, written for this pod.
    let rules = Command::new("iptables").args(["-t", "filter", "-S", "KUBE-ROUTER-FORWARD"]).output().unwrap();
    assert!(String::from_utf8_lossy(&rules.stdout).contains(&target_ip), "{}", text(&rules));
    c.ok(&["delete", "pod", "np-target", "-n", ns, "--wait=false"]);
    c.ok(&["delete", "namespace", "np-callers", "--wait=false"]);
}

fn rolling_the_webhook_fails_no_pod_creation() {
    let c = cluster();
    // The machine under load while the webhook rolls: every core busy besides what the cluster needs, so that
    // the drain's timing (GOAWAY to the API server's connections, late dials served, endpoints catching up) is
    // shown under contention, not only on an idle machine.
    let load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let burners: Vec<_> = (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
        .map(|_| {
            let load = load.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while load.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let (mut created, mut failures) = (0, Vec::new());
    // Several rollouts in a row, pods created throughout each (server-side dry runs: admission is what is
    // exercised, not the node).
    for round in 0..3 {
        c.ok(&["rollout", "restart", "deployment/tollgate-webhook", "-n", "tollgate"]);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (n, failed) = std::thread::scope(|scope| {
            let creator = scope.spawn(|| create_pods_until(&c, &stop));
            let _stop = StopOnDrop(&stop);
            let out = c.kubectl(&["rollout", "status", "deployment/tollgate-webhook", "-n", "tollgate", "--timeout=180s"]);
            // Old pods drain for their delay after the new ones are ready: keep creating until they are gone.
            let gone = Instant::now();
            while gone.elapsed() < Duration::from_secs(60) {
                let pods = c.kubectl(&["get", "pods", "-n", "tollgate", "-l", "app.kubernetes.io/name=tollgate-webhook", "-o", "name"]);
                let listed = String::from_utf8_lossy(&pods.stdout).lines().count();
                if listed <= 2 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            std::thread::sleep(Duration::from_secs(2));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(out.status.success(), "round {round}: {}", text(&out));
            creator.join().unwrap()
        });
        created += n;
        failures.extend(failed.into_iter().map(|f| format!("round {round}: {f}")));
    }
    load.store(false, std::sync::atomic::Ordering::Relaxed);
    for burner in burners {
        burner.join().unwrap();
    }
    assert!(failures.is_empty(), "{} of {created} creations failed during 3 rollouts under load: {failures:#?}", failures.len());
    assert!(created >= 30, "{created}");
}

/// Sets its flag when dropped, also while a panic unwinds: a thread waiting for it then ends.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Create pods (server-side dry runs: admission without scheduling), at least one and until `stop` is set;
/// how many, and every failure's text.
fn create_pods_until(c: &Cluster, stop: &std::sync::atomic::AtomicBool) -> (usize, Vec<String>) {
    let ns = c.namespace.as_str();
    let (mut created, mut failures) = (0, Vec::new());
    while created == 0 || !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let manifest = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"renewal-{created}","namespace":"{ns}"}},"spec":{{"containers":[{{"name":"app","image":"{EXAMPLE}"}}]}}}}"#
        );
        let out = c.kubectl_stdin(&["create", "--dry-run=server", "-o", "jsonpath={.spec.initContainers[*].name}", "-f", "-"], &manifest);
        // Created and hardened: the proxy (a native sidecar) is there.
        if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("tollgate-proxy") {
            failures.push(text(&out));
        }
        created += 1;
    }
    (created, failures)
}

/// The certificate a webhook pod serves, as PEM.
fn served_certificate(pod_ip: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("{pod_ip}:8443"), "-servername", "tollgate-webhook.tollgate.svc"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&out.stdout);
    let (start, end) = ("-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----");
    match (all.find(start), all.find(end)) {
        (Some(a), Some(b)) => format!("{}\n", &all[a..b + end.len()]),
        _ => String::new(),
    }
}

fn decoded(secret: &Value, key: &str) -> String {
    use base64::Engine as _;
    let b64 = secret["data"][key].as_str().unwrap_or_else(|| panic!("no {key} in {}", secret["metadata"]["name"]));
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
}

fn renewing_the_certificates_and_upgrading_the_release_fail_no_pod_creation() {
    let c = cluster();
    for job in ["renew-check", "renew-ca"] {
        c.fresh("job", job, "tollgate");
    }
    let before = c.json(&["get", "secret", "tollgate-webhook-tls", "-n", "tollgate"]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (created, failures) = std::thread::scope(|scope| {
        let creating = scope.spawn(|| create_pods_until(&c, &stop));
        // A failed assertion below must still end the creating thread, or the scope waits for it forever.
        let _stop = StopOnDrop(&stop);
        let run_job = |name: &str, job: &str| {
            c.apply(job);
            let done = c.kubectl(&["wait", "--for=condition=complete", &format!("job/{name}"), "-n", "tollgate", "--timeout=120s"]);
            let logs = c.kubectl(&["logs", &format!("job/{name}"), "-n", "tollgate"]);
            assert!(done.status.success(), "job {name}: {}\n{}", text(&done), text(&logs));
            String::from_utf8_lossy(&logs.stdout).into_owned()
        };
        // The daily renewal, as its CronJob runs it: valid certificates are kept.
        let cronjob = c.json(&["get", "cronjob", "tollgate-certs-renew", "-n", "tollgate"]);
        let job = |name: &str, extra: &[&str]| {
            let mut spec = cronjob["spec"]["jobTemplate"]["spec"].clone();
            let args = spec["template"]["spec"]["containers"][0]["args"].as_array_mut().unwrap();
            args.extend(extra.iter().map(|a| Value::from(*a)));
            serde_json::json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "tollgate"}, "spec": spec})
                .to_string()
        };
        let kept = run_job("renew-check", &job("renew-check", &[]));
        assert_eq!(kept.trim(), "certificates are valid; kept; caBundle of tollgate: already current");
        // A new CA, forced: trusted beside the old one before the webhook serves a certificate signed by it.
        let renewed = run_job("renew-ca", &job("renew-ca", &["--renew=ca"]));
        assert!(
            renewed.starts_with(
                "created a new CA and serving certificate (renewal forced (--renew=ca)); caBundle of tollgate: set on 6 webhook(s)"
            ),
            "{renewed}"
        );
        let after = c.json(&["get", "secret", "tollgate-webhook-tls", "-n", "tollgate"]);
        let (new_cert, old_ca) = (decoded(&after, "tls.crt"), decoded(&before, "ca.crt"));
        assert_ne!(new_cert, decoded(&before, "tls.crt"));
        let new_ca = decoded(&c.json(&["get", "secret", "tollgate-webhook-ca", "-n", "tollgate"]), "tls.crt");
        assert_eq!(decoded(&after, "ca.crt"), format!("{new_ca}{old_ca}"), "the new CA, then the old one");
        // kubelet refreshes the mounted Secret, and every webhook pod picks the new certificate up by itself.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let pods = c.json(&["get", "pods", "-n", "tollgate", "-l", "app.kubernetes.io/name=tollgate-webhook"]);
            let ips: Vec<String> =
                pods["items"].as_array().unwrap().iter().filter_map(|p| p["status"]["podIP"].as_str().map(str::to_owned)).collect();
            assert!(!ips.is_empty());
            let stale: Vec<&String> = ips.iter().filter(|ip| served_certificate(ip) != new_cert).collect();
            if stale.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "webhook pods {stale:?} still serve the old certificate");
            std::thread::sleep(Duration::from_secs(2));
        }
        // An upgrade (its pre-upgrade hook renews nothing now, the post-upgrade one patches nothing).
        let chart = format!("{}/../charts/tollgate", env!("CARGO_MANIFEST_DIR"));
        let upgrade = c.helm(&["upgrade", "tollgate", &chart, "-n", "tollgate", "--reset-then-reuse-values", "--wait", "--timeout=180s"]);
        assert!(upgrade.status.success(), "{}", text(&upgrade));
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        creating.join().unwrap()
    });
    assert!(failures.is_empty(), "{} of {created} pod creations failed: {failures:#?}", failures.len());
    assert!(created >= 20, "too few creations to show anything: {created}");
    // The upgrade kept the certificates and the caBundle, and its hook's rights are gone.
    let after = c.json(&["get", "secret", "tollgate-webhook-tls", "-n", "tollgate"]);
    let config = c.json(&["get", "mutatingwebhookconfiguration", "tollgate"]);
    for webhook in config["webhooks"].as_array().unwrap() {
        assert_eq!(webhook["clientConfig"]["caBundle"], after["data"]["ca.crt"], "caBundle of {}", webhook["name"]);
    }
    for kind in ["clusterrole", "clusterrolebinding", "role", "rolebinding", "serviceaccount"] {
        let left = c.ok(&["get", kind, "tollgate-certs-secrets", "-n", "tollgate", "--ignore-not-found", "-o", "name"]);
        assert!(left.trim().is_empty(), "{kind} tollgate-certs-secrets left behind: {left}");
    }
    for job in ["renew-check", "renew-ca"] {
        c.fresh("job", job, "tollgate");
    }
}

fn a_bad_policy_or_route_table_fails_the_upgrade_naming_the_field_and_changes_nothing() {
    let c = cluster();
    let chart = format!("{}/../charts/tollgate", env!("CARGO_MANIFEST_DIR"));
    let policy_before = c.json(&["get", "configmap", "tollgate-policy", "-n", "tollgate"]);
    let dir = tempfile::tempdir().unwrap();
    // Values the chart's schema accepts (an integer id, a string URL) and the binaries refuse.
    for (values, said) in [
        ("policy:\n  security:\n    runAsUser: 0\n", "security.runAsUser: 0 is not a non-root id"),
        ("proxyConfig:\n  routes:\n    - { name: hub, prefix: /hub/, upstream: 'ftp://hub.example.org/' }\n", "routes[0].upstream"),
    ] {
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, values).unwrap();
        let upgrade = c.helm(&[
            "upgrade",
            "tollgate",
            &chart,
            "-n",
            "tollgate",
            "--reset-then-reuse-values",
            "-f",
            file.to_str().unwrap(),
            "--wait",
            "--timeout=120s",
        ]);
        assert!(!upgrade.status.success(), "{values} was installed");
        assert!(text(&upgrade).contains("tollgate-validate"), "{}", text(&upgrade));
        let logs = c.ok(&["logs", "job/tollgate-validate", "-n", "tollgate", "--all-containers"]);
        assert!(logs.contains(said), "{values}: {logs}");
    }
    // Nothing changed: the same policy, and pods are still created hardened.
    assert_eq!(c.json(&["get", "configmap", "tollgate-policy", "-n", "tollgate"])["data"], policy_before["data"]);
    let (created, failures) = create_pods_until(&c, &std::sync::atomic::AtomicBool::new(true));
    assert!(created == 1 && failures.is_empty(), "{failures:?}");
    // A good upgrade goes through and takes the failed check's Job with it.
    let upgrade = c.helm(&["upgrade", "tollgate", &chart, "-n", "tollgate", "--reset-then-reuse-values", "--wait", "--timeout=180s"]);
    assert!(upgrade.status.success(), "{}", text(&upgrade));
    for kind in ["job", "configmap"] {
        let left = c.ok(&["get", kind, "tollgate-validate", "-n", "tollgate", "--ignore-not-found", "-o", "name"]);
        assert!(left.trim().is_empty(), "{kind} tollgate-validate left behind: {left}");
    }
}

fn helm_test_runs_tollgate_check_in_the_cluster_and_leaves_no_rights_behind() {
    let c = cluster();
    let ns = c.namespace.as_str();
    let rights_gone = || {
        for (kind, namespace) in
            [("serviceaccount", "tollgate"), ("role", "tollgate"), ("role", ns), ("clusterrole", ""), ("clusterrolebinding", "")]
        {
            let mut args = vec!["get", kind, "tollgate-test", "--ignore-not-found", "-o", "name"];
            if !namespace.is_empty() {
                args.extend(["-n", namespace]);
            }
            let left = c.ok(&args);
            assert!(left.trim().is_empty(), "{kind} tollgate-test left behind: {left}");
        }
    };
    // A broken setup: the analysis namespace's route table gone. The test fails; its pod stays for its log.
    let mut routes = c.json(&["get", "configmap", "tollgate-proxy-routes", "-n", ns]);
    c.ok(&["delete", "configmap", "tollgate-proxy-routes", "-n", ns]);
    let failed = c.helm(&["test", "tollgate", "-n", "tollgate", "--timeout=120s"]);
    assert!(!failed.status.success(), "{}", text(&failed));
    let log = c.ok(&["logs", "tollgate-test", "-n", "tollgate"]);
    for seen in ["[FAIL] routes", "no ConfigMap tollgate-proxy-routes", "[ok  ] webhook-registered", "[ok  ] admission", "1 errors"] {
        assert!(log.contains(seen), "{seen:?} not in:\n{log}");
    }
    rights_gone();
    // Repaired, it passes, and leaves nothing.
    let metadata = routes["metadata"].as_object_mut().unwrap();
    metadata.retain(|key, _| ["name", "namespace", "labels", "annotations"].contains(&key.as_str()));
    c.apply(&routes.to_string());
    let passed = c.helm(&["test", "tollgate", "-n", "tollgate", "--timeout=120s"]);
    assert!(passed.status.success(), "{}", text(&passed));
    assert!(text(&passed).contains("Phase:          Succeeded"), "{}", text(&passed));
    rights_gone();
    let left = c.ok(&["get", "pod", "tollgate-test", "-n", "tollgate", "--ignore-not-found", "-o", "name"]);
    assert!(left.trim().is_empty(), "the passed test's pod is left: {left}");
}

fn helm_uninstall_leaves_no_webhook_and_labeled_namespaces_take_no_plain_pods() {
    let c = cluster();
    let ns = c.namespace.as_str();
    let helm = c.helm(&["uninstall", "tollgate", "-n", "tollgate", "--wait", "--timeout=120s"]);
    assert!(helm.status.success(), "{}", text(&helm));
    let left = c.ok(&["get", "mutatingwebhookconfigurations", "-o", "name"]);
    assert!(!left.contains("tollgate"), "{left}");
    // The pre-delete hook that removed the configuration first left nothing either.
    for kind in ["job", "serviceaccount"] {
        let left = c.ok(&["get", kind, "tollgate-unregister", "-n", "tollgate", "--ignore-not-found", "-o", "name"]);
        assert!(left.trim().is_empty(), "{kind} tollgate-unregister left behind: {left}");
    }
    let left = c.ok(&["get", "clusterroles,clusterrolebindings", "-o", "name"]);
    assert!(!left.contains("tollgate"), "cluster-wide rights left behind: {left}");
    // The namespace is still labeled: its pods are refused until the label is gone (the documented order).
    let out = c.kubectl(&["run", "after", "-n", ns, &format!("--image={EXAMPLE}"), "--restart=Never", "--", "whoami"]);
    assert!(!out.status.success(), "a plain pod in a labeled namespace after uninstall");
    assert!(text(&out).contains("tollgate's webhook did not see it"), "{}", text(&out));
    c.ok(&["label", "namespace", ns, "tollgate.dev/inject-"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = c.kubectl(&["run", "after", "-n", ns, &format!("--image={EXAMPLE}"), "--restart=Never", "--", "whoami"]);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", text(&out));
        std::thread::sleep(Duration::from_millis(300));
    }
    let pod = c.pod(ns, "after");
    assert!(pod["spec"]["initContainers"].is_null(), "unlabeled: a plain pod");
}

/// Needs `helm_uninstall_leaves_no_webhook_and_labeled_namespaces_take_no_plain_pods` before it: no release, and the
/// analysis namespace no longer labeled.
fn helm_install_wait_with_an_existing_secret_hardens_pods_and_uninstalls_clean() {
    let c = cluster();
    let ns = c.namespace.as_str();
    // The admin's own certificate (here from tollgate-certs), as a kubernetes.io/tls Secret, and its CA.
    let certs = tempfile::tempdir().unwrap();
    let made = Command::new(format!("{}/release/tollgate-certs", c.dir)).args(["files", "--dir"]).arg(certs.path()).output().unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let (cert, key) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
    c.ok(&[
        "create",
        "secret",
        "tls",
        "my-webhook-tls",
        "-n",
        "tollgate",
        &format!("--cert={}", cert.display()),
        &format!("--key={}", key.display()),
    ]);
    let chart = format!("{}/../charts/tollgate", env!("CARGO_MANIFEST_DIR"));
    let install = c.helm(&[
        "install",
        "tollgate",
        &chart,
        "-n",
        "tollgate",
        "--wait",
        "--timeout=180s",
        "-f",
        &format!("{}/values.yaml", c.dir),
        "--set",
        "certificates.mode=existingSecret",
        "--set",
        "certificates.existingSecret=my-webhook-tls",
        "--set-file",
        &format!("webhook.caBundle={}", certs.path().join("ca.crt").display()),
        "--set",
        &format!("analysisNamespaces[0].name={ns}"),
    ]);
    assert!(install.status.success(), "{}", text(&install));
    c.ok(&["label", "namespace", ns, "tollgate.dev/inject=enabled"]);
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"existing-secret","namespace":"{ns}"}},"spec":{{"containers":[{{"name":"app","image":"{EXAMPLE}"}}]}}}}"#
    );
    let out = c.kubectl_stdin(&["create", "--dry-run=server", "-o", "jsonpath={.spec.initContainers[*].name}", "-f", "-"], &pod);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("tollgate-proxy"), "{}", text(&out));
    // And out again, leaving no webhook configuration; the admin's Secret is the admin's.
    c.ok(&["label", "namespace", ns, "tollgate.dev/inject-"]);
    let uninstall = c.helm(&["uninstall", "tollgate", "-n", "tollgate", "--wait", "--timeout=120s"]);
    assert!(uninstall.status.success(), "{}", text(&uninstall));
    let left = c.ok(&["get", "mutatingwebhookconfigurations,clusterroles,clusterrolebindings", "-o", "name"]);
    assert!(!left.contains("tollgate"), "{left}");
    c.ok(&["delete", "secret", "my-webhook-tls", "-n", "tollgate"]);
}
