//! The cell encoding of the merge rules: which statement writes which column of an update, at
//! which cell timestamp, so that Cassandra's last-write-wins applies each field's rule. Pure:
//! no I/O.

use std::borrow::Cow;
use std::collections::BTreeMap;

use scylla::cluster::metadata::ColumnType;
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::{CellWriter, WrittenCellProof};
use scylla::serialize::SerializationError;
use scylla::value::{CqlTimestamp, MaybeUnset};

use super::acknowledged::{CellOrder, Cells};
use super::lives::Life;
use crate::profile::fields::{Field, FieldSpec, FieldValue, MergeRule, FIELDS};
use crate::profile::ProfileUpdate;

/// Whether a rule's cell timestamp is the update's version, shared by all such columns.
const fn shares_the_version(rule: MergeRule) -> bool {
    !rule.is_value_ordered()
}

pub(super) fn versioned_fields() -> impl Iterator<Item = &'static FieldSpec> {
    FIELDS.iter().filter(|spec| shares_the_version(spec.rule))
}

/// The columns whose cell timestamp comes from their value (`first_access`,
/// `user_declared_on`, `last_contact`); a column's slot is its place in this order.
pub(super) fn own_timestamp_fields() -> impl Iterator<Item = &'static FieldSpec> {
    FIELDS.iter().filter(|spec| !shares_the_version(spec.rule))
}

/// How many [`own_timestamp_fields`] there are.
pub(super) const OWN_TIMESTAMP_COLUMNS: usize = {
    let mut count = 0;
    let mut index = 0;
    while index < FIELDS.len() {
        if !shares_the_version(FIELDS[index].rule) {
            count += 1;
        }
        index += 1;
    }
    count
};

/// The bound values of one statement: the cell timestamp, the columns (absent ones unset),
/// the key.
pub(super) type StatementRow<'a> = Vec<MaybeUnset<ColumnValue<'a>>>;

/// Bytes of a statement's bound values as Cassandra's batch size thresholds count them (a
/// little over: the timestamp and the key are counted as cells too).
pub(super) fn row_bytes(row: &StatementRow<'_>) -> usize {
    row.iter()
        .map(|value| match value {
            MaybeUnset::Set(value) => value.cell_bytes(),
            MaybeUnset::Unset => 0,
        })
        .sum()
}

pub(super) fn statement_row<'a>(
    timestamp: i64,
    columns: Vec<Option<ColumnValue<'a>>>,
    device_id: &'a str,
) -> StatementRow<'a> {
    let mut row = Vec::with_capacity(columns.len() + 2);
    row.push(MaybeUnset::Set(ColumnValue::BigInt(timestamp)));
    row.extend(columns.into_iter().map(MaybeUnset::from_option));
    row.push(MaybeUnset::Set(ColumnValue::Text(Cow::Borrowed(device_id))));
    row
}

/// One column write: the cell timestamp makes Cassandra's last-write-wins apply the field's rule.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Cell<'a> {
    pub(super) column: &'static str,
    /// The column's place among [`own_timestamp_fields`].
    pub(super) slot: usize,
    pub(super) timestamp: i64,
    pub(super) value: ColumnValue<'a>,
}

impl Cell<'_> {
    /// How Cassandra orders this cell against another of its column: by timestamp, then by
    /// the value's bytes (a timestamp's, as an unsigned number).
    fn order(&self) -> CellOrder {
        let value = match &self.value {
            ColumnValue::Timestamp(CqlTimestamp(ms)) => *ms as u64,
            ColumnValue::BigInt(number) => *number as u64,
            // No such column has a value timestamp of its own.
            ColumnValue::Text(_) | ColumnValue::TextMap(_) => 0,
        };
        (self.timestamp, value)
    }
}

/// One statement of an update.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ProfileWrite<'a> {
    /// Every versioned column at the update's version: the values in [`versioned_fields`]
    /// order, `None` for the columns the update does not carry.
    Versioned {
        timestamp: i64,
        values: Vec<Option<ColumnValue<'a>>>,
    },
    /// A column whose timestamp comes from its value.
    Column(Cell<'a>),
}

