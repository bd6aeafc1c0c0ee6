//! Label-value sanitizing ([`tollgate_webhook::labels::label_value_for`]) on arbitrary ids.
//!
//! Properties: never panics; the output is always a valid label value — at most 63 characters,
//! `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?` (checked here independently of `is_valid_label_value`, and by
//! it) — and never empty; an id that already is one is kept verbatim and any other id is changed (with the
//! hash of the original at the end); the same id always gives the same value. Two ids that both needed
//! changing give different values (their hashes differ), checked on two halves of the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_webhook::labels::{is_valid_label_value, label_value_for, short_hash};

fn valid(value: &str) -> bool {
    let b = value.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    b.len() <= 63
        && match b {
            [] => true,
            [one] => one.is_ascii_alphanumeric(),
            [first, middle @ .., last] => first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() && middle.iter().all(inner),
        }
}

fn sanitized(id: &str) -> String {
    let value = label_value_for(id);
    assert!(valid(&value) && !value.is_empty(), "{id:?} -> {value:?} is not a label value");
    assert!(is_valid_label_value(&value), "{id:?} -> {value:?}");
    assert_eq!(label_value_for(id), value, "{id:?}: not deterministic");
    if valid(id) && !id.is_empty() {
        assert_eq!(value, id, "a valid id is kept");
    } else {
        assert_ne!(value, id);
        assert!(value.ends_with(&short_hash(id)), "{id:?} -> {value:?}: no hash of the original");
    }
    value
}

fuzz_target!(|data: &[u8]| {
    let id = String::from_utf8_lossy(data);
    sanitized(&id);
    // Two ids: split at the first NUL.
    if let Some(at) = data.iter().position(|&b| b == 0) {
        let (a, b) = (String::from_utf8_lossy(&data[..at]), String::from_utf8_lossy(&data[at + 1..]));
        let (va, vb) = (sanitized(&a), sanitized(&b));
        if a != b && [&a, &b].iter().all(|id| id.is_empty() || !valid(id)) {
            assert_ne!(va, vb, "{a:?} and {b:?} collide");
        }
    }
});
