//! The egress lock's CNI plugin as the runtime drives it ([`tollgate_cni::plugin::run`]): the environment
//! (`CNI_COMMAND`, `CNI_NETNS`, `CNI_ARGS`) and the network configuration on stdin, with the pod's annotations
//! in `runtimeConfig` — the annotation `tollgate.dev/egress-lock` that decides whether and how a pod is locked.
//! The kernel is stood in for by a firewall that records what it is asked, and can fail or list a lock other
//! than the one installed.
//!
//! Input: byte 0 picks the command and how the firewall behaves; byte 1 the rest of the environment; the rest
//! is stdin (the corpus holds real configurations, which the fuzzer mutates byte by byte), or, when it starts
//! with `~`, drives a generator of configurations around the annotation (its JSON as the webhook writes it,
//! near misses of it, duplicate and unknown keys, numbers out of range, other annotations beside it).
//!
//! Properties: never panics; an answer is a CNI result or a CNI error whose JSON has a non-zero code; ADD and
//! CHECK of a pod that carries the annotation succeed only if the annotation is exactly a lock the webhook
//! could have written — an object with exactly `proxyUid` (a non-zero u32) and `inboundPorts` (at most 16
//! distinct ports from 1 to 65535), judged here on the JSON itself — and, for ADD, only after that very lock
//! was installed and listed back complete; a pod without the annotation is never touched (no firewall call)
//! and its ADD answers the previous plugin's result unchanged; no ADD succeeds without a previous result or
//! with an unsupported cniVersion; DEL never fails over the annotation; VERSION names the versions.

#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use tollgate_cni::nft::{Installed, NftError};
use tollgate_cni::plugin::{ANNOTATION, CAPABILITY, Command, Environment, Firewall, SUPPORTED_VERSIONS, run};
use tollgate_cni::rules::{Lock, ruleset};

/// What the firewall does when asked.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    /// Installs, and lists back, exactly what it was given.
    Faithful,
    /// Install fails.
    InstallFails,
    /// Lists nothing (the table is gone).
    ListsNothing,
    /// Lists the lock with its last rule missing.
    ListsLess,
    /// Lists another pod's lock (another proxy UID).
    ListsOther,
}

#[derive(Default)]
struct Recorder {
    behaviour: Option<Behaviour>,
    installed: Vec<Lock>,
    removed: usize,
    listed: usize,
}

fn listing(lock: &Lock) -> Vec<Installed> {
    ruleset(lock).into_iter().map(|r| Installed { chain: r.chain.name().into(), tag: Some(r.tag), packets: None }).collect()
}

impl Firewall for Recorder {
    fn install(&mut self, _: &Path, lock: &Lock) -> Result<(), NftError> {
        if self.behaviour == Some(Behaviour::InstallFails) {
            return Err(NftError::Socket(std::io::Error::other("install refused by the stand-in")));
        }
        self.installed.push(lock.clone());
        Ok(())
    }
    fn remove(&mut self, _: &Path) -> Result<(), NftError> {
        self.removed += 1;
        Ok(())
    }
    fn list(&mut self, _: &Path) -> Result<Vec<Installed>, NftError> {
        self.listed += 1;
        let Some(lock) = self.installed.last().cloned() else {
            // CHECK without an ADD here: the lock the annotation asks for is "in place" when faithful.
            return Ok(Vec::new());
        };
        Ok(match self.behaviour.unwrap_or(Behaviour::Faithful) {
            Behaviour::Faithful | Behaviour::InstallFails => listing(&lock),
            Behaviour::ListsNothing => Vec::new(),
            Behaviour::ListsLess => {
                let mut rules = listing(&lock);
                rules.pop();
                rules
            }
            Behaviour::ListsOther => listing(&Lock { proxy_uid: lock.proxy_uid.wrapping_add(1).max(1), ..lock }),
        })
    }
}

/// The lock the annotation's text describes, judged on the JSON itself; `None` if it is no valid lock. A
/// duplicate key is refused (the plugin reads the annotation exactly; which of two values would count is not
/// for a parser to decide).
fn expected_lock(text: &str) -> Option<Lock> {
    let value: Value = serde_json::from_str(text).ok()?;
    let object = value.as_object()?;
    if object.len() != 2 || has_duplicate_keys(text) {
        return None;
    }
    let uid = object.get("proxyUid")?.as_u64().filter(|u| *u != 0 && *u <= u64::from(u32::MAX))?;
    let ports = object.get("inboundPorts")?.as_array()?;
    if ports.len() > 16 {
        return None;
    }
    let ports: Vec<u16> = ports.iter().map(|p| p.as_u64().filter(|p| (1..=65535).contains(p)).map(|p| p as u16)).collect::<Option<_>>()?;
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    (distinct.len() == ports.len()).then_some(Lock { proxy_uid: uid as u32, inbound_ports: ports })
}

