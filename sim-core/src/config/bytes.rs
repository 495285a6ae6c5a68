//! Byte sizes written like nats-server's own limits: `512MB`, `10GB`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::error::ParseValueError;

/// Units with their size. Powers of 1024, because these values configure nats-server's
/// JetStream limits and nats-server reads `GB` as 1024³: the same text means the same
/// limit in our YAML and in a hand-written nats-server config.
const UNITS: [(&str, u64); 5] = [
    ("TB", 1 << 40),
    ("GB", 1 << 30),
    ("MB", 1 << 20),
    ("KB", 1 << 10),
    ("B", 1),
];

/// A size in bytes, written `10GB`, `512MB`, `64KB`, `100B` (units are powers of 1024,
/// case-insensitive; the one-letter forms `K`, `M`, `G`, `T` are accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` × 1024³ bytes.
    pub const fn gib(n: u64) -> Self {
        Self(n << 30)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ParseValueError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| ParseValueError::ByteSize {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let text = input.trim();
        let digits = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        if digits == 0 {
            return Err(fail(if text.starts_with('-') {
                "must not be negative"
            } else {
                "expected a number"
            }));
        }
        let (number, unit) = text.split_at(digits);
        let unit = unit.trim();
        if unit.starts_with('.') {
            return Err(fail("fractions are not supported; write 1536MB, not 1.5GB"));
        }
        let upper = unit.to_ascii_uppercase();
        let multiplier = if upper.is_empty() {
            1
        } else {
            let Some((_, size)) = UNITS
                .iter()
                .find(|(name, _)| *name == upper || (name.len() == 2 && name[..1] == upper))
            else {
                return Err(fail("unknown unit"));
            };
            *size
        };
        let value: u64 = number.parse().map_err(|_| fail("too large"))?;
        value
            .checked_mul(multiplier)
            .map(Self)
            .ok_or_else(|| fail("too large"))
    }
}

impl fmt::Display for ByteSize {
    /// The largest unit that represents the size exactly, so the text parses back to it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, size) = UNITS
            .iter()
            .find(|(_, size)| self.0.is_multiple_of(*size) && self.0 != 0)
            .copied()
            .unwrap_or(("B", 1));
        write!(f, "{}{name}", self.0 / size)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size such as 512MB or 10GB")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
            // A bare number is a count of bytes, as in nats-server's config.
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(text: &str) -> u64 {
        text.parse::<ByteSize>().expect("valid size").bytes()
    }

    #[test]
    fn parses_units() {
        assert_eq!(size("10GB"), 10 << 30);
        assert_eq!(size("50GB"), 50 << 30);
        assert_eq!(size("512MB"), 512 << 20);
        assert_eq!(size("64kb"), 64 << 10);
        assert_eq!(size("2T"), 2 << 40);
        assert_eq!(size("1 GB"), 1 << 30);
        assert_eq!(size("100B"), 100);
        assert_eq!(size("100"), 100);
    }

    #[test]
    fn rejects_bad_sizes() {
        for (text, fragment) in [
            ("", "expected a number"),
            ("GB", "expected a number"),
            ("-1GB", "negative"),
            ("1.5GB", "fractions"),
            ("10XB", "unknown unit"),
            ("10 gigabytes", "unknown unit"),
            ("99999999999TB", "too large"),
        ] {
            let err = text.parse::<ByteSize>().expect_err(text).to_string();
            assert!(err.contains(fragment), "{text:?}: {err}");
        }
    }

    #[test]
    fn displays_the_largest_exact_unit() {
        assert_eq!(ByteSize::gib(10).to_string(), "10GB");
        assert_eq!(ByteSize(1536 << 20).to_string(), "1536MB");
        assert_eq!(ByteSize(1 << 40).to_string(), "1TB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        assert_eq!(ByteSize(0).to_string(), "0B");
        for text in ["10GB", "1536MB", "1000B", "0B", "3KB"] {
            assert_eq!(size(&ByteSize(size(text)).to_string()), size(text));
        }
    }
}
