//! `tollgate.dev/changes`, the record of what tollgate changed, is tollgate's own: sealed when written, and
//! believed on a later pass only when its seal checks out.
//!
//! A pod can reach the webhook carrying a record: its own pass of a moment ago (a reinvocation, after a later
//! webhook changed the pod), or one its creator wrote (say, the output of a server dry run with the text
//! edited). Only a secret tells the two apart. The seal is an HMAC-SHA256, under a key derived from the
//! webhook's TLS private key (every replica serves the same certificate, so every replica checks what another
//! wrote), over the pod's namespace and name (or generateName), the record, and the status annotation beside
//! it (tollgate's version, policy, proxy and the pod's containers); it is written into that status annotation
//! as `"seal"`. A record whose seal does not check out is not tollgate's: it is replaced, and the pod's list
//! of changes says so. When the serving key is renewed the previous key is still accepted, for the passes of
//! an admission in flight.
//!
//! Without a webhook key (the CLI, the tests) a fixed key stands in: the CLI's output hardens again to
//! nothing, and a webhook believes none of its records.

use std::sync::{Arc, LazyLock};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// What the key of [`RecordKeys::offline`] is derived from: public, so it proves nothing to a webhook.
const OFFLINE_KEY_MATERIAL: &[u8] = b"tollgate offline hardening: no secret, no proof";
/// Keeps the record key apart from any other use of the TLS key.
const KEY_CONTEXT: &[u8] = b"tollgate.dev/changes record seal, v1\0";
const SEAL_PREFIX: &str = "v1:";
/// 128 bits of the HMAC.
const SEAL_BYTES: usize = 16;

/// The keys that seal and check tollgate's records: the first seals, every one is accepted.
#[derive(Clone)]
pub struct RecordKeys {
    keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordKeys").field("keys", &self.keys.len()).finish_non_exhaustive()
    }
}

static OFFLINE: LazyLock<Arc<RecordKeys>> = LazyLock::new(|| Arc::new(RecordKeys::from_secret(OFFLINE_KEY_MATERIAL)));

impl RecordKeys {
    /// The key of hardening without a webhook: fixed, public.
    pub fn offline() -> Arc<RecordKeys> {
        OFFLINE.clone()
    }

    /// A key derived from secret material (the webhook's TLS private key, as its file holds it).
    pub fn from_secret(material: &[u8]) -> RecordKeys {
        let mut hash = Sha256::new();
        hash.update(KEY_CONTEXT);
        hash.update(material);
        RecordKeys { keys: vec![hash.finalize().into()] }
    }

    /// The keys after the secret changed to `material`: the new key seals, the current one is still accepted.
    pub fn rotated(&self, material: &[u8]) -> RecordKeys {
        let mut next = RecordKeys::from_secret(material);
        if let Some(current) = self.keys.first()
            && *current != next.keys[0]
        {
            next.keys.push(*current);
        }
        next
    }

    /// The seal of `record` (empty: none) beside `status` (the status annotation's object without its seal) on
    /// the pod `namespace`/`name`.
    pub(super) fn seal(&self, namespace: &str, name: &str, record: &str, status: &str) -> String {
        let mac = hmac(&self.keys[0], &[namespace.as_bytes(), name.as_bytes(), record.as_bytes(), status.as_bytes()]);
        let mut text = String::with_capacity(SEAL_PREFIX.len() + 2 * SEAL_BYTES);
        text.push_str(SEAL_PREFIX);
        for byte in &mac[..SEAL_BYTES] {
            text.push_str(&format!("{byte:02x}"));
        }
        text
    }

