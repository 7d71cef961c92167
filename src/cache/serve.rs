//! Answers cache requests from `TOPIC_GET` (`CONTRACT.md` §5).
//!
//! Requests are answered concurrently (at most [`MAX_IN_FLIGHT`] at once), so one slow or huge
//! request does not hold up the others. A request is acknowledged to the ingress (its offset
//! may then be committed) only after every reply value was delivered, or the request was
//! counted as unanswerable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot::Canceled;
use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::get::{parse_request, Reply};
use super::keys::CacheKeys;
use super::reader::CacheReader;
use super::snapshot::ChangeId;
use crate::config::{KafkaSettings, ServeSettings};
use crate::kafka::access;
use crate::kafka::ingress::{Ingress, Role};
use crate::kafka::request_reply::{
    correlation_headers, reply_correlation_id, ReplyRoute, ReplyTopics, RequestHeaders, RouteError,
};
use crate::kafka::ServiceProducer;
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
/// At shutdown, how long requests in flight may still take (their replies wait for delivery,
/// which lasts as long as the broker is unreachable). The rest are abandoned uncommitted and
/// answered again after a restart, so a stop stays within an orchestrator's grace period.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Between two attempts to queue a reply value while the producer's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(100);

/// A reply as [`GetServer::reply_values`] makes it.
struct ReplyValues {
    request_id: Value,
    status: u16,
    /// The start of every value.
    head: String,
    /// What follows the head in each value.
    parts: Arc<Vec<Vec<u8>>>,
    /// The reply's share of the reply budget, held until it is delivered.
    _budget: Option<OwnedSemaphorePermit>,
}

/// The request consumer and what answering needs.
pub struct GetServer {
    requests: Ingress,
    producer: ServiceProducer,
    reader: CacheReader,
    metrics: Arc<Metrics>,
    serve: ServeSettings,
    reply_topics: ReplyTopics,
    reply_budget: Arc<Semaphore>,
    unfiltered: UnfilteredReplies,
}

/// The unfiltered reply of the snapshot last asked for, rendered once after the head and
/// shared by every request for it: with 100k devices that is about 23 MB each unfiltered
/// request would otherwise render again. A new snapshot (a refresh, a pushed `last_contact`)
/// replaces it.
#[derive(Default)]
struct UnfilteredReplies {
    last: tokio::sync::Mutex<Option<SharedReply>>,
}

struct SharedReply {
    key: SharedKey,
    parts: Arc<Vec<Vec<u8>>>,
}

/// What the parts of an unfiltered reply depend on (besides `REPLY_MAX_BYTES`, fixed per
/// instance): the snapshot and the length of the request's head.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SharedKey {
    generation: String,
    applied: ChangeId,
    head_bytes: usize,
}

impl UnfilteredReplies {
    /// The parts for `key`, rendered by `render` unless the last request had the same key.
    /// Requests wait for one another's rendering, so concurrent ones render it once.
    async fn parts(
        &self,
        key: SharedKey,
        render: impl FnOnce() -> Vec<Vec<u8>>,
    ) -> Arc<Vec<Vec<u8>>> {
        let mut last = self.last.lock().await;
        if let Some(shared) = last.as_ref().filter(|shared| shared.key == key) {
            return shared.parts.clone();
        }
        let parts = Arc::new(render());
        *last = Some(SharedReply {
            key,
            parts: parts.clone(),
        });
        parts
    }
}

/// A request with its reply headers read, answered on its own task.
struct Incoming {
    message: OwnedMessage,
    headers: RequestHeaders,
}

impl Incoming {
    fn read(message: OwnedMessage) -> Self {
        let headers = RequestHeaders::read(message.headers());
        Incoming { message, headers }
    }
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("reply not delivered to {topic}: {reason}")]
    Delivery { topic: String, reason: String },
}

impl Unanswered {
    fn reason(&self) -> &'static str {
        match self {
            Unanswered::Route(route) => route.reason(),
            Unanswered::Delivery { .. } => "delivery_failed",
        }
    }
}

/// A reply value the producer could not queue or deliver, naming the grant when the broker
/// refused the write.
fn undelivered(route: &ReplyRoute, error: KafkaError) -> Unanswered {
    let topic = format!("topic {}", route.topic);
    let refused = error
        .rdkafka_error_code()
        .and_then(|code| access::missing_grant(code, "WRITE", &topic));
    Unanswered::Delivery {
        topic: route.topic.clone(),
        reason: refused.unwrap_or_else(|| error.to_string()),
    }
}

impl GetServer {
    /// Subscribes to `TOPIC_GET` in the requests group. A group without committed offsets
    /// starts from the earliest request, so requests sent while the service was first starting
    /// are answered too.
    pub async fn new(
        kafka: &KafkaSettings,
        serve: ServeSettings,
        producer: ServiceProducer,
        redis: &RedisStore,
        keys: CacheKeys,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        Ok(GetServer {
            requests: Ingress::subscribe(
                kafka,
                Role::Requests,
                &[&kafka.topics.get],
                metrics.clone(),
            )
            .await?,
            producer,
            reader: CacheReader::new(redis.connection(), keys, metrics.clone()),
            metrics,
            reply_topics: ReplyTopics {
                default: kafka.topics.reply.clone(),
                inputs: [&kafka.topics.get, &kafka.topics.refresh]
                    .into_iter()
                    .chain(&kafka.topics.profile_updates)
                    .cloned()
                    .collect(),
                allowed: serve.reply_topics_allowed.clone(),
            },
            serve,
            reply_budget: Arc::new(Semaphore::new(BUDGET_UNITS as usize)),
            unfiltered: UnfilteredReplies::default(),
        })
    }

