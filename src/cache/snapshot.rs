//! The in-memory customer cache of one instance, kept in step with Redis, and the writer side
//! of the `changes` stream (layout in `docs/architecture.md`, "The customer cache in Redis").
//!
//! Each entry is kept as the JSON text stored in Redis, sorted by `last_contact`, so answering
//! a filter is a binary search plus a join of stored texts: nothing is re-serialized. Before
//! each request one atomic round trip reads `meta.generation` and the `changes` since the last
//! applied one; the whole live hash is re-read only when the generation changed (or when the
//! changes stream was trimmed past what this instance applied), and concurrent requests share
//! that one reload.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, RwLock};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::filter::parse_last_contact;
use super::keys::CacheKeys;
use crate::profile::{LastContact, ProfileUpdate};
use crate::stores::StoreError;

/// Bound of the `changes` stream (`XADD MAXLEN ~`). A reader more than this many pushes behind
/// reloads the whole cache instead.
pub const CHANGES_MAX_LEN: usize = 50_000;

/// Compare-and-set rounds before `push_last_contact` gives up on a serial others keep changing.
const PUSH_MAX_ATTEMPTS: u32 = 16;
/// Pushes of one batch of profile updates in flight at once.
const PUSHES_IN_FLIGHT: usize = 32;

// ---------------------------------------------------------------------------------------------
// The snapshot (pure)
// ---------------------------------------------------------------------------------------------

/// A stream entry id, `ms-seq`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangeId(u64, u64);

impl ChangeId {
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(ChangeId(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// One `changes` stream entry: a serial and its whole new cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: ChangeId,
    pub serial: String,
    pub entry: String,
}

/// One cache entry: its JSON as stored, and its `last_contact` instant (`None` when the entry
/// has none or it does not parse: such entries sort first, so any filter leaves them out).
#[derive(Debug, Clone)]
pub struct Entry {
    last_contact: Option<DateTime<Utc>>,
    serial: Arc<str>,
    json: Arc<str>,
}

impl Entry {
    /// `None` when the text is not a JSON object: such an entry would corrupt every reply.
    fn read(serial: &str, json: String) -> Option<Entry> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(default)]
            last_contact: Option<serde_json::Value>,
        }
        // serde reads a struct from a JSON array too; entries must be objects.
        if !json.trim_start().starts_with('{') {
            return None;
        }
        let head: Head = serde_json::from_str(&json).ok()?;
        let last_contact = head
            .last_contact
            .as_ref()
            .and_then(serde_json::Value::as_str)
            .and_then(parse_last_contact);
        Some(Entry {
            last_contact,
            serial: serial.into(),
            json: json.into(),
        })
    }

    pub fn json(&self) -> &str {
        &self.json
    }

    fn order_key(&self) -> (Option<DateTime<Utc>>, &str) {
        (self.last_contact, &self.serial)
    }
}

/// The cache as of one generation plus the changes applied to it. Immutable: applying changes
/// builds a new snapshot, so requests holding the old one are never disturbed.
#[derive(Debug, Clone)]
pub struct Snapshot {
    generation: String,
    applied: ChangeId,
    /// Sorted by (`last_contact`, serial).
    entries: Vec<Entry>,
}

impl Snapshot {
    /// Builds a snapshot from the live hash. Entries that are not JSON objects are left out
    /// and logged.
    pub fn load(
        generation: String,
        applied: ChangeId,
        hash: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let mut entries: Vec<Entry> = hash
            .into_iter()
            .filter_map(|(serial, json)| readable(&serial, json))
            .collect();
        entries.sort_unstable_by(|a, b| a.order_key().cmp(&b.order_key()));
        Snapshot {
            generation,
            applied,
            entries,
        }
    }

    /// This snapshot with `changes` (in stream order) applied: each replaces its serial's entry.
    pub fn with_changes(&self, changes: &[Change]) -> Snapshot {
        let mut changed: HashMap<&str, Option<Entry>> = HashMap::new();
        for change in changes.iter().filter(|c| c.id > self.applied) {
            // A later change of the same serial replaces an earlier one.
            changed.insert(
                &change.serial,
                readable(&change.serial, change.entry.clone()),
            );
        }
        let mut replacements: Vec<Entry> = changed.values().flatten().cloned().collect();
        replacements.sort_unstable_by(|a, b| a.order_key().cmp(&b.order_key()));
        let kept = self
            .entries
            .iter()
            .filter(|entry| !changed.contains_key(&*entry.serial))
            .cloned();
        Snapshot {
            generation: self.generation.clone(),
            applied: changes
                .last()
                .map_or(self.applied, |c| c.id.max(self.applied)),
            entries: merge_sorted(kept, replacements),
        }
    }

