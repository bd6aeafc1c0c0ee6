//! The `tollgate-webhook` binary: inject, check-policy, default-policy, and serve with JSON logs and SIGTERM.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tollgate_webhook::policy::Policy;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-webhook");

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    tollgate_testkit::output_with_stdin(Command::new(BIN).args(args), stdin.unwrap_or_default().as_bytes())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn inject_prints_the_hardened_pod_and_the_changes() {
    let dir = common::fixtures_dir().join("job-pod");
    let out = run(&["inject", "-f", dir.join("input.yaml").to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Value = serde_yaml_ng::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(printed, common::yaml(&std::fs::read_to_string(dir.join("expected.yaml")).unwrap()));
    let stderr = text(&out.stderr);
    let expected_changes: Vec<String> =
        std::fs::read_to_string(dir.join("changes.txt")).unwrap().lines().map(|l| format!("pod/analysis-job-: {l}")).collect();
    assert_eq!(stderr.lines().collect::<Vec<_>>(), expected_changes);
}

#[test]
fn inject_hardens_the_pod_templates_of_a_stream_of_workloads() {
    let template = "template:\n    metadata: { labels: { app: a } }\n    spec:\n      restartPolicy: OnFailure\n      containers: [{ name: app, image: 'registry.example.org/app:1' }]";
    let stream = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{ name: d }}\nspec:\n  selector: {{ matchLabels: {{ app: a }} }}\n  {template}\n---\n\
         apiVersion: batch/v1\nkind: Job\nmetadata: {{ name: j }}\nspec:\n  {template}\n---\n\
         apiVersion: batch/v1\nkind: CronJob\nmetadata: {{ name: c }}\nspec:\n  schedule: '@daily'\n  jobTemplate:\n    spec:\n      {}\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{ name: s }}\nspec:\n  serviceName: s\n  selector: {{ matchLabels: {{ app: a }} }}\n  {template}\n---\n\
         apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{ name: ds }}\nspec:\n  selector: {{ matchLabels: {{ app: a }} }}\n  {template}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{ name: svc }}\nspec: {{ ports: [{{ port: 80 }}] }}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{ name: p }}\nspec:\n  containers: [{{ name: app, image: 'registry.example.org/app:1' }}]\n",
        template.replace("\n", "\n    ")
    );
    let out = run(&["inject", "-f", "-"], Some(&stream));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let documents: Vec<Value> =
        serde_yaml_ng::Deserializer::from_str(&text(&out.stdout)).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    assert_eq!(documents.len(), 7);
    let pointers = ["/spec/template", "/spec/template", "/spec/jobTemplate/spec/template", "/spec/template", "/spec/template"];
    for (document, pointer) in documents.iter().zip(pointers) {
        let pod = document.pointer(pointer).unwrap();
        assert_eq!(pod["spec"]["initContainers"][0]["name"], "tollgate-proxy", "{document}");
        assert_eq!(pod["metadata"]["labels"]["tollgate.dev/injected"], "true");
        assert_eq!(pod["metadata"]["labels"]["app"], "a", "existing labels kept");
        let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod.clone()).unwrap();
        assert_eq!(common::pss::restricted_violations(&typed), Vec::<String>::new());
    }
    assert_eq!(documents[5]["kind"], "Service");
    assert_eq!(documents[5]["spec"]["ports"][0]["port"], 80, "other kinds pass through unchanged");
    assert_eq!(documents[6]["spec"]["initContainers"][0]["name"], "tollgate-proxy");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("service/svc: skipped (kind \"Service\" has no pod template)"), "{stderr}");
    assert!(stderr.contains("cronjob/c: pod: injected tollgate-proxy"), "{stderr}");

    // Its own output is already hardened.
    let again = run(&["inject", "-f", "-"], Some(&text(&out.stdout)));
    assert!(again.status.success());
    assert_eq!(text(&again.stdout), text(&out.stdout));
    assert_eq!(text(&again.stderr).lines().filter(|l| l.ends_with("already hardened")).count(), 6, "{}", text(&again.stderr));
}

#[test]
fn inject_exits_1_with_the_violation_message_and_prints_nothing() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: { name: bad }\nspec:\n  hostNetwork: true\n  containers: [{ name: app, image: 'x:1', securityContext: { privileged: true } }]\n---\napiVersion: v1\nkind: Pod\nmetadata: { name: good }\nspec:\n  containers: [{ name: app, image: 'x:1' }]\n";
    let out = run(&["inject", "-f", "-"], Some(pod));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "", "nothing half-hardened on stdout");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("pod/bad: tollgate denied this pod (2 violations): pod: spec.hostNetwork is true [host-namespaces]; container \"app\": securityContext.privileged is true [privileged]"), "{stderr}");
}

