//! Measurement 1: device profile push throughput, against the per-event design it replaces and
//! against the raw ceiling of the stores (no Kafka), interleaved repetition by repetition.

use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use rdkafka::producer::FutureRecord;
use redis::AsyncCommands;
use scylla::value::CqlTimestamp;
use serde_json::json;
use tokio::time::Instant;

use super::probe::Harness;
use super::table::{median, thousands, Row};
use super::{Bench, Report, MEMORY_TARGET_MIB};
use crate::service::{isolated_env, isolated_kafka, Memory, ServiceChild};
use hawkeye_customer_cache::config::KafkaSettings;
use hawkeye_customer_cache::kafka::{ensure_topics, producer};
use hawkeye_customer_cache::profile::event::parse_event;
use hawkeye_customer_cache::profile::{merge, ProfileUpdate, TextField};

/// Version (`api_last_updated_on`) of event 0; event `i` has `BASE_VERSION_MS + i`.
const BASE_VERSION_MS: i64 = 1_700_000_000_000;
/// Deliveries awaited at once while pre-producing.
const PRODUCE_IN_FLIGHT: usize = 10_000;
const QUEUE_TIMEOUT: Duration = Duration::from_secs(60);
/// The service's batch size (`PipelineSettings::default().max_batch`): the ceiling writes
/// chunks of the same size, merged the same way.
const CHUNK: usize = 2_000;
/// Chunks in flight tried for the ceiling in full mode; the best is used.
const CEILING_CONCURRENCIES: [usize; 3] = [1, 4, 16];
/// The ceiling's concurrency in quick mode.
const QUICK_CEILING_CONCURRENCY: usize = 4;
/// A service that acknowledges nothing new for this long has stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);
const METRIC_POLL: Duration = Duration::from_millis(50);
/// Events acknowledged by both stores (observed once per event after the write).
const ACKNOWLEDGED: &str = "hawkeye_customer_cache_profile_end_to_end_seconds_count";
/// Devices whose final state is checked in both stores after each service run.
const CHECKED_DEVICES: usize = 20;

const CITIES: [(&str, &str, &str); 4] = [
    ("KA", "Karnataka", "Bengaluru"),
    ("MH", "Maharashtra", "Pune"),
    ("TN", "Tamil Nadu", "Chennai"),
    ("DL", "Delhi", "New Delhi"),
];

/// Event `index` of a run whose device ids start with `prefix`: the key and the JSON value.
/// Events go round-robin over `devices` devices, so every device's versions rise over time
/// and a batch holds different devices (the worst case for merging).
fn event(prefix: &str, index: usize, devices: usize) -> (String, String) {
    let device = index % devices;
    let device_id = format!("{prefix}-d{device}");
    let (state_code, state, city) = CITIES[index % CITIES.len()];
    let value = json!({
        "device_id": device_id,
        "country_code": "IN",
        "country": "India",
        "state_code": state_code,
        "state": state,
        "city": city,
        "fcm_token": format!("fcm-{device}-{}", index / devices),
        "producer_id": producer_id(index),
        "uaspec": {"os": "Android", "browser": "Chrome", "version": (index % 100).to_string()},
        "first_access": BASE_VERSION_MS - device as i64,
        "api_last_updated_on": BASE_VERSION_MS + index as i64,
    });
    (device_id, value.to_string())
}

/// The `producer_id` of event `index`: what the stores hold once that event is the latest.
fn producer_id(index: usize) -> String {
    format!("e{index}")
}

/// The index of the last of `events` events that goes to `device`.
fn last_event_of(device: usize, events: usize, devices: usize) -> Option<usize> {
    (device < events).then(|| device + devices * ((events - 1 - device) / devices))
}

fn update_of(prefix: &str, index: usize, devices: usize) -> anyhow::Result<ProfileUpdate> {
    let (_, value) = event(prefix, index, devices);
    Ok(parse_event(value.as_bytes(), 0)
        .map_err(|rejection| anyhow::anyhow!("generated event rejected: {rejection}"))?
        .update)
}

