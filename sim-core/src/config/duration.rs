//! Human durations (`90s`, `5m`, `12h`, `10ms`, `1h30m`) and random intervals (`10-30m`,
//! `10m-30m`, `30s-60s`), with serde support that writes back the same human form.
//!
//! Durations are whole numbers with a unit, largest unit first: `h`, `m`, `s`, `ms`, `us`
//! (or `µs`), `ns`. No fractions (`1.5h`): write `1h30m`; that keeps parsing exact, so a
//! dumped config reloads to the very same value.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::RngCore;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::error::ParseValueError;
use super::random;

/// Units from largest to smallest, with their length in nanoseconds.
const UNITS: [(&str, u64); 7] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("µs", 1_000),
    ("ns", 1),
];

/// What a duration looks like, for serde's "expected ..." messages.
const EXPECTED_DURATION: &str = "a duration such as 90s, 5m, 12h, 10ms or 1h30m";

/// Parses a human duration such as `90s`, `5m`, `12h`, `10ms` or `1h30m`.
pub fn parse_duration(input: &str) -> Result<Duration, ParseValueError> {
    let fail = |reason: String| ParseValueError::Duration {
        input: input.to_owned(),
        reason,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(fail("empty".into()));
    }
    if text.starts_with('-') {
        return Err(fail("must not be negative".into()));
    }
    let mut total: u64 = 0;
    // Index into UNITS of the previous part, so `30m1h` and `5m5m` are rejected: one way to
    // write each value keeps configs readable.
    let mut previous: Option<usize> = None;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(fail(if rest == text {
                "expected a number".into()
            } else {
                format!("expected a number at {rest:?}")
            }));
        }
        let (number, tail) = rest.split_at(digits);
        if tail.starts_with('.') || tail.starts_with(',') {
            return Err(fail(
                "fractions are not supported; write 1h30m, not 1.5h".into(),
            ));
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        if unit.is_empty() {
            return Err(fail(format!(
                "missing unit after {number} (h, m, s, ms, us, ns)"
            )));
        }
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(fail(format!("unknown unit {unit:?} (h, m, s, ms, us, ns)")));
        };
        if previous.is_some_and(|p| p >= index) {
            return Err(fail(
                "units must go from largest to smallest, each once".into(),
            ));
        }
        previous = Some(index);
        let too_large = || fail("too large".into());
        let value: u64 = number.parse().map_err(|_| too_large())?;
        let nanos = value.checked_mul(UNITS[index].1).ok_or_else(too_large)?;
        total = total.checked_add(nanos).ok_or_else(too_large)?;
        rest = tail;
    }
    Ok(Duration::from_nanos(total))
}

/// Formats a duration in the form [`parse_duration`] reads: `1h30m`, `90ms`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".into();
    }
    let mut left = duration.as_nanos();
    let mut out = String::new();
    // `µs` is only an alias on input; output sticks to ASCII.
    for (name, nanos) in UNITS.iter().filter(|(name, _)| *name != "µs") {
        let nanos = u128::from(*nanos);
        let count = left / nanos;
        if count > 0 {
            out.push_str(&count.to_string());
            out.push_str(name);
            left -= count * nanos;
        }
    }
    out
}

// === impl Interval ===

/// A range of durations to draw from, such as the time between chaos events.
///
/// Written `10-30m` (the unit of the maximum applies to both), `10m-30m` or `30s-60s`; a
/// single duration (`5m`) means a fixed interval. `min <= max` is checked by
/// `Config::validate`, not here, so the error can name the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    /// Shortest duration drawn.
    pub min: Duration,
    /// Longest duration drawn.
    pub max: Duration,
}

impl Interval {
    /// An interval from `min` to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }

