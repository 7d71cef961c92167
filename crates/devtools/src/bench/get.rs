//! Measurements 4 and 5: cache get latency and throughput with a large cache, unfiltered and
//! filtered, from 1 and 32 concurrent in-process request/reply clients, and the service's memory as
//! the cache grows. The cache is written into Redis with the service's own publish path (staging
//! hash, lock-checked rename), from a simulated fleet in which every device is kept.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use hawkeye_customer_cache::stores::redis::RedisConnection;
use tokio::time::Instant;

use super::push::{event, profile_topic, ACKNOWLEDGED};
use super::table::{median_of, percentile, thousands, Row};
use super::{Bench, Report, MEMORY_TARGET_MIB};
use crate::service::{isolated_env, isolated_kafka, isolated_stores, ServiceProcess};
use crate::sim::{Fleet, FleetShape};
use hawkeye_customer_cache::cache::client::{GetOptions, Requester};
use hawkeye_customer_cache::cache::keys::CacheKeys;
use hawkeye_customer_cache::cache::publish::{publish, write_staging, Generation, RefreshLock};
use hawkeye_customer_cache::config::KafkaSettings;
use hawkeye_customer_cache::kafka::producer;
use hawkeye_customer_cache::stores::RedisStore;
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;

const CLIENTS: usize = 32;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Share of the cache a filtered request asks for.
const FILTERED_SHARE: f64 = 0.01;
/// Profile events per second the service pushes while its gets are measured: the work a
/// production instance does beside answering (issue 31, item 5).
const BACKGROUND_EVENTS_PER_S: usize = 1_000;
/// Devices the background events go round-robin over.
const BACKGROUND_DEVICES: usize = 10_000;
const BACKGROUND_TICK: Duration = Duration::from_millis(100);
/// How long publishing waits for the lock held by the service's start-up refresh, which fails
/// at once here: its APIs are unreachable.
const LOCK_TIMEOUT: Duration = Duration::from_secs(180);

/// A fleet in which every device is contacted and monitorable: `(serial, entry JSON)`.
fn cache_entries(devices: usize) -> Vec<(String, String)> {
    let fleet = Fleet::generate(&FleetShape {
        seed: 7,
        devices,
        never_contacted_ratio: 0.0,
        no_inventory_ratio: 0.0,
        inactive_ratio: 0.0,
        serial_mismatch_ratio: 0.0,
        unmonitorable_ratio: 0.0,
        multiple_inventories_ratio: 0.0,
    });
    fleet
        .devices
        .iter()
        .filter_map(|device| {
            let client = device.client.as_ref()?;
            Some((
                device.serial.clone(),
                device.cache_entry(client).to_string(),
            ))
        })
        .collect()
}

/// A `last_contact_filter` that about `share` of the entries are strictly after.
fn filter_for(entries: &[(String, String)], share: f64) -> Option<String> {
    let mut contacts: Vec<DateTime<Utc>> = entries
        .iter()
        .filter_map(|(_, json)| {
            let entry: serde_json::Value = serde_json::from_str(json).ok()?;
            let text = entry["last_contact"].as_str()?;
            Some(DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc))
        })
        .collect();
    contacts.sort();
    let kept = ((contacts.len() as f64 * share).round() as usize).max(1);
    let at = contacts.len().checked_sub(kept + 1)?;
    Some(contacts[at].to_rfc3339())
}

