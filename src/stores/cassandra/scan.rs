//! Reading `device_profile` back with each cell's write time: a full scan split into token
//! ranges read in parallel, and chosen rows. The write times give back what the cell
//! timestamps encode (docs/architecture.md, "Device profile push"): the version of the fields
//! the newest version wins (`version * 1000`); the value-ordered columns are read by value.
//!
//! Cassandra 5.0 refuses nothing here but answers `WRITETIME(map)` of a non-frozen map with
//! the list of its elements' write times; `MAXWRITETIME(map)` gives one number, which is the
//! version of the write that set the map (each write replaces the whole map, so its elements
//! share one timestamp).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::DateTime;
use futures::StreamExt;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue, Row};

use super::schema::DELETES_TABLE;
use super::CassandraStore;
use crate::profile::fields::{FieldSpec, FieldValue, MergeRule, ValueType, FIELDS};
use crate::profile::ProfileUpdate;
use crate::stores::stored_profile::{last_contact_at, StoredField, StoredProfile};
use crate::stores::{CassandraCause, StoreError};

/// Token ranges of a full scan: enough that the parallel readers stay busy to the end.
pub const TOKEN_RANGES: usize = 64;
/// Ranges read at once.
pub const RANGES_IN_FLIGHT: usize = 8;
/// Rows per page, and so per batch handed on.
pub const PAGE_SIZE: i32 = 500;

/// Prepared reads of `device_profile` with the write time of every cell, and of the deletes.
#[derive(Clone)]
pub struct ProfileScan {
    store: CassandraStore,
    by_token_range: PreparedStatement,
    /// `… WHERE device_id IN ?`.
    by_devices: PreparedStatement,
    deletes: PreparedStatement,
}

impl ProfileScan {
    pub async fn prepare(store: &CassandraStore) -> Result<Self, StoreError> {
        let columns = selected_columns();
        let table = format!("{}.device_profile", store.keyspace());
        let prepare =
            |cql: String| async move {
                store.session().prepare(cql).await.map_err(|e| {
                    StoreError::cassandra("cannot prepare the read of device_profile", e)
                })
            };
        let mut by_token_range = prepare(format!(
            "SELECT {columns} FROM {table} WHERE token(device_id) > ? AND token(device_id) <= ?"
        ))
        .await?;
        by_token_range.set_page_size(PAGE_SIZE);
        let by_devices = prepare(format!(
            "SELECT {columns} FROM {table} WHERE device_id IN ?"
        ))
        .await?;
        let mut deletes = prepare(format!(
            "SELECT device_id, deleted_at FROM {}.{DELETES_TABLE}",
            store.keyspace()
        ))
        .await?;
        deletes.set_page_size(PAGE_SIZE);
        Ok(ProfileScan {
            store: store.clone(),
            by_token_range,
            by_devices,
            deletes,
        })
    }

    /// Hands every row of the table to `visit`, a page at a time, reading
    /// [`RANGES_IN_FLIGHT`] token ranges at once, and counts the rows in `scanned`. Stops at
    /// the first error, of a read or of `visit`.
    pub async fn for_each_page<F, Fut>(
        &self,
        scanned: &AtomicU64,
        visit: F,
    ) -> Result<(), StoreError>
    where
        F: Fn(Vec<StoredProfile>) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let visit = &visit;
        let mut ranges = futures::stream::iter(token_ranges(TOKEN_RANGES))
            .map(|range| self.scan_range(range, scanned, visit))
            .buffer_unordered(RANGES_IN_FLIGHT);
        while let Some(scanned_range) = ranges.next().await {
            scanned_range?;
        }
        Ok(())
    }

    async fn scan_range<F, Fut>(
        &self,
        (start, end): (i64, i64),
        scanned: &AtomicU64,
        visit: &F,
    ) -> Result<(), StoreError>
    where
        F: Fn(Vec<StoredProfile>) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let mut paging_state = PagingState::start();
        loop {
            let (result, next) = self
                .store
                .session()
                .execute_single_page(&self.by_token_range, (start, end), paging_state)
                .await
                .map_err(|e| StoreError::cassandra("cannot read device_profile", e))?;
            let page = stored_profiles(result)?;
            scanned.fetch_add(page.len() as u64, Ordering::Relaxed);
            visit(page).await?;
            match next {
                PagingStateResponse::HasMorePages { state } => paging_state = state,
                PagingStateResponse::NoMorePages => return Ok(()),
            }
        }
    }

    /// Hands the newest delete of every deleted device to `visit`, a page at a time (as
    /// [`ProfileUpdate::delete`]s).
    pub async fn for_each_delete_page<F, Fut>(&self, visit: F) -> Result<(), StoreError>
    where
        F: Fn(Vec<ProfileUpdate>) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let failed = |e: CassandraCause| StoreError::cassandra("cannot read the deletes", e);
        let mut paging_state = PagingState::start();
        loop {
            let (result, next) = self
                .store
                .session()
                .execute_single_page(&self.deletes, (), paging_state)
                .await
                .map_err(|e| failed(e.into()))?;
            let rows = result.into_rows_result().map_err(|e| failed(e.into()))?;
            let mut page = Vec::with_capacity(rows.rows_num());
            for row in rows
                .rows::<(String, Option<CqlTimestamp>)>()
                .map_err(|e| failed(e.into()))?
            {
                if let (device_id, Some(deleted_at)) = row.map_err(|e| failed(e.into()))? {
                    page.push(ProfileUpdate::delete(device_id, deleted_at.0));
                }
            }
            visit(page).await?;
            match next {
                PagingStateResponse::HasMorePages { state } => paging_state = state,
                PagingStateResponse::NoMorePages => return Ok(()),
            }
        }
    }

    /// The rows of `device_ids` that exist, in one request: keep them few
    /// ([`super::batches::DEVICES_PER_READ`]) and of the same replicas (a multi-partition read
    /// is not routed by token).
    pub async fn read(&self, device_ids: &[&str]) -> Result<Vec<StoredProfile>, StoreError> {
        let result = self
            .store
            .session()
            .execute_unpaged(&self.by_devices, (device_ids,))
            .await
            .map_err(|e| StoreError::cassandra("cannot read device_profile", e))?;
        stored_profiles(result)
    }
}

