//! The device profile push (`CONTRACT.md` §3): Kafka events → Redis and Cassandra, in batches,
//! at least once. A batch is parsed, its rejects dead-lettered, its updates merged per device
//! and written to both stores at once; only then are its offsets stored. Failures are retried
//! with capped backoff while the partitions are paused, forever or until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::message::{Message, OwnedMessage};
use tokio_util::sync::CancellationToken;

use super::event::{parse_event, Rejection};
use super::{merge, LastContactSink, ProfileUpdate};
use crate::kafka::dead_letters::DeadLetters;
use crate::kafka::ingress::Ingress;
use crate::observe::Metrics;
use crate::stores::{ProfileStores, StoreError};

/// Batching and retry knobs.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Most events per batch.
    pub max_batch: usize,
    /// How long a batch waits for more events after its first.
    pub linger: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            max_batch: 2000,
            linger: Duration::from_millis(50),
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

pub struct ProfilePipeline {
    pub consumer: Ingress,
    pub stores: ProfileStores,
    pub dead_letters: Arc<dyn DeadLetters>,
    pub metrics: Arc<Metrics>,
    pub settings: PipelineSettings,
    /// Told of the stored `last_contact`s once both stores have them.
    pub last_contacts: Arc<dyn LastContactSink>,
}

/// The batch was given up because the service is shutting down; its offsets stay unstored.
struct Abandoned;

impl ProfilePipeline {
    /// Runs until `shutdown`; then commits the offsets stored so far.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!("device profile push running");
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                batch = self.consumer.next_batch(self.settings.max_batch, self.settings.linger) => batch,
            };
            if self.process(&batch, &shutdown).await.is_err() {
                tracing::info!(
                    events = batch.len(),
                    "shutdown: in-flight batch left for the next owner"
                );
                break;
            }
            for message in &batch {
                self.consumer.acknowledge(message);
            }
        }
        self.consumer.commit();
        tracing::info!("device profile push stopped");
    }

    async fn process(
        &self,
        batch: &[OwnedMessage],
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        self.metrics
            .profile_events_consumed
            .inc_by(batch.len() as u64);
        self.metrics.profile_batch_size.observe(batch.len() as f64);
        let (updates, rejects) = self.parse(batch);
        for (message, rejection) in &rejects {
            self.dead_letter(message, rejection, shutdown).await?;
        }
        let merged = merge::merge(updates);
        let devices = merged.len();
        self.write(&merged, shutdown).await?;
        self.push_last_contacts(&merged, shutdown).await?;
        let now_ms = Utc::now().timestamp_millis();
        for message in batch {
            if let Some(produced_ms) = message.timestamp().to_millis() {
                let seconds = (now_ms - produced_ms).max(0) as f64 / 1000.0;
                self.metrics.profile_end_to_end_seconds.observe(seconds);
            }
        }
        tracing::debug!(
            events = batch.len(),
            dead_lettered = rejects.len(),
            writes = devices,
            "batch written to Redis and Cassandra"
        );
        Ok(())
    }

    fn parse<'a>(
        &self,
        batch: &'a [OwnedMessage],
    ) -> (Vec<ProfileUpdate>, Vec<(&'a OwnedMessage, Rejection)>) {
        let mut updates = Vec::with_capacity(batch.len());
        let mut rejects = Vec::new();
        for message in batch {
            // Events without api_last_updated_on are ordered by their record timestamp.
            let record_version = message
                .timestamp()
                .to_millis()
                .unwrap_or_else(|| Utc::now().timestamp_millis());
            match parse_event(message.payload().unwrap_or_default(), record_version) {
                Ok(event) => {
                    self.metrics
                        .profile_unknown_fields
                        .inc_by(event.unknown_fields as u64);
                    updates.push(event.update);
                }
                Err(rejection) => rejects.push((message, rejection)),
            }
        }
        (updates, rejects)
    }

    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        rejection: &Rejection,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let reason = rejection.to_string();
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason = %reason,
            "device profile event rejected, sent to the dead-letter topic"
        );
        let dead_letters = self.dead_letters.clone();
        retry(
            &self.consumer,
            &self.settings,
            shutdown,
            "dead-letter topic",
            || dead_letters.send(message, &reason),
            |_| {
                self.metrics
                    .store_write_retries
                    .with_label_values(&["kafka_dlq"])
                    .inc()
            },
        )
        .await?;
        self.metrics
            .profile_events_dead_lettered
            .with_label_values(&[rejection.kind()])
            .inc();
        Ok(())
    }

    async fn write(
        &self,
        updates: &[ProfileUpdate],
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        if updates.is_empty() {
            return Ok(());
        }
        let stores = &self.stores;
        let metrics = &self.metrics;
        retry(
            &self.consumer,
            &self.settings,
            shutdown,
            "profile stores",
            || stores.upsert(updates),
            |error: &StoreError| {
                let store = match error {
                    StoreError::Redis(_) => "redis",
                    StoreError::Cassandra(_) => "cassandra",
                };
                metrics
                    .store_write_retries
                    .with_label_values(&[store])
                    .inc();
            },
        )
        .await
        .map(|_| ())
    }

    /// Retried like the store writes, so an offset is stored only once the cache has the push.
    async fn push_last_contacts(
        &self,
        updates: &[ProfileUpdate],
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let sink = &self.last_contacts;
        let metrics = &self.metrics;
        retry(
            &self.consumer,
            &self.settings,
            shutdown,
            "last_contact sink",
            || sink.push(updates),
            |_: &StoreError| {
                metrics
                    .store_write_retries
                    .with_label_values(&["redis"])
                    .inc()
            },
        )
        .await
    }
}

/// Runs `attempt` until it succeeds, with capped exponential backoff. Between attempts the
/// consumer's partitions are paused and polled (so the instance stays in its group); they are
/// resumed after a success. Logs once when the outage starts and once when it ends.
async fn retry<T, E, F, Fut>(
    consumer: &Ingress,
    settings: &PipelineSettings,
    shutdown: &CancellationToken,
    what: &str,
    mut attempt: F,
    mut on_failure: impl FnMut(&E),
) -> Result<T, Abandoned>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = settings.first_backoff;
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Err(Abandoned),
            result = attempt() => result,
        };
        match result {
            Ok(value) => {
                if failures > 0 {
                    consumer.resume();
                    tracing::warn!(what, failures, "writes succeed again; partitions resumed");
                }
                return Ok(value);
            }
            Err(error) => {
                on_failure(&error);
                if failures == 0 {
                    tracing::error!(what, error = %error, "write failed; pausing partitions and retrying until it succeeds");
                }
                failures += 1;
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(Abandoned),
                    _ = consumer.poll_while_paused(backoff) => {}
                }
                backoff = (backoff * 2).min(settings.max_backoff);
            }
        }
    }
}
