//! Turning arbitrary ids into valid Kubernetes label values.
//!
//! A label value is empty or at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends. Ids such
//! as `urn:osa:localhost:dep:abc123` are sanitized; whenever that loses information (a character replaced
//! or the value shortened) a short hash of the original id is appended, so distinct ids stay distinct.

use sha2::{Digest, Sha256};

pub const MAX_LABEL_VALUE_LEN: usize = 63;
const HASH_LEN: usize = 10;

/// Whether `value` is a valid, non-empty label value as is.
pub fn is_valid_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL_VALUE_LEN
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// A valid label value for `id`: the id itself when it already is one, else a sanitized, possibly
/// shortened form with `-<hash>` appended.
pub fn label_value_for(id: &str) -> String {
    if is_valid_label_value(id) {
        return id.to_owned();
    }
    let hash = short_hash(id);
    let room = MAX_LABEL_VALUE_LEN - HASH_LEN - 1;
    let sanitized: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' }).take(room).collect();
    let trimmed = sanitized.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() { hash } else { format!("{trimmed}-{hash}") }
}

/// First hex characters of the SHA-256 of `text`.
pub fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(HASH_LEN);
    for byte in digest.iter().take(HASH_LEN / 2) {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn valid_ids_are_kept_verbatim() {
        for id in ["abc123", "3f2c1b9e-1d7a-4c8e-9b1a-2e4f6a8c0d1e", "a", "A.b_c-D", &"x".repeat(63)] {
            assert_eq!(label_value_for(id), id);
        }
    }

    #[test]
    fn sanitized_values_are_valid_and_keep_a_readable_prefix() {
        let value = label_value_for("urn:osa:localhost:dep:abc123");
        assert!(value.starts_with("urn-osa-localhost-dep-abc123-"), "{value}");
        for id in [
            "urn:osa:localhost:dep:abc123",
            "-leading",
            "trailing-",
            "ünïcødé",
            "",
            ":::",
            " ",
            &"y".repeat(64),
            &"é".repeat(100),
            "a/b",
            "-._-",
        ] {
            let value = label_value_for(id);
            assert!(is_valid_label_value(&value), "{id:?} -> {value:?}");
        }
    }

    #[test]
    fn distinct_ids_stay_distinct() {
        let long = "p".repeat(80);
        let ids = [
            "urn:osa:a".to_owned(),
            "urn-osa-a".to_owned(),
            "urn/osa/a".to_owned(),
            format!("{long}1"),
            format!("{long}2"),
            "-x".to_owned(),
            "x".to_owned(),
            "x-".to_owned(),
        ];
        let values: HashSet<String> = ids.iter().map(|id| label_value_for(id)).collect();
        assert_eq!(values.len(), ids.len(), "{values:?}");
    }

    #[test]
    fn length_is_capped_at_63() {
        assert_eq!(label_value_for(&"z".repeat(200)).len(), 63);
        assert!(label_value_for(&"z".repeat(64)).ends_with(&short_hash(&"z".repeat(64))));
    }
}
