//! Property tests (proptest) of the two parsers that read untrusted input, the device profile
//! event parser and the `last_contact_filter` parser, and of the batch merge: they never panic
//! on arbitrary input, valid generated events become exactly the expected update, and merging
//! a batch gives the same result in every order.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use hawkeye_customer_cache::cache::filter::{parse_filter, parse_last_contact};
use hawkeye_customer_cache::profile::event::{parse_event, MAX_DEVICE_ID_BYTES};
use hawkeye_customer_cache::profile::fields::{Field, FIELDS};
use hawkeye_customer_cache::profile::merge::merge;
use hawkeye_customer_cache::profile::{LastContact, ProfileUpdate, TextField};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// The string fields an event may carry (the other text fields come from a refresh).
fn event_text_fields() -> Vec<TextField> {
    FIELDS
        .iter()
        .filter(|spec| spec.event.is_some())
        .filter_map(|spec| match spec.field {
            Field::Text(field) => Some(field),
            _ => None,
        })
        .collect()
}

const RECORD_VERSION: i64 = 1_700_000_000_000;
/// 9999-12-31T23:59:59.999Z, the parser's largest epoch millisecond.
const MAX_EPOCH_MS: i64 = 253_402_300_799_999;

/// Any JSON value, nested a few levels, with keys that are often the event's own fields.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("device_id".to_string()),
        Just("city".to_string()),
        Just("uaspec".to_string()),
        Just("first_access".to_string()),
        Just("api_last_updated_on".to_string()),
        Just("last_contact".to_string()),
        ".{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A valid event (as JSON) and the update the parser must make of it.
fn valid_event() -> impl Strategy<Value = (Value, ProfileUpdate)> {
    let device_id = "[a-zA-Z0-9:_-][ -~]{0,60}[a-zA-Z0-9]"
        .prop_filter("at most 256 bytes", |id| id.len() <= MAX_DEVICE_ID_BYTES);
    // A text field: a non-empty string, or an integer kept as its JSON digits.
    let text_value = prop_oneof![
        ".{1,20}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
    ];
    let texts =
        prop::collection::btree_map(prop::sample::select(event_text_fields()), text_value, 0..6);
    let uaspec = prop::option::of(prop::collection::btree_map(".{0,8}", ".{1,8}", 1..4));
    let epoch = prop::option::of(0..=MAX_EPOCH_MS);
    let contact_secs = prop::option::of(0i64..4_000_000_000);
    (
        device_id,
        texts,
        uaspec,
        epoch.clone(),
        epoch,
        contact_secs,
        any::<bool>(),
    )
        .prop_map(
            |(device_id, texts, uaspec, first_access, updated_on, contact, epoch_as_text)| {
                event_and_update(
                    device_id,
                    texts,
                    uaspec,
                    first_access,
                    updated_on,
                    contact,
                    epoch_as_text,
                )
            },
        )
}

fn event_and_update(
    device_id: String,
    texts: BTreeMap<TextField, Value>,
    uaspec: Option<BTreeMap<String, String>>,
    first_access: Option<i64>,
    updated_on: Option<i64>,
    contact_secs: Option<i64>,
    epoch_as_text: bool,
) -> (Value, ProfileUpdate) {
    let mut event = Map::new();
    event.insert("device_id".into(), json!(device_id));
    let mut update = ProfileUpdate {
        device_id,
        version: updated_on.unwrap_or(RECORD_VERSION),
        first_access,
        api_last_updated_on: updated_on,
        ..ProfileUpdate::default()
    };
    for (field, value) in texts {
        let stored = match &value {
            Value::String(text) => text.clone(),
            number => number.to_string(),
        };
        update.text.insert(field, stored);
        event.insert(field.name().into(), value);
    }
    if let Some(map) = &uaspec {
        event.insert("uaspec".into(), json!(map));
    }
    update.uaspec = uaspec;
    let epoch = |ms: i64| {
        if epoch_as_text {
            json!(ms.to_string())
        } else {
            json!(ms)
        }
    };
    if let Some(ms) = first_access {
        event.insert("first_access".into(), epoch(ms));
    }
    if let Some(ms) = updated_on {
        event.insert("api_last_updated_on".into(), epoch(ms));
    }
    if let Some(secs) = contact_secs {
        let at: DateTime<Utc> = Utc.timestamp_opt(secs, 0).single().expect("in range");
        let text = at.to_rfc3339_opts(SecondsFormat::Millis, true);
        event.insert("last_contact".into(), json!(text));
        update.last_contact = Some(LastContact { at, text });
    }
    (Value::Object(event), update)
}