    /// A uniformly random duration in `min..=max` (nanosecond resolution), drawn from `rng`.
    ///
    /// The same RNG state always gives the same duration, even across `rand` releases (see
    /// the `random` module). If `max < min`, returns `min`.
    pub fn sample<R: RngCore + ?Sized>(&self, rng: &mut R) -> Duration {
        let min = self.min.as_nanos();
        let max = self.max.as_nanos();
        if max <= min {
            // Still consume a draw, so the stream position does not depend on the interval.
            rng.next_u64();
            return self.min;
        }
        let span = max - min;
        let offset = match u64::try_from(span) {
            Ok(span) if span < u64::MAX => u128::from(random::below(rng, span + 1)),
            // A span beyond ~584 years: a full-range draw is as uniform as it gets.
            _ => u128::from(rng.next_u64()),
        };
        let nanos = min + offset;
        let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
        Duration::new(secs, (nanos % 1_000_000_000) as u32)
    }
}

impl FromStr for Interval {
    type Err = ParseValueError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| ParseValueError::Interval {
            input: input.to_owned(),
            reason,
        };
        let text = input.trim();
        let parse = |part: &str| parse_duration(part).map_err(|e| fail(reason_of(&e, "")));
        let Some((low, high)) = text.split_once('-') else {
            let fixed = parse_duration(text).map_err(|e| fail(reason_of(&e, text)))?;
            return Ok(Self::new(fixed, fixed));
        };
        let (low, high) = (low.trim(), high.trim());
        if low.is_empty() || high.is_empty() {
            return Err(fail("needs a minimum and a maximum around '-'".into()));
        }
        if high.contains('-') {
            return Err(fail("more than one '-'".into()));
        }
        let max = parse(high)?;
        let min = if low.bytes().all(|b| b.is_ascii_digit()) {
            // `10-30m`: the bare minimum borrows the maximum's unit, which is only
            // unambiguous when the maximum is a single number and unit.
            let unit = high.trim_start_matches(|c: char| c.is_ascii_digit());
            if unit.is_empty() || unit.contains(|c: char| c.is_ascii_digit()) {
                return Err(fail(format!(
                    "give the unit on both sides (e.g. {low}m-{high}) when the maximum \
                     is not a single number and unit"
                )));
            }
            parse(&format!("{low}{unit}"))?
        } else {
            parse(low)?
        };
        Ok(Self::new(min, max))
    }
}

/// The reason inside a duration error, to re-wrap it as an interval error; names the part
/// that failed unless it is the `whole` interval text.
fn reason_of(error: &ParseValueError, whole: &str) -> String {
    match error {
        ParseValueError::Duration { input, reason } if input.trim() == whole => reason.clone(),
        ParseValueError::Duration { input, reason } => format!("{input:?}: {reason}"),
        other => other.to_string(),
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            f.write_str(&format_duration(self.min))
        } else {
            let (min, max) = (format_duration(self.min), format_duration(self.max));
            write!(f, "{min}-{max}")
        }
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntervalVisitor;
        impl Visitor<'_> for IntervalVisitor {
            type Value = Interval;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an interval such as 10-30m, 10m-30m or 30s-60s")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Interval, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(IntervalVisitor)
    }
}

// === serde for std Duration ===

/// Visitor shared by [`human`] and [`human_opt`]: a string in the human form.
struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED_DURATION)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

/// `#[serde(with = "human")]` for a `Duration` written as `90s`, `5m`, `1h30m`.
pub mod human {
    use super::*;

    /// Writes the duration in human form.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*value))
    }

    /// Reads a human duration; numbers without a unit are rejected (seconds? millis?).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// `#[serde(default, with = "human_opt")]` for an `Option<Duration>` (`null` or absent = None).
pub mod human_opt {
    use super::*;

