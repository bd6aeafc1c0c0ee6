//! Chaining the plugin into a node's CNI configuration, as the DaemonSet does (istio-cni and linkerd-cni
//! install the same way): the binary is copied into the node's CNI bin directory and an entry for it is
//! appended to the plugin list of the node's primary network configuration — the file the runtime loads,
//! the first in name order. Every write is a rename of a complete file, so a runtime never reads half a
//! binary or half a configuration.
//!
//! Where those directories are depends on the platform (the chart's `egressLock.platform`): kubeadm, rke2,
//! EKS, AKS keep the runtime's defaults (`/etc/cni/net.d`, `/opt/cni/bin`); microk8s keeps both under its
//! snap's data (`/var/snap/microk8s/current/args/cni-network`, `…/opt/cni/bin`); GKE's plugins are in
//! `/home/kubernetes/bin`; k3s's configuration is `/var/lib/rancher/k3s/agent/etc/cni/net.d`, and its plugins
//! are in a directory that changed over time: `data/cni` (a stable directory of links into the bundle) since
//! the k3s releases of October 2024 (k3s-io/k3s#10868), `data/<bundle hash>/bin` before, which
//! changes with every k3s upgrade. [`BinDir::K3sData`] installs into each of them that exists.
//!
//! Nothing is chained unless everything it needs is there: the bin directories exist, the configuration
//! directory holds a configuration, and (with [`Paths::verify_bin_dir`]) the configuration's network plugin
//! is in a bin directory — the sign that the runtime looks for plugins there. A configuration naming
//! tollgate-cni where the runtime cannot find it would fail every pod sandbox on the node, locked or not.
//! Each refusal names what it did not find, as the node knows it ([`Paths::host_root`]).
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

/// The configuration files a runtime loads (libcni's extensions).
pub const CONFIG_EXTENSIONS: [&str; 3] = ["conflist", "conf", "json"];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{what} {path} does not exist or is not a directory")]
    MissingDir { what: &'static str, path: String },
    #[error(
        "no CNI network configuration in {dir} (no *.conflist, *.conf or *.json file; {found}): the container runtime \
         reads its network configuration from another directory on this node, or the network plugin has not written \
         it yet"
    )]
    NoConfig { dir: String, found: String },
    #[error(
        "no k3s CNI bin directory under {data_dir}: neither {data_dir}/cni nor a {data_dir}/<bundle>/bin holding k3s's \
         cni binary (is this node k3s, with its data directory where the DaemonSet mounts it?)"
    )]
    NoK3sBinDir { data_dir: String },
    #[error("{path} is not a CNI network configuration: {why}")]
    NotAConfig { path: String, why: String },
    #[error(
        "{config} runs the network plugin \"{plugin}\", but {bin_dirs} holds no {plugin}: the container runtime \
         looks for CNI plugins in another directory, and a configuration naming {PLUGIN_TYPE} there would fail every \
         pod sandbox on this node"
    )]
    PluginNotInBinDir { config: String, plugin: String, bin_dirs: String },
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

/// The plugin that sets the pod's network up: the first of a list's, or a single plugin's own type.
pub fn network_plugin(conf: &Value) -> Option<&str> {
    match conf.get("plugins") {
        Some(Value::Array(list)) => list.first().and_then(|p| p.get("type")).and_then(Value::as_str),
        _ => conf.get("type").and_then(Value::as_str),
    }
}

/// Where the node keeps its CNI plugins, as mounted here.
#[derive(Debug, Clone)]
pub enum BinDir {
    /// The container runtime's bin directory.
    Dir(PathBuf),
    /// k3s's data directory (`/var/lib/rancher/k3s/data` on the node): its `cni` directory where there is one,
    /// and the `bin` of every bundle (`<hash>/bin`, holding k3s's `cni` multicall binary) — whichever of them
    /// the k3s version on the node names in containerd's configuration.
    K3sData(PathBuf),
}

/// Where things are on the node (as mounted into the installer's container).
#[derive(Debug, Clone)]
pub struct Paths {
    pub bin_dir: BinDir,
    pub conf_dir: PathBuf,
    /// The binary to install (the running one, by default).
    pub source: PathBuf,
    /// Where the node's `/` is mounted here (the DaemonSet mounts each node path P at /host/P): messages name
    /// paths as the node knows them. None: paths as they are here.
    pub host_root: Option<PathBuf>,
    /// Chain only when the configuration's network plugin is in a bin directory. Off where the runtime is
    /// known to look in several (the admin named the bin directory).
    pub verify_bin_dir: bool,
}

