//! A device profile event (`CONTRACT.md` §3) read from a Kafka value: parsed and validated into
//! a [`ProfileUpdate`], or rejected with one human line for the dead-letter topic.

use std::borrow::Cow;
use std::collections::BTreeMap;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::value::RawValue;

use super::fields::{EventKind, EventProperty, FieldValue, FIELDS};
use super::{LastContact, ProfileUpdate};

/// Values larger than this are rejected without being parsed.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// `device_id` limit, in bytes after trimming.
pub const MAX_DEVICE_ID_BYTES: usize = 256;
/// The largest epoch millisecond accepted: 9999-12-31T23:59:59.999Z.
const MAX_EPOCH_MS: i64 = 253_402_300_799_999;

/// An accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileEvent {
    pub update: ProfileUpdate,
    /// Fields of the object this service does not know (ignored).
    pub unknown_fields: usize,
}

/// Why an event goes to the dead-letter topic. `Display` is the `error.reason` header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("value is {bytes} bytes, larger than the limit of {MAX_EVENT_BYTES} bytes")]
    TooLarge { bytes: usize },
    #[error("value is not JSON: {0}")]
    NotJson(String),
    #[error("value is JSON but not an object")]
    NotObject,
    #[error("device_id is missing")]
    MissingDeviceId,
    #[error("device_id is empty")]
    EmptyDeviceId,
    #[error("device_id is {bytes} bytes, longer than {MAX_DEVICE_ID_BYTES} bytes")]
    DeviceIdTooLong { bytes: usize },
    #[error("field {field} must be {expected}, got {got}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        got: String,
    },
    /// A record with a null value (a delete) but no key to name the device.
    #[error("tombstone without a key: a delete needs the device_id as the record key")]
    TombstoneWithoutKey,
    /// A record with a null value whose key cannot be a device_id.
    #[error("tombstone key is not a valid device_id: {0}")]
    TombstoneKey(String),
    /// Its cells would win over every later event until that time comes.
    #[error(
        "{field} is {value}, more than {margin_secs} s ahead of the service's clock \
         (PROFILE_MAX_FUTURE_SECS)"
    )]
    AheadOfClock {
        field: &'static str,
        value: String,
        margin_secs: u64,
    },
}

impl Rejection {
    /// A short stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } => "too_large",
            Rejection::NotJson(_) => "not_json",
            Rejection::NotObject => "not_object",
            Rejection::MissingDeviceId | Rejection::EmptyDeviceId => "missing_device_id",
            Rejection::DeviceIdTooLong { .. } => "device_id_too_long",
            Rejection::WrongType { .. } => "wrong_type",
            Rejection::TombstoneWithoutKey => "tombstone_without_key",
            Rejection::TombstoneKey(_) => "tombstone_bad_key",
            Rejection::AheadOfClock { .. } => "ahead_of_clock",
        }
    }
}

/// Parses one Kafka value. `record_version` (the Kafka record timestamp, epoch ms) is the
/// version of events without `api_last_updated_on`.
pub fn parse_event(value: &[u8], record_version: i64) -> Result<ProfileEvent, Rejection> {
    if value.len() > MAX_EVENT_BYTES {
        return Err(Rejection::TooLarge { bytes: value.len() });
    }
    let mut object = parse_object(value)?;
    let device_id = device_id(object.remove("device_id"))?;
    let mut update = ProfileUpdate {
        device_id,
        ..ProfileUpdate::default()
    };
    for spec in FIELDS {
        if let Some(property) = spec.event {
            let value = property_value(property, object.remove(property.name))?;
            update.set(spec.field, value);
        }
    }
    update.version = update.api_last_updated_on.unwrap_or(record_version);
    Ok(ProfileEvent {
        update,
        unknown_fields: object.len(),
    })
}

/// A tombstone (a record without a value): the delete of the device its key names, at
/// `record_version` (the record timestamp).
pub fn parse_tombstone(
    key: Option<&[u8]>,
    record_version: i64,
) -> Result<ProfileUpdate, Rejection> {
    let key = key.ok_or(Rejection::TombstoneWithoutKey)?;
    let text = std::str::from_utf8(key)
        .map_err(|_| Rejection::TombstoneKey("the key is not UTF-8".to_string()))?;
    let device_id = valid_device_id(text)
        .map_err(|rejection| Rejection::TombstoneKey(rejection.to_string()))?;
    Ok(ProfileUpdate::delete(device_id, record_version))
}