    /// The entries whose `last_contact` is strictly after `filter`; all of them without one.
    pub fn after(&self, filter: Option<DateTime<Utc>>) -> &[Entry] {
        match filter {
            None => &self.entries,
            Some(filter) => {
                let first = self
                    .entries
                    .partition_point(|entry| entry.last_contact.is_none_or(|at| at <= filter));
                &self.entries[first..]
            }
        }
    }

    pub fn generation(&self) -> &str {
        &self.generation
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn readable(serial: &str, json: String) -> Option<Entry> {
    let entry = Entry::read(serial, json);
    if entry.is_none() {
        tracing::warn!(
            serial,
            "cache entry is not a JSON object; left out of replies"
        );
    }
    entry
}

fn merge_sorted(left: impl Iterator<Item = Entry>, right: Vec<Entry>) -> Vec<Entry> {
    let mut merged = Vec::with_capacity(right.len() + left.size_hint().0);
    let mut right = right.into_iter().peekable();
    for entry in left {
        while let Some(next) = right.next_if(|r| r.order_key() < entry.order_key()) {
            merged.push(next);
        }
        merged.push(entry);
    }
    merged.extend(right);
    merged
}

/// Whether `changes` (read from `applied` on, inclusive) can be applied on top of `applied`:
/// the stream still holds the last applied change, i.e. it was not trimmed past it.
fn continues_from(applied: ChangeId, changes: &[Change]) -> bool {
    if applied == ChangeId::default() {
        // Nothing applied yet: a stream at its bound may have dropped some of its first changes.
        changes.len() < CHANGES_MAX_LEN
    } else {
        changes.first().is_some_and(|first| first.id == applied)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading from Redis
// ---------------------------------------------------------------------------------------------

/// Why the cache could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("building the in-memory cache failed: {0}")]
    Load(String),
}

/// Keeps an instance's snapshot in step with Redis.
pub struct CacheReader {
    redis: ConnectionManager,
    keys: CacheKeys,
    current: RwLock<Option<Arc<Snapshot>>>,
    /// Held while a snapshot is being replaced, so concurrent requests share one reload.
    updating: tokio::sync::Mutex<()>,
}

/// What one round trip saw: the generation (`None`: no refresh has succeeded yet) and the
/// changes from the last applied one on.
struct Poll {
    generation: Option<String>,
    changes: Vec<Change>,
}

impl CacheReader {
    pub fn new(redis: ConnectionManager, keys: CacheKeys) -> Self {
        CacheReader {
            redis,
            keys,
            current: RwLock::new(None),
            updating: tokio::sync::Mutex::new(()),
        }
    }

    /// The cache as Redis holds it now; `None` while no refresh has ever succeeded.
    pub async fn snapshot(&self) -> Result<Option<Arc<Snapshot>>, ReadError> {
        let held = self.held();
        let applied = held.as_ref().map(|s| s.applied).unwrap_or_default();
        let poll = self.poll(applied).await?;
        let Some(generation) = poll.generation else {
            return Ok(None);
        };
        if let Some(held) = held {
            let only_known = poll.changes.iter().all(|c| c.id <= held.applied);
            if held.generation == generation && only_known && continues_from(applied, &poll.changes)
            {
                return Ok(Some(held));
            }
        }
        self.update(&generation, applied, poll.changes)
            .await
            .map(Some)
    }

    fn held(&self) -> Option<Arc<Snapshot>> {
        // A poisoned lock only means a panic elsewhere; the snapshot itself is immutable.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn store(&self, snapshot: Arc<Snapshot>) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(snapshot);
    }

    /// Applies the polled changes, or reloads; one request at a time, the others then find the
    /// result already in place.
    async fn update(
        &self,
        generation: &str,
        polled_from: ChangeId,
        changes: Vec<Change>,
    ) -> Result<Arc<Snapshot>, ReadError> {
        let _single_flight = self.updating.lock().await;
        let latest_polled = changes.last().map_or(polled_from, |c| c.id);
        if let Some(latest) = self.held() {
            if latest.generation == generation {
                if latest.applied >= latest_polled && latest.applied >= polled_from {
                    return Ok(latest);
                }
                if latest.applied >= polled_from && continues_from(polled_from, &changes) {
                    let updated = Arc::new(latest.with_changes(&changes));
                    self.store(updated.clone());
                    return Ok(updated);
                }
            }
        }
        let reloaded = Arc::new(self.reload().await?);
        self.store(reloaded.clone());
        Ok(reloaded)
    }

    /// One atomic round trip: the generation and the changes from `applied` on (inclusive, so
    /// a trimmed stream is noticed).
    async fn poll(&self, applied: ChangeId) -> Result<Poll, StoreError> {
        let mut redis = self.redis.clone();
        let (generation, changes): (Option<String>, StreamRangeReply) = redis::pipe()
            .atomic()
            .hget(self.keys.meta(), "generation")
            .xrange(self.keys.changes(), applied.to_string(), "+")
            .query_async(&mut redis)
            .await
            .map_err(StoreError::from)?;
        Ok(Poll {
            generation,
            changes: read_changes(changes),
        })
    }

    /// Reads the whole live hash and the id of the newest change, atomically: pushes update
    /// both in one script, so the hash already holds every change up to that id.
    async fn reload(&self) -> Result<Snapshot, ReadError> {
        let mut redis = self.redis.clone();
        let (generation, hash, newest): (Option<String>, Vec<(String, String)>, StreamRangeReply) =
            redis::pipe()
                .atomic()
                .hget(self.keys.meta(), "generation")
                .hgetall(self.keys.live())
                .xrevrange_count(self.keys.changes(), "+", "-", 1)
                .query_async(&mut redis)
                .await
                .map_err(StoreError::from)?;
        let applied = read_changes(newest)
            .first()
            .map(|c| c.id)
            .unwrap_or_default();
        let generation = generation.unwrap_or_default();
        // Sorting 100k entries takes a while: keep it off the async workers.
        let snapshot =
            tokio::task::spawn_blocking(move || Snapshot::load(generation, applied, hash))
                .await
                .map_err(|e| ReadError::Load(e.to_string()))?;
        tracing::info!(
            generation = snapshot.generation(),
            devices = snapshot.len(),
            "customer cache loaded"
        );
        Ok(snapshot)
    }
}

/// Stream entries as changes; entries without a serial or entry field are skipped.
fn read_changes(reply: StreamRangeReply) -> Vec<Change> {
    reply
        .ids
        .into_iter()
        .filter_map(|stream_id| {
            Some(Change {
                id: ChangeId::parse(&stream_id.id)?,
                serial: stream_id.get("serial")?,
                entry: stream_id.get("entry")?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Writing changes
// ---------------------------------------------------------------------------------------------

/// What `push_last_contact` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The entry now holds the new `last_contact`; the change is on the stream.
    Updated,
    /// The serial is not in the customer cache.
    NotCached,
    /// The entry's `last_contact` is already as late or later.
    NotNewer,
    /// The stored entry is not a JSON object; left as it is.
    Unreadable,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cache entry of {serial} kept changing during {attempts} attempts to update it")]
    Contended { serial: String, attempts: u32 },
}

/// KEYS: live, changes. ARGV: serial, entry as read, new entry, stream bound. Writes the entry
/// only if it still holds the JSON that was read, and records the change on the stream.
static COMPARE_AND_SET: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
              return 0
          end
          redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
          redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'serial', ARGV[1], 'entry', ARGV[3])
          return 1",
    )
});

/// Sets a cached device's `last_contact` to `last_contact` if that is later than the one it
/// holds, keeping every other key and value of the entry as stored; readers see the change on
/// their next request.
pub async fn push_last_contact(
    redis: &mut ConnectionManager,
    keys: &CacheKeys,
    serial: &str,
    last_contact: &LastContact,
) -> Result<PushOutcome, PushError> {
    for _ in 0..PUSH_MAX_ATTEMPTS {
        let stored: Option<String> = redis::cmd("HGET")
            .arg(keys.live())
            .arg(serial)
            .query_async(redis)
            .await
            .map_err(StoreError::from)?;
        let Some(stored) = stored else {
            return Ok(PushOutcome::NotCached);
        };
        let updated = match with_last_contact(&stored, last_contact) {
            Rewrite::Updated(updated) => updated,
            Rewrite::NotNewer => return Ok(PushOutcome::NotNewer),
            Rewrite::Unreadable => return Ok(PushOutcome::Unreadable),
        };
        let written: i64 = COMPARE_AND_SET
            .key(keys.live())
            .key(keys.changes())
            .arg(serial)
            .arg(&stored)
            .arg(&updated)
            .arg(CHANGES_MAX_LEN)
            .invoke_async(redis)
            .await
            .map_err(StoreError::from)?;
        if written == 1 {
            return Ok(PushOutcome::Updated);
        }
    }
    Err(PushError::Contended {
        serial: serial.to_string(),
        attempts: PUSH_MAX_ATTEMPTS,
    })
}

/// Pushes the `last_contact` of device profile updates into the customer cache, the device_id
/// being the serial (`CONTRACT.md` §4: a newer last contact is reflected at once).
#[derive(Clone)]
pub struct LastContactPusher {
    redis: ConnectionManager,
    keys: CacheKeys,
}

impl LastContactPusher {
    pub fn new(redis: &crate::stores::RedisStore, keys: CacheKeys) -> Self {
        LastContactPusher {
            redis: redis.connection(),
            keys,
        }
    }

    /// Pushes every update that carries a `last_contact`. Fails on the first Redis error; a
    /// retry repeats the pushes harmlessly (only a later instant is ever written).
    pub async fn push(&self, updates: &[ProfileUpdate]) -> Result<(), StoreError> {
        let pushes: Vec<_> = updates
            .iter()
            .filter_map(|update| {
                let last_contact = update.last_contact.as_ref()?;
                Some(self.push_one(&update.device_id, last_contact))
            })
            .collect();
        futures::stream::iter(pushes)
            .buffer_unordered(PUSHES_IN_FLIGHT)
            .try_collect()
            .await
    }

    async fn push_one(&self, serial: &str, last_contact: &LastContact) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        match push_last_contact(&mut redis, &self.keys, serial, last_contact).await {
            Ok(PushOutcome::Unreadable) => {
                tracing::warn!(
                    serial,
                    "cache entry is not a JSON object; last_contact not pushed"
                );
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(PushError::Store(e)) => Err(e),
            // Lost the race to other writers every time: give up on this one device rather
            // than stall the whole pipeline.
            Err(contended @ PushError::Contended { .. }) => {
                tracing::warn!(error = %contended, "last_contact not pushed");
                Ok(())
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Rewrite {
    Updated(String),
    NotNewer,
    Unreadable,
}

/// The entry with `last_contact` replaced (or added), every other member byte for byte and in
/// its order. An entry whose `last_contact` does not parse counts as older than any instant.
fn with_last_contact(entry: &str, last_contact: &LastContact) -> Rewrite {
    let Ok(OrderedObject(members)) = serde_json::from_str::<OrderedObject>(entry) else {
        return Rewrite::Unreadable;
    };
    let stored_at = members
        .iter()
        .find(|(key, _)| key == "last_contact")
        .and_then(|(_, value)| serde_json::from_str::<String>(value.get()).ok())
        .and_then(|text| parse_last_contact(&text));
    if stored_at.is_some_and(|at| at >= last_contact.at) {
        return Rewrite::NotNewer;
    }
    let new_value = serde_json::Value::String(last_contact.text.clone()).to_string();
    let mut replaced = false;
    let mut parts: Vec<String> = members
        .iter()
        .map(|(key, value)| {
            let value = if key == "last_contact" {
                replaced = true;
                new_value.as_str()
            } else {
                value.get()
            };
            format!("{}:{value}", serde_json::Value::String(key.clone()))
        })
        .collect();
    if !replaced {
        parts.push(format!("\"last_contact\":{new_value}"));
    }
    Rewrite::Updated(format!("{{{}}}", parts.join(",")))
}

/// A JSON object's members in their order, values as their raw text.
struct OrderedObject<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for OrderedObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = OrderedObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(OrderedObject(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(serial: &str, last_contact: &str) -> (String, String) {
        (
            serial.to_string(),
            format!(r#"{{"serial_number":"{serial}","last_contact":"{last_contact}"}}"#),
        )
    }

    fn at(text: &str) -> DateTime<Utc> {
        parse_last_contact(text).unwrap()
    }

    fn serials(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| &*e.serial).collect()
    }

    fn sample() -> Snapshot {
        Snapshot::load(
            "g1".into(),
            ChangeId::default(),
            vec![
                entry("C", "2020-01-03T00:00:00Z"),
                entry("A", "2020-01-01T00:00:00Z"),
                entry("N", "never"),
                entry("B", "2020-01-02T00:00:00Z"),
                ("BAD".into(), "not json".into()),
                ("ARRAY".into(), "[1]".into()),
            ],
        )
    }

    #[test]
    fn filters_strictly_after_the_instant() {
        let snapshot = sample();
        assert_eq!(snapshot.len(), 4, "non-objects are left out");
        assert_eq!(serials(snapshot.after(None)), ["N", "A", "B", "C"]);
        assert_eq!(
            serials(snapshot.after(Some(at("2020-01-02T00:00:00Z")))),
            ["C"]
        );
        assert_eq!(
            serials(snapshot.after(Some(at("2020-01-01T23:59:59Z")))),
            ["B", "C"]
        );
        assert!(snapshot.after(Some(at("2020-01-03T00:00:00Z"))).is_empty());
        // Unparseable last_contact: only without a filter.
        assert_eq!(
            serials(snapshot.after(Some(at("1970-01-01T00:00:00Z")))),
            ["A", "B", "C"]
        );
    }

    #[test]
    fn entries_keep_their_stored_text() {
        let text = r#"{ "last_contact" : "2020-01-01T00:00:00Z", "x": 1.50 }"#;
        let snapshot = Snapshot::load(
            "g".into(),
            ChangeId::default(),
            vec![("S".into(), text.into())],
        );
        assert_eq!(snapshot.after(None)[0].json(), text);
    }

    #[test]
    fn changes_replace_entries_and_keep_the_order() {
        let change = |id: u64, (serial, entry): (String, String)| Change {
            id: ChangeId(id, 0),
            serial,
            entry,
        };
        let updated = sample().with_changes(&[
            change(5, entry("A", "2020-01-05T00:00:00Z")),
            change(6, entry("D", "2020-01-02T12:00:00Z")),
            change(7, entry("A", "2020-01-04T00:00:00Z")),
        ]);
        assert_eq!(serials(updated.after(None)), ["N", "B", "D", "C", "A"]);
        assert!(updated.after(None)[4].json().contains("2020-01-04"));
        assert_eq!(updated.applied, ChangeId(7, 0));
        // Changes already applied are not applied again.
        let again = updated.with_changes(&[change(6, entry("D", "2021-01-01T00:00:00Z"))]);
        assert_eq!(serials(again.after(None)), ["N", "B", "D", "C", "A"]);
    }

    #[test]
    fn a_trimmed_stream_is_noticed() {
        let change = |id: u64| Change {
            id: ChangeId(id, 0),
            serial: "S".into(),
            entry: "{}".into(),
        };
        assert!(continues_from(ChangeId(3, 0), &[change(3), change(4)]));
        assert!(!continues_from(ChangeId(3, 0), &[change(5)]));
        assert!(!continues_from(ChangeId(3, 0), &[]));
        assert!(continues_from(ChangeId::default(), &[change(1)]));
        let full: Vec<Change> = (1..=CHANGES_MAX_LEN as u64).map(change).collect();
        assert!(!continues_from(ChangeId::default(), &full));
    }

    #[test]
    fn change_ids_parse_and_order_numerically() {
        let early = ChangeId::parse("999-5").unwrap();
        let late = ChangeId::parse("1000-0").unwrap();
        assert!(early < late);
        assert_eq!(late.to_string(), "1000-0");
        assert_eq!(ChangeId::parse("12"), None);
    }

    fn contact(text: &str) -> LastContact {
        LastContact {
            at: at(text),
            text: text.to_string(),
        }
    }

    #[test]
    fn last_contact_is_replaced_in_place_keeping_everything_else() {
        let stored = r#"{"probe_id":"27","last_contact":"2020-11-05T13:57:07Z","bruin_client_info":{"client_id":9994,"site_id":2048},"big":12345678901234567890123}"#;
        assert_eq!(
            with_last_contact(stored, &contact("2020-11-06T00:00:00+01:00")),
            Rewrite::Updated(
                r#"{"probe_id":"27","last_contact":"2020-11-06T00:00:00+01:00","bruin_client_info":{"client_id":9994,"site_id":2048},"big":12345678901234567890123}"#
                    .into()
            )
        );
    }

    #[test]
    fn only_a_later_instant_is_written() {
        let stored = r#"{"last_contact":"2020-11-05T13:57:07Z"}"#;
        assert_eq!(
            with_last_contact(stored, &contact("2020-11-05T13:57:07Z")),
            Rewrite::NotNewer
        );
        // Earlier in UTC although the text sorts later.
        assert_eq!(
            with_last_contact(stored, &contact("2020-11-05T14:00:00+02:00")),
            Rewrite::NotNewer
        );
        assert_eq!(
            with_last_contact("[1]", &contact("2020-11-05T13:57:07Z")),
            Rewrite::Unreadable
        );
    }

    #[test]
    fn a_missing_or_unreadable_last_contact_is_replaced() {
        assert_eq!(
            with_last_contact(r#"{"a":1}"#, &contact("2020-11-05T13:57:07Z")),
            Rewrite::Updated(r#"{"a":1,"last_contact":"2020-11-05T13:57:07Z"}"#.into())
        );
        assert_eq!(
            with_last_contact(
                r#"{"last_contact":"never"}"#,
                &contact("2020-11-05T13:57:07Z")
            ),
            Rewrite::Updated(r#"{"last_contact":"2020-11-05T13:57:07Z"}"#.into())
        );
    }
}
