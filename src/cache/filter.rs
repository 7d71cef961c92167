//! `last_contact_filter` and an entry's `last_contact`: text → instant (`CONTRACT.md` §5).
//!
//! Accepted forms:
//! * RFC 3339 with an offset: `2020-07-15T15:25:42.000Z`, `2020-07-15T15:25:42+02:00` (a space
//!   instead of `T` is accepted too);
//! * naive date and time, `T` or a space between them, seconds required, fraction optional:
//!   `2023-06-11 12:34:56.789012`, `2023-06-11T12:34:56`. A filter reads them in `TIMEZONE`;
//!   an entry's `last_contact` reads them in UTC (Hawkeye reports UTC).
//!
//! Daylight-saving transitions, for naive times in `TIMEZONE`:
//! * a time that occurs twice (clocks go back) is the **earlier** instant, the first time the
//!   wall clock showed it;
//! * a time that never occurs (clocks go forward) is read with the offset in effect **before**
//!   the jump, so `2024-03-10 02:30` in America/New_York is 07:30 UTC (03:30 EDT): the instant
//!   the wall clock would have shown had it not jumped.
//!
//! Comparisons are always on instants, never on text.

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

/// Naive forms, tried in order; `%.f` also matches no fraction at all.
const NAIVE_FORMATS: [&str; 2] = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"];

/// Longest part of a bad value echoed back, so the error stays one short line.
const SHOWN_VALUE_MAX_CHARS: usize = 80;

/// A `last_contact_filter` that is not a datetime. Displays as one line naming the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "last_contact_filter {shown} is not a datetime: use RFC 3339 such as \
     2020-07-15T15:25:42.000Z, or a naive datetime such as 2023-06-11 12:34:56 (read in {zone})"
)]
pub struct BadFilter {
    /// The value as JSON text (so quotes and control characters stay on one line), shortened.
    shown: String,
    zone: Tz,
}

impl BadFilter {
    /// `value` is the filter as it appeared in the request, any JSON type.
    pub fn new(value: &serde_json::Value, zone: Tz) -> Self {
        let json = value.to_string();
        let shown = if json.chars().count() > SHOWN_VALUE_MAX_CHARS {
            let head: String = json.chars().take(SHOWN_VALUE_MAX_CHARS).collect();
            format!("{head}…")
        } else {
            json
        };
        BadFilter { shown, zone }
    }
}

/// Parses a `last_contact_filter` text; naive forms are read in `zone`.
pub fn parse_filter(text: &str, zone: Tz) -> Result<DateTime<Utc>, BadFilter> {
    parse_instant(text, zone)
        .ok_or_else(|| BadFilter::new(&serde_json::Value::String(text.to_string()), zone))
}

/// Parses an entry's `last_contact`; `None` when it is not a datetime. Such entries are left
/// out by any filter and included when there is none.
pub fn parse_last_contact(text: &str) -> Option<DateTime<Utc>> {
    parse_instant(text, Tz::UTC)
}

fn parse_instant(text: &str, zone: Tz) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
        return Some(instant.with_timezone(&Utc));
    }
    NAIVE_FORMATS
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .and_then(|naive| naive_in_zone(naive, zone))
}

