//! The push pipeline without servers: events from a list of batches, a store that refuses
//! chosen events, dead letters kept in memory. What is asserted is what a user sees: what the
//! stores hold, what reaches the dead-letter topic with which reason, which offsets are done.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage, Timestamp};
use tokio_util::sync::CancellationToken;

use super::pipeline::{PipelineSettings, ProfilePipeline};
use super::{EventSource, LastContactSink, ProfileWrites};
use crate::kafka::dead_letters::DeadLetters;
use crate::observe::Metrics;
use crate::profile::{ProfileUpdate, TextField};
use crate::retry::RetryPolicy;
use crate::stores::profiles::Upserted;
use crate::stores::{CassandraCause, StoreError};

/// The city a [`Store`] refuses for good, as a store refuses a value it will not hold.
const REFUSED_CITY: &str = "refused";

/// Serves its batches, then waits forever; records what the pipeline did with the partitions.
#[derive(Default)]
struct Batches {
    batches: Mutex<VecDeque<Vec<OwnedMessage>>>,
    acknowledged: Mutex<Vec<i64>>,
    paused_waits: AtomicU32,
    resumes: AtomicU32,
    commits: AtomicU32,
}

impl EventSource for Arc<Batches> {
    fn next_batch(&self, _max: usize) -> BoxFuture<'_, Vec<OwnedMessage>> {
        // Taken when first polled, as the consumer's stream does: the pipeline makes this
        // future on every turn and drops it unpolled while its batches in flight are full.
        Box::pin(async move {
            let next = self.batches.lock().unwrap().pop_front();
            match next {
                Some(batch) => batch,
                None => futures::future::pending().await,
            }
        })
    }
    fn acknowledge(&self, record: &OwnedMessage) {
        self.acknowledged.lock().unwrap().push(record.offset());
    }
    fn poll_while_paused(&self, delay: Duration) -> BoxFuture<'_, ()> {
        self.paused_waits.fetch_add(1, Ordering::SeqCst);
        Box::pin(tokio::time::sleep(delay))
    }
    fn resume(&self) {
        self.resumes.fetch_add(1, Ordering::SeqCst);
    }
    fn commit(&self) {
        self.commits.fetch_add(1, Ordering::SeqCst);
    }
}

/// Holds what it is given, refuses for good every update whose city is [`REFUSED_CITY`], and
/// fails whole calls while `outage` lasts (a store away).
#[derive(Default)]
struct Store {
    written: Mutex<Vec<ProfileUpdate>>,
    outage: AtomicU32,
    calls: AtomicU32,
    /// How long each call takes.
    write_time: Duration,
    /// "start" and "end" of each call, with its devices ("-d1": the delete of d1).
    calls_log: Mutex<Vec<String>>,
}

impl ProfileWrites for Arc<Store> {
    fn upsert<'a>(
        &'a self,
        updates: &'a [ProfileUpdate],
    ) -> BoxFuture<'a, Result<Vec<Upserted>, StoreError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let away = self
            .outage
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        Box::pin(async move {
            if away {
                let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                return Err(StoreError::Redis(refused.into()));
            }
            let devices: Vec<String> = updates
                .iter()
                .map(|update| {
                    format!(
                        "{}{}",
                        if update.delete { "-" } else { "" },
                        update.device_id
                    )
                })
                .collect();
            let devices = devices.join(",");
            self.calls_log
                .lock()
                .unwrap()
                .push(format!("start {devices}"));
            tokio::time::sleep(self.write_time).await;
            self.calls_log
                .lock()
                .unwrap()
                .push(format!("end {devices}"));
            let outcomes = updates
                .iter()
                .map(|update| {
                    if update.text.get(&TextField::City).map(String::as_str) == Some(REFUSED_CITY) {
                        return Err(StoreError::cassandra(
                            "cannot write device_profile",
                            CassandraCause::Unwritable("a city it will not hold".into()),
                        ));
                    }
                    self.written.lock().unwrap().push(update.clone());
                    Ok(None)
                })
                .collect();
            Ok(outcomes)
        })
    }
}

impl Store {
    /// The cities written for `device_id`, in order.
    fn cities_of(&self, device_id: &str) -> Vec<String> {
        self.written
            .lock()
            .unwrap()
            .iter()
            .filter(|update| update.device_id == device_id)
            .filter_map(|update| update.text.get(&TextField::City).cloned())
            .collect()
    }
}

/// The dead-letter topic: keeps (offset, reason), or refuses every letter for good.
#[derive(Default)]
struct Letters {
    sent: Mutex<Vec<(i64, String)>>,
    refuse: bool,
}

