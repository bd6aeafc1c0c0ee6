//! Durations (`500ms`, `10s`, `2m`, `1h30m`) and byte sizes (`512`, `64Ki`, `1.5Gi`, `1G`), as written in the
//! proxy's route table and on the webhook's command line. One parser of each for every crate.
//!
//! Durations are the integer subset of Go's `time.ParseDuration` that Kubernetes users write (`--timeout=5m`):
//! no crate parses exactly that (humantime reads `1 month` and not `1.5h`), and it is a dozen lines. Sizes are
//! Kubernetes quantities ([`crate::quantity`], exact), in whole bytes.

use std::time::Duration;

use crate::quantity::Quantity;

const DURATION_HINT: &str = "a duration like 500ms, 10s, 2m or 1h30m";

/// One or more `<digits><unit>` parts, unit `ms`, `s`, `m` or `h`, added up; no sign, no fraction.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let not_one = || format!("{text:?} is not {DURATION_HINT}");
    if text.is_empty() {
        return Err(not_one());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().map_err(|_| not_one())?;
        let after = &rest[digits..];
        let unit_len = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
        let part = match &after[..unit_len] {
            "ms" => Some(Duration::from_millis(number)),
            "s" => Some(Duration::from_secs(number)),
            "m" => number.checked_mul(60).map(Duration::from_secs),
            "h" => number.checked_mul(3600).map(Duration::from_secs),
            _ => return Err(not_one()),
        };
        total = part.and_then(|p| total.checked_add(p)).ok_or_else(|| format!("{text:?} is too long"))?;
        rest = &after[unit_len..];
    }
    Ok(total)
}

/// A Kubernetes quantity of whole bytes: `512`, `64Ki`, `1.5Gi`, `1G`, `1e6`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let hint = || format!("{text:?} is not a size like 512, 64Ki, 10Mi, 1.5Gi or 1G");
    let quantity: Quantity = text.parse().map_err(|_| hint())?;
    let nanos = quantity.nanos();
    if nanos < 0 || nanos % 1_000_000_000 != 0 {
        return Err(format!("{text:?} is not a whole number of bytes"));
    }
    u64::try_from(nanos / 1_000_000_000).map_err(|_| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        for bad in ["", "10", "-1s", "1.5h", "1d", "s", "1 s", "ms5"] {
            let error = parse_duration(bad).unwrap_err();
            assert!(error.contains("is not a duration like"), "{bad:?}: {error}");
        }
        assert!(parse_duration("99999999999999999999s").is_err());
        assert_eq!(parse_duration(&format!("{}h", u64::MAX / 60)), Err(format!("\"{}h\" is too long", u64::MAX / 60)));
    }

    #[test]
    fn sizes_are_whole_byte_quantities() {
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("64Ki"), Ok(65536));
        assert_eq!(parse_bytes("10Mi"), Ok(10 << 20));
        assert_eq!(parse_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1e3"), Ok(1000));
        assert!(parse_bytes("1GB").unwrap_err().contains("is not a size like"));
        assert!(parse_bytes("").unwrap_err().contains("is not a size like"));
        assert!(parse_bytes("0.5").unwrap_err().contains("whole number of bytes"));
        assert!(parse_bytes("100m").unwrap_err().contains("whole number of bytes"));
        assert!(parse_bytes("-1Ki").unwrap_err().contains("whole number of bytes"));
        assert!(parse_bytes("99999999999Ti").unwrap_err().contains("too large"));
    }
}
