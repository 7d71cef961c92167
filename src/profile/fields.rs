//! The one table of device profile fields: for each column of `device_profile` (the key
//! `device_id` aside), its event property, Redis hash field, Cassandra column, type and rule.
//! The event parser, the merge and both stores iterate [`FIELDS`]; a unit test checks it
//! against `schemas/device_profile.cql` and `schemas/device_profile_event.schema.json`.
//!
//! Adding a field: its column in the `.cql` (and property in the event schema), a row here and
//! its slot in [`ProfileUpdate`] (for text, a [`TextField`] and its name); the compiler then
//! points at [`ProfileUpdate::value`] and [`ProfileUpdate::set`], the tests at a missing row.
//!
//! [`ProfileUpdate`]: super::ProfileUpdate
//! [`ProfileUpdate::value`]: super::ProfileUpdate::value
//! [`ProfileUpdate::set`]: super::ProfileUpdate::set

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::{LastContact, TextField};

/// A field of a profile update: one column of `device_profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Text(TextField),
    ClientId,
    SiteId,
    Uaspec,
    DeviceSpec,
    FirstAccess,
    ApiLastUpdatedOn,
    UserDeclaredOn,
    LastContact,
    UpdatedDate,
}

/// The Cassandra type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Text,
    BigInt,
    /// `map<text, text>`; Redis keeps it as its JSON text.
    TextMap,
    /// Epoch milliseconds; Redis keeps the decimal number (`last_contact`: the text sent).
    Timestamp,
}

impl ValueType {
    /// The column's type as `system_schema.columns` spells it.
    pub const fn cql_type(self) -> &'static str {
        match self {
            ValueType::Text => "text",
            ValueType::BigInt => "bigint",
            ValueType::TextMap => "map<text, text>",
            ValueType::Timestamp => "timestamp",
        }
    }
}

/// How the stores resolve concurrent writes of a field (docs/architecture.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeRule {
    /// The newest version wins; on equal versions the greater value as stored.
    NewestVersion,
    /// The smallest value ever written wins, whatever its version.
    Smallest,
    /// The latest instant wins, whatever its version; on equal instants the greater text.
    LatestInstant,
    /// Derived, the update's version itself; stored as `NewestVersion`.
    UpdateVersion,
    /// Derived, the version of the earliest update carrying `user_declared_state`; stored as
    /// `Smallest`.
    EarliestDeclaration,
}

impl MergeRule {
    /// Whether the value is computed from the rest of the update rather than carried by it.
    pub fn is_derived(self) -> bool {
        matches!(
            self,
            MergeRule::UpdateVersion | MergeRule::EarliestDeclaration
        )
    }

    /// Whether the rule orders values by themselves, not by the version of their update
    /// (`first_access`, `user_declared_on`, `last_contact`): Cassandra's cell timestamp then
    /// comes from the value, and a delete removes the field whatever its age.
    pub const fn is_value_ordered(self) -> bool {
        matches!(
            self,
            MergeRule::Smallest | MergeRule::EarliestDeclaration | MergeRule::LatestInstant
        )
    }
}

/// The JSON shape of an event property (the `$defs` of the event schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventKind {
    /// A string, or a number kept as its JSON text.
    Text,
    /// An object of strings, or a string holding one as JSON.
    TextMap,
    /// Epoch milliseconds as an integer or a numeric string.
    EpochMs,
    /// An RFC 3339 datetime, kept as sent.
    DateTime,
}

/// A property of the profile event (`CONTRACT.md` §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventProperty {
    pub name: &'static str,
    pub kind: EventKind,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    pub field: Field,
    /// `None` for fields only the refresh writes and for derived ones.
    pub event: Option<EventProperty>,
    /// The hash field readers expect; `None` for columns Redis does not keep.
    pub redis: Option<&'static str>,
    pub column: &'static str,
    pub value_type: ValueType,
    pub rule: MergeRule,
}

/// A text field of the event. A text field has one name everywhere: [`TextField::name`].
const fn event_text(field: TextField) -> FieldSpec {
    FieldSpec {
        event: event(field.name(), EventKind::Text),
        ..refresh_text(field)
    }
}

