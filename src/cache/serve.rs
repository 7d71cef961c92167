//! Answers cache requests from `TOPIC_GET` (`CONTRACT.md` §5).
//!
//! Requests are answered concurrently (at most [`MAX_IN_FLIGHT`] at once), so one slow or huge
//! request does not hold up the others. Offsets are stored at-least-once: only after every
//! reply value of a request was delivered, or the request was counted as unanswerable, and
//! never past an earlier request of the same partition that is still being answered.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::join_all;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::get::{parse_request, Reply};
use super::keys::CacheKeys;
use super::snapshot::CacheReader;
use crate::config::{KafkaSettings, ServeSettings};
use crate::kafka::client_config;
use crate::kafka::consumer::GroupLog;
use crate::kafka::request_reply::{
    correlation_headers, reply_correlation_id, ReplyRoute, RequestHeaders, RouteError,
};
use crate::observe::Metrics;
use crate::stores::RedisStore;

/// Requests answered at the same time by one instance.
pub const MAX_IN_FLIGHT: usize = 64;
/// Reply bytes being rendered or delivered at once by one instance. Without this bound, many
/// concurrent unfiltered requests on a large cache each hold a full copy of it (the benchmark
/// saw 1.4 GB for 32 clients at 100k devices); with it they queue for their turn instead.
const REPLY_BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// The budget's unit: one semaphore permit per KiB.
const BUDGET_UNIT: usize = 1024;
const BUDGET_UNITS: u32 = (REPLY_BUDGET_BYTES / BUDGET_UNIT) as u32;
/// How long a reply may wait for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a consumer error, so a broker outage does not spin the loop.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_millis(500);
/// At shutdown, how long requests in flight may still take (their replies wait for delivery,
/// which lasts as long as the broker is unreachable). The rest are abandoned uncommitted and
/// answered again after a restart, so a stop stays within an orchestrator's grace period.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// The request consumer and what answering needs.
pub struct GetServer {
    consumer: StreamConsumer<GroupLog>,
    producer: FutureProducer,
    reader: CacheReader,
    metrics: Arc<Metrics>,
    serve: ServeSettings,
    default_reply_topic: String,
    offsets: Mutex<OffsetTracker>,
    reply_budget: Arc<Semaphore>,
}

/// A request copied out of the consumer's buffer, so it can be answered on its own task.
struct Incoming {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: RequestHeaders,
}

impl Incoming {
    fn copy(message: &BorrowedMessage<'_>) -> Self {
        Incoming {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: RequestHeaders::read(message.headers()),
        }
    }
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("reply not delivered to {topic}: {error}")]
    Delivery { topic: String, error: KafkaError },
}

impl Unanswered {
    fn reason(&self) -> &'static str {
        match self {
            Unanswered::Route(route) => route.reason(),
            Unanswered::Delivery { .. } => "delivery_failed",
        }
    }
}

