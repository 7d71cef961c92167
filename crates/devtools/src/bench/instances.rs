//! The push with 1 and with 2 instances of the service (separate processes of the binary, one
//! `KAFKA_GROUP_ID`) on a topic of [`PARTITIONS`] partitions: how far a second instance moves
//! the throughput when the stores, on the same machine, are what bounds one.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureRecord;
use tokio::time::Instant;

use super::push::{
    acknowledged, check_last_events, event, produce, wait_for_acknowledged, Workload,
};
use super::table::{median, thousands, Row};
use super::{Bench, Report};
use crate::service::{free_port, isolated_env, isolated_kafka, ServiceProcess};
use hawkeye_customer_cache::config::KafkaSettings;
use hawkeye_customer_cache::kafka::{client_config, producer};

/// Partitions of the profile topic: enough for either instance count to get an equal share.
const PARTITIONS: i32 = 6;
/// Instance counts measured, in this order within each repetition.
const INSTANCES: [usize; 2] = [1, 2];
/// How long the devices checked after a run may take to show their last event in both stores
/// once the services counted every event (a device's last event may be the last written).
const CHECK_WAIT: Duration = Duration::from_secs(30);
/// How long the group may take to give every instance its partitions.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);

pub async fn measure(bench: &Bench) -> anyhow::Result<Report> {
    let sizes = &bench.sizes;
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut shares = Vec::new();
    for rep in 0..sizes.repetitions {
        for (slot, &count) in INSTANCES.iter().enumerate() {
            let run = run(bench, rep, count).await?;
            eprintln!(
                "bench: instances {rep}: {count} instance(s) {:.0} ev/s, acknowledged {:?}",
                run.events_per_s, run.acknowledged
            );
            rates[slot].push(run.events_per_s);
            if count > 1 {
                shares.push(run.acknowledged);
            }
        }
    }
    let (one, two) = (median(&rates[0]), median(&rates[1]));
    let what = |count: usize| {
        format!(
            "push, {count} instance(s), {PARTITIONS} partitions: {} events over {} devices",
            thousands(sizes.push_events as f64),
            thousands(sizes.push_devices as f64)
        )
    };
    let rate = |value: f64| format!("{} ev/s", thousands(value));
    let rounded = |values: &[f64]| values.iter().map(|v| v.round() as u64).collect::<Vec<_>>();
    Ok(Report {
        rows: vec![
            Row::new(what(1), rate(one)),
            Row::new(what(2), rate(two)).baseline(format!("1 instance {}", rate(one)), two / one),
        ],
        notes: vec![format!(
            "instances: 1 or 2 processes of the service binary started at once with the same \
             KAFKA_GROUP_ID (each its own HTTP port) on a topic of {PARTITIONS} partitions; once \
             the group settled (a warm-up event per partition, every instance reporting the lag \
             of partitions of its own), the events are produced and timed from the first \
             to the last acknowledged by both stores (the sum of the instances' {}), the \
             producer running meanwhile on the same cores; {} devices then checked to hold their last event in both stores. Kafka, Redis, \
             Cassandra and the instances share the machine's cores, so a second instance adds \
             no store capacity. Medians of {} runs, interleaved: 1 instance {:?}, 2 instances \
             {:?} ev/s; events acknowledged by each of the 2 instances: {:?}",
            super::push::ACKNOWLEDGED,
            super::push::CHECKED_DEVICES,
            sizes.repetitions,
            rounded(&rates[0]),
            rounded(&rates[1]),
            shares,
        )],
    })
}

/// What one run did: the throughput and each instance's acknowledged events.
struct InstancesRun {
    events_per_s: f64,
    acknowledged: Vec<usize>,
}

