//! The webhook server over real TLS and real sockets: h1 and h2, AdmissionReview as kube-apiserver
//! sends it, bad bodies, certificate rotation under continuous traffic, policy reload, draining.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use common::net::{Client, TestCa, request, tls_connect};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tollgate_webhook::server::{ServeConfig, Server};

struct Running {
    addr: SocketAddr,
    ca: TestCa,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn client(&self, alpn: &[u8]) -> Client {
        Client::connect(&self.ca.connector(&[alpn]), self.addr).await.expect("connects").0
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.done).await.expect("server stops in time").unwrap();
    }
}

async fn start(policy: Option<&str>) -> Running {
    start_with(policy, |_| {}).await
}

async fn start_with(policy: Option<&str>, tweak: impl FnOnce(&mut ServeConfig)) -> Running {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.leaf("serving-1");
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();
    let policy_path = policy.map(|text| {
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, text).unwrap();
        path
    });
    let mut config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        policy: policy_path,
        reload_interval: Duration::from_millis(50),
        drain_delay: Duration::ZERO,
        shutdown_timeout: Duration::from_secs(5),
        ..ServeConfig::new(dir.path().join("tls.crt"), dir.path().join("tls.key"))
    };
    tweak(&mut config);
    let server = Server::bind(config).await.expect("binds");
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running { addr, ca, dir, stop: Some(stop), done }
}

fn plain_pod() -> Value {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"generateName": "analysis-", "namespace": "flame", "creationTimestamp": null, "annotations": {"tollgate.dev/analysis-id": "a1"}},
        "spec": {
            "containers": [{"name": "app", "image": "python:3.12-slim", "resources": {}, "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {}
    })
}

/// An AdmissionReview as kube-apiserver 1.3x sends it.
fn admission_review(uid: &str, operation: &str, kind: (&str, &str, &str), object: Value) -> Value {
    let (group, version, kind) = kind;
    let resource = format!("{}s", kind.to_ascii_lowercase());
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "namespace": "flame",
            "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kubectl-run"}
        }
    })
}

fn pod_review(uid: &str, pod: Value) -> Vec<u8> {
    serde_json::to_vec(&admission_review(uid, "CREATE", ("", "v1", "Pod"), pod)).unwrap()
}

fn response_of(reply: &common::net::Reply) -> Value {
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.content_type, "application/json");
    let review = reply.json();
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    review["response"].clone()
}

fn apply_patch(pod: &Value, response: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD.decode(response["patch"].as_str().unwrap()).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    patched
}

