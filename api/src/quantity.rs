//! Exact parsing of Kubernetes resource quantities.
//!
//! Grammar (from `k8s.io/apimachinery/pkg/api/resource`):
//! `<sign><digits>[.<digits>]<suffix>` where the suffix is a binary SI suffix (`Ki`..`Ei`), a decimal SI
//! suffix (`n u m "" k M G T P E`) or a decimal exponent (`e3`, `E-2`). Values are held as an exact count
//! of nano-units in an `i128`; like Kubernetes, precision finer than one nano-unit rounds up.

use std::fmt;
use std::str::FromStr;

/// A resource quantity, exact to one nano-unit (10^-9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    nanos: i128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error("quantity {0:?} has no digits")]
    NoDigits(String),
    #[error("quantity {0:?} is malformed: {1}")]
    Malformed(String, &'static str),
    #[error("quantity {0:?} has an unknown suffix {1:?} (use Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E or an exponent like e3)")]
    UnknownSuffix(String, String),
    #[error("quantity {0:?} is too large")]
    TooLarge(String),
}

const NANOS_PER_UNIT: i128 = 1_000_000_000;

impl Quantity {
    pub const ZERO: Quantity = Quantity { nanos: 0 };

    pub fn nanos(self) -> i128 {
        self.nanos
    }

    pub fn is_negative(self) -> bool {
        self.nanos < 0
    }
}

/// Multiplier of a suffix: value = digits × 2^binary × 10^decimal.
fn suffix_scale(suffix: &str) -> Option<(u32, i32)> {
    let scale = match suffix {
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "" => (0, 0),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let negative = exp.starts_with('-');
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Any number of digits is valid; beyond ±100000 the value is too large or rounds up to 1n anyway.
            let magnitude = digits.parse::<i32>().unwrap_or(i32::MAX).min(100_000);
            (0, if negative { -magnitude } else { magnitude })
        }
    };
    Some(scale)
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(QuantityError::Empty);
        }
        let malformed = |why| QuantityError::Malformed(text.to_owned(), why);
        let too_large = || QuantityError::TooLarge(text.to_owned());

        let (negative, rest) = match text.as_bytes()[0] {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let number_len = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
        let (number, suffix) = rest.split_at(number_len);
        let (int_part, frac_part) = match number.split_once('.') {
            Some((_, frac)) if frac.contains('.') => return Err(malformed("more than one decimal point")),
            Some((int, frac)) => (int, frac),
            None => (number, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(QuantityError::NoDigits(text.to_owned()));
        }
        let (binary, decimal) = suffix_scale(suffix).ok_or_else(|| QuantityError::UnknownSuffix(text.to_owned(), suffix.to_owned()))?;

        // mantissa × 10^(decimal - frac_len) × 2^binary, in nano-units.
        let digits = int_part.bytes().chain(frac_part.bytes()).skip_while(|b| *b == b'0');
        let mut mantissa: i128 = 0;
        for digit in digits {
            mantissa = mantissa.checked_mul(10).and_then(|m| m.checked_add(i128::from(digit - b'0'))).ok_or_else(too_large)?;
        }
        let frac_len = i32::try_from(frac_part.len()).map_err(|_| too_large())?;
        let mut exp10 = decimal - frac_len + 9;
        let mut value = mantissa.checked_mul(1i128 << binary).ok_or_else(too_large)?;
        if value != 0 {
            while exp10 > 0 {
                value = value.checked_mul(10).ok_or_else(too_large)?;
                exp10 -= 1;
            }
            if exp10 < 0 {
                // Finer than a nano-unit: divide and round up (away from zero), as Kubernetes does.
                let divisor = 10i128.checked_pow(exp10.unsigned_abs()).unwrap_or(i128::MAX);
                let (quot, rem) = (value / divisor, value % divisor);
                value = if rem == 0 { quot } else { quot + 1 };
            }
        }
        Ok(Quantity { nanos: if negative { -value } else { value } })
    }
}

