//! What every fault scenario shares: the suite's size switch, control of the stack's servers,
//! a stream of versioned device profile events, and the exact end-of-scenario check that every
//! device is at its latest version in both stores.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use hawkeye_customer_cache::stores::redis::RedisConnection;
use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{produce_json, producer, records_in, TopicReader};
use hawkeye_devtools::testkit::request_reply::partition_ids;
use hawkeye_devtools::testkit::service::{binary, run_to_exit};
use hawkeye_devtools::testkit::{cassandra_session, stack, unique};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use scylla::client::session::Session;
use serde_json::{json, Value};

/// `FAULTS_FULL=1` runs the full sizes of RELIABILITY.md; the default is CI's quick subset.
pub fn full() -> bool {
    std::env::var("FAULTS_FULL").is_ok_and(|value| value == "1")
}

/// `quick` in CI, `full` with `FAULTS_FULL=1`.
pub fn size<T>(quick: T, full_size: T) -> T {
    if full() {
        full_size
    } else {
        quick
    }
}

/// Consumer group settings that notice a `kill -9`ed member in 6 s instead of librdkafka's
/// 45 s (the broker's smallest allowed session), so scenarios do not wait on dead members.
pub fn with_short_sessions(mut env: HashMap<String, String>) -> HashMap<String, String> {
    env.insert(
        "KAFKA_CONFIG".into(),
        "session.timeout.ms=6000,heartbeat.interval.ms=1500".into(),
    );
    env
}

/// Starts the service with `env` (a store with credentials) and publishes one profile event
/// with `city = "Secure"`; returns the running service and the event's device.
pub async fn start_and_push_one(env: &HashMap<String, String>) -> (ServiceProcess, String) {
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(Duration::from_secs(120)).await.unwrap();
    let device = unique("auth");
    produce_json(
        &producer(),
        env,
        &json!({"device_id": device, "city": "Secure"}),
    )
    .await;
    (service, device)
}

/// Runs the service with `env` (credentials a store refuses) to its exit: it must exit 1 with
/// exactly one line naming `setting`, and no line may show any of `secrets`. Returns that line.
pub async fn refused_start_up(
    env: &HashMap<String, String>,
    setting: &str,
    secrets: &[&str],
) -> String {
    let (code, stderr) = run_to_exit(env, Duration::from_secs(60)).await;
    assert_eq!(code, 1, "an unreachable store exits 1: {stderr:?}");
    let errors: Vec<&String> = stderr
        .iter()
        .filter(|line| line.contains(setting))
        .collect();
    assert_eq!(errors.len(), 1, "one line names {setting}: {stderr:#?}");
    for line in &stderr {
        for secret in secrets {
            assert!(!line.contains(secret), "a password leaked: {line}");
        }
    }
    errors[0].clone()
}

