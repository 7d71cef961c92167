//! The `get` command: one cache request over Kafka, the matching reply (chunks joined).
//!
//! Before sending, the client assigns itself every partition of the reply topic at its end
//! offset, so a reply cannot arrive before it listens. It never joins a consumer group and
//! never commits. Replies carrying another correlation id (other requesters sharing the reply
//! topic) are skipped.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::config::{is_valid_topic_name, KafkaSettings};
use crate::kafka::client_log::ClientLog;
use crate::kafka::request_reply::{correlation_headers, CORRELATION_ID, REPLY_TOPIC};
use crate::kafka::{client_config, ensure_topics, producer, ServiceProducer};

/// How often the metadata of a reply topic just created is read again.
const NEW_TOPIC_POLL: Duration = Duration::from_millis(200);

/// What to ask for.
#[derive(Debug, Clone)]
pub struct GetOptions {
    pub last_contact_filter: Option<String>,
    pub timeout: Duration,
    /// `None`: `TOPIC_REPLY`.
    pub reply_topic: Option<String>,
}

/// The reply: its status and its JSON (chunks joined, without the `chunk` field).
#[derive(Debug, Clone)]
pub struct GetAnswer {
    pub status: u16,
    pub json: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("{0:?} is not a Kafka topic name")]
    InvalidReplyTopic(String),
    #[error("kafka: {0}")]
    Kafka(String),
}

fn kafka_error(context: &str) -> impl FnOnce(rdkafka::error::KafkaError) -> GetError + '_ {
    move |e| {
        GetError::Kafka(format!(
            "{context}: {}",
            crate::kafka::redact_config_error(e)
        ))
    }
}

/// Sends one request and waits for its whole reply.
pub async fn get(kafka: &KafkaSettings, options: &GetOptions) -> Result<GetAnswer, GetError> {
    let deadline = Instant::now() + options.timeout;
    let reply_topic = options
        .reply_topic
        .clone()
        .unwrap_or_else(|| kafka.topics.reply.clone());
    let producer = producer(kafka).map_err(|e| GetError::Kafka(format!("{e:#}")))?;
    let requester = by(
        deadline,
        options.timeout,
        Requester::connect(kafka, producer, reply_topic, options.timeout),
    )
    .await?;
    requester.request_by(options, deadline).await
}

/// A requester that keeps its reply consumer and its producer across requests, sent one after
/// the other (the `bench` command's clients, which share one producer as the requesters of
/// one application would; `get` uses one for a single request).
pub struct Requester {
    kafka: KafkaSettings,
    reply_topic: String,
    consumer: StreamConsumer<ClientLog>,
    producer: ServiceProducer,
}

impl Requester {
    /// Listens on `reply_topic` (created when missing) from its current end; sends requests
    /// with `producer`.
    pub async fn connect(
        kafka: &KafkaSettings,
        producer: ServiceProducer,
        reply_topic: String,
        timeout: Duration,
    ) -> Result<Self, GetError> {
        if !is_valid_topic_name(&reply_topic) {
            return Err(GetError::InvalidReplyTopic(reply_topic));
        }
        let consumer = listen_at_end(kafka, reply_topic.clone(), timeout).await?;
        Ok(Requester {
            kafka: kafka.clone(),
            reply_topic,
            consumer,
            producer,
        })
    }

    /// Sends one request and waits for its whole reply, on this requester's reply topic
    /// (`options.reply_topic` is not used).
    pub async fn request(&self, options: &GetOptions) -> Result<GetAnswer, GetError> {
        self.request_by(options, Instant::now() + options.timeout)
            .await
    }

    async fn request_by(
        &self,
        options: &GetOptions,
        deadline: Instant,
    ) -> Result<GetAnswer, GetError> {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let sending = send_request(
            &self.producer,
            &self.kafka.topics.get,
            &self.reply_topic,
            &correlation_id,
            options,
        );
        by(deadline, options.timeout, sending).await?;
        by(
            deadline,
            options.timeout,
            receive_reply(&self.consumer, correlation_id.as_bytes()),
        )
        .await
    }
}

/// `work`, or [`GetError::Timeout`] at `deadline`.
async fn by<T>(
    deadline: Instant,
    timeout: Duration,
    work: impl Future<Output = Result<T, GetError>>,
) -> Result<T, GetError> {
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| GetError::Timeout(timeout))?
}