impl DeadLetters for Arc<Letters> {
    fn send<'a>(
        &'a self,
        record: &'a OwnedMessage,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), KafkaError>> {
        Box::pin(async move {
            if self.refuse {
                return Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::TopicAuthorizationFailed,
                ));
            }
            self.sent
                .lock()
                .unwrap()
                .push((record.offset(), reason.to_string()));
            Ok(())
        })
    }
}

struct NoCache;

impl LastContactSink for NoCache {
    fn push<'a>(&'a self, _: &'a [ProfileUpdate]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A record at `offset` of partition 0; `None` is a tombstone.
fn record(offset: i64, key: &str, value: Option<&str>) -> OwnedMessage {
    OwnedMessage::new(
        value.map(|text| text.as_bytes().to_vec()),
        Some(key.as_bytes().to_vec()),
        "profile.updates".into(),
        Timestamp::CreateTime(1_700_000_000_000 + offset),
        0,
        offset,
        None,
    )
}

/// An event of `device_id` setting its city, at version `version` (ms).
fn event(offset: i64, device_id: &str, city: &str, version: i64) -> OwnedMessage {
    let json =
        format!(r#"{{"device_id":"{device_id}","city":"{city}","api_last_updated_on":{version}}}"#);
    record(offset, device_id, Some(&json))
}

struct Run {
    source: Arc<Batches>,
    store: Arc<Store>,
    letters: Arc<Letters>,
    metrics: Arc<Metrics>,
}

impl Run {
    fn new(batches: Vec<Vec<OwnedMessage>>, store: Store, letters: Letters) -> Self {
        let source = Batches::default();
        source.batches.lock().unwrap().extend(batches);
        Run {
            source: Arc::new(source),
            store: Arc::new(store),
            letters: Arc::new(letters),
            metrics: Arc::new(Metrics::new().unwrap()),
        }
    }

    /// Runs the pipeline until `records` offsets are acknowledged (or 10 s passed), then shuts
    /// it down as SIGTERM does.
    async fn until_acknowledged(&self, records: usize) {
        self.until(|run| run.acknowledged().len() >= records).await
    }

    /// Runs the pipeline until `done` (or 10 s passed), then shuts it down as SIGTERM does.
    async fn until(&self, done: impl Fn(&Self) -> bool) {
        let pipeline = ProfilePipeline {
            consumer: Box::new(self.source.clone()),
            stores: Arc::new(self.store.clone()),
            dead_letters: Arc::new(self.letters.clone()),
            metrics: self.metrics.clone(),
            settings: PipelineSettings {
                retry: RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(5)),
                ..PipelineSettings::default()
            },
            last_contacts: Arc::new(NoCache),
        };
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(pipeline.run(shutdown.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(self) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shutdown.cancel();
        running.await.unwrap();
    }

    fn acknowledged(&self) -> Vec<i64> {
        let mut offsets = self.source.acknowledged.lock().unwrap().clone();
        offsets.sort_unstable();
        offsets
    }

    fn dead_letters(&self) -> Vec<(i64, String)> {
        self.letters.sent.lock().unwrap().clone()
    }

    fn dead_lettered(&self, kind: &str) -> u64 {
        self.metrics
            .profile_events_dead_lettered
            .with_label_values(&[kind])
            .get()
    }
}

#[tokio::test]
async fn a_refused_batch_is_narrowed_to_the_event_at_fault() {
    let run = Run::new(
        vec![vec![
            event(0, "d1", "Pune", 1),
            event(1, "d2", "Goa", 1),
            event(2, "d2", REFUSED_CITY, 2),
            event(3, "d3", "Agra", 1),
        ]],
        Store::default(),
        Letters::default(),
    );
    run.until_acknowledged(4).await;

    assert_eq!(run.store.cities_of("d1"), ["Pune"]);
    assert_eq!(run.store.cities_of("d3"), ["Agra"]);
    // d2's events merged into one write, refused; alone, only the refused city's event fails.
    assert_eq!(run.store.cities_of("d2"), ["Goa"]);
    let letters = run.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].0, 2);
    assert!(
        letters[0].1.contains("a city it will not hold"),
        "{letters:?}"
    );
    assert_eq!(run.dead_lettered("store_refused"), 1);
    assert_eq!(run.acknowledged(), [0, 1, 2, 3]);
    assert_eq!(run.source.commits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_device_is_tried_again_before_its_events_are_dead_lettered() {
    let run = Run::new(
        vec![vec![event(0, "d1", REFUSED_CITY, 1)]],
        Store::default(),
        Letters::default(),
    );
    run.until_acknowledged(1).await;

    let refusals = PipelineSettings::default().refusals_before_dead_letter;
    // The batch's attempts, then the event's attempts alone.
    assert_eq!(run.store.calls.load(Ordering::SeqCst), 2 * refusals);
    assert_eq!(run.dead_letters().len(), 1);
    assert_eq!(run.acknowledged(), [0]);
}

#[tokio::test]
async fn rejected_events_are_dead_lettered_with_their_reason_and_the_rest_written() {
    let run = Run::new(
        vec![vec![
            record(0, "d1", Some("not json")),
            event(1, "d1", "Pune", 1),
            record(2, "", None),
        ]],
        Store::default(),
        Letters::default(),
    );
    run.until_acknowledged(3).await;

    assert_eq!(run.store.cities_of("d1"), ["Pune"]);
    let letters = run.dead_letters();
    let offsets: Vec<i64> = letters.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets, [0, 2], "{letters:?}");
    assert_ne!(
        letters[0].1, letters[1].1,
        "each rejection says its own reason"
    );
    assert_eq!(run.acknowledged(), [0, 1, 2]);
}

#[tokio::test]
async fn a_store_outage_pauses_and_retries_until_it_passes_and_skips_nothing() {
    let store = Store::default();
    store.outage.store(5, Ordering::SeqCst);
    let run = Run::new(
        vec![
            vec![event(0, "d1", "Pune", 1)],
            vec![event(1, "d2", "Goa", 1)],
        ],
        store,
        Letters::default(),
    );
    run.until_acknowledged(2).await;

    assert_eq!(run.store.cities_of("d1"), ["Pune"]);
    assert_eq!(run.store.cities_of("d2"), ["Goa"]);
    assert!(run.dead_letters().is_empty());
    assert!(run.source.paused_waits.load(Ordering::SeqCst) >= 5);
    assert!(run.source.resumes.load(Ordering::SeqCst) >= 1);
    assert_eq!(run.acknowledged(), [0, 1]);
}

#[tokio::test]
async fn a_dead_letter_refused_for_good_is_counted_dropped_and_the_stream_goes_on() {
    let letters = Letters {
        refuse: true,
        ..Letters::default()
    };
    let run = Run::new(
        vec![vec![
            record(0, "d1", Some("not json")),
            event(1, "d2", "Goa", 1),
        ]],
        Store::default(),
        letters,
    );
    run.until_acknowledged(2).await;

    assert_eq!(run.store.cities_of("d2"), ["Goa"]);
    let dropped = run
        .metrics
        .profile_events_dropped
        .with_label_values(&["dead_letter_refused"])
        .get();
    assert_eq!(dropped, 1);
    assert_eq!(run.acknowledged(), [0, 1]);
}

#[tokio::test]
async fn a_device_deleted_by_a_batch_in_flight_is_written_by_no_other_batch_meanwhile() {
    let store = Store {
        write_time: Duration::from_millis(100),
        ..Store::default()
    };
    let run = Run::new(
        vec![
            vec![event(0, "d1", "Pune", 1)],
            // Deletes a device the batch in flight does not write: written at once.
            vec![record(1, "d2", None)],
            // Writes the device deleted by the batch in flight: written after it.
            vec![event(2, "d2", "Goa", 1_700_000_000_002)],
            // Deletes the device written by the batch in flight: written after it.
            vec![record(3, "d2", None)],
        ],
        store,
        Letters::default(),
    );
    run.until_acknowledged(4).await;

    let log = run.store.calls_log.lock().unwrap().clone();
    let mut overlapping = log[..2].to_vec();
    overlapping.sort();
    assert_eq!(overlapping, ["start -d2", "start d1"], "{log:?}");
    assert_eq!(
        log[4..],
        ["start d2", "end d2", "start -d2", "end -d2"],
        "{log:?}"
    );
    assert_eq!(run.store.cities_of("d2"), ["Goa"]);
    assert_eq!(run.acknowledged(), [0, 1, 2, 3]);
}

#[tokio::test]
async fn a_batch_given_up_at_shutdown_keeps_its_offsets_unacknowledged() {
    let store = Store::default();
    store.outage.store(u32::MAX, Ordering::SeqCst);
    let run = Run::new(
        vec![vec![event(0, "d1", "Pune", 1)]],
        store,
        Letters::default(),
    );
    run.until(|run| run.store.calls.load(Ordering::SeqCst) >= 3)
        .await;

    assert!(run.store.cities_of("d1").is_empty());
    assert!(run.acknowledged().is_empty());
    assert_eq!(run.source.commits.load(Ordering::SeqCst), 1);
}