pub async fn measure(bench: &Bench) -> anyhow::Result<Report> {
    let sizes = &bench.sizes;
    let ceiling_concurrency = best_ceiling_concurrency(bench).await?;
    let mut service_rates = Vec::new();
    let mut per_event_rates = Vec::new();
    let mut ceiling_rates = Vec::new();
    let mut peak = Memory::default();
    for rep in 0..sizes.repetitions {
        let run = service_run(bench, rep).await?;
        eprintln!("bench: push {rep}: service {:.0} ev/s", run.events_per_s);
        service_rates.push(run.events_per_s);
        peak.peak_mib = peak.peak_mib.max(run.memory.peak_mib);
        per_event_rates.push(per_event_baseline(bench, rep).await?);
        let ceiling = bench.harness(&bench.name(&format!("ceiling{rep}"))).await?;
        let prefix = bench.name(&format!("ceiling{rep}"));
        ceiling_rates.push(
            ceiling_rate(
                &ceiling,
                &prefix,
                sizes.push_events,
                sizes.push_devices,
                ceiling_concurrency,
            )
            .await?,
        );
    }
    let service = median(&service_rates);
    let per_event = median(&per_event_rates);
    let ceiling = median(&ceiling_rates);
    let what = format!(
        "push: {} events over {} devices",
        thousands(sizes.push_events as f64),
        thousands(sizes.push_devices as f64)
    );
    let rate = |value: f64| format!("{} ev/s", thousands(value));
    Ok(Report {
        rows: vec![
            Row::new(&what, rate(service))
                .baseline(format!("per-event job {}", rate(per_event)), service / per_event)
                .target(">= 10x", service >= 10.0 * per_event),
            Row::new(&what, rate(service))
                .baseline(format!("raw ceiling {}", rate(ceiling)), service / ceiling)
                .target(">= 0.70x", service >= 0.7 * ceiling),
            Row::new("memory: peak RSS during push", format!("{:.0} MiB", peak.peak_mib)).target(
                format!("< {MEMORY_TARGET_MIB:.0} MiB"),
                peak.peak_mib < MEMORY_TARGET_MIB,
            ),
        ],
        notes: vec![
            format!(
                "push: events pre-produced to the service's topic, then the service started; timed \
                 from the first to the last event acknowledged by both stores ({ACKNOWLEDGED}); \
                 {CHECKED_DEVICES} devices checked to hold their last event in Redis and Cassandra. \
                 Medians of {} runs: service {:?}, per-event {:?}, ceiling {:?} ev/s",
                sizes.repetitions,
                rounded(&service_rates),
                rounded(&per_event_rates),
                rounded(&ceiling_rates),
            ),
            format!(
                "push baselines: per-event job = one event at a time, no Kafka: HSET of its fields, \
                 Cassandra INSERT, then UPDATE .. SET first_access IF first_access = null ({} events \
                 per run); raw ceiling = the service's own ProfileStores::upsert from the harness, no \
                 Kafka, chunks of {CHUNK} merged events, {ceiling_concurrency} chunks in flight",
                sizes.per_event_baseline_events
            ),
        ],
    })
}

fn rounded(values: &[f64]) -> Vec<u64> {
    values.iter().map(|value| value.round() as u64).collect()
}

/// What one run of the service did.
struct ServiceRun {
    events_per_s: f64,
    memory: Memory,
}

/// Pre-produces the events, starts a fresh service and times it through them.
async fn service_run(bench: &Bench, rep: usize) -> anyhow::Result<ServiceRun> {
    let sizes = &bench.sizes;
    let name = bench.name(&format!("push{rep}"));
    let env = isolated_env(&bench.stack, &name);
    let kafka = isolated_kafka(&bench.stack, &name);
    produce(&kafka, &name, sizes.push_events, sizes.push_devices).await?;
    let service = ServiceChild::start(&bench.binary, &env).await?;
    let (started, first) = wait_for_acknowledged(&service, 1).await?;
    let (finished, last) = wait_for_acknowledged(&service, sizes.push_events).await?;
    let seconds = (finished - started).as_secs_f64().max(1e-3);
    let events_per_s = if last > first {
        (last - first) as f64 / seconds
    } else {
        // Everything was written before the first look: the run was too short to time.
        last as f64 / seconds
    };
    check_last_events(&bench.harness(&name).await?, &name, sizes).await?;
    let memory = service.memory()?;
    service.stop().await?;
    Ok(ServiceRun {
        events_per_s,
        memory,
    })
}