pub async fn measure(bench: &Bench) -> anyhow::Result<Report> {
    let name = bench.name("get");
    let mut env = isolated_env(&bench.stack, &name);
    // Its start-up refresh cannot reach the APIs: make it give up (and free the lock) at once.
    env.insert("HAWKEYE_MAX_ATTEMPTS".into(), "1".into());
    let kafka = isolated_kafka(&bench.stack, &name);
    let redis = RedisStore::connect(&isolated_stores(&bench.stack, &name))
        .await?
        .connection();
    let keys = CacheKeys::new(&name);
    let service = bench.start_service(&env).await?;
    // One producer for all clients, as one application's requesters would share it.
    let producer = producer(&kafka)?;
    let mut clients = Vec::with_capacity(CLIENTS);
    for client in 0..CLIENTS {
        let reply_topic = format!("{name}.reply.{client}");
        clients.push(
            Requester::connect(&kafka, producer.clone(), reply_topic, REQUEST_TIMEOUT).await?,
        );
    }
    let (small, large) = bench.sizes.get_devices;
    publish_cache(&redis, &keys, &cache_entries(small)).await?;
    request(&clients[0], None).await?;
    let with_small = service.memory()?.rss_mib;
    let entries = cache_entries(large);
    let filter = filter_for(&entries, FILTERED_SHARE).context("the cache is too small")?;
    publish_cache(&redis, &keys, &entries).await?;
    drop(entries);
    request(&clients[0], None).await?;
    let with_large = service.memory()?.rss_mib;

    let background_stop = CancellationToken::new();
    let background = tokio::spawn(background_pushes(
        kafka.clone(),
        name.clone(),
        background_stop.clone(),
    ));
    let mut rows = Vec::new();
    let sizes = &bench.sizes;
    let cases = [
        (
            "unfiltered",
            None,
            sizes.get_requests_one_client.0,
            sizes.get_requests_each_of_32.0,
        ),
        (
            "filtered 1%",
            Some(filter.as_str()),
            sizes.get_requests_one_client.1,
            sizes.get_requests_each_of_32.1,
        ),
    ];
    for (label, filter, one_client, each_of_32) in cases {
        for (concurrency, per_client) in [(1, one_client), (CLIENTS, each_of_32)] {
            let mut runs = Vec::new();
            for _ in 0..sizes.repetitions {
                let before = ServiceTime::now(&service).await?;
                let mut run = load(&clients[..concurrency], filter, per_client).await?;
                run.in_service_ms = ServiceTime::now(&service).await?.mean_ms_since(&before);
                runs.push(run);
            }
            rows.push(load_row(large, label, concurrency, &runs));
        }
    }
    background_stop.cancel();
    let background_sent = background
        .await
        .context("the background pushes panicked")??;
    let background_pushed = service.metric(ACKNOWLEDGED).await?;
    let peak = service.memory()?.peak_mib;
    service.stop().await?;
    let (small_text, large_text) = (thousands(small as f64), thousands(large as f64));
    rows.extend([
        Row::new(
            format!("memory: RSS with {small_text} cached"),
            format!("{with_small:.0} MiB"),
        ),
        Row::new(
            format!("memory: RSS with {large_text} cached"),
            format!("{with_large:.0} MiB"),
        )
        .baseline(
            format!("{small_text}: {with_small:.0} MiB"),
            with_large / with_small,
        )
        .target(
            format!("< {MEMORY_TARGET_MIB:.0} MiB"),
            with_large < MEMORY_TARGET_MIB,
        ),
        Row::new(
            format!("memory: growth {small_text} -> {large_text} cached"),
            format!("{:.0} MiB", with_large - with_small),
        ),
        Row::new(
            format!("memory: peak RSS during the get load ({large_text} cached)"),
            format!("{peak:.0} MiB"),
        ),
    ]);
    Ok(Report {
        rows,
        notes: vec![format!(
            "get: {CLIENTS} in-process clients (cache::client::Requester, each with its own reply \
             topic, all sending with one producer), requests one after the other per client; latency from sending the request to \
             the whole reply joined (replies over 900 kB come in chunks); the filter keeps about \
             {:.0}% of the entries; RSS is read from /proc after a get has loaded each cache. \
             All the while, the service pushes device profile events in the background \
             ({BACKGROUND_EVENTS_PER_S} ev/s produced over {BACKGROUND_DEVICES} devices: \
             {background_sent} produced, {background_pushed} written to both stores when the \
             loads ended)",
            FILTERED_SHARE * 100.0
        )],
    })
}

/// Produces profile events to the service's topic at [`BACKGROUND_EVENTS_PER_S`] until `stop`;
/// how many.
async fn background_pushes(
    kafka: KafkaSettings,
    prefix: String,
    stop: CancellationToken,
) -> anyhow::Result<usize> {
    let topic = profile_topic(&kafka).await?;
    let producer = producer(&kafka)?;
    let per_tick = BACKGROUND_EVENTS_PER_S * BACKGROUND_TICK.as_millis() as usize / 1_000;
    let mut ticks = tokio::time::interval(BACKGROUND_TICK);
    let mut sent = 0;
    while !stop.is_cancelled() {
        ticks.tick().await;
        let sends = (sent..sent + per_tick).map(|index| {
            let producer = &producer;
            let prefix = prefix.as_str();
            async move {
                let (key, value) = event(prefix, index, BACKGROUND_DEVICES);
                let record = FutureRecord::to(topic).key(&key).payload(&value);
                producer
                    .send(record, REQUEST_TIMEOUT)
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("cannot produce to {topic}: {e}"))
            }
        });
        futures::future::try_join_all(sends).await?;
        sent += per_tick;
    }
    Ok(sent)
}

