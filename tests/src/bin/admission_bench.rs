//! What tollgate adds to pod creation through a real kube-apiserver (bench/admission.sh): the same plain
//! pod created again and again in a namespace tollgate hardens (the webhook registered as `manifests/`
//! ships it, with the ValidatingAdmissionPolicies) and in one it leaves alone, alternating, so that both see
//! the same API server, etcd and machine. Prints bench/run.sh table rows.
//!
//!   tollgate-admission-bench [PODS]      default 200 of each; run the release build (bench/admission.sh)

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use tollgate_e2e::{ControlPlane, Webhook, percentile};

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

#[tokio::main]
async fn main() {
    let pods: usize = std::env::args().nth(1).map_or(200, |n| n.parse().expect("PODS is a number"));
    let plane = ControlPlane::start();
    let _webhook = Webhook::start(&plane);
    // Neither namespace enforces Pod Security, so that the difference is tollgate's alone.
    let namespaces = r#"{"apiVersion":"v1","kind":"List","items":[
{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"hardened","labels":{"tollgate.dev/inject":"enabled"}}},
{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"untouched"}},
{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default","namespace":"hardened"}},
{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default","namespace":"untouched"}}]}"#;
    let out = plane.kubectl_stdin(&["apply", "-f", "-"], namespaces);
    assert!(out.status.success(), "namespaces: {}", String::from_utf8_lossy(&out.stderr));
    let client = plane.client().await;
    let hardened: Api<Pod> = Api::namespaced(client.clone(), "hardened");
    let untouched: Api<Pod> = Api::namespaced(client, "untouched");

    let warm_up = 20;
    let (mut with, mut without) = (Vec::with_capacity(pods), Vec::with_capacity(pods));
    for i in 0..warm_up + pods {
        for (api, times) in [(&hardened, &mut with), (&untouched, &mut without)] {
            let started = Instant::now();
            let created = api.create(&PostParams::default(), &plain_pod(&format!("pod-{i}"))).await.expect("pod created");
            let took = started.elapsed();
            if i >= warm_up {
                times.push(took);
            }
            if i == 0 && std::ptr::eq(api, &hardened) {
                let injected = created.metadata.labels.as_ref().and_then(|l| l.get("tollgate.dev/injected")).map(String::as_str);
                assert_eq!(injected, Some("true"), "the webhook hardened the pod");
            }
        }
    }
    with.sort();
    without.sort();
    let (with_p50, without_p50) = (percentile(&with, 0.5), percentile(&without, 0.5));
    let (with_p99, without_p99) = (percentile(&with, 0.99), percentile(&without, 0.99));
    eprintln!(
        "with tollgate: p50 {} p99 {}; without: p50 {} p99 {} ({pods} pods each)",
        ms(with_p50),
        ms(with_p99),
        ms(without_p50),
        ms(without_p99)
    );
    let added = |a: Duration, b: Duration| ms(a.saturating_sub(b));
    println!(
        "ROW\tadmission\tpod creation through kube-apiserver, p50 ({pods} pods each, alternating)\t{}\twithout tollgate {}\tadded {}\tadded p50 ≤ 2 ms",
        ms(with_p50),
        ms(without_p50),
        added(with_p50, without_p50)
    );
    println!(
        "ROW\tadmission\tpod creation through kube-apiserver, p99\t{}\twithout tollgate {}\tadded {}\t",
        ms(with_p99),
        ms(without_p99),
        added(with_p99, without_p99)
    );
}
