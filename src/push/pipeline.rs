//! The device profile push (`CONTRACT.md` §3): Kafka events → Redis and Cassandra, in batches,
//! at least once. A batch is parsed, its rejects dead-lettered, its updates merged per device
//! and written to both stores at once; only then are its offsets stored.
//!
//! No single event may stop the stream, and no outage may skip one:
//! * a failure that is not about one event (a store or broker away, a server busy) is retried
//!   forever with backoff while the partitions are paused;
//! * a store that refuses a device for good (a key that is not a hash, a value it will not
//!   store) is tried a few times, then the batch is narrowed to the events that cause it: each
//!   event of that device is written alone, and only the ones refused alone are dead-lettered;
//! * a dead letter the dead-letter topic refuses for good is counted, logged and skipped.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::message::{Message, OwnedMessage};
use tokio_util::sync::CancellationToken;

use super::{EventSource, LastContactSink, ProfileWrites};
use crate::kafka::dead_letters::{self, DeadLetters};
use crate::observe::Metrics;
use crate::profile::event::{check_not_ahead, parse_event, parse_tombstone, Rejection};
use crate::profile::{merge, ProfileUpdate};
use crate::retry::{Failure, Retry, RetryPolicy, Wait};
use crate::stores::StoreError;

/// Batches written at once: the next batch is fetched, parsed and written while the one
/// before it is still being written, so the stores are not left idle while one batch's slowest
/// writes finish. Writes are order-independent, and offsets are stored per record
/// ([`EventSource::acknowledge`]) up to the first unfinished one, whatever order batches finish in.
/// The one exception is a device deleted by one batch and written by another: see
/// [`BatchDevices`].
pub const BATCHES_IN_FLIGHT: usize = 2;

/// Batching and retry knobs.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Most events per batch.
    pub max_batch: usize,
    /// Backoff of the retries while the stores or the broker are away (forever).
    pub retry: RetryPolicy,
    /// Writes of a device a store refuses before its events are dead-lettered.
    pub refusals_before_dead_letter: u32,
    /// `PROFILE_MAX_FUTURE_SECS`.
    pub max_future: Duration,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            max_batch: 2000,
            retry: RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5)),
            refusals_before_dead_letter: 3,
            max_future: Duration::from_secs(86_400),
        }
    }
}

pub struct ProfilePipeline {
    pub consumer: Box<dyn EventSource>,
    pub stores: Arc<dyn ProfileWrites>,
    pub dead_letters: Arc<dyn DeadLetters>,
    pub metrics: Arc<Metrics>,
    pub settings: PipelineSettings,
    /// Told of the stored `last_contact`s once both stores have them.
    pub last_contacts: Arc<dyn LastContactSink>,
}

/// The batch was given up because the service is shutting down; its offsets stay unstored.
struct Abandoned;

/// A fetched batch, parsed.
struct Batch {
    records: Vec<OwnedMessage>,
    /// The accepted events: each one's index in `records`, and what it changes.
    accepted: Vec<(usize, ProfileUpdate)>,
    rejects: Vec<(usize, Rejection)>,
}

/// An accepted event: its record and what it changes.
type Accepted<'a> = (&'a OwnedMessage, &'a ProfileUpdate);

impl Batch {
    fn accepted(&self) -> Vec<Accepted<'_>> {
        let records = &self.records;
        self.accepted
            .iter()
            .map(|(index, update)| (&records[*index], update))
            .collect()
    }
}

/// The devices a batch writes, and those it deletes. A delete starts a new life of its device
/// (docs/architecture.md, "Deletes"): where the device's next cells go, and what a first
/// meeting of it may fold. So a batch that deletes a device another batch in flight writes, or
/// writes a device one in flight deletes, waits for the batches in flight to finish; batches
/// that share no deleted device are written at once, as batches without deletes are.
#[derive(Debug, Default)]
struct BatchDevices {
    written: HashSet<String>,
    deleted: HashSet<String>,
}