/// Whether the top-level object of `text` names a key twice.
fn has_duplicate_keys(text: &str) -> bool {
    struct Keys(bool);
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut seen = std::collections::BTreeSet::new();
            let mut duplicate = self.0;
            while let Some(key) = map.next_key::<String>()? {
                duplicate |= !seen.insert(key);
                map.next_value::<serde::de::IgnoredAny>()?;
            }
            Ok(duplicate)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    serde::Deserializer::deserialize_map(&mut de, Keys(false)).unwrap_or(true)
}

type R<T> = arbitrary::Result<T>;

/// A generated network configuration around the annotation.
fn configuration(u: &mut Unstructured) -> R<Vec<u8>> {
    let mut conf = Map::new();
    let version = if u.ratio(1, 10)? { String::arbitrary(u)? } else { (*u.choose(&SUPPORTED_VERSIONS)?).to_owned() };
    conf.insert("cniVersion".into(), json!(version));
    conf.insert("name".into(), json!("k8s-pod-network"));
    conf.insert("type".into(), json!("tollgate-cni"));
    if u.ratio(9, 10)? {
        conf.insert(
            "prevResult".into(),
            json!({"cniVersion": version, "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}], "ips": [{"address": "10.88.0.5/16", "interface": 0}]}),
        );
    }
    let mut annotations = Map::new();
    if u.ratio(4, 5)? {
        let uid = match u.int_in_range(0..=5)? {
            0 => json!(0),
            1 => json!(-1),
            2 => json!(4_294_967_296u64),
            3 => json!(10001.0),
            4 => json!("10001"),
            _ => json!(*u.choose(&[10000u32, 10001, 1, u32::MAX])?),
        };
        let ports: Vec<Value> = (0..u.int_in_range(0..=18)?)
            .map(|_| {
                Ok(match u.int_in_range(0..=6)? {
                    0 => json!(0),
                    1 => json!(65536),
                    2 => json!(-1),
                    _ => json!(*u.choose(&[15006u16, 15021, 8080, 1, 65535])?),
                })
            })
            .collect::<R<_>>()?;
        let mut text = match u.int_in_range(0..=9)? {
            0 => format!(r#"{{"proxyUid":{uid}}}"#),
            1 => format!(r#"{{"inboundPorts":{}}}"#, Value::Array(ports.clone())),
            2 => format!(r#"{{"proxyUid":{uid},"inboundPorts":{},"allowUdp":true}}"#, Value::Array(ports.clone())),
            3 => format!(r#"{{"proxyUid":{uid},"proxyUid":10001,"inboundPorts":{}}}"#, Value::Array(ports.clone())),
            4 => format!(r#"{{"inboundPorts":{},"proxyUid":{uid}}}"#, Value::Array(ports.clone())),
            5 => String::arbitrary(u)?,
            _ => format!(r#"{{"proxyUid":{uid},"inboundPorts":{}}}"#, Value::Array(ports.clone())),
        };
        if u.ratio(1, 20)? {
            text.push_str(" ");
        }
        let key = if u.ratio(1, 15)? { "tollgate.dev/Egress-Lock" } else { ANNOTATION };
        annotations.insert(key.to_owned(), json!(text));
    }
    if u.ratio(1, 3)? {
        annotations.insert("tollgate.dev/injected".into(), json!("true"));
    }
    if u.ratio(1, 20)? {
        annotations.insert("other".into(), json!(7));
    }
    if u.ratio(9, 10)? {
        conf.insert("runtimeConfig".into(), json!({CAPABILITY: annotations}));
    }
    Ok(serde_json::to_vec(&Value::Object(conf)).expect("serializes"))
}

const COMMANDS: [&str; 7] = ["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "FROB"];
const BEHAVIOURS: [Behaviour; 5] =
    [Behaviour::Faithful, Behaviour::InstallFails, Behaviour::ListsNothing, Behaviour::ListsLess, Behaviour::ListsOther];

fuzz_target!(|data: &[u8]| {
    let [selector, env_bits, rest @ ..] = data else { return };
    let stdin = match rest.split_first() {
        Some((b'~', generator)) => match configuration(&mut Unstructured::new(generator)) {
            Ok(conf) => conf,
            Err(_) => return,
        },
        _ => rest.to_vec(),
    };
    let command = COMMANDS[usize::from(selector & 0x0f) % COMMANDS.len()];
    let behaviour = BEHAVIOURS[usize::from(selector >> 4) % BEHAVIOURS.len()];
    let mut vars = BTreeMap::from([("CNI_COMMAND", command.to_owned())]);
    if env_bits & 1 != 0 {
        vars.insert("CNI_NETNS", "/var/run/netns/cni-fuzz".into());
    }
    if env_bits & 2 != 0 {
        vars.insert("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=analysis;K8S_POD_NAME=job-1;K8S_POD_UID=u".into());
    }
    let env = match Environment::from_vars(|k| vars.get(k).cloned()) {
        Ok(env) => env,
        Err(e) => {
            assert_eq!(command, "FROB", "a known command refused: {e:?}");
            assert!(e.code != 0);
            return;
        }
    };
    // What the configuration says, judged here.
    // Lossily: the plugin skips the fields it does not read without looking at their bytes, so invalid UTF-8
    // there is not an error.
    let conf: Option<Value> = serde_json::from_str(&String::from_utf8_lossy(&stdin)).ok();
    let annotations = conf.as_ref().and_then(|c| c.get("runtimeConfig")).and_then(|r| r.get(CAPABILITY));
    let annotation = annotations.and_then(|a| a.get(ANNOTATION));
    let annotation_text = annotation.and_then(Value::as_str);

    let mut firewall = Recorder { behaviour: Some(behaviour), ..Recorder::default() };
    // CHECK follows an ADD: the lock the annotation asks for is in place, as the stand-in's behaviour lists it.
    let preinstalled = usize::from(env.command == Command::Check && annotation_text.and_then(expected_lock).is_some());
    if preinstalled == 1 {
        firewall.installed.push(annotation_text.and_then(expected_lock).expect("checked"));
    }
    let result = run(&env, &stdin, &mut firewall);
    let version_ok =
        conf.as_ref().and_then(|c| c.get("cniVersion")).and_then(Value::as_str).is_some_and(|v| SUPPORTED_VERSIONS.contains(&v));
    let prev = conf.as_ref().and_then(|c| c.get("prevResult")).filter(|p| !p.is_null());

    match &result {
        Err(e) => {
            assert!(e.code != 0, "a CNI error with code 0: {e:?}");
            let json = e.to_json("1.1.0");
            assert!(json["code"].as_u64().is_some_and(|c| c != 0) && json["msg"].is_string(), "{json}");
        }
        Ok(answer) => {
            if env.command != Command::Version {
                assert!(version_ok, "{command} succeeded with an unsupported cniVersion: {}", String::from_utf8_lossy(&stdin));
            }
            match env.command {
                Command::Version => {
                    assert_eq!(answer.as_ref().map(|v| v["supportedVersions"].clone()), Some(json!(SUPPORTED_VERSIONS)));
                }
                Command::Add => {
                    let prev = prev.unwrap_or_else(|| panic!("ADD succeeded without a prevResult: {}", String::from_utf8_lossy(&stdin)));
                    assert_eq!(answer.as_ref(), Some(prev), "ADD answers the previous result unchanged");
                    match annotation {
                        None => assert!(firewall.installed.is_empty() && firewall.listed == 0, "a pod without the annotation was touched"),
                        Some(_) => {
                            let expected = annotation_text
                                .and_then(expected_lock)
                                .unwrap_or_else(|| panic!("ADD accepted an annotation that is no lock: {annotation:?}"));
                            assert_eq!(firewall.installed, vec![expected.clone()], "ADD installed another lock than {annotation:?}");
                            assert_eq!(
                                behaviour,
                                Behaviour::Faithful,
                                "ADD succeeded though the lock listed back is not the one installed"
                            );
                        }
                    }
                }
                Command::Check => {
                    assert!(prev.is_some(), "CHECK succeeded without a prevResult");
                    match annotation {
                        Some(annotation) => {
                            assert!(preinstalled == 1, "CHECK accepted an annotation that is no lock: {annotation:?}");
                            assert!(
                                matches!(behaviour, Behaviour::Faithful | Behaviour::InstallFails),
                                "CHECK passed though the lock listed is not the pod's ({behaviour:?})"
                            );
                        }
                        None => assert!(firewall.listed == 0, "CHECK touched a pod without the annotation"),
                    }
                    assert_eq!(firewall.installed.len(), preinstalled, "CHECK installed something");
                }
                Command::Del | Command::Status | Command::Gc => {
                    assert!(answer.is_none(), "{command} printed a result");
                    assert!(firewall.installed.is_empty(), "{command} installed a lock");
                }
            }
        }
    }
    // DEL never fails over the annotation (only the removal itself can fail, and the stand-in's does not).
    let decodes = serde_json::from_slice::<tollgate_cni::plugin::NetConf>(&stdin).is_ok();
    if env.command == Command::Del && version_ok && decodes {
        assert!(result.is_ok(), "DEL failed: {result:?}");
    }
    // A valid lock on a faithful firewall with everything in place is installed.
    if env.command == Command::Add
        && version_ok
        && prev.is_some()
        && env_bits & 1 != 0
        && behaviour == Behaviour::Faithful
        && let Some(expected) = annotation_text.and_then(expected_lock)
    {
        if decodes {
            assert!(result.is_ok(), "a valid lock refused: {annotation:?}: {result:?}");
            assert_eq!(firewall.installed, vec![expected]);
        }
    }
});
