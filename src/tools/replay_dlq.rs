//! `profile replay-dlq`: sends dead letters back to the profile topics once their cause is
//! fixed. Reads `TOPIC_PROFILE_DLQ` up to the end offsets it found at start (so it ends even
//! while the service keeps dead-lettering) and re-publishes each letter's original key and
//! bytes to the topic it came from, with headers naming the letter. Letters without the
//! original value (truncated for their size, tombstones) cannot be replayed: they are counted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::kafka::client_log::ClientLog;
use crate::kafka::dead_letters::{HEADER_REASON, HEADER_SOURCE_TOPIC, HEADER_VALUE_TRUNCATED};
use crate::kafka::{
    client_config, producer, redact_config_error, wait_for_brokers, ServiceProducer,
};

/// Header of a replayed event: the partition of the dead letter it was sent from.
pub const HEADER_REPLAYED_FROM_PARTITION: &str = "replayed.from.partition";
/// Header of a replayed event: the offset of the dead letter it was sent from.
pub const HEADER_REPLAYED_FROM_OFFSET: &str = "replayed.from.offset";

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the topic may send nothing while letters before the end offsets are missing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// Letters read before their sends are awaited together.
const BATCH: usize = 500;
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayOptions {
    /// First offset read in every partition (`None`: each partition's earliest).
    pub from_offset: Option<i64>,
    /// Print what would be sent, send nothing.
    pub dry_run: bool,
}

/// How many letters were (or, in a dry run, would be) replayed and skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayCount {
    pub replayed: u64,
    pub skipped: u64,
}

/// What to do with one dead letter.
#[derive(Debug, PartialEq, Eq)]
enum Action<'a> {
    Send { topic: &'a str },
    Skip { why: &'static str },
}

/// The letter goes back to its `source.topic` when that is one of the profile topics (the
/// first one otherwise: the service may have been reading other topics then).
fn action<'a>(letter: &OwnedMessage, profile_topics: &'a [String]) -> Option<Action<'a>> {
    if header(letter, HEADER_VALUE_TRUNCATED).as_deref() == Some("true") {
        return Some(Action::Skip {
            why: "its value was too large to keep",
        });
    }
    if letter.payload().is_none() {
        return Some(Action::Skip {
            why: "it has no value (a tombstone)",
        });
    }
    let source = header(letter, HEADER_SOURCE_TOPIC);
    let topic = profile_topics
        .iter()
        .find(|topic| source.as_deref() == Some(topic.as_str()))
        .or_else(|| profile_topics.first())?;
    Some(Action::Send { topic })
}

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// One line of the dry run: where the letter is, its key and reason, what would be done.
fn describe(letter: &OwnedMessage, action: &Action<'_>) -> String {
    let key = letter
        .key()
        .map_or_else(|| "(none)".into(), String::from_utf8_lossy);
    let reason = header(letter, HEADER_REASON).unwrap_or_else(|| "(no reason)".into());
    let what = match action {
        Action::Send { topic } => format!(
            "would send {} bytes to {topic}",
            letter.payload().map_or(0, <[u8]>::len)
        ),
        Action::Skip { why } => format!("would skip: {why}"),
    };
    format!(
        "{}/{} key={key} reason={reason:?}: {what}",
        letter.partition(),
        letter.offset()
    )
}

/// The offsets `[start, end)` of one partition still to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: i64,
    end: i64,
}

/// The range to read: from `from_offset` (not before the earliest record kept) to the end
/// offset at start; `None` when nothing is to be read.
fn range(from_offset: Option<i64>, low: i64, high: i64) -> Option<Range> {
    let start = from_offset.map_or(low, |from| from.max(low));
    (start < high).then_some(Range { start, end: high })
}

