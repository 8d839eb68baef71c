//! Duration text in the two dialects the gate reads: human strings in the config (`"10s"`, `"7d"`)
//! and Go's `time.Duration` strings in CrowdSec decisions (`"59m58.646682607s"`, `"-1h2m"`).
//!
//! Both parsers reject rather than guess: a config typo is an error naming the key, and a decision
//! whose duration does not parse is skipped by the caller and counted, never treated as "forever".

use std::time::Duration;

/// Why a config duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing but whitespace.
    #[error("empty duration")]
    Empty,
    /// Not a humantime duration; the text and humantime's reason.
    #[error("invalid duration {text:?}: {reason}")]
    Invalid {
        /// The duration as written.
        text: String,
        /// What humantime said.
        reason: String,
    },
}

/// Parses a config duration such as `"10s"`, `"5m"`, `"1h30m"`, `"7d"`, `"250ms"`.
///
/// # Errors
/// Empty, or not a humantime duration.
pub fn parse_human(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    humantime::parse_duration(text).map_err(|e| DurationError::Invalid {
        text: text.to_owned(),
        reason: e.to_string(),
    })
}

/// Formats a duration so that [`parse_human`] reads it back exactly: the largest units first,
/// no spaces (`"7d"`, `"1h30m"`, `"250ms"`, `"0s"`).
pub fn format_human(d: Duration) -> String {
    const UNITS: [(&str, u128); 7] = [
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    let mut nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in UNITS {
        let n = nanos / size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(unit);
            nanos %= size;
        }
    }
    out
}

/// Parses a Go `time.Duration` string into whole seconds, rounded up (a ban lasts at least as long
/// as its decision says), saturating at the `i64` range. Negative values are allowed: the LAPI
/// sends them for decisions that have already expired.
pub fn parse_go_seconds(text: &str) -> Result<i64, GoDurationError> {
    let bytes = text.as_bytes();
    let (negative, mut rest) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        Some(b'+') => (false, &bytes[1..]),
        Some(_) => (false, bytes),
        None => return Err(GoDurationError),
    };
    if rest == b"0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(GoDurationError);
    }
    // Accumulate in nanoseconds as u128: 2^127 ns is far beyond any real duration, and every
    // step below saturates, so a hostile string cannot overflow.
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.first() {
            Some(b'.') => {
                let frac_len = after[1..].iter().take_while(|b| b.is_ascii_digit()).count();
                (&after[1..=frac_len], &after[1 + frac_len..])
            }
            _ => (&after[..0], after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(GoDurationError);
        }
        let unit_len = after
            .iter()
            .take_while(|b| !b.is_ascii_digit() && **b != b'.')
            .count();
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            b"ns" => 1,
            // "us", and "µs" with either the micro sign (U+00B5) or Greek mu (U+03BC).
            b"us" | [0xC2, 0xB5, b's'] | [0xCE, 0xBC, b's'] => 1_000,
            b"ms" => 1_000_000,
            b"s" => 1_000_000_000,
            b"m" => 60_000_000_000,
            b"h" => 3_600_000_000_000,
            _ => return Err(GoDurationError),
        };
        let mut value: u128 = 0;
        for &d in int_part {
            value = value
                .saturating_mul(10)
                .saturating_add(u128::from(d - b'0'));
        }
        total = total.saturating_add(value.saturating_mul(scale));
        // Only the first 9 fractional digits can matter for nanoseconds.
        let mut frac_scale = scale;
        for &d in frac_part.iter().take(18) {
            frac_scale /= 10;
            total = total.saturating_add(u128::from(d - b'0') * frac_scale);
        }
        rest = after;
    }
    let secs = total.div_ceil(1_000_000_000);
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    Ok(if negative { -secs } else { secs })
}

/// A CrowdSec duration that is not a Go duration string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid Go duration")]
pub struct GoDurationError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ok = [
            ("0", 0),
            ("4h", 14_400),
            ("59m58.646682607s", 3_599),
            ("-1h2m3.5s", -3_724),
            ("1.5s", 2),
            ("500ms", 1),
            ("1µs", 1),
            ("3h59m59s", 14_399),
            ("+10s", 10),
            ("-0.000000001s", -1),
            ("99999999999999999999999h", i64::MAX),
        ];
        for (text, want) in ok {
            assert_eq!(parse_go_seconds(text), Ok(want), "{text}");
        }
        for bad in [
            "", "-", "10", "1d", "s", ".s", "1.2.3s", "1h-2m", "abc", "1 h",
        ] {
            assert_eq!(parse_go_seconds(bad), Err(GoDurationError), "{bad:?}");
        }
    }

    #[test]
    fn human_round_trip() {
        for d in [
            Duration::from_secs(0),
            Duration::from_millis(250),
            Duration::from_secs(10),
            Duration::from_secs(5400),
            Duration::from_secs(7 * 86_400),
            Duration::from_nanos(1_000_000_001),
        ] {
            assert_eq!(parse_human(&format_human(d)), Ok(d), "{}", format_human(d));
        }
        assert_eq!(format_human(Duration::from_secs(604_800)), "7d");
        assert!(parse_human("").is_err());
        assert!(parse_human("ten seconds").is_err());
    }
}