/// One property of the event, read by its kind.
fn property_value(
    property: EventProperty,
    raw: Option<&RawValue>,
) -> Result<Option<FieldValue<'static>>, Rejection> {
    let name = property.name;
    Ok(match property.kind {
        EventKind::Text => text(name, raw)?.map(|text| FieldValue::Text(Cow::Owned(text))),
        EventKind::TextMap => {
            string_map(name, raw)?.map(|map| FieldValue::TextMap(Cow::Owned(map)))
        }
        EventKind::EpochMs => epoch_ms(name, raw)?.map(FieldValue::Timestamp),
        EventKind::DateTime => {
            date_time(name, raw)?.map(|contact| FieldValue::LastContact(Cow::Owned(contact)))
        }
    })
}

/// Rejects an update dated more than `margin` after `now`: its version (`api_last_updated_on`,
/// else the record timestamp) or its `last_contact` would win over every later event, in both
/// stores, until that time comes (a producer with a skewed clock, a typo of the year).
pub fn check_not_ahead(
    update: &ProfileUpdate,
    now: DateTime<Utc>,
    margin: Duration,
) -> Result<(), Rejection> {
    let margin_secs = margin.as_secs();
    let limit = now + TimeDelta::from_std(margin).unwrap_or(TimeDelta::MAX);
    let version_field = if update.api_last_updated_on.is_some() {
        "api_last_updated_on"
    } else {
        "the record timestamp"
    };
    if update.version > limit.timestamp_millis() {
        return Err(Rejection::AheadOfClock {
            field: version_field,
            value: epoch_ms_text(update.version),
            margin_secs,
        });
    }
    match &update.last_contact {
        Some(contact) if contact.at > limit => Err(Rejection::AheadOfClock {
            field: "last_contact",
            value: contact.text.clone(),
            margin_secs,
        }),
        _ => Ok(()),
    }
}

/// `1924992000000 (2031-01-01T00:00:00Z)`.
fn epoch_ms_text(epoch_ms: i64) -> String {
    match DateTime::from_timestamp_millis(epoch_ms) {
        Some(at) => format!(
            "{epoch_ms} ({})",
            at.to_rfc3339_opts(SecondsFormat::Millis, true)
        ),
        None => epoch_ms.to_string(),
    }
}

/// The top-level fields with their exact JSON text (numbers keep their digits).
fn parse_object(value: &[u8]) -> Result<BTreeMap<String, &RawValue>, Rejection> {
    serde_json::from_slice(value).map_err(|e| {
        // IgnoredAny skips strings without checking their UTF-8, and an object that failed
        // was malformed: neither is "JSON but not an object".
        let is_object = value.trim_ascii_start().first() == Some(&b'{');
        let is_json = std::str::from_utf8(value).is_ok()
            && serde_json::from_slice::<serde::de::IgnoredAny>(value).is_ok();
        if is_json && !is_object {
            Rejection::NotObject
        } else {
            Rejection::NotJson(e.to_string())
        }
    })
}

/// The JSON type of a raw value, from its first character.
fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn wrong_type(field: &'static str, expected: &'static str, raw: &RawValue) -> Rejection {
    Rejection::WrongType {
        field,
        expected,
        got: kind(raw).to_string(),
    }
}

/// A JSON string's content; `None` when the value is not a string.
fn as_string(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get()).ok()
}

fn is_null(raw: &RawValue) -> bool {
    kind(raw) == "null"
}

fn device_id(raw: Option<&RawValue>) -> Result<String, Rejection> {
    let raw = raw
        .filter(|raw| !is_null(raw))
        .ok_or(Rejection::MissingDeviceId)?;
    let text = as_string(raw).ok_or_else(|| wrong_type("device_id", "a string", raw))?;
    valid_device_id(&text)
}

/// A device id as the stores key it: trimmed, not empty, at most [`MAX_DEVICE_ID_BYTES`].
fn valid_device_id(text: &str) -> Result<String, Rejection> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Rejection::EmptyDeviceId);
    }
    if trimmed.len() > MAX_DEVICE_ID_BYTES {
        return Err(Rejection::DeviceIdTooLong {
            bytes: trimmed.len(),
        });
    }
    Ok(trimmed.to_string())
}

/// A string field: a string, or a number kept as its exact JSON text. `""` and `null` are absent.
fn text(field: &'static str, raw: Option<&RawValue>) -> Result<Option<String>, Rejection> {
    let Some(raw) = raw.filter(|raw| !is_null(raw)) else {
        return Ok(None);
    };
    let text = match kind(raw) {
        "a string" => as_string(raw).unwrap_or_default(),
        "a number" => raw.get().to_string(),
        _ => return Err(wrong_type(field, "a string or a number", raw)),
    };
    Ok((!text.is_empty()).then_some(text))
}

