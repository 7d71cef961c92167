//! The stores' own limits: what Cassandra and Redis take when the push's rows are written the
//! plainest way (prepared `INSERT`s into a scratch table, pipelined `HSET`s into scratch keys),
//! each alone and both at once (the two-store limit: what a push with nothing to merge, order
//! or check could reach on the same cores), measured in the same run as the service, with the
//! CPU Cassandra and the whole machine spend on them.

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::MaybeUnset;
use tokio::time::Instant;

use super::probe::Harness;
use crate::service::{machine_busy_seconds, process_cpu_seconds};
use hawkeye_customer_cache::profile::fields::FIELDS;
use hawkeye_customer_cache::profile::ProfileUpdate;
use hawkeye_customer_cache::stores::cassandra::{ColumnValue, DEVICE_PROFILE_CQL};
use hawkeye_customer_cache::stores::redis::hash_value;
use hawkeye_customer_cache::stores::{CassandraStore, RedisStore};

/// `INSERT`s in flight tried; the best is the limit.
pub const INSERTS_IN_FLIGHT: [usize; 3] = [64, 256, 1024];
/// `HSET` pipelines in flight on the one multiplexed connection.
const PIPELINES_IN_FLIGHT: usize = 2;
/// The scratch table: `device_profile`'s columns, never read by the service.
const SCRATCH_TABLE: &str = "store_limit";

/// What the stores took, in events per second of the push's events.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimit {
    pub cassandra: InsertRun,
    pub redis_events_per_s: f64,
    /// Both stores written at once, Cassandra at its best concurrency.
    pub two_stores: TwoStoreRun,
}

impl StoreLimit {
    /// The slower store alone bounds any write path that writes both, for reference; the
    /// two-store run is the limit of a push on the same cores.
    pub fn events_per_s(&self) -> f64 {
        self.cassandra.events_per_s.min(self.redis_events_per_s)
    }
}

/// The best of the `INSERT` runs.
#[derive(Debug, Clone, Copy)]
pub struct InsertRun {
    pub in_flight: usize,
    pub events_per_s: f64,
    /// Cassandra's CPU seconds per 100k events during the run; `None` without its pid.
    pub cassandra_cpu_per_100k: Option<f64>,
}

/// Every event written into both stores at the same time, timed until both are done.
#[derive(Debug, Clone, Copy)]
pub struct TwoStoreRun {
    pub events_per_s: f64,
    /// The whole machine's busy CPU seconds per 100k events (`/proc/stat`, every core).
    pub machine_cpu_per_100k: f64,
}

/// The limits for the push's `events` events, whose merged updates are `rows(prefix, n)` for
/// the first `n` (one set of device ids per run, so that no run overwrites another's
/// partitions). The concurrencies are probed on the first `probe_events`; when the push has
/// more, the best one then writes all of them, so that the limit is for the same rows as the
/// push (1M events over 100k devices write every partition 10 times). The two-store run writes
/// all of them too.
pub async fn measure(
    harness: &Harness,
    events: usize,
    probe_events: usize,
    rows: impl Fn(&str, usize) -> anyhow::Result<Vec<Vec<ProfileUpdate>>>,
    prefix: &str,
    cassandra_pid: Option<u32>,
) -> anyhow::Result<StoreLimit> {
    let probe_events = probe_events.min(events);
    let mut best: Option<InsertRun> = None;
    for in_flight in INSERTS_IN_FLIGHT {
        let chunks = rows(&format!("{prefix}-insert{in_flight}"), probe_events)?;
        let run = insert_run(
            harness,
            probe_events,
            &chunks,
            in_flight,
            cassandra_pid,
            None,
        )
        .await?;
        eprintln!(
            "bench: store limit, {in_flight} INSERTs in flight: {:.0} ev/s",
            run.events_per_s
        );
        if best.is_none_or(|best| run.events_per_s > best.events_per_s) {
            best = Some(run);
        }
    }
    let mut cassandra = best.context("no INSERT run")?;
    if events > probe_events {
        let chunks = rows(&format!("{prefix}-insert-all"), events)?;
        cassandra = insert_run(
            harness,
            events,
            &chunks,
            cassandra.in_flight,
            cassandra_pid,
            None,
        )
        .await?;
        eprintln!(
            "bench: store limit, all {events} events as INSERTs, {} in flight: {:.0} ev/s",
            cassandra.in_flight, cassandra.events_per_s
        );
    }
    let chunks = rows(&format!("{prefix}-hset"), probe_events)?;
    let redis_events_per_s = hset_rate(harness, probe_events, &chunks).await?;
    eprintln!("bench: store limit, pipelined HSETs: {redis_events_per_s:.0} ev/s");
    let chunks = rows(&format!("{prefix}-both"), events)?;
    let two_stores = two_store_run(harness, events, &chunks, cassandra.in_flight).await?;
    eprintln!(
        "bench: two-store limit, INSERTs ({} in flight) and HSETs at once: {:.0} ev/s, machine \
         CPU {:.1} s per 100k",
        cassandra.in_flight, two_stores.events_per_s, two_stores.machine_cpu_per_100k
    );
    Ok(StoreLimit {
        cassandra,
        redis_events_per_s,
        two_stores,
    })
}