/// A text field only the refresh writes.
const fn refresh_text(field: TextField) -> FieldSpec {
    FieldSpec {
        field: Field::Text(field),
        event: None,
        redis: Some(field.name()),
        column: field.name(),
        value_type: ValueType::Text,
        rule: MergeRule::NewestVersion,
    }
}

const fn event(name: &'static str, kind: EventKind) -> Option<EventProperty> {
    Some(EventProperty { name, kind })
}

/// Every field, in the order the event parser reads them (so a rejection names the first bad
/// property in this order) and the stores write them.
pub const FIELDS: &[FieldSpec] = &[
    event_text(TextField::CountryCode),
    event_text(TextField::Country),
    event_text(TextField::StateCode),
    event_text(TextField::State),
    event_text(TextField::City),
    event_text(TextField::DistrictCustom),
    event_text(TextField::StateCustom),
    event_text(TextField::StateCodeCustom),
    event_text(TextField::UserDeclaredState),
    event_text(TextField::UserDeclaredDistrict),
    event_text(TextField::FcmToken),
    event_text(TextField::ProducerId),
    refresh_text(TextField::SerialNumber),
    refresh_text(TextField::ProbeId),
    refresh_text(TextField::ProbeUid),
    refresh_text(TextField::ProbeGroup),
    refresh_text(TextField::DeviceTypeName),
    refresh_text(TextField::ClientName),
    refresh_text(TextField::ManagementStatus),
    FieldSpec {
        field: Field::ClientId,
        event: None,
        redis: Some("client_id"),
        column: "client_id",
        value_type: ValueType::BigInt,
        rule: MergeRule::NewestVersion,
    },
    FieldSpec {
        field: Field::SiteId,
        event: None,
        redis: Some("site_id"),
        column: "site_id",
        value_type: ValueType::BigInt,
        rule: MergeRule::NewestVersion,
    },
    FieldSpec {
        field: Field::Uaspec,
        event: event("uaspec", EventKind::TextMap),
        redis: Some("uaspec"),
        column: "uaspec",
        value_type: ValueType::TextMap,
        rule: MergeRule::NewestVersion,
    },
    FieldSpec {
        field: Field::DeviceSpec,
        event: event("device_spec", EventKind::TextMap),
        redis: Some("devicespec"),
        column: "device_spec",
        value_type: ValueType::TextMap,
        rule: MergeRule::NewestVersion,
    },
    FieldSpec {
        field: Field::FirstAccess,
        event: event("first_access", EventKind::EpochMs),
        redis: Some("firstaccess"),
        column: "first_access",
        value_type: ValueType::Timestamp,
        rule: MergeRule::Smallest,
    },
    FieldSpec {
        field: Field::ApiLastUpdatedOn,
        event: event("api_last_updated_on", EventKind::EpochMs),
        redis: Some("api_last_updated_on"),
        column: "api_last_updated_on",
        value_type: ValueType::Timestamp,
        rule: MergeRule::NewestVersion,
    },
    FieldSpec {
        field: Field::UserDeclaredOn,
        event: None,
        redis: Some("user_declared_on"),
        column: "user_declared_on",
        value_type: ValueType::Timestamp,
        rule: MergeRule::EarliestDeclaration,
    },
    FieldSpec {
        field: Field::LastContact,
        event: event("last_contact", EventKind::DateTime),
        redis: Some("last_contact"),
        column: "last_contact",
        value_type: ValueType::Timestamp,
        rule: MergeRule::LatestInstant,
    },
    FieldSpec {
        field: Field::UpdatedDate,
        event: None,
        redis: None,
        column: "updated_date",
        value_type: ValueType::Timestamp,
        rule: MergeRule::UpdateVersion,
    },
];

/// The fields resolved by `rule`, in table order.
pub fn fields_with(rule: MergeRule) -> impl Iterator<Item = Field> {
    FIELDS
        .iter()
        .filter(move |spec| spec.rule == rule)
        .map(|spec| spec.field)
}

