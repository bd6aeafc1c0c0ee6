//! tollgate on a real kube-apiserver: the webhook runs as a local process registered by URL, and the API
//! server's own PodSecurity admission judges whether what tollgate stores is "restricted".

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::sync::Mutex;
use tollgate_e2e::{ControlPlane, Webhook, namespace, settled, workspace_bin};

/// One control plane at a time: each is a few hundred MB and two busy processes on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Create with kubectl, retrying briefly: the first creates may race the webhook's registration.
fn create(plane: &ControlPlane, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    settled(|| match stdin {
        Some(input) => plane.kubectl_stdin(args, input),
        None => plane.kubectl(args),
    })
}

async fn stored(plane: &ControlPlane, namespace: &str, name: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(plane.client().await, namespace);
    pods.get(name).await.unwrap_or_else(|e| panic!("pod {namespace}/{name}: {e}"))
}

fn assert_hardened(pod: &Pod) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.as_ref().unwrap();
    let proxy = &spec.init_containers.as_ref().expect("an init container")[0];
    assert_eq!(proxy.name, "tollgate-proxy", "{name}");
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"), "{name}: a native sidecar");
    // The app starts once the proxy is ready: its postStart hook waits for /readyz.
    let hook = proxy.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()).and_then(|h| h.exec.as_ref());
    let command = hook.and_then(|e| e.command.as_deref()).unwrap_or_default();
    assert_eq!(command.get(..2), Some(&["/usr/local/bin/tollgate-proxy".to_owned(), "wait-ready".to_owned()][..]), "{name}");
    let psc = spec.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true), "{name}");
    assert_eq!(psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()), Some("RuntimeDefault"), "{name}");
    assert_eq!(spec.automount_service_account_token, Some(false), "{name}");
    for container in &spec.containers {
        let sc = container.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}/{}", container.name);
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}/{}", container.name);
        let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref()).expect("limits");
        assert!(limits.contains_key("cpu") && limits.contains_key("memory"), "{name}/{}", container.name);
        let env = container.env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "TOLLGATE_EGRESS_URL"), "{name}/{}", container.name);
        let mounts = container.volume_mounts.clone().unwrap_or_default();
        assert!(
            mounts.iter().all(|m| !m.mount_path.starts_with("/var/run/secrets/kubernetes.io")),
            "{name}/{}: a service account token is mounted",
            container.name
        );
    }
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels.get("tollgate.dev/injected").map(String::as_str), Some("true"), "{name}");
    assert!(pod.metadata.annotations.as_ref().unwrap().contains_key("tollgate.dev/status"), "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_pods_are_hardened_and_pass_the_api_servers_own_restricted_check() {
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::start();
    let _webhook = Webhook::start(&plane);
    namespace(&plane, "analyses", true);

    // kubectl run: no securityContext at all; the API server enforces "restricted" on what tollgate made.
    let out = create(
        &plane,
        &[
            "run",
            "analysis",
            "-n",
            "analyses",
            "--image=python:3.12-slim",
            "--restart=Never",
            "--annotations=tollgate.dev/analysis-id=urn:osa:localhost:dep:abc123",
        ],
        None,
    );
    assert!(out.status.success(), "kubectl run: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Warning: tollgate: "), "kubectl shows tollgate's changes: {stderr}");
    let pod = stored(&plane, "analyses", "analysis").await;
    assert_hardened(&pod);
    assert_eq!(pod.spec.as_ref().unwrap().active_deadline_seconds, Some(86400));
    let label = pod.metadata.labels.as_ref().unwrap().get("tollgate.dev/analysis-id").cloned().unwrap();
    assert!(label.starts_with("urn-osa-localhost-dep-abc123-"), "{label}");

    // kubectl apply -f with a plain manifest.
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata: { name: applied, namespace: analyses }\nspec:\n  containers: [{ name: app, image: 'registry.example.org/app:1.0' }]\n";
    let out = create(&plane, &["apply", "-f", "-"], Some(manifest));
    assert!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    assert_hardened(&stored(&plane, "analyses", "applied").await);

    // The pod templates of a Job, a Deployment and a CronJob, created as their controllers would.
    let template = |name: &str, restart: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: analyses, labels: {{ app: {name} }} }}\nspec:\n  restartPolicy: {restart}\n  containers: [{{ name: main, image: 'registry.example.org/worker:2.0', args: [run] }}]\n"
        )
    };
    for (name, restart) in [("job-pod", "Never"), ("deployment-pod", "Always"), ("cronjob-pod", "OnFailure")] {
        let out = create(&plane, &["create", "-f", "-"], Some(&template(name, restart)));
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert_hardened(&stored(&plane, "analyses", name).await);
    }

    // A pod with 1,500 env vars.
    let env: Vec<String> = (0..1500).map(|i| format!("{{\"name\":\"VAR_{i}\",\"value\":\"{i}\"}}")).collect();
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"big","namespace":"analyses"}},"spec":{{"restartPolicy":"Never","containers":[{{"name":"app","image":"registry.example.org/app:1.0","env":[{}]}}]}}}}"#,
        env.join(",")
    );
    let out = create(&plane, &["create", "-f", "-"], Some(&big));
    assert!(out.status.success(), "big pod: {}", String::from_utf8_lossy(&out.stderr));
    let pod = stored(&plane, "analyses", "big").await;
    assert_hardened(&pod);
    assert_eq!(pod.spec.unwrap().containers[0].env.as_ref().unwrap().len(), 1501);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_pods_are_denied_with_tollgates_message_and_other_namespaces_are_untouched() {
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::start();
    let _webhook = Webhook::start(&plane);
    namespace(&plane, "analyses", true);
    namespace(&plane, "elsewhere", false);

    let privileged = "apiVersion: v1\nkind: Pod\nmetadata: { name: root, namespace: analyses }\nspec:\n  hostNetwork: true\n  containers: [{ name: app, image: 'registry.example.org/app:1.0', securityContext: { privileged: true } }]\n";
    let out = create(&plane, &["create", "-f", "-"], Some(privileged));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tollgate denied this pod (2 violations)"), "{stderr}");
    assert!(stderr.contains(r#"container "app": securityContext.privileged is true [privileged]"#), "{stderr}");
    assert!(!plane.kubectl(&["get", "pod", "root", "-n", "analyses"]).status.success(), "nothing stored");

    let plain = "apiVersion: v1\nkind: Pod\nmetadata: { name: plain, namespace: elsewhere }\nspec:\n  containers: [{ name: app, image: 'registry.example.org/app:1.0' }]\n";
    let out = create(&plane, &["create", "-f", "-"], Some(plain));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pod = stored(&plane, "elsewhere", "plain").await;
    assert!(pod.spec.as_ref().unwrap().init_containers.is_none(), "untouched outside analysis namespaces");
    assert!(pod.metadata.labels.as_ref().is_none_or(|l| !l.contains_key("tollgate.dev/injected")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_webhook_down_nothing_is_stored_unhardened() {
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::start();
    let mut webhook = Webhook::start(&plane);
    namespace(&plane, "analyses", true);
    webhook.process.stop();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: { name: orphan, namespace: analyses }\nspec:\n  containers: [{ name: app, image: 'registry.example.org/app:1.0' }]\n";
    let out = plane.kubectl_stdin(&["create", "-f", "-"], pod);
    assert!(!out.status.success(), "failurePolicy Fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed calling webhook"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!plane.kubectl(&["get", "pod", "orphan", "-n", "analyses"]).status.success(), "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_serving_certificate_during_pod_creation_fails_nothing() {
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::start();
    let webhook = Webhook::start(&plane);
    namespace(&plane, "analyses", true);
    let rotate = {
        let certs = webhook.certs.clone();
        std::thread::spawn(move || {
            for round in 0..3 {
                std::thread::sleep(Duration::from_millis(700));
                // New serving certificates from the same CA (the caBundle stays valid): a renewal.
                let out = Command::new(workspace_bin("tollgate-certs"))
                    .args(["files", "--ip", "127.0.0.1", "--dns", &format!("rotation-{round}.local"), "--dir"])
                    .arg(&certs)
                    .output()
                    .unwrap();
                assert!(
                    String::from_utf8_lossy(&out.stdout).contains("renewed the serving certificate"),
                    "{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        })
    };
    let started = Instant::now();
    let mut created = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: p{created}, namespace: analyses }}\nspec:\n  containers: [{{ name: app, image: 'registry.example.org/app:1.0' }}]\n"
        );
        let out = plane.kubectl_stdin(&["create", "-f", "-"], &pod);
        assert!(out.status.success(), "creation {created} failed during rotation: {}", String::from_utf8_lossy(&out.stderr));
        created += 1;
    }
    rotate.join().unwrap();
    assert!(created >= 5, "{created}");
    assert!(
        webhook.process.logs().matches("\"watcher\":\"tls\"").count() >= 1,
        "the webhook reloaded its certificate:\n{}",
        webhook.process.logs()
    );
}

#[test]
fn every_plain_manifest_is_accepted_by_the_api_server() {
    let _serial = SERIAL.blocking_lock();
    let plane = ControlPlane::start();
    let manifests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    // A server-side dry run cannot create the namespaces the other objects live in: create those first.
    for ns in ["00-namespace.yaml", "examples/analysis-namespace.yaml"] {
        let out = plane.kubectl(&["apply", "-f", manifests.join(ns).to_str().unwrap()]);
        assert!(out.status.success(), "{ns}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = plane.kubectl(&["apply", "--dry-run=server", "-f", manifests.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("analyses"), "the example namespace is not part of an install");
    let example = plane.kubectl(&["apply", "--dry-run=server", "-f", manifests.join("examples").to_str().unwrap()]);
    assert!(example.status.success(), "{}", String::from_utf8_lossy(&example.stderr));
    let applied = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&example.stdout));
    for object in [
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/tollgate",
        "deployment.apps/tollgate-webhook",
        "poddisruptionbudget.policy/tollgate-webhook",
        "networkpolicy.networking.k8s.io/tollgate-analysis",
        "job.batch/tollgate-certs",
        "cronjob.batch/tollgate-certs-renew",
    ] {
        assert!(applied.contains(object), "{object} missing from:\n{applied}");
    }
}

fn helm(plane: &ControlPlane, args: &[&str]) -> std::process::Output {
    let home = plane.dir.path().join("helm");
    Command::new(plane.bin.join("helm"))
        .args(args)
        .arg(format!("--kubeconfig={}", plane.kubeconfig.display()))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap()
}

/// The spec (or webhooks, without their clientConfig) of the one object `kind`/`name` in a YAML stream.
fn admission_object(stream: &str, kind: &str, name: &str) -> serde_json::Value {
    let mut object = object_in(stream, kind, name);
    if let Some(webhooks) = object["webhooks"].as_array_mut() {
        for webhook in webhooks.iter_mut() {
            webhook.as_object_mut().unwrap().remove("clientConfig");
        }
        return object["webhooks"].clone();
    }
    object["spec"].clone()
}

/// The one object of `kind` named `name` in a YAML stream, whole.
fn object_in(stream: &str, kind: &str, name: &str) -> serde_json::Value {
    use serde::Deserialize;
    let mut found = None;
    for document in serde_yaml_ng::Deserializer::from_str(stream) {
        let value = serde_json::Value::deserialize(document).unwrap();
        if value["kind"] == kind && value["metadata"]["name"] == name {
            assert!(found.is_none(), "two objects {kind} {name}");
            found = Some(value);
        }
    }
    found.unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn chart() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/tollgate").display().to_string()
}

/// A disruption budget that keeps every webhook replica up would block every node drain: the chart refuses it.
#[test]
fn a_disruption_budget_that_would_block_node_drains_is_refused_by_the_chart() {
    let helm = tollgate_e2e::bin_dir().join("helm");
    let render = |sets: &[&str]| {
        let mut command = Command::new(&helm);
        command.args(["template", "t", &chart(), "-n", "tollgate"]);
        for set in sets {
            command.args(["--set", set]);
        }
        command.output().unwrap()
    };
    for blocking in [
        &["replicaCount=1"][..],
        &["replicaCount=2", "podDisruptionBudget.minAvailable=2"],
        &["replicaCount=3", "podDisruptionBudget.minAvailable=5"],
    ] {
        let out = render(blocking);
        assert!(!out.status.success(), "{blocking:?} rendered");
        assert!(String::from_utf8_lossy(&out.stderr).contains("must be below replicaCount"), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for fine in [
        &[][..],
        &["replicaCount=1", "podDisruptionBudget.minAvailable=0"],
        &["replicaCount=3", "podDisruptionBudget.minAvailable=2"],
        &["podDisruptionBudget.minAvailable=50%"],
    ] {
        let out = render(fine);
        assert!(out.status.success(), "{fine:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn the_helm_chart_lints_clean_and_renders_every_certificate_mode() {
    let helm = tollgate_e2e::bin_dir().join("helm");
    let out = Command::new(&helm).args(["lint", "--strict", &chart()]).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for (mode, extra, expect) in [
        ("selfSigned", vec![], "kind: Job"),
        ("certManager", vec![], "kind: Certificate"),
        ("existingSecret", vec!["--set", "certificates.existingSecret=mine", "--set", "webhook.caBundle=pem"], "secretName: mine"),
    ] {
        let out = Command::new(&helm)
            .args(["template", "t", &chart(), "-n", "tollgate", "--set", &format!("certificates.mode={mode}")])
            .args(&extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains(expect), "{mode} lacks {expect}");
    }
    // Every object of manifests/ against the chart's rendering: tests/tests/manifests.rs.
    let out = Command::new(&helm).args(["template", "tollgate", &chart(), "-n", "tollgate"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
    let manifests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    // The egress lock: off by default; on, a DaemonSet with no token on the given node directories, and the
    // policy requires the lock unless it says otherwise. The DaemonSet is the one manifests/optional ships.
    assert!(!rendered.contains("tollgate-cni") && !rendered.contains("egressLock"), "the egress lock is off by default");
    let render = |sets: &[&str]| {
        let mut args = vec!["template", "tollgate", &chart(), "-n", "tollgate"].into_iter().map(String::from).collect::<Vec<_>>();
        for set in sets {
            args.extend(["--set".into(), set.to_string()]);
        }
        let out = Command::new(&helm).args(&args).output().unwrap();
        assert!(out.status.success(), "{sets:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let locked = render(&["egressLock.enabled=true", "egressLock.binDir=/var/lib/cni/bin"]);
    assert!(locked.contains("egressLock: required"), "{locked}");
    let daemonset = admission_object(&locked, "DaemonSet", "tollgate-cni");
    let pod = &daemonset["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false, "the installer needs no API access");
    assert_eq!(pod["containers"][0]["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(pod["volumes"][0]["hostPath"]["path"], "/var/lib/cni/bin");
    let optional = std::fs::read_to_string(manifests.join("optional/cni.yaml")).unwrap();
    let shipped_pod = admission_object(&optional, "DaemonSet", "tollgate-cni")["template"]["spec"].clone();
    assert_eq!(shipped_pod, admission_object(&render(&["egressLock.enabled=true"]), "DaemonSet", "tollgate-cni")["template"]["spec"]);
    let off = render(&["egressLock.enabled=true", "policy.proxy.egressLock=off"]);
    assert!(off.contains("egressLock: \"off\"") && off.contains("kind: DaemonSet"), "{off}");
    // Renewal: a daily CronJob running what the hooks run; certManager signs from a CA of the release's own.
    let renew = admission_object(&rendered, "CronJob", "tollgate-certs-renew");
    let hook = admission_object(&rendered, "Job", "tollgate-certs");
    assert_eq!(renew["jobTemplate"]["spec"]["template"], hook["template"], "the CronJob runs what the post-install hook runs");
    assert_eq!(renew["schedule"], "17 3 * * *");
    let cert_manager = render(&["certificates.mode=certManager"]);
    assert_eq!(admission_object(&cert_manager, "Certificate", "tollgate-webhook")["issuerRef"]["name"], "tollgate-ca");
    assert_eq!(admission_object(&cert_manager, "Certificate", "tollgate-webhook-ca")["isCA"], true);
    // Monitoring, each part behind its value: the webhook scraped over HTTPS verified with the release's CA,
    // the proxies on their admin port in the analysis namespaces, the dashboard valid JSON.
    assert!(!rendered.contains("monitoring.coreos.com"), "no monitoring CRDs are needed by default");
    let monitored = render(&[
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.podMonitor.enabled=true",
        "monitoring.dashboard.enabled=true",
        "analysisNamespaces[0].name=a1",
        "monitoring.namespaces[0]=monitoring",
    ]);
    let endpoint = &admission_object(&monitored, "ServiceMonitor", "tollgate-webhook")["endpoints"][0];
    assert_eq!(endpoint["tlsConfig"]["ca"]["secret"], serde_json::json!({"name": "tollgate-webhook-tls", "key": "ca.crt"}));
    assert_eq!(endpoint["tlsConfig"]["serverName"], "tollgate-webhook.tollgate.svc");
    let pods = admission_object(&monitored, "PodMonitor", "tollgate-proxy");
    assert_eq!(pods["podMetricsEndpoints"][0]["port"], "tg-admin");
    assert_eq!(pods["namespaceSelector"]["matchNames"], serde_json::json!(["a1"]));
    let admin = &admission_object(&monitored, "NetworkPolicy", "tollgate-analysis")["ingress"][1];
    assert_eq!(admin["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "monitoring");
    let dashboard = object_in(&monitored, "ConfigMap", "tollgate-dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(dashboard["data"]["tollgate.json"].as_str().unwrap()).unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 8, "{dashboard}");
    // The usual knobs reach every pod of tollgate's own, and a mirror replaces every image's registry, the
    // injected proxy's included.
    let knobs = render(&[
        "image.registry=mirror.example.org/tg",
        "imagePullSecrets[0].name=pull",
        "nodeSelector.disk=ssd",
        "tolerations[0].operator=Exists",
        "priorityClassName=tollgate-high",
        "podAnnotations.team=platform",
        "topologySpreadConstraints[0].maxSkew=1",
        "topologySpreadConstraints[0].topologyKey=zone",
        "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
        "egressLock.enabled=true",
    ]);
    let webhook = object_in(&knobs, "Deployment", "tollgate-webhook");
    let certs = object_in(&knobs, "CronJob", "tollgate-certs-renew");
    for (what, template) in [("webhook", &webhook["spec"]["template"]), ("certs", &certs["spec"]["jobTemplate"]["spec"]["template"])] {
        let spec = &template["spec"];
        assert_eq!(spec["imagePullSecrets"], serde_json::json!([{"name": "pull"}]), "{what}");
        assert_eq!(spec["nodeSelector"], serde_json::json!({"disk": "ssd"}), "{what}");
        assert_eq!(spec["tolerations"], serde_json::json!([{"operator": "Exists"}]), "{what}");
        assert_eq!(spec["priorityClassName"], "tollgate-high", "{what}");
        assert_eq!(template["metadata"]["annotations"]["team"], "platform", "{what}");
        assert!(spec["containers"][0]["image"].as_str().unwrap().starts_with("mirror.example.org/tg/privateaim/tollgate-"), "{what}");
        assert_eq!(template["metadata"]["labels"]["app.kubernetes.io/version"], "0.1.0", "{what}");
    }
    assert_eq!(webhook["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["topologyKey"], "zone");
    let cni = object_in(&knobs, "DaemonSet", "tollgate-cni");
    assert_eq!(cni["spec"]["template"]["spec"]["containers"][0]["image"], "mirror.example.org/tg/privateaim/tollgate-cni:0.1.0");
    assert_eq!(cni["spec"]["template"]["spec"]["imagePullSecrets"], serde_json::json!([{"name": "pull"}]));
    let policy = object_in(&knobs, "ConfigMap", "tollgate-policy");
    assert!(
        policy["data"]["policy.yaml"].as_str().unwrap().contains("image: mirror.example.org/tg/privateaim/tollgate-proxy:0.1.0"),
        "{policy}"
    );
    // Every object carries the recommended labels.
    for document in serde_yaml_ng::Deserializer::from_str(&knobs) {
        use serde::Deserialize;
        let object = serde_json::Value::deserialize(document).unwrap();
        if object.is_null() {
            continue;
        }
        let labels = &object["metadata"]["labels"];
        for key in ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/part-of"] {
            assert!(labels[key].is_string(), "{} {} lacks {key}", object["kind"], object["metadata"]["name"]);
        }
    }
    // The schema refuses what would break at install time.
    for bad in [
        ["--set", "image.webhook=tollgate-webhook:latest"],
        ["--set", "certificates.mode=manual"],
        ["--set", "webhook.timeoutSeconds=60"],
        ["--set", "egressLock.binDir=opt/cni/bin"],
        ["--set", "certificates.selfSigned.renewBeforeDays=400"],
        ["--set", "certificates.selfSigned.renewSchedule=daily"],
        ["--set", "monitoring.prometheusRule.proxyErrorRatio=2"],
    ] {
        let out = Command::new(&helm).args(["template", "t", &chart()]).args(bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?} was accepted");
    }
}

/// A namespace on trial (tollgate.dev/mode=warn): the API server sends its pods to /mutate/warn; a pod whose
/// violations concern it alone is created as it came, with warnings, and the require-hardening policy accepts
/// it; a plain pod is hardened; a privileged pod is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_on_trial_lets_through_what_concerns_the_pod_alone_with_warnings() {
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::start();
    let _webhook = Webhook::start(&plane);
    // No controller-manager here makes the default ServiceAccount: created with the namespace.
    let trial = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"trial","labels":{"tollgate.dev/inject":"enabled","tollgate.dev/mode":"warn"}}},
{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default","namespace":"trial"}}]}"#;
    assert!(plane.kubectl_stdin(&["create", "-f", "-"], trial).status.success());
    let root = "apiVersion: v1\nkind: Pod\nmetadata: { name: as-root, namespace: trial }\nspec:\n  automountServiceAccountToken: false\n  containers: [{ name: app, image: 'registry.example.org/app:1.0', securityContext: { runAsUser: 0 } }]\n";
    let out = create(&plane, &["create", "-f", "-"], Some(root));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("tollgate: pod not hardened: the namespace only warns"), "{stderr}");
    assert!(stderr.contains("tollgate: would deny: container \"app\": securityContext.runAsUser is 0"), "{stderr}");
    let stored_pod = stored(&plane, "trial", "as-root").await;
    assert!(stored_pod.spec.as_ref().unwrap().init_containers.is_none(), "not hardened: no proxy");
    let status = stored_pod.metadata.annotations.as_ref().and_then(|a| a.get("tollgate.dev/status")).expect("seen by tollgate");
    assert!(status.contains(r#""skipped":"warned""#), "{status}");
    let plain = "apiVersion: v1\nkind: Pod\nmetadata: { name: plain, namespace: trial }\nspec:\n  containers: [{ name: app, image: 'registry.example.org/app:1.0' }]\n";
    assert!(create(&plane, &["create", "-f", "-"], Some(plain)).status.success());
    let hardened = stored(&plane, "trial", "plain").await;
    assert_hardened(&hardened);
    // What was changed stays with the pod, for whoever reads it later.
    let changes = hardened.metadata.annotations.as_ref().and_then(|a| a.get("tollgate.dev/changes")).expect("the changes annotation");
    assert!(changes.lines().any(|l| l.starts_with("pod: injected tollgate-proxy")), "{changes}");
    assert!(changes.lines().any(|l| l == "container \"app\": set securityContext.readOnlyRootFilesystem=true"), "{changes}");
    let privileged = "apiVersion: v1\nkind: Pod\nmetadata: { name: privileged, namespace: trial }\nspec:\n  containers: [{ name: app, image: 'registry.example.org/app:1.0', securityContext: { privileged: true } }]\n";
    let out = plane.kubectl_stdin(&["create", "-f", "-"], privileged);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tollgate denied this pod"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `serve --events`: a pod denied at creation leaves an Event on its controller (a Job here, as the Job
/// controller would create the pod), once however often the controller retries; a pod let through in warn
/// mode leaves one on itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_and_warned_pods_leave_events_on_their_controller_once() {
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::start();
    let webhook = Webhook::start_with_events(&plane);
    namespace(&plane, "analyses", true);
    let job = r#"{"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"analysis","namespace":"analyses"},"spec":{"template":{"spec":{"restartPolicy":"Never","containers":[{"name":"app","image":"registry.example.org/app:1.0"}]}}}}"#;
    let out = plane.kubectl_stdin(&["create", "-o", "jsonpath={.metadata.uid}", "-f", "-"], job);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let uid = String::from_utf8_lossy(&out.stdout).into_owned();
    for attempt in 0..3 {
        let pod = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"analysis-{attempt}","namespace":"analyses","ownerReferences":[{{"apiVersion":"batch/v1","kind":"Job","name":"analysis","uid":"{uid}","controller":true}}]}},"spec":{{"restartPolicy":"Never","hostNetwork":true,"containers":[{{"name":"app","image":"registry.example.org/app:1.0"}}]}}}}"#
        );
        let out = plane.kubectl_stdin(&["create", "-f", "-"], &pod);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("tollgate denied this pod"));
    }
    let trial = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"trial","labels":{"tollgate.dev/inject":"enabled","tollgate.dev/mode":"warn"}}},
{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default","namespace":"trial"}}]}"#;
    assert!(plane.kubectl_stdin(&["create", "-f", "-"], trial).status.success());
    let root = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"as-root","namespace":"trial"},"spec":{"containers":[{"name":"app","image":"registry.example.org/app:1.0","securityContext":{"runAsUser":0}}]}}"#;
    assert!(plane.kubectl_stdin(&["create", "-f", "-"], root).status.success());
    let events = |namespace: &str| -> Vec<serde_json::Value> {
        let out = plane.kubectl(&["get", "events.events.k8s.io", "-n", namespace, "-o", "json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list["items"].as_array().unwrap().iter().filter(|e| e["reportingController"] == "tollgate.dev/webhook").cloned().collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while events("analyses").is_empty() || events("trial").is_empty() {
        assert!(Instant::now() < deadline, "no Events from tollgate:\n{}", webhook.process.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Written off the admission path: give a second write (which must not come) the time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let denied = events("analyses");
    assert_eq!(denied.len(), 1, "one Event for three retries: {denied:#?}");
    let event = &denied[0];
    assert_eq!(event["reason"], "Denied");
    assert_eq!(event["type"], "Warning");
    assert_eq!((event["regarding"]["kind"].as_str(), event["regarding"]["name"].as_str()), (Some("Job"), Some("analysis")));
    assert_eq!(event["regarding"]["uid"], uid.as_str());
    let note = event["note"].as_str().unwrap();
    assert!(note.starts_with("tollgate denied this pod (1 violation): pod: spec.hostNetwork is true [host-namespaces]"), "{note}");
    // kubectl describe job shows it.
    let described = plane.kubectl(&["describe", "job", "analysis", "-n", "analyses"]);
    assert!(
        String::from_utf8_lossy(&described.stdout).contains("tollgate denied this pod"),
        "{}",
        String::from_utf8_lossy(&described.stdout)
    );
    let warned = events("trial");
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert_eq!(warned[0]["reason"], "Warned");
    assert_eq!((warned[0]["regarding"]["kind"].as_str(), warned[0]["regarding"]["name"].as_str()), (Some("Pod"), Some("as-root")));
}

/// `tollgate check` on a real API server with tollgate's webhook registered: a healthy setup is healthy, and
/// each broken piece is found, named, with a hint, and fails the exit code where it breaks pod creation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgate_check_reports_a_healthy_setup_as_healthy_and_each_broken_piece() {
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::start();
    let webhook = Webhook::start(&plane);
    namespace(&plane, "tollgate", false);
    namespace(&plane, "analyses", true);
    let routes = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proxy/examples/flame.yaml")).unwrap();
    let serving_secret = |dir: &std::path::Path| plane.create_serving_secret(dir);
    serving_secret(&webhook.certs);
    let routes = format!("--from-literal=config.yaml={routes}");
    let setup = [
        vec!["create", "configmap", "tollgate-proxy-routes", "-n", "analyses", &routes],
        vec![
            "create",
            "secret",
            "generic",
            "tollgate-proxy-credentials",
            "-n",
            "analyses",
            "--from-literal=client-id=a",
            "--from-literal=client-secret=b",
        ],
    ];
    for args in &setup {
        let out = plane.kubectl(args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let closed = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"tollgate-analysis","namespace":"analyses"},"spec":{"podSelector":{},"policyTypes":["Ingress","Egress"]}}"#;
    assert!(plane.kubectl_stdin(&["create", "-f", "-"], closed).status.success());
    let check = || {
        let out =
            Command::new(workspace_bin("tollgate")).args(["check", "-o", "json"]).env("KUBECONFIG", &plane.kubeconfig).output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        let problems: Vec<(String, String, String)> = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["severity"] != "ok")
            .map(|f| {
                (
                    f["check"].as_str().unwrap().to_owned(),
                    f["severity"].as_str().unwrap().to_owned(),
                    f["message"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        (out.status.code(), problems, report)
    };
    let (code, problems, report) = check();
    assert_eq!((code, problems.as_slice()), (Some(0), &[][..]), "{report:#}");
    let checks: Vec<&str> = report["findings"].as_array().unwrap().iter().map(|f| f["check"].as_str().unwrap()).collect();
    assert!(checks.contains(&"admission") && checks.contains(&"ca-bundle") && checks.contains(&"routes"), "{checks:?}");

    // A serving certificate about to expire (from the same CA): a warning, and pods are still created.
    let soon = plane.dir.path().join("soon");
    std::fs::create_dir_all(&soon).unwrap();
    for file in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
        std::fs::copy(webhook.certs.join(file), soon.join(file)).unwrap();
    }
    let out = Command::new(workspace_bin("tollgate-certs"))
        .args(["files", "--ip", "127.0.0.1", "--leaf-days", "5", "--renew-days", "400", "--dir"])
        .arg(&soon)
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("renewed the serving certificate"));
    assert!(plane.kubectl(&["delete", "secret", "tollgate-webhook-tls", "-n", "tollgate"]).status.success());
    serving_secret(&soon);
    let (code, problems, _) = check();
    assert_eq!(code, Some(0), "{problems:?}");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!((problems[0].0.as_str(), problems[0].1.as_str()), ("serving-certificate", "warning"));
    assert!(problems[0].2.ends_with("expires in 5 days"), "{problems:?}");

    // The serving Secret gone: an error.
    assert!(plane.kubectl(&["delete", "secret", "tollgate-webhook-tls", "-n", "tollgate"]).status.success());
    let (code, problems, _) = check();
    assert_eq!((code, problems.len()), (Some(1), 1), "{problems:?}");
    assert_eq!(problems[0], ("serving-certificate".into(), "error".into(), "does not exist: the webhook's pods cannot start".into()));
    serving_secret(&webhook.certs);

    // The route ConfigMap gone: an error naming it.
    assert!(plane.kubectl(&["delete", "configmap", "tollgate-proxy-routes", "-n", "analyses"]).status.success());
    let (code, problems, _) = check();
    assert_eq!(code, Some(1));
    assert_eq!(
        problems,
        [("routes".into(), "error".into(), "no ConfigMap tollgate-proxy-routes: hardened pods cannot start their proxy".into())]
    );
    assert!(plane.kubectl(&setup[0]).status.success());

    // A caBundle from another CA: the configuration does not trust the webhook, and pod creation fails.
    let other = plane.dir.path().join("other");
    let out = Command::new(workspace_bin("tollgate-certs")).args(["files", "--ip", "127.0.0.1", "--dir"]).arg(&other).output().unwrap();
    assert!(out.status.success());
    let out = Command::new(workspace_bin("tollgate-certs"))
        .args(["patch-ca-bundle", "--webhook-config=tollgate", "--ca-file"])
        .arg(other.join("ca.crt"))
        .env("KUBECONFIG", &plane.kubeconfig)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, problems, _) = check();
    assert_eq!(code, Some(1));
    let found: Vec<(&str, &str)> = problems.iter().map(|(c, s, _)| (c.as_str(), s.as_str())).collect();
    assert_eq!(found, [("ca-bundle", "error"), ("admission", "error")], "{problems:?}");
    assert!(problems[0].2.starts_with("does not trust the serving certificate"), "{problems:?}");
    assert!(problems[1].2.starts_with("a plain pod is refused: "), "{problems:?}");
    drop(webhook);
}

/// The chart's schema takes the policy and the proxy config from their Rust types, so the chart refuses at
/// install what the webhook or the proxy would refuse at start, naming the field; its README documents every
/// value from values.yaml.
#[test]
fn the_chart_schema_and_readme_are_generated_and_the_schema_names_the_bad_field() {
    for file in tollgate_e2e::chart_files::files() {
        let current = std::fs::read_to_string(&file.path).unwrap_or_default();
        assert!(
            (file.generate)(&current).unwrap() == current,
            "{} is out of date: run `cargo run -p tollgate-e2e --bin tollgate-chart-files -- --write`",
            file.path.display()
        );
    }
    // Every value has a description (helm-docs leaves the column empty for a value without a `# --` comment).
    let readme = std::fs::read_to_string(tollgate_e2e::chart_files::chart_dir().join("README.md")).unwrap();
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| Key ")).collect();
    assert!(rows.len() > 50, "{rows:?}");
    for row in rows {
        let description = row.trim_end_matches('|').rsplit(" | ").next().unwrap().trim();
        assert!(!description.is_empty(), "undocumented: {row}");
    }
    let helm = tollgate_e2e::bin_dir().join("helm");
    for (set, said) in [
        ("policy.onViolation=maybe", "at '/policy/onViolation': value must be 'warn'"),
        ("policy.proxy.egressPort=70000", "at '/policy/proxy/egressPort': maximum"),
        ("policy.security.runAsUsr=1000", "at '/policy/security': additional properties 'runAsUsr' not allowed"),
        ("policy.resources.maximum.memory=lots", "at '/policy/resources/maximum/memory': 'lots' does not match pattern"),
        ("proxyConfig.routes[0].name=hub", "at '/proxyConfig/routes/0': missing property 'prefix'"),
        ("proxyConfig.routes[0].auth=basic", "at '/proxyConfig/routes/0/auth'"),
    ] {
        let out = Command::new(&helm).args(["template", "t", &chart(), "--set", set]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(said), "--set {set}: {stderr}");
    }
    // What the webhook and the proxy accept, the chart accepts: the shipped example configuration and a policy
    // with every section.
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proxy/examples/flame.yaml");
    let values = format!(
        "proxyConfig:\n{}\npolicy:\n  onViolation: override\n  resources: {{ maximum: {{ cpu: '4', memory: 8Gi }} }}\n  proxy: {{ egressLock: required }}\n",
        std::fs::read_to_string(example).unwrap().lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("values.yaml"), values).unwrap();
    let out = Command::new(&helm).args(["template", "t", &chart(), "-f"]).arg(dir.path().join("values.yaml")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The chart's alerts, run by Prometheus' own rule engine (promtool) over made-up series: each fires when it
/// should, with the labels and texts an admin sees, and not before.
#[test]
fn the_charts_alerts_fire_when_they_should_and_not_before() {
    let helm = tollgate_e2e::bin_dir().join("helm");
    let out = Command::new(&helm)
        .args(["template", "tollgate", &chart(), "-n", "tollgate", "--set", "monitoring.prometheusRule.enabled=true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rules = admission_object(&String::from_utf8_lossy(&out.stdout), "PrometheusRule", "tollgate");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.json"), rules.to_string()).unwrap();
    std::fs::write(dir.path().join("tests.yaml"), ALERT_TESTS).unwrap();
    let promtool = tollgate_e2e::bin_dir().join("promtool");
    let check = Command::new(&promtool).args(["check", "rules", "rules.json"]).current_dir(dir.path()).output().unwrap();
    assert!(check.status.success(), "{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    let test = Command::new(&promtool).args(["test", "rules", "tests.yaml"]).current_dir(dir.path()).output().unwrap();
    assert!(test.status.success(), "{}{}", String::from_utf8_lossy(&test.stdout), String::from_utf8_lossy(&test.stderr));
}

/// promtool's time starts at the Unix epoch: a certificate "expiring at 864000" has ten days left at 0.
const ALERT_TESTS: &str = r#"
rule_files: [rules.json]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'tollgate_webhook_certificate_expiry_seconds{namespace="tollgate",pod="soon"}'
        values: '864000x200'
      - series: 'tollgate_webhook_certificate_expiry_seconds{namespace="tollgate",pod="fine"}'
        values: '8640000x200'
      - series: 'up{job="tollgate-webhook",namespace="tollgate"}'
        values: '1x30 0x30'
      - series: 'tollgate_webhook_reviews_total{namespace="tollgate",outcome="denied"}'
        values: '0x20 0+5x40'
      - series: 'tollgate_proxy_token_fetches_total{namespace="a1",pod="p1",result="failure"}'
        values: '0x10 0+1x60'
      - series: 'tollgate_proxy_token_fetches_total{namespace="a1",pod="p2",result="success"}'
        values: '0+1x60'
      - series: 'tollgate_proxy_requests_total{namespace="a1",listener="egress",route="hub",status="502",decision="upstream-error"}'
        values: '0x10 0+60x60'
      - series: 'tollgate_proxy_requests_total{namespace="a1",listener="egress",route="hub",status="200",decision="allowed"}'
        values: '0+60x70'
      - series: 'tollgate_webhook_policy_info{namespace="tollgate",pod="w1",version="0.2.0",policy="sha256:aaaa"}'
        values: '1x130'
      - series: 'tollgate_proxy_info{namespace="a1",pod="fresh",version="0.2.0",policy="sha256:aaaa"}'
        values: '1x130'
      - series: 'tollgate_proxy_info{namespace="a1",pod="old-policy",version="0.2.0",policy="sha256:bbbb"}'
        values: '1x130'
      - series: 'tollgate_proxy_info{namespace="a1",pod="old-release",version="0.1.0",policy="sha256:aaaa"}'
        values: '1x130'
      - series: 'tollgate_proxy_info{namespace="a2",pod="fresh",version="0.2.0",policy="sha256:aaaa"}'
        values: '1x130'
      - series: 'tollgate_proxy_info{namespace="a3",pod="restarted-in-time",version="0.1.0",policy="sha256:bbbb"}'
        values: '1x30 _x100'
    alert_rule_test:
      - { eval_time: 50m, alertname: TollgateWebhookCertificateExpiring, exp_alerts: [] }
      - eval_time: 70m
        alertname: TollgateWebhookCertificateExpiring
        exp_alerts:
          - exp_labels: { severity: warning, namespace: tollgate, pod: soon }
            exp_annotations:
              summary: tollgate-webhook soon serves a certificate that expires in 9d 22h 50m 0s
              description: The CronJob tollgate-certs-renew (selfSigned) or cert-manager (certManager) should have renewed it; see their logs. An expired certificate blocks every pod creation in analysis namespaces.
      - { eval_time: 34m, alertname: TollgateWebhookDown, exp_alerts: [] }
      - eval_time: 37m
        alertname: TollgateWebhookDown
        exp_alerts:
          - exp_labels: { severity: critical }
            exp_annotations:
              summary: No tollgate-webhook instance is up in tollgate
              description: Pods in analysis namespaces cannot be created while the webhook is down (failurePolicy Fail).
      - { eval_time: 22m, alertname: TollgateDenialsSpiking, exp_alerts: [] }
      - eval_time: 40m
        alertname: TollgateDenialsSpiking
        exp_alerts:
          - exp_labels: { severity: warning, namespace: tollgate }
            exp_annotations:
              summary: tollgate denied 75 pods in 15 minutes
              description: tollgate_webhook_denials_total says which rules; the webhook's log names each pod and field. A controller retrying a denied pod, or an attack, looks like this.
      - { eval_time: 20m, alertname: TollgateProxyTokenFailures, exp_alerts: [] }
      - eval_time: 40m
        alertname: TollgateProxyTokenFailures
        exp_alerts:
          - exp_labels: { severity: warning, namespace: a1, pod: p1 }
            exp_annotations:
              summary: The proxy of a1/p1 keeps failing to get a token
              description: Its requests to token routes fail with 503 until a token is obtained; check the credentials Secret and the token endpoint (the proxy's log names the cause).
      - { eval_time: 15m, alertname: TollgateProxyErrors, exp_alerts: [] }
      - eval_time: 40m
        alertname: TollgateProxyErrors
        exp_alerts:
          - exp_labels: { severity: warning, namespace: a1 }
            exp_annotations:
              summary: 50% of the proxies' requests in a1 end in 5xx
              description: Upstreams unreachable or failing, or token failures; tollgate_proxy_requests_total by route and decision says which.
      - { eval_time: 50m, alertname: TollgateStaleProxies, exp_alerts: [] }
      - eval_time: 70m
        alertname: TollgateStaleProxies
        exp_alerts:
          - exp_labels: { severity: warning, namespace: a1 }
            exp_annotations:
              summary: 2 proxies in a1 are not what tollgate injects today
              description: Their pods were admitted under another tollgate release or policy than the webhook's in tollgate and keep that proxy until they are recreated. `tollgate check --proxy` lists each pod, why, and the command that recreates it (kubectl rollout restart for a Deployment).
  # No webhook scraped: the proxies cannot be judged (TollgateWebhookDown says why).
  - interval: 1m
    input_series:
      - series: 'tollgate_proxy_info{namespace="a1",pod="old-policy",version="0.2.0",policy="sha256:bbbb"}'
        values: '1x130'
    alert_rule_test:
      - { eval_time: 70m, alertname: TollgateStaleProxies, exp_alerts: [] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_creates_every_object_and_its_webhook_hardens_pods() {
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::start();
    let webhook = Webhook::start_unregistered(&plane);
    namespace(&plane, "analyses", true);
    let out = plane.kubectl(&["create", "namespace", "tollgate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let local = webhook.chart_values(&plane);
    let chart = chart();
    let mut install = vec!["install", "tollgate", chart.as_str(), "-n", "tollgate"];
    install.extend(local.iter().map(String::as_str));
    install.extend([
        "--set",
        "analysisNamespaces[0].name=analyses",
        "--set",
        "analysisNamespaces[0].egressNamespaces[0]=flame",
        // No node here runs the validation hook's Job (the node suite does).
        "--set",
        "validation.enabled=false",
    ]);
    let out = helm(&plane, &install);
    assert!(out.status.success(), "helm install: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("kubectl label namespace"), "NOTES tell the admin how to enable a namespace");
    for (kind, namespace, name) in [
        ("deployment", "tollgate", "tollgate-webhook"),
        ("service", "tollgate", "tollgate-webhook"),
        ("poddisruptionbudget", "tollgate", "tollgate-webhook"),
        ("serviceaccount", "tollgate", "tollgate-webhook"),
        ("configmap", "tollgate", "tollgate-policy"),
        ("configmap", "analyses", "tollgate-proxy-routes"),
        ("networkpolicy", "analyses", "tollgate-analysis"),
        ("mutatingwebhookconfiguration", "", "tollgate"),
    ] {
        let mut args = vec!["get", kind, name];
        if !namespace.is_empty() {
            args.extend(["-n", namespace]);
        }
        assert!(plane.kubectl(&args).status.success(), "{kind} {namespace}/{name} missing");
    }
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: { name: via-chart, namespace: analyses }\nspec:\n  containers: [{ name: app, image: 'registry.example.org/app:1.0' }]\n";
    let out = create(&plane, &["create", "-f", "-"], Some(pod));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_hardened(&stored(&plane, "analyses", "via-chart").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgate_certs_keeps_secrets_and_the_ca_bundle_in_step_and_is_idempotent() {
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::start();
    let webhook = Webhook::start(&plane);
    assert!(plane.kubectl(&["create", "namespace", "tollgate"]).status.success());
    let certs = |extra: &[&str]| {
        let out = Command::new(workspace_bin("tollgate-certs"))
            .args(["secret", "--service=tollgate-webhook", "--namespace=tollgate", "--webhook-config=tollgate"])
            .args(extra)
            .env("KUBECONFIG", &plane.kubeconfig)
            .output()
            .unwrap();
        assert!(out.status.success(), "tollgate-certs: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let bundle = || {
        let out =
            plane.kubectl(&["get", "mutatingwebhookconfiguration", "tollgate", "-o", "jsonpath={.webhooks[*].clientConfig.caBundle}"]);
        let bundles: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
        assert_eq!(bundles.len(), 6, "{bundles:?}");
        assert!(bundles.iter().all(|b| *b == bundles[0]), "every webhook has the same caBundle: {bundles:?}");
        bundles[0].clone()
    };
    let secret = |name: &str, key: &str| {
        let out =
            plane.kubectl(&["get", "secret", name, "-n", "tollgate", "-o", &format!("jsonpath={{.data.{}}}", key.replace('.', "\\."))]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = bundle();

    let first = certs(&[]);
    assert!(
        // Every webhook of the shipped configuration (pods, pods on trial, connect, workloads) gets the bundle.
        first.starts_with("created a new CA and serving certificate") && first.contains("caBundle of tollgate: set on 6 webhook(s)"),
        "{first}"
    );
    let ca = secret("tollgate-webhook-tls", "ca.crt");
    assert!(!ca.is_empty() && !secret("tollgate-webhook-tls", "tls.key").is_empty());
    assert_eq!(bundle(), ca, "the caBundle is the CA in the serving Secret");
    assert_ne!(bundle(), before);
    assert_eq!(secret("tollgate-webhook-ca", "tls.crt"), ca, "the CA (and its key) live in their own Secret");

    let serving = secret("tollgate-webhook-tls", "tls.crt");
    let second = certs(&[]);
    assert_eq!(second, "certificates are valid; kept; caBundle of tollgate: already current\n");
    assert_eq!(secret("tollgate-webhook-tls", "tls.crt"), serving, "idempotent");

    // A new name renews the serving certificate from the same CA: the caBundle stays.
    let third = certs(&["--dns=webhook.example.org"]);
    assert!(third.starts_with("renewed the serving certificate"), "{third}");
    assert_ne!(secret("tollgate-webhook-tls", "tls.crt"), serving);
    assert_eq!(bundle(), ca);

    // A forced new CA: the caBundle trusts the new CA and, for the hand-over, the old one.
    let fourth = certs(&["--renew=ca"]);
    assert!(
        fourth.starts_with(
            "created a new CA and serving certificate (renewal forced (--renew=ca)); caBundle of tollgate: set on 6 webhook(s)"
        ),
        "{fourth}"
    );
    let pem = |b64: &str| String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
    let new_ca = pem(&secret("tollgate-webhook-ca", "tls.crt"));
    assert_ne!(new_ca, pem(&ca));
    let trusted = pem(&bundle());
    assert_eq!(trusted, format!("{new_ca}{}", pem(&ca)), "the new CA, then the old one");
    assert_eq!(secret("tollgate-webhook-tls", "ca.crt"), bundle(), "the serving Secret's ca.crt is the bundle");
    let fifth = certs(&[]);
    assert_eq!(fifth, "certificates are valid; kept; caBundle of tollgate: already current\n", "within the hand-over nothing changes");

    // A pre-install hook runs before the configuration exists: allowed to find none, and only then.
    let run = |extra: &[&str]| {
        Command::new(workspace_bin("tollgate-certs"))
            .args(["secret", "--service=tollgate-webhook", "--namespace=tollgate", "--webhook-config=not-yet"])
            .args(extra)
            .env("KUBECONFIG", &plane.kubeconfig)
            .output()
            .unwrap()
    };
    let out = run(&["--allow-missing-webhook-config"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "certificates are valid; kept; caBundle of not-yet: not there yet\n");
    let out = run(&[]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "error: MutatingWebhookConfiguration not-yet does not exist\n");

    // Before an uninstall removes the webhook, its configuration goes, so no API request waits on it.
    let unregister = || {
        let out = Command::new(workspace_bin("tollgate-certs"))
            .args(["unregister", "--webhook-config=tollgate"])
            .env("KUBECONFIG", &plane.kubeconfig)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(unregister(), "MutatingWebhookConfiguration tollgate: deleted\n");
    assert!(!plane.kubectl(&["get", "mutatingwebhookconfiguration", "tollgate"]).status.success());
    assert_eq!(unregister(), "MutatingWebhookConfiguration tollgate: already gone\n");
    drop(webhook);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labeled_namespace_takes_only_pods_tollgate_has_seen_even_with_the_webhook_unregistered() {
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::start();
    let webhook = Webhook::start(&plane);
    // Labeled for tollgate only (Pod Security would refuse a plain pod on its own and hide the guard).
    let manifest = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"analyses","labels":{"tollgate.dev/inject":"enabled"}}},
{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default","namespace":"analyses"}}]}"#;
    assert!(plane.kubectl_stdin(&["apply", "-f", "-"], manifest).status.success());
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: analyses }}\nspec:\n  containers: [{{ name: app, image: 'registry.example.org/app:1.0' }}]\n"
        )
    };
    let out = create(&plane, &["create", "-f", "-"], Some(&pod("before")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The webhook configuration is gone (an uninstall that forgot the namespace label): no plain pod gets in.
    let out = plane.kubectl(&["delete", "mutatingwebhookconfiguration", "tollgate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(webhook);
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        // The API server drops a deleted webhook configuration within moments; until then the dead webhook refuses.
        let out = plane.kubectl_stdin(&["create", "-f", "-"], &pod("plain"));
        if String::from_utf8_lossy(&out.stderr).contains("tollgate's webhook did not see it") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!out.status.success(), "a plain pod was stored in a labeled namespace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("its namespace is labeled tollgate.dev/inject=enabled, but tollgate's webhook did not see it"), "{stderr}");
    assert!(!plane.kubectl(&["get", "pod", "plain", "-n", "analyses"]).status.success());

    // Without the label the namespace is an ordinary one again.
    let out = plane.kubectl(&["label", "namespace", "analyses", "tollgate.dev/inject-"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // (Admission sees namespace labels through an informer: allow it a moment.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = plane.kubectl_stdin(&["create", "-f", "-"], &pod("plain"));
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plain = stored(&plane, "analyses", "plain").await;
    assert!(plain.spec.unwrap().init_containers.is_none(), "an ordinary namespace again: the pod is not hardened");
}