/// The bin directories k3s may name in containerd's configuration, under its data directory: `cni` (k3s
/// releases since October 2024) and every bundle's `bin` (earlier ones, one per k3s version the node ran).
pub fn k3s_bin_dirs(data_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    let stable = data_dir.join("cni");
    if fs::symlink_metadata(&stable).is_ok_and(|m| m.is_dir()) {
        dirs.push(stable);
    }
    let mut bundles: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(data_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // `current` and `previous` are links to bundles (listed by their own names); `-tmp` is an extraction
        // under way; `.lock` is k3s's.
        if name == "cni" || name == "current" || name == "previous" || name.starts_with('.') || name.ends_with("-tmp") {
            continue;
        }
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let bin = entry.path().join("bin");
        if fs::symlink_metadata(bin.join("cni")).is_ok() {
            bundles.push(bin);
        }
    }
    bundles.sort();
    dirs.extend(bundles);
    Ok(dirs)
}

fn is_config_file(path: &Path) -> bool {
    path.is_file() && path.extension().and_then(OsStr::to_str).is_some_and(|e| CONFIG_EXTENSIONS.contains(&e))
}

/// What a configuration directory holds, for a message: "it is empty" or "it holds a, b, c".
fn listing(dir: &Path) -> String {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) => return format!("it cannot be read: {e}"),
    };
    names.sort();
    match names.len() {
        0 => "it is empty".into(),
        n if n <= 8 => format!("it holds {}", names.join(", ")),
        n => format!("it holds {} and {} more", names[..8].join(", "), n - 8),
    }
}

impl Paths {
    /// A path as the node knows it.
    pub fn on_node(&self, path: &Path) -> String {
        match self.host_root.as_deref().map(|root| path.strip_prefix(root)) {
            Some(Ok(rest)) => Path::new("/").join(rest).display().to_string(),
            _ => path.display().to_string(),
        }
    }

    fn io_err<'a>(&'a self, path: &'a Path) -> impl FnOnce(io::Error) -> InstallError + 'a {
        move |source| InstallError::Io { path: self.on_node(path), source }
    }

    fn require_dir(&self, what: &'static str, path: &Path) -> Result<(), InstallError> {
        if path.is_dir() { Ok(()) } else { Err(InstallError::MissingDir { what, path: self.on_node(path) }) }
    }

    /// The bin directories to install into, as they are now (k3s's change with its upgrades).
    pub fn bin_dirs(&self) -> Result<Vec<PathBuf>, InstallError> {
        match &self.bin_dir {
            BinDir::Dir(dir) => {
                self.require_dir("the node's CNI bin directory", dir)?;
                Ok(vec![dir.clone()])
            }
            BinDir::K3sData(data) => {
                self.require_dir("k3s's data directory", data)?;
                let dirs = k3s_bin_dirs(data).map_err(self.io_err(data))?;
                if dirs.is_empty() {
                    return Err(InstallError::NoK3sBinDir { data_dir: self.on_node(data) });
                }
                Ok(dirs)
            }
        }
    }

    /// The runtime's primary network configuration, or what is missing for one.
    pub fn primary_config(&self) -> Result<PathBuf, InstallError> {
        self.require_dir("the node's CNI configuration directory", &self.conf_dir)?;
        primary_config(&self.conf_dir)
            .map_err(|e| InstallError::Io { path: self.on_node(&self.conf_dir), source: e })?
            .ok_or_else(|| InstallError::NoConfig { dir: self.on_node(&self.conf_dir), found: listing(&self.conf_dir) })
    }

    fn read_config(&self, path: &Path) -> Result<Value, InstallError> {
        let text = fs::read(path).map_err(self.io_err(path))?;
        serde_json::from_slice(&text).map_err(|e| InstallError::NotAConfig { path: self.on_node(path), why: e.to_string() })
    }

    fn shown_dirs(&self, dirs: &[PathBuf]) -> String {
        let shown: Vec<String> = dirs.iter().map(|d| self.on_node(d)).collect();
        match shown.as_slice() {
            [one] => one.clone(),
            many => format!("none of {}", many.join(", ")),
        }
    }