/// A small update of one of three devices, with few versions and values so that ties occur.
fn small_update() -> impl Strategy<Value = ProfileUpdate> {
    let value = prop::sample::select(vec!["a", "b", "c"]);
    (
        prop::sample::select(vec!["d1", "d2", "d3"]),
        0i64..4,
        prop::collection::btree_map(
            prop::sample::select(vec![
                TextField::City,
                TextField::State,
                TextField::UserDeclaredState,
            ]),
            value.clone(),
            0..3,
        ),
        prop::option::of(prop::collection::btree_map(value.clone(), value, 1..3)),
        prop::option::of(0i64..4),
        prop::option::of(0i64..4),
    )
        .prop_map(
            |(device, version, texts, uaspec, first_access, contact)| ProfileUpdate {
                device_id: device.to_string(),
                version,
                text: texts
                    .into_iter()
                    .map(|(field, value)| (field, value.to_string()))
                    .collect(),
                uaspec: uaspec.map(|map| {
                    map.into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                }),
                first_access,
                api_last_updated_on: Some(version),
                last_contact: contact.map(|secs| LastContact {
                    at: Utc.timestamp_opt(secs, 0).single().expect("in range"),
                    text: format!("t{secs}"),
                }),
                ..ProfileUpdate::default()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_event_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_event(&bytes, RECORD_VERSION);
    }

    #[test]
    fn the_event_parser_never_panics_on_json(value in any_json()) {
        let _ = parse_event(value.to_string().as_bytes(), RECORD_VERSION);
    }

    #[test]
    fn a_valid_event_becomes_the_expected_update((event, expected) in valid_event()) {
        let parsed = parse_event(event.to_string().as_bytes(), RECORD_VERSION);
        prop_assert_eq!(parsed.map(|event| event.update), Ok(expected), "event {}", event);
    }

    #[test]
    fn merging_a_batch_is_order_independent(
        (updates, shuffled) in prop::collection::vec(small_update(), 0..12)
            .prop_flat_map(|updates| (Just(updates.clone()), Just(updates).prop_shuffle()))
    ) {
        prop_assert_eq!(merge(updates), merge(shuffled));
    }

    #[test]
    fn the_filter_parser_never_panics(text in ".{0,64}", zone in prop::sample::select(vec![Tz::UTC, Tz::America__New_York, Tz::Asia__Kolkata])) {
        let _ = parse_filter(&text, zone);
        let _ = parse_last_contact(&text);
    }

    #[test]
    fn the_filter_parser_never_panics_on_datetime_like_text(
        text in "[0-9]{1,5}-[0-9]{1,2}-[0-9]{1,2}[T ][0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\\.[0-9]{0,12})?(Z|[+-][0-9]{2}:[0-9]{2})?"
    ) {
        let _ = parse_filter(&text, Tz::Europe__Berlin);
    }

    #[test]
    fn filter_instants_round_trip(millis in 0i64..=MAX_EPOCH_MS, offset_minutes in -720i32..=840) {
        let at = Utc.timestamp_millis_opt(millis).single().expect("in range");
        let offset = chrono::FixedOffset::east_opt(offset_minutes * 60).expect("offset in range");
        let rfc3339 = at.with_timezone(&offset).to_rfc3339_opts(SecondsFormat::Millis, false);
        prop_assert_eq!(parse_filter(&rfc3339, Tz::UTC), Ok(at));
        let naive_utc = at.naive_utc().format("%Y-%m-%d %H:%M:%S%.3f").to_string();
        prop_assert_eq!(parse_filter(&naive_utc, Tz::UTC), Ok(at));
    }
}
