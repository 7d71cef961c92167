//! The deployment the service takes over, for the push on adopted rows: every device already
//! in `device_profile` as the platform's API writes it (a plain `INSERT` of every column, its
//! cells at the write's time) and in Redis as the old job left it (a hash that expires in 24
//! hours), written a day before the run's first event so that the run's events are newer.

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};

use super::probe::Harness;
use super::store_limit::{hash_fields, insert_row};
use hawkeye_customer_cache::profile::fields::FIELDS;
use hawkeye_customer_cache::profile::ProfileUpdate;

/// `INSERT`s in flight while filling the table.
const INSERTS_IN_FLIGHT: usize = 256;
/// Devices per Redis pipeline.
const DEVICES_PER_PIPELINE: usize = 1_000;
/// The old job's TTL of a device hash.
const OLD_JOB_TTL_SECONDS: i64 = 86_400;

/// Writes `rows` into both stores the way the deployment before the service did, at
/// `written_at_ms` (epoch ms), untimed.
pub async fn write(
    harness: &Harness,
    rows: &[ProfileUpdate],
    written_at_ms: i64,
) -> anyhow::Result<()> {
    let cassandra = &harness.cassandra;
    let columns: Vec<&str> = FIELDS.iter().map(|spec| spec.column).collect();
    let insert = cassandra
        .session()
        .prepare(format!(
            "INSERT INTO {}.device_profile (device_id, {}) VALUES (?{}) USING TIMESTAMP {}",
            cassandra.keyspace(),
            columns.join(", "),
            ", ?".repeat(columns.len()),
            written_at_ms * 1_000,
        ))
        .await
        .context("cannot prepare the platform's INSERT")?;
    futures::stream::iter(rows)
        .map(|row| {
            cassandra
                .session()
                .execute_unpaged(&insert, insert_row(row))
        })
        .buffer_unordered(INSERTS_IN_FLIGHT)
        .try_for_each(|_| async { Ok(()) })
        .await
        .context("the platform's INSERT")?;
    for chunk in rows.chunks(DEVICES_PER_PIPELINE) {
        let mut pipeline = redis::pipe();
        for row in chunk {
            let key = harness.redis.device_key(&row.device_id);
            pipeline.hset_multiple(&key, &hash_fields(row)).ignore();
            pipeline.expire(&key, OLD_JOB_TTL_SECONDS).ignore();
        }
        pipeline
            .query_async::<()>(&mut harness.redis.connection())
            .await
            .context("the old job's HSET")?;
    }
    Ok(())
}