/// Width (ms) of the steps the smallest-wins rules order values by. Cassandra holds these
/// cells at `base - step` (docs/architecture.md, "Taking over an existing deployment"), and the
/// steps of every value from the epoch to [`SMALLEST_WINS_CEILING_MS`] must fit in the 0.8 day
/// between the base and the adoption instant, so values 64 ms apart or less tie.
pub const SMALLEST_WINS_STEP_MS: i64 = 64;
/// Values from here on (year 2109) share the last step; values before the epoch the first.
pub const SMALLEST_WINS_CEILING_MS: i64 = 1 << 42;

/// The step of a smallest-wins value: the smaller step wins.
pub fn smallest_wins_step(value_ms: i64) -> i64 {
    value_ms.clamp(0, SMALLEST_WINS_CEILING_MS - 1) / SMALLEST_WINS_STEP_MS
}

/// The order of `first_access` and `user_declared_on` values, the same in both stores: the
/// smaller step ([`smallest_wins_step`]) wins; within a step, the value greater as an unsigned
/// 64-bit number, which is how Cassandra resolves two cells of one timestamp (by their bytes).
/// `Less`: `a` wins over `b`.
pub fn smallest_wins_order(a: i64, b: i64) -> Ordering {
    smallest_wins_step(a)
        .cmp(&smallest_wins_step(b))
        .then_with(|| (b as u64).cmp(&(a as u64)))
}

