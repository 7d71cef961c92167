//! The device profile writer: one statement per device where the cells of its updates can
//! share one, devices of the same replicas batched together, deletes starting new lives.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use scylla::client::session::Session;
use scylla::cluster::ClusterState;
use scylla::errors::ExecutionError;
use scylla::routing::Shard;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, MaybeUnset};
use uuid::Uuid;

use super::acknowledged::{AcknowledgedCells, Cells};
use super::batches::{replica_batches, DEVICES_PER_BATCH, DEVICES_PER_READ};
use super::cells::{
    fold_write, own_timestamp_fields, profile_writes, row_bytes, statement_row, unheld_writes,
    versioned_fields, ColumnValue, ProfileWrite, StatementRow, OWN_TIMESTAMP_COLUMNS,
};
use super::lives::{Deletion, Life, LIFE_REMEMBERED_FOR};
use super::schema::{DELETES_TABLE, TABLE};
use super::CassandraStore;
use crate::profile::fields::Field;
use crate::profile::ProfileUpdate;
use crate::stores::error::execution_is_transient;
use crate::stores::remembered::Remembered;
use crate::stores::{CassandraCause, StoreError};

/// Writes device profiles into `device_profile`: one statement per device where the cells of
/// its updates can share one, and the statements of devices with the same replicas together
/// in unlogged batches ([`replica_batches`]); the cell timestamps encode the per-field rules,
/// so no read and no lightweight transaction is needed (docs/architecture.md, "Device profile
/// push").
#[derive(Clone)]
pub struct ProfileWriter {
    session: Arc<Session>,
    keyspace: String,
    statements: Arc<ProfileStatements>,
    writes_in_flight: usize,
    /// Lets a write leave out the value-timestamped cells Cassandra already holds, which
    /// usually leaves one statement instead of a batch of two.
    acknowledged: Arc<AcknowledgedCells<OWN_TIMESTAMP_COLUMNS>>,
    /// The life of a device never deleted.
    undeleted: Life,
    /// The devices' lives ([`Life`]) as last read or written.
    lives: Arc<Remembered<Life>>,
}

/// Value-ordered cells (epoch ms) Cassandra holds in another encoding than today's (another
/// writer's cells, this service's earlier ones), per device: written again in today's along
/// with the device's updates, so that they keep taking part in their rule (`stores::adoption`).
pub type Folds = BTreeMap<String, Vec<(Field, i64)>>;

/// The statements of the write path, prepared once.
struct ProfileStatements {
    /// `UPDATE … USING TIMESTAMP ? SET a = ?, b = ?, … WHERE device_id = ?` over every column
    /// whose cell timestamp is the update's version ([`shares_the_version`]), in [`FIELDS`]
    /// order: the columns an update does not carry are bound unset, so they stay as they are.
    versioned: PreparedStatement,
    /// `UPDATE … USING TIMESTAMP ? SET column = ? WHERE device_id = ?` for each column of
    /// [`own_timestamp_fields`], by slot: its timestamp comes from its value, so it needs a
    /// statement of its own.
    own_timestamp: Vec<PreparedStatement>,
    /// `DELETE FROM … USING TIMESTAMP ? WHERE device_id = ?`: the row up to a delete.
    delete_row: PreparedStatement,
    /// `DELETE first_access, user_declared_on, last_contact FROM … USING TIMESTAMP ? WHERE …`:
    /// the value-ordered columns of a life.
    delete_value_columns: PreparedStatement,
    /// `INSERT INTO device_profile_deletes … USING TIMESTAMP ?`: the newest delete and life.
    record_delete: PreparedStatement,
    /// `SELECT device_id, deleted_at, life_base FROM device_profile_deletes WHERE device_id IN ?`.
    read_lives: PreparedStatement,
}

