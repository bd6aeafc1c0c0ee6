//! The Helm chart's generated files. `values.schema.json`: its `policy` and `proxyConfig` come from the Rust
//! types the webhook and the proxy parse them into (`tollgate-webhook policy-schema`, `tollgate-proxy
//! config-schema`), so the chart cannot accept what they refuse, nor refuse what they accept, without a test
//! failing; the rest of the file (the chart's own values) is written by hand. `README.md`: helm-docs writes it
//! from `values.yaml`'s comments and `README.md.gotmpl`, so every value is documented where it is defined.
//! `values-flame.yaml`'s `proxyConfig` is `proxy/examples/flame.yaml`, the FLAME route table, so the two
//! cannot drift apart. `manifests/flame/tollgate-flame.yaml`, the FLAME profile without Helm, is what the
//! chart renders with `values-flame.yaml` (the objects it changes), so the two cannot drift apart either.
//! `cargo run -p tollgate-e2e --bin tollgate-chart-files -- --write` brings them all up to date.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn chart_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace");
    workspace.join("charts/tollgate")
}

/// A generated file: where it lives, and what it should hold given what it holds now.
pub struct Generated {
    pub path: PathBuf,
    pub generate: fn(&str) -> Result<String, String>,
}

pub fn files() -> [Generated; 4] {
    [
        Generated { path: chart_dir().join("values.schema.json"), generate: schema },
        Generated { path: chart_dir().join("README.md"), generate: readme },
        // In this order: the FLAME manifests are rendered from values-flame.yaml as just written.
        Generated { path: chart_dir().join("values-flame.yaml"), generate: flame_values },
        Generated { path: flame_manifests_path(), generate: flame_manifests },
    ]
}

fn workspace_dir() -> PathBuf {
    chart_dir().parent().and_then(Path::parent).expect("charts/tollgate is in the workspace").to_path_buf()
}

/// The FLAME route table, which `values-flame.yaml` carries as its `proxyConfig`.
pub fn flame_routes_path() -> PathBuf {
    workspace_dir().join("proxy/examples/flame.yaml")
}

/// The FLAME profile as plain manifests.
pub fn flame_manifests_path() -> PathBuf {
    workspace_dir().join("manifests/flame/tollgate-flame.yaml")
}

/// The line after which `values-flame.yaml` is the route table; everything before it is written by hand.
const PROXY_CONFIG: &str = "proxyConfig:";

