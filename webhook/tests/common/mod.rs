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