impl fmt::Display for Quantity {
    /// Canonical-enough rendering for messages: whole units when exact, else milli- or nano-units.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos % NANOS_PER_UNIT == 0 {
            write!(f, "{}", self.nanos / NANOS_PER_UNIT)
        } else if self.nanos % 1_000_000 == 0 {
            write!(f, "{}m", self.nanos / 1_000_000)
        } else {
            write!(f, "{}n", self.nanos)
        }
    }
}

/// How a quantity was written, which decides its canonical form (as in apimachinery).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    BinarySI,
    DecimalSI,
    DecimalExponent,
}

impl Format {
    /// The format of a quantity as written.
    pub fn of(text: &str) -> Format {
        let suffix = text.trim_start_matches(|c: char| c.is_ascii_digit() || matches!(c, '.' | '+' | '-'));
        if suffix.ends_with('i') {
            Format::BinarySI
        } else if suffix.len() > 1 && suffix.starts_with(['e', 'E']) {
            // An exponent (`e3`, `E-2`); `E` alone is the exa suffix, DecimalSI.
            Format::DecimalExponent
        } else {
            Format::DecimalSI
        }
    }
}

impl Quantity {
    /// The form kube-apiserver stores: `0.5` → `500m`, `1024Mi` → `1Gi`, `2000` → `2k`, `1.5Gi` → `1536Mi`.
    pub fn canonical(self, format: Format) -> String {
        if self.nanos == 0 {
            return "0".to_owned();
        }
        let units = self.nanos / NANOS_PER_UNIT;
        if format == Format::BinarySI && self.nanos % NANOS_PER_UNIT == 0 && units.abs() >= 1024 {
            let suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
            let power = (0..suffixes.len()).rev().find(|k| units % (1i128 << (10 * k)) == 0).unwrap_or(0);
            return format!("{}{}", units >> (10 * power), suffixes[power]);
        }
        // The largest power of 1000 that leaves an integer mantissa.
        let (exponent, mantissa) = (-3..=6)
            .rev()
            .map(|k: i32| (3 * k, 10i128.pow((3 * k + 9) as u32)))
            .find(|(_, scale)| self.nanos % scale == 0)
            .map(|(exponent, scale)| (exponent, self.nanos / scale))
            .unwrap_or((-9, self.nanos));
        let suffix = match (format, exponent) {
            (_, 0) => String::new(),
            (Format::DecimalExponent, e) => format!("e{e}"),
            (_, e) => ["n", "u", "m", "", "k", "M", "G", "T", "P", "E"][((e + 9) / 3) as usize].to_owned(),
        };
        format!("{mantissa}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> i128 {
        s.parse::<Quantity>().unwrap_or_else(|e| panic!("{s}: {e}")).nanos()
    }

    #[test]
    fn parses_kubernetes_forms_exactly() {
        let g = 1_000_000_000i128;
        assert_eq!(q("1Gi"), 1_073_741_824 * g);
        assert_eq!(q("500m"), 500_000_000);
        assert_eq!(q("1e3"), 1000 * g);
        assert_eq!(q("1E3"), 1000 * g);
        assert_eq!(q("0.5"), 500_000_000);
        assert_eq!(q(".5"), 500_000_000);
        assert_eq!(q("5."), 5 * g);
        assert_eq!(q("129M"), 129_000_000 * g);
        assert_eq!(q("128974848"), 128_974_848 * g);
        assert_eq!(q("123Mi"), 123 * 1024 * 1024 * g);
        assert_eq!(q("1.5Gi"), 1_610_612_736 * g);
        assert_eq!(q("100n"), 100);
        assert_eq!(q("100u"), 100_000);
        assert_eq!(q("2k"), 2000 * g);
        assert_eq!(q("1e-3"), 1_000_000);
        assert_eq!(q("1e+3"), 1000 * g);
        assert_eq!(q("+3"), 3 * g);
        assert_eq!(q("-3"), -3 * g);
        assert_eq!(q("0"), 0);
        assert_eq!(q("0Gi"), 0);
        assert_eq!(q("000001"), g);
        assert_eq!(q("8Ei"), (1i128 << 63) * g);
    }

    #[test]
    fn sub_nano_precision_rounds_up_like_kubernetes() {
        assert_eq!(q("1e-10"), 1);
        assert_eq!(q("0.0000000001"), 1);
        assert_eq!(q("1.0000000001"), 1_000_000_001);
        assert_eq!(q("1n"), 1);
    }

    #[test]
    fn decimal_and_binary_compare_exactly() {
        assert!(q("1Gi") > q("1G"));
        assert!(q("1000Mi") < q("1Gi"));
        assert_eq!(q("1024Mi"), q("1Gi"));
        assert_eq!(q("1"), q("1000m"));
        assert_eq!(q("0.1"), q("100m"));
        assert!(q("129M") > q("123Mi"));
    }

    #[test]
    fn rejects_malformed_quantities_with_specific_errors() {
        assert_eq!("".parse::<Quantity>(), Err(QuantityError::Empty));
        for bad in ["Gi", "-", ".", "+."] {
            assert!(matches!(bad.parse::<Quantity>(), Err(QuantityError::NoDigits(_)) | Err(QuantityError::UnknownSuffix(..))), "{bad}");
        }
        for (bad, suffix) in [
            ("1GB", "GB"),
            ("1K", "K"),
            ("4gi", "gi"),
            ("1 Gi", " Gi"),
            ("1e", "e"),
            ("1e3.5", "e3.5"),
            ("1Gi ", "Gi "),
            ("0x10", "x10"),
            ("1ki", "ki"),
        ] {
            assert_eq!(bad.parse::<Quantity>(), Err(QuantityError::UnknownSuffix(bad.into(), suffix.into())), "{bad}");
        }
        assert!(matches!("1.2.3".parse::<Quantity>(), Err(QuantityError::Malformed(..))));
        assert!(matches!("--1".parse::<Quantity>(), Err(QuantityError::NoDigits(_))));
    }

    #[test]
    fn huge_values_are_errors_not_overflows() {
        assert!(matches!("1e40".parse::<Quantity>(), Err(QuantityError::TooLarge(_))));
        assert!(matches!("99999999999999999999999999999999999999999".parse::<Quantity>(), Err(QuantityError::TooLarge(_))));
        assert!(matches!("9999999999999999999999Ei".parse::<Quantity>(), Err(QuantityError::TooLarge(_))));
        assert!(matches!("1e99999".parse::<Quantity>(), Err(QuantityError::TooLarge(_))));
        assert!(matches!("1e99999999999999999999".parse::<Quantity>(), Err(QuantityError::TooLarge(_))));
        assert_eq!(q("1e00003"), 1000 * 1_000_000_000);
        assert_eq!(q("1e-99999999999999999999"), 1);
        // Tiny exponents of zero are fine, and tiny exponents of non-zero round up to one nano.
        assert_eq!(q("0e-9999"), 0);
        assert_eq!(q("5e-9999"), 1);
    }

    #[test]
    fn canonical_forms_match_kube_apiserver() {
        for (written, canonical) in [
            ("0.5", "500m"),
            ("1000m", "1"),
            ("1500m", "1500m"),
            ("1.5", "1500m"),
            ("1500", "1500"),
            ("2000", "2k"),
            ("1024Mi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("0.5Ki", "512"),
            ("1536", "1536"),
            ("129M", "129M"),
            ("1e3", "1e3"),
            ("1.5e3", "1500"),
            ("12e3", "12e3"),
            ("100n", "100n"),
            ("0.1u", "100n"),
            ("0Gi", "0"),
            ("8Ei", "8Ei"),
            ("1E", "1E"),
            ("1.5E", "1500P"),
        ] {
            let value: Quantity = written.parse().unwrap();
            assert_eq!(value.canonical(Format::of(written)), canonical, "{written}");
        }
    }

    #[test]
    fn displays_readably() {
        assert_eq!("2".parse::<Quantity>().unwrap().to_string(), "2");
        assert_eq!("250m".parse::<Quantity>().unwrap().to_string(), "250m");
        assert_eq!("1n".parse::<Quantity>().unwrap().to_string(), "1n");
    }
}
