//! Human-readable durations in payloads: `"500ms"`, `"30s"`, `"5m"`, `"1h30m"`,
//! `"2d"`. Bare numbers are rejected so that `"timeout": 30` (seconds? ms?)
//! never means something the user did not intend.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a string of `<number><unit>` parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

/// Why a duration string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {}: {reason} (write e.g. \"500ms\", \"30s\", \"5m\", \"1h30m\", \"2d\")",
    crate::headers::shown(input)
)]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

const UNITS: [(&str, u128); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
    ("d", 86_400 * 1_000_000_000),
];

/// Parses a command-line duration (`--lease-ttl 5s`) the way payloads are
/// parsed: the one `value_parser` of every duration flag.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<HumanDuration>().map(|d| d.0).map_err(|e| e.to_string())
}

impl HumanDuration {
    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// From whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }

    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        HumanDuration(Duration::from_millis(ms))
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        HumanDuration(d)
    }
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError { input: input.to_string(), reason };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s == "0" {
            return Ok(HumanDuration(Duration::ZERO));
        }
        let mut total: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let (num, tail) = rest.split_at(num_len);
            let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
                return Err(err(if unit.is_empty() { "missing unit" } else { "unknown unit" }));
            };
            let nanos = match num.split_once('.') {
                None => num.parse::<u128>().map_err(|_| err("number too large"))?.checked_mul(scale),
                Some((int, frac)) => {
                    let value: f64 = format!("{}.{frac}", if int.is_empty() { "0" } else { int })
                        .parse()
                        .map_err(|_| err("malformed number"))?;
                    Some((value * scale as f64).round() as u128)
                }
            }
            .ok_or_else(|| err("too large"))?;
            total = total.checked_add(nanos).ok_or_else(|| err("too large"))?;
            rest = tail;
        }
        let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err("too large"))?;
        Ok(HumanDuration(Duration::new(secs, (total % 1_000_000_000) as u32)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        // Largest units first; sub-second parts in the largest exact unit.
        for (unit, scale) in UNITS.iter().rev() {
            if nanos >= *scale && (*scale >= 1_000_000_000 || nanos.is_multiple_of(*scale)) {
                write!(f, "{}{unit}", nanos / scale)?;
                nanos %= scale;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"30s\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Duration {
        s.parse::<HumanDuration>().unwrap().0
    }

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("5m"), Duration::from_secs(300));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("2d"), Duration::from_secs(172_800));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("250us"), Duration::from_micros(250));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("0s"), Duration::ZERO);
    }

    #[test]
    fn rejects_bare_numbers_and_unknown_units() {
        for bad in ["", "30", "5x", "m", "1h30", "-5s", "s5"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad:?}");
        }
        let err = serde_json::from_str::<HumanDuration>("30").unwrap_err().to_string();
        assert!(err.contains("duration string"), "{err}");
    }

    #[test]
    fn displays_round_trip() {
        for s in ["500ms", "30s", "5m", "1h30m", "2d", "1s500ms", "0s", "1h0m1s"] {
            let parsed: HumanDuration = s.parse().unwrap();
            let shown = parsed.to_string();
            assert_eq!(shown.parse::<HumanDuration>().unwrap(), parsed, "{s} -> {shown}");
        }
        assert_eq!(HumanDuration::from_secs(90).to_string(), "1m30s");
        assert_eq!(HumanDuration::from_millis(1500).to_string(), "1s500ms");
    }
}