/// The statements of one device's updates less the cells Cassandra is known to hold (`held`,
/// by slot): last-write-wins would keep those, so the row is the same without them. Also the
/// newest cell written per slot.
pub(super) fn unheld_writes<'a>(
    writes: impl IntoIterator<Item = ProfileWrite<'a>>,
    held: &Cells<OWN_TIMESTAMP_COLUMNS>,
) -> (Vec<ProfileWrite<'a>>, Cells<OWN_TIMESTAMP_COLUMNS>) {
    let mut written = [None; OWN_TIMESTAMP_COLUMNS];
    let writes = writes
        .into_iter()
        .filter(|write| match write {
            ProfileWrite::Versioned { .. } => true,
            ProfileWrite::Column(cell) if held[cell.slot] >= Some(cell.order()) => false,
            ProfileWrite::Column(cell) => {
                written[cell.slot] = written[cell.slot].max(Some(cell.order()));
                true
            }
        })
        .collect();
    (writes, written)
}

/// The statements of one update: one for the versioned columns, one per other column carried.
pub(super) fn profile_writes<'a>(update: &'a ProfileUpdate, life: &Life) -> Vec<ProfileWrite<'a>> {
    let values: Vec<Option<ColumnValue<'_>>> = versioned_fields()
        .map(|spec| update.value(spec.field).map(ColumnValue::from))
        .collect();
    let mut writes = Vec::new();
    if values.iter().any(Option::is_some) {
        writes.push(ProfileWrite::Versioned {
            timestamp: newest_wins(update.version),
            values,
        });
    }
    writes.extend(
        own_timestamp_fields()
            .enumerate()
            .filter_map(|(slot, spec)| {
                let value = update.value(spec.field)?;
                Some(ProfileWrite::Column(Cell {
                    column: spec.column,
                    slot,
                    timestamp: cell_timestamp(spec.rule, update.version, &value, life),
                    value: ColumnValue::from(value),
                }))
            }),
    );
    writes
}

/// The statement writing `value` (epoch ms) again into the value-ordered column of `field`, in
/// today's encoding; `None` for a field of another rule.
pub(super) fn fold_write(
    field: Field,
    value_ms: i64,
    life: &Life,
) -> Option<ProfileWrite<'static>> {
    let (slot, spec) = own_timestamp_fields()
        .enumerate()
        .find(|(_, spec)| spec.field == field)?;
    let timestamp = life.value_ordered_timestamp(spec.rule, value_ms)?;
    Some(ProfileWrite::Column(Cell {
        column: spec.column,
        slot,
        timestamp,
        value: ColumnValue::Timestamp(CqlTimestamp(value_ms)),
    }))
}

/// Cell timestamp of "the highest version wins": the version in microseconds.
fn newest_wins(version_ms: i64) -> i64 {
    version_ms.saturating_mul(1000)
}

/// The cell timestamp that makes Cassandra's last-write-wins apply `rule`: the version for the
/// newest-wins columns, a place in the device's life ([`Life`]) for the value-ordered ones:
/// smaller `first_access` / `user_declared_on` values and later `last_contact` instants later.
/// Values of one 64 ms step tie, and Cassandra keeps the greater:
/// [`smallest_wins_order`](crate::profile::fields::smallest_wins_order), which Redis follows
/// too (docs/architecture.md, "Taking over an existing deployment").
fn cell_timestamp(rule: MergeRule, version_ms: i64, value: &FieldValue<'_>, life: &Life) -> i64 {
    // A value-ordered rule on a value it cannot order falls back to the version: the table's
    // tests rule this out.
    value
        .epoch_ms()
        .and_then(|value_ms| life.value_ordered_timestamp(rule, value_ms))
        .unwrap_or_else(|| newest_wins(version_ms))
}

/// A field value as its column type, borrowing the update's text and maps rather than copying
/// them into every bound cell; absent fields are not written at all.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnValue<'a> {
    Text(Cow<'a, str>),
    BigInt(i64),
    TextMap(Cow<'a, BTreeMap<String, String>>),
    Timestamp(CqlTimestamp),
}

impl<'a> From<FieldValue<'a>> for ColumnValue<'a> {
    fn from(value: FieldValue<'a>) -> Self {
        match value {
            FieldValue::Text(text) => ColumnValue::Text(text),
            FieldValue::BigInt(number) => ColumnValue::BigInt(number),
            FieldValue::TextMap(map) => ColumnValue::TextMap(map),
            FieldValue::Timestamp(ms) => ColumnValue::Timestamp(CqlTimestamp(ms)),
            FieldValue::LastContact(contact) => {
                ColumnValue::Timestamp(CqlTimestamp(contact.at.timestamp_millis()))
            }
        }
    }
}