/// A consumer of every partition of `topic` (created when missing), positioned at their
/// current ends; it joins no group and commits nothing.
pub async fn listen_at_end(
    kafka: &KafkaSettings,
    topic: String,
    timeout: Duration,
) -> Result<StreamConsumer<ClientLog>, GetError> {
    let mut partitions = partitions_of(kafka, &topic, timeout).await?;
    if partitions.is_empty() {
        ensure_topics(kafka, &[&topic])
            .await
            .map_err(|e| GetError::Kafka(format!("{e:#}")))?;
        // A new topic takes a moment to show in the metadata with a leader for every
        // partition; the caller's deadline bounds this.
        while partitions.is_empty() {
            tokio::time::sleep(NEW_TOPIC_POLL).await;
            partitions = partitions_of(kafka, &topic, timeout).await?;
        }
    }
    let consumer: StreamConsumer<ClientLog> = client_config(kafka)
        // Required by librdkafka; no group is joined (assign, not subscribe) and nothing is
        // committed.
        .set(
            "group.id",
            format!("hawkeye-customer-cache-get-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create_with_context(ClientLog)
        .map_err(kafka_error("cannot create the reply consumer"))?;
    let consumer = tokio::task::spawn_blocking(move || {
        let mut assignment = TopicPartitionList::new();
        for partition in partitions {
            let (_, end) = consumer
                .fetch_watermarks(&topic, partition, timeout)
                .map_err(kafka_error("cannot read the reply topic's end offsets"))?;
            assignment
                .add_partition_offset(&topic, partition, Offset::Offset(end))
                .map_err(kafka_error("cannot build the assignment"))?;
        }
        consumer
            .assign(&assignment)
            .map_err(kafka_error("cannot assign the reply topic"))?;
        Ok::<_, GetError>(consumer)
    })
    .await
    .map_err(|e| GetError::Kafka(format!("assignment task failed: {e}")))??;
    Ok(consumer)
}

/// The partitions of `topic`; empty when it does not exist, or while a partition has no
/// leader: a topic created a moment ago answers "not leader" to the end-offset queries until
/// its leaders are elected.
async fn partitions_of(
    kafka: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, GetError> {
    let consumer: StreamConsumer<ClientLog> =
        client_config(kafka)
            .create_with_context(ClientLog)
            .map_err(kafka_error("cannot create a metadata client"))?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .map_err(kafka_error("cannot read the reply topic's metadata"))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none());
        let partitions = found.map(|t| t.partitions()).unwrap_or_default();
        let led = partitions
            .iter()
            .all(|p| p.leader() >= 0 && p.error().is_none());
        Ok(if led {
            partitions.iter().map(|p| p.id()).collect()
        } else {
            Vec::new()
        })
    })
    .await
    .map_err(|e| GetError::Kafka(format!("metadata task failed: {e}")))?
}

async fn send_request(
    producer: &ServiceProducer,
    request_topic: &str,
    reply_topic: &str,
    correlation_id: &str,
    options: &GetOptions,
) -> Result<(), GetError> {
    let mut body = serde_json::Map::new();
    if let Some(filter) = &options.last_contact_filter {
        body.insert("last_contact_filter".into(), filter.clone().into());
    }
    let request = serde_json::json!({"request_id": correlation_id, "body": body}).to_string();
    let headers = correlation_headers(Some(correlation_id.as_bytes())).insert(Header {
        key: REPLY_TOPIC,
        value: Some(reply_topic),
    });
    let record = FutureRecord::to(request_topic)
        .key(correlation_id)
        .payload(&request)
        .headers(headers);
    producer
        .send(record, options.timeout)
        .await
        .map_err(|(e, _)| GetError::Kafka(format!("cannot send the request: {e}")))?;
    Ok(())
}

/// One reply value as the client reads it: lists stay raw, so entries print as sent.
#[derive(Deserialize)]
struct ReplyValue<'a> {
    #[serde(borrow)]
    request_id: &'a RawValue,
    status: u16,
    #[serde(borrow)]
    body: &'a RawValue,
    chunk: Option<Chunk>,
}

#[derive(Deserialize)]
struct Chunk {
    index: usize,
    count: usize,
}

/// Reads replies until the one with `correlation_id` is complete.
async fn receive_reply(
    consumer: &StreamConsumer<ClientLog>,
    correlation_id: &[u8],
) -> Result<GetAnswer, GetError> {
    let mut chunks = Chunks::default();
    loop {
        let message = consumer
            .recv()
            .await
            .map_err(kafka_error("cannot read replies"))?;
        let ours = message.headers().is_some_and(|headers| {
            headers
                .iter()
                .any(|h| h.key == CORRELATION_ID && h.value == Some(correlation_id))
        });
        let Some(payload) = message.payload().filter(|_| ours) else {
            continue;
        };
        let Ok(reply) = serde_json::from_slice::<ReplyValue>(payload) else {
            tracing::warn!("skipping a reply that is not a reply object");
            continue;
        };
        if let Some(answer) = chunks.add(reply) {
            return Ok(answer);
        }
    }
}