#[test]
fn inject_rejects_unreadable_input_and_policies() {
    let out = run(&["inject", "-f", "-"], Some("kind: [unclosed"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("error: -: document 1: "), "{}", text(&out.stderr));
    let out = run(&["inject", "-f", "/nonexistent/pod.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/pod.yaml: No such file"), "{}", text(&out.stderr));

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "proxy:\n  mode: sidecar\n").unwrap();
    let out = run(&["inject", "-f", "-", "--policy", policy.to_str().unwrap()], Some("kind: Pod\n"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("proxy.mode: unknown variant `sidecar`"), "{}", text(&out.stderr));
}

#[test]
fn check_policy_names_every_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "onViolation: override\nresources:\n  onExceed: clamp\n").unwrap();
    let out = run(&["check-policy", good.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("valid (digest sha256:"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "security:\n  runAsUser: 0\nproxy:\n  image: tollgate-proxy\n  adminPort: 15001\n").unwrap();
    let out = run(&["check-policy", bad.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for field in [
        "security.runAsUser: 0 is not a non-root id",
        "proxy.image: \"tollgate-proxy\" has no tag",
        "proxy.adminPort: port 15001 is already used by proxy.egressPort",
    ] {
        assert!(stderr.contains(field), "{stderr} lacks {field}");
    }
}

#[test]
fn inject_with_the_egress_lock_prints_the_lock_check_and_the_annotation() {
    let dir = common::fixtures_dir().join("egress-lock");
    let out = run(&["inject", "-f", dir.join("input.yaml").to_str().unwrap(), "--policy", dir.join("policy.yaml").to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Value = serde_yaml_ng::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(printed, common::yaml(&std::fs::read_to_string(dir.join("expected.yaml")).unwrap()));
    assert!(
        text(&out.stderr)
            .contains(r#"pod/locked: pod: recorded annotation tollgate.dev/egress-lock={"proxyUid":10001,"inboundPorts":[15006,15021]}"#),
        "{}",
        text(&out.stderr)
    );

    let policies = tempfile::tempdir().unwrap();
    let bad = policies.path().join("bad.yaml");
    std::fs::write(&bad, "proxy:\n  egressLock: enforced\n").unwrap();
    let out = run(&["check-policy", bad.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("proxy.egressLock: unknown variant `enforced`, expected `off` or `required`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn default_policy_is_printed_in_full_and_is_the_default() {
    let out = run(&["default-policy"], None);
    assert!(out.status.success());
    let printed = Policy::from_yaml(&text(&out.stdout)).unwrap();
    assert_eq!(printed, Policy::default());
    assert!(text(&out.stdout).contains("# tollgate-webhook policy"));
}

#[test]
fn help_describes_every_command() {
    let out = run(&["--help"], None);
    let help = text(&out.stdout);
    for command in ["serve", "inject", "check-policy", "default-policy"] {
        assert!(help.contains(command), "{help}");
    }
    let serve_help = text(&run(&["serve", "--help"], None).stdout);
    for flag in
        ["--listen", "--tls-cert", "--tls-key", "--policy", "--reload-interval", "--drain-delay", "--shutdown-timeout", "--log-format"]
    {
        assert!(serve_help.contains(flag), "{serve_help}");
    }
}

#[tokio::test]
async fn serve_logs_one_json_line_per_review_and_stops_on_sigterm() {
    let ca = common::net::TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.leaf("cli");
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--drain-delay", "0s", "--tls-cert"])
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next_json = async || -> Value {
        let line =
            tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.expect("log line in time").unwrap().expect("a log line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"))
    };
    let serving = next_json().await;
    assert_eq!(serving["message"], "serving", "{serving}");
    assert_eq!(serving["level"], "INFO");
    let addr: std::net::SocketAddr = serving["addr"].as_str().unwrap().parse().unwrap();

    let (mut client, _) = common::net::Client::connect(&ca.connector(&[b"h2"]), addr).await.unwrap();
    let review = serde_json::json!({
        "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "cli-uid", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "flame", "operation": "CREATE", "userInfo": {"username": "me"},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "job-"}, "spec": {"containers": [{"name": "app", "image": "x:1"}]}}
        }
    });
    let reply = client.send(common::net::request("POST", "/mutate", serde_json::to_vec(&review).unwrap())).await.unwrap();
    assert_eq!(reply.status, 200);

    let logged = next_json().await;
    assert_eq!(logged["message"], "review", "{logged}");
    assert_eq!(logged["uid"], "cli-uid");
    assert_eq!(logged["namespace"], "flame");
    assert_eq!(logged["name"], "job-*");
    assert_eq!(logged["outcome"], "patched");
    assert!(logged["changes"].as_u64().unwrap() > 10, "{logged}");
    assert!(logged["duration_us"].is_u64(), "{logged}");

    let status = Command::new("kill").args(["-TERM", &child.id().unwrap().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits after SIGTERM").unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn policy_schema_describes_a_policy_file_where_every_field_may_be_left_out() {
    let out = run(&["policy-schema"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["additionalProperties"], false);
    fn requires_something(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::Object(map) => map.contains_key("required") || map.values().any(requires_something),
            serde_json::Value::Array(items) => items.iter().any(requires_something),
            _ => false,
        }
    }
    assert!(!requires_something(&schema), "a policy file is merged over the default: nothing is required");
    let modes: Vec<&str> =
        schema["properties"]["onViolation"]["oneOf"].as_array().unwrap().iter().map(|m| m["const"].as_str().unwrap()).collect();
    assert_eq!(modes, ["deny", "override", "warn"]);
    assert!(
        schema["properties"]["onViolation"]["oneOf"][2]["description"]
            .as_str()
            .unwrap()
            .starts_with("Let a pod that would be denied through")
    );
    assert_eq!(schema["properties"]["proxy"]["properties"]["adminPort"]["maximum"], 65535);
}
