//! What tollgate adds to pod creation through a real kube-apiserver (bench/admission.sh): the same plain
//! pod created again and again in five namespaces, in turn, so that all see the same API server, etcd and
//! machine:
//! - one tollgate hardens (the webhook registered as `manifests/` ships it, with the
//!   ValidatingAdmissionPolicies);
//! - three where the webhook floor (bench/src/bin/floor_webhook.rs: TLS, decode, allow) is registered with
//!   the same settings, answering with tollgate's own patch for this pod (what any webhook making
//!   tollgate's change costs), with a patch adding one label (what any change costs: the API server then
//!   runs its mutating plugins again and decodes the patched pod), and with no patch (what any webhook
//!   costs);
//! - one nothing is registered for.
//!
//! Then where tollgate's call goes, as the API server and the webhook measure it. Prints bench/run.sh
//! table rows.
//!
//!   tollgate-admission-bench [PODS]      default 200 of each; run the release build (bench/admission.sh)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use tollgate_e2e::{ControlPlane, Process, Webhook, percentile, workspace_bin};
use tollgate_testkit::free_port;

const FLOOR_LABEL: &str = "bench.tollgate.dev/floor";

fn plain_pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": {"tollgate.dev/analysis-id": "a1", "tollgate.dev/project-id": "p1"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "analysis", "image": "registry.example.org/analysis:1.0", "args": ["run"]}]},
    }))
    .expect("a valid pod")
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A floor webhook on `certs` (tollgate-certs' files, so the same CA) answering with `patch` if given,
/// registered exactly like tollgate's pod webhook but for namespaces labeled [`FLOOR_LABEL`]`=<arm>`.
fn start_floor(plane: &ControlPlane, certs: &Path, arm: &str, patch: Option<&Path>) -> Process {
    let port = free_port();
    let process = Process::start(
        "floor-webhook",
        Command::new(workspace_bin("floor-webhook"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--tls-cert")
            .arg(certs.join("tls.crt"))
            .arg("--tls-key")
            .arg(certs.join("tls.key"))
            .args(patch.iter().flat_map(|file| [Path::new("--patch"), file])),
        plane.dir.path().join(format!("floor-webhook-{arm}.log")),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process.logs().contains("serving on") {
        assert!(Instant::now() < deadline, "floor-webhook did not start:\n{}", process.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let ca = base64::engine::general_purpose::STANDARD.encode(std::fs::read(certs.join("ca.crt")).unwrap());
    let configuration = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": format!("bench-floor-{arm}")},
        "webhooks": [{
            "name": format!("{arm}.floor.bench.tollgate.dev"), "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": 5, "reinvocationPolicy": "IfNeeded", "matchPolicy": "Equivalent",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate"), "caBundle": ca},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {FLOOR_LABEL: arm}},
        }],
    });
    let out = plane.kubectl_stdin(&["apply", "-f", "-"], &configuration.to_string());
    assert!(out.status.success(), "registering the floor webhook: {}", String::from_utf8_lossy(&out.stderr));
    process
}

/// tollgate's JSONPatch for the bench's pod as the API server hands it to webhooks (its defaults and the
/// ServiceAccount plugin's token volume filled in: a server-side dry run where no webhook is registered),
/// asked of the running webhook itself.
async fn tollgate_patch(webhook: &Webhook, untouched: &Api<Pod>) -> Vec<u8> {
    let dry_run = PostParams { dry_run: true, ..PostParams::default() };
    let pod = untouched.create(&dry_run, &plain_pod("pod-dry-run")).await.expect("a dry run");
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-4000-8000-000000000000", "operation": "CREATE", "namespace": "untouched",
            "kind": {"group": "", "version": "v1", "kind": "Pod"}, "resource": {"group": "", "version": "v1", "resource": "pods"},
            "userInfo": {"username": "admin", "groups": ["system:masters", "system:authenticated"]}, "object": pod, "dryRun": false,
        },
    });
    let out = Command::new("curl")
        .args(["-sf", "-H", "content-type: application/json", "--data-binary", &review.to_string(), "--cacert"])
        .arg(webhook.certs.join("ca.crt"))
        .arg(format!("https://127.0.0.1:{}/mutate", webhook.port))
        .output()
        .expect("curl runs");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the webhook answers a review");
    let patch = answer["response"]["patch"].as_str().unwrap_or_else(|| panic!("no patch in the webhook's answer: {answer}"));
    base64::engine::general_purpose::STANDARD.decode(patch).expect("the patch is base64")
}

/// The API server's metrics: for pod CREATEs, the admission histograms' sums (seconds), and its HTTP
/// client's time to the webhook at `webhook_port` (until the response's head).
fn apiserver_metrics(plane: &ControlPlane, webhook_port: u16) -> BTreeMap<String, f64> {
    let out = plane.kubectl(&["get", "--raw", "/metrics"]);
    assert!(out.status.success(), "metrics: {}", String::from_utf8_lossy(&out.stderr));
    let client_series = format!("rest_client_request_duration_seconds_sum{{host=\"127.0.0.1:{webhook_port}\"");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| {
            (l.starts_with("apiserver_admission_") && l.contains("_sum{") && l.contains("operation=\"CREATE\""))
                || l.starts_with(&client_series)
        })
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The webhook's own time reviewing (its histogram's sum, seconds): decoding, hardening, the patch.
fn webhook_review_seconds(webhook: &Webhook) -> f64 {
    let out = Command::new("curl")
        .args(["-sf", "--cacert"])
        .arg(webhook.certs.join("ca.crt"))
        .arg(format!("https://127.0.0.1:{}/metrics", webhook.port))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tollgate_webhook_review_duration_seconds_sum "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no review duration in the webhook's metrics:\n{text}"))
}

