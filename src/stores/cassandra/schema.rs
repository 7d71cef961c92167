//! The schema the service writes into: the keyspace (created when allowed), `device_profile`
//! (created when missing; adopted when it exists: the columns it lacks are added, nothing is
//! dropped or changed, columns of other writers are left alone) and the deployment's
//! smallest-wins base, kept in `device_profile_adoption` (docs/architecture.md, "Taking over
//! an existing deployment").

use std::collections::BTreeMap;
use std::time::Duration;

use scylla::client::session::Session;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;

use crate::profile::fields::{FIELDS, SMALLEST_WINS_CEILING_MS, SMALLEST_WINS_STEP_MS};
use crate::retry::{Failure, RetryPolicy};
use crate::stores::{CassandraCause, StoreError};

/// The CQL of the table, kept in `schemas/` for operators and applied by the service.
pub const DEVICE_PROFILE_CQL: &str = include_str!("../../../schemas/device_profile.cql");
/// The CQL of the table holding the smallest-wins base.
pub const ADOPTION_CQL: &str = include_str!("../../../schemas/device_profile_adoption.cql");
/// The CQL of the table of the devices' newest deletes.
pub const DELETES_CQL: &str = include_str!("../../../schemas/device_profile_deletes.cql");

pub const TABLE: &str = "device_profile";
const ADOPTION_TABLE: &str = "device_profile_adoption";
pub const DELETES_TABLE: &str = "device_profile_deletes";

/// Times an instance re-reads the table and adds what is still missing, when its `ALTER`
/// failed because other instances were adding the same columns (and attempts of the other
/// steps such instances may get in each other's way).
const ALTER_ATTEMPTS: u32 = 5;

/// How the service may change the schema.
#[derive(Debug, Clone, Copy)]
pub struct SchemaRights<'a> {
    /// `CASSANDRA_REPLICATION` when the keyspace may be created, else `None`.
    pub create_keyspace_with: Option<&'a str>,
    /// `CASSANDRA_ALTER_TABLE`: add the columns an existing `device_profile` lacks.
    pub alter_table: bool,
}

/// Makes the keyspace and both tables ready for the writes; returns the smallest-wins base
/// (micros) every instance of the deployment uses.
pub async fn ensure_schema(
    session: &Session,
    keyspace: &str,
    rights: SchemaRights<'_>,
) -> Result<i64, StoreError> {
    if let Some(replication) = rights.create_keyspace_with {
        let cql =
            format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}");
        session
            .query_unpaged(cql, ())
            .await
            .map_err(|e| StoreError::cassandra("cannot create keyspace", e))?;
    }
    session.use_keyspace(keyspace, false).await.map_err(|e| {
        let created = rights.create_keyspace_with.is_some();
        StoreError::cassandra(
            &format!("cannot use keyspace {keyspace} (CASSANDRA_CREATE_KEYSPACE={created})"),
            e,
        )
    })?;
    create_if_missing(session, keyspace, TABLE, DEVICE_PROFILE_CQL).await?;
    adopt_device_profile(session, keyspace, rights.alter_table).await?;
    // Instances starting together: a table another has just created may not be usable yet.
    STARTING_TOGETHER
        .run(
            || async {
                create_if_missing(session, keyspace, ADOPTION_TABLE, ADOPTION_CQL).await?;
                create_if_missing(session, keyspace, DELETES_TABLE, DELETES_CQL).await?;
                agree(session).await?;
                usable(session, keyspace).await?;
                smallest_wins_base(session, keyspace).await
            },
            |_| Failure::Transient,
            |retry| tracing::info!(error = %retry.error, "reading the smallest-wins base again"),
            tokio::time::sleep,
        )
        .await
}

/// Retries of the schema steps that instances starting at once may get in each other's way.
const STARTING_TOGETHER: RetryPolicy = RetryPolicy {
    max_attempts: Some(ALTER_ATTEMPTS),
    ..RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(2))
};

