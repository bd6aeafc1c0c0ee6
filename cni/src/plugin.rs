//! The CNI side: what the runtime hands the plugin (environment, network configuration with the previous
//! plugin's result and the pod's annotations) and what the plugin answers (CNI spec 1.1, chained plugin).
//!
//! A pod is tollgate's when it carries the `tollgate.dev/egress-lock` annotation, which the webhook writes at
//! admission and a ValidatingAdmissionPolicy freezes afterwards. The runtime passes the pod's annotations to
//! plugins that declare the `io.kubernetes.cri.pod-annotations` capability (containerd and CRI-O both do), so
//! the plugin needs no API credential at all. Pods without the annotation pass through untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_api::egress_lock::EgressLock;

use crate::nft::{NftError, Nftables};
use crate::rules::{Chain, Lock, TABLE, ruleset};

/// The webhook's annotation, read here ([`tollgate_api::egress_lock`] is the contract).
pub use tollgate_api::names::ANNOTATION_EGRESS_LOCK as ANNOTATION;
/// The runtime capability that carries the pod's annotations in `runtimeConfig`.
pub const CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";
pub const PLUGIN_TYPE: &str = "tollgate-cni";
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A CNI error result (spec §"Error"): well-known codes below 100, tollgate's from 100.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

pub const CODE_INCOMPATIBLE_VERSION: u32 = 1;
pub const CODE_INVALID_ENVIRONMENT: u32 = 4;
pub const CODE_IO: u32 = 5;
pub const CODE_DECODE: u32 = 6;
pub const CODE_INVALID_CONFIG: u32 = 7;
/// The pod's `tollgate.dev/egress-lock` annotation is not one this plugin can enforce.
pub const CODE_BAD_ANNOTATION: u32 = 100;
/// The lock could not be installed in, or read back from, the pod's network namespace.
pub const CODE_LOCK_FAILED: u32 = 101;
/// CHECK: the lock is not (completely) in place.
pub const CODE_LOCK_MISSING: u32 = 102;

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: details.into() }
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(value: &str) -> Option<Command> {
        Some(match value {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// The parts of the network configuration the plugin reads; every other key is the network's business.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
}

#[derive(Debug, Default, Deserialize)]
pub struct RuntimeConfig {
    #[serde(rename = "io.kubernetes.cri.pod-annotations", default)]
    pub pod_annotations: BTreeMap<String, String>,
}

/// Whether the pod is tollgate's, and the lock it needs.
pub fn lock_for(annotations: &BTreeMap<String, String>) -> Result<Option<Lock>, CniError> {
    let Some(value) = annotations.get(ANNOTATION) else { return Ok(None) };
    let lock = EgressLock::parse(value).map_err(|why| {
        CniError::new(
            CODE_BAD_ANNOTATION,
            format!("the pod's {ANNOTATION} annotation cannot be enforced: {why}"),
            format!("value: {value}"),
        )
    })?;
    Ok(Some(Lock { proxy_uid: lock.proxy_uid, inbound_ports: lock.inbound_ports }))
}

/// What the runtime told the plugin through its environment.
#[derive(Debug, Clone)]
pub struct Environment {
    pub command: Command,
    pub netns: Option<PathBuf>,
    /// `K8S_POD_NAMESPACE/K8S_POD_NAME` from `CNI_ARGS`, for messages.
    pub pod: Option<String>,
}

impl Environment {
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Environment, CniError> {
        let raw = get("CNI_COMMAND").unwrap_or_default();
        let command = Command::parse(&raw).ok_or_else(|| {
            CniError::new(
                CODE_INVALID_ENVIRONMENT,
                format!("unknown CNI_COMMAND {raw:?}"),
                "expected ADD, DEL, CHECK, VERSION, STATUS or GC",
            )
        })?;
        let netns = get("CNI_NETNS").filter(|s| !s.is_empty()).map(PathBuf::from);
        let args: BTreeMap<String, String> = get("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let pod = match (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")) {
            (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
            _ => None,
        };
        Ok(Environment { command, netns, pod })
    }
}

/// The in-kernel side, in the pod's network namespace. A trait so that the decisions above it are tested
/// without root; the binary uses [`Netns`].
pub trait Firewall {
    fn install(&mut self, netns: &Path, lock: &Lock) -> Result<(), NftError>;
    fn remove(&mut self, netns: &Path) -> Result<(), NftError>;
    fn list(&mut self, netns: &Path) -> Result<Vec<crate::nft::Installed>, NftError>;
}

/// The real firewall: enters the namespace (this process is single-threaded, so `setns` moves all of it)
/// and talks netlink there.
pub struct Netns;

impl Netns {
    fn enter(netns: &Path) -> Result<Nftables, NftError> {
        crate::netns::enter(netns).map_err(NftError::Socket)?;
        Nftables::open()
    }
}

impl Firewall for Netns {
    fn install(&mut self, netns: &Path, lock: &Lock) -> Result<(), NftError> {
        Netns::enter(netns)?.install(lock)
    }

    fn remove(&mut self, netns: &Path) -> Result<(), NftError> {
        Netns::enter(netns)?.remove()
    }

    fn list(&mut self, netns: &Path) -> Result<Vec<crate::nft::Installed>, NftError> {
        Netns::enter(netns)?.list()
    }
}

/// One invocation: `Ok(Some(json))` is printed on stdout, `Ok(None)` prints nothing.
pub fn run(env: &Environment, stdin: &[u8], firewall: &mut dyn Firewall) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(version()));
    }
    // serde reads a struct from a JSON array too (its fields by position): `["1.0.0"]` would pass for a
    // configuration. A network configuration is an object (CNI spec, "Configuration format").
    if stdin.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(CniError::new(
            CODE_DECODE,
            "the network configuration on stdin is not a JSON object",
            "CNI spec: a network configuration is a JSON object",
        ));
    }
    let conf: NetConf = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(CODE_DECODE, "the network configuration on stdin is not valid JSON for a CNI plugin", e.to_string()))?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            CODE_INCOMPATIBLE_VERSION,
            format!("cniVersion {:?} is not supported", conf.cni_version),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    let pod = env.pod.clone().unwrap_or_else(|| "the pod".into());
    match env.command {
        Command::Version => unreachable!("answered above"),
        Command::Status | Command::Gc => Ok(None),
        Command::Add => {
            let prev = prev_result(&conf)?;
            let Some(lock) = lock_for(&conf.runtime_config.pod_annotations)? else { return Ok(Some(prev)) };
            let netns = require_netns(env)?;
            firewall.install(netns, &lock).map_err(|e| {
                CniError::new(CODE_LOCK_FAILED, format!("could not lock the network namespace of {pod}: {e}"), netns.display().to_string())
            })?;
            verify(firewall, netns, &lock, &pod, CODE_LOCK_FAILED)?;
            Ok(Some(prev))
        }
        Command::Check => {
            prev_result(&conf)?;
            let Some(lock) = lock_for(&conf.runtime_config.pod_annotations)? else { return Ok(None) };
            let netns = require_netns(env)?;
            verify(firewall, netns, &lock, &pod, CODE_LOCK_MISSING)?;
            Ok(None)
        }
        Command::Del => {
            // DEL must succeed when there is nothing left to remove, and is never refused over a bad annotation.
            if !conf.runtime_config.pod_annotations.contains_key(ANNOTATION) {
                return Ok(None);
            }
            let Some(netns) = env.netns.as_deref().filter(|p| p.exists()) else { return Ok(None) };
            firewall.remove(netns).map_err(|e| {
                CniError::new(CODE_IO, format!("could not remove the egress lock of {pod}: {e}"), netns.display().to_string())
            })?;
            Ok(None)
        }
    }
}