/// The instant a wall-clock time in `zone` denotes, with the DST rules of the module docs.
fn naive_in_zone(naive: NaiveDateTime, zone: Tz) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&naive) {
        LocalResult::Single(instant) => Some(instant.with_timezone(&Utc)),
        LocalResult::Ambiguous(earlier, _) => Some(earlier.with_timezone(&Utc)),
        LocalResult::None => {
            // In a gap. A day earlier no transition is near (zones change at most a few times
            // a year), so that is the offset in effect before the jump.
            let day_before = naive.checked_sub_signed(TimeDelta::days(1))?.and_utc();
            let offset = zone.offset_from_utc_datetime(&day_before.naive_utc()).fix();
            let utc =
                naive.checked_sub_signed(TimeDelta::seconds(offset.local_minus_utc().into()))?;
            Some(utc.and_utc())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn rfc3339_with_z_and_with_an_offset() {
        assert_eq!(
            parse_filter("2020-07-15T15:25:42.000Z", Tz::UTC).unwrap(),
            utc("2020-07-15T15:25:42Z")
        );
        assert_eq!(
            parse_filter("2020-07-15T15:25:42+02:00", Tz::UTC).unwrap(),
            utc("2020-07-15T13:25:42Z")
        );
    }

    #[test]
    fn an_explicit_offset_ignores_the_timezone() {
        assert_eq!(
            parse_filter("2020-07-15T15:25:42+02:00", Tz::America__New_York).unwrap(),
            utc("2020-07-15T13:25:42Z")
        );
    }

    #[test]
    fn naive_forms_with_and_without_fraction_and_separator() {
        let expected = utc("2023-06-11T12:34:56.789012Z");
        assert_eq!(
            parse_filter("2023-06-11 12:34:56.789012", Tz::UTC).unwrap(),
            expected
        );
        assert_eq!(
            parse_filter("2023-06-11T12:34:56.789012", Tz::UTC).unwrap(),
            expected
        );
        assert_eq!(
            parse_filter("2023-06-11T12:34:56", Tz::UTC).unwrap(),
            utc("2023-06-11T12:34:56Z")
        );
        assert_eq!(
            parse_filter(" 2023-06-11 12:34:56 ", Tz::UTC).unwrap(),
            utc("2023-06-11T12:34:56Z")
        );
    }

    #[test]
    fn naive_forms_are_read_in_the_timezone() {
        // Madrid is UTC+2 in summer.
        assert_eq!(
            parse_filter("2023-06-11 12:34:56", Tz::Europe__Madrid).unwrap(),
            utc("2023-06-11T10:34:56Z")
        );
    }

    #[test]
    fn a_repeated_hour_is_the_earlier_instant() {
        // New York leaves EDT (-4) for EST (-5) at 02:00 on 2024-11-03: 01:30 happens twice.
        assert_eq!(
            parse_filter("2024-11-03 01:30:00", Tz::America__New_York).unwrap(),
            utc("2024-11-03T05:30:00Z")
        );
    }

    #[test]
    fn a_skipped_hour_uses_the_offset_before_the_jump() {
        // New York jumps from 02:00 EST to 03:00 EDT on 2024-03-10: 02:30 does not exist.
        assert_eq!(
            parse_filter("2024-03-10 02:30:00", Tz::America__New_York).unwrap(),
            utc("2024-03-10T07:30:00Z")
        );
    }

    #[test]
    fn bad_values_are_named_in_one_line() {
        let err = parse_filter("yesterday\nnoon", Tz::Europe__Madrid).unwrap_err();
        let line = err.to_string();
        assert!(line.starts_with(r#"last_contact_filter "yesterday\nnoon" is not a datetime"#));
        assert!(line.contains("Europe/Madrid"));
        assert!(!line.contains('\n'));
        for bad in [
            "",
            "2023-06-11",
            "2023-13-01 00:00:00",
            "12:34:56",
            "2023-06-11 25:00:00",
        ] {
            assert!(parse_filter(bad, Tz::UTC).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn long_bad_values_are_shortened() {
        let err = BadFilter::new(&serde_json::Value::String("x".repeat(500)), Tz::UTC);
        assert!(err.to_string().len() < 300);
        let number = BadFilter::new(&serde_json::json!(42), Tz::UTC);
        assert!(number
            .to_string()
            .starts_with("last_contact_filter 42 is not"));
    }

    #[test]
    fn entry_last_contact_is_rfc3339_or_naive_utc() {
        assert_eq!(
            parse_last_contact("2020-11-05T13:57:07Z"),
            Some(utc("2020-11-05T13:57:07Z"))
        );
        assert_eq!(
            parse_last_contact("2020-11-05 13:57:07"),
            Some(utc("2020-11-05T13:57:07Z"))
        );
        assert_eq!(parse_last_contact("never"), None);
    }
}
