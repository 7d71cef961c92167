//! The one way the service reads Kafka. Every role (device profile events, cache requests,
//! refresh triggers) consumes through an [`Ingress`]: the same client settings, its own consumer
//! group, and the same at-least-once discipline (the pattern of rust-rdkafka's
//! `examples/at_least_once.rs`): librdkafka auto-commits only offsets the service stored, and an
//! offset is stored only once the record's work is acknowledged, never past a record of the
//! same partition that is still being worked on.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::access;
use super::client_log::{self, ClientLog};
use super::offsets::PendingOffsets;
use super::statistics::ClientMetrics;
use super::{client_config, redact_config_error};
use crate::config::KafkaSettings;
use crate::observe::Metrics;
use crate::sync;

/// Pause after a consumer error, so a broker outage does not spin the loop.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_millis(500);
/// How long the start-up look at committed offsets may take.
const OFFSETS_TIMEOUT: Duration = Duration::from_secs(10);

/// What a consumer group reads; each role has its own group, so that a rebalance of one (a
/// push instance joining) never pauses another (cache requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `TOPIC_PROFILE_UPDATES`.
    Profiles,
    /// `TOPIC_GET`.
    Requests,
    /// `TOPIC_REFRESH`.
    Refresh,
}

impl Role {
    /// `{KAFKA_GROUP_ID}.profiles`, `.requests` or `.refresh`.
    pub fn group_id(self, service_group: &str) -> String {
        let suffix = match self {
            Role::Profiles => "profiles",
            Role::Requests => "requests",
            Role::Refresh => "refresh",
        };
        format!("{service_group}.{suffix}")
    }
}

pub struct Ingress {
    consumer: StreamConsumer<ClientMetrics>,
    pending: Mutex<PendingOffsets>,
    /// Records received while the partitions were paused, handed out first afterwards.
    held: Mutex<VecDeque<OwnedMessage>>,
}

/// Records librdkafka prefetches per partition ahead of the service (`queued.min.messages`,
/// unless `KAFKA_CONFIG` sets it). Its default, 100,000, keeps up to 64 MiB of a backlog's
/// records in memory, with librdkafka's own overhead on each; a few batches ahead keep the
/// push just as busy.
const PREFETCHED_RECORDS_PER_PARTITION: &str = "10000";

/// The settings of every consumer in a group: offsets stored by the service only, committed
/// automatically; a group without committed offsets starts at the earliest record, so nothing
/// produced before the first start is skipped.
fn group_config(settings: &KafkaSettings, group_id: &str) -> ClientConfig {
    let mut config = client_config(settings);
    if config.get("queued.min.messages").is_none() {
        config.set("queued.min.messages", PREFETCHED_RECORDS_PER_PARTITION);
    }
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    config
}

impl Ingress {
    /// Joins the role's group on `topics` (which must exist); the consumer's lag goes to
    /// `metrics`. On the first start after an upgrade, the group takes over the offsets the
    /// service's former single group (`KAFKA_GROUP_ID`) committed, so nothing is read twice or
    /// skipped.
    pub async fn subscribe(
        settings: &KafkaSettings,
        role: Role,
        topics: &[impl AsRef<str>],
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let topics: Vec<&str> = topics.iter().map(AsRef::as_ref).collect();
        let group_id = role.group_id(&settings.group_id);
        adopt_former_offsets(settings, &group_id, &topics).await?;
        let mut config = group_config(settings, &group_id);
        let context = ClientMetrics::consumer(&mut config, metrics, &group_id);
        let consumer: StreamConsumer<ClientMetrics> = config
            .create_with_context(context)
            .map_err(redact_config_error)
            .map_err(|e| {
                anyhow::anyhow!("cannot create Kafka consumer (check KAFKA_CONFIG): {e}")
            })?;
        consumer
            .subscribe(&topics)
            .with_context(|| format!("cannot subscribe to {}", topics.join(",")))?;
        tracing::info!(group = %group_id, topics = %topics.join(","), "consumer subscribed");
        Ok(Ingress {
            consumer,
            pending: Mutex::new(PendingOffsets::default()),
            held: Mutex::new(VecDeque::new()),
        })
    }

