//! The Helm chart's generated files. `values.schema.json`: its `policy` and `proxyConfig` come from the Rust
//! types the webhook and the proxy parse them into (`tollgate-webhook policy-schema`, `tollgate-proxy
//! config-schema`), so the chart cannot accept what they refuse, nor refuse what they accept, without a test
//! failing; the rest of the file (the chart's own values) is written by hand. `README.md`: helm-docs writes it
//! from `values.yaml`'s comments and `README.md.gotmpl`, so every value is documented where it is defined.
//! `cargo run -p tollgate-e2e --bin tollgate-chart-files -- --write` brings both up to date.

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

pub fn files() -> [Generated; 2] {
    [
        Generated { path: chart_dir().join("values.schema.json"), generate: schema },
        Generated { path: chart_dir().join("README.md"), generate: readme },
    ]
}

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