/// `device_id`, then each column of the table and its write time, in table order.
pub fn selected_columns() -> String {
    let mut columns = vec!["device_id".to_string()];
    for spec in FIELDS {
        let column = spec.column;
        columns.push(column.to_string());
        columns.push(match spec.value_type {
            ValueType::TextMap => format!("MAXWRITETIME({column})"),
            _ => format!("WRITETIME({column})"),
        });
    }
    columns.join(", ")
}

fn stored_profiles(
    result: scylla::response::query_result::QueryResult,
) -> Result<Vec<StoredProfile>, StoreError> {
    let rows = result
        .into_rows_result()
        .map_err(|e| StoreError::cassandra("cannot read device_profile", e))?;
    let mut profiles = Vec::with_capacity(rows.rows_num());
    for row in rows
        .rows::<Row>()
        .map_err(|e| StoreError::cassandra("cannot read device_profile", e))?
    {
        let row = row.map_err(|e| StoreError::cassandra("cannot read device_profile", e))?;
        profiles.extend(stored_profile(row));
    }
    Ok(profiles)
}

/// A row of [`selected_columns`]; `None` without a device id.
fn stored_profile(row: Row) -> Option<StoredProfile> {
    let mut columns = row.columns.into_iter();
    let device_id = match columns.next()?? {
        CqlValue::Text(device_id) => device_id,
        _ => return None,
    };
    let mut fields = BTreeMap::new();
    let mut writetimes = BTreeMap::new();
    let mut legacy_timestamps = false;
    for spec in FIELDS {
        let (value, writetime) = (columns.next()?, columns.next()?);
        let writetime = match writetime {
            Some(CqlValue::BigInt(micros)) => Some(micros),
            _ => None,
        };
        legacy_timestamps |= is_legacy_timestamp(spec.rule, writetime);
        if let Some(micros) = writetime {
            writetimes.insert(spec.field, micros);
        }
        if let Some(stored) = value.and_then(|value| stored_field(spec, value, writetime)) {
            fields.insert(spec.field, stored);
        }
    }
    Some(StoredProfile {
        device_id,
        fields,
        writetimes,
        legacy_timestamps,
    })
}

/// Today's smallest-wins cells are written less than a day after the adoption; the first
/// encoding put them near `i64::MAX`, centuries ahead.
fn is_legacy_timestamp(rule: MergeRule, writetime: Option<i64>) -> bool {
    const CENTURIES_AHEAD: i64 = i64::MAX / 2;
    matches!(rule, MergeRule::Smallest | MergeRule::EarliestDeclaration)
        && writetime.is_some_and(|micros| micros > CENTURIES_AHEAD)
}

/// One cell as a [`StoredField`]; `None` for a value not of its column's type.
fn stored_field(spec: &FieldSpec, value: CqlValue, writetime: Option<i64>) -> Option<StoredField> {
    let version = match spec.rule {
        MergeRule::NewestVersion | MergeRule::UpdateVersion => {
            writetime.map(|micros| micros.div_euclid(1000))
        }
        _ => None,
    };
    let value = match (spec.rule, value) {
        // The instant to the millisecond (the cell timestamp is its place in the device's life).
        (MergeRule::LatestInstant, CqlValue::Timestamp(stamp)) => {
            let at = DateTime::from_timestamp_millis(stamp.0)?;
            FieldValue::LastContact(std::borrow::Cow::Owned(last_contact_at(at)))
        }
        (_, CqlValue::Text(text)) => FieldValue::Text(text.into()),
        (_, CqlValue::BigInt(number)) => FieldValue::BigInt(number),
        (_, CqlValue::Timestamp(stamp)) => FieldValue::Timestamp(stamp.0),
        (_, CqlValue::Map(pairs)) => FieldValue::TextMap(std::borrow::Cow::Owned(text_map(pairs)?)),
        _ => return None,
    };
    Some(StoredField { value, version })
}

