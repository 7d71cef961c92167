//! Measurement 2: end-to-end visibility of single events under light load: produce one event, poll
//! Redis and Cassandra until both show it. The baseline is the floor: the same update written
//! straight to the stores by the harness, polled the same way.

use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio::time::Instant;

use super::probe::Harness;
use super::push::profile_topic;
use super::table::{percentile, Row};
use super::{Bench, Report};
use crate::service::{isolated_env, isolated_kafka};
use hawkeye_customer_cache::cache::client::listen_at_end;
use hawkeye_customer_cache::config::KafkaSettings;
use hawkeye_customer_cache::kafka::client_config;
use hawkeye_customer_cache::profile::event::parse_event;

const POLL: Duration = Duration::from_millis(1);
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between samples: one event at a time, on an otherwise idle service.
const PAUSE: Duration = Duration::from_millis(20);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Issue 14: a lone event shows in both stores within this many direct writes' p99.
const TARGET_P99_RATIO: f64 = 3.0;

/// One event of device `device_id` that the stores show as `producer_id = marker`.
fn event(device_id: &str, marker: &str) -> String {
    json!({
        "device_id": device_id,
        "city": "Bengaluru",
        "producer_id": marker,
        "api_last_updated_on": chrono::Utc::now().timestamp_millis(),
    })
    .to_string()
}

pub async fn measure(bench: &Bench) -> anyhow::Result<Report> {
    let name = bench.name("visibility");
    let env = isolated_env(&bench.stack, &name);
    let kafka = isolated_kafka(&bench.stack, &name);
    let topic = profile_topic(&kafka).await?;
    let service = bench.start_service(&env).await?;
    let harness = bench.harness(&name).await?;
    // An upstream producer that sends at once: its own linger is its choice, not the service's.
    let producer: FutureProducer = client_config(&kafka)
        .set("linger.ms", "0")
        .create()
        .context("cannot create the event producer")?;
    let samples = bench.sizes.visibility_samples;
    let through_service = timed_samples(samples, |sample| {
        let (harness, producer) = (&harness, &producer);
        let device_id = format!("{name}-v{sample}");
        async move {
            let value = event(&device_id, "seen");
            let record = FutureRecord::to(topic).key(&device_id).payload(&value);
            tokio::try_join!(send(producer, record), wait_visible(harness, &device_id))?;
            Ok(())
        }
    })
    .await?;
    service.stop().await?;
    let through_kafka = kafka_alone(&kafka, &producer, &format!("{name}-kafka"), samples).await?;
    let direct = timed_samples(samples, |sample| {
        let harness = &harness;
        let device_id = format!("{name}-w{sample}");
        async move {
            let update = parse_event(event(&device_id, "seen").as_bytes(), 0)
                .map_err(|rejection| anyhow::anyhow!("event rejected: {rejection}"))?
                .update;
            tokio::try_join!(
                async { Ok(harness.stores.upsert(&[update]).await?) },
                wait_visible(harness, &device_id)
            )?;
            Ok(())
        }
    })
    .await?;
    let [p50, p99] = [50.0, 99.0].map(|p| percentile(&through_service, p));
    let [direct_p50, direct_p99] = [50.0, 99.0].map(|p| percentile(&direct, p));
    let [kafka_p50, kafka_p99] = [50.0, 99.0].map(|p| percentile(&through_kafka, p));
    Ok(Report {
        rows: vec![
            Row::new(
                "visibility p50 (produce -> both stores)",
                format!("{p50:.1} ms"),
            )
            .baseline(format!("direct write {direct_p50:.1} ms"), p50 / direct_p50),
            Row::new(
                "visibility p99 (produce -> both stores)",
                format!("{p99:.1} ms"),
            )
            .baseline(format!("direct write {direct_p99:.1} ms"), p99 / direct_p99)
            .target(
                format!("<= {TARGET_P99_RATIO:.0}x"),
                p99 <= TARGET_P99_RATIO * direct_p99,
            ),
            Row::new(
                "visibility p50 / p99, Kafka alone (produce -> consumer)",
                format!("{kafka_p50:.1} / {kafka_p99:.1} ms"),
            ),
        ],
        notes: vec![format!(
            "visibility: {samples} single events {PAUSE:?} apart, each timed from the produce call \
             to both Redis (HGET) and Cassandra (SELECT) showing it, polled every {POLL:?} from the \
             produce call on (every path polls from its write's start), by a \
             producer without linger; the direct write is ProfileStores::upsert of the same \
             update from the harness, polled the same way; Kafka alone is the same producer's \
             events to a topic of their own, timed to a plain consumer receiving each (no \
             group, no store): the part of the service's figure that only the broker and the \
             clients take"
        )],
    })
}

/// Produces `record` and waits for its delivery report.
async fn send(
    producer: &FutureProducer,
    record: FutureRecord<'_, String, String>,
) -> anyhow::Result<()> {
    producer
        .send(record, SEND_TIMEOUT)
        .await
        .map_err(|(e, _)| anyhow::anyhow!("cannot produce the event: {e}"))?;
    Ok(())
}

/// Polls both stores until they show the device's event. Every path starts polling with its
/// write, so that each figure is the write's own latency plus the same polling delay (a path
/// that polled only after its write returned would skip that delay).
async fn wait_visible(harness: &Harness, device_id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + VISIBLE_TIMEOUT;
    while !harness
        .both_show(device_id, "seen")
        .await
        .context("cannot read the stores")?
    {
        if Instant::now() > deadline {
            anyhow::bail!("{device_id} not visible in both stores after {VISIBLE_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Milliseconds from the produce call to a plain consumer receiving each of `samples` events,
/// sent like the service's, to a topic of their own: what Kafka alone adds to visibility.
async fn kafka_alone(
    kafka: &KafkaSettings,
    producer: &FutureProducer,
    topic: &str,
    samples: usize,
) -> anyhow::Result<Vec<f64>> {
    let consumer = listen_at_end(kafka, topic.to_string(), SEND_TIMEOUT)
        .await
        .context("cannot listen to the Kafka-alone topic")?;
    timed_samples(samples, |sample| {
        let consumer = &consumer;
        async move {
            let key = format!("k{sample}");
            let value = event(&key, "seen");
            let record = FutureRecord::to(topic).key(&key).payload(&value);
            let received_one = async {
                tokio::time::timeout(VISIBLE_TIMEOUT, consumer.recv())
                    .await
                    .context("the Kafka-alone event did not arrive")?
                    .context("cannot consume the Kafka-alone event")?;
                Ok(())
            };
            tokio::try_join!(send(producer, record), received_one)?;
            Ok(())
        }
    })
    .await
}

/// Milliseconds each of `samples` runs of `sample` takes, one at a time, [`PAUSE`] apart. An
/// extra sample 0 runs first to warm the connections up and is not counted.
async fn timed_samples<F, Fut>(samples: usize, mut sample: F) -> anyhow::Result<Vec<f64>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut timed = Vec::with_capacity(samples);
    for index in 0..=samples {
        let started = Instant::now();
        sample(index).await?;
        if index > 0 {
            timed.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(PAUSE).await;
    }
    Ok(timed)
}
