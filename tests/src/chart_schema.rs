//! The Helm chart's `values.schema.json`: its `policy` and `proxyConfig` come from the Rust types the webhook
//! and the proxy parse them into (`tollgate-webhook policy-schema`, `tollgate-proxy config-schema`), so the
//! chart cannot accept what they refuse, nor refuse what they accept, without a test failing. The rest of the
//! file (the chart's own values) is written by hand. `cargo run -p tollgate-e2e --bin tollgate-chart-schema --
//! --write` brings the file up to date.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn path() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace");
    workspace.join("charts/tollgate/values.schema.json")
}

fn schema_of(binary: &str, subcommand: &str) -> Result<Value, String> {
    let bin = crate::workspace_bin(binary);
    let out = Command::new(&bin).arg(subcommand).output().map_err(|e| format!("{}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!("{binary} {subcommand}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{binary} {subcommand}: {e}"))
}

/// `current` (the file's text) with its generated parts replaced; the whole file's text.
pub fn generate(current: &str) -> Result<String, String> {
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