/// One field's value: borrowed from an update, or owned when freshly parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue<'a> {
    Text(Cow<'a, str>),
    BigInt(i64),
    TextMap(Cow<'a, BTreeMap<String, String>>),
    /// Epoch milliseconds.
    Timestamp(i64),
    /// The `last_contact` timestamp, with the text its source sent.
    LastContact(Cow<'a, LastContact>),
}

impl FieldValue<'_> {
    /// The stores' order of two values of one field at equal versions: text bytewise (a map
    /// as its JSON text, which Redis stores and compares), numbers numerically, a last contact
    /// by instant then text. `None` for values of different types.
    pub fn cmp_as_stored(&self, other: &FieldValue<'_>) -> Option<Ordering> {
        match (self, other) {
            (FieldValue::Text(a), FieldValue::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (FieldValue::BigInt(a), FieldValue::BigInt(b))
            | (FieldValue::Timestamp(a), FieldValue::Timestamp(b)) => Some(a.cmp(b)),
            (FieldValue::TextMap(a), FieldValue::TextMap(b)) => Some(map_text(a).cmp(&map_text(b))),
            (FieldValue::LastContact(a), FieldValue::LastContact(b)) => {
                Some((a.at, a.text.as_bytes()).cmp(&(b.at, b.text.as_bytes())))
            }
            _ => None,
        }
    }

    /// The epoch milliseconds of a timestamp or a last contact.
    pub fn epoch_ms(&self) -> Option<i64> {
        match self {
            FieldValue::Timestamp(ms) => Some(*ms),
            FieldValue::LastContact(contact) => Some(contact.at.timestamp_millis()),
            FieldValue::Text(_) | FieldValue::BigInt(_) | FieldValue::TextMap(_) => None,
        }
    }

    pub fn into_text(self) -> Option<String> {
        match self {
            FieldValue::Text(text) => Some(text.into_owned()),
            _ => None,
        }
    }

    /// The number of a `BigInt`, or the epoch milliseconds of a `Timestamp`.
    pub fn into_number(self) -> Option<i64> {
        match self {
            FieldValue::BigInt(number) | FieldValue::Timestamp(number) => Some(number),
            _ => None,
        }
    }

    pub fn into_text_map(self) -> Option<BTreeMap<String, String>> {
        match self {
            FieldValue::TextMap(map) => Some(map.into_owned()),
            _ => None,
        }
    }

    pub fn into_last_contact(self) -> Option<LastContact> {
        match self {
            FieldValue::LastContact(contact) => Some(contact.into_owned()),
            _ => None,
        }
    }
}

/// A map's JSON text: its sorted keys make the text canonical.
pub fn map_text(map: &BTreeMap<String, String>) -> String {
    // A BTreeMap of strings always serializes.
    serde_json::to_string(map).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::DateTime;
    use serde_json::Value;

    use super::*;
    use crate::profile::ProfileUpdate;

    const DEVICE_PROFILE_CQL: &str = include_str!("../../schemas/device_profile.cql");
    const EVENT_SCHEMA: &str = include_str!("../../schemas/device_profile_event.schema.json");

    /// The `(column, type)` pairs of the CREATE TABLE, the key included.
    fn cql_columns() -> BTreeSet<(String, String)> {
        let (_, body) = DEVICE_PROFILE_CQL
            .split_once("CREATE TABLE IF NOT EXISTS device_profile (")
            .expect("the CREATE TABLE");
        let (columns, _) = body.rsplit_once(')').expect("the end of the CREATE TABLE");
        columns
            .lines()
            .map(|line| line.trim().trim_end_matches(','))
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (name, column_type) = line.split_once(' ').expect("a name and a type");
                (name.to_string(), column_type.to_string())
            })
            .collect()
    }

    #[test]
    fn the_table_has_every_column_of_the_cql_and_no_other() {
        let mut table: BTreeSet<(String, String)> = FIELDS
            .iter()
            .map(|spec| (spec.column.into(), spec.value_type.cql_type().into()))
            .collect();
        table.insert(("device_id".into(), "text PRIMARY KEY".into()));
        assert_eq!(table, cql_columns());
    }

    /// The event kind a property of the schema declares.
    fn schema_kind(property: &Value) -> Option<EventKind> {
        if property["format"] == "date-time" {
            return Some(EventKind::DateTime);
        }
        match property["$ref"].as_str()? {
            "#/$defs/text" => Some(EventKind::Text),
            "#/$defs/stringMap" => Some(EventKind::TextMap),
            "#/$defs/epochMs" => Some(EventKind::EpochMs),
            _ => None,
        }
    }

    #[test]
    fn the_table_has_every_property_of_the_event_schema_and_no_other() {
        let schema: Value = serde_json::from_str(EVENT_SCHEMA).unwrap();
        let properties = schema["properties"].as_object().unwrap();
        let in_schema: BTreeSet<(&str, Option<EventKind>)> = properties
            .iter()
            .filter(|(name, _)| *name != "device_id")
            .map(|(name, property)| (name.as_str(), schema_kind(property)))
            .collect();
        let in_table: BTreeSet<(&str, Option<EventKind>)> = FIELDS
            .iter()
            .filter_map(|spec| spec.event)
            .map(|event| (event.name, Some(event.kind)))
            .collect();
        assert_eq!(
            in_table, in_schema,
            "(property, kind) of the table and of the schema"
        );
    }

    #[test]
    fn event_kinds_fit_the_column_types() {
        for spec in FIELDS {
            let Some(event) = spec.event else { continue };
            let fits = match event.kind {
                EventKind::Text => spec.value_type == ValueType::Text,
                EventKind::TextMap => spec.value_type == ValueType::TextMap,
                EventKind::EpochMs | EventKind::DateTime => spec.value_type == ValueType::Timestamp,
            };
            assert!(fits, "{spec:?}");
        }
    }

    #[test]
    fn names_are_unique_per_store() {
        let distinct =
            |names: Vec<&str>| names.iter().collect::<BTreeSet<_>>().len() == names.len();
        assert!(distinct(FIELDS.iter().map(|spec| spec.column).collect()));
        assert!(distinct(
            FIELDS.iter().filter_map(|spec| spec.redis).collect()
        ));
        assert!(distinct(
            FIELDS
                .iter()
                .filter_map(|spec| spec.event.map(|e| e.name))
                .collect()
        ));
        let fields: BTreeSet<Field> = FIELDS.iter().map(|spec| spec.field).collect();
        assert_eq!(fields.len(), FIELDS.len());
    }

    /// An update with a value in every field.
    fn full_update() -> ProfileUpdate {
        let mut update = ProfileUpdate {
            device_id: "d".into(),
            version: 42,
            client_id: Some(1),
            site_id: Some(2),
            api_last_updated_on: Some(42),
            uaspec: Some([("a".to_string(), "b".to_string())].into()),
            device_spec: Some([("os".to_string(), "Android".to_string())].into()),
            first_access: Some(7),
            last_contact: Some(LastContact {
                at: DateTime::from_timestamp_millis(1_000).unwrap(),
                text: "1970-01-01T00:00:01Z".into(),
            }),
            ..ProfileUpdate::default()
        };
        for spec in FIELDS {
            if let Field::Text(field) = spec.field {
                update.text.insert(field, spec.column.to_string());
            }
        }
        update
    }

    #[test]
    fn every_value_has_the_type_of_its_column() {
        let update = full_update();
        for spec in FIELDS {
            let value = update.value(spec.field);
            let fits = matches!(
                (&value, spec.value_type),
                (Some(FieldValue::Text(_)), ValueType::Text)
                    | (Some(FieldValue::BigInt(_)), ValueType::BigInt)
                    | (Some(FieldValue::TextMap(_)), ValueType::TextMap)
                    | (
                        Some(FieldValue::Timestamp(_) | FieldValue::LastContact(_)),
                        ValueType::Timestamp
                    )
            );
            assert!(fits, "{spec:?} has {value:?}");
        }
    }

    /// The stores order these rules by the value (cell timestamps, the script's `min`/`lc`).
    #[test]
    fn rules_by_value_come_with_the_values_they_order() {
        let update = full_update();
        for spec in FIELDS {
            let value = update.value(spec.field);
            let fits = match spec.rule {
                MergeRule::Smallest | MergeRule::EarliestDeclaration => {
                    matches!(value, Some(FieldValue::Timestamp(_)))
                }
                MergeRule::LatestInstant => matches!(value, Some(FieldValue::LastContact(_))),
                MergeRule::NewestVersion | MergeRule::UpdateVersion => {
                    !matches!(value, Some(FieldValue::LastContact(_)))
                }
            };
            assert!(fits, "{spec:?} has {value:?}");
        }
    }

    #[test]
    fn setting_what_an_update_carries_round_trips() {
        let full = full_update();
        let mut copy = ProfileUpdate {
            device_id: full.device_id.clone(),
            version: full.version,
            ..ProfileUpdate::default()
        };
        for spec in FIELDS {
            copy.set(spec.field, full.value(spec.field));
        }
        assert_eq!(copy, full);
        for spec in FIELDS.iter().filter(|spec| !spec.rule.is_derived()) {
            copy.set(spec.field, None);
            assert_eq!(copy.value(spec.field), None, "{spec:?}");
        }
        assert_eq!(copy.value(Field::UserDeclaredOn), None);
    }

    #[test]
    fn values_order_as_the_stores_compare_them() {
        let text = |t: &'static str| FieldValue::Text(Cow::Borrowed(t));
        assert_eq!(text("b").cmp_as_stored(&text("a")), Some(Ordering::Greater));
        assert_eq!(
            FieldValue::BigInt(10).cmp_as_stored(&FieldValue::BigInt(9)),
            Some(Ordering::Greater)
        );
        let map =
            |v: &str| FieldValue::TextMap(Cow::Owned([("k".to_string(), v.to_string())].into()));
        assert_eq!(map("a").cmp_as_stored(&map("b")), Some(Ordering::Less));
        assert_eq!(text("1").cmp_as_stored(&FieldValue::BigInt(1)), None);
    }

    #[test]
    fn smallest_wins_orders_by_64_ms_steps_then_the_greater_value() {
        assert_eq!(smallest_wins_order(1_000, 2_000), Ordering::Less);
        assert_eq!(smallest_wins_order(1_087, 1_024), Ordering::Less);
        assert_eq!(smallest_wins_order(1_024, 1_024), Ordering::Equal);
        // Before the epoch every value is in the first step, where Cassandra's byte order puts
        // negative numbers above every other.
        assert_eq!(smallest_wins_order(-5, 63), Ordering::Less);
        assert_eq!(smallest_wins_order(-1, -5), Ordering::Less);
        assert_eq!(
            smallest_wins_step(i64::MAX),
            smallest_wins_step(SMALLEST_WINS_CEILING_MS)
        );
    }
}