/// Runs `scripts/stack ACTION SERVER` with this process's environment, so `STACK_DIR` and the
/// `STACK_*_PORT` variables pick the stack the suite runs against.
pub fn stack_control(action: &str, server: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack");
    let output = std::process::Command::new(script)
        .args([action, server])
        .output()
        .expect("cannot run scripts/stack");
    assert!(
        output.status.success(),
        "scripts/stack {action} {server} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One of the stack's servers, stopped; started again by `restart` or, if the scenario
/// panics first, on drop, so that a failed scenario does not leave the stack broken.
pub struct StoppedServer {
    server: &'static str,
    running: bool,
}

impl StoppedServer {
    pub fn stop(server: &'static str) -> Self {
        println!("fault: stopping {server}");
        stack_control("stop", server);
        StoppedServer {
            server,
            running: false,
        }
    }

    pub fn restart(mut self) {
        println!("fault: starting {} again", self.server);
        stack_control("start", self.server);
        self.running = true;
    }
}

impl Drop for StoppedServer {
    fn drop(&mut self) {
        if !self.running {
            let _ =
                std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack"))
                    .args(["start", self.server])
                    .status();
        }
    }
}

/// Devices that each receive versions `1..=versions`; version `v` of a device sets
/// `api_last_updated_on = BASE + v` and `city = "v{v}"`, so the latest version is visible in
/// both stores.
pub struct VersionedStream {
    pub devices: Vec<String>,
    pub versions: i64,
}

const BASE_VERSION: i64 = 1_700_000_000_000;

impl VersionedStream {
    pub fn new(prefix: &str, devices: usize, versions: i64) -> Self {
        let run = unique(prefix);
        VersionedStream {
            devices: (0..devices).map(|i| format!("{run}-{i}")).collect(),
            versions,
        }
    }

    pub fn len(&self) -> usize {
        self.devices.len() * self.versions as usize
    }

    pub fn event(device: &str, version: i64) -> Value {
        json!({
            "device_id": device,
            "api_last_updated_on": BASE_VERSION + version,
            "city": format!("v{version}"),
            "first_access": BASE_VERSION - version,
        })
    }

    /// Every event, version by version, as (key, value).
    pub fn events(&self) -> Vec<(String, Vec<u8>)> {
        (1..=self.versions)
            .flat_map(|version| self.version_events(version))
            .collect()
    }

    /// The events of `version`, one per device, as (key, value).
    pub fn version_events(&self, version: i64) -> Vec<(String, Vec<u8>)> {
        self.devices
            .iter()
            .map(|device| {
                let value = Self::event(device, version).to_string().into_bytes();
                (device.clone(), value)
            })
            .collect()
    }

    /// The same devices with `version` as their latest: what the stores hold once the
    /// versions up to it are in.
    pub fn up_to(&self, version: i64) -> VersionedStream {
        VersionedStream {
            devices: self.devices.clone(),
            versions: version,
        }
    }
}

/// Produces `events` to `topic`, many in flight at once; panics if one is not delivered.
pub async fn produce_all(producer: &FutureProducer, topic: &str, events: &[(String, Vec<u8>)]) {
    let mut in_flight = FuturesUnordered::new();
    for (key, value) in events {
        if in_flight.len() >= 1000 {
            delivered(in_flight.next().await);
        }
        let record = FutureRecord::to(topic).key(key.as_str()).payload(value);
        in_flight.push(producer.send(record, Duration::from_secs(300)));
    }
    while let Some(result) = in_flight.next().await {
        delivered(Some(result));
    }
}

fn delivered(result: Option<OwnedDeliveryResult>) {
    if let Some(Err((error, _))) = result {
        panic!("an event was not delivered: {error}");
    }
}

/// Produces `events` in `blocks` equal blocks, `pause` apart: a push that lasts a while, so
/// faults can hit it in the middle.
pub async fn produce_paced(
    producer: &FutureProducer,
    topic: &str,
    events: &[(String, Vec<u8>)],
    blocks: usize,
    pause: Duration,
) {
    for block in events.chunks(events.len().div_ceil(blocks).max(1)) {
        produce_all(producer, topic, block).await;
        tokio::time::sleep(pause).await;
    }
}

/// How many devices are where the check wants them, per store.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreCount {
    pub redis_latest: usize,
    pub cassandra_latest: usize,
}

/// `city` of every device in Redis.
async fn redis_cities(
    redis: &mut RedisConnection,
    prefix: &str,
    devices: &[String],
) -> Vec<Option<String>> {
    let mut cities = Vec::with_capacity(devices.len());
    for chunk in devices.chunks(1000) {
        let mut pipe = redis::pipe();
        for device in chunk {
            pipe.hget(format!("{prefix}{device}"), "city");
        }
        let part: Vec<Option<String>> = redis.query_all(pipe).await.expect("HGET pipeline");
        cities.extend(part);
    }
    cities
}

/// `city` of every device in Cassandra.
async fn cassandra_cities(
    session: &Session,
    keyspace: &str,
    devices: &[String],
) -> HashMap<String, Option<String>> {
    let cql = format!("SELECT device_id, city FROM {keyspace}.device_profile WHERE device_id IN ?");
    let statement = session.prepare(cql).await.expect("prepare SELECT");
    let statement = &statement;
    futures::stream::iter(devices.chunks(100))
        .map(|chunk| async move {
            let result = session
                .execute_unpaged(statement, (chunk.to_vec(),))
                .await
                .ok()?;
            let rows = result.into_rows_result().ok()?;
            let rows: Vec<(String, Option<String>)> = rows
                .rows::<(String, Option<String>)>()
                .ok()?
                .collect::<Result<_, _>>()
                .ok()?;
            Some(rows)
        })
        .buffer_unordered(8)
        .filter_map(|rows| async move { rows })
        .map(futures::stream::iter)
        .flatten()
        .collect()
        .await
}

/// Counts the devices of `stream` whose latest version is in each store (Cassandra read
/// through `session`).
pub async fn count_latest(
    env: &HashMap<String, String>,
    stream: &VersionedStream,
    session: &Session,
) -> StoreCount {
    let latest = format!("v{}", stream.versions);
    // The service's Redis: the stack's, or a Redis Cluster of the scenario's own.
    let mut redis = RedisConnection::connect(&env["REDIS_URL"])
        .await
        .expect("cannot connect to the service's Redis");
    let redis_latest = redis_cities(&mut redis, &env["REDIS_DEVICE_KEY_PREFIX"], &stream.devices)
        .await
        .iter()
        .filter(|city| city.as_deref() == Some(latest.as_str()))
        .count();
    let rows = cassandra_cities(session, &env["CASSANDRA_KEYSPACE"], &stream.devices).await;
    let cassandra_latest = stream
        .devices
        .iter()
        .filter(|device| rows.get(*device).and_then(Option::as_deref) == Some(latest.as_str()))
        .count();
    StoreCount {
        redis_latest,
        cassandra_latest,
    }
}

/// Waits until every device of `stream` is at its latest version in both stores (the stack's
/// Cassandra). Catching up on a large push may take long on a small machine, so it fails only
/// when the counts stop moving for `stall`: then it panics with the devices missing or behind.
/// Returns the devices.
pub async fn assert_all_latest(
    env: &HashMap<String, String>,
    stream: &VersionedStream,
    stall: Duration,
) -> usize {
    assert_all_latest_in(env, stream, stall, &cassandra_session().await).await
}

/// [`assert_all_latest`] with Cassandra read through `session` (a cluster of a test's own).
pub async fn assert_all_latest_in(
    env: &HashMap<String, String>,
    stream: &VersionedStream,
    stall: Duration,
    session: &Session,
) -> usize {
    let devices = stream.devices.len();
    let mut last = (0, 0);
    let mut last_progress = Instant::now();
    loop {
        let count = count_latest(env, stream, session).await;
        if count.redis_latest == devices && count.cassandra_latest == devices {
            return devices;
        }
        let now = (count.redis_latest, count.cassandra_latest);
        if now != last {
            (last, last_progress) = (now, Instant::now());
        }
        assert!(
            last_progress.elapsed() < stall,
            "no progress for {stall:?}: of {devices} devices only {} are at the latest version \
             in Redis and {} in Cassandra: {} lost",
            count.redis_latest,
            count.cassandra_latest,
            devices - count.redis_latest.min(count.cassandra_latest)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn kafka_client(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", stack().kafka_brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("Kafka client")
}

/// Records in `topic` (nothing is deleted: the sum of its partitions' high watermarks).
pub async fn topic_records(topic: &str) -> i64 {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || records_in(&topic))
        .await
        .expect("watermarks task")
}

/// The offsets `group` committed on `topic`, summed over partitions (0 where none).
pub async fn committed_records(group: &str, topic: &str) -> i64 {
    let (group, topic) = (group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let client = kafka_client(&group);
        let mut list = TopicPartitionList::new();
        for partition in partition_ids(&client, &topic, Duration::from_secs(10)) {
            list.add_partition(&topic, partition);
        }
        let committed = client
            .committed_offsets(list, Duration::from_secs(10))
            .expect("committed offsets");
        committed
            .elements()
            .iter()
            .map(|element| match element.offset() {
                Offset::Offset(offset) => offset,
                _ => 0,
            })
            .sum()
    })
    .await
    .expect("committed offsets task")
}

/// One row of RELIABILITY.md, printed so that a run's figures can be copied from its output
/// (`cargo test --test faults -- --ignored --nocapture`).
pub struct Figures<'a> {
    pub scenario: &'a str,
    pub produced: usize,
    pub stored: usize,
    pub dead_lettered: usize,
    pub lost: usize,
    pub faults: usize,
    pub started: Instant,
}

impl Figures<'_> {
    pub fn print(&self) {
        println!(
            "FIGURES | {} | {} | {} | {} | {} | {} | {:.0} s |",
            self.scenario,
            self.produced,
            self.stored,
            self.dead_lettered,
            self.lost,
            self.faults,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// Every letter of the dead-letter topic, each with what `bad` says of its key; panics when a
/// letter's key is not one of `bad` (a good event was dead-lettered) or letters are missing.
pub async fn dead_letters_of<'a, T>(
    env: &HashMap<String, String>,
    bad: &'a HashMap<String, T>,
) -> Vec<(String, &'a T, OwnedMessage)> {
    let letters = TopicReader::from_beginning(&env["TOPIC_PROFILE_DLQ"])
        .take(bad.len(), Duration::from_secs(120))
        .await;
    letters
        .into_iter()
        .map(|letter| {
            let key = String::from_utf8_lossy(letter.key().expect("the original key")).into_owned();
            let expected = bad
                .get(&key)
                .unwrap_or_else(|| panic!("a good event was dead-lettered: {key}"));
            (key, expected, letter)
        })
        .collect()
}