impl BatchDevices {
    fn of<'a>(updates: impl IntoIterator<Item = &'a ProfileUpdate>) -> Self {
        let mut devices = BatchDevices::default();
        for update in updates {
            if update.delete {
                devices.deleted.insert(update.device_id.clone());
            }
            devices.written.insert(update.device_id.clone());
        }
        devices
    }

    fn must_follow(&self, earlier: &BatchDevices) -> bool {
        let deletes_what_the_other_writes =
            |a: &BatchDevices, b: &BatchDevices| a.deleted.iter().any(|d| b.written.contains(d));
        deletes_what_the_other_writes(self, earlier) || deletes_what_the_other_writes(earlier, self)
    }
}

impl ProfilePipeline {
    /// Runs until `shutdown`; then finishes the batches in flight and commits the offsets
    /// stored so far.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!("device profile push running");
        let mut in_flight = FuturesUnordered::new();
        // The devices of each batch in flight, by the batch's number.
        let mut in_flight_devices: BTreeMap<u64, BatchDevices> = BTreeMap::new();
        for number in 0u64.. {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((finished, batch, processed)) = in_flight.next() => {
                    in_flight_devices.remove(&finished);
                    self.finish(batch, processed);
                }
                records = self.consumer.next_batch(self.settings.max_batch),
                    if in_flight.len() < BATCHES_IN_FLIGHT =>
                {
                    let batch = self.parse(records);
                    let devices = BatchDevices::of(batch.accepted.iter().map(|(_, update)| update));
                    if in_flight_devices.values().any(|earlier| devices.must_follow(earlier)) {
                        while let Some((_, batch, processed)) = in_flight.next().await {
                            self.finish(batch, processed);
                        }
                        in_flight_devices.clear();
                    }
                    in_flight_devices.insert(number, devices);
                    in_flight.push(self.process_owned(number, batch, &shutdown));
                }
            }
        }
        while let Some((_, batch, processed)) = in_flight.next().await {
            self.finish(batch, processed);
        }
        self.consumer.commit();
        tracing::info!("device profile push stopped");
    }

    /// [`Self::process`] of a batch it owns, so that several can be in flight.
    async fn process_owned(
        &self,
        number: u64,
        batch: Batch,
        shutdown: &CancellationToken,
    ) -> (u64, Batch, Result<(), Abandoned>) {
        let processed = self.process(&batch, shutdown).await;
        (number, batch, processed)
    }

    /// Acknowledges a processed batch; an abandoned one keeps its offsets unstored.
    fn finish(&self, batch: Batch, processed: Result<(), Abandoned>) {
        match processed {
            Ok(()) => {
                for message in &batch.records {
                    self.consumer.acknowledge(message);
                }
            }
            Err(Abandoned) => tracing::info!(
                events = batch.records.len(),
                "shutdown: in-flight batch left for the next owner"
            ),
        }
    }

    async fn process(&self, batch: &Batch, shutdown: &CancellationToken) -> Result<(), Abandoned> {
        for (index, rejection) in &batch.rejects {
            let reason = rejection.to_string();
            self.dead_letter(&batch.records[*index], &reason, rejection.kind(), shutdown)
                .await?;
        }
        let (written, refused) = self.write(&batch.accepted(), shutdown).await?;
        for (message, error) in &refused {
            self.dead_letter(message, &error.to_string(), "store_refused", shutdown)
                .await?;
        }
        self.push_last_contacts(&written, shutdown).await?;
        let now_ms = Utc::now().timestamp_millis();
        for message in &batch.records {
            if let Some(produced_ms) = message.timestamp().to_millis() {
                let seconds = (now_ms - produced_ms).max(0) as f64 / 1000.0;
                self.metrics.profile_end_to_end_seconds.observe(seconds);
            }
        }
        tracing::debug!(
            events = batch.records.len(),
            dead_lettered = batch.rejects.len() + refused.len(),
            writes = written.len(),
            "batch written to Redis and Cassandra"
        );
        Ok(())
    }

    fn parse(&self, records: Vec<OwnedMessage>) -> Batch {
        self.metrics
            .profile_events_consumed
            .inc_by(records.len() as u64);
        self.metrics
            .profile_batch_size
            .observe(records.len() as f64);
        let now = Utc::now();
        let mut accepted = Vec::with_capacity(records.len());
        let mut rejects = Vec::new();
        for (index, message) in records.iter().enumerate() {
            // Events without api_last_updated_on are ordered by their record timestamp.
            let record_version = message
                .timestamp()
                .to_millis()
                .unwrap_or_else(|| now.timestamp_millis());
            let parsed = match message.payload() {
                None => parse_tombstone(message.key(), record_version),
                Some(value) => parse_event(value, record_version).map(|event| {
                    self.metrics
                        .profile_unknown_fields
                        .inc_by(event.unknown_fields as u64);
                    event.update
                }),
            };
            let checked = parsed.and_then(|update| {
                check_not_ahead(&update, now, self.settings.max_future)?;
                Ok(update)
            });
            match checked {
                Ok(update) => accepted.push((index, update)),
                Err(rejection) => rejects.push((index, rejection)),
            }
        }
        Batch {
            records,
            accepted,
            rejects,
        }
    }

    /// Sends `message` to the dead-letter topic; a letter refused for good is counted as
    /// dropped, logged and skipped.
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        reason: &str,
        kind: &'static str,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason,
            "device profile event rejected, sent to the dead-letter topic"
        );
        let dead_letters = &self.dead_letters;
        let sent = self
            .retry(
                "dead-letter topic",
                || dead_letters.send(message, reason),
                |error| Failure::of(dead_letters::is_transient(error)),
                |_| {
                    self.metrics
                        .store_write_retries
                        .with_label_values(&["kafka_dlq"])
                        .inc()
                },
                shutdown,
            )
            .await?;
        match sent {
            Ok(()) => self
                .metrics
                .profile_events_dead_lettered
                .with_label_values(&[kind])
                .inc(),
            Err(refused) => {
                tracing::error!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    reason,
                    error = %refused,
                    "the dead-letter topic refused the event for good; event skipped"
                );
                self.metrics
                    .profile_events_dropped
                    .with_label_values(&["dead_letter_refused"])
                    .inc();
            }
        }
        Ok(())
    }

    /// Writes the accepted events; returns the merged updates of the events written, and the
    /// events a store refused for good, with why.
    async fn write<'a>(
        &self,
        accepted: &[Accepted<'a>],
        shutdown: &CancellationToken,
    ) -> Result<(Vec<ProfileUpdate>, Vec<(&'a OwnedMessage, StoreError)>), Abandoned> {
        let merged = merge::merge(accepted.iter().map(|(_, update)| (*update).clone()));
        let refused_devices = self.write_settled(&merged, shutdown).await?;
        if refused_devices.is_empty() {
            return Ok((merged, Vec::new()));
        }
        // Narrowed to the events: each event of a refused device is written alone (writes
        // are order-independent), so that only the ones refused alone are dead-lettered.
        let mut refused = Vec::new();
        let of_refused_devices = accepted
            .iter()
            .filter(|(_, update)| refused_devices.contains_key(&update.device_id));
        for (message, update) in of_refused_devices {
            let alone = merge::merge([(*update).clone()]);
            if let Some(error) = self
                .write_settled(&alone, shutdown)
                .await?
                .into_values()
                .next()
            {
                refused.push((*message, error));
            }
        }
        let written = merge::merge(
            accepted
                .iter()
                .filter(|(message, _)| !refused.iter().any(|(r, _)| std::ptr::eq(*r, *message)))
                .map(|(_, update)| (*update).clone()),
        );
        Ok((written, refused))
    }

    /// Writes `updates` until every device is written or was refused
    /// `refusals_before_dead_letter` times; returns the refused devices with the last refusal.
    async fn write_settled(
        &self,
        updates: &[ProfileUpdate],
        shutdown: &CancellationToken,
    ) -> Result<BTreeMap<String, StoreError>, Abandoned> {
        let mut refused = BTreeMap::new();
        // `None`: every update of `updates`; then only the refused ones.
        let mut again: Option<Vec<ProfileUpdate>> = None;
        for _ in 0..self.settings.refusals_before_dead_letter {
            let pending = again.as_deref().unwrap_or(updates);
            if pending.is_empty() {
                break;
            }
            let stores = &self.stores;
            let metrics = &self.metrics;
            // Failures of the whole call are not about one event (per-device refusals come
            // back in its result): retried until they pass.
            let outcomes = self
                .retry(
                    "profile stores",
                    || stores.upsert(pending),
                    |_: &StoreError| Failure::Transient,
                    |retry| {
                        metrics
                            .store_write_retries
                            .with_label_values(&[retry.error.store()])
                            .inc()
                    },
                    shutdown,
                )
                .await?
                .unwrap_or_default();
            refused.clear();
            let mut refused_updates = Vec::new();
            for (update, outcome) in pending.iter().zip(outcomes) {
                if let Err(error) = outcome {
                    refused.insert(update.device_id.clone(), error);
                    refused_updates.push(update.clone());
                }
            }
            again = Some(refused_updates);
        }
        Ok(refused)
    }

    /// Retried like the store writes, so an offset is stored only once the sink has the
    /// pushes; a sink that refuses for good (its key is not a hash) is logged and skipped:
    /// the next refresh brings the cache up to date.
    async fn push_last_contacts(
        &self,
        updates: &[ProfileUpdate],
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let sink = &self.last_contacts;
        let metrics = &self.metrics;
        let pushed = self
            .retry(
                "last_contact sink",
                || sink.push(updates),
                |error: &StoreError| Failure::of(error.is_transient()),
                |_| {
                    metrics
                        .store_write_retries
                        .with_label_values(&["redis"])
                        .inc()
                },
                shutdown,
            )
            .await?;
        if let Err(refused) = pushed {
            tracing::warn!(error = %refused, "last_contact pushes refused; left to the next refresh");
        }
        Ok(())
    }

    /// Runs `call` with the pipeline's retry policy: waits between attempts with the
    /// partitions paused and polled (so the instance stays in its group), resumes them after.
    /// Logs once when failures start and once when they end. `Ok(Err)`: failed for good.
    async fn retry<T, E, Fut>(
        &self,
        what: &'static str,
        call: impl FnMut() -> Fut,
        classify: impl Fn(&E) -> Failure,
        mut on_retry: impl FnMut(&Retry<'_, E>),
        shutdown: &CancellationToken,
    ) -> Result<Result<T, E>, Abandoned>
    where
        E: Display,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut paused = Paused {
            ingress: self.consumer.as_ref(),
            waits: 0,
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Err(Abandoned),
            result = self.settings.retry.run(
                call,
                classify,
                |retry| {
                    on_retry(retry);
                    if retry.failures == 1 {
                        tracing::error!(what, error = %retry.error, "write failed; pausing partitions and retrying until it succeeds");
                    }
                },
                &mut paused,
            ) => result,
        };
        if paused.waits > 0 {
            self.consumer.resume();
            tracing::warn!(
                what,
                failures = paused.waits,
                "writes succeed again; partitions resumed"
            );
        }
        Ok(result)
    }
}