/// Replays the dead letters of `TOPIC_PROFILE_DLQ`; progress on stderr, the dry run's lines
/// on stdout.
pub async fn replay(
    settings: &KafkaSettings,
    options: ReplayOptions,
) -> anyhow::Result<ReplayCount> {
    let topics = &settings.topics;
    let producer = producer(settings)?;
    wait_for_brokers(&producer).await?;
    let consumer = letter_reader(settings)?;
    let ranges = tokio::task::block_in_place(|| ranges(&consumer, &topics.profile_dlq, options))?;
    let total: i64 = ranges.values().map(|r| r.end - r.start).sum();
    let mut assignment = TopicPartitionList::new();
    for (partition, range) in &ranges {
        assignment.add_partition_offset(
            &topics.profile_dlq,
            *partition,
            Offset::Offset(range.start),
        )?;
    }
    consumer
        .assign(&assignment)
        .context("cannot assign the dead-letter partitions")?;

    let mut remaining = ranges;
    let mut count = ReplayCount::default();
    let mut batch = Vec::with_capacity(BATCH);
    let mut read = 0_i64;
    let mut last_progress = Instant::now();
    while !remaining.is_empty() {
        let letter = tokio::time::timeout(IDLE_TIMEOUT, consumer.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no dead letter came for {IDLE_TIMEOUT:?} although partitions {:?} are \
                     not read to their end",
                    remaining.keys().collect::<Vec<_>>()
                )
            })?
            .with_context(|| format!("cannot read {}", topics.profile_dlq))?
            .detach();
        let Some(range) = remaining.get(&letter.partition()) else {
            continue; // A partition already read to its end offset at start.
        };
        if letter.offset() + 1 >= range.end {
            remaining.remove(&letter.partition());
        }
        read += 1;
        batch.push(letter);
        if batch.len() >= BATCH || remaining.is_empty() {
            let done = handle(&producer, &batch, &topics.profile_updates, options.dry_run).await?;
            count.replayed += done.replayed;
            count.skipped += done.skipped;
            batch.clear();
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            eprintln!(
                "replay-dlq: {read} of {total} dead letters read, {} replayed, {} skipped",
                count.replayed, count.skipped
            );
            last_progress = Instant::now();
        }
    }
    Ok(count)
}

/// A consumer of the dead-letter topic that never commits: partitions are assigned, offsets
/// come from the command line.
fn letter_reader(settings: &KafkaSettings) -> anyhow::Result<StreamConsumer<ClientLog>> {
    client_config(settings)
        .set("group.id", format!("{}.replay-dlq", settings.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create_with_context(ClientLog)
        .map_err(redact_config_error)
        .map_err(|e| anyhow::anyhow!("cannot create Kafka consumer (check KAFKA_CONFIG): {e}"))
}

/// Every partition of `topic` with letters to read, and their range.
fn ranges(
    consumer: &StreamConsumer<ClientLog>,
    topic: &str,
    options: ReplayOptions,
) -> anyhow::Result<HashMap<i32, Range>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .with_context(|| format!("cannot read the metadata of {topic}"))?;
    let mut ranges = HashMap::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), METADATA_TIMEOUT)
            .with_context(|| format!("cannot read the offsets of {topic}[{}]", partition.id()))?;
        if let Some(range) = range(options.from_offset, low, high) {
            ranges.insert(partition.id(), range);
        }
    }
    Ok(ranges)
}

/// Replays (or describes) one batch of letters; returns once every send is delivered.
async fn handle(
    producer: &ServiceProducer,
    letters: &[OwnedMessage],
    profile_topics: &[String],
    dry_run: bool,
) -> anyhow::Result<ReplayCount> {
    let mut count = ReplayCount::default();
    let mut sends = Vec::new();
    for letter in letters {
        let action =
            action(letter, profile_topics).context("TOPIC_PROFILE_UPDATES names no topic")?;
        if dry_run {
            println!("{}", describe(letter, &action));
        }
        match action {
            Action::Send { topic } => {
                count.replayed += 1;
                sends.push((letter, topic));
            }
            Action::Skip { .. } => count.skipped += 1,
        }
    }
    if !dry_run {
        futures::stream::iter(sends)
            .map(|(letter, topic)| async move {
                producer
                    .send(replayed(letter, topic), QUEUE_TIMEOUT)
                    .await
                    .map_err(|(error, _)| anyhow::anyhow!("cannot deliver to {topic}: {error}"))
            })
            .buffer_unordered(BATCH)
            .try_for_each(|_| async { Ok(()) })
            .await?;
    }
    Ok(count)
}