    /// Everything install and check need, or the first thing that is missing.
    fn survey(&self) -> Result<Survey, InstallError> {
        let bin_dirs = self.bin_dirs()?;
        let primary = self.primary_config()?;
        let conf = self.read_config(&primary)?;
        let chained = chain(&conf).map_err(|why| InstallError::NotAConfig { path: self.on_node(&primary), why })?;
        if self.verify_bin_dir {
            let plugin = network_plugin(&conf).unwrap_or_default().to_owned();
            // A link is enough (k3s's cni directory holds links into its bundle, which may not resolve here).
            let present =
                !plugin.is_empty() && !plugin.contains('/') && bin_dirs.iter().any(|dir| fs::symlink_metadata(dir.join(&plugin)).is_ok());
            if !present {
                return Err(InstallError::PluginNotInBinDir {
                    config: self.on_node(&primary),
                    plugin,
                    bin_dirs: self.shown_dirs(&bin_dirs),
                });
            }
        }
        Ok(Survey { bin_dirs, primary, conf, chained })
    }
}

struct Survey {
    bin_dirs: Vec<PathBuf>,
    primary: PathBuf,
    conf: Value,
    chained: Value,
}

/// The runtime's primary network configuration: the first configuration file in name order.
pub fn primary_config(conf_dir: &Path) -> io::Result<Option<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(conf_dir)?.filter_map(Result::ok).map(|e| e.path()).filter(|p| is_config_file(p)).collect();
    files.sort();
    Ok(files.into_iter().next())
}

