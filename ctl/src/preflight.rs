//! `tollgate check --pre`: before installing. Whether the cluster serves what tollgate needs, what its nodes are
//! (the egress lock needs to know where their CNI configuration lives), and what tollgate would do to the pods
//! already running in the namespaces it would select — each run through the webhook's own hardening, the way
//! `kyverno apply` runs policies over existing resources. Pure: [`crate::gather::pre_snapshot`] reads.

use serde_json::Value;
use tollgate_api::policy::Policy;
use tollgate_webhook::harden::{Outcome, harden};

use crate::finding::{Finding, Read, Severity};

/// What a preflight needs from the cluster.
#[derive(Debug, Clone)]
pub struct PreSnapshot {
    pub server_version: Read<(u32, u32)>,
    /// The resources `admissionregistration.k8s.io/v1` serves.
    pub admission_resources: Read<Vec<String>>,
    pub nodes: Read<Vec<NodeView>>,
    /// The namespaces the selector picks, each with its pods as the API server returns them.
    pub namespaces: Read<Vec<(String, Vec<Value>)>>,
}

#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub name: String,
    pub os: String,
    pub kubelet: String,
    pub runtime: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub provider_id: String,
}

/// The distribution a node belongs to, from what the distributions write on their nodes (labels, the provider
/// id), for the egress lock's CNI directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    Microk8s,
    K3s,
    Rke2,
    Eks,
    Gke,
    Aks,
    /// kubeadm, kind, or one that does not say.
    Other,
}

impl Distribution {
    pub fn of(labels: &std::collections::BTreeMap<String, String>, provider_id: &str) -> Distribution {
        let label = |key: &str| labels.get(key).map(String::as_str);
        match (label("node.kubernetes.io/instance-type"), label("microk8s.io/cluster")) {
            (_, Some(_)) => Distribution::Microk8s,
            (Some("k3s"), _) => Distribution::K3s,
            (Some("rke2"), _) => Distribution::Rke2,
            _ if provider_id.starts_with("aws://") => Distribution::Eks,
            _ if provider_id.starts_with("gce://") => Distribution::Gke,
            _ if provider_id.starts_with("azure://") => Distribution::Aks,
            _ => Distribution::Other,
        }
    }

    /// Whose CNI directories the node has, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Distribution::Microk8s => "microk8s",
            Distribution::K3s => "k3s",
            Distribution::Rke2 => "rke2",
            Distribution::Eks => "managed (EKS)",
            Distribution::Gke => "managed (GKE)",
            Distribution::Aks => "managed (AKS)",
            Distribution::Other => "kubeadm or another with the standard CNI directories",
        }
    }

    /// The chart's `egressLock.platform` for such a node; `None` where the node does not say (kubeadm's
    /// directories are the likeliest, but not known).
    pub fn preset(self) -> Option<&'static str> {
        match self {
            Distribution::Microk8s => Some("microk8s"),
            Distribution::K3s => Some("k3s"),
            Distribution::Rke2 => Some("rke2"),
            Distribution::Gke => Some("gke"),
            Distribution::Eks | Distribution::Aks => Some("kubeadm"),
            Distribution::Other => None,
        }
    }
}

/// The distribution a node belongs to, in words, for the egress lock's CNI directories.
pub fn platform(node: &NodeView) -> &'static str {
    Distribution::of(&node.labels, &node.provider_id).describe()
}

pub fn evaluate(s: &PreSnapshot, policy: &Policy) -> Vec<Finding> {
    let mut findings = Vec::new();
    kubernetes_version(&mut findings, &s.server_version);
    admission_apis(&mut findings, &s.admission_resources);
    nodes(&mut findings, &s.nodes);
    selection(&mut findings, policy, &s.namespaces);
    findings
}

fn finding(check: &'static str, subject: String, severity: Severity, message: String, hint: Option<String>) -> Finding {
    Finding { check, subject, severity, message, hint }
}

fn cluster() -> String {
    "cluster".to_owned()
}

/// `kubernetes-version`: 1.30 or later; native sidecars GA from 1.33.
fn kubernetes_version(findings: &mut Vec<Finding>, version: &Read<(u32, u32)>) {
    findings.push(match version {
        Ok((1, minor)) if *minor >= 33 => {
            finding("kubernetes-version", cluster(), Severity::Ok, format!("1.{minor}: native sidecars and matchConditions are GA"), None)
        }
        Ok((1, minor)) if *minor >= 30 => finding(
            "kubernetes-version",
            cluster(),
            Severity::Warning,
            format!("1.{minor}: native sidecars are beta here (on unless the SidecarContainers feature gate was turned off)"),
            Some("keep SidecarContainers on, or set policy proxy.mode: classic".into()),
        ),
        Ok((major, minor)) => finding(
            "kubernetes-version",
            cluster(),
            Severity::Error,
            format!("{major}.{minor}: tollgate needs 1.30 or later (ValidatingAdmissionPolicy v1, matchConditions)"),
            Some("upgrade the control plane first".into()),
        ),
        Err(why) => finding("kubernetes-version", cluster(), Severity::Warning, format!("not checked: {why}"), None),
    });
}

