//! Reading the RFC 3339 timestamps the journal stores, fast.
//!
//! chrono stores a `DateTime<Utc>` through serde as text (`2026-11-30T05:20:18.465945117Z`)
//! and reads it back with its general RFC 3339 parser, which was a fifth of the time of
//! reading a record (and so of every log pass: open, verify, reads). [`deserialize`] reads
//! the one shape chrono writes for UTC — `YYYY-MM-DDTHH:MM:SS`, an optional fraction of 1 to
//! 9 digits, `Z` — directly, and hands anything else to chrono's own parser, so it accepts
//! exactly what chrono accepts and gives the same instant. The bytes written do not change.

use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use serde::de::{self, Deserializer, Visitor};

/// Deserializes a `DateTime<Utc>` as chrono does (`#[serde(deserialize_with = ...)]`).
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    d.deserialize_str(TimestampVisitor)
}

/// Deserializes an `Option<DateTime<Utc>>` as chrono does.
pub(crate) fn deserialize_option<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    d.deserialize_option(OptionVisitor)
}

/// Parses `text` as chrono's serde does: the fast path for chrono's own UTC form, chrono's
/// RFC 3339 parser for the rest.
pub(crate) fn parse(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    match parse_utc_form(text.as_bytes()) {
        Some(at) => Ok(at),
        None => text
            .parse::<DateTime<FixedOffset>>()
            .map(|at| at.with_timezone(&Utc)),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, or `None` (not this form, or not a valid instant in
/// it: the caller's fallback then decides, with chrono's error).
fn parse_utc_form(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        b.get(range)?.iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, c)| b[at] != c) {
        return None;
    }
    let year = i32::try_from(digits(0..4)?).ok()?;
    let (month, day) = (digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            digits(20..20 + fraction.len())? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    if second > 59 {
        // A leap second: chrono's parser has its own rules for it.
        return None;
    }
    let at =
        NaiveDate::from_ymd_opt(year, month, day)?.and_hms_nano_opt(hour, minute, second, nanos)?;
    Some(at.and_utc())
}

struct TimestampVisitor;

impl Visitor<'_> for TimestampVisitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an RFC 3339 date and time")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<DateTime<Utc>, E> {
        parse(text).map_err(E::custom)
    }
}

struct OptionVisitor;

impl<'de> Visitor<'de> for OptionVisitor {
    type Value = Option<DateTime<Utc>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an optional RFC 3339 date and time")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{SecondsFormat, TimeZone};
    use proptest::prelude::*;

    fn chrono_reads(text: &str) -> Option<DateTime<Utc>> {
        text.parse::<DateTime<FixedOffset>>()
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }

    #[test]
    fn reads_what_chrono_writes() {
        let at = Utc.with_ymd_and_hms(2026, 11, 30, 5, 20, 18).unwrap()
            + chrono::Duration::nanoseconds(465_945_117);
        let text = serde_json::to_string(&at).unwrap();
        assert_eq!(text, "\"2026-11-30T05:20:18.465945117Z\"");
        let mut de = serde_json::Deserializer::from_str(&text);
        assert_eq!(deserialize(&mut de).unwrap(), at);
        assert_eq!(parse_utc_form(b"2026-11-30T05:20:18.465945117Z"), Some(at));
    }

    #[test]
    fn anything_else_is_chronos_to_judge() {
        for text in [
            "2026-11-30T05:20:18+00:00",
            "2026-11-30T05:20:18.5+01:30",
            "2026-11-30t05:20:18Z",
            "2026-11-30 05:20:18Z",
            "2026-02-30T05:20:18Z",
            "2026-11-30T24:00:00Z",
            "2026-11-30T23:59:60Z",
            "2026-11-30T05:20:18.Z",
            "2026-11-30T05:20:18.1234567891Z",
            "+2026-11-30T05:20:18Z",
            "2026-1a-30T05:20:18Z",
            "",
            "Z",
        ] {
            assert_eq!(parse(text).ok(), chrono_reads(text), "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn the_fast_path_agrees_with_chrono(
            secs in 0i64..253_402_300_799,
            nanos in 0u32..1_000_000_000,
            format in 0usize..5,
            z in any::<bool>(),
        ) {
            let at = Utc.timestamp_opt(secs, nanos).unwrap();
            let format = [
                SecondsFormat::Secs,
                SecondsFormat::Millis,
                SecondsFormat::Micros,
                SecondsFormat::Nanos,
                SecondsFormat::AutoSi,
            ][format];
            let text = at.to_rfc3339_opts(format, z);
            prop_assert_eq!(parse(&text).ok(), chrono_reads(&text));
            prop_assert!(parse(&text).is_ok());
        }

        #[test]
        fn garbage_is_read_as_chrono_reads_it(text in "[0-9TZ:.+-]{0,32}") {
            prop_assert_eq!(parse(&text).ok(), chrono_reads(&text));
        }
    }
}