/// Writes every event into both stores at once, untimed: the warm-up before the first
/// repetition.
pub async fn warm_up(
    harness: &Harness,
    events: usize,
    chunks: &[Vec<ProfileUpdate>],
    in_flight: usize,
) -> anyhow::Result<()> {
    two_store_run(harness, events, chunks, in_flight).await?;
    Ok(())
}

/// Cassandra's CPU seconds per 100k events for the `INSERT`s of the first `events` events sent
/// no faster than `push_rate` (the push's own rate, events per second): what plain inserts
/// cost it at the push's load rather than at its own best (a server kept less busy spends more
/// per request). `None` without its pid.
pub async fn paced_cassandra_cpu(
    harness: &Harness,
    events: usize,
    chunks: &[Vec<ProfileUpdate>],
    in_flight: usize,
    cassandra_pid: Option<u32>,
    push_rate: f64,
) -> anyhow::Result<Option<f64>> {
    let paced = insert_run(
        harness,
        events,
        chunks,
        in_flight,
        cassandra_pid,
        Some(push_rate),
    )
    .await?;
    eprintln!(
        "bench: store limit, INSERTs paced at the push's {push_rate:.0} ev/s: {:.0} ev/s, \
         Cassandra CPU {:?} s per 100k",
        paced.events_per_s, paced.cassandra_cpu_per_100k
    );
    Ok(paced.cassandra_cpu_per_100k)
}

/// The scratch table (created when missing) and the `INSERT` of every column into it.
async fn prepare_insert(cassandra: &CassandraStore) -> anyhow::Result<PreparedStatement> {
    let session = cassandra.session();
    let table = format!("{}.{SCRATCH_TABLE}", cassandra.keyspace());
    let create = DEVICE_PROFILE_CQL.replace(
        "CREATE TABLE IF NOT EXISTS device_profile (",
        &format!("CREATE TABLE IF NOT EXISTS {table} ("),
    );
    session
        .query_unpaged(create, ())
        .await
        .context("cannot create the scratch table")?;
    let columns: Vec<&str> = FIELDS.iter().map(|spec| spec.column).collect();
    session
        .prepare(format!(
            "INSERT INTO {table} (device_id, {}) VALUES (?{})",
            columns.join(", "),
            ", ?".repeat(columns.len())
        ))
        .await
        .context("cannot prepare the store-limit INSERT")
}

/// Every row as a plain `INSERT` of all columns (absent ones unset), `in_flight` at a time;
/// with `pace` (events per second), each chunk is released no earlier than that rate allows.
async fn insert_run(
    harness: &Harness,
    events: usize,
    chunks: &[Vec<ProfileUpdate>],
    in_flight: usize,
    cassandra_pid: Option<u32>,
    pace: Option<f64>,
) -> anyhow::Result<InsertRun> {
    harness.settle_compactions().await;
    let insert = prepare_insert(&harness.cassandra).await?;
    let cpu_before = cassandra_pid.map(process_cpu_seconds).transpose()?;
    let started = Instant::now();
    // Events per chunk are the same for every chunk but the last, which only ends the run.
    let chunk_period = pace.map(|rate| {
        let chunk_events = events as f64 / chunks.len().max(1) as f64;
        std::time::Duration::from_secs_f64(chunk_events / rate.max(1.0))
    });
    write_inserts(&harness.cassandra, &insert, chunks, in_flight, chunk_period).await?;
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    let cpu_after = cassandra_pid.map(process_cpu_seconds).transpose()?;
    Ok(InsertRun {
        in_flight,
        events_per_s: events as f64 / seconds,
        cassandra_cpu_per_100k: cpu_before
            .zip(cpu_after)
            .map(|(before, after)| per_100k(after - before, events)),
    })
}

