//! The one-node cluster of `scripts/cluster.sh up`, as its exports describe it: kubectl and helm against it,
//! for the node suites (tests/tests/node.rs, tests/tests/node_flame.rs) and the node tests of other suites.

use std::process::{Command, Output};

use serde_json::Value;
use tollgate_testkit::{output_with_stdin, text};

/// An export of `scripts/cluster.sh up`; without it the test fails saying how to get it.
pub fn cluster_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run `scripts/cluster.sh up` and eval its output"))
}

/// The cluster's kubectl and helm, with its kubeconfig and Helm state.
pub struct NodeCluster {
    pub kubeconfig: String,
    /// `TOLLGATE_CLUSTER_DIR`: the cluster's own files (the CNI directories, the Helm state, the release
    /// binaries, what the host-side stand-ins received).
    pub dir: String,
    /// Where the cluster's kubectl and helm are (the path `<dir>/bin` holds).
    pub bin: String,
}

impl NodeCluster {
    pub fn from_env() -> NodeCluster {
        let dir = cluster_var("TOLLGATE_CLUSTER_DIR");
        let bin = std::fs::read_to_string(format!("{dir}/bin")).unwrap().trim().to_owned();
        NodeCluster { kubeconfig: cluster_var("KUBECONFIG"), dir, bin }
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(format!("{}/kubectl", self.bin)).arg(format!("--kubeconfig={}", self.kubeconfig)).args(args).output().unwrap()
    }

    /// `kubectl ARGS` with `input` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut kubectl = Command::new(format!("{}/kubectl", self.bin));
        output_with_stdin(kubectl.arg(format!("--kubeconfig={}", self.kubeconfig)).args(args), input.as_bytes())
    }

    /// `kubectl ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl ARGS -o json`, which must succeed, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// The cluster's helm, with the Helm state `scripts/cluster.sh` installed tollgate with.
    pub fn helm(&self, args: &[&str]) -> Output {
        Command::new(format!("{}/helm", self.bin))
            .args(args)
            .arg(format!("--kubeconfig={}", self.kubeconfig))
            .env("HELM_CACHE_HOME", format!("{}/helm/cache", self.dir))
            .env("HELM_CONFIG_HOME", format!("{}/helm/config", self.dir))
            .env("HELM_DATA_HOME", format!("{}/helm/data", self.dir))
            .output()
            .unwrap()
    }
}