/// Writes `contents` to `path` by renaming a complete temporary file over it.
fn write_atomically(paths: &Paths, path: &Path, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    let tmp = path.with_file_name(format!(".{}.tollgate-tmp", path.file_name().and_then(OsStr::to_str).unwrap_or("file")));
    fs::write(&tmp, contents).map_err(paths.io_err(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(paths.io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(paths.io_err(path))
}

/// Makes the node's configuration chain the plugin and its bin directories hold this binary. Returns what it
/// changed (nothing when all was in place). Changes nothing unless the node has all it needs (see the module).
pub fn install_once(paths: &Paths) -> Result<Vec<String>, InstallError> {
    let survey = paths.survey()?;
    let mut changes = Vec::new();
    let binary = fs::read(&paths.source).map_err(paths.io_err(&paths.source))?;
    // The binary first, so that a configuration never names a missing plugin.
    for dir in &survey.bin_dirs {
        let target = dir.join(PLUGIN_TYPE);
        if fs::read(&target).ok().as_deref() != Some(&binary[..]) {
            write_atomically(paths, &target, &binary, 0o755)?;
            changes.push(format!("installed {}", paths.on_node(&target)));
        }
    }
    let primary = &survey.primary;
    let is_list = primary.extension() == Some(OsStr::new("conflist"));
    if is_list && survey.chained == survey.conf {
        return Ok(changes);
    }
    let list_path = primary.with_extension("conflist");
    let mut text = serde_json::to_vec_pretty(&survey.chained).expect("JSON values serialize");
    text.push(b'\n');
    write_atomically(paths, &list_path, &text, 0o644)?;
    if !is_list {
        fs::remove_file(primary).map_err(paths.io_err(primary))?;
        changes.push(format!("converted {} to the plugin list {}", paths.on_node(primary), paths.on_node(&list_path)));
    }
    changes.push(format!("chained {PLUGIN_TYPE} into {}", paths.on_node(&list_path)));
    Ok(changes)
}

/// Whether the node is set up: the binary in place and identical in every bin directory, the primary
/// configuration chained. `Err` says what is missing.
pub fn check(paths: &Paths) -> Result<(), String> {
    let survey = paths.survey().map_err(|e| e.to_string())?;
    let binary = fs::read(&paths.source).map_err(|e| format!("{}: {e}", paths.source.display()))?;
    for dir in &survey.bin_dirs {
        let target = dir.join(PLUGIN_TYPE);
        match fs::read(&target) {
            Ok(b) if b == binary => {}
            Ok(_) => return Err(format!("{} is another version", paths.on_node(&target))),
            Err(e) => return Err(format!("{}: {e}", paths.on_node(&target))),
        }
    }
    if is_chained(&survey.conf) {
        Ok(())
    } else {
        Err(format!("{} does not end with the {PLUGIN_TYPE} plugin", paths.on_node(&survey.primary)))
    }
}

/// Removes tollgate's entry from every configuration in the directory, then the binary from every bin
/// directory. Pods keep the rules they have; pods created afterwards are not locked (and, under
/// `egressLock: required`, do not start).
pub fn uninstall(paths: &Paths) -> Result<Vec<String>, InstallError> {
    paths.require_dir("the node's CNI configuration directory", &paths.conf_dir)?;
    let mut changes = Vec::new();
    for entry in fs::read_dir(&paths.conf_dir).map_err(paths.io_err(&paths.conf_dir))?.filter_map(Result::ok) {
        let path = entry.path();
        if path.extension() != Some(OsStr::new("conflist")) {
            continue;
        }
        let Ok(conf) = paths.read_config(&path) else { continue };
        let without = unchain(&conf);
        if without != conf {
            let mut text = serde_json::to_vec_pretty(&without).expect("JSON values serialize");
            text.push(b'\n');
            write_atomically(paths, &path, &text, 0o644)?;
            changes.push(format!("removed {PLUGIN_TYPE} from {}", paths.on_node(&path)));
        }
    }
    for dir in paths.bin_dirs()? {
        let target = dir.join(PLUGIN_TYPE);
        match fs::remove_file(&target) {
            Ok(()) => changes.push(format!("removed {}", paths.on_node(&target))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(InstallError::Io { path: paths.on_node(&target), source: e }),
        }
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

    fn paths(bin: &Path, conf: &Path, source: &Path) -> Paths {
        Paths { bin_dir: BinDir::Dir(bin.into()), conf_dir: conf.into(), source: source.into(), host_root: None, verify_bin_dir: false }
    }

    fn read(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn install_converts_chains_and_uninstall_reverts() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&conf).unwrap();
        let source = dir.path().join("source");
        fs::write(&source, b"binary v1").unwrap();
        let paths = paths(&bin, &conf, &source);
        assert!(matches!(install_once(&paths), Err(InstallError::NoConfig { .. })));
        assert!(!bin.join("tollgate-cni").exists(), "nothing changes on a node that cannot have the lock");
        fs::write(conf.join("20-other.conflist"), r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"x"}]}"#).unwrap();
        fs::write(conf.join("10-net.conf"), r#"{"cniVersion":"1.0.0","name":"a","type":"bridge"}"#).unwrap();
        assert!(check(&paths).is_err());
        let changes = install_once(&paths).unwrap();
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(changes[0].starts_with("installed "), "the binary goes first, so a configuration never names a missing plugin");
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
        let primary = read(&conf.join("10-net.conflist"));
        assert!(!is_chained(&primary));
        assert_eq!(primary["plugins"], json!([{"type": "bridge"}]));
    }

    #[test]
    fn the_network_plugin_is_the_first_of_the_list() {
        assert_eq!(network_plugin(&json!({"plugins": [{"type": "calico"}, {"type": "portmap"}]})), Some("calico"));
        assert_eq!(network_plugin(&json!({"type": "bridge"})), Some("bridge"));
        assert_eq!(network_plugin(&json!({"plugins": []})), None);
    }

    #[test]
    fn a_bin_dir_without_the_network_plugin_is_refused_before_anything_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf) = (dir.path().join("host/opt/cni/bin"), dir.path().join("host/etc/cni/net.d"));
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&conf).unwrap();
        let source = dir.path().join("source");
        fs::write(&source, b"binary").unwrap();
        let written = r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"calico"},{"type":"portmap"}]}"#;
        fs::write(conf.join("10-calico.conflist"), written).unwrap();
        let paths = Paths { verify_bin_dir: true, host_root: Some(dir.path().join("host")), ..paths(&bin, &conf, &source) };
        let err = install_once(&paths).unwrap_err().to_string();
        assert_eq!(
            err,
            "/etc/cni/net.d/10-calico.conflist runs the network plugin \"calico\", but /opt/cni/bin holds no calico: the \
             container runtime looks for CNI plugins in another directory, and a configuration naming tollgate-cni there \
             would fail every pod sandbox on this node"
        );
        assert_eq!(fs::read_to_string(conf.join("10-calico.conflist")).unwrap(), written, "nothing chained");
        assert!(!bin.join("tollgate-cni").exists(), "nothing installed");
        assert_eq!(check(&paths).unwrap_err(), err, "the readiness probe says the same");
        // A link is enough: k3s's links point into its bundle, which may not resolve in the container.
        std::os::unix::fs::symlink("/nowhere/cni", bin.join("calico")).unwrap();
        install_once(&paths).unwrap();
        check(&paths).unwrap();
        // Not verified, the bin directory is taken as given (a runtime may look in several).
        let unverified = Paths { verify_bin_dir: false, ..paths.clone() };
        fs::remove_file(bin.join("calico")).unwrap();
        check(&unverified).unwrap();
    }
}
