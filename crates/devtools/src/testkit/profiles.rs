//! Device profile push helpers: produce events, read the device's Redis hash and Cassandra
//! row, read the dead-letter topic, wait for a condition with a deadline.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use hawkeye_customer_cache::stores::redis::versions_key;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::AsyncCommands;
use scylla::client::session::Session;
use serde_json::Value;
use tokio::time::Instant;

use super::cache_fixture::redis_connection;
use super::request_reply::partition_ids;
use super::{stack, unique};

/// A producer like a registry's: compressed, so values just over 1 MiB pass the broker.
pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", stack().kafka_brokers)
        .set("compression.type", "lz4")
        .set("message.max.bytes", "5000000")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces one event to the service's `TOPIC_PROFILE_UPDATES`.
pub async fn produce(
    producer: &FutureProducer,
    env: &HashMap<String, String>,
    key: Option<&str>,
    value: &[u8],
) {
    let topic = &env["TOPIC_PROFILE_UPDATES"];
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(value);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .expect("cannot produce a profile event");
}

/// Produces a JSON event keyed by its device_id.
pub async fn produce_json(producer: &FutureProducer, env: &HashMap<String, String>, event: &Value) {
    let key = event["device_id"].as_str();
    produce(producer, env, key, event.to_string().as_bytes()).await;
}

/// The device's Redis hash (empty when missing).
pub async fn redis_hash(env: &HashMap<String, String>, device_id: &str) -> HashMap<String, String> {
    let key = format!("{}{device_id}", env["REDIS_DEVICE_KEY_PREFIX"]);
    redis_connection()
        .await
        .hgetall(key)
        .await
        .expect("HGETALL")
}

/// The device's `device_profile` row as `SELECT JSON` renders it, or `None`.
pub async fn cassandra_row(
    session: &Session,
    env: &HashMap<String, String>,
    device_id: &str,
) -> Option<Value> {
    let cql = format!(
        "SELECT JSON * FROM {}.device_profile WHERE device_id = ?",
        env["CASSANDRA_KEYSPACE"]
    );
    let result = session
        .query_unpaged(cql, (device_id,))
        .await
        .expect("SELECT JSON");
    let row = result
        .into_rows_result()
        .expect("rows")
        .maybe_first_row::<(String,)>()
        .expect("one JSON column");
    row.map(|(json,)| serde_json::from_str(&json).expect("SELECT JSON is JSON"))
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to `timeout` (each store) until `device` shows `city` in Redis and in Cassandra.
pub async fn wait_for_city(
    env: &HashMap<String, String>,
    session: &Session,
    device: &str,
    city: &str,
    timeout: Duration,
) {
    eventually(timeout, &format!("{device} = {city} in Redis"), || async {
        (redis_hash(env, device)
            .await
            .get("city")
            .map(String::as_str)
            == Some(city))
        .then_some(())
    })
    .await;
    eventually(
        timeout,
        &format!("{device} = {city} in Cassandra"),
        || async { (cassandra_row(session, env, device).await?["city"] == city).then_some(()) },
    )
    .await;
}

/// Reads a topic from the beginning (its own group).
pub struct TopicReader {
    consumer: StreamConsumer,
}

impl TopicReader {
    pub fn from_beginning(topic: &str) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", stack().kafka_brokers)
            .set("group.id", unique("reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        TopicReader { consumer }
    }

    /// The next `count` messages, or a panic after `timeout`.
    pub async fn take(&self, count: usize, timeout: Duration) -> Vec<OwnedMessage> {
        let deadline = Instant::now() + timeout;
        let mut messages = Vec::new();
        while messages.len() < count {
            let message = tokio::time::timeout_at(deadline, self.consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {count} messages", messages.len()))
                .expect("reading the topic");
            messages.push(message.detach());
        }
        messages
    }
}

/// A header's value as text.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// The device's versions companion hash (empty when missing).
pub async fn redis_versions(
    env: &HashMap<String, String>,
    device_id: &str,
) -> HashMap<String, String> {
    let key = versions_key(&format!("{}{device_id}", env["REDIS_DEVICE_KEY_PREFIX"]));
    redis_connection()
        .await
        .hgetall(key)
        .await
        .expect("HGETALL")
}

/// Deletes the device's hash and versions hash: only these keys, the Redis is shared.
pub async fn delete_redis_device(env: &HashMap<String, String>, device_id: &str) {
    let key = format!("{}{device_id}", env["REDIS_DEVICE_KEY_PREFIX"]);
    let _: () = redis_connection()
        .await
        .del(&[versions_key(&key), key])
        .await
        .expect("DEL");
}

/// The isolated environment with a keyspace of the test's own, for tests that read or write
/// the whole `device_profile` table; drop it with [`drop_keyspace`].
pub fn env_with_own_keyspace() -> HashMap<String, String> {
    let mut env = super::service::isolated_env();
    env.insert("CASSANDRA_KEYSPACE".into(), unique("hcc_ops"));
    env
}

pub async fn drop_keyspace(session: &Session, env: &HashMap<String, String>) {
    let cql = format!("DROP KEYSPACE IF EXISTS {}", env["CASSANDRA_KEYSPACE"]);
    session.query_unpaged(cql, ()).await.expect("DROP KEYSPACE");
}

/// How many records `topic` holds (the sum of its partitions' end offsets).
pub fn records_in(topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack().kafka_brokers)
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(10);
    partition_ids(&consumer, topic, timeout)
        .into_iter()
        .map(|partition| {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .expect("watermarks");
            high - low
        })
        .sum()
}

/// The device's first access in both stores: Redis `firstaccess`, Cassandra `first_access`.
pub async fn first_access_in_both(
    env: &HashMap<String, String>,
    session: &Session,
    device: &str,
) -> (Option<String>, Value) {
    let redis = redis_hash(env, device).await.remove("firstaccess");
    let cassandra = cassandra_row(session, env, device)
        .await
        .map_or(Value::Null, |row| row["first_access"].clone());
    (redis, cassandra)
}