/// Produces every event to the service's profile topic and waits for each delivery.
async fn produce(
    kafka: &KafkaSettings,
    prefix: &str,
    events: usize,
    devices: usize,
) -> anyhow::Result<()> {
    let topic = kafka
        .topics
        .profile_updates
        .first()
        .context("no profile topic")?;
    ensure_topics(kafka, &[topic]).await?;
    let producer = producer(kafka)?;
    futures::stream::iter(0..events)
        .map(|index| {
            let producer = &producer;
            async move {
                let (key, value) = event(prefix, index, devices);
                let record = FutureRecord::to(topic).key(&key).payload(&value);
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

/// Polls `/metrics` until at least `count` events are acknowledged: when, and how many.
async fn wait_for_acknowledged(
    service: &ServiceChild,
    count: usize,
) -> anyhow::Result<(Instant, usize)> {
    let mut seen = 0;
    let mut progress_at = Instant::now();
    loop {
        let now = service.metric(ACKNOWLEDGED).await? as usize;
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

/// Devices spread over the run hold their last event in both stores: counted, not guessed.
async fn check_last_events(
    harness: &Harness,
    prefix: &str,
    sizes: &super::Sizes,
) -> anyhow::Result<()> {
    let devices = sizes.push_devices.min(sizes.push_events);
    for device in (0..devices).step_by((devices / CHECKED_DEVICES).max(1)) {
        let Some(last) = last_event_of(device, sizes.push_events, sizes.push_devices) else {
            continue;
        };
        let device_id = format!("{prefix}-d{device}");
        if !harness.both_show(&device_id, &producer_id(last)).await? {
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

/// The stores written straight from the harness with the service's write path, `concurrency`
/// chunks of merged events at a time. Events per second.
async fn ceiling_rate(
    harness: &Harness,
    prefix: &str,
    events: usize,
    devices: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    futures::stream::iter((0..events).step_by(CHUNK))
        .map(|first| async move {
            let updates = (first..(first + CHUNK).min(events))
                .map(|index| update_of(prefix, index, devices))
                .collect::<anyhow::Result<Vec<_>>>()?;
            harness.stores.upsert(&merge::merge(updates)).await?;
            Ok::<_, anyhow::Error>(())
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    Ok(events as f64 / started.elapsed().as_secs_f64().max(1e-3))
}

/// The ceiling's best number of chunks in flight, tried on a tenth of the events (full mode).
async fn best_ceiling_concurrency(bench: &Bench) -> anyhow::Result<usize> {
    if bench.sizes.repetitions == 1 {
        return Ok(QUICK_CEILING_CONCURRENCY);
    }
    let name = bench.name("ceiling_probe");
    let harness = bench.harness(&name).await?;
    let events = (bench.sizes.push_events / 10).max(CHUNK);
    let mut best = (QUICK_CEILING_CONCURRENCY, 0.0);
    for concurrency in CEILING_CONCURRENCIES {
        let prefix = format!("{name}-c{concurrency}");
        let rate = ceiling_rate(
            &harness,
            &prefix,
            events,
            bench.sizes.push_devices,
            concurrency,
        )
        .await?;
        eprintln!("bench: ceiling with {concurrency} chunks in flight: {rate:.0} ev/s");
        if rate > best.1 {
            best = (concurrency, rate);
        }
    }
    Ok(best.0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_last_event_of_a_device_is_found() {
        // 10 events over 4 devices: device 1 gets events 1, 5 and 9; device 3 gets 3 and 7.
        assert_eq!(last_event_of(1, 10, 4), Some(9));
        assert_eq!(last_event_of(3, 10, 4), Some(7));
        assert_eq!(last_event_of(3, 2, 4), None);
    }
}