impl ColumnValue<'_> {
    /// Bytes of the cells this value becomes, as Cassandra counts a batch's size: the value
    /// and 16 bytes of cell metadata (timestamp, TTL, deletion time) per cell, one cell per
    /// map entry.
    fn cell_bytes(&self) -> usize {
        const CELL_METADATA: usize = 16;
        match self {
            ColumnValue::Text(text) => text.len() + CELL_METADATA,
            ColumnValue::BigInt(_) | ColumnValue::Timestamp(_) => 8 + CELL_METADATA,
            ColumnValue::TextMap(map) => map
                .iter()
                .map(|(key, value)| key.len() + value.len() + CELL_METADATA)
                .sum(),
        }
    }
}

impl SerializeValue for ColumnValue<'_> {
    fn serialize<'b>(
        &self,
        typ: &ColumnType,
        writer: CellWriter<'b>,
    ) -> Result<WrittenCellProof<'b>, SerializationError> {
        match self {
            ColumnValue::Text(text) => text.serialize(typ, writer),
            ColumnValue::BigInt(number) => number.serialize(typ, writer),
            ColumnValue::TextMap(map) => map.serialize(typ, writer),
            ColumnValue::Timestamp(timestamp) => timestamp.serialize(typ, writer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{LastContact, TextField};
    use crate::stores::cassandra::schema::BASE_AHEAD_MICROS;

    /// A deployment's smallest-wins base.
    const BASE: i64 = 1_800_000_000_000_000;
    const LIFE: Life = Life {
        deleted_at: None,
        base: BASE,
    };

    fn writes_of(update: &ProfileUpdate) -> Vec<ProfileWrite<'_>> {
        profile_writes(update, &LIFE)
    }

    fn cell_of<'a, 'b>(cells: &'a [Cell<'b>], column: &str) -> &'a Cell<'b> {
        cells.iter().find(|cell| cell.column == column).unwrap()
    }

    /// The cells written by statements of their own (the value-timestamped columns).
    fn own_timestamp_cells<'a>(writes: &[ProfileWrite<'a>]) -> Vec<Cell<'a>> {
        writes
            .iter()
            .filter_map(|write| match write {
                ProfileWrite::Column(cell) => Some(cell.clone()),
                ProfileWrite::Versioned { .. } => None,
            })
            .collect()
    }

    /// The cells the statements write, each with the timestamp it gets (the versioned ones
    /// have no slot: `usize::MAX`).
    fn written_cells(writes: Vec<ProfileWrite<'_>>) -> Vec<Cell<'_>> {
        writes
            .into_iter()
            .flat_map(|write| match write {
                ProfileWrite::Versioned { timestamp, values } => versioned_fields()
                    .zip(values)
                    .filter_map(|(spec, value)| {
                        Some(Cell {
                            column: spec.column,
                            slot: usize::MAX,
                            timestamp,
                            value: value?,
                        })
                    })
                    .collect(),
                ProfileWrite::Column(cell) => vec![cell],
            })
            .collect()
    }

    #[test]
    fn cell_timestamps_encode_each_field_rule() {
        let update = ProfileUpdate {
            device_id: "d".into(),
            version: 1_650_000_000_000,
            text: [(TextField::UserDeclaredState, "KA".to_string())].into(),
            client_id: Some(9994),
            uaspec: Some([("a".to_string(), "b".to_string())].into()),
            first_access: Some(1_600_000_000_000),
            last_contact: Some(LastContact {
                at: chrono::DateTime::from_timestamp_micros(1_604_584_627_123_456).unwrap(),
                text: "2020-11-05T13:57:07.123456Z".into(),
            }),
            ..ProfileUpdate::default()
        };
        let cells = written_cells(writes_of(&update));
        let newest = 1_650_000_000_000_000;
        assert_eq!(cell_of(&cells, "user_declared_state").timestamp, newest);
        assert_eq!(
            cell_of(&cells, "client_id").value,
            ColumnValue::BigInt(9994)
        );
        assert_eq!(cell_of(&cells, "uaspec").timestamp, newest);
        assert_eq!(
            cell_of(&cells, "updated_date").value,
            ColumnValue::Timestamp(CqlTimestamp(update.version))
        );
        let first_access = cell_of(&cells, "first_access");
        assert_eq!(first_access.timestamp, BASE - 1_600_000_000_000 / 64);
        assert_eq!(
            first_access.value,
            ColumnValue::Timestamp(CqlTimestamp(1_600_000_000_000))
        );
        assert_eq!(
            cell_of(&cells, "user_declared_on").timestamp,
            BASE - update.version / 64
        );
        let contact = cell_of(&cells, "last_contact");
        assert_eq!(
            contact.timestamp,
            LIFE.latest_wins_timestamp(1_604_584_627_123)
        );
        assert_eq!(
            contact.value,
            ColumnValue::Timestamp(CqlTimestamp(1_604_584_627_123))
        );
        assert!(!cells
            .iter()
            .any(|cell| cell.column == "site_id" || cell.column == "device_spec"));
    }

    #[test]
    fn one_statement_carries_every_versioned_column_and_leaves_the_absent_ones_unset() {
        let update = ProfileUpdate {
            device_id: "d".into(),
            version: 1_650_000_000_000,
            text: [(TextField::City, "Pune".to_string())].into(),
            first_access: Some(1_600_000_000_000),
            ..ProfileUpdate::default()
        };
        let writes = writes_of(&update);
        assert_eq!(writes.len(), 2, "{writes:?}");
        let ProfileWrite::Versioned { timestamp, values } = &writes[0] else {
            panic!("the versioned statement comes first: {writes:?}");
        };
        assert_eq!(*timestamp, 1_650_000_000_000_000);
        assert_eq!(values.len(), versioned_fields().count());
        let set: Vec<&str> = versioned_fields()
            .zip(values)
            .filter(|(_, value)| value.is_some())
            .map(|(spec, _)| spec.column)
            .collect();
        assert_eq!(set, ["city", "updated_date"]);
        assert!(matches!(&writes[1], ProfileWrite::Column(cell) if cell.column == "first_access"));
    }

    #[test]
    fn the_statement_rows_bind_timestamp_columns_and_key_in_order() {
        let row = statement_row(7, vec![None, Some(ColumnValue::BigInt(3))], "d");
        assert_eq!(row.len(), 4);
        assert!(matches!(row[0], MaybeUnset::Set(ColumnValue::BigInt(7))));
        assert!(matches!(row[1], MaybeUnset::Unset));
        assert!(matches!(row[2], MaybeUnset::Set(ColumnValue::BigInt(3))));
        assert!(matches!(&row[3], MaybeUnset::Set(ColumnValue::Text(key)) if key == "d"));
    }

    proptest::proptest! {
        /// Whatever an accepted event carries, no cell is written ahead of the clock by more
        /// than `PROFILE_MAX_FUTURE_SECS` (default one day, within ScyllaDB's three).
        #[test]
        fn no_cell_timestamp_of_an_accepted_event_is_ahead_of_the_clock(
            version_back in 0..i64::MAX,
            first_access in proptest::num::i64::ANY,
            contact_back_micros in 0..i64::MAX,
            declared in proptest::bool::ANY,
        ) {
            let now = chrono::Utc::now();
            let margin = std::time::Duration::from_secs(86_400);
            let limit = now + chrono::TimeDelta::from_std(margin).unwrap();
            // Every version and instant the clock check lets through, down to the oldest.
            let contact_micros = limit.timestamp_micros().saturating_sub(contact_back_micros);
            let at = chrono::DateTime::from_timestamp_micros(contact_micros)
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
            let update = ProfileUpdate {
                device_id: "d".into(),
                version: limit.timestamp_millis().saturating_sub(version_back),
                text: if declared {
                    [(TextField::UserDeclaredState, "KA".to_string())].into()
                } else {
                    [(TextField::City, "Pune".to_string())].into()
                },
                first_access: Some(first_access),
                last_contact: Some(LastContact { at, text: at.to_rfc3339() }),
                ..ProfileUpdate::default()
            };
            proptest::prop_assert!(
                crate::profile::event::check_not_ahead(&update, now, margin).is_ok()
            );
            // A deployment adopted just now: its base lies furthest ahead of the clock.
            let adopted = now.timestamp_micros();
            for cell in written_cells(profile_writes(&update, &Life::undeleted(adopted + BASE_AHEAD_MICROS))) {
                proptest::prop_assert!(
                    cell.timestamp <= limit.timestamp_micros(),
                    "{} at {} is past {limit}", cell.column, cell.timestamp
                );
                // And every smallest-wins cell beats each cell written before the adoption.
                if ["first_access", "user_declared_on"].contains(&cell.column) {
                    proptest::prop_assert!(cell.timestamp > adopted, "{}", cell.column);
                }
            }
        }
    }

    #[test]
    fn every_value_timestamped_column_has_a_slot_in_order() {
        let columns: Vec<&str> = own_timestamp_fields().map(|spec| spec.column).collect();
        assert_eq!(
            columns,
            ["first_access", "user_declared_on", "last_contact"]
        );
        assert_eq!(OWN_TIMESTAMP_COLUMNS, columns.len());
        let update = ProfileUpdate {
            device_id: "d".into(),
            version: 5,
            text: [(TextField::UserDeclaredState, "KA".to_string())].into(),
            first_access: Some(3),
            ..ProfileUpdate::default()
        };
        let slots: Vec<(&str, usize)> = own_timestamp_cells(&writes_of(&update))
            .iter()
            .map(|cell| (cell.column, cell.slot))
            .collect();
        assert_eq!(slots, [("first_access", 0), ("user_declared_on", 1)]);
    }

    #[test]
    fn cells_cassandra_holds_at_a_later_or_equal_timestamp_are_left_out() {
        const FIRST_ACCESS: i64 = 1_600_000_000_000;
        let update = ProfileUpdate {
            device_id: "d".into(),
            version: 1_650_000_000_000,
            text: [(TextField::UserDeclaredState, "KA".to_string())].into(),
            first_access: Some(FIRST_ACCESS),
            ..ProfileUpdate::default()
        };
        let columns = |writes: &[ProfileWrite<'_>]| -> Vec<&str> {
            own_timestamp_cells(writes)
                .iter()
                .map(|cell| cell.column)
                .collect()
        };
        // Unknown to the memory: every cell is written, and reported as written.
        let (writes, written) = unheld_writes(writes_of(&update), &[None; OWN_TIMESTAMP_COLUMNS]);
        assert_eq!(columns(&writes), ["first_access", "user_declared_on"]);
        let first_access = (
            LIFE.smallest_wins_timestamp(FIRST_ACCESS),
            FIRST_ACCESS as u64,
        );
        let declared_on = (
            LIFE.smallest_wins_timestamp(update.version),
            update.version as u64,
        );
        assert_eq!(written, [Some(first_access), Some(declared_on), None]);
        // first_access held as it is, user_declared_on held at a later declaration (a smaller
        // timestamp), which this update's earlier one beats.
        let later_declaration = (declared_on.0 - 1, declared_on.1 + 64);
        let held = [Some(first_access), Some(later_declaration), None];
        let (writes, written) = unheld_writes(writes_of(&update), &held);
        assert_eq!(columns(&writes), ["user_declared_on"]);
        assert_eq!(written, [None, Some(declared_on), None]);
        assert!(matches!(writes[0], ProfileWrite::Versioned { .. }));
        // Held at the same timestamp but a smaller value of its step: Cassandra keeps the
        // greater value of one timestamp, so this one is still written.
        let smaller_of_the_step = (first_access.0, first_access.1 - 1);
        let held = [Some(smaller_of_the_step), Some(declared_on), None];
        let (writes, _) = unheld_writes(writes_of(&update), &held);
        assert_eq!(columns(&writes), ["first_access"]);
        // Everything held: the versioned statement alone is left.
        let held = [Some((first_access.0 + 1, 0)), Some(declared_on), None];
        let (writes, written) = unheld_writes(writes_of(&update), &held);
        assert_eq!(writes.len(), 1);
        assert_eq!(written, [None; OWN_TIMESTAMP_COLUMNS]);
    }

    #[test]
    fn an_earlier_first_access_gets_the_later_cell_timestamp() {
        assert!(LIFE.smallest_wins_timestamp(1_000) > LIFE.smallest_wins_timestamp(2_000));
        // Within one 64 ms step the values tie, and Cassandra keeps the greater.
        assert_eq!(
            LIFE.smallest_wins_timestamp(1_024),
            LIFE.smallest_wins_timestamp(1_087)
        );
        assert!(newest_wins(2_000) > newest_wins(1_000));
    }
}