/// The `INSERT`s of every row, `in_flight` at a time; chunk `i` released no earlier than
/// `i × chunk_period` after the start, when given.
async fn write_inserts(
    cassandra: &CassandraStore,
    insert: &PreparedStatement,
    chunks: &[Vec<ProfileUpdate>],
    in_flight: usize,
    chunk_period: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let session = cassandra.session();
    let started = Instant::now();
    futures::stream::iter(chunks.iter().enumerate())
        .then(|(index, chunk)| async move {
            if let Some(period) = chunk_period {
                tokio::time::sleep_until(started + period * index as u32).await;
            }
            futures::stream::iter(chunk)
        })
        .flatten()
        .map(|update| session.execute_unpaged(insert, insert_row(update)))
        .buffer_unordered(in_flight)
        .try_for_each(|_| async { Ok(()) })
        .await
        .context("store-limit INSERT")
}

/// The `INSERT`s and the `HSET`s of every row at the same time (as the service writes both
/// stores concurrently), timed until both are done. One task drives both: the drivers'
/// connection tasks do the I/O, and each store alone reaches its best from one task.
async fn two_store_run(
    harness: &Harness,
    events: usize,
    chunks: &[Vec<ProfileUpdate>],
    in_flight: usize,
) -> anyhow::Result<TwoStoreRun> {
    harness.settle_compactions().await;
    let insert = prepare_insert(&harness.cassandra).await?;
    let machine_before = machine_busy_seconds()?;
    let started = Instant::now();
    tokio::try_join!(
        write_inserts(&harness.cassandra, &insert, chunks, in_flight, None),
        write_hsets(&harness.redis, chunks),
    )?;
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    let machine_after = machine_busy_seconds()?;
    Ok(TwoStoreRun {
        events_per_s: events as f64 / seconds,
        machine_cpu_per_100k: per_100k(machine_after - machine_before, events),
    })
}

/// CPU seconds per 100k events.
pub fn per_100k(cpu_seconds: f64, events: usize) -> f64 {
    cpu_seconds * 100_000.0 / events.max(1) as f64
}

/// The key, then every column of the table in `FIELDS` order.
pub(super) fn insert_row(update: &ProfileUpdate) -> Vec<MaybeUnset<ColumnValue<'_>>> {
    let mut row = vec![MaybeUnset::Set(ColumnValue::Text(
        update.device_id.as_str().into(),
    ))];
    row.extend(
        FIELDS
            .iter()
            .map(|spec| MaybeUnset::from_option(update.value(spec.field).map(ColumnValue::from))),
    );
    row
}

/// The rate of [`write_hsets`] alone.
async fn hset_rate(
    harness: &Harness,
    events: usize,
    chunks: &[Vec<ProfileUpdate>],
) -> anyhow::Result<f64> {
    let started = Instant::now();
    write_hsets(&harness.redis, chunks).await?;
    Ok(events as f64 / started.elapsed().as_secs_f64().max(1e-3))
}

/// One pipeline of `HSET`s of every hash field per chunk, into scratch keys.
async fn write_hsets(redis: &RedisStore, chunks: &[Vec<ProfileUpdate>]) -> anyhow::Result<()> {
    futures::stream::iter(chunks)
        .map(|chunk| hset_chunk(redis, chunk))
        .buffer_unordered(PIPELINES_IN_FLIGHT)
        .try_collect::<()>()
        .await
}

async fn hset_chunk(redis: &RedisStore, chunk: &[ProfileUpdate]) -> anyhow::Result<()> {
    let mut pipeline = redis::pipe();
    for update in chunk {
        let key = format!("{}:store_limit", redis.device_key(&update.device_id));
        pipeline.hset_multiple(key, &hash_fields(update)).ignore();
    }
    pipeline
        .query_async::<()>(&mut redis.connection())
        .await
        .context("store-limit HSET")
}

pub(super) fn hash_fields(update: &ProfileUpdate) -> Vec<(&'static str, String)> {
    FIELDS
        .iter()
        .filter_map(|spec| Some((spec.redis?, hash_value(update.value(spec.field)?))))
        .collect()
}
