//! `profile rebuild-redis` (the service binary's subcommand) against the plainest read of the
//! same table: a parallel full scan over the same token ranges, as many at once, that only
//! counts the rows it is sent. Both read a keyspace of this run holding exactly the seeded
//! devices, so the rebuild's figure is not diluted by the rows other measurements leave in
//! [`crate::service::KEYSPACE`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::prepared::PreparedStatement;
use tokio::time::Instant;

use super::probe::Harness;
use super::push::{merged_chunks, producer_id};
use super::table::{median, thousands, Row};
use super::{Bench, Report};
use crate::service::{isolated_env, isolated_stores, run_command, Exit};
use hawkeye_customer_cache::stores::cassandra::scan::{
    selected_columns, token_ranges, PAGE_SIZE, RANGES_IN_FLIGHT, TOKEN_RANGES,
};
use hawkeye_customer_cache::stores::cassandra::{CassandraStore, ProfileWriter};

/// The target: the rebuild reads and writes at no less than half the scan's rate.
const TARGET_RATIO: f64 = 0.5;
/// Devices checked to hold their seeded hash in Redis after each rebuild.
const CHECKED_DEVICES: usize = 20;
/// A rebuild that takes longer has hung: BENCHMARKS.md measured 7,000 devices/s, which would
/// rebuild 25 million devices in this time.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(3600);

pub async fn measure(bench: &Bench) -> anyhow::Result<Report> {
    let devices = bench.sizes.rebuild_devices;
    let keyspace = format!("{}_rebuild", bench.run_id);
    let seeded = bench.name("rebuild");
    let harness = Harness::connect(&settings(bench, &keyspace, &seeded)).await?;
    seed(&harness.cassandra, &seeded, devices).await?;
    let scan = scan_statement(&harness.cassandra).await?;
    let mut scans = Vec::new();
    let mut rebuilds = Vec::new();
    for rep in 0..bench.sizes.repetitions {
        let rows_per_s = scan_rate(&harness.cassandra, &scan, devices).await?;
        eprintln!("bench: rebuild {rep}: scan {rows_per_s:.0} rows/s");
        scans.push(rows_per_s);
        let devices_per_s = rebuild_rate(bench, &keyspace, &seeded, rep, devices).await?;
        eprintln!("bench: rebuild {rep}: rebuild-redis {devices_per_s:.0} devices/s");
        rebuilds.push(devices_per_s);
    }
    let drop = format!("DROP KEYSPACE IF EXISTS {keyspace}");
    if let Err(e) = harness.cassandra.session().query_unpaged(drop, ()).await {
        eprintln!("bench: cannot drop {keyspace}: {e}");
    }
    let (rebuild, scan) = (median(&rebuilds), median(&scans));
    let rounded = |values: &[f64]| values.iter().map(|v| v.round() as u64).collect::<Vec<_>>();
    Ok(Report {
        rows: vec![Row::new(
            format!("rebuild-redis: {} devices", thousands(devices as f64)),
            format!("{} devices/s", thousands(rebuild)),
        )
        .baseline(
            format!("parallel scan {} rows/s", thousands(scan)),
            rebuild / scan,
        )
        .target(
            format!(">= {TARGET_RATIO:.2}x"),
            rebuild >= TARGET_RATIO * scan,
        )],
        notes: vec![format!(
            "rebuild-redis: `hawkeye-customer-cache profile rebuild-redis` (the release binary, \
             its own summary's seconds) over a keyspace of this run holding {} seeded devices \
             (one event each with every field, written by the service's Cassandra writer), into \
             empty Redis keys; {CHECKED_DEVICES} devices checked to hold their hash after each \
             rebuild. The scan baseline runs in the harness: the rebuild's own SELECT (every \
             column and its write time) over the same {TOKEN_RANGES} token ranges, \
             {RANGES_IN_FLIGHT} at once, pages of {PAGE_SIZE}, counting each page's rows and \
             dropping them unread. Medians of {} runs, interleaved: rebuild {:?} devices/s, \
             scan {:?} rows/s",
            thousands(devices as f64),
            bench.sizes.repetitions,
            rounded(&rebuilds),
            rounded(&scans),
        )],
    })
}

/// The stores of the service `name`, in `keyspace`.
fn settings(
    bench: &Bench,
    keyspace: &str,
    name: &str,
) -> hawkeye_customer_cache::config::StoreSettings {
    hawkeye_customer_cache::config::StoreSettings {
        cassandra_keyspace: keyspace.to_string(),
        ..isolated_stores(&bench.stack, name)
    }
}

