//! Cassandra/ScyllaDB: session, keyspace and `device_profile` table creation.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use openssl::ssl::{SslConnector, SslConnectorBuilder, SslMethod};
use scylla::client::execution_profile::{ExecutionProfile, ExecutionProfileHandle};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::cluster::metadata::ColumnType;
use scylla::cluster::ClusterState;
use scylla::errors::ExecutionError;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::routing::Shard;
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::{CellWriter, WrittenCellProof};
use scylla::serialize::SerializationError;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, MaybeUnset};
use uuid::Uuid;

use super::acknowledged::{AcknowledgedCells, CellOrder, Cells};
use super::batches::replica_batches;
use super::error::execution_is_transient;
use super::lives::{Deletion, Life, LIFE_REMEMBERED_FOR};
use super::remembered::Remembered;
use super::schema::{ensure_schema, schema_in_place, SchemaRights, DELETES_TABLE, TABLE};
use super::{CassandraCause, StoreError};
use crate::config::{CassandraTls, StoreSettings};
use crate::observe::http::ReadinessCheck;
use crate::profile::fields::{Field, FieldSpec, FieldValue, MergeRule, FIELDS};
use crate::profile::ProfileUpdate;

pub use super::schema::DEVICE_PROFILE_CQL;

#[derive(Clone)]
pub struct CassandraStore {
    session: Arc<Session>,
    keyspace: String,
    /// `CASSANDRA_WRITE_CONCURRENCY`: requests (batches of devices) in flight at once per
    /// upsert call.
    writes_in_flight: usize,
    /// The deployment's base of the smallest-wins cell timestamps (micros).
    smallest_wins_base: i64,
}

/// Every request at `CASSANDRA_CONSISTENCY`; token-aware routing, within `CASSANDRA_LOCAL_DC`
/// when set (no failover to another datacenter: its latency and consistency would surprise).
fn execution_profile(settings: &StoreSettings) -> ExecutionProfileHandle {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(datacenter) = &settings.cassandra_local_dc {
        policy = policy
            .prefer_datacenter(datacenter.clone())
            .permit_dc_failover(false);
    }
    ExecutionProfile::builder()
        .consistency(settings.cassandra_consistency)
        .load_balancing_policy(policy.build())
        .build()
        .into_handle()
}

/// OpenSSL's client defaults (peer verification on); the driver checks that the certificate
/// names the node's IP address.
fn tls_connector(tls: &CassandraTls) -> Result<SslConnectorBuilder, openssl::error::ErrorStack> {
    let mut builder = SslConnector::builder(SslMethod::tls_client())?;
    if let Some(ca_file) = &tls.ca_file {
        builder.set_ca_file(ca_file)?;
    }
    Ok(builder)
}

async fn session(settings: &StoreSettings) -> Result<Session, StoreError> {
    let mut builder = SessionBuilder::new()
        .known_nodes(&settings.cassandra_nodes)
        .connection_timeout(Duration::from_secs(5))
        .default_execution_profile_handle(execution_profile(settings));
    if let Some((user, password)) = settings.cassandra_credentials.login() {
        builder = builder.user(user, password.expose());
    }
    if settings.cassandra_tls.enabled {
        let connector = tls_connector(&settings.cassandra_tls)
            .map_err(|e| StoreError::cassandra("cannot set up TLS", e))?;
        builder = builder.tls_context(Some(connector));
    }
    builder
        .build()
        .await
        .map_err(|e| StoreError::cassandra("cannot connect", e))
}

impl CassandraStore {
    /// The service's connection: creates the keyspace (when allowed) and the tables when
    /// missing, adopts an existing `device_profile` ([`ensure_schema`]).
    pub async fn connect(settings: &StoreSettings) -> Result<Self, StoreError> {
        let session = session(settings).await?;
        let rights = SchemaRights {
            create_keyspace_with: settings
                .cassandra_create_keyspace
                .then_some(settings.cassandra_replication.as_str()),
            alter_table: settings.cassandra_alter_table,
        };
        let smallest_wins_base =
            ensure_schema(&session, &settings.cassandra_keyspace, rights).await?;
        Ok(Self::with_session(session, settings, smallest_wins_base))
    }

    /// The operator tools' connection: the schema as the service left it, changed in nothing
    /// ([`schema_in_place`]), so that a read-only tool writes nothing.
    pub async fn open(settings: &StoreSettings) -> Result<Self, StoreError> {
        let session = session(settings).await?;
        let smallest_wins_base = schema_in_place(&session, &settings.cassandra_keyspace).await?;
        Ok(Self::with_session(session, settings, smallest_wins_base))
    }

