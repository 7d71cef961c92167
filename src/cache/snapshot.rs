//! The in-memory customer cache of one instance (pure): entries as stored in Redis, sorted by
//! `last_contact`, plus the `changes` stream entries applied on top (layout in
//! `docs/architecture.md`, "The customer cache in Redis").
//!
//! Each entry is kept as the JSON text stored in Redis, so answering a filter is a binary
//! search plus a join of stored texts: nothing is re-serialized.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::filter::parse_last_contact;

/// Bound of the `changes` stream (`XADD MAXLEN ~`). A reader more than this many pushes behind
/// reloads the whole cache instead.
pub const CHANGES_MAX_LEN: usize = 50_000;

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

    /// The newest change of the stream this snapshot holds.
    pub fn applied(&self) -> ChangeId {
        self.applied
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
pub(super) fn continues_from(applied: ChangeId, changes: &[Change]) -> bool {
    if applied == ChangeId::default() {
        // Nothing applied yet: a stream at its bound may have dropped some of its first changes.
        changes.len() < CHANGES_MAX_LEN
    } else {
        changes.first().is_some_and(|first| first.id == applied)
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
}