#[tokio::main]
async fn main() {
    let pods: usize = std::env::args().nth(1).map_or(200, |n| n.parse().expect("PODS is a number"));
    let plane = ControlPlane::start();
    let webhook = Webhook::start(&plane);
    // Each arm's namespace, with the label that picks its webhook, and its default ServiceAccount. None
    // enforces Pod Security, so that the differences are the webhooks' alone.
    let arms = [
        ("hardened", Some(("tollgate.dev/inject", "enabled"))),
        ("floor-patch", Some((FLOOR_LABEL, "patch"))),
        ("floor-label", Some((FLOOR_LABEL, "label"))),
        ("floor", Some((FLOOR_LABEL, "plain"))),
        ("untouched", None),
    ];
    let items: Vec<serde_json::Value> = arms
        .iter()
        .flat_map(|(name, label)| {
            let labels: serde_json::Map<String, serde_json::Value> = label.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
            [
                serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}),
                serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}}),
            ]
        })
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let out = plane.kubectl_stdin(&["apply", "-f", "-"], &list.to_string());
    assert!(out.status.success(), "namespaces: {}", String::from_utf8_lossy(&out.stderr));
    let client = plane.client().await;
    let arms: Vec<(&str, Api<Pod>)> = arms.iter().map(|(ns, _)| (*ns, Api::namespaced(client.clone(), ns))).collect();
    let patch = plane.dir.path().join("tollgate-patch.json");
    std::fs::write(&patch, tollgate_patch(&webhook, &arms[4].1).await).unwrap();
    let label = plane.dir.path().join("label-patch.json");
    std::fs::write(&label, r#"[{"op":"add","path":"/metadata/labels","value":{"bench.tollgate.dev/seen":"true"}}]"#).unwrap();
    let _floors = [
        start_floor(&plane, &webhook.certs, "patch", Some(&patch)),
        start_floor(&plane, &webhook.certs, "label", Some(&label)),
        start_floor(&plane, &webhook.certs, "plain", None),
    ];

    let warm_up = 20;
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(pods); arms.len()];
    let mut before = (BTreeMap::new(), 0.0);
    for i in 0..warm_up + pods {
        if i == warm_up {
            before = (apiserver_metrics(&plane, webhook.port), webhook_review_seconds(&webhook));
        }
        for ((namespace, api), times) in arms.iter().zip(&mut times) {
            let started = Instant::now();
            let created = api.create(&PostParams::default(), &plain_pod(&format!("pod-{i}"))).await.expect("pod created");
            let took = started.elapsed();
            if i >= warm_up {
                times.push(took);
            }
            if i == 0 {
                let injected = created.metadata.labels.as_ref().and_then(|l| l.get("tollgate.dev/injected")).is_some();
                assert_eq!(injected, namespace.contains("patch") || *namespace == "hardened", "hardened or not as expected ({namespace})");
            }
        }
    }
    let after = (apiserver_metrics(&plane, webhook.port), webhook_review_seconds(&webhook));
    let per_pod = |seconds: f64| Duration::from_secs_f64(seconds / pods as f64);
    let spent = |series: &str| -> Duration {
        let delta = |m: &BTreeMap<String, f64>| m.iter().filter(|(k, _)| k.contains(series)).map(|(_, v)| v).sum::<f64>();
        per_pod(delta(&after.0) - delta(&before.0))
    };

    for t in &mut times {
        t.sort();
    }
    let [with, floor_patch, floor_label, floor, without] = [&times[0], &times[1], &times[2], &times[3], &times[4]];
    let p = |t: &[Duration], q| percentile(t, q);
    eprintln!(
        "p50 / p99: tollgate {} / {}, floor webhook with tollgate's patch {} / {}, adding a label {} / {}, allowing {} / {}, nothing {} / {} ({pods} pods each)",
        ms(p(with, 0.5)),
        ms(p(with, 0.99)),
        ms(p(floor_patch, 0.5)),
        ms(p(floor_patch, 0.99)),
        ms(p(floor_label, 0.5)),
        ms(p(floor_label, 0.99)),
        ms(p(floor, 0.5)),
        ms(p(floor, 0.99)),
        ms(p(without, 0.5)),
        ms(p(without, 0.99))
    );
    // One row per comparison: `what`, the arm at quantile `q`, the arm it is compared with, and the difference.
    let compare = |what: &str, arm: &[Duration], base_name: &str, base: &[Duration], q: f64, goal: &str| {
        let (a, b) = (p(arm, q), p(base, q));
        println!("ROW\tadmission\t{what}\t{}\t{base_name} {}\tadded {}\t{goal}", ms(a), ms(b), ms(a.saturating_sub(b)));
    };
    compare(
        &format!("pod creation through kube-apiserver, p50 ({pods} pods each, in turn)"),
        with,
        "no webhook",
        without,
        0.5,
        "added p50 ≤ 2 ms",
    );
    compare(
        "pod creation, p50: the webhook floor registered the same way (the least any webhook adds)",
        floor,
        "no webhook",
        without,
        0.5,
        "",
    );
    compare("pod creation, p50: the floor adding one label (the least any mutation adds)", floor_label, "no webhook", without, 0.5, "");
    compare(
        "pod creation, p50: the floor answering with tollgate's patch (any webhook making tollgate's change)",
        floor_patch,
        "no webhook",
        without,
        0.5,
        "",
    );
    compare(
        "pod creation, p50: tollgate over the floor with its patch (its review, its policies)",
        with,
        "floor with patch",
        floor_patch,
        0.5,
        "",
    );
    compare("pod creation through kube-apiserver, p99", with, "no webhook", without, 0.99, "");
    // Means per pod, from the histograms' sums (the floor's call is the floor namespace's alone).
    let webhook_call = spent("webhook_admission_duration_seconds_sum{name=\"harden.pods.tollgate.dev\"");
    let floor_call = spent("webhook_admission_duration_seconds_sum{name=\"plain.floor.bench.tollgate.dev\"");
    let floor_patch_call = spent("webhook_admission_duration_seconds_sum{name=\"patch.floor.bench.tollgate.dev\"");
    let http = spent("rest_client_request_duration_seconds_sum");
    let review = per_pod(after.1 - before.1);
    println!(
        "ROW\tadmission\tof which, per pod (API server's means): tollgate's webhook call / the floor's with the patch (without)\t{}\tfloor {} ({})\t{:.2}×\t",
        ms(webhook_call),
        ms(floor_patch_call),
        ms(floor_call),
        webhook_call.as_secs_f64() / floor_patch_call.as_secs_f64()
    );
    println!(
        "ROW\tadmission\tof tollgate's call: HTTP to the response head / the webhook's own review\t{}\treview {}\t\t",
        ms(http),
        ms(review)
    );
}
