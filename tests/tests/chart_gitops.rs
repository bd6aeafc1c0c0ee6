//! The chart under GitOps controllers. Argo CD renders a Helm chart with `helm template` — its own flags:
//! `--name-template`, `--namespace`, `--kube-version`, `--api-versions` for every API the cluster serves,
//! `--include-crds`, and the Application's values (argo-cd util/helm/cmd.go) — and applies the result itself:
//! Helm hooks become its own (pre-install/pre-upgrade PreSync, post-install/post-upgrade PostSync, pre-delete
//! PreDelete where supported, test skipped; hook-weight their wave; resource-policy keep `Delete=false`: its
//! documentation, "Helm Hooks"), and everything else is applied in the order of `argocd.argoproj.io/sync-wave`,
//! a wave once the one before is healthy, and deleted in the reverse order. This renders the chart that way
//! in every certificate mode and checks what the README's GitOps section promises: certificates before the
//! webhook's pods, the webhook configuration after the webhook's Deployment and Service (so before them on
//! deletion), the pod guard before it, the require-hardening policy after it and kept, the egress lock last,
//! the hooks where Argo CD runs them and the test hooks never applied. The README's Application and
//! HelmRelease are read from the README itself and rendered as Argo CD and Flux would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_e2e::chart_files;

/// What the cluster serves, as Argo CD passes it (`group/version` and `group/version/Kind`).
const API_VERSIONS: &[&str] = &[
    "v1",
    "v1/ConfigMap",
    "v1/Secret",
    "v1/Service",
    "v1/ServiceAccount",
    "v1/ResourceQuota",
    "apps/v1",
    "apps/v1/DaemonSet",
    "apps/v1/Deployment",
    "batch/v1",
    "batch/v1/CronJob",
    "batch/v1/Job",
    "policy/v1",
    "policy/v1/PodDisruptionBudget",
    "rbac.authorization.k8s.io/v1",
    "networking.k8s.io/v1",
    "networking.k8s.io/v1/NetworkPolicy",
    "admissionregistration.k8s.io/v1",
    "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration",
    "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",
    "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicyBinding",
    "cert-manager.io/v1",
    "cert-manager.io/v1/Certificate",
    "cert-manager.io/v1/Issuer",
    "monitoring.coreos.com/v1",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
];

/// `helm template` as Argo CD runs it, with `values` as the Application's valuesObject.
fn argo_render(release: &str, namespace: &str, values: &Value) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(values).unwrap()).unwrap();
    let mut command = Command::new(tollgate_e2e::bin_dir().join("helm"));
    command.arg("template").arg(chart_files::chart_dir()).args(["--name-template", release, "--namespace", namespace]);
    command.args(["--kube-version", "1.31.4", "--values"]).arg(&file);
    for api in API_VERSIONS {
        command.args(["--api-versions", api]);
    }
    command.arg("--include-crds");
    let out = command.output().unwrap();
    assert!(out.status.success(), "helm template as Argo CD runs it, values {values}: {}", String::from_utf8_lossy(&out.stderr));
    serde_yaml_ng::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    PreSync,
    Sync,
    PostSync,
    /// Run when the Application is deleted, by Argo CD releases with PreDelete hooks; ignored by the others.
    PreDelete,
    /// Never applied (Helm test hooks).
    Skipped,
}

/// An object as Argo CD sees it.
#[derive(Debug, Clone)]
struct Argo {
    kind: String,
    name: String,
    phase: Phase,
    wave: i64,
    /// `helm.sh/resource-policy: keep`: `Delete=false`.
    kept: bool,
}

fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["annotations"][key].as_str()
}

