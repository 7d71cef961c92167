//! Cache requests from the tests' side: the `get` client binary, and raw requests with the
//! replies read straight from the reply topic.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tokio::time::Instant;

use super::service::run_command;
use super::stack;

/// What one run of `hawkeye-customer-cache get` printed and returned.
#[derive(Debug)]
pub struct GetRun {
    pub code: i32,
    /// stdout as JSON (`Null` when it printed none).
    pub reply: Value,
    pub stderr: String,
}

/// Runs the `get` client with the service's environment (topics, brokers) and `args`.
pub async fn run_get(env: &HashMap<String, String>, args: &[&str]) -> GetRun {
    let get_args: Vec<&str> = ["get"].into_iter().chain(args.iter().copied()).collect();
    let (code, stdout, stderr) = run_command(&get_args, env, Duration::from_secs(90)).await;
    GetRun {
        code,
        reply: serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        stderr,
    }
}

/// A `get` that must succeed with 200; returns the serials of the body, in order.
pub async fn serials_after(env: &HashMap<String, String>, args: &[&str]) -> Vec<String> {
    let run = run_get(env, args).await;
    assert_eq!(run.code, 0, "{args:?}: {run:?}");
    assert_eq!(run.reply["status"], 200, "{args:?}: {run:?}");
    run.reply["body"]
        .as_array()
        .expect("a list body")
        .iter()
        .map(|entry| entry["serial_number"].as_str().expect("serial").to_string())
        .collect()
}

fn kafka_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", stack().kafka_brokers);
    config
}

/// Sends a raw request on the service's `TOPIC_GET`.
pub async fn send_request(
    env: &HashMap<String, String>,
    key: Option<&str>,
    value: Option<&[u8]>,
    headers: &[(&str, &[u8])],
) {
    let producer: FutureProducer = kafka_config().create().expect("producer");
    let mut owned = OwnedHeaders::new();
    for (key, value) in headers {
        owned = owned.insert(Header {
            key,
            value: Some(*value),
        });
    }
    let mut record: FutureRecord<'_, str, [u8]> =
        FutureRecord::to(&env["TOPIC_GET"]).headers(owned);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(value) = value {
        record = record.payload(value);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .expect("cannot send the request");
}

/// Creates a topic with `partitions` partitions.
pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_with(name, partitions, &[]).await;
}

/// Creates a topic with `partitions` partitions and topic-level settings.
pub async fn create_topic_with(name: &str, partitions: i32, settings: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = kafka_config().create().expect("admin");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (key, value) in settings {
        topic = topic.set(key, value);
    }
    let results = admin
        .create_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for result in results {
        result.expect("topic created");
    }
}

/// The topic's partitions. A topic created a moment ago may be missing from the metadata of
/// the broker asked, or listed without partitions, until its creation has propagated; that is
/// waited out up to `timeout`.
pub fn partition_ids(consumer: &impl Consumer, topic: &str, timeout: Duration) -> Vec<i32> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .expect("metadata");
        let ids: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|listed| listed.error().is_none())
            .flat_map(|listed| listed.partitions().iter().map(|partition| partition.id()))
            .collect();
        if !ids.is_empty() || std::time::Instant::now() >= deadline {
            return ids;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The partition's high watermark. A topic created a moment ago answers "not leader" until its
/// leader is elected, which is waited out up to `timeout`.
fn end_offset(consumer: &StreamConsumer, topic: &str, partition: i32, timeout: Duration) -> i64 {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match consumer.fetch_watermarks(topic, partition, timeout) {
            Ok((_, end)) => return end,
            Err(e)
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NotLeaderForPartition)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("watermarks of {topic} partition {partition}: {e}"),
        }
    }
}

/// Reads a reply topic from its end offsets at the time of creation on.
pub struct ReplyListener {
    consumer: StreamConsumer,
}

impl ReplyListener {
    pub async fn at_end(topic: &str) -> Self {
        let consumer: StreamConsumer = kafka_config()
            .set("group.id", super::unique("listener"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(10);
            let mut assignment = TopicPartitionList::new();
            for partition in partition_ids(&consumer, &topic, timeout) {
                let end = end_offset(&consumer, &topic, partition, timeout);
                assignment
                    .add_partition_offset(&topic, partition, Offset::Offset(end))
                    .expect("assignment");
            }
            assert!(assignment.count() > 0, "topic {topic} has no partitions");
            consumer.assign(&assignment).expect("assign");
            ReplyListener { consumer }
        })
        .await
        .expect("listener set-up")
    }

    /// Replies carrying `correlation_id`, until `complete` says the list is whole.
    pub async fn replies(
        &self,
        correlation_id: &[u8],
        complete: impl Fn(&[OwnedMessage]) -> bool,
    ) -> Vec<OwnedMessage> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut replies = Vec::new();
        while !complete(&replies) {
            let message = tokio::time::timeout_at(deadline, self.consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("replies incomplete after 60 s: {replies:?}"))
                .expect("reading replies");
            if correlation(&message.detach()).as_deref() == Some(correlation_id) {
                replies.push(message.detach());
            }
        }
        replies
    }

    /// Every message that arrives within `wait`.
    pub async fn everything_within(&self, wait: Duration) -> Vec<OwnedMessage> {
        let deadline = Instant::now() + wait;
        let mut messages = Vec::new();
        while let Ok(received) = tokio::time::timeout_at(deadline, self.consumer.recv()).await {
            messages.push(received.expect("reading the topic").detach());
        }
        messages
    }

    /// The one reply carrying `correlation_id`.
    pub async fn reply(&self, correlation_id: &[u8]) -> OwnedMessage {
        self.replies(correlation_id, |replies| !replies.is_empty())
            .await
            .remove(0)
    }
}

pub fn correlation(message: &OwnedMessage) -> Option<Vec<u8>> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == "kafka_correlationId")
            .and_then(|h| h.value.map(<[u8]>::to_vec))
    })
}

pub fn json_of(message: &OwnedMessage) -> Value {
    serde_json::from_slice(message.payload().expect("a reply value")).expect("reply is JSON")
}