/// Waits between attempts by polling the paused partitions.
struct Paused<'a> {
    ingress: &'a dyn EventSource,
    waits: u32,
}

impl Wait for &mut Paused<'_> {
    fn wait(&mut self, delay: Duration) -> impl Future<Output = ()> + Send {
        self.waits += 1;
        self.ingress.poll_while_paused(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(updates: &[(&str, bool)]) -> BatchDevices {
        let updates: Vec<ProfileUpdate> = updates
            .iter()
            .map(|(device_id, delete)| {
                let mut update = ProfileUpdate::delete(device_id.to_string(), 1);
                update.delete = *delete;
                update
            })
            .collect();
        BatchDevices::of(&updates)
    }

    #[test]
    fn only_a_device_deleted_by_one_batch_and_written_by_the_other_orders_them() {
        let writes_d1 = batch(&[("d1", false), ("d2", false)]);
        let deletes_d1 = batch(&[("d1", true), ("d3", false)]);
        let deletes_d4 = batch(&[("d4", true), ("d3", false)]);
        assert!(deletes_d1.must_follow(&writes_d1));
        assert!(writes_d1.must_follow(&deletes_d1));
        assert!(deletes_d1.must_follow(&deletes_d1));
        assert!(!deletes_d4.must_follow(&writes_d1));
        assert!(!writes_d1.must_follow(&deletes_d4));
        // Batches without deletes share devices freely: writes are order-independent.
        assert!(!writes_d1.must_follow(&writes_d1));
    }
}