/// `uaspec` / `device_spec`: an object of string (or number) values, or a string holding such
/// an object as JSON. `""`, `null` and `{}` are absent.
fn string_map(
    field: &'static str,
    raw: Option<&RawValue>,
) -> Result<Option<BTreeMap<String, String>>, Rejection> {
    const EXPECTED: &str = "an object of strings or a string holding one";
    let Some(raw) = raw.filter(|raw| !is_null(raw)) else {
        return Ok(None);
    };
    let encoded;
    let object_text = match kind(raw) {
        "an object" => raw.get(),
        "a string" => {
            encoded = as_string(raw).unwrap_or_default();
            if encoded.trim().is_empty() {
                return Ok(None);
            }
            encoded.as_str()
        }
        _ => return Err(wrong_type(field, EXPECTED, raw)),
    };
    let entries: BTreeMap<String, &RawValue> =
        serde_json::from_str(object_text).map_err(|_| Rejection::WrongType {
            field,
            expected: EXPECTED,
            got: "a string that is not a JSON object".to_string(),
        })?;
    let mut map = BTreeMap::new();
    for (key, value) in entries {
        if let Some(text) = text(field, Some(value))? {
            map.insert(key, text);
        }
    }
    Ok((!map.is_empty()).then_some(map))
}

/// Epoch milliseconds as a JSON integer or a numeric string. `""` and `null` are absent.
fn epoch_ms(field: &'static str, raw: Option<&RawValue>) -> Result<Option<i64>, Rejection> {
    const EXPECTED: &str = "epoch milliseconds (an integer or a numeric string)";
    let Some(raw) = raw.filter(|raw| !is_null(raw)) else {
        return Ok(None);
    };
    let digits = match kind(raw) {
        "a number" => raw.get().to_string(),
        "a string" => as_string(raw).unwrap_or_default().trim().to_string(),
        _ => return Err(wrong_type(field, EXPECTED, raw)),
    };
    if digits.is_empty() {
        return Ok(None);
    }
    match digits.parse::<i64>() {
        Ok(ms) if (0..=MAX_EPOCH_MS).contains(&ms) => Ok(Some(ms)),
        _ => Err(Rejection::WrongType {
            field,
            expected: EXPECTED,
            got: format!("{digits:?}"),
        }),
    }
}