/// Writes `devices` device rows through the service's Cassandra writer (the cell timestamps
/// the rebuild turns back into versions).
async fn seed(cassandra: &CassandraStore, prefix: &str, devices: usize) -> anyhow::Result<()> {
    let writer = ProfileWriter::prepare(cassandra).await?;
    let started = Instant::now();
    for chunk in merged_chunks(prefix, devices, devices)? {
        let refused = writer
            .upsert(&chunk)
            .await
            .context("seeding device_profile")?;
        if let Some((device_id, error)) = refused.first_key_value() {
            anyhow::bail!("Cassandra refused seeded device {device_id}: {error}");
        }
    }
    eprintln!(
        "bench: rebuild: seeded {devices} devices in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn scan_statement(cassandra: &CassandraStore) -> anyhow::Result<PreparedStatement> {
    let mut statement = cassandra
        .session()
        .prepare(format!(
            "SELECT {} FROM {}.device_profile WHERE token(device_id) > ? AND token(device_id) <= ?",
            selected_columns(),
            cassandra.keyspace()
        ))
        .await
        .context("cannot prepare the scan")?;
    statement.set_page_size(PAGE_SIZE);
    Ok(statement)
}

/// Rows per second of the full scan; it must see every seeded device.
async fn scan_rate(
    cassandra: &CassandraStore,
    statement: &PreparedStatement,
    devices: usize,
) -> anyhow::Result<f64> {
    let rows = AtomicU64::new(0);
    let started = Instant::now();
    futures::stream::iter(token_ranges(TOKEN_RANGES))
        .map(|range| scan_range(cassandra, statement, range, &rows))
        .buffer_unordered(RANGES_IN_FLIGHT)
        .try_collect::<()>()
        .await?;
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    let rows = rows.into_inner();
    if rows != devices as u64 {
        anyhow::bail!("the scan read {rows} rows, not the {devices} seeded");
    }
    Ok(rows as f64 / seconds)
}

async fn scan_range(
    cassandra: &CassandraStore,
    statement: &PreparedStatement,
    range: (i64, i64),
    rows: &AtomicU64,
) -> anyhow::Result<()> {
    let mut paging_state = PagingState::start();
    loop {
        let (result, next) = cassandra
            .session()
            .execute_single_page(statement, range, paging_state)
            .await
            .context("scan of device_profile")?;
        let page = result
            .into_rows_result()
            .context("scan of device_profile")?;
        rows.fetch_add(page.rows_num() as u64, Ordering::Relaxed);
        match next {
            PagingStateResponse::HasMorePages { state } => paging_state = state,
            PagingStateResponse::NoMorePages => return Ok(()),
        }
    }
}

/// Runs `profile rebuild-redis` into Redis keys of its own (`{run}.rebuild{rep}:device:…`)
/// and returns the devices per second of its summary line.
async fn rebuild_rate(
    bench: &Bench,
    keyspace: &str,
    seeded: &str,
    rep: usize,
    devices: usize,
) -> anyhow::Result<f64> {
    let name = bench.name(&format!("rebuild{rep}"));
    let mut env = isolated_env(&bench.stack, &name);
    env.insert("CASSANDRA_KEYSPACE".into(), keyspace.to_string());
    let rebuild = ["profile", "rebuild-redis"];
    let Exit {
        code,
        stdout,
        stderr,
    } = run_command(&bench.binary, &rebuild, &env, REBUILD_TIMEOUT).await?;
    if code != 0 {
        anyhow::bail!("rebuild-redis exited with {code}: {stdout}{stderr}");
    }
    let (rebuilt, seconds) =
        parse_summary(&stdout).with_context(|| format!("no summary line in {stdout:?}"))?;
    if rebuilt != devices as u64 {
        anyhow::bail!("rebuild-redis rebuilt {rebuilt} devices, not the {devices} seeded");
    }
    let harness = Harness::connect(&settings(bench, keyspace, &name)).await?;
    for device in (0..devices).step_by((devices / CHECKED_DEVICES).max(1)) {
        let device_id = format!("{seeded}-d{device}");
        let found = harness.redis_producer_id(&device_id).await?;
        if found.as_deref() != Some(producer_id(device).as_str()) {
            anyhow::bail!("after the rebuild {device_id} holds producer_id {found:?} in Redis");
        }
    }
    Ok(rebuilt as f64 / seconds.max(0.05))
}

/// `rebuilt N devices in S s` → (N, S).
fn parse_summary(stdout: &str) -> Option<(u64, f64)> {
    let line = stdout.lines().find(|line| line.starts_with("rebuilt "))?;
    let mut words = line.split_whitespace().skip(1);
    let devices = words.next()?.parse().ok()?;
    let seconds = words.nth(2)?.parse().ok()?;
    Some((devices, seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_gives_devices_and_seconds() {
        assert_eq!(
            parse_summary("rebuilt 100000 devices in 12.3 s\n"),
            Some((100_000, 12.3))
        );
        assert_eq!(parse_summary("rebuild-redis: 10 rows so far\n"), None);
    }
}
