//! The local demo: a real control plane (etcd + kube-apiserver), tollgate-webhook registered with it, a
//! plain `kubectl run` pod shown hardened, and tollgate-proxy taking a request to a stand-in hub with the
//! token added. Run by scripts/demo.sh; everything it starts stops when it ends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_e2e::{ControlPlane, Process, Webhook, namespace, workspace_bin};
use tollgate_testkit::free_port;

fn step(text: &str) {
    println!("\n== {text}");
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}

fn http_get(port: u16, path: &str, headers: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{headers}connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or(response)
}

fn wait_for(port: u16, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() || !http_get(port, path, "").contains("ok") {
        assert!(Instant::now() < deadline, "nothing answered on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    step("1. a Kubernetes control plane on 127.0.0.1 (etcd + kube-apiserver, PodSecurity admission on; no nodes)");
    let plane = ControlPlane::start();
    println!("   API server {}  (kubeconfig {})", plane.server, plane.kubeconfig.display());

    step("2. tollgate-webhook, with certificates from tollgate-certs, registered as a mutating webhook");
    let webhook = Webhook::start(&plane);
    println!("   serving on https://127.0.0.1:{}/mutate", webhook.port);
    namespace(&plane, "flame-analyses", true);
    println!("   namespace flame-analyses: tollgate.dev/inject=enabled, pod-security.kubernetes.io/enforce=restricted");

    step("3. kubectl run analysis --image=python:3.12-slim --restart=Never  (no securityContext at all)");
    let out = plane.kubectl(&[
        "run",
        "analysis",
        "-n",
        "flame-analyses",
        "--image=python:3.12-slim",
        "--restart=Never",
        "--annotations=tollgate.dev/analysis-id=3f2c1b9e",
        "--annotations=tollgate.dev/project-id=7d1e4a2c",
    ]);
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
    let warnings = String::from_utf8_lossy(&out.stderr);
    print!("{}", indent(&warnings.lines().take(6).collect::<Vec<_>>().join("\n")));
    println!("   ... ({} warnings in all)", warnings.lines().count());
    assert!(out.status.success(), "kubectl run failed");

    step("4. kubectl get pod analysis -o yaml  (excerpt: what the API server stored, and judged restricted)");
    let out = plane.kubectl(&["get", "pod", "analysis", "-n", "flame-analyses", "-o", "json"]);
    let pod: Value = serde_json::from_slice(&out.stdout).expect("pod JSON");
    let proxy = &pod["spec"]["initContainers"][0];
    let app = &pod["spec"]["containers"][0];
    let excerpt = serde_json::json!({
        "metadata": {"labels": pod["metadata"]["labels"], "annotations": {"tollgate.dev/status": pod["metadata"]["annotations"]["tollgate.dev/status"]}},
        "spec": {
            "activeDeadlineSeconds": pod["spec"]["activeDeadlineSeconds"],
            "automountServiceAccountToken": pod["spec"]["automountServiceAccountToken"],
            "securityContext": pod["spec"]["securityContext"],
            "initContainers": [{"name": proxy["name"], "image": proxy["image"], "restartPolicy": proxy["restartPolicy"], "lifecycle": proxy["lifecycle"], "volumeMounts": proxy["volumeMounts"]}],
            "containers": [{"name": app["name"], "env": app["env"], "resources": app["resources"], "securityContext": app["securityContext"], "volumeMounts": app["volumeMounts"]}],
        }
    });
    print!("{}", indent(&serde_yaml_ng::to_string(&excerpt).unwrap()));

    step("5. tollgate-proxy, configured as the sidecar would be, in front of stand-ins for the hub and Keycloak");
    let (hub_port, idp_port) = (free_port(), free_port());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo-upstreams.py");
    let _upstreams = Process::start(
        "stand-ins",
        Command::new("python3").arg(&script).arg(hub_port.to_string()).arg(idp_port.to_string()),
        plane.dir.path().join("upstreams.log"),
    );
    for port in [hub_port, idp_port] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the stand-ins did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let dir = plane.dir.path();
    std::fs::write(dir.join("client-id"), "analysis-3f2c1b9e\n").unwrap();
    std::fs::write(dir.join("client-secret"), "demo-secret\n").unwrap();
    let (egress, admin) = (free_port(), free_port());
    let config = format!(
        "identity:\n  tokenUrl: http://127.0.0.1:{idp_port}/realms/flame/protocol/openid-connect/token\n  clientIdFile: {0}/client-id\n  clientSecretFile: {0}/client-secret\nroutes:\n  - name: hub-datastore\n    prefix: /hub-adapter/kong/datastore/{{project_id}}\n    upstream: http://127.0.0.1:{hub_port}/kong/datastore/{{project_id}}\n    auth: token\nshutdown: {{ grace: 1s }}\n",
        dir.display()
    );
    std::fs::write(dir.join("proxy.yaml"), config).unwrap();
    // The project id reaches the proxy exactly as the webhook wrote it into the sidecar's env.
    let project =
        proxy["env"].as_array().unwrap().iter().find(|e| e["name"] == "TOLLGATE_PROJECT_ID").unwrap()["value"].as_str().unwrap().to_owned();
    let _proxy = Process::start(
        "tollgate-proxy",
        Command::new(workspace_bin("tollgate-proxy"))
            .arg("--config")
            .arg(dir.join("proxy.yaml"))
            .env("TOLLGATE_PROJECT_ID", &project)
            .env("TOLLGATE_EGRESS_LISTEN", format!("127.0.0.1:{egress}"))
            .env("TOLLGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("TOLLGATE_INGRESS_LISTEN", format!("127.0.0.1:{}", free_port())),
        dir.join("proxy.log"),
    );
    wait_for(admin, "/readyz");
    let path = format!("/hub-adapter/kong/datastore/{project}/fhir/Patient");
    println!("   the app: GET $TOLLGATE_EGRESS_URL{path}  (with its own Authorization and a cookie)");
    println!("   -> {}", http_get(egress, &path, "authorization: Bearer the-apps-own\r\ncookie: s=1\r\n"));
    println!("   the app: GET $TOLLGATE_EGRESS_URL/hub-adapter/kong/datastore/another-project/fhir/Patient");
    println!("   -> {}", http_get(egress, "/hub-adapter/kong/datastore/another-project/fhir/Patient", ""));

    step("done: stopping the proxy, the webhook, kube-apiserver and etcd");
    drop(webhook);
}