/// `admission-apis`: the API server serves webhooks and admission policies.
fn admission_apis(findings: &mut Vec<Finding>, resources: &Read<Vec<String>>) {
    let resources = match resources {
        Ok(resources) => resources,
        Err(why) => return findings.push(finding("admission-apis", cluster(), Severity::Warning, format!("not checked: {why}"), None)),
    };
    let needed = ["mutatingwebhookconfigurations", "validatingadmissionpolicies", "validatingadmissionpolicybindings"];
    let missing: Vec<&str> = needed.into_iter().filter(|r| !resources.iter().any(|have| have == r)).collect();
    findings.push(if missing.is_empty() {
        finding(
            "admission-apis",
            cluster(),
            Severity::Ok,
            "admissionregistration.k8s.io/v1 serves webhooks and admission policies".into(),
            None,
        )
    } else {
        finding(
            "admission-apis",
            cluster(),
            Severity::Error,
            format!("admissionregistration.k8s.io/v1 does not serve {}", missing.join(", ")),
            Some("enable the MutatingAdmissionWebhook and ValidatingAdmissionPolicy admission plugins (on by default)".into()),
        )
    });
}

/// `node`: each node's OS, kubelet, runtime and the platform whose CNI directories it has.
fn nodes(findings: &mut Vec<Finding>, nodes: &Read<Vec<NodeView>>) {
    let nodes = match nodes {
        Ok(nodes) => nodes,
        Err(why) => return findings.push(finding("node", cluster(), Severity::Warning, format!("not checked: {why}"), None)),
    };
    for node in nodes {
        let subject = format!("node {}", node.name);
        findings.push(if node.os != "linux" {
            finding(
                "node",
                subject,
                Severity::Warning,
                format!("runs {}: no analysis pod may run here (tollgate's proxy and egress lock are Linux's)", node.os),
                Some("keep analyses off it (nodeSelector kubernetes.io/os: linux)".into()),
            )
        } else {
            finding(
                "node",
                subject,
                Severity::Ok,
                format!("kubelet {}, {}; its CNI directories are those of {}", node.kubelet, node.runtime, platform(node)),
                None,
            )
        });
    }
}

/// `selection`: the namespaces tollgate would select, each pod through the hardening ([`dry_run_namespace`]).
fn selection(findings: &mut Vec<Finding>, policy: &Policy, namespaces: &Read<Vec<(String, Vec<Value>)>>) {
    match namespaces {
        Ok(namespaces) if namespaces.is_empty() => findings.push(finding(
            "selection",
            cluster(),
            Severity::Warning,
            "no namespace is selected yet".into(),
            Some("label the analysis namespaces tollgate.dev/inject=enabled (or list them in the chart's analysisNamespaces)".into()),
        )),
        Ok(namespaces) => {
            for (name, pods) in namespaces {
                dry_run_namespace(findings, policy, name, pods);
            }
        }
        Err(why) => findings.push(finding("selection", cluster(), Severity::Warning, format!("not checked: {why}"), None)),
    }
}

/// Each pod of a namespace through the webhook's hardening, as if it were created now (its controller will
/// create it again one day): the ones tollgate would refuse are listed with the reason.
fn dry_run_namespace(findings: &mut Vec<Finding>, policy: &Policy, namespace: &str, pods: &[Value]) {
    let (mut hardened, mut refused) = (0, 0);
    for pod in pods {
        let name = pod["metadata"]["name"].as_str().unwrap_or("?").to_owned();
        let mut candidate = as_created(pod);
        match harden(policy.for_namespace(namespace), &mut candidate) {
            Ok(Outcome::Denied(denial)) => {
                refused += 1;
                findings.push(Finding {
                    check: "would-deny",
                    subject: format!("pod {namespace}/{name}"),
                    severity: Severity::Warning,
                    message: denial.to_string(),
                    hint: Some("change the pod's spec (or its controller's template) before selecting the namespace, or try it with tollgate.dev/mode=warn first".into()),
                });
            }
            Ok(_) => hardened += 1,
            Err(e) => findings.push(Finding {
                check: "would-deny",
                subject: format!("pod {namespace}/{name}"),
                severity: Severity::Warning,
                message: e.to_string(),
                hint: None,
            }),
        }
    }
    findings.push(Finding {
        check: "selection",
        subject: format!("namespace {namespace}"),
        severity: if refused > 0 { Severity::Warning } else { Severity::Ok },
        message: format!("of its {} pods, tollgate would harden {hardened} and refuse {refused} if they were created now", pods.len()),
        hint: None,
    });
}