/// Replaces the cache with `entries` as a refresh does: staging hash, then the lock-checked
/// publish script.
async fn publish_cache(
    redis: &RedisConnection,
    keys: &CacheKeys,
    entries: &[(String, String)],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + LOCK_TIMEOUT;
    let lock = loop {
        if let Some(lock) = RefreshLock::try_acquire(redis.clone(), keys).await? {
            break lock;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the refresh lock stayed taken for {LOCK_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let generation = Generation {
        id: uuid::Uuid::new_v4().to_string(),
        refreshed_at: Utc::now().to_rfc3339(),
        devices: entries.len(),
    };
    let staging = keys.staging(&generation.id);
    write_staging(redis.clone(), &staging, entries).await?;
    publish(&lock, keys, &staging, &generation).await?;
    lock.release().await?;
    Ok(())
}

/// One request that must be answered with 200.
async fn request(client: &Requester, filter: Option<&str>) -> anyhow::Result<()> {
    let options = GetOptions {
        last_contact_filter: filter.map(str::to_string),
        timeout: REQUEST_TIMEOUT,
        reply_topic: None,
    };
    let answer = client.request(&options).await?;
    if answer.status != 200 {
        anyhow::bail!("a cache request was answered {}", answer.status);
    }
    Ok(())
}

/// Latencies of every request (ms) and requests per second of one load.
struct Load {
    latencies_ms: Vec<f64>,
    per_second: f64,
    /// The mean time a request spent in the service, from consumed to its reply delivered
    /// (`get_duration_seconds`), and of it waiting for the deliveries: the rest of the
    /// latency is the request's way to the service and the reply's to the client.
    in_service_ms: (f64, f64),
}

const ANSWERED_SECONDS: &str = "hawkeye_customer_cache_get_duration_seconds_sum{status=\"200\"}";
const ANSWERED: &str = "hawkeye_customer_cache_get_duration_seconds_count{status=\"200\"}";
const DELIVERY_SECONDS: &str = "hawkeye_customer_cache_get_delivery_seconds_sum";

/// The service's `get_duration_seconds` of the requests it answered so far.
struct ServiceTime {
    seconds: f64,
    requests: f64,
    /// Of `seconds`, those spent waiting for Kafka to take the replies
    /// (`get_delivery_seconds`).
    delivery_seconds: f64,
}

impl ServiceTime {
    async fn now(service: &ServiceProcess) -> anyhow::Result<Self> {
        Ok(ServiceTime {
            seconds: service.metric(ANSWERED_SECONDS).await?,
            requests: service.metric(ANSWERED).await?,
            delivery_seconds: service.metric(DELIVERY_SECONDS).await?,
        })
    }

    /// Mean milliseconds per request since `before`: in the service, and of it in delivery.
    fn mean_ms_since(&self, before: &ServiceTime) -> (f64, f64) {
        let requests = (self.requests - before.requests).max(1.0);
        (
            (self.seconds - before.seconds) * 1000.0 / requests,
            (self.delivery_seconds - before.delivery_seconds) * 1000.0 / requests,
        )
    }
}

/// Each client sends `per_client` requests, one after the other, all clients at once.
async fn load(
    clients: &[Requester],
    filter: Option<&str>,
    per_client: usize,
) -> anyhow::Result<Load> {
    let started = Instant::now();
    let latencies = futures::future::try_join_all(clients.iter().map(|client| async move {
        let mut latencies = Vec::with_capacity(per_client);
        for _ in 0..per_client {
            let sent = Instant::now();
            request(client, filter).await?;
            latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        Ok::<_, anyhow::Error>(latencies)
    }))
    .await?;
    let latencies_ms: Vec<f64> = latencies.into_iter().flatten().collect();
    let per_second = latencies_ms.len() as f64 / started.elapsed().as_secs_f64().max(1e-3);
    Ok(Load {
        latencies_ms,
        per_second,
        in_service_ms: (0.0, 0.0),
    })
}

fn load_row(devices: usize, label: &str, concurrency: usize, runs: &[Load]) -> Row {
    let of_runs = |figure: &dyn Fn(&Load) -> f64| median_of(runs, figure);
    let p50 = of_runs(&|run| percentile(&run.latencies_ms, 50.0));
    let p99 = of_runs(&|run| percentile(&run.latencies_ms, 99.0));
    let per_second = of_runs(&|run| run.per_second);
    let mean =
        of_runs(&|run| run.latencies_ms.iter().sum::<f64>() / run.latencies_ms.len().max(1) as f64);
    let in_service = of_runs(&|run| run.in_service_ms.0);
    let delivering = of_runs(&|run| run.in_service_ms.1);
    Row::new(
        format!(
            "get {label}, {} cached, {concurrency} client(s): p50 / p99",
            thousands(devices as f64)
        ),
        format!("{p50:.1} / {p99:.1} ms, {per_second:.1} req/s"),
    )
    .baseline(
        format!(
            "mean {mean:.1} ms, in the service {in_service:.1} ms (delivering {delivering:.1})"
        ),
        in_service / mean.max(1e-3),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_of_the_fleet_is_cached() {
        let entries = cache_entries(50);
        assert_eq!(entries.len(), 50);
        let entry: serde_json::Value = serde_json::from_str(&entries[0].1).unwrap();
        assert_eq!(entry["serial_number"], entries[0].0.as_str());
    }

    #[test]
    fn the_filter_keeps_about_the_share_asked_for() {
        let entries = cache_entries(1_000);
        let filter = filter_for(&entries, 0.01).unwrap();
        let filter = DateTime::parse_from_rfc3339(&filter).unwrap();
        let after = entries
            .iter()
            .filter(|(_, json)| {
                let entry: serde_json::Value = serde_json::from_str(json).unwrap();
                DateTime::parse_from_rfc3339(entry["last_contact"].as_str().unwrap()).unwrap()
                    > filter
            })
            .count();
        assert!((5..=15).contains(&after), "{after}");
        assert_eq!(filter_for(&entries[..1], 0.5), None);
    }
}