/// The chunks of one reply received so far, by index.
#[derive(Default)]
struct Chunks {
    bodies: BTreeMap<usize, String>,
}

impl Chunks {
    /// Adds one reply value; returns the whole reply once every chunk is there.
    fn add(&mut self, reply: ReplyValue<'_>) -> Option<GetAnswer> {
        let Some(chunk) = &reply.chunk else {
            return Some(answer(&reply, |json| json.push_str(reply.body.get())));
        };
        if chunk.index >= chunk.count {
            tracing::warn!(
                index = chunk.index,
                count = chunk.count,
                "skipping a malformed chunk"
            );
            return None;
        }
        // A chunk delivered twice (at-least-once) simply replaces itself.
        self.bodies
            .insert(chunk.index, reply.body.get().to_string());
        if self.bodies.len() < chunk.count {
            return None;
        }
        let lists: Vec<&str> = self.bodies.values().filter_map(|b| list_items(b)).collect();
        Some(answer(&reply, |json| {
            json.reserve(lists.iter().map(|items| items.len() + 1).sum::<usize>() + 1);
            json.push('[');
            for (index, items) in lists.iter().filter(|items| !items.is_empty()).enumerate() {
                if index > 0 {
                    json.push(',');
                }
                json.push_str(items);
            }
            json.push(']');
        }))
    }
}

/// The items of a chunk's list as written between its brackets; `None` if the body is not a
/// list. The body was already read as one JSON value, so a body in brackets is a well-formed
/// list and its items can be joined without reading them again (a 100k-device reply is 23 MB).
fn list_items(body: &str) -> Option<&str> {
    let inner = body.trim().strip_prefix('[')?.strip_suffix(']')?;
    Some(inner.trim())
}

/// The reply object without its `chunk` field, its body written by `write_body`.
fn answer(reply: &ReplyValue<'_>, write_body: impl FnOnce(&mut String)) -> GetAnswer {
    let mut json = format!(
        r#"{{"request_id":{},"status":{},"body":"#,
        reply.request_id.get(),
        reply.status
    );
    write_body(&mut json);
    json.push('}');
    GetAnswer {
        status: reply.status,
        json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunk `index` of `count` of a 200 reply to request "r".
    fn chunk_of(index: usize, count: usize, body: &str) -> String {
        format!(
            r#"{{"request_id":"r","status":200,"body":{body},"chunk":{{"index":{index},"count":{count}}}}}"#
        )
    }

    fn add(chunks: &mut Chunks, value: &str) -> Option<GetAnswer> {
        chunks.add(serde_json::from_str(value).unwrap())
    }

    #[test]
    fn a_whole_reply_is_returned_as_sent() {
        let answer = add(
            &mut Chunks::default(),
            r#"{"request_id":"r","status":404,"body":"No devices were found for the specified filters"}"#,
        )
        .unwrap();
        assert_eq!(answer.status, 404);
        assert_eq!(
            answer.json,
            r#"{"request_id":"r","status":404,"body":"No devices were found for the specified filters"}"#
        );
    }

    #[test]
    fn chunks_are_joined_by_index_whatever_their_order() {
        let mut chunks = Chunks::default();
        let chunk = |index, body| chunk_of(index, 3, body);
        assert!(add(&mut chunks, &chunk(2, r#"[{"e":5}]"#)).is_none());
        assert!(add(&mut chunks, &chunk(0, r#"[{"e":1},{"e":2}]"#)).is_none());
        assert!(
            add(&mut chunks, &chunk(0, r#"[{"e":1},{"e":2}]"#)).is_none(),
            "duplicate"
        );
        let answer = add(&mut chunks, &chunk(1, r#"[{"e": 3.0},{"e":4}]"#)).unwrap();
        assert_eq!(
            answer.json,
            r#"{"request_id":"r","status":200,"body":[{"e":1},{"e":2},{"e": 3.0},{"e":4},{"e":5}]}"#
        );
    }

    #[test]
    fn empty_chunks_and_chunks_that_are_not_lists_add_no_entries() {
        let mut chunks = Chunks::default();
        let chunk = |index, body| chunk_of(index, 4, body);
        assert!(add(&mut chunks, &chunk(0, " [ ] ")).is_none());
        assert!(add(&mut chunks, &chunk(1, r#"[ {"e":"]"} ]"#)).is_none());
        assert!(add(&mut chunks, &chunk(2, r#""[not a list]""#)).is_none());
        let answer = add(&mut chunks, &chunk(3, "[]")).unwrap();
        assert_eq!(
            answer.json,
            r#"{"request_id":"r","status":200,"body":[{"e":"]"}]}"#
        );
    }
}