    /// Whether `seal` is one of these keys' over the same.
    pub(super) fn verify(&self, namespace: &str, name: &str, record: &str, status: &str, seal: &str) -> bool {
        self.keys.iter().any(|key| {
            let expected = RecordKeys { keys: vec![*key] }.seal(namespace, name, record, status);
            // Constant time: a seal is not found byte by byte.
            expected.len() == seal.len() && expected.bytes().zip(seal.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        })
    }
}

/// HMAC-SHA256 (RFC 2104) of the parts, each prefixed with its length so that no two lists of parts meet.
fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let (mut inner_pad, mut outer_pad) = ([0x36u8; 64], [0x5cu8; 64]);
    for (i, byte) in key.iter().enumerate() {
        inner_pad[i] ^= byte;
        outer_pad[i] ^= byte;
    }
    let mut inner = Sha256::new();
    inner.update(inner_pad);
    for part in parts {
        inner.update((part.len() as u64).to_be_bytes());
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(outer_pad);
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The pod's namespace and its name (or generateName), which a seal binds.
pub(super) fn pod_identity(pod: &Value) -> (&str, &str) {
    let meta = |key: &str| pod.pointer("/metadata").and_then(|m| m.get(key)).and_then(Value::as_str).filter(|s| !s.is_empty());
    (meta("namespace").unwrap_or(""), meta("name").or_else(|| meta("generateName")).unwrap_or(""))
}

/// The status annotation's text split into its object without the seal (as tollgate writes it) and the seal.
pub(super) fn split_status(status: &str) -> Option<(String, String)> {
    let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(status) else { return None };
    let seal = match object.shift_remove("seal") {
        Some(Value::String(seal)) => seal,
        _ => return None,
    };
    Some((serde_json::to_string(&object).expect("an object serialises"), seal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_is_rfc_4231_for_one_part_without_prefix() {
        // The construction, checked against RFC 4231 test case 2 by computing it without the length prefix.
        let key = *b"Jefe\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        let (mut inner_pad, mut outer_pad) = ([0x36u8; 64], [0x5cu8; 64]);
        for (i, byte) in key.iter().enumerate() {
            inner_pad[i] ^= byte;
            outer_pad[i] ^= byte;
        }
        let inner = Sha256::new().chain_update(inner_pad).chain_update(b"what do ya want for nothing?").finalize();
        let mac: [u8; 32] = Sha256::new().chain_update(outer_pad).chain_update(inner).finalize().into();
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn a_seal_binds_the_pod_the_record_and_the_status_and_the_key() {
        let keys = RecordKeys::from_secret(b"secret");
        let seal = keys.seal("ns", "pod", "pod: changed", "{}");
        assert!(seal.starts_with("v1:") && seal.len() == 3 + 32, "{seal}");
        assert!(keys.verify("ns", "pod", "pod: changed", "{}", &seal));
        for (ns, name, record, status) in [
            ("other", "pod", "pod: changed", "{}"),
            ("ns", "other", "pod: changed", "{}"),
            ("ns", "pod", "pod: forged", "{}"),
            ("ns", "pod", "pod: changed", "{\"a\":1}"),
        ] {
            assert!(!keys.verify(ns, name, record, status, &seal), "{ns} {name} {record} {status}");
        }
        // Parts do not run into each other.
        assert!(!keys.verify("nsp", "od", "pod: changed", "{}", &seal));
        assert!(!RecordKeys::from_secret(b"another").verify("ns", "pod", "pod: changed", "{}", &seal));
        assert!(!RecordKeys::offline().verify("ns", "pod", "pod: changed", "{}", &seal));
        // After a rotation the previous key is still accepted, and the new one seals.
        let rotated = keys.rotated(b"renewed");
        assert!(rotated.verify("ns", "pod", "pod: changed", "{}", &seal));
        assert_ne!(rotated.seal("ns", "pod", "pod: changed", "{}"), seal);
        assert!(!rotated.rotated(b"again").verify("ns", "pod", "pod: changed", "{}", &seal), "only one previous key");
    }

    #[test]
    fn the_status_splits_into_its_object_and_seal() {
        assert_eq!(split_status(r#"{"version":"1","seal":"v1:ab"}"#), Some((r#"{"version":"1"}"#.to_owned(), "v1:ab".to_owned())));
        assert_eq!(split_status(r#"{"version":"1"}"#), None);
        assert_eq!(split_status("forged"), None);
        assert_eq!(split_status(r#"{"seal":1}"#), None);
    }
}