#[tokio::test]
async fn hardens_pods_over_http1_and_http2() {
    let server = start(None).await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut client = server.client(alpn).await;
        assert_eq!(client.is_h2(), alpn == b"h2");
        let uid = format!("uid-{}", String::from_utf8_lossy(alpn));
        let reply = client.send(request("POST", "/mutate", pod_review(&uid, plain_pod()))).await.unwrap();
        let response = response_of(&reply);
        assert_eq!(response["uid"], uid.as_str());
        assert_eq!(response["allowed"], true);
        let patched = apply_patch(&plain_pod(), &response);
        let typed: Pod = serde_json::from_value(patched.clone()).unwrap();
        assert_eq!(common::pss::restricted_violations(&typed), Vec::<String>::new());
        assert_eq!(patched["spec"]["initContainers"][0]["name"], "tollgate-proxy");
        assert_eq!(patched["metadata"]["labels"]["tollgate.dev/injected"], "true");
        let warnings: Vec<&str> = response["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
        assert_eq!(warnings.len(), 20, "capped at the policy's maxWarnings: {warnings:#?}");
        assert!(warnings.iter().all(|w| w.starts_with("tollgate: ")));
        assert!(warnings.contains(&r#"tollgate: container "app": set securityContext.readOnlyRootFilesystem=true"#), "{warnings:#?}");
        assert!(warnings.last().unwrap().contains("more changes"), "{warnings:#?}");

        // Reinvocation: the hardened pod comes back unchanged.
        let reply = client.send(request("POST", "/mutate", pod_review("again", patched))).await.unwrap();
        let response = response_of(&reply);
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none(), "{response}");
        assert!(response.get("warnings").is_none(), "{response}");
    }
    server.stop().await;
}

#[tokio::test]
async fn denies_insecure_pods_with_one_message_and_the_uid() {
    let server = start(None).await;
    let mut client = server.client(b"h2").await;
    let mut pod = plain_pod();
    pod["spec"]["hostPID"] = json!(true);
    pod["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    let response = response_of(&client.send(request("POST", "/mutate", pod_review("deny-me", pod))).await.unwrap());
    assert_eq!(response["uid"], "deny-me");
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 403);
    assert_eq!(response["status"]["reason"], "Forbidden");
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.starts_with("tollgate denied this pod (2 violations): "), "{message}");
    assert!(message.contains("pod: spec.hostPID is true [host-namespaces]"), "{message}");
    assert!(message.contains(r#"container "app": securityContext.privileged is true [privileged]"#), "{message}");
    assert!(response.get("patch").is_none());

    let metrics = String::from_utf8(client.send(request("GET", "/metrics", "")).await.unwrap().body.to_vec()).unwrap();
    assert!(metrics.contains(r#"tollgate_webhook_denials_total{rule="privileged"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"tollgate_webhook_denials_total{rule="host-namespaces"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"tollgate_webhook_reviews_total{outcome="denied"} 1"#), "{metrics}");
    // The serving certificate (rcgen's default validity) expires 4096-01-01T00:00:00Z.
    assert!(metrics.contains("tollgate_webhook_certificate_expiry_seconds 67090118400\n"), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn a_namespace_on_trial_gets_warnings_and_its_pod_as_it_came_and_both_are_counted() {
    let server = start(None).await;
    let mut client = server.client(b"h2").await;
    let mut pod = plain_pod();
    pod["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 0});
    // /mutate/warn: what the MutatingWebhookConfiguration calls for namespaces labeled tollgate.dev/mode=warn.
    let response = response_of(&client.send(request("POST", "/mutate/warn", pod_review("trial", pod.clone()))).await.unwrap());
    assert_eq!(response["allowed"], true, "{response}");
    let warnings: Vec<&str> = response["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert!(warnings[0].starts_with("tollgate: pod not hardened: the namespace only warns (onViolation: warn); in one that enforces, tollgate denied this pod (1 violation): "), "{warnings:#?}");
    assert!(warnings[1].starts_with(r#"tollgate: would deny: container "app": securityContext.runAsUser is 0"#), "{warnings:#?}");
    assert!(warnings[1].ends_with("[run-as-root]") && warnings.len() == 2, "{warnings:#?}");
    // Only the status annotation is added: the pod is otherwise as it came.
    let patched = apply_patch(&pod, &response);
    let mut expected = pod.clone();
    expected["metadata"]["annotations"] = patched["metadata"]["annotations"].clone();
    assert_eq!(patched, expected);
    let status: Value = serde_json::from_str(patched["metadata"]["annotations"]["tollgate.dev/status"].as_str().unwrap()).unwrap();
    assert_eq!(status["skipped"], "warned", "{status}");
    // The same pod at /mutate (the policy's deny) is denied; a privileged one is denied at /mutate/warn too.
    let denied = response_of(&client.send(request("POST", "/mutate", pod_review("enforced", pod))).await.unwrap());
    assert_eq!(denied["allowed"], false);
    let mut privileged = plain_pod();
    privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    let denied = response_of(&client.send(request("POST", "/mutate/warn", pod_review("host", privileged))).await.unwrap());
    assert_eq!(denied["allowed"], false, "{denied}");
    let metrics = String::from_utf8(client.send(request("GET", "/metrics", "")).await.unwrap().body.to_vec()).unwrap();
    assert!(metrics.contains(r#"tollgate_webhook_reviews_total{outcome="warned"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"tollgate_webhook_warned_violations_total{rule="run-as-root"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"tollgate_webhook_denials_total{rule="run-as-root"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"tollgate_webhook_reviews_total{outcome="denied"} 2"#), "{metrics}");
    let wrong = client.send(request("GET", "/mutate/warn", "")).await.unwrap();
    assert_eq!(wrong.status, 405);
    server.stop().await;
}

#[tokio::test]
async fn other_kinds_and_operations_pass_untouched() {
    let server = start(None).await;
    let mut client = server.client(b"http/1.1").await;
    let config_map = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "c"}, "data": {"a": "b"}});
    let cases = [
        admission_review("cm", "CREATE", ("", "v1", "ConfigMap"), config_map),
        {
            // An UPDATE that changes nothing of tollgate's is allowed as it is.
            let mut update = admission_review("update", "UPDATE", ("", "v1", "Pod"), plain_pod());
            update["request"]["oldObject"] = plain_pod();
            update
        },
        admission_review(
            "deploy",
            "CREATE",
            ("apps", "v1", "Deployment"),
            json!({"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "d"}}),
        ),
        admission_review("delete", "DELETE", ("", "v1", "Pod"), Value::Null),
    ];
    for review in cases {
        let uid = review["request"]["uid"].clone();
        let response = response_of(&client.send(request("POST", "/mutate", serde_json::to_vec(&review).unwrap())).await.unwrap());
        assert_eq!(response["uid"], uid);
        assert_eq!(response["allowed"], true, "{response}");
        assert!(response.get("patch").is_none(), "{response}");
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer() {
    let server = start(None).await;
    let mut client = server.client(b"h2").await;

    // Not a decodable Pod: a denial with the decode error and the uid.
    let mut pod = plain_pod();
    pod["spec"]["containers"][0]["ports"] = json!([{"containerPort": "http"}]);
    let response = response_of(&client.send(request("POST", "/mutate", pod_review("broken", pod))).await.unwrap());
    assert_eq!(response["uid"], "broken");
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("object is not a valid Pod: spec.containers[0].ports[0].containerPort: invalid type: string \"http\""),
        "{message}"
    );

    // Not an AdmissionReview: HTTP 400 with a JSON error.
    for (body, expected) in [
        (&b"{not json"[..], "body is not JSON"),
        (b"[]", "body is not an AdmissionReview object"),
        (br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#, "AdmissionReview has no request"),
        (br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{}}"#, "body is not an AdmissionReview"),
        (br#"{"kind":"Pod","apiVersion":"v1"}"#, "expected apiVersion admission.k8s.io/v1, kind AdmissionReview"),
        (b"", "body is not JSON"),
    ] {
        let reply = client.send(request("POST", "/mutate", body.to_vec())).await.unwrap();
        assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(body));
        assert_eq!(reply.content_type, "application/json");
        let error = reply.json();
        assert!(error["error"].as_str().unwrap().contains(expected), "{error} lacks {expected:?}");
    }

    // Too large: declared, and streamed without a length (h2 DATA frames).
    let huge = vec![b' '; 3 * 1024 * 1024 + 1];
    let reply = client.send(request("POST", "/mutate", huge.clone())).await.unwrap();
    assert_eq!(reply.status, 413);
    assert!(reply.json()["error"].as_str().unwrap().contains("larger than 3145728 bytes"));
    let mut h1 = server.client(b"http/1.1").await;
    let reply = h1.send(request("POST", "/mutate", huge)).await.unwrap();
    assert_eq!(reply.status, 413);

    // Exactly at the limit is read (and then judged as JSON).
    let mut at_limit = pod_review("big", plain_pod());
    at_limit.resize(3 * 1024 * 1024, b' ');
    let response = response_of(&client.send(request("POST", "/mutate", at_limit)).await.unwrap());
    assert_eq!(response["uid"], "big");

    // Unknown paths and methods.
    assert_eq!(client.send(request("GET", "/nope", "")).await.unwrap().status, 404);
    assert_eq!(client.send(request("GET", "/mutate", "")).await.unwrap().status, 405);
    assert_eq!(client.send(request("POST", "/healthz", "")).await.unwrap().status, 405);
    server.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = start(None).await;
    let mut client = server.client(b"http/1.1").await;
    assert_eq!(client.send(request("GET", "/healthz", "")).await.unwrap().status, 200);
    assert_eq!(client.send(request("GET", "/readyz", "")).await.unwrap().status, 200);
    client.send(request("POST", "/mutate", pod_review("m1", plain_pod()))).await.unwrap();
    client.send(request("POST", "/mutate", b"nope".to_vec())).await.unwrap();
    let reply = client.send(request("GET", "/metrics", "")).await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.content_type.starts_with("application/openmetrics-text"));
    let metrics = String::from_utf8(reply.body.to_vec()).unwrap();
    for line in [
        r#"tollgate_webhook_reviews_total{outcome="patched"} 1"#,
        r#"tollgate_webhook_reviews_total{outcome="unchanged"} 0"#,
        "tollgate_webhook_review_duration_seconds_count 1",
        r#"tollgate_webhook_bad_requests_total{reason="not-an-admission-review"} 1"#,
        r#"tollgate_webhook_denials_total{rule="sysctls"} 0"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "metrics lack {line:?}:\n{metrics}");
    }
    server.stop().await;
}

/// Write a file the way a careless updater would: in place, not atomically.
fn write_in_place(path: &std::path::Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
}

/// Write a file the way kubelet updates Secret volumes: a new file swapped in by rename.
fn write_atomically(path: &std::path::Path, contents: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, contents).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_continuous_traffic_fails_no_request() {
    let server = Arc::new(start(None).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen_certs = Arc::new(std::sync::Mutex::new(Vec::new()));

    let mut workers = Vec::new();
    // New connections one after another, h1 and h2; a fresh client config each time, so every
    // handshake is a full one (no session resumption) and sees the certificate current at that moment.
    for (i, alpn) in [&b"http/1.1"[..], b"h2"].into_iter().enumerate() {
        let (server, stop, ok, failed, seen_certs) = (server.clone(), stop.clone(), ok.clone(), failed.clone(), seen_certs.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let connector = server.ca.connector(&[alpn]);
                let result = async {
                    let (mut client, cert) = Client::connect(&connector, server.addr).await.map_err(|e| e.to_string())?;
                    let reply = client
                        .send(request("POST", "/mutate", pod_review(&format!("w{i}-{n}"), plain_pod())))
                        .await
                        .map_err(|e| e.to_string())?;
                    (reply.status == 200 && reply.json()["response"]["allowed"] == true)
                        .then_some(cert)
                        .ok_or_else(|| format!("status {}", reply.status))
                }
                .await;
                match result {
                    Ok(cert) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        seen_certs.lock().unwrap().push(cert);
                    }
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    // One long-lived h2 connection throughout (in-flight connections survive the swap).
    {
        let (server, stop, ok, failed) = (server.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut client = server.client(b"h2").await;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                match client.send(request("POST", "/mutate", pod_review(&format!("long-{n}"), plain_pod()))).await {
                    Ok(reply) if reply.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    other => {
                        eprintln!("long-lived request failed: {:?}", other.map(|r| r.status));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }

    let cert_path = server.path("tls.crt");
    let key_path = server.path("tls.key");
    let mut leaves = Vec::new();
    for round in 2..=5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let leaf = server.ca.leaf_until(&format!("serving-{round}"), 2030, round);
        if round % 2 == 0 {
            // Certificate first, key a moment later: for a while the pair does not match.
            write_in_place(&cert_path, &leaf.cert_pem);
            tokio::time::sleep(Duration::from_millis(150)).await;
            write_in_place(&key_path, &leaf.key_pem);
        } else {
            write_atomically(&key_path, &leaf.key_pem);
            write_atomically(&cert_path, &leaf.cert_pem);
        }
        // Wait until new handshakes present the new certificate.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stream = tls_connect(&server.ca.connector(&[b"http/1.1"]), server.addr).await.unwrap();
            if common::net::peer_cert(&stream) == leaf.der {
                break;
            }
            assert!(Instant::now() < deadline, "rotation {round} not picked up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        leaves.push(leaf);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert_eq!(failed, 0, "{failed} requests failed ({ok} succeeded)");
    assert!(ok > 50, "too little traffic to prove anything: {ok}");
    let seen = seen_certs.lock().unwrap().clone();
    for leaf in &leaves {
        assert!(seen.contains(&leaf.der), "traffic never saw one of the rotated certificates");
    }
    let metrics = String::from_utf8(server.client(b"h2").await.send(request("GET", "/metrics", "")).await.unwrap().body.to_vec()).unwrap();
    assert!(metrics.contains(r#"tollgate_webhook_reloads_total{file="tls",result="success"} 4"#), "{metrics}");
    // The last leaf expires 2030-01-05T00:00:00Z, which is 1893801600 seconds after the epoch.
    assert!(metrics.contains("tollgate_webhook_certificate_expiry_seconds 1893801600\n"), "{metrics}");
    assert!(
        metrics.contains(r#"tollgate_webhook_reloads_total{file="tls",result="failure"}"#),
        "the mismatched pair was seen and rejected: {metrics}"
    );
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test]
async fn policy_reload_applies_valid_and_rejects_invalid_changes() {
    let server = start(Some("onViolation: deny\n")).await;
    let mut client = server.client(b"h2").await;
    let mut privileged = plain_pod();
    privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    let verdict = |reply: common::net::Reply| response_of(&reply)["allowed"].as_bool().unwrap();

    assert!(!verdict(client.send(request("POST", "/mutate", pod_review("1", privileged.clone()))).await.unwrap()));

    std::fs::write(server.path("policy.yaml"), "onViolation: override\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !verdict(client.send(request("POST", "/mutate", pod_review("2", privileged.clone()))).await.unwrap()) {
        assert!(Instant::now() < deadline, "valid policy change not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An invalid policy is rejected; the previous one stays in force.
    std::fs::write(server.path("policy.yaml"), "onViolation: overide\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = String::from_utf8(client.send(request("GET", "/metrics", "")).await.unwrap().body.to_vec()).unwrap();
        if metrics.contains(r#"tollgate_webhook_reloads_total{file="policy",result="failure"} 1"#) {
            break;
        }
        assert!(Instant::now() < deadline, "invalid policy not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        verdict(client.send(request("POST", "/mutate", pod_review("3", privileged.clone()))).await.unwrap()),
        "old policy must stay in force"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_then_refuses() {
    let mut server = start(None).await;
    let connector = server.ca.connector(&[b"http/1.1"]);
    // A request whose body is only half sent when shutdown starts.
    let body = pod_review("in-flight", plain_pod());
    let mut stream = tls_connect(&connector, server.addr).await.unwrap();
    let head =
        format!("POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..body.len() / 2]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The listener is gone: new connections are refused.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err(), "still accepting after shutdown");

    stream.write_all(&body[body.len() / 2..]).await.unwrap();
    stream.flush().await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await.expect("answered in time").unwrap_or_default();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains(r#""uid":"in-flight""#), "{response}");
    tokio::time::timeout(Duration::from_secs(5), server.done).await.expect("server finished draining").unwrap();
}

/// The API server keeps an HTTP/2 connection to a webhook pod for as long as the pod keeps it: draining must tell
/// it to go elsewhere (GOAWAY) while still serving, and must not refuse a dial that still lands here while the
/// endpoints catch up — the cause of a pod creation failing with "use of closed network connection" during a
/// rollout of the webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_asks_open_connections_to_end_and_still_serves_late_dials_until_the_delay_is_over() {
    // Long enough that a loaded machine still fits every step inside it; each step is timed against it.
    let delay = Duration::from_secs(6);
    let mut server = start_with(None, |c| c.drain_delay = delay).await;
    let mut old = server.client(b"h2").await;
    assert!(old.is_h2());
    let review = || request("POST", "/mutate", pod_review("r", plain_pod()));
    assert_eq!(old.send(review()).await.unwrap().status, 200);
    let mut idle_h1 = server.client(b"http/1.1").await;
    assert_eq!(idle_h1.send(request("GET", "/healthz", "")).await.unwrap().status, 200);

    server.stop.take().unwrap().send(()).unwrap();
    let started = Instant::now();
    // The connections that have served are asked to end at once: HTTP/2 by GOAWAY, HTTP/1.1 by closing.
    while !(old.is_closed() && idle_h1.is_closed()) {
        assert!(started.elapsed() < delay / 3, "open connections were not asked to end while draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A dial that lands here during the drain is accepted and served (readiness says draining), then asked
    // to end too.
    let mut late = server.client(b"h2").await;
    assert_eq!(late.send(review()).await.unwrap().status, 200);
    while !late.is_closed() {
        assert!(started.elapsed() < delay - Duration::from_secs(1), "a late connection was not asked to end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut readiness = server.client(b"h2").await;
    assert_eq!(readiness.send(request("GET", "/readyz", "")).await.unwrap().status, 503, "draining is not ready");
    let mut during = Vec::new();
    while started.elapsed() < delay - Duration::from_millis(1500) {
        let mut client = server.client(b"h2").await;
        let mut answer = client.send(review()).await.map(|r| r.status).map_err(|e| format!("{e:?}"));
        // A stream the server's GOAWAY says it did not process (RFC 9113 §6.8) is safe to send again, and the
        // API server's HTTP/2 client does so on a new connection: the request is answered, not failed.
        if answer.as_ref().is_err_and(|e| e.contains("GoAway") && e.contains("NO_ERROR")) {
            answer = server.client(b"h2").await.send(review()).await.map(|r| r.status).map_err(|e| format!("{e:?} (sent again)"));
        }
        during.push(answer);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(during.iter().all(|r| r == &Ok(200)), "every request during the drain answered: {during:?}");
    // Once the delay is over the listener is gone.
    tokio::time::timeout(delay + Duration::from_secs(5), server.done).await.expect("server finished draining").unwrap();
    assert!(started.elapsed() >= delay, "the drain ended before its delay: {:?}", started.elapsed());
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err(), "still accepting after the drain");
}

#[tokio::test]
async fn a_huge_pod_is_answered() {
    let server = start(None).await;
    let mut client = server.client(b"h2").await;
    let input = common::yaml(&std::fs::read_to_string(common::fixtures_dir().join("huge-pod/input.yaml")).unwrap());
    let reply = client.send(request("POST", "/mutate", pod_review("huge", input.clone()))).await.unwrap();
    let response = response_of(&reply);
    assert_eq!(response["allowed"], true);
    let patched = apply_patch(&input, &response);
    let expected = common::yaml(&std::fs::read_to_string(common::fixtures_dir().join("huge-pod/expected.yaml")).unwrap());
    // The webhook seals its record with its own key (derived from its TLS key), the fixture with the offline one.
    assert!(common::without_seal(&patched) == common::without_seal(&expected), "patched huge pod differs from the fixture");
    server.stop().await;
}

#[tokio::test]
async fn startup_fails_clearly_on_bad_files() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.leaf("x");
    let other = ca.leaf("y");
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("other.key"), &other.key_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();
    std::fs::write(dir.path().join("bad-policy.yaml"), "proxy: { egressPort: 0 }\n").unwrap();
    let config = |cert: &str, key: &str, policy: Option<&str>| ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        policy: policy.map(|p| dir.path().join(p)),
        ..ServeConfig::new(dir.path().join(cert), dir.path().join(key))
    };
    let error = |result: Result<Server, String>| result.err().expect("must fail");
    assert!(error(Server::bind(config("missing.crt", "tls.key", None)).await).starts_with("--tls-cert "));
    assert!(error(Server::bind(config("tls.crt", "other.key", None)).await).contains("certificate and key"));
    assert!(error(Server::bind(config("tls.key", "tls.key", None)).await).contains("no PEM certificate found"));
    let policy_error = error(Server::bind(config("tls.crt", "tls.key", Some("bad-policy.yaml"))).await);
    assert!(policy_error.contains("proxy.egressPort: must be a port between 1 and 65535"), "{policy_error}");
}

#[tokio::test]
async fn silent_clients_are_dropped_and_connections_are_capped() {
    let server = start_with(None, |config| {
        config.max_connections = 1;
        config.first_request_timeout = Duration::from_millis(300);
    })
    .await;
    for alpn in [&b"h2"[..], b"http/1.1"] {
        // Connects, completes TLS, then says nothing (or only part of the h2 preface).
        let mut silent = tls_connect(&server.ca.connector(&[alpn]), server.addr).await.unwrap();
        if alpn == b"h2" {
            silent.write_all(b"PRI * HTTP/2.0").await.unwrap();
        }
        let started = Instant::now();
        // The only connection slot is taken: a real client waits for it...
        let waiting = {
            let connector = server.ca.connector(&[b"h2"]);
            let addr = server.addr;
            tokio::spawn(async move {
                let (mut client, _) = Client::connect(&connector, addr).await.unwrap();
                client.send(request("GET", "/healthz", "")).await.unwrap().status
            })
        };
        // ...until the silent one is closed by the server (after its h2 SETTINGS, if any).
        let mut sink = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut sink)).await.expect("server closes the silent connection");
        assert!(started.elapsed() >= Duration::from_millis(250), "closed too early: {:?}", started.elapsed());
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("served once the slot is free").unwrap(), 200);
    }
    server.stop().await;
}

/// A review as kube-apiserver sends it for `operation` on `resource/subresource`, by `user`.
fn review_by(uid: &str, operation: &str, kind: (&str, &str), subresource: &str, object: Value, old: Value, user: &str) -> Vec<u8> {
    let mut review = admission_review(uid, operation, (kind.0, "v1", kind.1), object);
    let request = &mut review["request"];
    request["oldObject"] = old;
    request["userInfo"] = json!({"username": user, "groups": ["system:authenticated"]});
    if !subresource.is_empty() {
        request["subResource"] = json!(subresource);
        request["requestSubResource"] = json!(subresource);
    }
    serde_json::to_vec(&review).unwrap()
}

/// A pod as stored after tollgate hardened it.
fn hardened_pod() -> Value {
    let mut pod = plain_pod();
    pod["metadata"]["annotations"] = json!({});
    let outcome = tollgate_webhook::harden::harden(&tollgate_webhook::policy::Policy::default(), &mut pod).unwrap();
    assert!(matches!(outcome, tollgate_webhook::harden::Outcome::Hardened(_)));
    pod
}

#[tokio::test]
async fn updates_subresources_exec_and_workloads_are_guarded_over_the_wire() {
    let server = start(None).await;
    let mut client = server.client(b"h2").await;
    let old = hardened_pod();
    let mut send = async |body: Vec<u8>| response_of(&client.send(request("POST", "/mutate", body)).await.unwrap());

    // The proxy's image replaced with `kubectl set image`: denied, the field named.
    let mut new = old.clone();
    new["spec"]["initContainers"][0]["image"] = json!("attacker/proxy:1");
    let response = send(review_by("image", "UPDATE", ("", "Pod"), "", new, old.clone(), "mallory")).await;
    assert_eq!(response["allowed"], false, "{response}");
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.starts_with("tollgate denied this update (1 violation): "), "{message}");
    assert!(
        message.contains(r#"init container "tollgate-proxy": image is tollgate's and cannot be changed after admission [tollgate-owned]"#),
        "{message}"
    );

    // A new app image is the user's business.
    let mut new = old.clone();
    new["spec"]["containers"][0]["image"] = json!("python:3.13-slim");
    let response = send(review_by("app-image", "UPDATE", ("", "Pod"), "", new, old.clone(), "mallory")).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert!(response.get("patch").is_none());

    // kubectl debug: a plain ephemeral container is hardened by a patch; a privileged one is denied.
    let mut new = old.clone();
    new["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox:1.36", "targetContainerName": "app"}]);
    let response = send(review_by("debug", "UPDATE", ("", "Pod"), "ephemeralcontainers", new.clone(), old.clone(), "mallory")).await;
    assert_eq!(response["allowed"], true, "{response}");
    let patched = apply_patch(&new, &response);
    let sc = &patched["spec"]["ephemeralContainers"][0]["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    new["spec"]["ephemeralContainers"][0]["securityContext"] = json!({"privileged": true});
    new["spec"]["ephemeralContainers"][0]["targetContainerName"] = json!("tollgate-proxy");
    let response = send(review_by("sysadmin", "UPDATE", ("", "Pod"), "ephemeralcontainers", new, old.clone(), "mallory")).await;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains(r#"ephemeral container "debugger": securityContext.privileged is true [privileged]"#), "{message}");
    assert!(message.contains(r#"ephemeral container "debugger": targetContainerName is "tollgate-proxy""#), "{message}");

    // A resize above the maximum.
    let mut new = old.clone();
    new["spec"]["containers"][0]["resources"]["limits"]["cpu"] = json!("100");
    let response = send(review_by("resize", "UPDATE", ("", "Pod"), "resize", new, old.clone(), "mallory")).await;
    assert_eq!(response["allowed"], false);
    assert!(
        response["status"]["message"].as_str().unwrap().contains(r#"container "app": resources.limits.cpu 100 is above the maximum 8"#)
    );

    // kubectl exec into the proxy: refused; into the app: not tollgate's business.
    for (container, allowed) in [("tollgate-proxy", false), ("app", true)] {
        let options = json!({"kind": "PodExecOptions", "apiVersion": "v1", "container": container, "command": ["cat", "/var/run/secrets/tollgate/client-secret"], "stdout": true});
        let response = send(review_by("exec", "CONNECT", ("", "PodExecOptions"), "exec", options, Value::Null, "mallory")).await;
        assert_eq!(response["allowed"], allowed, "{container}: {response}");
    }

    // A port-forward is refused whatever ports it names (the kubelet forwards what each stream asks for), to
    // everyone the policy does not trust; a trusted user may forward.
    for ports in [json!([15001]), json!([8080, 15001]), Value::Null, json!([]), json!([8080])] {
        let options = json!({"kind": "PodPortForwardOptions", "apiVersion": "v1", "ports": ports});
        let response =
            send(review_by("pf", "CONNECT", ("", "PodPortForwardOptions"), "portforward", options.clone(), Value::Null, "mallory")).await;
        assert_eq!(response["allowed"], false, "{ports}: {response}");
        assert!(
            response["status"]["message"].as_str().unwrap().contains("pod: pods/portforward is refused in analysis namespaces"),
            "{response}"
        );
        let mut trusted: Value = serde_json::from_slice(&review_by(
            "pf",
            "CONNECT",
            ("", "PodPortForwardOptions"),
            "portforward",
            options,
            Value::Null,
            "admin",
        ))
        .unwrap();
        trusted["request"]["userInfo"]["groups"] = json!(["system:masters", "system:authenticated"]);
        let response = send(serde_json::to_vec(&trusted).unwrap()).await;
        assert_eq!(response["allowed"], true, "{ports}, trusted: {response}");
    }

    // A Job claiming an analysis: denied for an untrusted user (saying who may), allowed for a trusted one.
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": {
        "metadata": {"annotations": {"tollgate.dev/analysis-id": "someone-elses"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "x:1"}]}}}});
    let response = send(review_by("job", "CREATE", ("batch", "Job"), "", job.clone(), Value::Null, "mallory")).await;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("template: spec.template.metadata.annotations[tollgate.dev/analysis-id] may only be set by trusted users (none) or members of trusted groups (system:masters)"),
        "{message}"
    );
    let mut trusted =
        serde_json::from_slice::<Value>(&review_by("job2", "CREATE", ("batch", "Job"), "", job, Value::Null, "admin")).unwrap();
    trusted["request"]["userInfo"]["groups"] = json!(["system:masters"]);
    let response = send(serde_json::to_vec(&trusted).unwrap()).await;
    assert_eq!(response["allowed"], true, "{response}");
    server.stop().await;
}

/// The largest review kube-apiserver sends, built to make every per-container and per-volume check
/// work hard, within the policy's bounds (and once far beyond them).
fn slow_review(beyond_bounds: bool) -> Vec<u8> {
    let (volumes, containers, mounts) = if beyond_bounds { (20_000, 1, 20_000) } else { (256, 63, 256) };
    let mut pod = plain_pod();
    pod["spec"]["volumes"] = Value::Array(
        (0..volumes)
            .map(|i| json!({"name": format!("kube-api-access-{i:05}"), "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}))
            .collect(),
    );
    let mount_list: Vec<Value> =
        (0..mounts).map(|i| json!({"name": format!("kube-api-access-{i:05}"), "mountPath": format!("/m/{i}")})).collect();
    let container = json!({"name": "app", "image": "x:1", "volumeMounts": mount_list});
    pod["spec"]["containers"] = Value::Array(
        (0..containers)
            .map(|i| {
                let mut c = container.clone();
                c["name"] = json!(format!("app{i}"));
                c
            })
            .collect(),
    );
    let mut body = pod_review("slow", pod);
    // Fill up to kube-apiserver's limit with env vars of the first container.
    let filler = body.len();
    let mut review: Value = serde_json::from_slice(&body).unwrap();
    let room = (3 * 1024 * 1024usize).saturating_sub(filler + 1024);
    let per_var = 48;
    let count = room / per_var;
    // Within the bounds, spread over the containers (at most 4,000 each); beyond them, all in one.
    let per_container = if beyond_bounds { count } else { 4000 };
    for (index, chunk) in (0..count).collect::<Vec<_>>().chunks(per_container).enumerate() {
        let env = chunk.iter().map(|i| json!({"name": format!("V{i:07}"), "value": format!("{i:014}")})).collect();
        review["request"]["object"]["spec"]["containers"][index]["env"] = Value::Array(env);
    }
    body = serde_json::to_vec(&review).unwrap();
    assert!(body.len() <= 3 * 1024 * 1024, "{}", body.len());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_built_to_be_slow_is_answered_quickly_and_never_stalls_readyz() {
    let server = Arc::new(start(None).await);
    let bodies = Arc::new([slow_review(false), slow_review(true)]);
    // /readyz keeps being asked, from a runtime of its own (so the test's own work cannot delay it),
    // while the big reviews are worked on.
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (stop, addr, connector) = (stop.clone(), server.addr, server.ca.connector(&[b"http/1.1"]));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let mut client = Client::connect(&connector, addr).await.expect("connects").0;
                let mut slowest = Duration::ZERO;
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    assert_eq!(client.send(request("GET", "/readyz", "")).await.unwrap().status, 200);
                    slowest = slowest.max(started.elapsed());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                slowest
            })
        })
    };
    // Two at once, as many as the machine has cores: were reviews run on the async workers, both would
    // be busy and /readyz would wait for a review to finish.
    let mut reviewers = Vec::new();
    let fastest = Arc::new(std::sync::Mutex::new(Duration::MAX));
    for reviewer in 0..2 {
        let (server, bodies, fastest) = (server.clone(), bodies.clone(), fastest.clone());
        reviewers.push(tokio::spawn(async move {
            let mut client = server.client(b"h2").await;
            for (index, beyond_bounds, expect_allowed) in [(0, false, true), (1, true, false)] {
                let body = &bodies[index];
                let size = body.len();
                for round in 0..2 {
                    let started = Instant::now();
                    let response = response_of(&client.send(request("POST", "/mutate", body.clone())).await.unwrap());
                    let elapsed = started.elapsed();
                    assert_eq!(response["allowed"], expect_allowed, "{}", response["status"]);
                    if !expect_allowed {
                        assert!(response["status"]["message"].as_str().unwrap().contains("[too-large]"), "{}", response["status"]);
                    }
                    println!("reviewer {reviewer}: {size} byte review (beyond bounds: {beyond_bounds}), round {round}: {elapsed:?}");
                    // How fast is bench/'s question (bench/webhook.sh); here only how /readyz fares beside it.
                    let mut fastest = fastest.lock().unwrap();
                    *fastest = (*fastest).min(elapsed);
                }
            }
        }));
    }
    for reviewer in reviewers {
        reviewer.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let slowest = probe.join().unwrap();
    let fastest = *fastest.lock().unwrap();
    println!("slowest /readyz while reviewing: {slowest:?}; fastest review: {fastest:?}");
    // Run on the async workers, a review would hold /readyz for as long as it takes: the probe's slowest
    // answer would be about a whole review. Off them, it is a fraction of the fastest one, however loaded the
    // machine (both slow down alike).
    assert!(slowest < fastest / 2, "/readyz waited {slowest:?} behind a review (the fastest took {fastest:?})");
    Arc::try_unwrap(server).ok().expect("no other owner").stop().await;
}

#[tokio::test]
async fn an_opted_out_pod_is_recorded_as_seen_and_left_alone() {
    let server = start(Some("allowOptOut: true\n")).await;
    let mut client = server.client(b"h2").await;
    let mut pod = plain_pod();
    pod["metadata"]["annotations"] = json!({"tollgate.dev/inject": "false"});
    let response = response_of(&client.send(request("POST", "/mutate", pod_review("opt-out", pod.clone()))).await.unwrap());
    assert_eq!(response["allowed"], true);
    assert_eq!(response["warnings"][0], "tollgate: pod not hardened (opted-out)");
    let patched = apply_patch(&pod, &response);
    let status: Value = serde_json::from_str(patched["metadata"]["annotations"]["tollgate.dev/status"].as_str().unwrap()).unwrap();
    assert_eq!(status["skipped"], "opted-out");
    // Nothing else changed: the only difference is the annotation.
    let mut without = patched.clone();
    without["metadata"]["annotations"].as_object_mut().unwrap().remove("tollgate.dev/status");
    assert_eq!(without, pod);
    server.stop().await;
}