    /// Writes the duration in human form, or `null`.
    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_some(&format_duration(*d)),
            None => serializer.serialize_none(),
        }
    }

    /// Reads `null` or a human duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        struct OptVisitor;
        impl<'de> Visitor<'de> for OptVisitor {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{EXPECTED_DURATION}, or null")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_str(DurationVisitor).map(Some)
            }
        }
        deserializer.deserialize_option(OptVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn d(text: &str) -> Duration {
        parse_duration(text).expect("valid duration")
    }

    #[test]
    fn parses_plan_durations() {
        assert_eq!(d("90s"), Duration::from_secs(90));
        assert_eq!(d("5m"), Duration::from_secs(300));
        assert_eq!(d("12h"), Duration::from_secs(12 * 3600));
        assert_eq!(d("10ms"), Duration::from_millis(10));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d(" 2m5s "), Duration::from_secs(125));
        assert_eq!(d("250us"), Duration::from_micros(250));
        assert_eq!(d("3µs"), Duration::from_micros(3));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d("0s"), Duration::ZERO);
    }

    #[test]
    fn rejects_bad_durations_with_reasons() {
        for (text, fragment) in [
            ("", "empty"),
            ("5", "missing unit"),
            ("5x", "unknown unit \"x\""),
            ("1.5h", "fractions"),
            ("-5m", "negative"),
            ("m", "expected a number"),
            ("30m1h", "largest to smallest"),
            ("5m5m", "largest to smallest"),
            ("99999999999999999999h", "too large"),
            ("5 m", "unknown unit"),
        ] {
            let err = parse_duration(text).expect_err(text).to_string();
            assert!(err.contains(fragment), "{text:?}: {err}");
            assert!(err.contains(&format!("{text:?}")), "names the input: {err}");
        }
    }

    #[test]
    fn formats_back_to_the_same_value() {
        for text in [
            "90s", "5m", "12h", "10ms", "1h30m", "1s500ms", "3us", "1h1ns", "0s",
        ] {
            let value = d(text);
            assert_eq!(d(&format_duration(value)), value, "{text}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(10)), "10ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn parses_plan_intervals() {
        let m = |n: u64| Duration::from_secs(60 * n);
        let i = |text: &str| text.parse::<Interval>().expect("valid interval");
        assert_eq!(i("10-30m"), Interval::new(m(10), m(30)));
        assert_eq!(i("10m-30m"), Interval::new(m(10), m(30)));
        assert_eq!(i("30s-60s"), Interval::new(Duration::from_secs(30), m(1)));
        assert_eq!(i("30s - 2m"), Interval::new(Duration::from_secs(30), m(2)));
        assert_eq!(i("5m"), Interval::new(m(5), m(5)));
        for text in ["10m-30m", "30s-1m", "5m", "1h-1h30m"] {
            assert_eq!(i(&i(text).to_string()), i(text), "{text}");
        }
        assert_eq!(i("10-30m").to_string(), "10m-30m");
    }

    #[test]
    fn rejects_bad_intervals() {
        for (text, fragment) in [
            ("10-30", "missing unit"),
            ("-30m", "minimum and a maximum"),
            ("10m-", "minimum and a maximum"),
            ("1-2-3m", "more than one"),
            ("10-1h30m", "unit on both sides"),
            ("10x-30m", "unknown unit"),
            ("soon", "expected a number"),
        ] {
            let err = text.parse::<Interval>().expect_err(text).to_string();
            assert!(err.contains(fragment), "{text:?}: {err}");
            assert!(err.starts_with("invalid interval"), "{err}");
        }
    }

    #[test]
    fn sample_is_in_range_and_deterministic() {
        let interval = Interval::new(Duration::from_secs(600), Duration::from_secs(1800));
        let draws = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..200)
                .map(|_| interval.sample(&mut rng))
                .collect::<Vec<_>>()
        };
        let a = draws(42);
        assert!(a.iter().all(|x| (interval.min..=interval.max).contains(x)));
        assert_eq!(a, draws(42), "same seed, same schedule");
        assert_ne!(a, draws(43), "different seed, different schedule");
        // Spread over the range, not stuck at one end.
        assert!(a.iter().any(|x| *x < Duration::from_secs(900)));
        assert!(a.iter().any(|x| *x > Duration::from_secs(1500)));

        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let fixed = Interval::new(Duration::from_secs(5), Duration::from_secs(5));
        assert_eq!(fixed.sample(&mut rng), Duration::from_secs(5));
        let reversed = Interval::new(Duration::from_secs(9), Duration::from_secs(1));
        assert_eq!(reversed.sample(&mut rng), Duration::from_secs(9));
    }
}