pub fn version() -> Value {
    json!({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS})
}

fn prev_result(conf: &NetConf) -> Result<Value, CniError> {
    conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            CODE_INVALID_CONFIG,
            "tollgate-cni is a chained plugin and got no prevResult",
            "list it after the plugin that creates the pod's interface, in a .conflist",
        )
    })
}

fn require_netns(env: &Environment) -> Result<&Path, CniError> {
    env.netns
        .as_deref()
        .ok_or_else(|| CniError::new(CODE_INVALID_ENVIRONMENT, "CNI_NETNS is not set", "ADD and CHECK need the pod's network namespace"))
}

/// The lock's rules are in the namespace, in order, tag by tag.
fn verify(firewall: &mut dyn Firewall, netns: &Path, lock: &Lock, pod: &str, code: u32) -> Result<(), CniError> {
    let installed = firewall.list(netns).map_err(|e| {
        let msg = if e.is_not_found() { "the egress lock's table is missing".to_string() } else { e.to_string() };
        CniError::new(code, format!("the egress lock of {pod} is not in place: {msg}"), netns.display().to_string())
    })?;
    if installed.is_empty() {
        return Err(CniError::new(
            code,
            format!("the egress lock of {pod} is not in place: the namespace has no table inet {TABLE}"),
            netns.display().to_string(),
        ));
    }
    let mut problems = Vec::new();
    for chain in Chain::ALL {
        let want: Vec<String> = ruleset(lock).into_iter().filter(|r| r.chain == chain).map(|r| r.tag).collect();
        let have: Vec<&str> = installed.iter().filter(|r| r.chain == chain.name()).filter_map(|r| r.tag.as_deref()).collect();
        if want.iter().map(String::as_str).eq(have.iter().copied()) {
            continue;
        }
        let missing: Vec<&str> = want.iter().map(String::as_str).filter(|t| !have.contains(t)).collect();
        problems.push(if missing.is_empty() {
            format!("chain {} has rules the lock does not, or in another order", chain.name())
        } else {
            format!("chain {} lacks {}", chain.name(), missing.join(", "))
        });
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(code, format!("the egress lock of {pod} is incomplete: {}", problems.join("; ")), netns.display().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(ANNOTATION.to_string(), value.to_string())])
    }

    #[test]
    fn the_annotation_is_read_exactly() {
        let lock = lock_for(&annotations(r#"{"proxyUid":10001,"inboundPorts":[15006,15021]}"#)).unwrap().unwrap();
        assert_eq!(lock, Lock { proxy_uid: 10001, inbound_ports: vec![15006, 15021] });
        assert_eq!(lock_for(&BTreeMap::new()).unwrap(), None);
        for (value, says) in [
            (r#"{"proxyUid":0,"inboundPorts":[1]}"#, "proxyUid is 0"),
            (r#"{"proxyUid":5,"inboundPorts":[1,1]}"#, "distinct"),
            (r#"{"proxyUid":5,"inboundPorts":[0]}"#, "distinct"),
            (r#"{"proxyUid":5,"inboundPorts":[70000]}"#, "invalid value"),
            (r#"{"proxyUid":-1,"inboundPorts":[]}"#, "invalid value"),
            (r#"{"proxyUid":5,"inboundPorts":[1],"allowUdp":true}"#, "unknown field `allowUdp`"),
            (r#"{"proxyUid":5}"#, "missing field `inboundPorts`"),
            ("yes", "not a JSON object"),
            ("[5, [1]]", "not a JSON object"),
        ] {
            let err = lock_for(&annotations(value)).unwrap_err();
            assert_eq!(err.code, CODE_BAD_ANNOTATION);
            assert!(err.msg.contains(says), "{value}: {}", err.msg);
            assert!(err.msg.contains(ANNOTATION));
        }
    }

    /// Found by fuzzing (fuzz/corpus/cni/array-configuration): serde would read `["0.4.0"]` as a
    /// configuration of version 0.4.0, and DEL succeeded on it.
    #[test]
    fn a_configuration_that_is_not_an_object_is_refused_by_every_command() {
        for command in [Command::Add, Command::Check, Command::Del, Command::Status, Command::Gc] {
            let env = Environment { command, netns: None, pod: None };
            for stdin in [&br#"["0.4.0"]"#[..], br#" ["1.1.0", "tollgate", "tollgate-cni"]"#, br#""1.0.0""#, b"null"] {
                let err = run(&env, stdin, &mut Listed(Vec::new())).unwrap_err();
                assert_eq!(err.code, CODE_DECODE, "{command:?} {}", String::from_utf8_lossy(stdin));
            }
        }
    }

    /// The fields the plugin does not read are skipped unread, so bytes that are not UTF-8 in one of them (the
    /// network's own `type`, here) do not fail DEL, which must succeed whenever there is nothing to remove.
    /// Found by fuzzing (fuzz/corpus/cni/del-invalid-utf8-in-unread-field) when the configuration was read
    /// through a JSON value first, which checks every string.
    #[test]
    fn bytes_that_are_not_utf8_in_a_field_not_read_do_not_fail_del() {
        let env = Environment { command: Command::Del, netns: None, pod: None };
        let stdin = [&br#"{"cniVersion": "1.0.0", "type": "bridge-"#[..], &[0xff, 0xfe], br#"", "runtimeConfig": {}}"#].concat();
        assert_eq!(run(&env, &stdin, &mut Listed(Vec::new())).unwrap(), None);
    }

    /// The kernel side stood in for, to reach the decisions a real namespace makes hard to provoke.
    struct Listed(Vec<crate::nft::Installed>);

    impl Firewall for Listed {
        fn install(&mut self, _: &Path, _: &Lock) -> Result<(), NftError> {
            Ok(())
        }
        fn remove(&mut self, _: &Path) -> Result<(), NftError> {
            Ok(())
        }
        fn list(&mut self, _: &Path) -> Result<Vec<crate::nft::Installed>, NftError> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn check_names_what_is_missing_or_out_of_order() {
        let lock = Lock { proxy_uid: 10001, inbound_ports: vec![15006, 15021] };
        let full: Vec<crate::nft::Installed> = ruleset(&lock)
            .into_iter()
            .map(|r| crate::nft::Installed { chain: r.chain.name().into(), tag: Some(r.tag), packets: None })
            .collect();
        let netns = Path::new("/run/netns/x");
        assert!(verify(&mut Listed(full.clone()), netns, &lock, "p", 102).is_ok());
        let mut without_proxy = full.clone();
        without_proxy.retain(|r| r.tag.as_deref() != Some("tollgate: the proxy (uid 10001)"));
        let err = verify(&mut Listed(without_proxy), netns, &lock, "ns/p", 102).unwrap_err();
        assert_eq!(err.msg, "the egress lock of ns/p is incomplete: chain output lacks tollgate: the proxy (uid 10001)");
        let mut swapped = full.clone();
        swapped.swap(0, 1);
        let err = verify(&mut Listed(swapped), netns, &lock, "p", 102).unwrap_err();
        assert!(err.msg.contains("chain output has rules the lock does not, or in another order"), "{}", err.msg);
        // A lock for other ports is not this pod's lock.
        let other = Lock { proxy_uid: 10001, inbound_ports: vec![15006] };
        assert!(verify(&mut Listed(full), netns, &other, "p", 102).is_err());
        let err = verify(&mut Listed(vec![]), netns, &lock, "p", 101).unwrap_err();
        assert!(err.code == 101 && err.msg.contains("no table inet tollgate"), "{}", err.msg);
    }

    #[test]
    fn cni_args_name_the_pod() {
        let vars = BTreeMap::from([
            ("CNI_COMMAND", "ADD"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=analysis;K8S_POD_NAME=job-1;K8S_POD_UID=u"),
        ]);
        let env = Environment::from_vars(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!((env.command, env.pod.as_deref()), (Command::Add, Some("analysis/job-1")));
        let err = Environment::from_vars(|k| (k == "CNI_COMMAND").then(|| "FROB".to_string())).unwrap_err();
        assert_eq!(err.code, CODE_INVALID_ENVIRONMENT);
    }
}