    /// The next record, to be [acknowledged](Self::acknowledge) once its work is done.
    /// Consumer errors (broker down, …) are logged and waited out, since librdkafka recovers
    /// from them by itself. Cancel-safe: a dropped call loses no offsets (none were stored).
    pub async fn recv(&self) -> OwnedMessage {
        let message = match self.take_held() {
            Some(message) => message,
            None => self.receive().await,
        };
        sync::lock(&self.pending).begin(message.topic(), message.partition(), message.offset());
        message
    }

    /// Waits for a first record, then takes every record already received, up to `max`,
    /// without waiting for more: a lone event is written at once, and batches grow only when
    /// records arrive faster than they are written.
    pub async fn next_batch(&self, max: usize) -> Vec<OwnedMessage> {
        let mut batch = vec![self.recv().await];
        while batch.len() < max {
            match self.recv().now_or_never() {
                Some(message) => batch.push(message),
                None => break,
            }
        }
        batch
    }

    /// The record's work is done: stores the offset up to which every record of its partition
    /// is done, for the next automatic commit.
    pub fn acknowledge(&self, message: &OwnedMessage) {
        let (topic, partition) = (message.topic(), message.partition());
        let Some(done) = sync::lock(&self.pending).acknowledge(topic, partition, message.offset())
        else {
            return;
        };
        // librdkafka stores `offset + 1`: the next record to read.
        if let Err(e) = self.consumer.store_offset(topic, partition, done) {
            // The partition was revoked meanwhile: its new owner reads the record again.
            tracing::debug!(topic, partition, offset = done, error = %e, "offset not stored");
        }
    }

    /// Pauses every assigned partition and polls for up to `wait`, so the instance stays in
    /// its group while it cannot make progress. A record that arrives is held for later, in
    /// order.
    pub async fn poll_while_paused(&self, wait: Duration) {
        self.set_paused(true);
        if let Ok(message) = tokio::time::timeout(wait, self.receive()).await {
            sync::lock(&self.held).push_back(message);
        }
    }

    /// Resumes every assigned partition after [`Self::poll_while_paused`].
    pub fn resume(&self) {
        self.set_paused(false);
    }

    /// Commits the stored offsets now (at shutdown).
    pub fn commit(&self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "final offset commit failed"),
        }
    }

    fn take_held(&self) -> Option<OwnedMessage> {
        sync::lock(&self.held).pop_front()
    }

    async fn receive(&self) -> OwnedMessage {
        loop {
            match self.consumer.recv().await {
                Ok(message) => return message.detach(),
                Err(e) => {
                    let refused = e.rdkafka_error_code().and_then(|code| {
                        let resource = match code {
                            RDKafkaErrorCode::GroupAuthorizationFailed => "its consumer group",
                            _ => "a subscribed topic",
                        };
                        access::missing_grant(code, "READ", resource)
                    });
                    let error = refused.unwrap_or_else(|| e.to_string());
                    client_log::warn(&format!("Kafka consumer error; still trying: {error}"));
                    tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
                }
            }
        }
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
}

/// Gives `group_id` the offsets the former group `KAFKA_GROUP_ID` committed on `topics`, for
/// the partitions where `group_id` has none yet. Best effort: when it cannot be done (the
/// group already has members, Kafka is slow) the group starts as any new group does, at the
/// earliest record, which at-least-once allows. The one failure that stops start-up is the
/// brokers refusing this client its own group: it could not consume at all.
async fn adopt_former_offsets(
    settings: &KafkaSettings,
    group_id: &str,
    topics: &[&str],
) -> anyhow::Result<()> {
    let settings = settings.clone();
    let group = group_id.to_string();
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    let adopted =
        tokio::task::spawn_blocking(move || adopt_blocking(&settings, &group, &topics)).await;
    match adopted {
        Ok(Ok(0)) => {}
        Ok(Err(e)) if e.is::<GroupRefused>() => return Err(e),
        Ok(Ok(partitions)) => tracing::info!(
            group = group_id,
            partitions,
            "took over the offsets committed by the former consumer group (KAFKA_GROUP_ID)"
        ),
        Ok(Err(e)) => tracing::warn!(
            group = group_id,
            error = %format!("{e:#}"),
            "cannot take over the former consumer group's offsets"
        ),
        Err(e) => tracing::warn!(group = group_id, error = %e, "offset take-over task failed"),
    }
    Ok(())
}

