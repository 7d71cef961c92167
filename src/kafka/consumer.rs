//! An at-least-once consumer: records arrive in batches, and a batch's offsets are stored only
//! when its caller says it was processed; librdkafka auto-commits stored offsets only.
//! (The pattern of rust-rdkafka's `examples/at_least_once.rs`.)

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, TopicPartitionList};

use super::client_config;
use crate::config::KafkaSettings;

/// Logs rebalances and failed commits so that operators can follow the group.
pub struct GroupLog;

impl ClientContext for GroupLog {}

impl ConsumerContext for GroupLog {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = %describe(partitions), "partitions assigned")
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = %describe(partitions), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
    }
}

fn describe(partitions: &TopicPartitionList) -> String {
    partitions
        .elements()
        .iter()
        .map(|element| format!("{}[{}]", element.topic(), element.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

pub struct AtLeastOnceConsumer {
    consumer: StreamConsumer<GroupLog>,
    /// Records received while the caller could not take them (see [`Self::poll_while_paused`]).
    held: VecDeque<OwnedMessage>,
}

impl AtLeastOnceConsumer {
    /// Joins the service's group on `topics`. New groups start at the earliest offset so that
    /// nothing produced before the first start is skipped.
    pub fn subscribe(settings: &KafkaSettings, topics: &[String]) -> anyhow::Result<Self> {
        let consumer: StreamConsumer<GroupLog> = client_config(settings)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .create_with_context(GroupLog)
            .map_err(super::redact_config_error)
            .map_err(|e| {
                anyhow::anyhow!("cannot create Kafka consumer (check KAFKA_CONFIG): {e}")
            })?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| anyhow::anyhow!("cannot subscribe to {}: {e}", names.join(", ")))?;
        Ok(AtLeastOnceConsumer {
            consumer,
            held: VecDeque::new(),
        })
    }

    /// Waits for a first record, then collects more until `max` records or `linger` elapsed.
    /// Cancel-safe between records: a dropped call loses no offsets (none were stored).
    pub async fn next_batch(&mut self, max: usize, linger: Duration) -> Vec<OwnedMessage> {
        let mut batch: Vec<OwnedMessage> = self.held.drain(..).collect();
        if batch.is_empty() {
            batch.push(self.receive().await);
        }
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, self.receive()).await {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        batch
    }

    /// The next record; consumer errors (broker down, …) are logged and waited out, since
    /// librdkafka recovers from them by itself.
    async fn receive(&self) -> OwnedMessage {
        loop {
            match self.consumer.recv().await {
                Ok(message) => return message.detach(),
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka consumer error; still trying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Stores the offsets past `messages` for the next auto-commit. Offsets of partitions this
    /// instance no longer owns are skipped: their new owner processes those records again.
    pub fn store_offsets(&self, messages: &[OwnedMessage]) {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for message in messages {
            let slot = next
                .entry((message.topic(), message.partition()))
                .or_insert(message.offset());
            *slot = (*slot).max(message.offset());
        }
        for ((topic, partition), offset) in next {
            // librdkafka stores `offset + 1`, the next record to read.
            if let Err(e) = self.consumer.store_offset(topic, partition, offset) {
                tracing::debug!(topic, partition, offset, error = %e, "offset not stored (partition revoked?)");
            }
        }
    }

    /// Pauses every assigned partition and polls for up to `wait`, so the instance stays in
    /// its group while it cannot make progress. Records already fetched are held for the next
    /// batch, in order.
    pub async fn poll_while_paused(&mut self, wait: Duration) {
        self.set_paused(true);
        if let Ok(message) = tokio::time::timeout(wait, self.receive()).await {
            self.held.push_back(message);
        }
    }

    /// Resumes every assigned partition after [`Self::poll_while_paused`].
    pub fn resume(&self) {
        self.set_paused(false);
    }

    fn set_paused(&self, paused: bool) {
        // Re-read each time: a rebalance may have assigned partitions since the last call.
        let result = self.consumer.assignment().and_then(|assignment| {
            if paused {
                self.consumer.pause(&assignment)
            } else {
                self.consumer.resume(&assignment)
            }
        });
        if let Err(e) = result {
            tracing::warn!(paused, error = %e, "cannot pause or resume partitions");
        }
    }

    /// Commits the stored offsets now (at shutdown).
    pub fn commit_stored(&self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "final offset commit failed"),
        }
    }
}