/// Argo CD's reading of an object's annotations.
fn argo(object: &Value) -> Argo {
    let (kind, name) = (object["kind"].as_str().unwrap().to_owned(), object["metadata"]["name"].as_str().unwrap().to_owned());
    assert!(
        annotation(object, "argocd.argoproj.io/hook").is_none(),
        "{kind} {name}: an Argo CD hook would make Argo CD ignore its Helm hook"
    );
    let phase = match annotation(object, "helm.sh/hook") {
        None => Phase::Sync,
        Some(hooks) => {
            let phases: BTreeSet<Phase> = hooks
                .split(',')
                .map(|hook| match hook.trim() {
                    "pre-install" | "pre-upgrade" => Phase::PreSync,
                    "post-install" | "post-upgrade" => Phase::PostSync,
                    "pre-delete" => Phase::PreDelete,
                    "test" | "test-success" | "test-failure" => Phase::Skipped,
                    other => panic!("{kind} {name}: hook {other} has no Argo CD equivalent the chart relies on"),
                })
                .collect();
            assert_eq!(phases.len(), 1, "{kind} {name}: hooks {hooks} would run in different Argo CD phases");
            phases.into_iter().next().unwrap()
        }
    };
    // Argo CD: the sync-wave annotation, else the hook weight, else 0.
    let wave = annotation(object, "argocd.argoproj.io/sync-wave")
        .or_else(|| annotation(object, "helm.sh/hook-weight"))
        .map(|w| w.parse().unwrap_or_else(|_| panic!("{kind} {name}: wave {w}")))
        .unwrap_or(0);
    if phase != Phase::Sync {
        assert!(annotation(object, "argocd.argoproj.io/sync-wave").is_none(), "{kind} {name}: a hook orders by its hook-weight");
    }
    Argo { kind, name, phase, wave, kept: annotation(object, "helm.sh/resource-policy") == Some("keep") }
}

struct Rendered {
    objects: Vec<Value>,
    argo: Vec<Argo>,
}

impl Rendered {
    fn new(release: &str, namespace: &str, values: &Value) -> Rendered {
        let objects = argo_render(release, namespace, values);
        let argo = objects.iter().map(argo).collect();
        Rendered { objects, argo }
    }

    fn get(&self, kind: &str, name: &str) -> &Argo {
        let found: Vec<&Argo> = self.argo.iter().filter(|a| a.kind == kind && a.name == name).collect();
        assert_eq!(found.len(), 1, "{kind} {name}: {found:?}");
        found[0]
    }

    fn object(&self, kind: &str, name: &str) -> &Value {
        self.objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name).unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    fn wave(&self, kind: &str, name: &str) -> i64 {
        let a = self.get(kind, name);
        assert_eq!(a.phase, Phase::Sync, "{kind} {name}");
        a.wave
    }

    fn in_phase(&self, phase: Phase) -> Vec<&Argo> {
        let mut all: Vec<&Argo> = self.argo.iter().filter(|a| a.phase == phase).collect();
        all.sort_by_key(|a| a.wave);
        all
    }

    fn named(&self, phase: Phase) -> Vec<(String, String, i64)> {
        self.in_phase(phase).into_iter().map(|a| (a.kind.clone(), a.name.clone(), a.wave)).collect()
    }

    /// What deleting the Application removes, in Argo CD's order (highest wave first; kept objects stay).
    fn deletion_order(&self) -> Vec<(String, String)> {
        let mut sync: Vec<&Argo> = self.in_phase(Phase::Sync).into_iter().filter(|a| !a.kept).collect();
        sync.sort_by_key(|a| std::cmp::Reverse(a.wave));
        sync.into_iter().map(|a| (a.kind.clone(), a.name.clone())).collect()
    }
}