/// The brokers refuse this client the consumer group it is to join.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct GroupRefused(String);

/// How many partitions got the former group's offset.
fn adopt_blocking(
    settings: &KafkaSettings,
    group_id: &str,
    topics: &[String],
) -> anyhow::Result<usize> {
    let inspector = |group: &str| -> anyhow::Result<BaseConsumer<ClientLog>> {
        let mut config = group_config(settings, group);
        config.set("enable.auto.commit", "false");
        config
            .create_with_context(ClientLog)
            .map_err(redact_config_error)
            .context("cannot create a consumer")
    };
    let group = inspector(group_id)?;
    let mut partitions = TopicPartitionList::new();
    for topic in topics {
        let metadata = group
            .fetch_metadata(Some(topic), OFFSETS_TIMEOUT)
            .with_context(|| format!("cannot read the metadata of {topic}"))?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            partitions.add_partition(topic, partition.id());
        }
    }
    let committed = group
        .committed_offsets(partitions, OFFSETS_TIMEOUT)
        .map_err(|e| {
            // A refused group comes as an error event, handed over by a poll.
            let _ = group.poll(Duration::ZERO);
            let code = match e.rdkafka_error_code() {
                _ if access::group_refused() => Some(RDKafkaErrorCode::GroupAuthorizationFailed),
                code => code,
            };
            let refused = code.and_then(|code| {
                access::missing_grant(code, "READ", &format!("consumer group {group_id}"))
            });
            match refused {
                Some(grant) => anyhow::Error::new(GroupRefused(grant)),
                None => anyhow::Error::new(e).context("cannot read the group's committed offsets"),
            }
        })?;
    let without_offset = only(&committed, |offset| offset == Offset::Invalid)?;
    if without_offset.count() == 0 {
        return Ok(0);
    }
    let former = inspector(&settings.group_id)?
        .committed_offsets(without_offset, OFFSETS_TIMEOUT)
        .context("cannot read the former group's committed offsets")?;
    let adopt = only(&former, |offset| matches!(offset, Offset::Offset(_)))?;
    if adopt.count() > 0 {
        group
            .commit(&adopt, CommitMode::Sync)
            .context("cannot commit the former group's offsets")?;
    }
    Ok(adopt.count())
}

/// The partitions of `list` whose offset passes `keep`, with that offset.
fn only(
    list: &TopicPartitionList,
    keep: impl Fn(Offset) -> bool,
) -> anyhow::Result<TopicPartitionList> {
    let mut kept = TopicPartitionList::new();
    for element in list.elements() {
        if keep(element.offset()) {
            kept.add_partition_offset(element.topic(), element.partition(), element.offset())?;
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn consumers_prefetch_fewer_records_than_librdkafka_unless_kafka_config_sets_it() {
        let plain = KafkaSettings::new("b:1", "g", crate::config::Topics::example());
        let prefetch = |settings: &KafkaSettings| {
            group_config(settings, "g.profiles")
                .get("queued.min.messages")
                .map(str::to_string)
        };
        assert_eq!(prefetch(&plain).as_deref(), Some("10000"));
        let chosen = KafkaSettings {
            extra: vec![("queued.min.messages".into(), Secret::new("500"))],
            ..plain
        };
        assert_eq!(prefetch(&chosen).as_deref(), Some("500"));
    }

    #[test]
    fn each_role_has_its_own_group_named_after_the_service_group() {
        assert_eq!(Role::Profiles.group_id("hcc"), "hcc.profiles");
        assert_eq!(Role::Requests.group_id("hcc"), "hcc.requests");
        assert_eq!(Role::Refresh.group_id("hcc"), "hcc.refresh");
    }
}
