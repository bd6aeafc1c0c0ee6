//! Side-by-side benchmarks: the hardening core against the JSON work it cannot avoid, and a review
//! over real HTTPS (h2) against the same round trip to /healthz (the TLS + HTTP floor).
//!
//! `cargo bench -p tollgate-webhook` ; numbers and ratios from one 2-core machine are in README.md.

#[path = "../tests/common/net.rs"]
mod net;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use tollgate_webhook::harden::harden;
use tollgate_webhook::policy::Policy;
use tollgate_webhook::review::review;
use tollgate_webhook::server::{ServeConfig, Server};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}/input.yaml", env!("CARGO_MANIFEST_DIR"));
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn review_body(pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "bench", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "flame", "operation": "CREATE", "userInfo": {"username": "bench"}, "object": pod, "oldObject": null, "dryRun": false
        }
    }))
    .unwrap()
}

fn core(c: &mut Criterion) {
    let policy = Policy::default();
    let mut group = c.benchmark_group("core");
    for name in ["plain-pod", "huge-pod"] {
        let pod = fixture(name);
        let body = review_body(&pod);
        group.bench_with_input(BenchmarkId::new("json-parse-and-encode (floor)", name), &body, |b, body| {
            b.iter(|| serde_json::to_vec(&serde_json::from_slice::<Value>(black_box(body)).unwrap()).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("harden", name), &pod, |b, pod| {
            b.iter_batched(|| pod.clone(), |mut pod| harden(&policy, black_box(&mut pod)).unwrap(), criterion::BatchSize::SmallInput)
        });
        group.bench_with_input(BenchmarkId::new("review (parse + harden + encode)", name), &body, |b, body| {
            b.iter(|| review(&policy, black_box(body)).unwrap())
        });
    }
    group.finish();
}

fn https(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ca = net::TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.leaf("bench");
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        drain_delay: Duration::ZERO,
        ..ServeConfig::new(dir.path().join("tls.crt"), dir.path().join("tls.key"))
    };
    let addr = runtime.block_on(async {
        let server = Server::bind(config).await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(server.run(std::future::pending()));
        addr
    });
    let client = runtime.block_on(async { net::Client::connect(&ca.connector(&[b"h2"]), addr).await.unwrap().0 });
    let client = tokio::sync::Mutex::new(client);

    let mut group = c.benchmark_group("https-h2");
    group.bench_function("GET /healthz (TLS + HTTP floor)", |b| {
        b.to_async(&runtime)
            .iter(|| async { assert_eq!(client.lock().await.send(net::request("GET", "/healthz", "")).await.unwrap().status, 200) })
    });
    for name in ["plain-pod", "huge-pod"] {
        let body = bytes::Bytes::from(review_body(&fixture(name)));
        group.bench_with_input(BenchmarkId::new("POST /mutate", name), &body, |b, body| {
            b.to_async(&runtime).iter(|| async {
                assert_eq!(client.lock().await.send(net::request("POST", "/mutate", body.clone())).await.unwrap().status, 200)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(30);
    targets = core, https
}
criterion_main!(benches);
