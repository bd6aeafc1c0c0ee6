//! The egress lock's platform presets (`egressLock.platform`), as `helm template` renders them: each points the
//! tollgate-cni DaemonSet at the directories that platform's container runtime really uses (microk8s's
//! containerd-template.toml, k3s's agent configuration and data directory, containerd's defaults under
//! kubeadm and rke2, GKE's /home/kubernetes/bin), mounts exactly those, and the installer, run with the
//! rendered environment on a copy of that platform's file layout, chains the plugin there. GKE gets the
//! ResourceQuota it needs before it admits system-node-critical pods outside kube-system; a custom platform
//! needs both directories; a node of another platform is refused by the installer with what it did not find.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_e2e::chart_files;
use tollgate_e2e::node::NodeCluster;
use tollgate_testkit::text;

fn helm_template(sets: &[&str]) -> Result<String, String> {
    let helm = tollgate_e2e::bin_dir().join("helm");
    let mut command = Command::new(&helm);
    command.args(["template", "tollgate"]).arg(chart_files::chart_dir()).args(["-n", "tollgate", "--set", "egressLock.enabled=true"]);
    for set in sets {
        command.args(["--set", set]);
    }
    let out = command.output().unwrap();
    if out.status.success() { Ok(String::from_utf8(out.stdout).unwrap()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

fn objects(stream: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(stream).map(|d| Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect()
}

fn object<'a>(all: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    all.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// The DaemonSet's installer settings: its environment, and what each volume mounts where.
struct Rendered {
    env: BTreeMap<String, String>,
    /// (hostPath, its type, mountPath)
    mounts: Vec<(String, String, String)>,
    quota: Option<Value>,
    pod: Value,
}

fn render(sets: &[&str]) -> Rendered {
    let stream = helm_template(sets).unwrap_or_else(|e| panic!("helm template {sets:?}: {e}"));
    let all = objects(&stream);
    let daemonset = object(&all, "DaemonSet", "tollgate-cni").expect("the DaemonSet");
    let pod = daemonset["spec"]["template"]["spec"].clone();
    let container = &pod["containers"][0];
    let env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
        .collect();
    let mounts = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == m["name"]).expect("a mount's volume");
            let host = &volume["hostPath"];
            (
                host["path"].as_str().unwrap().to_owned(),
                host["type"].as_str().unwrap().to_owned(),
                m["mountPath"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    Rendered { env, mounts, quota: object(&all, "ResourceQuota", "tollgate-cni-critical-pods").cloned(), pod }
}

impl Rendered {
    /// The node directories the installer reads (its environment, without the /host prefix).
    fn node_dirs(&self) -> BTreeMap<&str, &str> {
        self.env
            .iter()
            .filter(|(k, _)| k.ends_with("_DIR") && *k != "TOLLGATE_CNI_VERIFY_BIN_DIR")
            .map(|(k, v)| (k.as_str(), v.strip_prefix("/host").unwrap_or_else(|| panic!("{k}={v} is not under /host"))))
            .collect()
    }

    /// Every directory the installer reads is inside a mount of that same node path, and every mount is a
    /// node path at /host<path> that must exist on the node.
    fn mounts_are_consistent(&self) {
        assert_eq!(self.env["TOLLGATE_CNI_HOST_ROOT"], "/host");
        for (host, kind, mount) in &self.mounts {
            assert_eq!(mount, &format!("/host{host}"), "each node path is mounted at /host<path>");
            assert_eq!(kind, "Directory", "{host}: a node without it does not start the pod (its events name the path)");
        }
        for (var, dir) in self.node_dirs() {
            assert!(
                self.mounts.iter().any(|(host, _, _)| Path::new(dir).starts_with(host)),
                "{var}={dir} is in no mount: {:?}",
                self.mounts
            );
        }
    }
}

/// A preset and what it renders: the variables naming directories, the node paths mounted, a quota or not.
type Case = (&'static str, &'static [(&'static str, &'static str)], &'static [&'static str], bool);

#[test]
fn each_platform_renders_its_runtimes_directories() {
    let cases: [Case; 6] = [
        (
            "kubeadm",
            &[("TOLLGATE_CNI_BIN_DIR", "/opt/cni/bin"), ("TOLLGATE_CNI_CONF_DIR", "/etc/cni/net.d")],
            &["/opt/cni/bin", "/etc/cni/net.d"],
            false,
        ),
        (
            "rke2",
            &[("TOLLGATE_CNI_BIN_DIR", "/opt/cni/bin"), ("TOLLGATE_CNI_CONF_DIR", "/etc/cni/net.d")],
            &["/opt/cni/bin", "/etc/cni/net.d"],
            false,
        ),
        (
            "microk8s",
            &[
                ("TOLLGATE_CNI_BIN_DIR", "/var/snap/microk8s/current/opt/cni/bin"),
                ("TOLLGATE_CNI_CONF_DIR", "/var/snap/microk8s/current/args/cni-network"),
            ],
            // The snap's data directory whole, so that `current` is followed after a snap refresh.
            &["/var/snap/microk8s"],
            false,
        ),
        (
            "k3s",
            &[
                ("TOLLGATE_CNI_K3S_DATA_DIR", "/var/lib/rancher/k3s/data"),
                ("TOLLGATE_CNI_CONF_DIR", "/var/lib/rancher/k3s/agent/etc/cni/net.d"),
            ],
            &["/var/lib/rancher/k3s/data", "/var/lib/rancher/k3s/agent/etc/cni/net.d"],
            false,
        ),
        (
            "gke",
            &[("TOLLGATE_CNI_BIN_DIR", "/home/kubernetes/bin"), ("TOLLGATE_CNI_CONF_DIR", "/etc/cni/net.d")],
            &["/home/kubernetes/bin", "/etc/cni/net.d"],
            true,
        ),
        (
            "custom",
            &[("TOLLGATE_CNI_BIN_DIR", "/usr/libexec/cni"), ("TOLLGATE_CNI_CONF_DIR", "/etc/kubernetes/cni/net.d")],
            &["/usr/libexec/cni", "/etc/kubernetes/cni/net.d"],
            false,
        ),
    ];
    for (platform, dirs, mounted, quota) in cases {
        let mut sets = vec![format!("egressLock.platform={platform}")];
        if platform == "custom" {
            sets.extend(["egressLock.binDir=/usr/libexec/cni".into(), "egressLock.confDir=/etc/kubernetes/cni/net.d".into()]);
        }
        let rendered = render(&sets.iter().map(String::as_str).collect::<Vec<_>>());
        let expected: BTreeMap<&str, &str> = dirs.iter().copied().collect();
        assert_eq!(rendered.node_dirs(), expected, "{platform}");
        let hosts: Vec<&str> = rendered.mounts.iter().map(|(h, _, _)| h.as_str()).collect();
        assert_eq!(hosts, mounted, "{platform}");
        rendered.mounts_are_consistent();
        assert_eq!(rendered.env["TOLLGATE_CNI_PLATFORM"], platform);
        // A preset is checked on the node (its network plugin must be in the bin directory); directories the
        // admin named are trusted.
        assert_eq!(rendered.env["TOLLGATE_CNI_VERIFY_BIN_DIR"], (platform != "custom").to_string(), "{platform}");
        assert_eq!(rendered.quota.is_some(), quota, "{platform}");
        // The same everywhere: no token, every capability dropped, the node's name for the message, the message
        // kept when the installer gives up, and the probe reading the same environment.
        let pod = &rendered.pod;
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["priorityClassName"], "system-node-critical");
        let container = &pod["containers"][0];
        assert_eq!(container["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(container["terminationMessagePolicy"], "FallbackToLogsOnError");
        assert_eq!(container["readinessProbe"]["exec"]["command"], json!(["/usr/local/bin/tollgate-cni", "check-install"]));
        assert_eq!(container["args"], json!(["install", "--interval=5", "--fail-after=60"]));
        let node_name = container["env"].as_array().unwrap().iter().find(|e| e["name"] == "NODE_NAME").expect("NODE_NAME");
        assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    }
}

#[test]
fn gke_gets_a_resource_quota_for_the_critical_class() {
    let quota = render(&["egressLock.platform=gke"]).quota.unwrap();
    assert_eq!(quota["metadata"]["namespace"], "tollgate", "the release's namespace, where the DaemonSet is");
    assert_eq!(quota["spec"]["hard"], json!({"pods": "1000"}));
    assert_eq!(
        quota["spec"]["scopeSelector"]["matchExpressions"],
        json!([{"operator": "In", "scopeName": "PriorityClass", "values": ["system-node-critical"]}])
    );
    // Any platform may ask for it, for its own class; without a class there is nothing to admit.
    let other = render(&[
        "egressLock.platform=k3s",
        "egressLock.resourceQuota.enabled=true",
        "egressLock.resourceQuota.pods=7",
        "egressLock.priorityClassName=tollgate-critical",
    ]);
    let quota = other.quota.unwrap();
    assert_eq!(quota["spec"]["hard"]["pods"], "7");
    assert_eq!(quota["spec"]["scopeSelector"]["matchExpressions"][0]["values"], json!(["tollgate-critical"]));
    assert_eq!(other.pod["priorityClassName"], "tollgate-critical");
    let err = helm_template(&["egressLock.platform=gke", "egressLock.priorityClassName="]).unwrap_err();
    assert!(err.contains("needs egressLock.priorityClassName"), "{err}");
}

#[test]
fn directories_given_replace_the_platforms_and_custom_needs_both() {
    let rendered = render(&["egressLock.platform=k3s", "egressLock.binDir=/opt/k3s-cni"]);
    assert_eq!(rendered.env["TOLLGATE_CNI_BIN_DIR"], "/host/opt/k3s-cni");
    assert!(!rendered.env.contains_key("TOLLGATE_CNI_K3S_DATA_DIR"));
    assert_eq!(rendered.env["TOLLGATE_CNI_CONF_DIR"], "/host/var/lib/rancher/k3s/agent/etc/cni/net.d");
    assert_eq!(rendered.env["TOLLGATE_CNI_VERIFY_BIN_DIR"], "false");
    rendered.mounts_are_consistent();
    // microk8s with one directory changed: each mounted on its own.
    let rendered = render(&["egressLock.platform=microk8s", "egressLock.confDir=/etc/cni/net.d"]);
    let hosts: Vec<&str> = rendered.mounts.iter().map(|(h, _, _)| h.as_str()).collect();
    assert_eq!(hosts, ["/var/snap/microk8s/current/opt/cni/bin", "/etc/cni/net.d"]);
    rendered.mounts_are_consistent();
    for sets in [&["egressLock.platform=custom"][..], &["egressLock.platform=custom", "egressLock.binDir=/opt/cni/bin"]] {
        let err = helm_template(sets).unwrap_err();
        assert!(err.contains("egressLock.platform custom needs egressLock.binDir and egressLock.confDir"), "{err}");
    }
    let err = helm_template(&["egressLock.platform=openshift"]).unwrap_err();
    assert!(err.contains("egressLock/platform"), "the schema names the allowed platforms: {err}");
    let err = helm_template(&["egressLock.binDir=opt/cni/bin"]).unwrap_err();
    assert!(err.contains("egressLock/binDir"), "{err}");
    // The egress lock off: none of it.
    let helm = tollgate_e2e::bin_dir().join("helm");
    let out = Command::new(&helm)
        .args(["template", "tollgate"])
        .arg(chart_files::chart_dir())
        .args(["--set", "egressLock.platform=gke"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let off = String::from_utf8_lossy(&out.stdout);
    assert!(!off.contains("tollgate-cni"), "{off}");
}

// ---- the rendered settings on each platform's layout ------------------------------------------------------

/// A node's `/` in a temporary directory, laid out as `platform` lays it out (see cni/tests/layouts.rs, which
/// covers more of each), with a network plugin already configured.
fn layout(platform: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let file = |path: &str, contents: &str| {
        let path = root.path().join(path.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    };
    let link = |path: &str, target: &str| {
        let path = root.path().join(path.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
    };
    let calico = |kubeconfig: &str| {
        json!({"name": "k8s-pod-network", "cniVersion": "0.3.1", "plugins": [
            {"type": "calico", "ipam": {"type": "calico-ipam"}, "kubernetes": {"kubeconfig": kubeconfig}},
            {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}]})
        .to_string()
    };
    match platform {
        "kubeadm" | "rke2" => {
            file("/etc/cni/net.d/10-calico.conflist", &calico("/etc/cni/net.d/calico-kubeconfig"));
            for plugin in ["calico", "calico-ipam", "portmap", "loopback"] {
                file(&format!("/opt/cni/bin/{plugin}"), "");
            }
        }
        "microk8s" => {
            file(
                "/var/snap/microk8s/7229/args/cni-network/10-calico.conflist",
                &calico("/var/snap/microk8s/current/args/cni-network/calico-kubeconfig"),
            );
            file("/var/snap/microk8s/7229/args/cni-network/cni.yaml", "kind: List\n");
            for plugin in ["calico", "calico-ipam", "portmap", "loopback"] {
                file(&format!("/var/snap/microk8s/7229/opt/cni/bin/{plugin}"), "");
            }
            link("/var/snap/microk8s/current", "7229");
        }
        "k3s" => {
            let flannel = json!({"name": "cbr0", "cniVersion": "1.0.0", "plugins": [
                {"type": "flannel", "delegate": {"hairpinMode": true, "forceAddress": true, "isDefaultGateway": true}},
                {"type": "portmap", "capabilities": {"portMappings": true}}]});
            file("/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist", &flannel.to_string());
            let bundle = "/var/lib/rancher/k3s/data/1f5aa17d7bf2e23e3d38790a4a252f21b246031ee4831640110d1ddaf8834f1c";
            file(&format!("{bundle}/bin/cni"), "");
            for plugin in ["flannel", "host-local", "portmap", "loopback"] {
                link(&format!("{bundle}/bin/{plugin}"), "cni");
                link(&format!("/var/lib/rancher/k3s/data/cni/{plugin}"), &format!("{bundle}/bin/cni"));
            }
            link("/var/lib/rancher/k3s/data/current", bundle);
        }
        "gke" => {
            file(
                "/etc/cni/net.d/10-gke-ptp.conflist",
                r#"{"cniVersion":"0.3.1","name":"gke-pod-network","plugins":[{"type":"ptp"},{"type":"portmap"}]}"#,
            );
            for plugin in ["ptp", "portmap", "host-local", "loopback"] {
                file(&format!("/home/kubernetes/bin/{plugin}"), "");
            }
        }
        other => panic!("no layout for {other}"),
    }
    root
}

/// Runs the installer binary with the rendered environment, the node's `/` being `root` instead of /host.
fn run_installer(rendered: &Rendered, root: &Path, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(tollgate_e2e::workspace_bin("tollgate-cni"));
    command.args(args).env("NODE_NAME", "node-1");
    for (name, value) in &rendered.env {
        let value = match value.strip_prefix("/host") {
            Some(rest) => format!("{}{rest}", root.display()),
            None => value.clone(),
        };
        command.env(name, value);
    }
    command.output().unwrap()
}

#[test]
fn the_installer_chains_the_plugin_where_each_preset_points_it() {
    let source = tempfile::NamedTempFile::new().unwrap();
    fs::write(source.path(), b"the plugin").unwrap();
    for (platform, config, installed) in [
        ("kubeadm", "/etc/cni/net.d/10-calico.conflist", &["/opt/cni/bin"][..]),
        ("rke2", "/etc/cni/net.d/10-calico.conflist", &["/opt/cni/bin"]),
        ("microk8s", "/var/snap/microk8s/current/args/cni-network/10-calico.conflist", &["/var/snap/microk8s/current/opt/cni/bin"]),
        (
            "k3s",
            "/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist",
            &[
                "/var/lib/rancher/k3s/data/cni",
                "/var/lib/rancher/k3s/data/1f5aa17d7bf2e23e3d38790a4a252f21b246031ee4831640110d1ddaf8834f1c/bin",
            ],
        ),
        ("gke", "/etc/cni/net.d/10-gke-ptp.conflist", &["/home/kubernetes/bin"]),
    ] {
        let rendered = render(&[&format!("egressLock.platform={platform}")]);
        let root = layout(platform);
        let out = run_installer(&rendered, root.path(), &["install", "--once", "--source", source.path().to_str().unwrap()]);
        assert!(out.status.success(), "{platform}: {}", text(&out));
        assert!(text(&out).contains(&format!("chained tollgate-cni into {config}")), "{platform}: {}", text(&out));
        let node = |path: &str| root.path().join(path.trim_start_matches('/'));
        let chained: Value = serde_json::from_slice(&fs::read(node(config)).unwrap()).unwrap();
        assert_eq!(chained["plugins"].as_array().unwrap().last().unwrap()["type"], "tollgate-cni", "{platform}");
        for dir in installed {
            assert_eq!(fs::read(node(&format!("{dir}/tollgate-cni"))).unwrap(), b"the plugin", "{platform}: {dir}");
        }
        // The readiness probe, with the same environment.
        let probe = run_installer(&rendered, root.path(), &["check-install", "--source", source.path().to_str().unwrap()]);
        assert!(probe.status.success(), "{platform}: {}", text(&probe));
    }
}

#[test]
fn a_preset_on_a_node_of_another_platform_says_what_it_did_not_find() {
    // The kubeadm preset on a microk8s node that has /etc/cni/net.d and /opt/cni/bin from some other software:
    // nothing changes, and the message names the directory and the value to change.
    let rendered = render(&["egressLock.platform=kubeadm"]);
    let root = layout("microk8s");
    fs::create_dir_all(root.path().join("etc/cni/net.d")).unwrap();
    fs::create_dir_all(root.path().join("opt/cni/bin")).unwrap();
    let out = run_installer(&rendered, root.path(), &["install", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let message = text(&out);
    assert!(
        message.contains(
            "the egress lock cannot be installed on node node-1: no CNI network configuration in /etc/cni/net.d (no \
             *.conflist, *.conf or *.json file; it is empty)"
        ),
        "{message}"
    );
    assert!(message.contains("egressLock.platform is kubeadm: set it to this node's"), "{message}");
    assert!(!root.path().join("opt/cni/bin/tollgate-cni").exists());
    // And the kubeadm preset on a GKE node: the configuration is found, but its plugin is not in /opt/cni/bin,
    // where this runtime does not look.
    let root = layout("gke");
    fs::create_dir_all(root.path().join("opt/cni/bin")).unwrap();
    let out = run_installer(&rendered, root.path(), &["install", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("/etc/cni/net.d/10-gke-ptp.conflist runs the network plugin \\\"ptp\\\", but /opt/cni/bin holds no ptp"),
        "{}",
        text(&out)
    );
    let config: Value = serde_json::from_slice(&fs::read(root.path().join("etc/cni/net.d/10-gke-ptp.conflist")).unwrap()).unwrap();
    assert_eq!(config["plugins"].as_array().unwrap().len(), 2, "not chained");
}

// ---- on a real API server --------------------------------------------------------------------------------

/// The test API server, restarted with `args` added (its own command line otherwise).
fn restart_apiserver(plane: &mut tollgate_e2e::ControlPlane, args: &[String]) {
    let cmdline = fs::read(format!("/proc/{}/cmdline", plane.apiserver.child.id())).unwrap();
    let mut argv: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let program = argv.remove(0);
    argv.extend(args.iter().cloned());
    plane.apiserver.stop();
    let log = plane.dir.path().join("apiserver-restarted.log");
    plane.apiserver = tollgate_e2e::Process::start("kube-apiserver", Command::new(program).args(&argv), log);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !plane.kubectl(&["get", "--raw", "/readyz"]).status.success() {
        assert!(std::time::Instant::now() < deadline, "kube-apiserver not ready again: {}", plane.apiserver.logs());
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

fn yaml_of(value: &Value) -> String {
    serde_yaml_ng::to_string(value).unwrap()
}

#[test]
fn an_api_server_limiting_critical_pods_as_gke_does_admits_the_installer_only_with_the_quota() {
    // kube-apiserver configured as GKE configures its own (Kubernetes' documentation, "Limit Priority Class
    // consumption by default"): pods of the critical classes only where a ResourceQuota covers them.
    let mut plane = tollgate_e2e::ControlPlane::start();
    let config = plane.dir.path().join("admission.yaml");
    fs::write(
        &config,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: ResourceQuota\n  configuration:\n    \
         apiVersion: apiserver.config.k8s.io/v1\n    kind: ResourceQuotaConfiguration\n    limitedResources:\n    - resource: pods\n      \
         matchScopes:\n      - scopeName: PriorityClass\n        operator: In\n        values: [system-node-critical, system-cluster-critical]\n",
    )
    .unwrap();
    restart_apiserver(&mut plane, &[format!("--admission-control-config-file={}", config.display())]);
    // The namespace and its default ServiceAccount (no controller manager here makes it).
    for args in [&["create", "namespace", "tollgate"][..], &["create", "serviceaccount", "default", "-n", "tollgate"]] {
        let out = plane.kubectl(args);
        assert!(out.status.success(), "{}", text(&out));
    }

    // Every preset's DaemonSet is a valid object for this API server (hostPath types, the node's name from
    // the downward API, the termination message policy).
    for platform in ["kubeadm", "rke2", "microk8s", "k3s", "gke"] {
        let stream = helm_template(&[&format!("egressLock.platform={platform}")]).unwrap();
        let all = objects(&stream);
        let daemonset = object(&all, "DaemonSet", "tollgate-cni").unwrap();
        let out = plane.kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &yaml_of(daemonset));
        assert!(out.status.success(), "{platform}: {}", text(&out));
    }

    // The installer's pod as the DaemonSet would create it on a node (bound to it: nothing schedules here).
    let rendered = render(&["egressLock.platform=gke"]);
    let mut spec = rendered.pod.clone();
    spec["nodeName"] = json!("node-1");
    let pod =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tollgate-cni-node-1", "namespace": "tollgate"}, "spec": spec});
    let refused = plane.kubectl_stdin(&["create", "-f", "-"], &yaml_of(&pod));
    assert!(!refused.status.success() && text(&refused).contains("insufficient quota to match these scopes"), "{}", text(&refused));

    // With the chart's ResourceQuota (and its status, which the quota controller would fill in: there is no
    // controller manager here), it is admitted and counted.
    let quota = rendered.quota.as_ref().unwrap();
    let out = plane.kubectl_stdin(&["create", "-f", "-"], &yaml_of(quota));
    assert!(out.status.success(), "{}", text(&out));
    let status = r#"{"status":{"hard":{"pods":"1000"},"used":{"pods":"0"}}}"#;
    let out = plane.kubectl(&[
        "patch",
        "resourcequota",
        "tollgate-cni-critical-pods",
        "-n",
        "tollgate",
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let admitted = plane.kubectl_stdin(&["create", "-f", "-"], &yaml_of(&pod));
    assert!(admitted.status.success(), "{}", text(&admitted));
    let used =
        plane.kubectl(&["get", "resourcequota", "tollgate-cni-critical-pods", "-n", "tollgate", "-o", "jsonpath={.status.used.pods}"]);
    assert_eq!(String::from_utf8_lossy(&used.stdout), "1", "the quota counts the installer's pod");
}

// ---- on the node -----------------------------------------------------------------------------------------

/// The chart's installer DaemonSet for `sets`, as a DaemonSet of its own in `namespace` (another name and
/// labels: the release's installer and whatever looks for it are left alone).
fn separate_installer(sets: &[&str], namespace: &str, name: &str) -> String {
    let stream = helm_template(sets).unwrap();
    let mut daemonset = object(&objects(&stream), "DaemonSet", "tollgate-cni").unwrap().clone();
    daemonset["metadata"] = json!({"name": name, "namespace": namespace});
    let labels = json!({"app.kubernetes.io/name": name});
    daemonset["spec"]["selector"] = json!({"matchLabels": labels});
    daemonset["spec"]["template"]["metadata"] = json!({"labels": labels});
    yaml_of(&daemonset)
}

#[test]
#[ignore = "needs scripts/cluster.sh up"]
fn on_the_node_an_installer_that_cannot_lock_fails_visibly() {
    let dir = std::env::var("TOLLGATE_CLUSTER_DIR").expect("TOLLGATE_CLUSTER_DIR");
    let ns = "tollgate-lock-platforms";
    let node = NodeCluster::from_env();
    let ok = |args: &[&str], stdin: Option<&str>| {
        let out = node.kubectl_stdin(args, stdin.unwrap_or_default());
        assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&["delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=120s"], None);
    ok(&["create", "namespace", ns], None);

    // The node's bin directory, and a configuration directory with nothing in it: the pod starts, changes
    // nothing, and fails with what it did not find as its termination message.
    let empty = format!("{dir}/cni/empty.d");
    fs::create_dir_all(&empty).unwrap();
    let manifest = separate_installer(
        &[
            "egressLock.platform=custom",
            &format!("egressLock.binDir={dir}/cni/bin"),
            &format!("egressLock.confDir={empty}"),
            "egressLock.intervalSeconds=1",
            "egressLock.failAfterSeconds=3",
        ],
        ns,
        "lock-no-configuration",
    );
    ok(&["apply", "-f", "-"], Some(&manifest));
    let expected = format!(
        "the egress lock cannot be installed on node tollgate-node: no CNI network configuration in {empty} (no *.conflist, \
         *.conf or *.json file; it is empty)"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        let pods: Value =
            serde_json::from_str(&ok(&["get", "pods", "-n", ns, "-l", "app.kubernetes.io/name=lock-no-configuration", "-o", "json"], None))
                .unwrap();
        let status = pods["items"][0]["status"]["containerStatuses"][0].clone();
        let message =
            status["lastState"]["terminated"]["message"].as_str().or(status["state"]["terminated"]["message"].as_str()).unwrap_or("");
        if message.starts_with(&expected) {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "no termination message {expected:?}: {pods}");
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    assert_eq!(status["ready"], false, "{status}");
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0, "nothing written");

    // A platform whose directories the node does not have: the pod does not start, and its events name the
    // directory.
    let manifest = separate_installer(&["egressLock.platform=microk8s"], ns, "lock-other-platform");
    ok(&["apply", "-f", "-"], Some(&manifest));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let events = ok(&["get", "events", "-n", ns, "--field-selector", "reason=FailedMount", "-o", "jsonpath={.items[*].message}"], None);
        if events.contains("/var/snap/microk8s") && events.contains("is not a directory") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no FailedMount event naming /var/snap/microk8s: {events}");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    ok(&["delete", "namespace", ns, "--wait=false"], None);
    let _ = fs::remove_dir(&empty);
}
