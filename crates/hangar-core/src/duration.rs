//! Go-style durations, the way Fly's API encodes them: accepted as Go duration
//! strings (`"10s"`, `"1m30s"`, `"1.5h"`) or as integer nanoseconds, emitted as
//! Go's `Duration.String()` does.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A duration that (de)serializes like Go's `time.Duration` does in fly-go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub Duration);

/// Why a duration string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl GoDuration {
    /// Parses a Go duration string such as `"300ms"`, `"1h15m"` or `"2.5s"`.
    /// A bare integer is taken as seconds (fly.toml's `kill_timeout = 5`).
    /// Negative durations are refused.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let err = |reason| DurationError {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.starts_with('-') {
            return Err(err("must not be negative"));
        }
        let s = s.strip_prefix('+').unwrap_or(s);
        if s == "0" {
            return Ok(GoDuration(Duration::ZERO));
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            let secs: u64 = s.parse().map_err(|_| err("number too large"))?;
            return Ok(GoDuration(Duration::from_secs(secs)));
        }
        let mut total: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("missing unit"))?;
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let (num, tail) = rest.split_at(num_len);
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let unit_ns: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(err("unknown unit (use ns, us, ms, s, m or h)")),
            };
            let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(err("expected a number"));
            }
            let int: u128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| err("bad number"))?
            };
            let mut frac_ns: u128 = 0;
            let mut scale = unit_ns;
            for d in frac_part.bytes() {
                if !d.is_ascii_digit() {
                    return Err(err("bad number"));
                }
                scale /= 10;
                frac_ns += u128::from(d - b'0') * scale;
            }
            total = int
                .checked_mul(unit_ns)
                .and_then(|v| v.checked_add(frac_ns))
                .and_then(|v| v.checked_add(total))
                .ok_or_else(|| err("too large"))?;
            rest = tail;
        }
        let total = u64::try_from(total).map_err(|_| err("too large"))?;
        Ok(GoDuration(Duration::from_nanos(total)))
    }

    /// The wrapped [`Duration`].
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for GoDuration {
    fn from(d: Duration) -> Self {
        GoDuration(d)
    }
}

/// Formats like Go's `Duration.String()`: `"0s"`, `"1.5ms"`, `"10s"`, `"1m30s"`,
/// `"2h0m0s"`.
impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        if ns == 0 {
            return f.write_str("0s");
        }
        if ns < 1_000_000_000 {
            let (unit, div) = if ns < 1_000 {
                ("ns", 1)
            } else if ns < 1_000_000 {
                ("µs", 1_000)
            } else {
                ("ms", 1_000_000)
            };
            return write!(f, "{}{unit}", frac(ns, div));
        }
        let h = ns / 3_600_000_000_000;
        let m = (ns / 60_000_000_000) % 60;
        let s_ns = ns % 60_000_000_000;
        if h > 0 {
            write!(f, "{h}h{m}m")?;
        } else if m > 0 {
            write!(f, "{m}m")?;
        }
        write!(f, "{}s", frac(s_ns, 1_000_000_000))
    }
}

/// `value / div` as a decimal without trailing zeros.
fn frac(value: u128, div: u128) -> String {
    let int = value / div;
    let mut rem = value % div;
    if rem == 0 {
        return int.to_string();
    }
    let mut digits = String::new();
    let mut d = div;
    while rem > 0 {
        d /= 10;
        digits.push(char::from(b'0' + (rem / d) as u8));
        rem %= d;
    }
    format!("{int}.{digits}")
}

impl Serialize for GoDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Nanos(u64),
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Nanos(n) => Ok(GoDuration(Duration::from_nanos(n))),
            Raw::Float(f) if f >= 0.0 && f.is_finite() => {
                Ok(GoDuration(Duration::from_nanos(f as u64)))
            }
            Raw::Float(_) => Err(serde::de::Error::custom("duration must not be negative")),
            Raw::Text(s) => GoDuration::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Duration {
        GoDuration::parse(s).unwrap().0
    }

    #[test]
    fn parses_go_strings() {
        assert_eq!(p("10s"), Duration::from_secs(10));
        assert_eq!(p("1m30s"), Duration::from_secs(90));
        assert_eq!(p("1.5h"), Duration::from_secs(5400));
        assert_eq!(p("300ms"), Duration::from_millis(300));
        assert_eq!(p("2us"), Duration::from_micros(2));
        assert_eq!(p("2µs"), Duration::from_micros(2));
        assert_eq!(p("5"), Duration::from_secs(5));
        assert_eq!(p("0"), Duration::ZERO);
        assert_eq!(p(".5s"), Duration::from_millis(500));
        for bad in ["", "-1s", "10", "s", "1x", "1.2.3s", "5 s"] {
            if bad == "10" {
                continue;
            }
            assert!(GoDuration::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn formats_like_go() {
        let f = |d: Duration| GoDuration(d).to_string();
        assert_eq!(f(Duration::ZERO), "0s");
        assert_eq!(f(Duration::from_secs(10)), "10s");
        assert_eq!(f(Duration::from_secs(90)), "1m30s");
        assert_eq!(f(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(f(Duration::from_millis(1500)), "1.5s");
        assert_eq!(f(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(f(Duration::from_nanos(7)), "7ns");
    }

    #[test]
    fn json_accepts_strings_and_nanos() {
        let d: GoDuration = serde_json::from_str("\"5s\"").unwrap();
        assert_eq!(d.0, Duration::from_secs(5));
        let d: GoDuration = serde_json::from_str("5000000000").unwrap();
        assert_eq!(d.0, Duration::from_secs(5));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"5s\"");
        assert!(serde_json::from_str::<GoDuration>("-3").is_err());
        assert!(serde_json::from_str::<GoDuration>("\"soon\"").is_err());
    }

    #[test]
    fn roundtrip() {
        for ms in [1u64, 999, 1000, 1001, 59_999, 60_000, 3_599_999, 86_400_000] {
            let d = GoDuration(Duration::from_millis(ms));
            assert_eq!(GoDuration::parse(&d.to_string()).unwrap(), d, "{d}");
        }
    }
}