    /// Answers requests until `shutdown`; then finishes the requests in flight and commits.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut in_flight = JoinSet::new();
        while let Some((request, slot)) = self.next_request(&slots, &shutdown).await {
            in_flight.spawn(self.clone().handle(request, slot));
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
        self.requests.commit();
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
        tokio::select! {
            _ = shutdown.cancelled() => None,
            message = self.requests.recv() => Some((Incoming::read(message), slot)),
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
                    partition = request.message.partition(),
                    offset = request.message.offset(),
                    error = %unanswered,
                    "cache request left unanswered"
                );
                self.metrics
                    .get_failures
                    .with_label_values(&[unanswered.reason()])
                    .inc();
            }
        }
        self.requests.acknowledge(&request.message);
    }

    /// Replies to one request; returns the status it was answered with.
    async fn answer(&self, request: &Incoming) -> Result<u16, Unanswered> {
        let route = ReplyRoute::of(&request.headers, &self.reply_topics)?;
        let ReplyValues {
            request_id,
            status,
            head,
            parts,
            _budget,
        } = self.reply_values(request).await;
        let correlation_id = reply_correlation_id(&request.headers, &request_id);
        let queued_at = Instant::now();
        let mut deliveries = Vec::with_capacity(parts.len());
        for part in parts.iter() {
            // Each value is made just before it is queued and dropped once the producer has
            // copied it, so a reply is held once (by the producer) rather than twice.
            let value = [head.as_bytes(), part.as_slice()].concat();
            let queued = self
                .enqueue(&route, request, correlation_id.as_deref(), &value)
                .await;
            deliveries.push(queued.map_err(|error| undelivered(&route, error))?);
        }
        for delivered in join_all(deliveries).await {
            match delivered {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(undelivered(&route, error)),
                Err(Canceled) => {
                    return Err(undelivered(&route, KafkaError::Canceled));
                }
            }
        }
        self.metrics
            .get_delivery_seconds
            .observe(queued_at.elapsed().as_secs_f64());
        tracing::debug!(%request_id, status, values = parts.len(), "cache request answered");
        Ok(status)
    }

    /// Queues one reply value, waiting up to [`QUEUE_TIMEOUT`] while the producer's queue is
    /// full; the delivery is awaited separately.
    async fn enqueue(
        &self,
        route: &ReplyRoute,
        request: &Incoming,
        correlation_id: Option<&[u8]>,
        value: &[u8],
    ) -> Result<DeliveryFuture, KafkaError> {
        let queue_full = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
        let began = Instant::now();
        let mut record = FutureRecord::to(&route.topic)
            .payload(value)
            .headers(correlation_headers(correlation_id));
        if let Some(key) = request.message.key() {
            record = record.key(key);
        }
        if let Some(partition) = route.partition {
            record = record.partition(partition);
        }
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((error, refused)) if error == queue_full && began.elapsed() < QUEUE_TIMEOUT => {
                    record = refused;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// The reply to `request`, with its share of the reply budget.
    async fn reply_values(&self, request: &Incoming) -> ReplyValues {
        let max_bytes = self.serve.reply_max_bytes;
        let parsed = match parse_request(request.message.payload(), self.serve.timezone) {
            Ok(parsed) => parsed,
            Err(rejected) => {
                let reply = Reply::rejected(&rejected);
                let head = reply.head(&rejected.request_id);
                let parts = Arc::new(reply.render_after_head(head.len(), max_bytes));
                return ReplyValues {
                    request_id: rejected.request_id,
                    status: 400,
                    head,
                    parts,
                    _budget: None,
                };
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
        let head = reply.head(&parsed.request_id);
        let render = || reply.render_after_head(head.len(), max_bytes);
        let parts = match (&cache, parsed.filter) {
            (Some(Some(snapshot)), None) => {
                let key = SharedKey {
                    generation: snapshot.generation().to_string(),
                    applied: snapshot.applied(),
                    head_bytes: head.len(),
                };
                self.unfiltered.parts(key, render).await
            }
            _ => Arc::new(render()),
        };
        ReplyValues {
            request_id: parsed.request_id,
            status: reply.status,
            head,
            parts,
            _budget: budget,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unfiltered_reply_is_rendered_once_per_snapshot_and_head_length() {
        let replies = UnfilteredReplies::default();
        let key = |generation: &str, head_bytes| SharedKey {
            generation: generation.into(),
            applied: ChangeId::default(),
            head_bytes,
        };
        let renders = std::sync::atomic::AtomicUsize::new(0);
        let render = |text: &str| {
            renders.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            vec![text.as_bytes().to_vec()]
        };
        assert_eq!(*replies.parts(key("g1", 40), || render("a")).await, [b"a"]);
        assert_eq!(*replies.parts(key("g1", 40), || render("b")).await, [b"a"]);
        assert_eq!(renders.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(*replies.parts(key("g1", 41), || render("c")).await, [b"c"]);
        assert_eq!(*replies.parts(key("g2", 41), || render("d")).await, [b"d"]);
        assert_eq!(renders.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

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
}