/// A stored pod as its creator would send it again: without status, node binding and server-set metadata.
fn as_created(pod: &Value) -> Value {
    let mut pod = pod.clone();
    if let Some(object) = pod.as_object_mut() {
        object.remove("status");
    }
    if let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in ["uid", "resourceVersion", "creationTimestamp", "managedFields", "generation"] {
            meta.remove(field);
        }
    }
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("nodeName");
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cluster_before_install_is_judged_and_the_pods_tollgate_would_refuse_are_named() {
        let pods = vec![
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fine", "namespace": "a", "uid": "1"},
                   "spec": {"containers": [{"name": "app", "image": "x:1"}], "nodeName": "n1"}, "status": {"phase": "Running"}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged", "namespace": "a"},
                   "spec": {"containers": [{"name": "app", "image": "x:1", "securityContext": {"privileged": true}}]}}),
        ];
        let node = |name: &str, os: &str, labels: &[(&str, &str)]| NodeView {
            name: name.into(),
            os: os.into(),
            kubelet: "v1.36.3".into(),
            runtime: "containerd://2.2.9".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            provider_id: String::new(),
        };
        let snapshot = PreSnapshot {
            server_version: Ok((1, 36)),
            admission_resources: Ok(vec!["mutatingwebhookconfigurations".into(), "validatingadmissionpolicies".into()]),
            nodes: Ok(vec![node("n1", "linux", &[("microk8s.io/cluster", "true")]), node("w1", "windows", &[])]),
            namespaces: Ok(vec![("a".into(), pods)]),
        };
        let findings = evaluate(&snapshot, &Policy::default());
        let find = |check: &str, subject: &str| {
            findings.iter().find(|f| f.check == check && f.subject == subject).unwrap_or_else(|| panic!("{check} {subject}: {findings:#?}"))
        };
        assert_eq!(find("kubernetes-version", "cluster").severity, Severity::Ok);
        let apis = find("admission-apis", "cluster");
        assert_eq!(
            (apis.severity, apis.message.as_str()),
            (Severity::Error, "admissionregistration.k8s.io/v1 does not serve validatingadmissionpolicybindings")
        );
        assert!(find("node", "node n1").message.ends_with("those of microk8s"));
        assert_eq!(find("node", "node w1").severity, Severity::Warning);
        let refused = find("would-deny", "pod a/privileged");
        assert!(refused.message.contains("privileged"), "{}", refused.message);
        assert!(findings.iter().all(|f| f.subject != "pod a/fine"));
        assert_eq!(
            find("selection", "namespace a").message,
            "of its 2 pods, tollgate would harden 1 and refuse 1 if they were created now"
        );
        let old = PreSnapshot { server_version: Ok((1, 29)), ..snapshot };
        assert_eq!(evaluate(&old, &Policy::default())[0].severity, Severity::Error);
    }

    #[test]
    fn each_piece_of_the_preflight_on_its_own() {
        let judged = |piece: &dyn Fn(&mut Vec<Finding>)| {
            let mut findings = Vec::new();
            piece(&mut findings);
            findings.into_iter().map(|f| (f.check, f.severity, f.message, f.hint.is_some())).collect::<Vec<_>>()
        };
        let beta = judged(&|f| kubernetes_version(f, &Ok((1, 31))));
        assert_eq!(beta.len(), 1);
        assert_eq!((beta[0].1, beta[0].3), (Severity::Warning, true));
        assert!(beta[0].2.starts_with("1.31: native sidecars are beta here"), "{beta:?}");
        let all = ["mutatingwebhookconfigurations", "validatingadmissionpolicies", "validatingadmissionpolicybindings"];
        assert_eq!(
            judged(&|f| admission_apis(f, &Ok(all.map(String::from).to_vec()))),
            [("admission-apis", Severity::Ok, "admissionregistration.k8s.io/v1 serves webhooks and admission policies".into(), false)]
        );
        assert_eq!(
            judged(&|f| admission_apis(f, &Err("forbidden".into()))),
            [("admission-apis", Severity::Warning, "not checked: forbidden".into(), false)]
        );
        assert_eq!(judged(&|f| nodes(f, &Err("forbidden".into()))), [("node", Severity::Warning, "not checked: forbidden".into(), false)]);
        assert_eq!(judged(&|f| nodes(f, &Ok(Vec::new()))), []);
        assert_eq!(
            judged(&|f| selection(f, &Policy::default(), &Ok(Vec::new()))),
            [("selection", Severity::Warning, "no namespace is selected yet".into(), true)]
        );
        let empty = judged(&|f| selection(f, &Policy::default(), &Ok(vec![("a".into(), Vec::new())])));
        assert_eq!(empty[0].2, "of its 0 pods, tollgate would harden 0 and refuse 0 if they were created now");
    }
}