impl ProfileWriter {
    pub async fn prepare(store: &CassandraStore) -> Result<Self, StoreError> {
        let table = format!("{}.{TABLE}", store.keyspace);
        let assignments: Vec<String> = versioned_fields()
            .map(|spec| format!("{} = ?", spec.column))
            .collect();
        let versioned = format!(
            "UPDATE {table} USING TIMESTAMP ? SET {} WHERE device_id = ?",
            assignments.join(", ")
        );
        let versioned = store.session.prepare(versioned).await.map_err(|e| {
            StoreError::cassandra("cannot prepare the update of the versioned columns", e)
        })?;
        let mut own_timestamp = Vec::with_capacity(OWN_TIMESTAMP_COLUMNS);
        for spec in own_timestamp_fields() {
            let column = spec.column;
            let cql =
                format!("UPDATE {table} USING TIMESTAMP ? SET {column} = ? WHERE device_id = ?");
            let prepared = store.session.prepare(cql).await.map_err(|e| {
                StoreError::cassandra(&format!("cannot prepare the update of {column}"), e)
            })?;
            own_timestamp.push(prepared);
        }
        let value_columns: Vec<&str> = own_timestamp_fields().map(|spec| spec.column).collect();
        let deletes = format!("{}.{DELETES_TABLE}", store.keyspace);
        let prepare = |cql: String| async move {
            store
                .session
                .prepare(cql)
                .await
                .map_err(|e| StoreError::cassandra("cannot prepare the deletes", e))
        };
        let statements = ProfileStatements {
            versioned,
            own_timestamp,
            delete_row: prepare(format!(
                "DELETE FROM {table} USING TIMESTAMP ? WHERE device_id = ?"
            ))
            .await?,
            delete_value_columns: prepare(format!(
                "DELETE {} FROM {table} USING TIMESTAMP ? WHERE device_id = ?",
                value_columns.join(", ")
            ))
            .await?,
            record_delete: prepare(format!(
                "INSERT INTO {deletes} (device_id, deleted_at, life_base) VALUES (?, ?, ?) \
                 USING TIMESTAMP ?"
            ))
            .await?,
            read_lives: prepare(format!(
                "SELECT device_id, deleted_at, life_base FROM {deletes} WHERE device_id IN ?"
            ))
            .await?,
        };
        Ok(ProfileWriter {
            session: store.session.clone(),
            keyspace: store.keyspace.clone(),
            writes_in_flight: store.writes_in_flight,
            statements: Arc::new(statements),
            acknowledged: Arc::default(),
            undeleted: Life::undeleted(store.smallest_wins_base),
            lives: Arc::new(Remembered::new(LIFE_REMEMBERED_FOR)),
        })
    }