fn text_map(pairs: Vec<(CqlValue, CqlValue)>) -> Option<BTreeMap<String, String>> {
    pairs
        .into_iter()
        .map(|pair| match pair {
            (CqlValue::Text(key), CqlValue::Text(value)) => Some((key, value)),
            _ => None,
        })
        .collect()
}

/// `count` ranges `(start, end]` covering the Murmur3 ring: the token `i64::MIN` is never a
/// key's, so `(i64::MIN, i64::MAX]` is every row.
pub fn token_ranges(count: usize) -> Vec<(i64, i64)> {
    let count = count.max(1) as i128;
    let (min, max) = (i64::MIN as i128, i64::MAX as i128);
    let bound = |k: i128| (min + (max - min) * k / count) as i64;
    (0..count).map(|k| (bound(k), bound(k + 1))).collect()
}

/// Runs `work`, printing on stderr every `every` how many rows `scanned` counted so far.
pub async fn with_progress<T>(
    what: &str,
    scanned: &AtomicU64,
    every: Duration,
    work: impl Future<Output = T>,
) -> T {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = ticks.tick() => {
                eprintln!("{what}: {} rows so far", scanned.load(Ordering::Relaxed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::fields::Field;
    use crate::profile::TextField;
    use scylla::value::CqlTimestamp;

    #[test]
    fn token_ranges_cover_the_ring_without_gaps() {
        let ranges = token_ranges(64);
        assert_eq!(ranges.len(), 64);
        assert_eq!(ranges[0].0, i64::MIN);
        assert_eq!(ranges[63].1, i64::MAX);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].1, pair[1].0);
            assert!(pair[0].0 < pair[0].1);
        }
    }

    #[test]
    fn each_column_comes_with_its_write_time() {
        let columns = selected_columns();
        assert!(columns.starts_with("device_id, "));
        assert!(columns.contains("city, WRITETIME(city)"));
        assert!(columns.contains("uaspec, MAXWRITETIME(uaspec)"));
        assert_eq!(columns.split(", ").count(), 1 + 2 * FIELDS.len());
    }

    /// A row with `city` and `last_contact` set and every other column null.
    /// A row with a city written at `city_micros` and a last contact at `contact_ms`, its cell
    /// at `contact_written_at`.
    fn row(city_micros: i64, contact_ms: i64, contact_written_at: i64) -> Row {
        let mut columns = vec![Some(CqlValue::Text("d".into()))];
        for spec in FIELDS {
            let (value, writetime) = match spec.column {
                "city" => (CqlValue::Text("Pune".into()), city_micros),
                "last_contact" => (
                    CqlValue::Timestamp(CqlTimestamp(contact_ms)),
                    contact_written_at,
                ),
                _ => {
                    columns.extend([None, None]);
                    continue;
                }
            };
            columns.extend([Some(value), Some(CqlValue::BigInt(writetime))]);
        }
        Row { columns }
    }

    #[test]
    fn only_smallest_wins_cells_far_ahead_are_the_legacy_encoding() {
        let first = i64::MAX - 1_600_000_000_000;
        assert!(is_legacy_timestamp(MergeRule::Smallest, Some(first)));
        assert!(is_legacy_timestamp(
            MergeRule::EarliestDeclaration,
            Some(first)
        ));
        assert!(!is_legacy_timestamp(
            MergeRule::Smallest,
            Some(-1_600_000_000_000)
        ));
        assert!(!is_legacy_timestamp(MergeRule::Smallest, Some(0)));
        // Today's encoding: the deployment's base, less than a day after the adoption.
        assert!(!is_legacy_timestamp(
            MergeRule::Smallest,
            Some(1_800_000_000_000_000)
        ));
        assert!(!is_legacy_timestamp(MergeRule::NewestVersion, Some(first)));
        assert!(!is_legacy_timestamp(MergeRule::Smallest, None));
    }

    #[test]
    fn write_times_give_back_versions_and_the_contact_is_its_value() {
        let row = row(
            1_650_000_000_000_000,
            1_604_584_627_123,
            1_799_956_352_158_063,
        );
        let profile = stored_profile(row).unwrap();
        let city = &profile.fields[&Field::Text(TextField::City)];
        assert_eq!(city.version, Some(1_650_000_000_000));
        let contact = profile.fields[&Field::LastContact]
            .value
            .clone()
            .into_last_contact()
            .unwrap();
        assert_eq!(contact.at.timestamp_millis(), 1_604_584_627_123);
        assert_eq!(contact.text, "2020-11-05T13:57:07.123Z");
        assert_eq!(profile.fields.len(), 2);
    }
}
