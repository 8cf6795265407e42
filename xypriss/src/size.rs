//! Memory sizes as users write them: "512MB", "1.5GB", "512 MB", "256MiB", or
//! plain bytes.
//!
//! KB, MB, GB and TB are binary (×1024), as in XyPriss, whose users wrote
//! them; KiB, MiB, GiB and TiB mean the same. Units are case-insensitive, and a
//! bare `K`, `M`, `G` or `T` is accepted too.

use std::{fmt, str::FromStr};

/// A number of bytes parsed from a size string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("a size cannot be empty")]
    Empty,
    #[error(
        "`{text}` is not a size: expected a number with an optional unit, as in 512MB, 1.5GiB or 1048576"
    )]
    NotANumber { text: String },
    #[error("`{unit}` is not a size unit: use B, KB, MB, GB, TB (×1024) or KiB, MiB, GiB, TiB")]
    UnknownUnit { unit: String },
    #[error("`{text}` is negative: a size must be 0 or more")]
    Negative { text: String },
    #[error("`{text}` is too large: sizes stop at 16 EiB")]
    TooLarge { text: String },
}

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Self, SizeError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(SizeError::Empty);
        }
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let unit = unit.trim();
        if number.starts_with('-') {
            return Err(SizeError::Negative { text: text.into() });
        }
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return Err(SizeError::UnknownUnit { unit: unit.into() }),
        };
        let not_a_number = || SizeError::NotANumber { text: text.into() };
        if number.is_empty() {
            return Err(not_a_number());
        }
        if let Ok(whole) = number.parse::<u64>() {
            return whole
                .checked_mul(multiplier)
                .map(Size)
                .ok_or_else(|| SizeError::TooLarge { text: text.into() });
        }
        let value: f64 = number.parse().map_err(|_| not_a_number())?;
        if !value.is_finite() {
            return Err(not_a_number());
        }
        let bytes = value * multiplier as f64;
        if bytes >= u64::MAX as f64 {
            return Err(SizeError::TooLarge { text: text.into() });
        }
        Ok(Size(bytes.round() as u64))
    }
}

impl fmt::Display for Size {
    /// The largest binary unit that keeps the value whole, or bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (unit, name) in UNITS {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{}{name}", self.0 / unit);
            }
        }
        write!(f, "{}B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<u64, SizeError> {
        s.parse::<Size>().map(|s| s.0)
    }

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse("512MB"), Ok(512 << 20));
        assert_eq!(parse("1.5GB"), Ok(3 << 29));
        assert_eq!(parse("512 MB"), Ok(512 << 20));
        assert_eq!(parse("256MiB"), Ok(256 << 20));
        assert_eq!(parse("1048576"), Ok(1 << 20));
        assert_eq!(parse("4kb"), Ok(4096));
        assert_eq!(parse("2T"), Ok(2 << 40));
        assert_eq!(parse("0"), Ok(0));
    }

    #[test]
    fn rejects_bad_sizes_with_a_reason() {
        assert_eq!(parse(""), Err(SizeError::Empty));
        assert!(matches!(parse("-1MB"), Err(SizeError::Negative { .. })));
        assert!(matches!(
            parse("12 parsecs"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(parse("MB"), Err(SizeError::NotANumber { .. })));
        assert!(matches!(
            parse("1.2.3MB"),
            Err(SizeError::NotANumber { .. })
        ));
        assert!(matches!(
            parse("99999999999TB"),
            Err(SizeError::TooLarge { .. })
        ));
        assert!(matches!(parse("1e400"), Err(SizeError::UnknownUnit { .. })));
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        assert_eq!(Size(1 << 20).to_string(), "1MiB");
        assert_eq!(Size(1536 << 20).to_string(), "1536MiB");
        assert_eq!(Size(1000).to_string(), "1000B");
    }
}