impl GetServer {
    /// Subscribes to `TOPIC_GET` in the service's group. A group without committed offsets
    /// starts from the earliest request, so requests sent while the service was first starting
    /// are answered too.
    pub fn new(
        kafka: &KafkaSettings,
        serve: ServeSettings,
        producer: FutureProducer,
        redis: &RedisStore,
        keys: CacheKeys,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer<GroupLog> = client_config(kafka)
            .set("group.id", &kafka.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create_with_context(GroupLog)
            .map_err(crate::kafka::redact_config_error)
            .context("cannot create the cache request consumer")?;
        consumer
            .subscribe(&[&kafka.topics.get])
            .with_context(|| format!("cannot subscribe to {}", kafka.topics.get))?;
        Ok(GetServer {
            consumer,
            producer,
            reader: CacheReader::new(redis.connection(), keys),
            metrics,
            serve,
            default_reply_topic: kafka.topics.reply.clone(),
            offsets: Mutex::new(OffsetTracker::default()),
            reply_budget: Arc::new(Semaphore::new(BUDGET_UNITS as usize)),
        })
    }

    /// Answers requests until `shutdown`; then finishes the requests in flight and commits.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut in_flight = JoinSet::new();
        while let Some((message, slot)) = self.next_request(&slots, &shutdown).await {
            self.offsets_lock().begin(message.partition, message.offset);
            in_flight.spawn(self.clone().handle(message, slot));
            while let Some(done) = in_flight.try_join_next() {
                log_panic(done);
            }
        }
        let abandoned = finish_within(&mut in_flight, SHUTDOWN_GRACE).await;
        if abandoned > 0 {
            tracing::warn!(
                requests = abandoned,
                "shutdown: requests still waiting for their replies were abandoned uncommitted; \
                 they are answered again after a restart"
            );
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            // NoOffset: nothing was stored since the last automatic commit.
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "final commit of the cache request offsets failed")
            }
        }
        tracing::info!("cache requests stopped");
    }

    /// The next request and a free slot for it; `None` on shutdown.
    async fn next_request(
        &self,
        slots: &Arc<Semaphore>,
        shutdown: &CancellationToken,
    ) -> Option<(Incoming, OwnedSemaphorePermit)> {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return None,
            slot = slots.clone().acquire_owned() => slot.ok()?,
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                received = self.consumer.recv() => match received {
                    Ok(message) => return Some((Incoming::copy(&message), slot)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read cache requests");
                        tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
                    }
                },
            }
        }
    }

    async fn handle(self: Arc<Self>, request: Incoming, _slot: OwnedSemaphorePermit) {
        let started = Instant::now();
        match self.answer(&request).await {
            Ok(status) => {
                let status = status.to_string();
                self.metrics
                    .get_requests
                    .with_label_values(&[&status])
                    .inc();
                self.metrics
                    .get_duration_seconds
                    .with_label_values(&[&status])
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(unanswered) => {
                tracing::warn!(
                    partition = request.partition,
                    offset = request.offset,
                    error = %unanswered,
                    "cache request left unanswered"
                );
                self.metrics
                    .get_failures
                    .with_label_values(&[unanswered.reason()])
                    .inc();
            }
        }
        self.done(&request);
    }

    /// Replies to one request; returns the status it was answered with.
    async fn answer(&self, request: &Incoming) -> Result<u16, Unanswered> {
        let route = ReplyRoute::of(&request.headers, &self.default_reply_topic)?;
        let (request_id, status, values, _budget) = self.reply_values(request).await;
        let correlation_id = reply_correlation_id(&request.headers, &request_id);
        let deliveries = values.iter().map(|value| {
            let mut record = FutureRecord::to(&route.topic)
                .payload(value)
                .headers(correlation_headers(correlation_id.as_deref()));
            if let Some(key) = &request.key {
                record = record.key(key);
            }
            if let Some(partition) = route.partition {
                record = record.partition(partition);
            }
            self.producer.send(record, QUEUE_TIMEOUT)
        });
        for delivered in join_all(deliveries).await {
            delivered.map_err(|(error, _)| Unanswered::Delivery {
                topic: route.topic.clone(),
                error,
            })?;
        }
        tracing::debug!(%request_id, status, values = values.len(), "cache request answered");
        Ok(status)
    }

    /// The request's id, the reply status, the rendered reply values and their share of the
    /// reply budget, to hold until they are delivered.
    async fn reply_values(
        &self,
        request: &Incoming,
    ) -> (Value, u16, Vec<Vec<u8>>, Option<OwnedSemaphorePermit>) {
        let max_bytes = self.serve.reply_max_bytes;
        let parsed = match parse_request(request.value.as_deref(), self.serve.timezone) {
            Ok(parsed) => parsed,
            Err(rejected) => {
                let values = Reply::rejected(&rejected).render(&rejected.request_id, max_bytes);
                return (rejected.request_id, 400, values, None);
            }
        };
        let cache = self
            .reader
            .snapshot()
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "cannot read the customer cache"))
            .ok();
        let reply = match &cache {
            Some(cache) => Reply::answer(&parsed, cache.as_deref()),
            None => Reply::unavailable(),
        };
        let budget = self.reserve(reply.body_bytes()).await;
        let values = reply.render(&parsed.request_id, max_bytes);
        (parsed.request_id, reply.status, values, budget)
    }

    /// Waits until `bytes` fit in the reply budget (a reply larger than the whole budget waits
    /// for all of it). `None` only if the budget was closed, which never happens.
    async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        // At most BUDGET_UNITS, so the cast cannot truncate.
        let units = bytes.div_ceil(BUDGET_UNIT).clamp(1, BUDGET_UNITS as usize) as u32;
        self.reply_budget
            .clone()
            .acquire_many_owned(units)
            .await
            .ok()
    }

    /// Marks a request finished and stores the offset up to which every request is finished.
    fn done(&self, request: &Incoming) {
        let Some(offset) = self
            .offsets_lock()
            .complete(request.partition, request.offset)
        else {
            return;
        };
        // librdkafka stores `offset + 1`: the next request to read.
        if let Err(e) = self
            .consumer
            .store_offset(&request.topic, request.partition, offset)
        {
            // The partition was revoked meanwhile: its new owner answers from the committed
            // offset again (at-least-once).
            tracing::debug!(error = %e, partition = request.partition, "offset not stored");
        }
    }

    fn offsets_lock(&self) -> std::sync::MutexGuard<'_, OffsetTracker> {
        // The tracker holds plain maps; a panic elsewhere cannot leave them half-updated.
        self.offsets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Waits up to `grace` for the tasks to finish, then aborts the rest; returns how many were
