//! The installer on each platform's file layout, built in a temporary directory as the node's `/` (mounted at
//! `/host` in the DaemonSet's pod, as the chart mounts it): where the platform's container runtime keeps its
//! CNI configuration and plugins, filled the way the platform fills them (the layouts are the projects' own:
//! microk8s's containerd-template.toml, k3s's agent config and data directory before and after its stable
//! `data/cni` directory, k3s-io/k3s#10868, the kubeadm/rke2 runtime defaults, GKE's `/home/kubernetes/bin`).
//! On each the installer must find the primary configuration, put the binary where the runtime looks, chain
//! it, and report ready; on a node that cannot have the lock it must change nothing and say exactly what it
//! did not find — through `install --once`, the readiness probe (`check-install`), and the DaemonSet's loop,
//! which gives up after `--fail-after` with the message in the container's termination log.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_cni::install::{self, BinDir, Paths, is_chained};
use tollgate_testkit::text;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-cni");

/// A node's `/`, in a temporary directory.
struct Node {
    root: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        Node { root: tempfile::tempdir().unwrap() }
    }

    /// A node path (absolute, as the node knows it) in this node.
    fn path(&self, node_path: &str) -> PathBuf {
        self.root.path().join(node_path.trim_start_matches('/'))
    }

    fn dir(&self, node_path: &str) -> PathBuf {
        let path = self.path(node_path);
        fs::create_dir_all(&path).unwrap();
        path
    }

    fn file(&self, node_path: &str, contents: &str) {
        let path = self.path(node_path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    /// Executables (their contents do not matter here) in a bin directory.
    fn plugins(&self, bin_dir: &str, names: &[&str]) {
        for name in names {
            self.file(&format!("{bin_dir}/{name}"), &format!("#!/bin/sh\n# {name}\n"));
        }
    }

    fn link(&self, node_path: &str, target: &str) {
        let path = self.path(node_path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
    }

    fn source(&self) -> PathBuf {
        let source = self.root.path().join("tollgate-cni-image");
        fs::write(&source, b"the tollgate-cni binary of this image").unwrap();
        source
    }

    /// The installer's paths as the chart sets them for a platform: each node path under the host root.
    fn paths(&self, bin: Bin, conf_dir: &str) -> Paths {
        let bin_dir = match bin {
            Bin::Dir(dir) => BinDir::Dir(self.path(dir)),
            Bin::K3sData(dir) => BinDir::K3sData(self.path(dir)),
        };
        Paths {
            bin_dir,
            conf_dir: self.path(conf_dir),
            source: self.source(),
            host_root: Some(self.root.path().into()),
            verify_bin_dir: true,
        }
    }

    fn read(&self, node_path: &str) -> Value {
        serde_json::from_slice(&fs::read(self.path(node_path)).unwrap()).unwrap()
    }
}

#[derive(Clone, Copy)]
enum Bin {
    Dir(&'static str),
    K3sData(&'static str),
}

/// Calico's configuration as its install-cni writes it (microk8s ships Calico; kubeadm clusters often run it).
fn calico(kubeconfig: &str) -> String {
    json!({
        "name": "k8s-pod-network",
        "cniVersion": "0.3.1",
        "plugins": [
            {"type": "calico", "log_level": "info", "datastore_type": "kubernetes", "mtu": 1440,
             "ipam": {"type": "calico-ipam"}, "policy": {"type": "k8s"}, "kubernetes": {"kubeconfig": kubeconfig}},
            {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]
    })
    .to_string()
}

/// k3s's embedded flannel configuration (its 10-flannel.conflist).
fn k3s_flannel() -> String {
    json!({
        "name": "cbr0",
        "cniVersion": "1.0.0",
        "plugins": [
            {"type": "flannel", "delegate": {"hairpinMode": true, "forceAddress": true, "isDefaultGateway": true}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]
    })
    .to_string()
}

/// k3s's bundled plugins: one multicall binary, `cni`, and a link per plugin name.
const K3S_PLUGINS: [&str; 8] = ["bandwidth", "bridge", "firewall", "flannel", "host-local", "loopback", "portmap", "tuning"];

/// A k3s bundle (`data/<hash>`), extracted as k3s extracts it.
fn k3s_bundle(node: &Node, hash: &str) {
    let bin = format!("/var/lib/rancher/k3s/data/{hash}/bin");
    node.plugins(&bin, &["cni", "k3s", "containerd", "runc"]);
    for plugin in K3S_PLUGINS {
        node.link(&format!("{bin}/{plugin}"), "cni");
    }
}

/// Runs the installer on a layout and checks the outcome: the binary in every `expect_bins` (node paths), the
/// primary configuration `expect_conf` chained with the node's plugins still in front, ready, idempotent.
fn installs(node: &Node, paths: &Paths, expect_conf: &str, expect_bins: &[&str]) {
    let before = node.read(expect_conf);
    let changes = install::install_once(paths).unwrap_or_else(|e| panic!("{e}"));
    for bin in expect_bins {
        let installed = node.path(&format!("{bin}/tollgate-cni"));
        assert_eq!(fs::read(&installed).unwrap(), fs::read(&paths.source).unwrap(), "{}", installed.display());
        assert!(changes.contains(&format!("installed {bin}/tollgate-cni")), "{changes:?}");
    }
    assert_eq!(changes.last().unwrap(), &format!("chained tollgate-cni into {expect_conf}"), "{changes:?}");
    let after = node.read(expect_conf);
    assert!(is_chained(&after), "{after}");
    let plugins = after["plugins"].as_array().unwrap();
    assert_eq!(&plugins[..plugins.len() - 1], before["plugins"].as_array().unwrap().as_slice(), "the node's plugins stay as they were");
    install::check(paths).unwrap();
    assert!(install::install_once(paths).unwrap().is_empty(), "nothing to do the second time");
}

#[test]
fn kubeadm_and_rke2_keep_the_runtime_defaults() {
    // kubeadm (and EKS, AKS, kind) with Calico; rke2 with its default canal (Calico's policy, flannel's
    // network), whose containerd configuration names no CNI directories (containerd's defaults apply).
    for (file, conf) in [
        ("10-calico.conflist", calico("/etc/cni/net.d/calico-kubeconfig")),
        ("10-canal.conflist", calico("/etc/cni/net.d/calico-kubeconfig").replace("k8s-pod-network", "k8s-pod-network-canal")),
    ] {
        let node = Node::new();
        node.file(&format!("/etc/cni/net.d/{file}"), &conf);
        node.file("/etc/cni/net.d/calico-kubeconfig", "apiVersion: v1\nkind: Config\n");
        node.plugins("/opt/cni/bin", &["calico", "calico-ipam", "flannel", "portmap", "bandwidth", "host-local", "loopback"]);
        let paths = node.paths(Bin::Dir("/opt/cni/bin"), "/etc/cni/net.d");
        installs(&node, &paths, &format!("/etc/cni/net.d/{file}"), &["/opt/cni/bin"]);
    }
}

#[test]
fn microk8s_keeps_both_under_its_snap_data_and_follows_current() {
    // containerd-template.toml: bin_dir = "${SNAP_DATA}/opt/cni/bin", conf_dir = "${SNAP_DATA}/args/cni-network";
    // SNAP_DATA is /var/snap/microk8s/current, a link to the revision in use. The DaemonSet mounts
    // /var/snap/microk8s, so after a snap refresh the installer follows `current` to the new revision.
    let node = Node::new();
    for revision in ["7229", "7394"] {
        let data = format!("/var/snap/microk8s/{revision}");
        node.file(
            &format!("{data}/args/cni-network/10-calico.conflist"),
            &calico("/var/snap/microk8s/current/args/cni-network/calico-kubeconfig"),
        );
        node.file(&format!("{data}/args/cni-network/calico-kubeconfig"), "apiVersion: v1\nkind: Config\n");
        // The Calico manifest microk8s applies sits beside the configuration; a runtime does not load it.
        node.file(&format!("{data}/args/cni-network/cni.yaml"), "apiVersion: v1\nkind: List\nitems: []\n");
        node.plugins(
            &format!("{data}/opt/cni/bin"),
            &["calico", "calico-ipam", "flannel", "portmap", "bandwidth", "host-local", "loopback"],
        );
    }
    node.link("/var/snap/microk8s/current", "7229");
    let paths = node.paths(Bin::Dir("/var/snap/microk8s/current/opt/cni/bin"), "/var/snap/microk8s/current/args/cni-network");
    installs(&node, &paths, "/var/snap/microk8s/current/args/cni-network/10-calico.conflist", &["/var/snap/microk8s/current/opt/cni/bin"]);
    assert!(node.path("/var/snap/microk8s/7229/opt/cni/bin/tollgate-cni").exists());
    // A refresh: snapd points `current` at the new revision; the installer's next pass chains that one.
    fs::remove_file(node.path("/var/snap/microk8s/current")).unwrap();
    node.link("/var/snap/microk8s/current", "7394");
    assert!(install::check(&paths).is_err(), "the new revision is not chained yet");
    install::install_once(&paths).unwrap();
    assert!(is_chained(&node.read("/var/snap/microk8s/7394/args/cni-network/10-calico.conflist")));
    assert!(node.path("/var/snap/microk8s/7394/opt/cni/bin/tollgate-cni").exists());
    install::check(&paths).unwrap();
}

#[test]
fn k3s_with_its_stable_cni_directory_and_its_bundle() {
    // k3s since k3s-io/k3s#10868: containerd's bin_dir is data/cni, links to the bundle's multicall binary
    // (absolute: they do not resolve inside the DaemonSet's pod, and need not).
    let node = Node::new();
    let hash = "1f5aa17d7bf2e23e3d38790a4a252f21b246031ee4831640110d1ddaf8834f1c";
    k3s_bundle(&node, hash);
    let target = format!("/var/lib/rancher/k3s/data/{hash}/bin/cni");
    node.link("/var/lib/rancher/k3s/data/cni/cni", &target);
    for plugin in K3S_PLUGINS {
        node.link(&format!("/var/lib/rancher/k3s/data/cni/{plugin}"), &target);
    }
    node.link("/var/lib/rancher/k3s/data/current", &format!("/var/lib/rancher/k3s/data/{hash}"));
    node.file("/var/lib/rancher/k3s/data/.lock", "");
    node.file("/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist", &k3s_flannel());
    let paths = node.paths(Bin::K3sData("/var/lib/rancher/k3s/data"), "/var/lib/rancher/k3s/agent/etc/cni/net.d");
    assert_eq!(
        paths.bin_dirs().unwrap(),
        vec![node.path("/var/lib/rancher/k3s/data/cni"), node.path(&format!("/var/lib/rancher/k3s/data/{hash}/bin"))]
    );
    installs(
        &node,
        &paths,
        "/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist",
        &["/var/lib/rancher/k3s/data/cni", &format!("/var/lib/rancher/k3s/data/{hash}/bin")],
    );
    // Uninstall takes it out of every one.
    install::uninstall(&paths).unwrap();
    assert!(!node.path("/var/lib/rancher/k3s/data/cni/tollgate-cni").exists());
    assert!(!node.path(&format!("/var/lib/rancher/k3s/data/{hash}/bin/tollgate-cni")).exists());
    assert!(!is_chained(&node.read("/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist")));
}

#[test]
fn k3s_before_its_stable_directory_gets_every_bundle_and_the_next_one() {
    // Older k3s: bin_dir is data/<hash>/bin of the running version, a new one with every upgrade; `previous`
    // and `current` link to bundles, a half-extracted `-tmp` is not one.
    let node = Node::new();
    let (old, new) = (
        "dd47053553b78e6475d25db3116109d4f23c6110062da49c1afb7976f20692ff",
        "3211b45ca58c81a5ab769d7b4e0dcbad6b8512346c01ac2a4c631c0960f37b7f",
    );
    k3s_bundle(&node, old);
    k3s_bundle(&node, new);
    node.link("/var/lib/rancher/k3s/data/previous", &format!("/var/lib/rancher/k3s/data/{old}"));
    node.link("/var/lib/rancher/k3s/data/current", &format!("/var/lib/rancher/k3s/data/{new}"));
    node.dir("/var/lib/rancher/k3s/data/0123-tmp/bin");
    node.file("/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist", &k3s_flannel());
    let paths = node.paths(Bin::K3sData("/var/lib/rancher/k3s/data"), "/var/lib/rancher/k3s/agent/etc/cni/net.d");
    let old_bin = format!("/var/lib/rancher/k3s/data/{old}/bin");
    let new_bin = format!("/var/lib/rancher/k3s/data/{new}/bin");
    installs(&node, &paths, "/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist", &[&new_bin, &old_bin]);
    // An upgrade extracts another bundle: not ready until the next pass puts the binary there too.
    let next = "9a0bde2f6c9d8e7f6a5b4c3d2e1f00112233445566778899aabbccddeeff0011";
    k3s_bundle(&node, next);
    let err = install::check(&paths).unwrap_err();
    assert!(err.contains(&format!("/var/lib/rancher/k3s/data/{next}/bin/tollgate-cni")), "{err}");
    assert_eq!(install::install_once(&paths).unwrap(), vec![format!("installed /var/lib/rancher/k3s/data/{next}/bin/tollgate-cni")]);
    install::check(&paths).unwrap();
}

#[test]
fn gke_keeps_its_plugins_in_home_kubernetes_bin() {
    let node = Node::new();
    node.file(
        "/etc/cni/net.d/10-gke-ptp.conflist",
        &json!({"cniVersion": "0.3.1", "name": "gke-pod-network",
                "plugins": [{"type": "ptp", "ipam": {"type": "host-local"}}, {"type": "portmap", "capabilities": {"portMappings": true}}]})
        .to_string(),
    );
    node.plugins("/home/kubernetes/bin", &["ptp", "portmap", "host-local", "loopback", "bandwidth"]);
    // /opt/cni/bin exists on the node but is not where the runtime looks: the default directory is refused.
    node.plugins("/opt/cni/bin", &["loopback"]);
    let wrong = node.paths(Bin::Dir("/opt/cni/bin"), "/etc/cni/net.d");
    let err = install::install_once(&wrong).unwrap_err().to_string();
    assert!(err.starts_with("/etc/cni/net.d/10-gke-ptp.conflist runs the network plugin \"ptp\", but /opt/cni/bin holds no ptp"), "{err}");
    let paths = node.paths(Bin::Dir("/home/kubernetes/bin"), "/etc/cni/net.d");
    installs(&node, &paths, "/etc/cni/net.d/10-gke-ptp.conflist", &["/home/kubernetes/bin"]);
    assert!(!node.path("/opt/cni/bin/tollgate-cni").exists());
}

/// The installer binary, as the DaemonSet runs it: the chart's environment, with `/host` being `node`.
fn installer(node: &Node, platform: &str, bin: Bin, conf_dir: &str, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env("NODE_NAME", "node-1").env("TOLLGATE_CNI_PLATFORM", platform);
    command.env("TOLLGATE_CNI_HOST_ROOT", node.root.path()).env("TOLLGATE_CNI_CONF_DIR", node.path(conf_dir));
    command.env("TOLLGATE_CNI_VERIFY_BIN_DIR", "true");
    match bin {
        Bin::Dir(dir) => command.env("TOLLGATE_CNI_BIN_DIR", node.path(dir)),
        Bin::K3sData(dir) => command.env("TOLLGATE_CNI_K3S_DATA_DIR", node.path(dir)),
    };
    command.stdin(Stdio::null());
    command
}

/// Every file under the node's root with its contents: what "nothing changed" is compared on.
fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                all.push((path.clone(), fs::read(&path).unwrap()));
            } else {
                all.push((path.clone(), fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes()));
            }
        }
    }
    all.sort();
    all
}

#[test]
fn a_node_without_a_configuration_is_refused_with_what_was_not_found() {
    // The kubeadm preset on a k3s node: /etc/cni/net.d and /opt/cni/bin exist (other software made them) but
    // k3s's runtime reads neither. Nothing is installed; every way the installer is run says what it missed.
    let node = Node::new();
    node.dir("/etc/cni/net.d");
    node.file("/etc/cni/net.d/README", "leftover\n");
    node.dir("/opt/cni/bin");
    node.file("/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist", &k3s_flannel());
    let log = node.root.path().join("termination-log");
    fs::write(&log, "").unwrap();
    let before = snapshot(node.root.path());

    let expected = "the egress lock cannot be installed on node node-1: no CNI network configuration in /etc/cni/net.d (no \
                    *.conflist, *.conf or *.json file; it holds README): the container runtime reads its network \
                    configuration from another directory on this node, or the network plugin has not written it yet. \
                    Locked pods will not start there. Fix: egressLock.platform is kubeadm: set it to this node's (kubeadm, \
                    rke2, microk8s, k3s, gke), or set the directories the node's container runtime uses \
                    (egressLock.binDir, egressLock.confDir; charts/tollgate/README.md, \"The egress lock \
                    on your platform\")";
    let once = installer(&node, "kubeadm", Bin::Dir("/opt/cni/bin"), "/etc/cni/net.d", &["install", "--once", "--termination-log"])
        .arg(&log)
        .output()
        .unwrap();
    assert_eq!(once.status.code(), Some(1), "{}", text(&once));
    assert!(text(&once).contains(&serde_json::to_string(expected).unwrap()), "{}", text(&once));
    assert_eq!(fs::read_to_string(&log).unwrap(), expected, "the pod's termination message");
    fs::write(&log, "").unwrap();

    // The readiness probe says what is missing (kubectl describe shows it in the probe's events).
    let probe = installer(&node, "kubeadm", Bin::Dir("/opt/cni/bin"), "/etc/cni/net.d", &["check-install"]).output().unwrap();
    assert_eq!(probe.status.code(), Some(1));
    assert!(text(&probe).contains("no CNI network configuration in /etc/cni/net.d"), "{}", text(&probe));

    // The DaemonSet's loop keeps trying for --fail-after, then gives up with the same message, so that the pod
    // turns Error, then CrashLoopBackOff, with it.
    let started = Instant::now();
    let looped = installer(
        &node,
        "kubeadm",
        Bin::Dir("/opt/cni/bin"),
        "/etc/cni/net.d",
        &["install", "--interval=1", "--fail-after=2", "--termination-log"],
    )
    .arg(&log)
    .output()
    .unwrap();
    assert_eq!(looped.status.code(), Some(1), "{}", text(&looped));
    assert!(started.elapsed() >= Duration::from_secs(2), "gave up before --fail-after");
    assert_eq!(fs::read_to_string(&log).unwrap(), expected);
    assert_eq!(text(&looped).matches("\"WARN\"").count(), 1, "the same failure is logged once: {}", text(&looped));
    fs::write(&log, "").unwrap();
    assert_eq!(snapshot(node.root.path()), before, "nothing on the node changed");

    // With the platform's directories, the same node is fine.
    node.plugins("/var/lib/rancher/k3s/data/abc/bin", &["cni"]);
    node.link("/var/lib/rancher/k3s/data/abc/bin/flannel", "cni");
    let k3s = installer(
        &node,
        "k3s",
        Bin::K3sData("/var/lib/rancher/k3s/data"),
        "/var/lib/rancher/k3s/agent/etc/cni/net.d",
        &["install", "--once", "--source"],
    )
    .arg(node.source())
    .output()
    .unwrap();
    assert!(k3s.status.success(), "{}", text(&k3s));
    assert!(
        text(&k3s).contains("chained tollgate-cni into /var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist"),
        "{}",
        text(&k3s)
    );
}

#[test]
fn a_node_of_another_platform_is_named_by_the_directory_it_lacks() {
    // The microk8s preset on a node without microk8s; the k3s preset on a node without k3s's bundle.
    let node = Node::new();
    node.dir("/var/snap");
    node.dir("/var/lib/rancher/k3s/data");
    node.dir("/var/lib/rancher/k3s/agent/etc/cni/net.d");
    for (platform, bin, conf, missing) in [
        (
            "microk8s",
            Bin::Dir("/var/snap/microk8s/current/opt/cni/bin"),
            "/var/snap/microk8s/current/args/cni-network",
            "the node's CNI bin directory /var/snap/microk8s/current/opt/cni/bin does not exist or is not a directory",
        ),
        (
            "k3s",
            Bin::K3sData("/var/lib/rancher/k3s/data"),
            "/var/lib/rancher/k3s/agent/etc/cni/net.d",
            "no k3s CNI bin directory under /var/lib/rancher/k3s/data: neither /var/lib/rancher/k3s/data/cni nor a \
             /var/lib/rancher/k3s/data/<bundle>/bin holding k3s's cni binary",
        ),
    ] {
        let out = installer(&node, platform, bin, conf, &["install", "--once"]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(missing), "{platform}: {}", text(&out));
        assert!(text(&out).contains(&format!("egressLock.platform is {platform}")), "{}", text(&out));
    }
}

#[test]
fn the_loop_carries_on_when_the_configuration_appears_in_time() {
    // A network plugin that writes its configuration after the installer started: no giving up.
    let node = Node::new();
    node.dir("/etc/cni/net.d");
    node.plugins("/opt/cni/bin", &["bridge"]);
    let mut child =
        installer(&node, "kubeadm", Bin::Dir("/opt/cni/bin"), "/etc/cni/net.d", &["install", "--interval=1", "--fail-after=3", "--source"])
            .arg(node.source())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    node.file("/etc/cni/net.d/10-bridge.conflist", r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_chained(&node.read("/etc/cni/net.d/10-bridge.conflist")) {
        assert!(Instant::now() < deadline, "never chained");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(child.try_wait().unwrap().is_none(), "gave up although the node has what it needs");
    nix_kill(child.id());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("the node has what the lock needs again"), "{}", text(&out));
}

fn nix_kill(pid: u32) {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}