async fn run(bench: &Bench, rep: usize, count: usize) -> anyhow::Result<InstancesRun> {
    let (events, devices) = (bench.sizes.push_events, bench.sizes.push_devices);
    let name = bench.name(&format!("instances{count}_{rep}"));
    let kafka = isolated_kafka(&bench.stack, &name);
    create_profile_topic(&kafka).await?;
    let env = isolated_env(&bench.stack, &name);
    let envs: Vec<_> = (0..count)
        .map(|_| {
            let mut env = env.clone();
            env.insert("HTTP_ADDR".into(), format!("127.0.0.1:{}", free_port()));
            env
        })
        .collect();
    let services =
        futures::future::try_join_all(envs.iter().map(|env| bench.start_service(env))).await?;
    settle(&kafka, &services).await?;
    // Timed like the push: from the first to the last of the events acknowledged.
    produce(&kafka, &name, events, devices, Workload::Updates).await?;
    let warm_up = PARTITIONS as usize;
    let (started, first) = wait_for_acknowledged(&services, warm_up + 1).await?;
    let (finished, last) = wait_for_acknowledged(&services, warm_up + events).await?;
    let seconds = (finished - started).as_secs_f64().max(1e-3);
    let events_per_s = if last > first {
        (last - first) as f64 / seconds
    } else {
        // Everything was written before the first look: the run was too short to time.
        (last - warm_up) as f64 / seconds
    };
    let harness = bench.harness(&name).await?;
    let deadline = Instant::now() + CHECK_WAIT;
    while let Err(e) = check_last_events(&harness, &name, events, devices, Workload::Updates).await
    {
        if Instant::now() > deadline {
            return Err(e.context(format!("{count} instance(s) counted every event")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acknowledged = acknowledged(&services).await?;
    for service in services {
        service.stop().await?;
    }
    Ok(InstancesRun {
        events_per_s,
        acknowledged,
    })
}

/// Waits until the profiles group has given every instance its share of the partitions: one
/// warm-up event is produced to each partition, and every instance must report the lag of
/// partitions it was assigned (librdkafka's statistics, every 5 s, once a commit made the lag
/// known), all of them covered. The measured events then find a
/// settled group, so the figure is the throughput of `count` instances, not a rebalance.
async fn settle(kafka: &KafkaSettings, services: &[ServiceProcess]) -> anyhow::Result<()> {
    let topic = kafka
        .topics
        .profile_updates
        .first()
        .context("no profile topic")?;
    let producer = producer(kafka)?;
    for partition in 0..PARTITIONS {
        let (key, value) = event(&format!("{topic}.warmup"), partition as usize, 1);
        let record = FutureRecord::to(topic)
            .partition(partition)
            .key(&key)
            .payload(&value);
        producer
            .send(record, SETTLE_TIMEOUT)
            .await
            .map_err(|(e, _)| anyhow::anyhow!("cannot produce to {topic}: {e}"))?;
    }
    let lag_of = format!(
        "hawkeye_customer_cache_consumer_lag{{group=\"{}.profiles\",partition=\"",
        kafka.group_id
    );
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut assigned = Vec::new();
        for service in services {
            let text = service.metrics().await?;
            assigned.push(
                text.lines()
                    .filter(|line| line.starts_with(&lag_of))
                    .count(),
            );
        }
        // An instance may keep reporting partitions a rebalance took from it, so the sign of a
        // settled group is that every instance reports some.
        let covered = assigned.iter().sum::<usize>() >= PARTITIONS as usize;
        if covered && assigned.iter().all(|&partitions| partitions > 0) {
            eprintln!("bench: instances: partitions per instance {assigned:?}");
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the group did not settle within {SETTLE_TIMEOUT:?}: partitions per instance {assigned:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Creates the service's profile topic with [`PARTITIONS`] partitions before the service's own
/// start-up creates it with the brokers' default.
async fn create_profile_topic(kafka: &KafkaSettings) -> anyhow::Result<()> {
    let topic = kafka
        .topics
        .profile_updates
        .first()
        .context("no profile topic")?;
    let admin: AdminClient<DefaultClientContext> = client_config(kafka)
        .create()
        .context("cannot create a Kafka admin client")?;
    let results = admin
        .create_topics(
            &[NewTopic::new(
                topic,
                PARTITIONS,
                TopicReplication::Fixed(-1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("cannot create the profile topic")?;
    for result in results {
        result.map_err(|(name, code)| anyhow::anyhow!("cannot create topic {name}: {code}"))?;
    }
    Ok(())
}
