//! Measurement 1: device profile push throughput, against the per-event design it replaces and
//! against the stores' own limits (plain writes of the same rows, no Kafka: each store alone,
//! and both at once on the same cores), after a warm-up, interleaved repetition by repetition
//! in alternating order, with the CPU the service, the stores and the machine spend per event.

use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use rdkafka::producer::FutureRecord;
use redis::AsyncCommands;
use reqwest::Url;
use scylla::value::CqlTimestamp;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::platform_rows;
use super::probe::Harness;
use super::store_limit::{self, per_100k, StoreLimit, INSERTS_IN_FLIGHT};
use super::table::{median, median_of, thousands, Row};
use super::{Bench, Report, MEMORY_TARGET_MIB};
use crate::service::{
    cassandra_pid, isolated_env, isolated_kafka, jit_tier_limit, kafka_pid, machine_busy_seconds,
    process_cpu_seconds, redis_pid, Memory, ServiceProcess,
};
use hawkeye_customer_cache::config::KafkaSettings;
use hawkeye_customer_cache::kafka::{ensure_topics, producer};
use hawkeye_customer_cache::profile::event::parse_event;
use hawkeye_customer_cache::profile::{merge, ProfileUpdate, TextField};
use hawkeye_customer_cache::push::pipeline::BATCHES_IN_FLIGHT;

/// Version (`api_last_updated_on`) of event 0; event `i` has `BASE_VERSION_MS + i`.
const BASE_VERSION_MS: i64 = 1_700_000_000_000;
const DAY_MS: i64 = 86_400_000;
/// Deliveries awaited at once while pre-producing.
const PRODUCE_IN_FLIGHT: usize = 10_000;
const QUEUE_TIMEOUT: Duration = Duration::from_secs(60);
/// The service's batch size (`PipelineSettings::default().max_batch`): the store limit writes
/// chunks of the same size, merged the same way.
const CHUNK: usize = 2_000;
/// Events of each store-limit probe of a concurrency at most: enough for a steady rate (about
/// 10 s of inserts). The best concurrency then writes all of the push's events.
const STORE_LIMIT_PROBE_EVENTS: usize = 100_000;
/// Events written into both stores, untimed, before the first timed repetition: enough for
/// Cassandra's JIT to compile its write and read paths.
const WARM_UP_EVENTS: usize = 100_000;
/// `INSERT`s in flight during the warm-up.
const WARM_UP_IN_FLIGHT: usize = 256;
/// The push's two targets against the two-store limit: its rate, and the whole machine's CPU
/// per event.
const TWO_STORE_RATE_TARGET: f64 = 0.85;
const TWO_STORE_CPU_TARGET: f64 = 1.25;
/// A service that acknowledges nothing new for this long has stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);
const METRIC_POLL: Duration = Duration::from_millis(50);
/// Events acknowledged by both stores (observed once per event after the write).
pub(super) const ACKNOWLEDGED: &str = "hawkeye_customer_cache_profile_end_to_end_seconds_count";
/// Devices whose final state is checked in both stores after each service run.
pub(super) const CHECKED_DEVICES: usize = 20;

const CITIES: [(&str, &str, &str); 4] = [
    ("KA", "Karnataka", "Bengaluru"),
    ("MH", "Maharashtra", "Pune"),
    ("TN", "Tamil Nadu", "Chennai"),
    ("DL", "Delhi", "New Delhi"),
];

/// Event `index` of a run whose device ids start with `prefix`: the key and the JSON value.
/// Events go round-robin over `devices` devices, so every device's versions rise over time
/// and a batch holds different devices (the worst case for merging).
pub(super) fn event(prefix: &str, index: usize, devices: usize) -> (String, String) {
    let (device_id, mut fields) = common_fields(prefix, index, devices);
    let uaspec =
        json!({"os": "Android", "browser": "Chrome", "version": (index % 100).to_string()});
    fields.insert("uaspec".into(), uaspec);
    let device = index % devices;
    fields.insert(
        "first_access".into(),
        json!(BASE_VERSION_MS - device as i64),
    );
    (device_id, Value::Object(fields).to_string())
}

/// Event `index` in the shape of issue 31's item 3 (the run side by side with the Kafka
/// Connect sink): 13 plain fields, no maps, `first_access` and `api_last_updated_on` growing
/// with `index`.
fn plain_event(prefix: &str, index: usize, devices: usize) -> (String, String) {
    let (device_id, mut fields) = common_fields(prefix, index, devices);
    let (state_code, state, city) = CITIES[index % CITIES.len()];
    fields.insert("district_custom".into(), json!(city));
    fields.insert("state_custom".into(), json!(state));
    fields.insert("state_code_custom".into(), json!(state_code));
    fields.insert("first_access".into(), json!(BASE_VERSION_MS + index as i64));
    (device_id, Value::Object(fields).to_string())
}

/// The fields of event `index` every shape has: the device, where it is, its token, the
/// event's `producer_id` and its version.
fn common_fields(prefix: &str, index: usize, devices: usize) -> (String, Map<String, Value>) {
    let device = index % devices;
    let device_id = format!("{prefix}-d{device}");
    let (state_code, state, city) = CITIES[index % CITIES.len()];
    let fields = [
        ("device_id", json!(device_id)),
        ("country_code", json!("IN")),
        ("country", json!("India")),
        ("state_code", json!(state_code)),
        ("state", json!(state)),
        ("city", json!(city)),
        (
            "fcm_token",
            json!(format!("fcm-{device}-{}", index / devices)),
        ),
        ("producer_id", json!(producer_id(index))),
        ("api_last_updated_on", json!(BASE_VERSION_MS + index as i64)),
    ];
    let fields = fields
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    (device_id, fields)
}