/// The schema as the service left it, for the operator tools: every column the service writes
/// is there and the deployment has its smallest-wins base; nothing is created or changed.
pub async fn schema_in_place(session: &Session, keyspace: &str) -> Result<i64, StoreError> {
    let refuse = |why: String| {
        StoreError::cassandra(
            &format!("cannot use table {keyspace}.{TABLE}"),
            CassandraCause::Schema(why),
        )
    };
    let existing = table_columns(session, keyspace, TABLE).await?;
    let missing = missing_columns(&existing).map_err(refuse)?;
    if !missing.is_empty() {
        return Err(refuse(format!(
            "it lacks columns the service writes ({}): start the service on it once, which adds \
             them",
            missing
                .iter()
                .map(|(column, _)| *column)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    session
        .use_keyspace(keyspace, false)
        .await
        .map_err(|e| StoreError::cassandra(&format!("cannot use keyspace {keyspace}"), e))?;
    read_base(session, keyspace).await?.ok_or_else(|| {
        refuse(format!(
            "{keyspace}.{ADOPTION_TABLE} holds no smallest_wins_base: start the service on it once"
        ))
    })
}

/// Reads every column the service uses: a table or column another instance has just created
/// may be in `system_schema` before a node accepts statements naming it.
async fn usable(session: &Session, keyspace: &str) -> Result<(), StoreError> {
    let columns: Vec<&str> = needed_columns().map(|(column, _)| column).collect();
    for cql in [
        format!(
            "SELECT {} FROM {keyspace}.{TABLE} LIMIT 1",
            columns.join(", ")
        ),
        format!("SELECT device_id, deleted_at, life_base FROM {keyspace}.{DELETES_TABLE} LIMIT 1"),
    ] {
        session
            .query_unpaged(cql, ())
            .await
            .map_err(|e| StoreError::cassandra("cannot read the tables just made ready", e))?;
    }
    Ok(())
}

/// The columns the service writes, with their types, the key included.
fn needed_columns() -> impl Iterator<Item = (&'static str, &'static str)> {
    std::iter::once(("device_id", "text")).chain(
        FIELDS
            .iter()
            .map(|spec| (spec.column, spec.value_type.cql_type())),
    )
}

/// A table's columns and their types as `system_schema` spells them; empty when it is missing.
async fn table_columns(
    session: &Session,
    keyspace: &str,
    table: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    let failed = |e: CassandraCause| {
        StoreError::cassandra(&format!("cannot read the columns of {keyspace}.{table}"), e)
    };
    let result = session
        .query_unpaged(
            "SELECT column_name, type FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ?",
            (keyspace, table),
        )
        .await
        .map_err(|e| failed(e.into()))?;
    let rows = result.into_rows_result().map_err(|e| failed(e.into()))?;
    let mut columns = BTreeMap::new();
    for row in rows
        .rows::<(String, String)>()
        .map_err(|e| failed(e.into()))?
    {
        let (name, cql_type) = row.map_err(|e| failed(e.into()))?;
        columns.insert(name, cql_type);
    }
    Ok(columns)
}

/// `CREATE TABLE IF NOT EXISTS` only when the table is missing, so that a role without the
/// right to create tables can run on tables an operator created.
async fn create_if_missing(
    session: &Session,
    keyspace: &str,
    table: &str,
    cql: &str,
) -> Result<(), StoreError> {
    if table_columns(session, keyspace, table).await?.is_empty() {
        session
            .query_unpaged(cql, ())
            .await
            .map_err(|e| StoreError::cassandra(&format!("cannot create table {table}"), e))?;
        agree(session).await?;
    }
    Ok(())
}

/// Adds the columns `device_profile` lacks. Several instances may add them at once: one's
/// `ALTER` then fails on a column another added, so each re-reads the table and adds what is
/// still missing.
async fn adopt_device_profile(
    session: &Session,
    keyspace: &str,
    alter_table: bool,
) -> Result<(), StoreError> {
    let refuse = |why: String| {
        StoreError::cassandra(
            &format!("cannot adopt table {keyspace}.{TABLE}"),
            CassandraCause::Schema(why),
        )
    };
    for attempt in 1..=ALTER_ATTEMPTS {
        let existing = table_columns(session, keyspace, TABLE).await?;
        let missing = missing_columns(&existing).map_err(refuse)?;
        if missing.is_empty() {
            return Ok(());
        }
        let alter = alter_statement(keyspace, &missing);
        if !alter_table {
            return Err(refuse(format!(
                "it lacks columns the service writes and CASSANDRA_ALTER_TABLE=false: run `{alter}` \
                 (or set CASSANDRA_ALTER_TABLE=true)"
            )));
        }
        match session.query_unpaged(alter.as_str(), ()).await {
            Ok(_) => {
                tracing::info!(%alter, "adopted an existing device_profile table");
                agree(session).await?;
            }
            Err(error) if attempt < ALTER_ATTEMPTS => {
                tracing::info!(%error, "another instance may be altering device_profile; reading it again");
                agree(session).await?;
                tokio::time::sleep(STARTING_TOGETHER.backoff_ceiling(attempt)).await;
            }
            Err(error) => {
                return Err(StoreError::cassandra(
                    &format!("cannot run `{alter}`"),
                    error,
                ))
            }
        }
    }
    Ok(())
}

/// The needed columns `existing` lacks, with their types; an error naming the first column
/// that exists with another type.
fn missing_columns(
    existing: &BTreeMap<String, String>,
) -> Result<Vec<(&'static str, &'static str)>, String> {
    let mut missing = Vec::new();
    for (column, needed) in needed_columns() {
        match existing.get(column) {
            None => missing.push((column, needed)),
            Some(found) if same_type(found, needed) => {}
            Some(found) => {
                return Err(format!(
                    "column {column} is {found} but the service writes {needed}: drop or rename that \
                     column (after copying what it holds), or set CASSANDRA_KEYSPACE to another keyspace"
                ))
            }
        }
    }
    Ok(missing)
}

/// Types as `system_schema` spells them, whatever the spacing and case.
fn same_type(found: &str, needed: &str) -> bool {
    let canonical = |cql_type: &str| -> String {
        cql_type
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase()
    };
    canonical(found) == canonical(needed)
}

fn alter_statement(keyspace: &str, missing: &[(&str, &str)]) -> String {
    let columns: Vec<String> = missing
        .iter()
        .map(|(column, cql_type)| format!("{column} {cql_type}"))
        .collect();
    format!(
        "ALTER TABLE {keyspace}.{TABLE} ADD ({})",
        columns.join(", ")
    )
}

async fn agree(session: &Session) -> Result<(), StoreError> {
    session
        .await_schema_agreement()
        .await
        .map(|_| ())
        .map_err(|e| StoreError::cassandra("schema agreement", e))
}

/// How far ahead of the adoption instant the base lies (micros): the steps of every value
/// fit between the two, so each smallest-wins cell lies above every write made before.
pub const BASE_AHEAD_MICROS: i64 = SMALLEST_WINS_CEILING_MS / SMALLEST_WINS_STEP_MS;
// Less than a day ahead: within PROFILE_MAX_FUTURE_SECS' default and ScyllaDB's three days.
const _: () = assert!(BASE_AHEAD_MICROS < 86_400_000_000);

/// The deployment's smallest-wins base: the first instance to start on the table writes
/// `now + BASE_AHEAD_MICROS` (a lightweight transaction, once per deployment); every instance
/// reads what was written.
async fn smallest_wins_base(session: &Session, keyspace: &str) -> Result<i64, StoreError> {
    let failed = |e: CassandraCause| StoreError::cassandra("cannot read the smallest-wins base", e);
    let now = chrono::Utc::now();
    let candidate = now.timestamp_micros() + BASE_AHEAD_MICROS;
    session
        .query_unpaged(
            format!(
                "INSERT INTO {keyspace}.{ADOPTION_TABLE} (table_name, smallest_wins_base, adopted_at) \
                 VALUES (?, ?, ?) IF NOT EXISTS"
            ),
            (TABLE, candidate, scylla::value::CqlTimestamp(now.timestamp_millis())),
        )
        .await
        .map_err(|e| failed(e.into()))?;
    read_base(session, keyspace).await?.ok_or_else(|| {
        failed(CassandraCause::Schema(format!(
            "{keyspace}.{ADOPTION_TABLE} holds no smallest_wins_base for {TABLE}"
        )))
    })
}

/// The deployment's smallest-wins base, `None` before the service first started on the table.
/// A serial read sees the value the transaction settled on, whichever instance wrote it.
async fn read_base(session: &Session, keyspace: &str) -> Result<Option<i64>, StoreError> {
    let failed = |e: CassandraCause| StoreError::cassandra("cannot read the smallest-wins base", e);
    if table_columns(session, keyspace, ADOPTION_TABLE)
        .await?
        .is_empty()
    {
        return Ok(None);
    }
    let mut read = Statement::new(format!(
        "SELECT smallest_wins_base FROM {keyspace}.{ADOPTION_TABLE} WHERE table_name = ?"
    ));
    read.set_consistency(Consistency::Serial);
    let result = session
        .query_unpaged(read, (TABLE,))
        .await
        .map_err(|e| failed(e.into()))?;
    let rows = result.into_rows_result().map_err(|e| failed(e.into()))?;
    let row = rows
        .rows::<(Option<i64>,)>()
        .map_err(|e| failed(e.into()))?
        .next()
        .transpose()
        .map_err(|e| failed(e.into()))?;
    Ok(row.and_then(|(base,)| base))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The platform's own table, as published with the device-register design.
    fn platform_columns() -> BTreeMap<String, String> {
        [
            ("device_id", "text"),
            ("first_access", "timestamp"),
            ("last_access", "timestamp"),
            ("total_ts", "double"),
            ("device_spec", "map<text, text>"),
            ("updated_date", "timestamp"),
            ("city", "text"),
            ("uaspec", "map<text, text>"),
        ]
        .into_iter()
        .map(|(name, cql_type)| (name.to_string(), cql_type.to_string()))
        .collect()
    }

    #[test]
    fn the_columns_a_foreign_table_lacks_are_added_and_its_own_are_left() {
        let missing = missing_columns(&platform_columns()).unwrap();
        let names: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
        assert!(names.contains(&"serial_number"));
        assert!(names.contains(&"user_declared_on"));
        assert!(!names.contains(&"city") && !names.contains(&"uaspec"));
        assert!(missing.contains(&("client_id", "bigint")));
        let alter = alter_statement("device_db", &missing[..2]);
        assert!(
            alter.starts_with("ALTER TABLE device_db.device_profile ADD ("),
            "{alter}"
        );
    }

    #[test]
    fn a_needed_column_of_another_type_is_named_with_both_types() {
        let mut columns = platform_columns();
        columns.insert("first_access".into(), "bigint".into());
        let error = missing_columns(&columns).unwrap_err();
        assert!(
            error.starts_with("column first_access is bigint but the service writes timestamp"),
            "{error}"
        );
        assert!(!error.contains('\n'));
    }

    #[test]
    fn types_compare_whatever_the_spacing() {
        assert!(same_type("map<text,text>", "map<text, text>"));
        assert!(same_type("TEXT", "text"));
        assert!(!same_type("frozen<map<text, text>>", "map<text, text>"));
    }

    #[test]
    fn every_step_fits_between_the_adoption_and_the_base() {
        use crate::profile::fields::smallest_wins_step;
        assert!(smallest_wins_step(i64::MAX) < BASE_AHEAD_MICROS);
        assert_eq!(smallest_wins_step(i64::MIN), 0);
    }
}
