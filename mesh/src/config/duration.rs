//! Durations as operators write them: `"250ms"`, `"5s"`, `"2m"`, `"1h"`.
//!
//! A bare integer is refused: `timeout = 5` is ambiguous (seconds? ms?) and Envoy and
//! nginx operators both expect a unit.

use std::fmt;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub const fn from_secs(s: u64) -> Self {
        ConfigDuration(Duration::from_secs(s))
    }
}

/// The longest duration a config may give: deadlines are `now + duration`, and a
/// duration near `u64::MAX` seconds would overflow the clock on the first request.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `<integer><unit>` with unit one of `ms`, `s`, `m`, `h`, at most a year.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let n: u64 = number.parse().map_err(|_| {
        format!("`{text}` is not a duration (write e.g. \"250ms\", \"5s\", \"2m\")")
    })?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "" => {
            return Err(format!(
                "`{text}` has no unit (write e.g. \"{n}s\" or \"{n}ms\")"
            ))
        }
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m or h)"
            ))
        }
    };
    if d > MAX_DURATION {
        return Err(format!(
            "`{text}` is longer than a year (8760h), the most weft accepts"
        ));
    }
    Ok(d)
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"5s\" or \"250ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfigDuration, E> {
                parse_duration(v).map(ConfigDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// As a config writes it: `30s`, `250ms`.
impl std::fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn refuses_missing_or_unknown_units() {
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5d")
            .unwrap_err()
            .contains("unknown duration unit"));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn refuses_durations_past_a_year() {
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        let err = parse_duration("18446744073709551615s").unwrap_err();
        assert!(err.contains("longer than a year"), "{err}");
        assert!(parse_duration("8761h").is_err());
    }
}