/// What a run's service meets: updates of devices no one wrote, the same with deletes among
/// them, updates of devices the deployment before it wrote, or smaller updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Workload {
    Updates,
    /// About one event in [`EVENTS_PER_DELETE`] is a tombstone of its device instead, at the
    /// version the update would have had.
    WithDeletes,
    /// Every device is in both stores before the run, as the platform's API and the old job
    /// left it a day before the first event ([`platform_rows`]).
    OnAdoptedRows,
    /// Events of [`plain_event`]'s shape, in which the push left the machine partly idle.
    PlainFields,
}

/// One event in this many is a delete in a [`Workload::WithDeletes`] run (issue 31's 1%).
const EVENTS_PER_DELETE: u64 = 100;

impl Workload {
    /// Whether event `index` is a delete. Spread by a hash, not by `index` alone: events go
    /// round-robin over the devices, so every hundredth index would delete the same devices
    /// every time.
    pub(super) fn deletes(self, index: usize) -> bool {
        let spread = (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        self == Workload::WithDeletes && spread % EVENTS_PER_DELETE == 0
    }
}

/// The `producer_id` of event `index`: what the stores hold once that event is the latest.
pub(super) fn producer_id(index: usize) -> String {
    format!("e{index}")
}

/// The index of the last of `events` events that goes to `device`.
fn last_event_of(device: usize, events: usize, devices: usize) -> Option<usize> {
    (device < events).then(|| device + devices * ((events - 1 - device) / devices))
}

/// The row the platform holds for `device` before an adopted run: its first event's fields,
/// another `producer_id` and an earlier `first_access`.
fn platform_row(prefix: &str, device: usize, devices: usize) -> anyhow::Result<ProfileUpdate> {
    let mut row = update_of(prefix, device, devices)?;
    row.text
        .insert(TextField::ProducerId, "platform".to_string());
    row.first_access = row.first_access.map(|ms| ms - DAY_MS);
    Ok(row)
}

fn update_of(prefix: &str, index: usize, devices: usize) -> anyhow::Result<ProfileUpdate> {
    let (_, value) = event(prefix, index, devices);
    Ok(parse_event(value.as_bytes(), 0)
        .map_err(|rejection| anyhow::anyhow!("generated event rejected: {rejection}"))?
        .update)
}

pub async fn measure(bench: &Bench) -> anyhow::Result<Report> {
    let sizes = &bench.sizes;
    let cassandra_pid = cassandra_pid(bench.cassandra_pid);
    let pids = StackPids {
        cassandra: cassandra_pid,
        redis: redis_port(&bench.stack.redis_url).and_then(redis_pid),
        kafka: kafka_pid(),
    };
    let mut runs = Vec::new();
    let mut deletes_rates = Vec::new();
    let mut adopted_rates = Vec::new();
    let mut plain_runs = Vec::new();
    let mut per_event_rates = Vec::new();
    let mut limits = Vec::new();
    let mut paced_cpu = Vec::new();
    warm_up(bench).await?;
    for rep in 0..sizes.repetitions {
        // The push goes first in even repetitions and the limits in odd ones, so that neither
        // gains from stores the other warmed or loses to compactions the other left.
        let (run, limit) = if rep % 2 == 0 {
            let run = service_run(bench, rep, &pids, Workload::Updates).await?;
            (run, store_limit_of(bench, rep, cassandra_pid).await?)
        } else {
            let limit = store_limit_of(bench, rep, cassandra_pid).await?;
            (
                service_run(bench, rep, &pids, Workload::Updates).await?,
                limit,
            )
        };
        let with_deletes = service_run(bench, rep, &pids, Workload::WithDeletes).await?;
        deletes_rates.push(with_deletes.events_per_s);
        let adopted = service_run(bench, rep, &pids, Workload::OnAdoptedRows).await?;
        adopted_rates.push(adopted.events_per_s);
        plain_runs.push(service_run(bench, rep, &pids, Workload::PlainFields).await?);
        eprintln!(
            "bench: push {rep}: service {:.0} ev/s, two-store limit {:.0} ev/s",
            run.events_per_s, limit.two_stores.events_per_s
        );
        paced_cpu.push(paced_cpu_of(bench, rep, &limit, cassandra_pid, run.events_per_s).await?);
        per_event_rates.push(per_event_baseline(bench, rep).await?);
        runs.push(run);
        limits.push(limit);
    }
    let service_rates: Vec<f64> = runs.iter().map(|run| run.events_per_s).collect();
    let met_rates: Vec<f64> = runs.iter().map(|run| run.met_events_per_s).collect();
    let met = median(&met_rates);
    let limit_rates: Vec<f64> = limits.iter().map(StoreLimit::events_per_s).collect();
    let two_store_rates: Vec<f64> = limits
        .iter()
        .map(|limit| limit.two_stores.events_per_s)
        .collect();
    let service = median(&service_rates);
    let with_deletes = median(&deletes_rates);
    let adopted = median(&adopted_rates);
    let per_event = median(&per_event_rates);
    let limit = median(&limit_rates);
    let two_stores = median(&two_store_rates);
    let peak_mib = runs
        .iter()
        .map(|run| run.memory.peak_mib)
        .fold(0.0, f64::max);
    let what = format!(
        "push: {} events over {} devices",
        thousands(sizes.push_events as f64),
        thousands(sizes.push_devices as f64)
    );
    let rate = |value: f64| format!("{} ev/s", thousands(value));
    let mut rows = vec![
        Row::new(&what, rate(service))
            .baseline(
                format!("per-event job {}", rate(per_event)),
                service / per_event,
            )
            .target(">= 10x", service >= 10.0 * per_event),
        Row::new(&what, rate(service))
            .baseline(
                format!("two-store limit {}", rate(two_stores)),
                service / two_stores,
            )
            .target(
                format!(">= {TWO_STORE_RATE_TARGET:.2}x"),
                service >= TWO_STORE_RATE_TARGET * two_stores,
            ),
        Row::new(&what, rate(service)).baseline(
            format!("slower store alone {}", rate(limit)),
            service / limit,
        ),
        Row::new(
            "push: the same again, every device met (no first read)",
            rate(met),
        )
        .baseline(format!("first meeting {}", rate(service)), met / service),
        Row::new(
            format!("push: the same with 1 event in {EVENTS_PER_DELETE} a delete"),
            rate(with_deletes),
        )
        .baseline(
            format!("no deletes {}", rate(service)),
            with_deletes / service,
        ),
        Row::new(
            "push: the same over rows the platform and the old job wrote",
            rate(adopted),
        )
        .baseline(format!("no rows {}", rate(service)), adopted / service),
        Row::new(
            "push: the same with 13 plain fields, no maps (issue 31, item 3)",
            rate(median_of(&plain_runs, |run| run.events_per_s)),
        )
        .baseline(
            format!("the events above {}", rate(service)),
            median_of(&plain_runs, |run| run.events_per_s) / service,
        ),
        batch_row("the events above", &runs),
        batch_row("13 plain fields", &plain_runs),
        Row::new("memory: peak RSS during push", format!("{peak_mib:.0} MiB")).target(
            format!("< {MEMORY_TARGET_MIB:.0} MiB"),
            peak_mib < MEMORY_TARGET_MIB,
        ),
    ];
    rows.extend(cpu_rows(&runs, &limits, &paced_cpu).into_iter().flatten());
    rows.push(machine_row(&runs));
    rows.push(two_store_cpu_row(&runs, &limits));
    Ok(Report {
        rows,
        notes: vec![
            format!(
                "push: events pre-produced to the service's topic, then the service started; timed \
                 from the first to the last event acknowledged by both stores ({ACKNOWLEDGED}); \
                 {CHECKED_DEVICES} devices checked to hold their last event in Redis and Cassandra. \
                 The topic holds the events twice over: the second pass (newer versions of the same \
                 devices) is timed on from the end of the first; the first pass reads each device's \
                 row once (the first meeting, absent rows here), the second reads nothing. \
                 Medians of {} runs: service {:?}, second pass {:?}, with deletes {:?}, on \
                 adopted rows {:?}, per-event {:?}, two-store limit {:?}, slower store alone {:?} \
                 ev/s. The runs with deletes and on adopted rows follow the push in each \
                 repetition, each on its own topic and devices. With deletes, about one event \
                 in {EVENTS_PER_DELETE} is a tombstone of its device, at the version the update \
                 would have had, spread by a hash of the event's index; each checked device \
                 whose last event deleted it is gone from both stores. On adopted rows, every \
                 device is first written untimed as the platform's plain INSERT of every column \
                 and the old job's hash with a 24-hour TTL, a day before the first event, with \
                 another producer_id and an earlier first_access. The run of 13 plain fields \
                 (device_id, ten text fields, first_access and api_last_updated_on growing with \
                 the index, no maps) is the shape of issue 31's item 3. Before the first \
                 repetition, \
                 {} events are written untimed into both stores and through the \
                 service's write path (first reads included); the push runs first in even \
                 repetitions, the limits first in odd ones",
                sizes.repetitions,
                rounded(&service_rates),
                rounded(&met_rates),
                rounded(&deletes_rates),
                rounded(&adopted_rates),
                rounded(&per_event_rates),
                rounded(&two_store_rates),
                rounded(&limit_rates),
                thousands(sizes.push_events.min(WARM_UP_EVENTS) as f64),
            ),
            format!(
                "push baselines: per-event job = one event at a time, no Kafka: HSET of its fields, \
                 Cassandra INSERT, then UPDATE .. SET first_access IF first_access = null ({} events \
                 per run); slower store alone = the slower of Cassandra (the best of plain prepared \
                 INSERTs of every column of the same rows into a scratch table, {:?} in flight \
                 probed on the first {probe} events, the best then writing all {} when there are \
                 more) and Redis (HSET of the same fields into scratch keys, one pipeline per chunk \
                 of {CHUNK} merged events, the first {probe} events); two-store limit = all the \
                 events as those INSERTs (at the best concurrency) and those HSETs at the same \
                 time from one task, timed until both are done. Runs: {}",
                sizes.per_event_baseline_events,
                INSERTS_IN_FLIGHT,
                thousands(sizes.push_events as f64),
                limits
                    .iter()
                    .map(|limit| format!(
                        "Cassandra {} ev/s ({} in flight), Redis {} ev/s, both {} ev/s",
                        thousands(limit.cassandra.events_per_s),
                        limit.cassandra.in_flight,
                        thousands(limit.redis_events_per_s),
                        thousands(limit.two_stores.events_per_s)
                    ))
                    .collect::<Vec<_>>()
                    .join("; "),
                probe = thousands(sizes.push_events.min(STORE_LIMIT_PROBE_EVENTS) as f64),
            ),
            format!(
                "CPU: utime + stime from /proc/<pid>/stat over the timed part of each run, per \
                 100k events; Cassandra is the JVM whose main class is CassandraDaemon ({}), \
                 Redis the redis-server on REDIS_URL's port ({}), Kafka the JVM of kafka.Kafka \
                 ({}); the whole machine is /proc/stat's busy time (all but idle and iowait) \
                 over all {} cores",
                cassandra_pid.map_or("not found: give --cassandra-pid".to_string(), |pid| format!("pid {pid}")),
                found(pids.redis),
                found(pids.kafka),
                cores(),
            ),
        ]
        .into_iter()
        .chain(cassandra_pid.and_then(c1_only_note))
        .collect(),
    })
}

/// A warning when Cassandra's JVM stops below C2 (the test stack's default, for a faster
/// start): its writes then cost about twice the CPU of a production JVM's, which lowers the
/// store limit and hides the service's own cost behind Cassandra's.
fn c1_only_note(pid: u32) -> Option<String> {
    let tier = jit_tier_limit(pid).filter(|tier| *tier < 4)?;
    Some(format!(
        "WARNING: Cassandra runs with -XX:TieredStopAtLevel={tier} (no C2 JIT), so the store \
         limit is far below a production JVM's; scripts/bench starts the stack with C2 \
         (STACK_CASSANDRA_JVM_OPTS=-XX:TieredStopAtLevel=4) when it starts it"
    ))
}

/// CPU per 100k events of the service and of Cassandra during the push, beside Cassandra's
/// for the plain INSERTs at their best and at the push's rate: the write pattern should cost
/// Cassandra no more than those.
fn cpu_rows(runs: &[ServiceRun], limits: &[StoreLimit], paced: &[Option<f64>]) -> Option<[Row; 2]> {
    let service = median_of(runs, |run| run.service_cpu_per_100k);
    let cassandra = median_if_known(runs.iter().map(|run| run.cassandra_cpu_per_100k))?;
    let inserts = median_if_known(
        limits
            .iter()
            .map(|limit| limit.cassandra.cassandra_cpu_per_100k),
    )?;
    let paced = median_if_known(paced.iter().copied())?;
    let what = "CPU per 100k events during the push: service / Cassandra";
    let value = format!("{service:.1} s / {cassandra:.1} s");
    Some([
        Row::new(what, &value)
            .baseline(
                format!("Cassandra, plain INSERTs {inserts:.1} s"),
                cassandra / inserts,
            )
            .target("<= 1.00x", cassandra <= inserts),
        Row::new(what, &value).baseline(
            format!("INSERTs at the push's rate {paced:.1} s"),
            cassandra / paced,
        ),
    ])
}

/// Where the first pass's batches spent their time: how often one finished and how busy the
/// machine was, beside each store's calls per batch (Redis and Cassandra written at once,
/// after the first reads). Busy well below 1 with the store calls near the batch's whole time
/// in flight (ratio near 1) means the push waits on round trips, not on CPU.
fn batch_row(label: &str, runs: &[ServiceRun]) -> Row {
    let of = |figure: fn(&BatchTimes) -> f64| median_of(runs, |run| figure(&run.batches));
    let interval_ms = median_of(runs, |run| {
        run.batches
            .per_batch_ms(run.batches.events / run.events_per_s.max(1e-3))
    });
    let busy = median_of(runs, |run| run.machine_cpu_per_100k / run.cores_per_100k());
    let per_batch = |seconds: fn(&BatchTimes) -> f64| {
        median_of(runs, |run| run.batches.per_batch_ms(seconds(&run.batches)))
    };
    let (first_reads, redis, cassandra) = (
        per_batch(|batches| batches.first_reads),
        per_batch(|batches| batches.redis_upserts),
        per_batch(|batches| batches.cassandra_upserts),
    );
    // The share of a batch's time in flight (the service's BATCHES_IN_FLIGHT intervals between
    // batches done) that its store calls account for.
    let waited =
        (first_reads + redis.max(cassandra)) / (BATCHES_IN_FLIGHT as f64 * interval_ms).max(1e-3);
    Row::new(
        format!("push batches, {label}: one done every / events each / machine busy"),
        format!(
            "{interval_ms:.0} ms / {:.0} / {busy:.2}",
            of(|batches| batches.events / batches.batches.max(1.0))
        ),
    )
    .baseline(
        format!(
            "per batch: first reads {first_reads:.0} ms, then Redis {redis:.0} ms and \
             Cassandra {cassandra:.0} ms at once, against {BATCHES_IN_FLIGHT} x the \
             interval"
        ),
        waited,
    )
}

/// The rest of the push's CPU (Redis, Kafka) and the whole machine's, beside what all its
/// cores could give over the push's time: a ratio near 1 says the push is bound by the
/// machine, whatever its parts cost.
fn machine_row(runs: &[ServiceRun]) -> Row {
    let of = |cpu: fn(&ServiceRun) -> Option<f64>| {
        median_if_known(runs.iter().map(cpu))
            .map_or("n/a".to_string(), |median| format!("{median:.1} s"))
    };
    let machine = median_of(runs, |run| run.machine_cpu_per_100k);
    let capacity = median_of(runs, ServiceRun::cores_per_100k);
    Row::new(
        "CPU per 100k events during the push: Redis / Kafka / whole machine",
        format!(
            "{} / {} / {machine:.1} s",
            of(|run| run.redis_cpu_per_100k),
            of(|run| run.kafka_cpu_per_100k)
        ),
    )
    .baseline(
        format!("all {} cores for the push's time {capacity:.1} s", cores()),
        machine / capacity,
    )
}

/// The whole machine's CPU per event during the push beside the two-store limit's: what the
/// push spends beyond writing both stores (merging, ordering, checking, Kafka, the service).
fn two_store_cpu_row(runs: &[ServiceRun], limits: &[StoreLimit]) -> Row {
    let push = median_of(runs, |run| run.machine_cpu_per_100k);
    let limit = median_of(limits, |limit| limit.two_stores.machine_cpu_per_100k);
    Row::new(
        "whole machine CPU per 100k events during the push",
        format!("{push:.1} s"),
    )
    .baseline(format!("two-store limit {limit:.1} s"), push / limit)
    .target(
        format!("<= {TWO_STORE_CPU_TARGET:.2}x"),
        push <= TWO_STORE_CPU_TARGET * limit,
    )
}

/// The median of `values` when every one of them is known.
fn median_if_known(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let values: Option<Vec<f64>> = values.into_iter().collect();
    values.map(|values| median(&values))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn found(pid: Option<u32>) -> String {
    pid.map_or("not found".to_string(), |pid| format!("pid {pid}"))
}

/// The port of a `redis://host:port/db` URL (the first, when several are given).
fn redis_port(urls: &str) -> Option<u16> {
    Url::parse(urls.split(',').next()?.trim()).ok()?.port()
}

async fn store_limit_of(
    bench: &Bench,
    rep: usize,
    cassandra_pid: Option<u32>,
) -> anyhow::Result<StoreLimit> {
    let name = bench.name(&format!("store_limit{rep}"));
    let harness = bench.harness(&name).await?;
    let devices = bench.sizes.push_devices;
    let rows = |prefix: &str, events| merged_chunks(prefix, events, devices);
    store_limit::measure(
        &harness,
        bench.sizes.push_events,
        STORE_LIMIT_PROBE_EVENTS,
        rows,
        &name,
        cassandra_pid,
    )
    .await
}

/// Cassandra's CPU for plain `INSERT`s sent at the push's rate (`push_rate`, events per
/// second), on the probe's share of the events.
async fn paced_cpu_of(
    bench: &Bench,
    rep: usize,
    limit: &StoreLimit,
    cassandra_pid: Option<u32>,
    push_rate: f64,
) -> anyhow::Result<Option<f64>> {
    let name = bench.name(&format!("paced{rep}"));
    let harness = bench.harness(&name).await?;
    let events = bench.sizes.push_events.min(STORE_LIMIT_PROBE_EVENTS);
    let chunks = merged_chunks(&name, events, bench.sizes.push_devices)?;
    store_limit::paced_cassandra_cpu(
        &harness,
        events,
        &chunks,
        limit.cassandra.in_flight,
        cassandra_pid,
        push_rate,
    )
    .await
}

/// Writes events untimed into both stores, plainly and through the service's write path
/// (`ProfileStores::upsert`, first reads included), so that the first timed repetition does not
/// meet a cold JIT (a fresh stack's Cassandra spends over twice the CPU per write).
async fn warm_up(bench: &Bench) -> anyhow::Result<()> {
    let name = bench.name("warm_up");
    let harness = bench.harness(&name).await?;
    let events = bench.sizes.push_events.min(WARM_UP_EVENTS);
    let devices = bench.sizes.push_devices;
    let chunks = merged_chunks(&format!("{name}-both"), events, devices)?;
    store_limit::warm_up(&harness, events, &chunks, WARM_UP_IN_FLIGHT).await?;
    for chunk in merged_chunks(&format!("{name}-service"), events, devices)? {
        harness
            .stores
            .upsert(&chunk)
            .await
            .context("warm-up through the service's write path")?;
    }
    eprintln!("bench: push warm-up done ({events} events, both ways)");
    Ok(())
}

/// The events as the service batches them: chunks of [`CHUNK`], merged.
pub(super) fn merged_chunks(
    prefix: &str,
    events: usize,
    devices: usize,
) -> anyhow::Result<Vec<Vec<ProfileUpdate>>> {
    (0..events)
        .step_by(CHUNK)
        .map(|first| {
            let updates = (first..(first + CHUNK).min(events))
                .map(|index| update_of(prefix, index, devices))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(merge::merge(updates))
        })
        .collect()
}

fn rounded(values: &[f64]) -> Vec<u64> {
    values.iter().map(|value| value.round() as u64).collect()
}

/// What one run of the service did.
struct ServiceRun {
    events_per_s: f64,
    /// The rate of the second pass over the same devices, all met in the first: no first read.
    met_events_per_s: f64,
    memory: Memory,
    /// CPU seconds per 100k events over the timed part of the run.
    service_cpu_per_100k: f64,
    cassandra_cpu_per_100k: Option<f64>,
    redis_cpu_per_100k: Option<f64>,
    kafka_cpu_per_100k: Option<f64>,
    /// Every process of the machine, summed over its cores.
    machine_cpu_per_100k: f64,
    /// Where the first pass's batches spent their time.
    batches: BatchTimes,
}

/// The service's batches over the first pass, from its `/metrics`: how many, and the seconds
/// of each store's calls summed (`store_request_seconds`; one upsert call per store per batch).
#[derive(Debug, Clone, Copy, Default)]
struct BatchTimes {
    batches: f64,
    events: f64,
    redis_upserts: f64,
    cassandra_upserts: f64,
    first_reads: f64,
}

const BATCHES: &str = "hawkeye_customer_cache_profile_batch_size_count";
const BATCHED_EVENTS: &str = "hawkeye_customer_cache_profile_batch_size_sum";
const STORE_SECONDS: &str = "hawkeye_customer_cache_store_request_seconds_sum";

impl BatchTimes {
    async fn of(service: &ServiceProcess) -> anyhow::Result<Self> {
        let store = |operation: &str, store: &str| {
            format!("{STORE_SECONDS}{{operation=\"{operation}\",store=\"{store}\"}}")
        };
        Ok(BatchTimes {
            batches: service.metric(BATCHES).await?,
            events: service.metric(BATCHED_EVENTS).await?,
            redis_upserts: service.metric(&store("upsert", "redis")).await?,
            cassandra_upserts: service.metric(&store("upsert", "cassandra")).await?,
            first_reads: service.metric(&store("first_read", "cassandra")).await?,
        })
    }

    fn since(&self, before: &BatchTimes) -> BatchTimes {
        BatchTimes {
            batches: self.batches - before.batches,
            events: self.events - before.events,
            redis_upserts: self.redis_upserts - before.redis_upserts,
            cassandra_upserts: self.cassandra_upserts - before.cassandra_upserts,
            first_reads: self.first_reads - before.first_reads,
        }
    }

    /// Milliseconds per batch of `seconds` summed over the batches.
    fn per_batch_ms(&self, seconds: f64) -> f64 {
        seconds * 1000.0 / self.batches.max(1.0)
    }
}

impl ServiceRun {
    /// What all the machine's cores give per 100k events at this run's rate: its machine CPU
    /// over this is how busy the machine was.
    fn cores_per_100k(&self) -> f64 {
        per_100k(cores() as f64, self.events_per_s.round() as usize)
    }
}

/// The stack's servers, whose CPU the push also costs; `None` when not found.
struct StackPids {
    cassandra: Option<u32>,
    redis: Option<u32>,
    kafka: Option<u32>,
}

/// CPU seconds used so far.
struct CpuSnapshot {
    service: f64,
    cassandra: Option<f64>,
    redis: Option<f64>,
    kafka: Option<f64>,
    machine: f64,
}

impl CpuSnapshot {
    fn now(service: &ServiceProcess, pids: &StackPids) -> anyhow::Result<Self> {
        let of = |pid: Option<u32>| pid.map(process_cpu_seconds).transpose();
        Ok(CpuSnapshot {
            service: service.cpu_seconds()?,
            cassandra: of(pids.cassandra)?,
            redis: of(pids.redis)?,
            kafka: of(pids.kafka)?,
            machine: machine_busy_seconds()?,
        })
    }
}

/// Pre-produces the events twice over (the second pass with newer versions of the same
/// devices), starts a fresh service and times it through the first pass, then the second.
async fn service_run(
    bench: &Bench,
    rep: usize,
    pids: &StackPids,
    workload: Workload,
) -> anyhow::Result<ServiceRun> {
    let sizes = &bench.sizes;
    let name = bench.name(&match workload {
        Workload::Updates => format!("push{rep}"),
        Workload::WithDeletes => format!("push_deletes{rep}"),
        Workload::OnAdoptedRows => format!("push_adopted{rep}"),
        Workload::PlainFields => format!("push_plain{rep}"),
    });
    let env = isolated_env(&bench.stack, &name);
    let kafka = isolated_kafka(&bench.stack, &name);
    produce(
        &kafka,
        &name,
        2 * sizes.push_events,
        sizes.push_devices,
        workload,
    )
    .await?;
    let harness = bench.harness(&name).await?;
    if workload == Workload::OnAdoptedRows {
        let rows = (0..sizes.push_devices)
            .map(|device| platform_row(&name, device, sizes.push_devices))
            .collect::<anyhow::Result<Vec<_>>>()?;
        platform_rows::write(&harness, &rows, BASE_VERSION_MS - DAY_MS).await?;
    }
    harness.settle_compactions().await;
    let service = bench.start_service(&env).await?;
    let services = std::slice::from_ref(&service);
    let (started, first) = wait_for_acknowledged(services, 1).await?;
    let cpu_started = CpuSnapshot::now(&service, pids)?;
    let batches_started = BatchTimes::of(&service).await?;
    let (finished, last) = wait_for_acknowledged(services, sizes.push_events).await?;
    let cpu_finished = CpuSnapshot::now(&service, pids)?;
    let batches = BatchTimes::of(&service).await?.since(&batches_started);
    let timed_events = last.saturating_sub(first).max(1);
    let seconds = (finished - started).as_secs_f64().max(1e-3);
    let events_per_s = if last > first {
        (last - first) as f64 / seconds
    } else {
        // Everything was written before the first look: the run was too short to time.
        last as f64 / seconds
    };
    let (met_finished, met_last) = wait_for_acknowledged(services, 2 * sizes.push_events).await?;
    let met_seconds = (met_finished - finished).as_secs_f64().max(1e-3);
    let met_events_per_s = met_last.saturating_sub(last) as f64 / met_seconds;
    check_last_events(
        &harness,
        &name,
        2 * sizes.push_events,
        sizes.push_devices,
        workload,
    )
    .await?;
    let memory = service.memory()?;
    service.stop().await?;
    let used = |before: Option<f64>, after: Option<f64>| {
        before
            .zip(after)
            .map(|(before, after)| per_100k(after - before, timed_events))
    };
    Ok(ServiceRun {
        events_per_s,
        met_events_per_s,
        memory,
        service_cpu_per_100k: per_100k(cpu_finished.service - cpu_started.service, timed_events),
        cassandra_cpu_per_100k: used(cpu_started.cassandra, cpu_finished.cassandra),
        redis_cpu_per_100k: used(cpu_started.redis, cpu_finished.redis),
        kafka_cpu_per_100k: used(cpu_started.kafka, cpu_finished.kafka),
        machine_cpu_per_100k: per_100k(cpu_finished.machine - cpu_started.machine, timed_events),
        batches,
    })
}

/// The service's (first) profile topic, created when missing.
pub(super) async fn profile_topic(kafka: &KafkaSettings) -> anyhow::Result<&str> {
    let topic = kafka
        .topics
        .profile_updates
        .first()
        .context("no profile topic")?;
    ensure_topics(kafka, &[topic]).await?;
    Ok(topic)
}

/// Produces every event to the service's profile topic and waits for each delivery.
pub(super) async fn produce(
    kafka: &KafkaSettings,
    prefix: &str,
    events: usize,
    devices: usize,
    workload: Workload,
) -> anyhow::Result<()> {
    let topic = profile_topic(kafka).await?;
    let producer = producer(kafka)?;
    futures::stream::iter(0..events)
        .map(|index| {
            let producer = &producer;
            async move {
                let (key, value) = match workload {
                    Workload::PlainFields => plain_event(prefix, index, devices),
                    _ => event(prefix, index, devices),
                };
                let record = FutureRecord::to(topic).key(&key);
                // A tombstone is ordered by its record timestamp: the update's version.
                let record = if workload.deletes(index) {
                    record.timestamp(BASE_VERSION_MS + index as i64)
                } else {
                    record.payload(&value)
                };
                producer
                    .send(record, QUEUE_TIMEOUT)
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| anyhow::anyhow!("cannot produce to {topic}: {e}"))
            }
        })
        .buffer_unordered(PRODUCE_IN_FLIGHT)
        .try_collect()
        .await
}

/// The events the services acknowledged so far, each instance's count.
pub(super) async fn acknowledged(services: &[ServiceProcess]) -> anyhow::Result<Vec<usize>> {
    let mut counts = Vec::with_capacity(services.len());
    for service in services {
        counts.push(service.metric(ACKNOWLEDGED).await? as usize);
    }
    Ok(counts)
}

/// Polls `/metrics` until the services together acknowledged at least `count` events: when,
/// and how many.
pub(super) async fn wait_for_acknowledged(
    services: &[ServiceProcess],
    count: usize,
) -> anyhow::Result<(Instant, usize)> {
    let mut seen = 0;
    let mut progress_at = Instant::now();
    loop {
        let now = acknowledged(services).await?.iter().sum::<usize>();
        let at = Instant::now();
        if now >= count {
            return Ok((at, now));
        }
        if now > seen {
            seen = now;
            progress_at = at;
        } else if at - progress_at > STALL_TIMEOUT {
            anyhow::bail!("the service acknowledged {now} of {count} events, then nothing for {STALL_TIMEOUT:?}");
        }
        tokio::time::sleep(METRIC_POLL).await;
    }
}

/// Devices spread over the run hold their last event in both stores, or are gone from both
/// when it deleted them: counted, not guessed.
pub(super) async fn check_last_events(
    harness: &Harness,
    prefix: &str,
    events: usize,
    devices: usize,
    workload: Workload,
) -> anyhow::Result<()> {
    let written = devices.min(events);
    for device in (0..written).step_by((written / CHECKED_DEVICES).max(1)) {
        let Some(last) = last_event_of(device, events, devices) else {
            continue;
        };
        let device_id = format!("{prefix}-d{device}");
        if workload.deletes(last) {
            if !harness.both_lack(&device_id).await? {
                anyhow::bail!(
                    "{device_id} was deleted by its last event {last}, yet a store holds it"
                );
            }
        } else if !harness.both_show(&device_id, &producer_id(last)).await? {
            anyhow::bail!("{device_id} does not hold its last event {last} in both stores");
        }
    }
    Ok(())
}

/// The replaced job's design, on a subset: one event at a time, HSET then an INSERT and a
/// lightweight transaction for `first_access`. Events per second.
async fn per_event_baseline(bench: &Bench, rep: usize) -> anyhow::Result<f64> {
    let name = bench.name(&format!("per_event{rep}"));
    let harness = bench.harness(&name).await?;
    let session = harness.cassandra.session();
    let keyspace = harness.cassandra.keyspace();
    let insert = session
        .prepare(format!(
            "INSERT INTO {keyspace}.device_profile (device_id, country_code, country, state_code, \
             state, city, fcm_token, producer_id, uaspec, api_last_updated_on, updated_date) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .await
        .context("cannot prepare the baseline INSERT")?;
    let set_first_access = session
        .prepare(format!(
            "UPDATE {keyspace}.device_profile SET first_access = ? WHERE device_id = ? \
             IF first_access = null"
        ))
        .await
        .context("cannot prepare the baseline lightweight transaction")?;
    let events = bench.sizes.per_event_baseline_events;
    let mut redis = harness.redis.connection();
    let started = Instant::now();
    for index in 0..events {
        let update = update_of(&name, index, events)?;
        let text = |field: TextField| update.text.get(&field).cloned();
        let uaspec = update.uaspec.clone().unwrap_or_default();
        let mut fields: Vec<(&str, String)> = update
            .text
            .iter()
            .map(|(field, value)| (field.name(), value.clone()))
            .collect();
        fields.push(("uaspec", serde_json::to_string(&uaspec)?));
        fields.extend(
            update
                .first_access
                .map(|ms| ("firstaccess", ms.to_string())),
        );
        fields.extend(
            update
                .api_last_updated_on
                .map(|ms| ("api_last_updated_on", ms.to_string())),
        );
        redis
            .hset_multiple::<_, _, _, ()>(harness.redis.device_key(&update.device_id), &fields)
            .await?;
        let version = CqlTimestamp(update.version);
        let values = (
            &update.device_id,
            text(TextField::CountryCode),
            text(TextField::Country),
            text(TextField::StateCode),
            text(TextField::State),
            text(TextField::City),
            text(TextField::FcmToken),
            text(TextField::ProducerId),
            uaspec,
            update.api_last_updated_on.map(CqlTimestamp),
            version,
        );
        session.execute_unpaged(&insert, values).await?;
        let first_access = update.first_access.map(CqlTimestamp);
        session
            .execute_unpaged(&set_first_access, (first_access, &update.device_id))
            .await?;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64().max(1e-3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_port_is_read_from_the_first_url() {
        assert_eq!(redis_port("redis://127.0.0.1:16379/0"), Some(16379));
        assert_eq!(
            redis_port("redis://:pw@h:7000/0,redis://h:7001"),
            Some(7000)
        );
        assert_eq!(redis_port("redis://h/0"), None);
    }

    #[test]
    fn events_go_round_robin_with_rising_versions_and_parse() {
        let (key, value) = event("run", 7, 5);
        assert_eq!(key, "run-d2");
        let update = parse_event(value.as_bytes(), 0).unwrap().update;
        assert_eq!(update.device_id, "run-d2");
        assert_eq!(update.version, BASE_VERSION_MS + 7);
        assert_eq!(update.first_access, Some(BASE_VERSION_MS - 2));
        assert_eq!(update.text[&TextField::ProducerId], "e7");
        assert!(update.uaspec.is_some());
    }

    #[test]
    fn the_plain_shape_has_13_plain_fields_and_parses() {
        let (key, value) = plain_event("run", 7, 5);
        assert_eq!(key, "run-d2");
        let fields: Map<String, Value> = serde_json::from_str(&value).unwrap();
        assert_eq!(fields.len(), 13);
        assert!(fields.values().all(|value| !value.is_object()));
        let update = parse_event(value.as_bytes(), 0).unwrap().update;
        assert_eq!(update.first_access, Some(BASE_VERSION_MS + 7));
        assert_eq!(update.text[&TextField::ProducerId], "e7");
    }

    #[test]
    fn about_one_event_in_a_hundred_deletes_and_every_device_may_be_deleted() {
        let deleted: Vec<usize> = (0..100_000)
            .filter(|&index| Workload::WithDeletes.deletes(index))
            .collect();
        assert!((800..1_200).contains(&deleted.len()), "{}", deleted.len());
        // Over 100 devices, the deletes fall on most of them, not on one residue.
        let devices: std::collections::BTreeSet<usize> =
            deleted.iter().map(|index| index % 100).collect();
        assert!(devices.len() > 90, "{}", devices.len());
        assert!((0..100_000).all(|index| !Workload::Updates.deletes(index)));
    }

    #[test]
    fn the_last_event_of_a_device_is_found() {
        // 10 events over 4 devices: device 1 gets events 1, 5 and 9; device 3 gets 3 and 7.
        assert_eq!(last_event_of(1, 10, 4), Some(9));
        assert_eq!(last_event_of(3, 10, 4), Some(7));
        assert_eq!(last_event_of(3, 2, 4), None);
    }
}