/// aborted.
async fn finish_within(tasks: &mut JoinSet<()>, grace: Duration) -> usize {
    let all_done = tokio::time::timeout(grace, async {
        while let Some(done) = tasks.join_next().await {
            log_panic(done);
        }
    })
    .await;
    if all_done.is_ok() {
        return 0;
    }
    let abandoned = tasks.len();
    tasks.shutdown().await;
    abandoned
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "a cache request task failed");
    }
}

/// The offsets of requests being answered, per partition.
#[derive(Debug, Default)]
struct OffsetTracker {
    /// offset → finished?
    partitions: HashMap<i32, BTreeMap<i64, bool>>,
}

impl OffsetTracker {
    fn begin(&mut self, partition: i32, offset: i64) {
        self.partitions
            .entry(partition)
            .or_default()
            .insert(offset, false);
    }

    /// Marks `offset` finished; returns the highest offset below which every request of the
    /// partition is finished, when that advanced.
    fn complete(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let pending = self.partitions.get_mut(&partition)?;
        *pending.get_mut(&offset)? = true;
        let mut finished = None;
        while let Some(first) = pending.first_entry() {
            if !*first.get() {
                break;
            }
            finished = Some(*first.key());
            first.remove();
        }
        finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_requests_up_to_the_grace_then_abandons_the_rest() {
        let mut tasks = JoinSet::new();
        tasks.spawn(tokio::time::sleep(Duration::from_secs(1)));
        tasks.spawn(tokio::time::sleep(Duration::from_secs(3600)));
        tasks.spawn(std::future::pending::<()>());
        let started = tokio::time::Instant::now();
        assert_eq!(finish_within(&mut tasks, SHUTDOWN_GRACE).await, 2);
        assert_eq!(started.elapsed(), SHUTDOWN_GRACE);
        assert!(tasks.is_empty());

        tasks.spawn(tokio::time::sleep(Duration::from_secs(1)));
        let started = tokio::time::Instant::now();
        assert_eq!(finish_within(&mut tasks, SHUTDOWN_GRACE).await, 0);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[test]
    fn offsets_advance_only_over_finished_requests() {
        let mut tracker = OffsetTracker::default();
        for offset in 10..14 {
            tracker.begin(0, offset);
        }
        tracker.begin(1, 3);
        assert_eq!(tracker.complete(0, 11), None, "10 is still in flight");
        assert_eq!(tracker.complete(0, 13), None);
        assert_eq!(tracker.complete(0, 10), Some(11));
        assert_eq!(tracker.complete(1, 3), Some(3));
        assert_eq!(tracker.complete(0, 12), Some(13));
        assert_eq!(tracker.complete(0, 12), None, "already finished");
        assert_eq!(tracker.complete(7, 1), None, "unknown partition");
    }
}
