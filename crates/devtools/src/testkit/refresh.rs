//! Helpers of the refresh tests: the simulator in-process, a service environment pointing at
//! it, the notifications read from their topic, and the customer cache read from Redis.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use hawkeye_customer_cache::cache::keys::CacheKeys;
use hawkeye_customer_cache::stores::redis::RedisConnection;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use redis::AsyncCommands;
use serde_json::Value;
use tokio::time::Instant;

use super::service::{binary, isolated_env, run_command};
use super::{stack, unique};
use crate::service::ServiceProcess;
use crate::sim::{RunningSim, SimConfig, Simulator};

/// The contract's default `MONITORABLE_MANAGEMENT_STATUSES`.
pub fn monitorable() -> Vec<String> {
    [
        "Pending",
        "Active \u{2013} Gold Monitoring",
        "Active \u{2013} Platinum Monitoring",
    ]
    .map(String::from)
    .to_vec()
}

pub async fn start_sim(config: SimConfig) -> RunningSim {
    Simulator::start(config, "127.0.0.1:0")
        .await
        .expect("cannot start the simulator")
}

/// An isolated service environment whose APIs are `sim`; only the start-up refresh runs by
/// itself (the scheduled one is an hour away).
pub fn refresh_env(sim: &RunningSim) -> HashMap<String, String> {
    let mut env = isolated_env();
    for line in sim.env_lines() {
        let (key, value) = line.split_once('=').expect("KEY=value");
        env.insert(key.to_string(), value.to_string());
    }
    env.insert("REFRESH_INTERVAL_SECS".into(), "3600".into());
    env
}

/// Starts the service with `env`, waits until it is ready (its topics exist), and subscribes
/// to its notifications from the beginning, so those of the start-up refresh are read too.
pub async fn start_with_notifications(
    env: &HashMap<String, String>,
) -> (ServiceProcess, Notifications) {
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    (service, Notifications::subscribe(env))
}

/// Runs `hawkeye-customer-cache refresh` with `env`; returns the request_id it printed.
pub async fn trigger_refresh(env: &HashMap<String, String>) -> String {
    let (code, stdout, stderr) = run_command(&["refresh"], env, Duration::from_secs(60)).await;
    assert_eq!(code, 0, "refresh command failed: {stderr}");
    let request_id = stdout.trim().to_string();
    assert!(
        !request_id.is_empty(),
        "the refresh command printed no request_id"
    );
    request_id
}

/// Every notification of one service environment, read from the start of its topic.
pub struct Notifications {
    consumer: StreamConsumer,
    pub seen: Vec<Value>,
}

impl Notifications {
    /// Subscribes to `TOPIC_NOTIFICATIONS` of `env`; the service must have created it (ready).
    pub fn subscribe(env: &HashMap<String, String>) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", stack().kafka_brokers)
            .set("group.id", unique("notifications"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("notification consumer");
        consumer
            .subscribe(&[env["TOPIC_NOTIFICATIONS"].as_str()])
            .expect("subscribe to notifications");
        Notifications {
            consumer,
            seen: Vec::new(),
        }
    }

    /// Reads notifications until one of `event` satisfies `matches`; on a timeout, panics
    /// with what was seen and the service's log.
    pub async fn wait_for(
        &mut self,
        service: &mut ServiceProcess,
        event: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_until(service, event, timeout, |n| {
            n["event"] == event && matches(n)
        })
        .await
    }

    /// The first `refresh_succeeded` or `refresh_failed`: the end of a run.
    pub async fn wait_for_run(&mut self, service: &mut ServiceProcess, timeout: Duration) -> Value {
        self.wait_until(service, "end of a refresh", timeout, |n| {
            n["event"] == "refresh_succeeded" || n["event"] == "refresh_failed"
        })
        .await
    }

    async fn wait_until(
        &mut self,
        service: &mut ServiceProcess,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(notification) = self.seen.iter().find(|n| matches(n)) {
                return notification.clone();
            }
            let Ok(message) = tokio::time::timeout_at(deadline, self.consumer.recv()).await else {
                service.drain_log();
                panic!(
                    "no {what} notification within {timeout:?}; seen: {:#?}\nservice log:\n{}",
                    self.seen,
                    service.log.join("\n")
                );
            };
            let message = message.expect("reading notifications");
            let value: Value = serde_json::from_slice(message.payload().expect("a value"))
                .expect("notifications are JSON");
            assert_eq!(
                message.key(),
                value["event"].as_str().map(str::as_bytes),
                "the key is the event name"
            );
            self.seen.push(value);
        }
    }

    /// The notifications of `event` read so far.
    pub fn of(&self, event: &str) -> Vec<&Value> {
        self.seen.iter().filter(|n| n["event"] == event).collect()
    }
}

/// The live cache hash: serial → stored entry JSON text.
pub async fn live_cache(redis: &mut RedisConnection, keys: &CacheKeys) -> HashMap<String, String> {
    redis.hgetall(keys.live()).await.expect("HGETALL live")
}

/// Cache entries as a set of canonical JSON texts (object keys sorted).
pub fn entry_set<'a>(entries: impl IntoIterator<Item = &'a Value>) -> BTreeSet<String> {
    entries.into_iter().map(Value::to_string).collect()
}

/// The stored live cache as a set of canonical JSON texts, each also checked to be stored
/// under its own serial number.
pub async fn live_entry_set(redis: &mut RedisConnection, keys: &CacheKeys) -> BTreeSet<String> {
    live_cache(redis, keys)
        .await
        .into_iter()
        .map(|(serial, text)| {
            let entry: Value = serde_json::from_str(&text).expect("entries are JSON");
            assert_eq!(entry["serial_number"], serial.as_str());
            entry.to_string()
        })
        .collect()
}

/// Waits until the service logged `count` lines containing `needle`, or panics with its log.
pub async fn wait_for_log(
    service: &mut ServiceProcess,
    needle: &str,
    count: usize,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        service.drain_log();
        if service
            .log
            .iter()
            .filter(|line| line.contains(needle))
            .count()
            >= count
        {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "fewer than {count} log lines with {needle:?} within {timeout:?}:\n{}",
                service.log.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keys of the customer cache that exist now (live, meta, lock, staging hashes, ...).
pub async fn cache_keys_present(redis: &mut RedisConnection, keys: &CacheKeys) -> Vec<String> {
    // The live hash's name, and the others' hash tag `{live}`, hold it.
    let mut found: Vec<String> = redis
        .keys(format!("*{}*", keys.live()))
        .await
        .expect("KEYS");
    found.sort();
    found
}
