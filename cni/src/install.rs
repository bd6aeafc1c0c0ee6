//! Chaining the plugin into a node's CNI configuration, as the DaemonSet does (istio-cni and linkerd-cni
//! install the same way): the binary is copied into the node's CNI bin directory and an entry for it is
//! appended to the plugin list of the node's primary network configuration — the file the runtime loads,
//! the first in name order. Every write is a rename of a complete file, so a runtime never reads half a
//! binary or half a configuration.
//!
//! The DaemonSet re-applies this every few seconds (the node's own network plugin may rewrite its file) and
//! leaves everything in place when it stops: an upgrade or a restart of the DaemonSet never opens a window in
//! which pods start unlocked. Only `tollgate-cni uninstall` removes the entry, then the binary.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::plugin::{CAPABILITY, PLUGIN_TYPE};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no CNI network configuration in {0} yet (*.conflist, *.conf or *.json): waiting for the node's network plugin")]
    NoConfig(PathBuf),
    #[error("{path} is not a CNI network configuration: {why}")]
    NotAConfig { path: PathBuf, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io { path: path.to_path_buf(), source }
}

/// The entry tollgate adds to the node's plugin list: it asks the runtime for the pod's annotations.
pub fn plugin_entry() -> Value {
    json!({"type": PLUGIN_TYPE, "capabilities": {CAPABILITY: true}})
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// The configuration as a plugin list with tollgate's entry last (a single-plugin `.conf` becomes a list).
pub fn chain(conf: &Value) -> Result<Value, String> {
    let Value::Object(map) = conf else { return Err("not a JSON object".into()) };
    let mut out = map.clone();
    let mut plugins: Vec<Value> = match map.get("plugins") {
        Some(Value::Array(list)) => list.clone(),
        Some(_) => return Err("\"plugins\" is not a list".into()),
        None if map.contains_key("type") => {
            // A single plugin: its own keys become the list's one entry; version and name stay on top.
            let mut single: Map<String, Value> = map.clone();
            single.remove("cniVersion");
            single.remove("name");
            out = Map::new();
            for key in ["cniVersion", "name"] {
                if let Some(v) = map.get(key) {
                    out.insert(key.into(), v.clone());
                }
            }
            vec![Value::Object(single)]
        }
        None => return Err("neither \"plugins\" nor \"type\"".into()),
    };
    plugins.retain(|p| !is_ours(p));
    if plugins.is_empty() {
        return Err("no network plugin to chain after".into());
    }
    plugins.push(plugin_entry());
    out.insert("plugins".into(), Value::Array(plugins));
    Ok(Value::Object(out))
}

/// The configuration without tollgate's entry.
pub fn unchain(conf: &Value) -> Value {
    let mut out = conf.clone();
    if let Some(Value::Array(plugins)) = out.get_mut("plugins") {
        plugins.retain(|p| !is_ours(p));
    }
    out
}

pub fn is_chained(conf: &Value) -> bool {
    conf.get("plugins").and_then(Value::as_array).and_then(|p| p.last()) == Some(&plugin_entry())
}

/// Where things are on the node (as mounted into the installer's container).
#[derive(Debug, Clone)]
pub struct Paths {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The binary to install (the running one, by default).
    pub source: PathBuf,
}

impl Paths {
    fn installed_binary(&self) -> PathBuf {
        self.bin_dir.join(PLUGIN_TYPE)
    }
}

/// The runtime's primary network configuration: the first configuration file in name order.
pub fn primary_config(conf_dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    let mut files: Vec<PathBuf> = fs::read_dir(conf_dir)
        .map_err(io_err(conf_dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && matches!(p.extension().and_then(OsStr::to_str), Some("conflist" | "conf" | "json")))
        .collect();
    files.sort();
    Ok(files.into_iter().next())
}

fn read_config(path: &Path) -> Result<Value, InstallError> {
    let text = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&text).map_err(|e| InstallError::NotAConfig { path: path.into(), why: e.to_string() })
}

/// Writes `contents` to `path` by renaming a complete temporary file over it.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    let tmp = path.with_file_name(format!(".{}.tollgate-tmp", path.file_name().and_then(OsStr::to_str).unwrap_or("file")));
    fs::write(&tmp, contents).map_err(io_err(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Makes the node's configuration chain the plugin and its bin directory hold this binary. Returns what it
/// changed (nothing when all was in place).
pub fn install_once(paths: &Paths) -> Result<Vec<String>, InstallError> {
    let mut changes = Vec::new();
    let binary = fs::read(&paths.source).map_err(io_err(&paths.source))?;
    let target = paths.installed_binary();
    if fs::read(&target).ok().as_deref() != Some(&binary[..]) {
        write_atomically(&target, &binary, 0o755)?;
        changes.push(format!("installed {}", target.display()));
    }
    let primary = primary_config(&paths.conf_dir)?.ok_or_else(|| InstallError::NoConfig(paths.conf_dir.clone()))?;
    let conf = read_config(&primary)?;
    let chained = chain(&conf).map_err(|why| InstallError::NotAConfig { path: primary.clone(), why })?;
    let is_list = primary.extension() == Some(OsStr::new("conflist"));
    if is_list && chained == conf {
        return Ok(changes);
    }
    let list_path = primary.with_extension("conflist");
    let mut text = serde_json::to_vec_pretty(&chained).expect("JSON values serialize");
    text.push(b'\n');
    write_atomically(&list_path, &text, 0o644)?;
    if !is_list {
        fs::remove_file(&primary).map_err(io_err(&primary))?;
        changes.push(format!("converted {} to the plugin list {}", primary.display(), list_path.display()));
    }
    changes.push(format!("chained {PLUGIN_TYPE} into {}", list_path.display()));
    Ok(changes)
}

/// Whether the node is set up: binary in place and identical, primary configuration chained. `Err` says
/// what is missing.
pub fn check(paths: &Paths) -> Result<(), String> {
    let binary = fs::read(&paths.source).map_err(|e| format!("{}: {e}", paths.source.display()))?;
    let target = paths.installed_binary();
    match fs::read(&target) {
        Ok(b) if b == binary => {}
        Ok(_) => return Err(format!("{} is another version", target.display())),
        Err(e) => return Err(format!("{}: {e}", target.display())),
    }
    let primary = primary_config(&paths.conf_dir)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| InstallError::NoConfig(paths.conf_dir.clone()).to_string())?;
    let conf = read_config(&primary).map_err(|e| e.to_string())?;
    if is_chained(&conf) { Ok(()) } else { Err(format!("{} does not end with the {PLUGIN_TYPE} plugin", primary.display())) }
}

/// Removes tollgate's entry from every configuration in the directory, then the binary. Pods keep the rules
/// they have; pods created afterwards are not locked (and, under `egressLock: required`, do not start).
pub fn uninstall(paths: &Paths) -> Result<Vec<String>, InstallError> {
    let mut changes = Vec::new();
    for entry in fs::read_dir(&paths.conf_dir).map_err(io_err(&paths.conf_dir))?.filter_map(Result::ok) {
        let path = entry.path();
        if path.extension() != Some(OsStr::new("conflist")) {
            continue;
        }
        let Ok(conf) = read_config(&path) else { continue };
        let without = unchain(&conf);
        if without != conf {
            let mut text = serde_json::to_vec_pretty(&without).expect("JSON values serialize");
            text.push(b'\n');
            write_atomically(&path, &text, 0o644)?;
            changes.push(format!("removed {PLUGIN_TYPE} from {}", path.display()));
        }
    }
    let target = paths.installed_binary();
    match fs::remove_file(&target) {
        Ok(()) => changes.push(format!("removed {}", target.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(InstallError::Io { path: target, source: e }),
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_list_gets_the_entry_last_once() {
        let conf = json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "bridge"}, {"type": "portmap"}]});
        let chained = chain(&conf).unwrap();
        assert_eq!(chained["plugins"].as_array().unwrap().len(), 3);
        assert!(is_chained(&chained));
        assert_eq!(chain(&chained).unwrap(), chained, "idempotent");
        assert_eq!(unchain(&chained), conf);
        // An entry not last (another installer appended after us) moves to the end.
        let mut moved = chained.clone();
        moved["plugins"].as_array_mut().unwrap().push(json!({"type": "bandwidth"}));
        let again = chain(&moved).unwrap();
        assert!(is_chained(&again));
        assert_eq!(again["plugins"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn a_single_plugin_becomes_a_list() {
        let conf = json!({"cniVersion": "0.4.0", "name": "net", "type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}});
        let chained = chain(&conf).unwrap();
        assert_eq!(chained["cniVersion"], "0.4.0");
        assert_eq!(chained["plugins"][0], json!({"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}}));
        assert!(is_chained(&chained));
    }

    #[test]
    fn what_is_not_a_configuration_is_refused() {
        for conf in [json!([]), json!({"name": "x"}), json!({"plugins": 3}), json!({"plugins": [{"type": "tollgate-cni"}]})] {
            assert!(chain(&conf).is_err(), "{conf}");
        }
    }

    #[test]
    fn install_converts_chains_and_uninstall_reverts() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&conf).unwrap();
        let source = dir.path().join("source");
        fs::write(&source, b"binary v1").unwrap();
        let paths = Paths { bin_dir: bin.clone(), conf_dir: conf.clone(), source: source.clone() };
        assert!(matches!(install_once(&paths), Err(InstallError::NoConfig(_))));
        assert!(bin.join("tollgate-cni").exists(), "the binary goes first, so a configuration never names a missing plugin");
        fs::write(conf.join("20-other.conflist"), r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"x"}]}"#).unwrap();
        fs::write(conf.join("10-net.conf"), r#"{"cniVersion":"1.0.0","name":"a","type":"bridge"}"#).unwrap();
        assert!(check(&paths).is_err());
        let changes = install_once(&paths).unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(!conf.join("10-net.conf").exists());
        assert_eq!(primary_config(&conf).unwrap().unwrap(), conf.join("10-net.conflist"));
        check(&paths).unwrap();
        assert_eq!(install_once(&paths).unwrap(), Vec::<String>::new(), "nothing to do the second time");
        assert_eq!(fs::metadata(bin.join("tollgate-cni")).unwrap().permissions().mode() & 0o777, 0o755);
        fs::write(&source, b"binary v2").unwrap();
        assert!(check(&paths).unwrap_err().contains("another version"));
        assert_eq!(install_once(&paths).unwrap().len(), 1);
        let other = fs::read_to_string(conf.join("20-other.conflist")).unwrap();
        assert!(!other.contains("tollgate-cni"), "only the primary configuration is chained");
        uninstall(&paths).unwrap();
        assert!(!bin.join("tollgate-cni").exists());
        let primary = read_config(&conf.join("10-net.conflist")).unwrap();
        assert!(!is_chained(&primary));
        assert_eq!(primary["plugins"], json!([{"type": "bridge"}]));
    }
}