    /// The lives of `device_ids`: as remembered, else read (in multi-partition reads,
    /// concurrently) and remembered.
    pub async fn lives<'a>(
        &self,
        device_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<BTreeMap<&'a str, Life>, StoreError> {
        let began = Instant::now();
        let mut lives = BTreeMap::new();
        let mut unknown = Vec::new();
        for device_id in device_ids {
            match self.lives.get(device_id, began) {
                Some(life) => {
                    lives.insert(device_id, life);
                }
                None => unknown.push(device_id),
            }
        }
        let reads: Vec<_> = self
            .read_groups(unknown)
            .into_iter()
            .map(|group| self.read_lives(group))
            .collect();
        let read: Vec<_> = futures::stream::iter(reads)
            .buffer_unordered(self.writes_in_flight)
            .collect()
            .await;
        for group in read {
            for (device_id, life) in group? {
                self.lives.insert(device_id, life, began);
                lives.insert(device_id, life);
            }
        }
        Ok(lives)
    }

    /// `device_ids` grouped for multi-partition reads: devices of the same replicas, at most
    /// [`DEVICES_PER_READ`] a group, so that a device's first read costs a fraction of a
    /// request.
    pub fn read_groups<'a>(
        &self,
        device_ids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Vec<&'a str>> {
        let cluster = self.session.get_cluster_state();
        replica_batches(
            device_ids,
            DEVICES_PER_READ,
            |device_id| self.replicas(&cluster, device_id),
            |_| 0,
        )
    }

    /// The lives of one group of [`Self::read_groups`], in one request.
    async fn read_lives<'a>(
        &self,
        group: Vec<&'a str>,
    ) -> Result<Vec<(&'a str, Life)>, StoreError> {
        let failed =
            |e: CassandraCause| StoreError::cassandra("cannot read device_profile_deletes", e);
        let result = self
            .session
            .execute_unpaged(&self.statements.read_lives, (&group,))
            .await
            .map_err(|e| failed(e.into()))?;
        let rows = result.into_rows_result().map_err(|e| failed(e.into()))?;
        let mut recorded = BTreeMap::new();
        for row in rows
            .rows::<(String, Option<CqlTimestamp>, Option<i64>)>()
            .map_err(|e| failed(e.into()))?
        {
            if let (device_id, Some(deleted_at), Some(base)) = row.map_err(|e| failed(e.into()))? {
                let life = Life {
                    deleted_at: Some(deleted_at.0),
                    base,
                };
                recorded.insert(device_id, life);
            }
        }
        Ok(group
            .into_iter()
            .map(|device_id| {
                let life = recorded.get(device_id).copied();
                (device_id, life.unwrap_or(self.undeleted))
            })
            .collect())
    }

    /// Writes every update: each device's statements, grouped with other devices of the same
    /// replicas into unlogged batches ([`replica_batches`]), at most
    /// `CASSANDRA_WRITE_CONCURRENCY` batches at a time.
    pub async fn upsert(&self, updates: &[ProfileUpdate]) -> Result<Refusals, StoreError> {
        self.upsert_folding(updates, &Folds::new()).await
    }

    /// [`Self::upsert`], with `folds` added to the devices of `updates` it names.
    pub async fn upsert_folding(
        &self,
        updates: &[ProfileUpdate],
        folds: &Folds,
    ) -> Result<Refusals, StoreError> {
        let began = Instant::now();
        let now_micros = chrono::Utc::now().timestamp_micros();
        let mut by_device: BTreeMap<&str, Vec<&ProfileUpdate>> = BTreeMap::new();
        for update in updates {
            by_device.entry(&update.device_id).or_default().push(update);
        }
        let lives = self.lives(by_device.keys().copied()).await?;
        let mut devices = Vec::with_capacity(by_device.len());
        let mut refused = Vec::new();
        for (device_id, updates) in by_device {
            let folded = folds.get(device_id).map(Vec::as_slice).unwrap_or_default();
            let life = lives.get(device_id).copied().unwrap_or(self.undeleted);
            match self.device_write(device_id, updates, folded, life, now_micros, began) {
                Ok(device) => devices.push(device),
                Err(error) => refused.push((device_id, Err(error))),
            }
        }
        let cluster = self.session.get_cluster_state();
        let batches = replica_batches(
            devices,
            DEVICES_PER_BATCH,
            |device| self.replicas(&cluster, device.device_id),
            |device| device.bytes,
        );
        // Built up front rather than in a stream closure, which keeps the future `Send` for
        // every caller's lifetimes.
        let writes: Vec<_> = batches
            .into_iter()
            .map(|batch| self.write_batch(batch, began))
            .collect();
        let written: Vec<Vec<(&str, Result<(), StoreError>)>> = futures::stream::iter(writes)
            .buffer_unordered(self.writes_in_flight)
            .collect()
            .await;
        refusals(written.into_iter().flatten().chain(refused))
    }

    /// Every statement of one device's updates (its delete first: `merge` puts it there) and
    /// folds, less the cells Cassandra already holds; an error when a delete cannot be written.
    fn device_write<'a>(
        &'a self,
        device_id: &'a str,
        updates: Vec<&'a ProfileUpdate>,
        folds: &[(Field, i64)],
        mut life: Life,
        now_micros: i64,
        began: Instant,
    ) -> Result<DeviceWrite<'a>, StoreError> {
        let mut statements = Vec::new();
        let mut life_after = None;
        for delete in updates.iter().filter(|update| update.delete) {
            let deletion = life.delete(delete.version, now_micros).map_err(|why| {
                StoreError::cassandra("cannot delete", CassandraCause::Unwritable(why))
            })?;
            statements.extend(self.deletion_statements(device_id, delete.version, &deletion));
            life = deletion.life;
            life_after = Some(life);
        }
        // The folds are values of the life a delete ends: they do not come back.
        let folds = if life_after.is_some() { &[] } else { folds };
        let held = self.acknowledged.held(device_id, began);
        let writes = updates
            .into_iter()
            .filter(|update| !update.delete && !life.removes(update.version))
            .flat_map(|update| profile_writes(update, &life))
            .chain(
                folds
                    .iter()
                    .filter_map(|&(field, value)| fold_write(field, value, &life)),
            );
        let (writes, written) = unheld_writes(writes, &held);
        for write in writes {
            statements.push(match write {
                ProfileWrite::Versioned { timestamp, values } => (
                    &self.statements.versioned,
                    statement_row(timestamp, values, device_id),
                ),
                ProfileWrite::Column(cell) => (
                    self.statements
                        .own_timestamp
                        .get(cell.slot)
                        .ok_or_else(|| {
                            StoreError::cassandra(
                                "cannot write device_profile",
                                CassandraCause::UnpreparedColumn(cell.column),
                            )
                        })?,
                    statement_row(cell.timestamp, vec![Some(cell.value)], device_id),
                ),
            });
        }
        let bytes = statements.iter().map(|(_, row)| row_bytes(row)).sum();
        Ok(DeviceWrite {
            device_id,
            statements,
            written,
            life_after,
            bytes,
        })
    }

    /// A delete's statements: the row tombstone at its version; when it starts a new life, the
    /// deletion of the value-ordered columns of the last one and the record of the new one.
    fn deletion_statements<'a>(
        &'a self,
        device_id: &'a str,
        version: i64,
        deletion: &Deletion,
    ) -> Vec<(&'a PreparedStatement, StatementRow<'a>)> {
        let key = || MaybeUnset::Set(ColumnValue::Text(Cow::Borrowed(device_id)));
        let number = |value: i64| MaybeUnset::Set(ColumnValue::BigInt(value));
        let mut statements = vec![(
            &self.statements.delete_row,
            vec![number(deletion.row_at), key()],
        )];
        if let Some(at) = deletion.value_columns_at {
            statements.push((
                &self.statements.delete_value_columns,
                vec![number(at), key()],
            ));
            let deleted_at = MaybeUnset::Set(ColumnValue::Timestamp(CqlTimestamp(version)));
            statements.push((
                &self.statements.record_delete,
                vec![
                    key(),
                    deleted_at,
                    number(deletion.life.base),
                    number(deletion.row_at),
                ],
            ));
        }
        statements
    }

    /// The nodes (and shards) that own the device's partition, as the driver's token-aware
    /// routing sees them; none while the table's metadata is unknown.
    fn replicas(&self, cluster: &ClusterState, device_id: &str) -> Vec<(Uuid, Shard)> {
        let Ok(token) = cluster.compute_token(&self.keyspace, TABLE, &(device_id,)) else {
            return Vec::new();
        };
        let mut replicas: Vec<(Uuid, Shard)> = cluster
            .get_token_endpoints(&self.keyspace, TABLE, token)
            .into_iter()
            .map(|(node, shard)| (node.host_id, shard))
            .collect();
        replicas.sort_unstable();
        replicas
    }

    /// One batch in one request. A batch refused for good is written again device by device,
    /// so that only the devices refused alone are refused.
    async fn write_batch<'a>(
        &self,
        batch: Vec<DeviceWrite<'a>>,
        began: Instant,
    ) -> Vec<(&'a str, Result<(), StoreError>)> {
        let statements = batch.iter().flat_map(|device| &device.statements);
        let outcome = match self.execute(statements).await {
            Err(error) if batch.len() > 1 && !execution_is_transient(&error) => {
                let alone = batch.iter().map(|device| self.execute(&device.statements));
                let outcomes = futures::future::join_all(alone).await;
                return batch
                    .iter()
                    .zip(outcomes)
                    .map(|(device, outcome)| self.settle(device, outcome, began))
                    .collect();
            }
            outcome => outcome,
        };
        batch
            .iter()
            .map(|device| self.settle(device, outcome.clone(), began))
            .collect()
    }

    /// A device's outcome of its batch: once Cassandra acknowledged its cells they are
    /// remembered ([`AcknowledgedCells`]).
    fn settle<'a>(
        &self,
        device: &DeviceWrite<'a>,
        outcome: Result<(), ExecutionError>,
        began: Instant,
    ) -> (&'a str, Result<(), StoreError>) {
        let outcome = outcome.map(|()| {
            self.acknowledged
                .acknowledged(device.device_id, &device.written, began);
            if let Some(life) = device.life_after {
                self.lives.insert(device.device_id, life, began);
            }
        });
        (
            device.device_id,
            outcome.map_err(|e| StoreError::cassandra("cannot write device_profile", e)),
        )
    }

    /// One statement alone, several as an unlogged batch.
    async fn execute<'s, 'a: 's>(
        &self,
        statements: impl IntoIterator<Item = &'s (&'a PreparedStatement, StatementRow<'a>)>,
    ) -> Result<(), ExecutionError> {
        let mut statements: Vec<_> = statements.into_iter().collect();
        if statements.len() > 1 {
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values = Vec::with_capacity(statements.len());
            for (statement, row) in statements {
                batch.append_statement((*statement).clone());
                values.push(row);
            }
            self.session.batch(&batch, values).await?;
        } else if let Some((statement, row)) = statements.pop() {
            self.session.execute_unpaged(statement, row).await?;
        }
        Ok(())
    }
}

/// One device's statements, and what they need once Cassandra acknowledged them.
struct DeviceWrite<'a> {
    device_id: &'a str,
    statements: Vec<(&'a PreparedStatement, StatementRow<'a>)>,
    /// The newest value-timestamped cell written per slot, remembered once acknowledged.
    written: Cells<OWN_TIMESTAMP_COLUMNS>,
    /// The life a delete of the write starts, remembered once acknowledged.
    life_after: Option<Life>,
    /// [`row_bytes`] of its statements.
    bytes: usize,
}

/// Devices a store refused for good, with why; the others were written.
pub type Refusals = BTreeMap<String, StoreError>;

/// The permanent failures of per-device writes; a transient one fails the whole call, so that
/// it is retried (the writes are idempotent).
fn refusals<'a>(
    written: impl IntoIterator<Item = (&'a str, Result<(), StoreError>)>,
) -> Result<Refusals, StoreError> {
    let mut refused = Refusals::new();
    for (device_id, result) in written {
        match result {
            Ok(()) => {}
            Err(error) if error.is_transient() => return Err(error),
            Err(error) => {
                refused.insert(device_id.to_string(), error);
            }
        }
    }
    Ok(refused)
}