/// An RFC 3339 datetime, kept as sent. `""` and `null` are absent.
fn date_time(
    field: &'static str,
    raw: Option<&RawValue>,
) -> Result<Option<LastContact>, Rejection> {
    const EXPECTED: &str = "an RFC 3339 datetime";
    let Some(raw) = raw.filter(|raw| !is_null(raw)) else {
        return Ok(None);
    };
    let text = as_string(raw).ok_or_else(|| wrong_type(field, EXPECTED, raw))?;
    if text.is_empty() {
        return Ok(None);
    }
    match DateTime::parse_from_rfc3339(&text) {
        Ok(at) => Ok(Some(LastContact {
            at: at.to_utc(),
            text,
        })),
        Err(_) => Err(Rejection::WrongType {
            field,
            expected: EXPECTED,
            got: format!("{text:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::TextField;

    const RECORD_VERSION: i64 = 1_700_000_000_000;

    fn parse(json: &str) -> Result<ProfileEvent, Rejection> {
        parse_event(json.as_bytes(), RECORD_VERSION)
    }

    fn update(json: &str) -> ProfileUpdate {
        parse(json).unwrap().update
    }

    #[test]
    fn a_full_event_becomes_an_update() {
        let update = update(
            r#"{"device_id":"d1","country_code":"IN","country":"India","state_code":"KA",
                "state":"Karnataka's","city":"Bengaluru  City","district_custom":"ಬೆಂಗಳೂರು",
                "state_custom":"s","state_code_custom":"29","user_declared_state":"Goa",
                "user_declared_district":"North","fcm_token":"tok","producer_id":"p1",
                "uaspec":{"agent":"Chrome","ver":"1"},"device_spec":{"os":"Android"},
                "first_access":1600000000000,"api_last_updated_on":"1650000000000",
                "last_contact":"2020-11-05T13:57:07Z"}"#,
        );
        assert_eq!(update.device_id, "d1");
        assert_eq!(update.version, 1_650_000_000_000);
        assert_eq!(update.text.len(), 12);
        assert_eq!(update.text[&TextField::State], "Karnataka's");
        assert_eq!(update.text[&TextField::City], "Bengaluru  City");
        assert_eq!(update.text[&TextField::DistrictCustom], "ಬೆಂಗಳೂರು");
        assert_eq!(update.uaspec.unwrap()["agent"], "Chrome");
        assert_eq!(update.device_spec.unwrap()["os"], "Android");
        assert_eq!(update.first_access, Some(1_600_000_000_000));
        assert_eq!(update.api_last_updated_on, Some(1_650_000_000_000));
        let contact = update.last_contact.unwrap();
        assert_eq!(contact.text, "2020-11-05T13:57:07Z");
        assert_eq!(contact.at.timestamp(), 1_604_584_627);
    }

    #[test]
    fn numbers_in_string_fields_keep_their_exact_json_text() {
        let update = update(r#"{"device_id":"d","state_code":29,"city":29.0,"country":1e3}"#);
        assert_eq!(update.text[&TextField::StateCode], "29");
        assert_eq!(update.text[&TextField::City], "29.0");
        assert_eq!(update.text[&TextField::Country], "1e3");
    }

    #[test]
    fn empty_null_and_empty_object_values_are_absent() {
        let update = update(
            r#"{"device_id":"d","state":"","city":null,"uaspec":{},"device_spec":"",
                "first_access":"","api_last_updated_on":null,"last_contact":""}"#,
        );
        assert!(update.text.is_empty());
        assert_eq!(update.uaspec, None);
        assert_eq!(update.device_spec, None);
        assert_eq!(update.first_access, None);
        assert_eq!(update.last_contact, None);
        assert_eq!(update.version, RECORD_VERSION);
    }

    #[test]
    fn specs_may_be_json_encoded_strings_of_legacy_producers() {
        let update = update(
            r#"{"device_id":"d","uaspec":"{\"agent\":\"Firefox\",\"v\":2}","device_spec":"{}"}"#,
        );
        let uaspec = update.uaspec.unwrap();
        assert_eq!(uaspec["agent"], "Firefox");
        assert_eq!(uaspec["v"], "2");
        assert_eq!(update.device_spec, None);
    }

    #[test]
    fn specs_of_the_wrong_shape_are_rejected() {
        for json in [
            r#"{"device_id":"d","uaspec":"not json"}"#,
            r#"{"device_id":"d","uaspec":"[1]"}"#,
            r#"{"device_id":"d","uaspec":[1]}"#,
            r#"{"device_id":"d","device_spec":{"os":{"nested":1}}}"#,
            r#"{"device_id":"d","device_spec":true}"#,
        ] {
            assert_eq!(parse(json).unwrap_err().kind(), "wrong_type", "{json}");
        }
    }

    #[test]
    fn device_id_is_trimmed_and_required() {
        assert_eq!(update(r#"{"device_id":"  d 1 "}"#).device_id, "d 1");
        assert_eq!(parse(r#"{"city":"x"}"#), Err(Rejection::MissingDeviceId));
        assert_eq!(
            parse(r#"{"device_id":null}"#),
            Err(Rejection::MissingDeviceId)
        );
        assert_eq!(
            parse(r#"{"device_id":"   "}"#),
            Err(Rejection::EmptyDeviceId)
        );
        assert_eq!(
            parse(r#"{"device_id":7}"#).unwrap_err().kind(),
            "wrong_type"
        );
    }

    #[test]
    fn device_id_may_have_256_bytes_but_not_257() {
        let id = "é".repeat(128);
        assert_eq!(update(&format!(r#"{{"device_id":"{id}"}}"#)).device_id, id);
        let long = format!("{id}x");
        assert_eq!(
            parse(&format!(r#"{{"device_id":"{long}"}}"#)),
            Err(Rejection::DeviceIdTooLong { bytes: 257 })
        );
    }

    #[test]
    fn values_that_are_not_json_objects_are_rejected() {
        assert!(matches!(parse("not json"), Err(Rejection::NotJson(_))));
        assert!(matches!(
            parse_event(&[0xff, 0xfe], 0),
            Err(Rejection::NotJson(_))
        ));
        assert!(matches!(parse(""), Err(Rejection::NotJson(_))));
        assert_eq!(parse("[1,2]"), Err(Rejection::NotObject));
        assert_eq!(parse("\"d\""), Err(Rejection::NotObject));
        assert_eq!(parse("null"), Err(Rejection::NotObject));
        let invalid_utf8 = parse_event(b"{\"device_id\":\"d\",\"city\":\"\xff\"}", RECORD_VERSION);
        assert!(
            matches!(invalid_utf8, Err(Rejection::NotJson(_))),
            "{invalid_utf8:?}"
        );
        let invalid_utf8 = parse_event(b"[\"\xff\"]", RECORD_VERSION);
        assert!(
            matches!(invalid_utf8, Err(Rejection::NotJson(_))),
            "{invalid_utf8:?}"
        );
    }

    #[test]
    fn values_over_one_mebibyte_are_rejected_before_parsing() {
        let padding = "x".repeat(MAX_EVENT_BYTES);
        let json = format!(r#"{{"device_id":"d","note":"{padding}"}}"#);
        assert_eq!(parse(&json), Err(Rejection::TooLarge { bytes: json.len() }));
        let fits = format!(
            r#"{{"device_id":"d","n":"{}"}}"#,
            "x".repeat(MAX_EVENT_BYTES - 25)
        );
        assert!(fits.len() <= MAX_EVENT_BYTES);
        assert!(parse(&fits).is_ok());
    }

    #[test]
    fn wrong_types_name_the_field() {
        let rejection = parse(r#"{"device_id":"d","city":["x"]}"#).unwrap_err();
        assert_eq!(
            rejection.to_string(),
            "field city must be a string or a number, got an array"
        );
        for json in [
            r#"{"device_id":"d","state":true}"#,
            r#"{"device_id":"d","first_access":"soon"}"#,
            r#"{"device_id":"d","first_access":1.5}"#,
            r#"{"device_id":"d","first_access":-1}"#,
            r#"{"device_id":"d","api_last_updated_on":{}}"#,
            r#"{"device_id":"d","last_contact":"yesterday"}"#,
            r#"{"device_id":"d","last_contact":1604584627}"#,
        ] {
            assert_eq!(parse(json).unwrap_err().kind(), "wrong_type", "{json}");
        }
    }

    #[test]
    fn epoch_ms_accepts_numbers_and_numeric_strings() {
        let update = update(
            r#"{"device_id":"d","first_access":" 1600000000000 ","api_last_updated_on":1650000000001}"#,
        );
        assert_eq!(update.first_access, Some(1_600_000_000_000));
        assert_eq!(update.version, 1_650_000_000_001);
    }

    #[test]
    fn unknown_fields_are_counted_not_rejected() {
        let event =
            parse(r#"{"device_id":"d","colour":"red","extra":{"a":1},"city":"c"}"#).unwrap();
        assert_eq!(event.unknown_fields, 2);
        assert_eq!(event.update.text[&TextField::City], "c");
    }

    #[test]
    fn last_contact_keeps_its_text_and_offset() {
        let update = update(r#"{"device_id":"d","last_contact":"2020-11-05T15:57:07.5+02:00"}"#);
        let contact = update.last_contact.unwrap();
        assert_eq!(contact.text, "2020-11-05T15:57:07.5+02:00");
        assert_eq!(contact.at.timestamp_millis(), 1_604_584_627_500);
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let update = update(r#"{"device_id":"d\u00e9","city":"a\"b\\c"}"#);
        assert_eq!(update.device_id, "dé");
        assert_eq!(update.text[&TextField::City], "a\"b\\c");
    }

    #[test]
    fn versions_and_contacts_far_ahead_of_the_clock_are_rejected() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let day = Duration::from_secs(86_400);
        let within = update(r#"{"device_id":"d","api_last_updated_on":1796083200000}"#);
        assert_eq!(
            check_not_ahead(&within, now, day),
            Ok(()),
            "exactly one day ahead"
        );
        let skewed = update(r#"{"device_id":"d","api_last_updated_on":1924992000000}"#);
        let rejection = check_not_ahead(&skewed, now, day).unwrap_err();
        assert_eq!(rejection.kind(), "ahead_of_clock");
        assert_eq!(
            rejection.to_string(),
            "api_last_updated_on is 1924992000000 (2031-01-01T00:00:00.000Z), more than 86400 s \
             ahead of the service's clock (PROFILE_MAX_FUTURE_SECS)"
        );
        let contact = update(r#"{"device_id":"d","last_contact":"2030-01-01T00:00:00Z"}"#);
        let mut contact = contact;
        contact.version = now.timestamp_millis();
        let rejection = check_not_ahead(&contact, now, day).unwrap_err();
        assert!(rejection
            .to_string()
            .starts_with("last_contact is 2030-01-01T00:00:00Z"));
        // Without api_last_updated_on the version is the record timestamp.
        let mut by_record = update(r#"{"device_id":"d"}"#);
        by_record.version = 1_924_992_000_000;
        let rejection = check_not_ahead(&by_record, now, day).unwrap_err();
        assert!(rejection.to_string().starts_with("the record timestamp is"));
    }
}
