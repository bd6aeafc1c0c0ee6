//! The `tollgate.dev/egress-lock` annotation: written by the webhook on every hardened pod under
//! `proxy.egressLock: required`, read by the tollgate-cni plugin, which enforces it in the pod's network
//! namespace. One type, one writer, one reader.

use serde::{Deserialize, Serialize};

/// At most this many inbound ports (the proxy's ingress and admin ports, today).
pub const MAX_INBOUND_PORTS: usize = 16;

/// The annotation's value, exactly: `{"proxyUid":10001,"inboundPorts":[15006,15021]}` (the proxy's user, then
/// its ingress and admin ports). Unknown fields are refused, so that a newer webhook's stricter lock is never
/// enforced partially by an older plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressLock {
    /// The only user whose packets may leave the pod.
    pub proxy_uid: u32,
    /// The ports that accept connections from outside the pod.
    pub inbound_ports: Vec<u16>,
}

impl EgressLock {
    /// The annotation's text, as the webhook writes it.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The annotation's text, as the plugin reads it: refused unless the plugin can enforce it whole.
    pub fn parse(value: &str) -> Result<Self, String> {
        // serde reads a struct from a JSON array too (its fields by position): `[10001,[15006]]` would pass.
        if !value.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
            return Err("not a JSON object".into());
        }
        let lock: EgressLock = serde_json::from_str(value).map_err(|e| e.to_string())?;
        if lock.proxy_uid == 0 {
            return Err("proxyUid is 0 (root may never be the only UID let out)".into());
        }
        if lock.inbound_ports.len() > MAX_INBOUND_PORTS {
            return Err(format!("inboundPorts has {} entries; at most {MAX_INBOUND_PORTS}", lock.inbound_ports.len()));
        }
        let mut ports = lock.inbound_ports.clone();
        ports.sort_unstable();
        ports.dedup();
        if ports.len() != lock.inbound_ports.len() || ports.first() == Some(&0) {
            return Err("inboundPorts must be distinct ports from 1 to 65535".into());
        }
        Ok(lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_annotation_is_the_documented_text_and_reads_back() {
        let lock = EgressLock { proxy_uid: 10001, inbound_ports: vec![15006, 15021] };
        assert_eq!(lock.to_annotation(), r#"{"proxyUid":10001,"inboundPorts":[15006,15021]}"#);
        assert_eq!(EgressLock::parse(&lock.to_annotation()), Ok(lock));
    }

    #[test]
    fn a_lock_the_plugin_cannot_enforce_whole_is_refused() {
        for (value, why) in [
            (r#"{"proxyUid":0,"inboundPorts":[]}"#, "proxyUid is 0"),
            (r#"{"proxyUid":1,"inboundPorts":[80,80]}"#, "distinct"),
            (r#"{"proxyUid":1,"inboundPorts":[0]}"#, "distinct"),
            (r#"{"proxyUid":1,"inboundPorts":[],"outbound":[]}"#, "unknown field"),
            (r#"{"proxyUid":1,"inboundPorts":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}"#, "at most 16"),
            // Found by fuzzing (fuzz/corpus/cni/array-annotation): serde read this as proxyUid 3, inboundPorts [4].
            ("\r\r[3\r\t,[4\r]]", "not a JSON object"),
            ("[10001,[15006,15021]]", "not a JSON object"),
        ] {
            let error = EgressLock::parse(value).unwrap_err();
            assert!(error.contains(why), "{value}: {error}");
        }
    }
}