/// The letter's original key and bytes to `topic`, with headers naming the letter.
fn replayed<'a>(letter: &'a OwnedMessage, topic: &'a str) -> FutureRecord<'a, [u8], [u8]> {
    let partition = letter.partition().to_string();
    let offset = letter.offset().to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: HEADER_REPLAYED_FROM_PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: HEADER_REPLAYED_FROM_OFFSET,
            value: Some(offset.as_str()),
        });
    let mut record = FutureRecord::to(topic).headers(headers);
    if let Some(key) = letter.key() {
        record = record.key(key);
    }
    if let Some(payload) = letter.payload() {
        record = record.payload(payload);
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn letter(payload: Option<&[u8]>, headers: &[(&str, &str)]) -> OwnedMessage {
        let headers = headers
            .iter()
            .fold(OwnedHeaders::new(), |all, (key, value)| {
                all.insert(Header {
                    key,
                    value: Some(*value),
                })
            });
        OwnedMessage::new(
            payload.map(<[u8]>::to_vec),
            Some(b"k".to_vec()),
            "dlq".into(),
            Timestamp::NotAvailable,
            2,
            40,
            Some(headers),
        )
    }

    #[test]
    fn a_letter_goes_back_to_its_source_topic_when_that_is_a_profile_topic() {
        let topics = ["a".to_string(), "b".to_string()];
        let from_b = letter(Some(b"{}"), &[(HEADER_SOURCE_TOPIC, "b")]);
        assert_eq!(action(&from_b, &topics), Some(Action::Send { topic: "b" }));
        let from_elsewhere = letter(Some(b"{}"), &[(HEADER_SOURCE_TOPIC, "old")]);
        assert_eq!(
            action(&from_elsewhere, &topics),
            Some(Action::Send { topic: "a" })
        );
        assert_eq!(
            action(&letter(Some(b"{}"), &[]), &topics),
            Some(Action::Send { topic: "a" })
        );
    }

    #[test]
    fn letters_without_their_value_are_skipped() {
        let topics = ["a".to_string()];
        let truncated = letter(None, &[(HEADER_VALUE_TRUNCATED, "true")]);
        assert!(matches!(
            action(&truncated, &topics),
            Some(Action::Skip { .. })
        ));
        assert!(matches!(
            action(&letter(None, &[]), &topics),
            Some(Action::Skip { .. })
        ));
    }

    #[test]
    fn the_dry_run_line_names_the_letter_its_reason_and_the_action() {
        let not_json = letter(Some(b"{x"), &[(HEADER_REASON, "not JSON")]);
        assert_eq!(
            describe(&not_json, &Action::Send { topic: "a" }),
            r#"2/40 key=k reason="not JSON": would send 2 bytes to a"#
        );
    }

    #[test]
    fn the_range_starts_at_the_requested_offset_but_not_before_the_earliest() {
        assert_eq!(range(None, 3, 10), Some(Range { start: 3, end: 10 }));
        assert_eq!(range(Some(5), 3, 10), Some(Range { start: 5, end: 10 }));
        assert_eq!(range(Some(0), 3, 10), Some(Range { start: 3, end: 10 }));
        assert_eq!(range(Some(10), 3, 10), None);
        assert_eq!(range(None, 0, 0), None);
    }

    #[test]
    fn a_replayed_event_names_the_letter() {
        let original = letter(Some(b"{x"), &[]);
        let record = replayed(&original, "a");
        assert_eq!(record.payload, Some(&b"{x"[..]));
        assert_eq!(record.key, Some(&b"k"[..]));
        let headers = record.headers.expect("headers");
        let values: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|h| (h.key, h.value.unwrap_or_default()))
            .collect();
        assert_eq!(
            values,
            [
                (HEADER_REPLAYED_FROM_PARTITION, &b"2"[..]),
                (HEADER_REPLAYED_FROM_OFFSET, &b"40"[..])
            ]
        );
    }
}