fn values(mode: &str) -> Value {
    let mut values = json!({
        "certificates": {"mode": mode},
        "analysisNamespaces": [{"name": "flame-analyses"}],
        "egressLock": {"enabled": true, "platform": "gke"},
        "webhook": {"events": {"enabled": true}},
        "monitoring": {"serviceMonitor": {"enabled": true}, "podMonitor": {"enabled": true}, "prometheusRule": {"enabled": true}, "dashboard": {"enabled": true}},
        "selection": {"podSelector": {"matchLabels": {"component": "flame-analysis"}}},
    });
    if mode == "existingSecret" {
        values["certificates"]["existingSecret"] = json!("tollgate-tls-from-vault");
        values["webhook"]["caBundle"] = json!("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    }
    values
}

const CONFIG_KINDS: &[&str] =
    &["ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "NetworkPolicy", "ResourceQuota"];

#[test]
fn argo_cd_applies_the_chart_in_the_order_it_needs() {
    for mode in ["selfSigned", "certManager", "existingSecret"] {
        let r = Rendered::new("tollgate", "tollgate", &values(mode));
        let deployment = r.wave("Deployment", "tollgate-webhook");
        let service = r.wave("Service", "tollgate-webhook");
        let webhook = r.wave("MutatingWebhookConfiguration", "tollgate");
        // The webhook configuration only once the webhook serves (Argo CD waits for the Deployment to be
        // available before the next wave), so on deletion it goes first.
        assert!(
            webhook > deployment && webhook > service,
            "{mode}: webhook configuration {webhook}, Deployment {deployment}, Service {service}"
        );
        assert_eq!(r.wave("PodDisruptionBudget", "tollgate-webhook"), deployment, "{mode}");
        // What the webhook's pods need, before them.
        for (kind, name) in
            [("ConfigMap", "tollgate-policy"), ("ServiceAccount", "tollgate-webhook"), ("NetworkPolicy", "tollgate-webhook")]
        {
            assert!(r.wave(kind, name) < deployment, "{mode}: {kind} {name}");
        }
        // Every ServiceAccount, role, ConfigMap and NetworkPolicy is in the first wave: before anything that uses
        // it (the route tables and NetworkPolicies of the analysis namespaces before any pod is hardened).
        let first = r.in_phase(Phase::Sync).iter().map(|a| a.wave).min().unwrap();
        for a in r.in_phase(Phase::Sync) {
            if CONFIG_KINDS.contains(&a.kind.as_str()) && a.name != "tollgate-dashboard" {
                assert_eq!(a.wave, first, "{mode}: {} {}", a.kind, a.name);
            }
        }
        // Certificates before the webhook's pods mount their Secret.
        let issued: Vec<&Argo> = r.argo.iter().filter(|a| a.kind == "Certificate" || a.kind == "Issuer").collect();
        assert_eq!(issued.len(), if mode == "certManager" { 4 } else { 0 }, "{mode}");
        for a in issued {
            assert!(a.phase == Phase::Sync && a.wave < deployment && a.wave > first, "{mode}: {a:?}");
        }
        // The pod guard before the first hardened pod and gone only after the webhook configuration; the
        // require-hardening policy after it and kept (Delete=false).
        for kind in ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] {
            let guard = r.get(kind, "tollgate-pod-guard");
            assert!(guard.wave < webhook && guard.wave > deployment && !guard.kept, "{mode}: {guard:?}");
            let require = r.get(kind, "tollgate-require-hardening");
            assert!(require.wave > webhook && require.kept, "{mode}: {require:?}");
        }
        // The egress lock last (a node that cannot have it holds back nothing else), its quota first.
        let lock = r.wave("DaemonSet", "tollgate-cni");
        assert_eq!(lock, r.in_phase(Phase::Sync).iter().map(|a| a.wave).max().unwrap(), "{mode}");
        assert!(r.wave("ResourceQuota", "tollgate-cni-critical-pods") < lock);
        // Deleting the Application: the webhook configuration before the Deployment and Service it calls, the
        // require-hardening policy not at all.
        let order = r.deletion_order();
        let at = |kind: &str, name: &str| {
            order.iter().position(|(k, n)| k == kind && n == name).unwrap_or_else(|| panic!("{kind} {name} not deleted"))
        };
        assert!(at("MutatingWebhookConfiguration", "tollgate") < at("Deployment", "tollgate-webhook"));
        assert!(at("MutatingWebhookConfiguration", "tollgate") < at("Service", "tollgate-webhook"));
        assert!(at("MutatingWebhookConfiguration", "tollgate") < at("ValidatingAdmissionPolicy", "tollgate-pod-guard"));
        assert!(!order.iter().any(|(_, n)| n == "tollgate-require-hardening"));

        // The hooks, where Argo CD runs them. Validation first, in every mode; the certificate Jobs only with
        // selfSigned, their RBAC before them.
        let pre = r.named(Phase::PreSync);
        let post = r.named(Phase::PostSync);
        let validate = vec![("ConfigMap".to_owned(), "tollgate-validate".to_owned(), -10), ("Job".into(), "tollgate-validate".into(), -9)];
        if mode == "selfSigned" {
            assert_eq!(pre[..2], validate[..], "{pre:?}");
            let rbac: Vec<i64> = pre.iter().filter(|(_, n, _)| n == "tollgate-certs-secrets").map(|(_, _, w)| *w).collect();
            assert_eq!(rbac, [-5, -5, -5, -5, -5, 0], "the RBAC, then the Job: {pre:?}");
            assert_eq!(pre.last().unwrap(), &("Job".to_owned(), "tollgate-certs-secrets".to_owned(), 0));
            assert_eq!(post, [("Job".to_owned(), "tollgate-certs".to_owned(), 0)]);
            // The Job the PostSync hook runs is what the CronJob runs every day.
            assert!(r.wave("CronJob", "tollgate-certs-renew") >= first);
        } else {
            assert_eq!(pre, validate, "{mode}: only the validation runs before a sync");
            assert!(post.is_empty(), "{mode}: {post:?}");
        }
        // Deleting the Application: the unregister Job, where Argo CD has PreDelete hooks (the waves do the same
        // where it has not).
        let pre_delete = r.named(Phase::PreDelete);
        assert_eq!(pre_delete.last().unwrap(), &("Job".to_owned(), "tollgate-unregister".to_owned(), 0), "{pre_delete:?}");
        assert!(pre_delete[..pre_delete.len() - 1].iter().all(|(_, n, w)| n == "tollgate-unregister" && *w < 0), "{pre_delete:?}");
        // `helm test` never runs under Argo CD, and none of its objects (a pod, its rights) is applied.
        for a in &r.argo {
            assert_eq!(a.name == "tollgate-test", a.phase == Phase::Skipped, "{mode}: {a:?}");
        }

        // The caBundle: rendered with existingSecret (nothing drifts); written by cert-manager or the hook
        // otherwise, which the README tells Argo CD to ignore.
        let configuration = r.object("MutatingWebhookConfiguration", "tollgate");
        for webhook in configuration["webhooks"].as_array().unwrap() {
            assert_eq!(webhook["clientConfig"].get("caBundle").is_some(), mode == "existingSecret", "{mode}: {webhook}");
        }
        assert_eq!(annotation(configuration, "cert-manager.io/inject-ca-from").is_some(), mode == "certManager");
    }
}

// ---- the README's GitOps section ------------------------------------------------------------------------

fn readme_gitops() -> String {
    let readme = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let start = readme.find("\n## GitOps\n").expect("README.md has a GitOps section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map(|i| i + 4).unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// The YAML blocks of the section, by kind.
fn readme_manifests() -> BTreeMap<String, Value> {
    let section = readme_gitops();
    let mut found = BTreeMap::new();
    for block in section.split("```yaml\n").skip(1) {
        let yaml = &block[..block.find("```").unwrap()];
        let value: Value = serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("README GitOps YAML: {e}\n{yaml}"));
        found.insert(value["kind"].as_str().unwrap().to_owned(), value);
    }
    found
}

#[test]
fn the_readmes_argo_cd_application_renders_and_ignores_the_ca_bundle() {
    let application = readme_manifests().remove("Application").expect("an Argo CD Application in the README");
    let spec = &application["spec"];
    let helm = &spec["source"]["helm"];
    assert_eq!(spec["source"]["path"], "charts/tollgate");
    assert_eq!(helm["releaseName"], application["metadata"]["name"], "release name = Application name (label tracking)");
    assert_eq!(application["metadata"]["finalizers"], json!(["resources-finalizer.argocd.argoproj.io"]), "cascading deletion");
    let options: Vec<&str> = spec["syncPolicy"]["syncOptions"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(options.contains(&"RespectIgnoreDifferences=true") && options.contains(&"CreateNamespace=true"), "{options:?}");
    let release = helm["releaseName"].as_str().unwrap();
    let namespace = spec["destination"]["namespace"].as_str().unwrap();
    let r = Rendered::new(release, namespace, &helm["valuesObject"]);
    // The ignored difference is exactly the rendered webhook configuration's caBundle.
    let ignored = &spec["ignoreDifferences"][0];
    assert_eq!(ignored["group"], "admissionregistration.k8s.io");
    assert_eq!(ignored["kind"], "MutatingWebhookConfiguration");
    let configuration = r.object("MutatingWebhookConfiguration", ignored["name"].as_str().unwrap());
    assert_eq!(ignored["jqPathExpressions"], json!([".webhooks[]?.clientConfig.caBundle"]));
    assert!(
        configuration["webhooks"].as_array().unwrap().iter().all(|w| w["clientConfig"].get("caBundle").is_none()),
        "cainjector writes it"
    );
    assert_eq!(annotation(configuration, "cert-manager.io/inject-ca-from"), Some(format!("{namespace}/tollgate-webhook").as_str()));
    assert!(r.wave("MutatingWebhookConfiguration", "tollgate") > r.wave("Deployment", "tollgate-webhook"));
    // Its egress lock is microk8s's.
    let lock = r.object("DaemonSet", "tollgate-cni");
    assert_eq!(lock["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"], "/var/snap/microk8s");

    // The wave table lists the waves the chart has.
    let section = readme_gitops();
    let table: BTreeSet<i64> = section.lines().filter_map(|l| l.strip_prefix("| ")?.split(" |").next()?.trim().parse().ok()).collect();
    let chart: BTreeSet<i64> =
        Rendered::new("tollgate", "tollgate", &values("certManager")).in_phase(Phase::Sync).iter().map(|a| a.wave).collect();
    assert_eq!(table, chart, "the README's wave table");
}

#[test]
fn the_readmes_flux_helmrelease_ignores_every_webhooks_ca_bundle() {
    let release = readme_manifests().remove("HelmRelease").expect("a Flux HelmRelease in the README");
    let spec = &release["spec"];
    assert_eq!(spec["test"]["enable"], true, "helm test (tollgate check) after every install and upgrade");
    assert_eq!(spec["chart"]["spec"]["chart"], "./charts/tollgate");
    let name = spec["releaseName"].as_str().unwrap();
    let namespace = release["metadata"]["namespace"].as_str().unwrap();
    // Flux installs with Helm: the webhook configuration as `helm install` renders it.
    let r = Rendered::new(name, namespace, &spec["values"]);
    let ignore = &spec["driftDetection"]["ignore"][0];
    assert_eq!(ignore["target"], json!({"kind": "MutatingWebhookConfiguration", "name": "tollgate"}));
    let webhooks = r.object("MutatingWebhookConfiguration", "tollgate")["webhooks"].as_array().unwrap().len();
    let paths: Vec<String> = (0..webhooks).map(|i| format!("/webhooks/{i}/clientConfig/caBundle")).collect();
    assert_eq!(ignore["paths"], json!(paths), "one path per webhook of the configuration");
    let lock = r.object("DaemonSet", "tollgate-cni");
    assert_eq!(lock["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"], "/var/lib/rancher/k3s/data");
}
