#![allow(dead_code)]

pub mod net;
pub mod pss;

use std::path::PathBuf;

use serde_json::Value;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("test YAML parses")
}

/// Set `TOLLGATE_BLESS=1` to rewrite expected files from the current output (then review the diff).
pub fn blessing() -> bool {
    std::env::var_os("TOLLGATE_BLESS").is_some()
}

/// `pod` with the seal taken out of its `tollgate.dev/status` (a webhook seals with its own key, derived from
/// its TLS key; `harden` without one with the offline key).
pub fn without_seal(pod: &Value) -> Value {
    let mut pod = pod.clone();
    if let Some(Value::String(status)) = pod.pointer_mut("/metadata/annotations/tollgate.dev~1status")
        && let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(status)
    {
        object.shift_remove("seal");
        *status = Value::Object(object).to_string();
    }
    pod
}