    fn with_session(session: Session, settings: &StoreSettings, smallest_wins_base: i64) -> Self {
        CassandraStore {
            session: Arc::new(session),
            keyspace: settings.cassandra_keyspace.clone(),
            writes_in_flight: settings.cassandra_write_concurrency,
            smallest_wins_base,
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.session
            .query_unpaged("SELECT release_version FROM system.local", ())
            .await
            .map_err(|e| StoreError::cassandra("ping", e))?;
        Ok(())
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// `CASSANDRA_WRITE_CONCURRENCY`.
    pub fn writes_in_flight(&self) -> usize {
        self.writes_in_flight
    }

    pub fn smallest_wins_base(&self) -> i64 {
        self.smallest_wins_base
    }
}

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
    /// `SELECT deleted_at, life_base FROM device_profile_deletes WHERE device_id = ?`.
    read_life: PreparedStatement,
}

/// Whether a rule's cell timestamp is the update's version, shared by all such columns.
const fn shares_the_version(rule: MergeRule) -> bool {
    !rule.is_value_ordered()
}

fn versioned_fields() -> impl Iterator<Item = &'static FieldSpec> {
    FIELDS.iter().filter(|spec| shares_the_version(spec.rule))
}

/// The columns whose cell timestamp comes from their value (`first_access`,
/// `user_declared_on`, `last_contact`); a column's slot is its place in this order.
fn own_timestamp_fields() -> impl Iterator<Item = &'static FieldSpec> {
    FIELDS.iter().filter(|spec| !shares_the_version(spec.rule))
}

/// How many [`own_timestamp_fields`] there are.
const OWN_TIMESTAMP_COLUMNS: usize = {
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
type StatementRow<'a> = Vec<MaybeUnset<ColumnValue<'a>>>;

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
            read_life: prepare(format!(
                "SELECT deleted_at, life_base FROM {deletes} WHERE device_id = ?"
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

    /// The lives of `device_ids`: as remembered, else read (concurrently) and remembered.
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
        let reads: Vec<_> = unknown
            .into_iter()
            .map(|device_id| async move { (device_id, self.read_life(device_id).await) })
            .collect();
        let read: Vec<_> = futures::stream::iter(reads)
            .buffer_unordered(self.writes_in_flight)
            .collect()
            .await;
        for (device_id, life) in read {
            let life = life?;
            self.lives.insert(device_id, life, began);
            lives.insert(device_id, life);
        }
        Ok(lives)
    }

    async fn read_life(&self, device_id: &str) -> Result<Life, StoreError> {
        let failed =
            |e: CassandraCause| StoreError::cassandra("cannot read device_profile_deletes", e);
        let result = self
            .session
            .execute_unpaged(&self.statements.read_life, (device_id,))
            .await
            .map_err(|e| failed(e.into()))?;
        let rows = result.into_rows_result().map_err(|e| failed(e.into()))?;
        let row = rows
            .rows::<(Option<CqlTimestamp>, Option<i64>)>()
            .map_err(|e| failed(e.into()))?
            .next()
            .transpose()
            .map_err(|e| failed(e.into()))?;
        Ok(match row {
            Some((Some(deleted_at), Some(base))) => Life {
                deleted_at: Some(deleted_at.0),
                base,
            },
            _ => self.undeleted,
        })
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

/// Bytes of a statement's bound values as Cassandra's batch size thresholds count them (a
/// little over: the timestamp and the key are counted as cells too).
fn row_bytes(row: &StatementRow<'_>) -> usize {
    row.iter()
        .map(|value| match value {
            MaybeUnset::Set(value) => value.cell_bytes(),
            MaybeUnset::Unset => 0,
        })
        .sum()
}

fn statement_row<'a>(
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

/// One column write: the cell timestamp makes Cassandra's last-write-wins apply the field's rule.
#[derive(Debug, Clone, PartialEq)]
struct Cell<'a> {
    column: &'static str,
    /// The column's place among [`own_timestamp_fields`].
    slot: usize,
    timestamp: i64,
    value: ColumnValue<'a>,
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
enum ProfileWrite<'a> {
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
fn unheld_writes<'a>(
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
fn profile_writes<'a>(update: &'a ProfileUpdate, life: &Life) -> Vec<ProfileWrite<'a>> {
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
fn fold_write(field: Field, value_ms: i64, life: &Life) -> Option<ProfileWrite<'static>> {
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

impl ReadinessCheck for CassandraStore {
    fn name(&self) -> &'static str {
        "cassandra"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.ping().await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{LastContact, TextField};
    use crate::stores::schema::BASE_AHEAD_MICROS;

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
