//! Kubernetes quantity parsing ([`tollgate_webhook::quantity::Quantity`]) on arbitrary text.
//!
//! Properties: never panics (no overflow: the build has overflow checks on); a parsed quantity's
//! canonical form, in each of the three formats, re-parses to the same value and is its own canonical
//! form; its readable form (`Display`) re-parses to the same value; a sign in front negates exactly
//! (`+x` is `x`, `-x` is minus `x`; sub-nano rounding goes away from zero on both sides).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_webhook::quantity::{Format, Quantity};

fn parse(text: &str) -> Quantity {
    text.parse().unwrap_or_else(|e| panic!("{text:?} does not re-parse: {e}"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(value) = text.parse::<Quantity>() else { return };
    for format in [Format::of(text), Format::BinarySI, Format::DecimalSI, Format::DecimalExponent] {
        let canonical = value.canonical(format);
        assert_eq!(parse(&canonical), value, "{text:?} -> {canonical:?} ({format:?})");
        // Read back, the canonical form is canonical again (kube-apiserver would store it unchanged) —
        // except where apimachinery itself is not: a BinarySI value of whole units that is no multiple of
        // 1024 is written without a suffix (`9000`), which reads back as DecimalSI (`9k`).
        let binary_plain = format == Format::BinarySI && canonical.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit());
        if !binary_plain {
            assert_eq!(parse(&canonical).canonical(Format::of(&canonical)), canonical, "{text:?} -> {canonical:?} is not a fixed point");
        }
    }
    let shown = value.to_string();
    assert_eq!(parse(&shown), value, "{text:?} -> {shown:?}");
    if !text.starts_with(['+', '-']) {
        assert_eq!(parse(&format!("+{text}")), value, "+{text:?}");
        let negated = parse(&format!("-{text}"));
        assert_eq!(negated.nanos(), -value.nanos(), "-{text:?}");
        assert_eq!(negated.is_negative(), value.nanos() > 0);
    }
});