/// `values-flame.yaml` (`current`) with everything after its `proxyConfig:` line replaced by
/// `proxy/examples/flame.yaml`, indented (comments included).
pub fn flame_values(current: &str) -> Result<String, String> {
    let routes_path = flame_routes_path();
    let routes = std::fs::read_to_string(&routes_path).map_err(|e| format!("{}: {e}", routes_path.display()))?;
    let mut out = String::new();
    let mut lines = current.lines();
    loop {
        let line = lines.next().ok_or_else(|| format!("values-flame.yaml: no line {PROXY_CONFIG:?} (the route table goes after it)"))?;
        out.push_str(line);
        out.push('\n');
        if line == PROXY_CONFIG {
            break;
        }
    }
    for line in routes.lines() {
        if !line.is_empty() {
            out.push_str("  ");
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
}

/// What `helm template` renders with `values-flame.yaml` that differs from the plain manifests: the
/// policy, the webhook configuration (its objectSelector), the require-hardening binding, and the FLAME
/// namespace's route table and NetworkPolicies. Helm's own labels are left out; the rest is helm's text.
pub fn flame_manifests(_current: &str) -> Result<String, String> {
    let helm = crate::bin_dir().join("helm");
    let out = Command::new(&helm)
        .args(["template", "tollgate"])
        .arg(chart_dir())
        .args(["--namespace", "tollgate", "--values"])
        .arg(chart_dir().join("values-flame.yaml"))
        .output()
        .map_err(|e| format!("{}: {e}", helm.display()))?;
    if !out.status.success() {
        return Err(format!("helm template -f values-flame.yaml: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let rendered = String::from_utf8(out.stdout).map_err(|e| format!("helm template: {e}"))?;
    let wanted: &[(&str, &str)] = &[
        ("ConfigMap", "tollgate-policy"),
        ("MutatingWebhookConfiguration", "tollgate"),
        ("ValidatingAdmissionPolicyBinding", "tollgate-require-hardening"),
        ("ConfigMap", "tollgate-proxy-routes"),
        ("NetworkPolicy", "tollgate-analysis"),
        ("NetworkPolicy", "tollgate-analysis-hardened"),
    ];
    let mut text = String::from(FLAME_MANIFESTS_HEADER);
    let mut found = Vec::new();
    for document in rendered.split("\n---\n") {
        let document = document.strip_prefix("---\n").unwrap_or(document);
        let value: serde_json::Value = serde_yaml_ng::from_str(document).map_err(|e| format!("helm template: {e}"))?;
        let id = (value["kind"].as_str().unwrap_or(""), value["metadata"]["name"].as_str().unwrap_or(""));
        let Some(index) = wanted.iter().position(|w| *w == id) else { continue };
        found.push(index);
        text.push_str("---\n");
        for line in document.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("helm.sh/chart:") || trimmed == "app.kubernetes.io/managed-by: Helm" {
                continue;
            }
            text.push_str(line);
            text.push('\n');
        }
    }
    for (index, (kind, name)) in wanted.iter().enumerate() {
        if !found.contains(&index) {
            return Err(format!("helm template -f values-flame.yaml rendered no {kind} {name}"));
        }
    }
    Ok(text)
}

const FLAME_MANIFESTS_HEADER: &str = "\
# tollgate for a FLAME node without Helm: what charts/tollgate/values-flame.yaml changes, rendered by the chart
# (written by `cargo run -p tollgate-e2e --bin tollgate-chart-files -- --write`; a test fails when it differs).
# Apply it after the plain manifests, which it partly replaces (the policy, the webhook configuration, the
# require-hardening binding), with the egress lock's installer (the profile requires the lock; set its
# TOLLGATE_CNI_* directories for your nodes first, see cni/README.md), then label the FLAME namespace:
#
#   kubectl apply -f manifests/ -f manifests/optional/cni.yaml -f manifests/flame/
#   kubectl label namespace flame tollgate.dev/inject=enabled
#
# It assumes the FLAME chart's release \"flame\" in namespace \"flame\"; edit values-flame.yaml and regenerate for
# others. Only pods labeled component: flame-analysis are tollgate's there; see the README's FLAME section.
";

/// The chart's README, as helm-docs writes it.
pub fn readme(_current: &str) -> Result<String, String> {
    let helm_docs = crate::bin_dir().join("helm-docs");
    let charts = chart_dir().parent().expect("charts/").to_path_buf();
    let out = Command::new(&helm_docs)
        .args(["--chart-search-root"])
        .arg(&charts)
        .args(["--template-files", "README.md.gotmpl", "--dry-run", "--log-level", "warning"])
        .output()
        .map_err(|e| format!("{}: {e}", helm_docs.display()))?;
    if !out.status.success() {
        return Err(format!("helm-docs: {}", String::from_utf8_lossy(&out.stderr)));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("helm-docs: {e}"))
}

fn schema_of(binary: &str, subcommand: &str) -> Result<Value, String> {
    let bin = crate::workspace_bin(binary);
    let out = Command::new(&bin).arg(subcommand).output().map_err(|e| format!("{}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!("{binary} {subcommand}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{binary} {subcommand}: {e}"))
}

/// `current` (values.schema.json's text) with its generated parts replaced; the whole file's text.
pub fn schema(current: &str) -> Result<String, String> {
    let mut schema: Value = serde_json::from_str(current).map_err(|e| format!("values.schema.json: {e}"))?;
    let properties = schema["properties"].as_object_mut().ok_or("values.schema.json: no properties")?;
    for (key, binary, subcommand, what) in [
        (
            "policy",
            "tollgate-webhook",
            "policy-schema",
            "tollgate-webhook's policy, merged over its embedded default (`tollgate-webhook default-policy`)",
        ),
        ("proxyConfig", "tollgate-proxy", "config-schema", "tollgate-proxy's route table and settings (proxy/README.md)"),
    ] {
        let mut part = schema_of(binary, subcommand)?;
        part["description"] = Value::from(format!("{what}; generated from its types by `{binary} {subcommand}`"));
        properties.insert(key.to_owned(), part);
    }
    Ok(format!("{}\n", serde_json::to_string_pretty(&schema).expect("a Value serializes")))
}
