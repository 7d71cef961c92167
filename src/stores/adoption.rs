//! Taking over rows that other writers left in `device_profile` (the platform's own API, an
//! earlier build of this service): the first time an instance meets a device, it reads the
//! device's row once, and
//! * hands Redis what the row holds, each value at its cell's write time (`priors`), so that
//!   Redis resolves the device's fields against the same writes Cassandra does: an event older
//!   than a cell loses in both stores, a newer one wins in both;
//! * writes again, in today's encoding, the smallest-wins cells (`first_access`,
//!   `user_declared_on`) held in another one (`folds`): today's cells lie above every write
//!   made before the adoption, so an unfolded cell of another writer would lose to any value,
//!   even a later one.
//!
//! After that the device's cells are the service's own and no write of it reads anything.
//! Which devices an instance has met is kept in memory ([`MetDevices`]); forgetting one is
//! always safe (its row is read once more, and the read finds nothing to fold).
//! docs/architecture.md, "Taking over an existing deployment", says what this costs and what
//! it gets wrong.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use futures::StreamExt;

use super::cassandra::{smallest_wins_timestamp, Folds};
use super::scan::ProfileScan;
use super::stored_profile::StoredProfile;
use super::{CassandraStore, StoreError};
use crate::profile::fields::{Field, MergeRule, FIELDS};
use crate::profile::ProfileUpdate;
use crate::sync;

/// Devices one generation of [`MetDevices`] holds (about 50 bytes each).
const MAX_MET_DEVICES: usize = 250_000;

/// What the rows of the devices met for the first time add to a write.
#[derive(Debug, Default)]
pub struct FirstMeetings {
    /// The rows' values as updates at their cells' write times, for Redis (Cassandra holds
    /// them already). `last_contact` is left out: Cassandra keeps no text of it.
    pub priors: Vec<ProfileUpdate>,
    /// The smallest-wins cells to write again in today's encoding.
    pub folds: Folds,
    /// Every device read, to be remembered once the write succeeded.
    pub devices: Vec<String>,
}

pub struct Adoption {
    scan: ProfileScan,
    met: MetDevices,
    smallest_wins_base: i64,
    reads_in_flight: usize,
}

impl Adoption {
    pub async fn prepare(
        store: &CassandraStore,
        reads_in_flight: usize,
    ) -> Result<Self, StoreError> {
        Ok(Adoption {
            scan: ProfileScan::prepare(store).await?,
            met: MetDevices::default(),
            smallest_wins_base: store.smallest_wins_base(),
            reads_in_flight,
        })
    }

    /// The devices of `updates` this instance has not met yet.
    pub fn unmet<'a>(&self, updates: &'a [ProfileUpdate]) -> BTreeSet<&'a str> {
        updates
            .iter()
            .map(|update| update.device_id.as_str())
            .filter(|device_id| !self.met.contains(device_id))
            .collect()
    }

    /// Reads the rows of devices not met yet ([`Self::unmet`]).
    pub async fn meet(&self, unmet: BTreeSet<&str>) -> Result<FirstMeetings, StoreError> {
        let mut meetings = FirstMeetings::default();
        let reads: Vec<_> = unmet
            .into_iter()
            .map(|device_id| async move { (device_id, self.scan.read(device_id).await) })
            .collect();
        let rows: Vec<_> = futures::stream::iter(reads)
            .buffer_unordered(self.reads_in_flight)
            .collect()
            .await;
        for (device_id, row) in rows {
            if let Some(profile) = row? {
                let folds = foreign_smallest_cells(&profile, self.smallest_wins_base);
                if !folds.is_empty() {
                    meetings.folds.insert(device_id.to_string(), folds);
                }
                meetings.priors.extend(priors(&profile));
            }
            meetings.devices.push(device_id.to_string());
        }
        Ok(meetings)
    }

    /// Remembers devices whose first write both stores acknowledged.
    pub fn remember<'a>(&self, device_ids: impl IntoIterator<Item = &'a str>) {
        for device_id in device_ids {
            self.met.insert(device_id);
        }
    }
}

/// The smallest-wins values of a row whose cells are not where today's encoding puts them.
fn foreign_smallest_cells(profile: &StoredProfile, smallest_wins_base: i64) -> Vec<(Field, i64)> {
    FIELDS
        .iter()
        .filter(|spec| {
            matches!(
                spec.rule,
                MergeRule::Smallest | MergeRule::EarliestDeclaration
            )
        })
        .filter_map(|spec| {
            let value = profile
                .fields
                .get(&spec.field)?
                .value
                .clone()
                .into_number()?;
            let ours = smallest_wins_timestamp(smallest_wins_base, value);
            (profile.writetimes.get(&spec.field) != Some(&ours)).then_some((spec.field, value))
        })
        .collect()
}

/// The row as the updates that give Redis its values at their cells' write times.
fn priors(profile: &StoredProfile) -> Vec<ProfileUpdate> {
    let mut updates = profile.updates();
    for update in &mut updates {
        update.last_contact = None;
    }
    updates
}

/// The devices an instance has met, in two generations of at most [`MAX_MET_DEVICES`]: a
/// full current generation becomes the previous one, and a device found in the previous one
/// moves back into the current one, so the devices that keep sending stay remembered.
#[derive(Default)]
struct MetDevices {
    generations: Mutex<[HashSet<Box<str>>; 2]>,
}

impl MetDevices {
    fn contains(&self, device_id: &str) -> bool {
        let mut generations = sync::lock(&self.generations);
        if generations[0].contains(device_id) {
            return true;
        }
        if generations[1].remove(device_id) {
            Self::add(&mut generations, device_id);
            return true;
        }
        false
    }

    fn insert(&self, device_id: &str) {
        Self::add(&mut sync::lock(&self.generations), device_id);
    }

    fn add(generations: &mut [HashSet<Box<str>>; 2], device_id: &str) {
        if generations[0].len() >= MAX_MET_DEVICES {
            generations[1] = std::mem::take(&mut generations[0]);
        }
        generations[0].insert(device_id.into());
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use super::*;
    use crate::profile::fields::FieldValue;
    use crate::profile::TextField;
    use crate::stores::stored_profile::StoredField;

    const BASE: i64 = 1_800_000_000_000_000;

    fn row(first_access: i64, first_access_written_at: i64) -> StoredProfile {
        let city = StoredField {
            value: FieldValue::Text(Cow::Borrowed("Pune")),
            version: Some(1_700_000_000_123),
        };
        let first_access_field = StoredField {
            value: FieldValue::Timestamp(first_access),
            version: None,
        };
        StoredProfile {
            device_id: "d".into(),
            fields: BTreeMap::from([
                (Field::Text(TextField::City), city),
                (Field::FirstAccess, first_access_field),
            ]),
            writetimes: BTreeMap::from([
                (Field::Text(TextField::City), 1_700_000_000_123_456),
                (Field::FirstAccess, first_access_written_at),
            ]),
            legacy_timestamps: false,
        }
    }

    #[test]
    fn cells_of_other_writers_and_encodings_are_folded_and_ours_are_not() {
        let value = 1_600_000_000_000;
        // The platform's plain INSERT: the cell's write time is when it was written.
        let foreign = row(value, 1_700_000_000_123_456);
        assert_eq!(
            foreign_smallest_cells(&foreign, BASE),
            [(Field::FirstAccess, value)]
        );
        // This service's earlier encoding, `-value`.
        let earlier_build = row(value, -value);
        assert_eq!(
            foreign_smallest_cells(&earlier_build, BASE),
            [(Field::FirstAccess, value)]
        );
        let ours = row(value, smallest_wins_timestamp(BASE, value));
        assert!(foreign_smallest_cells(&ours, BASE).is_empty());
    }

    #[test]
    fn priors_carry_the_values_at_their_write_times_without_last_contact() {
        let priors = priors(&row(1_600_000_000_000, 1));
        assert_eq!(priors.len(), 1);
        assert_eq!(priors[0].version, 1_700_000_000_123);
        assert_eq!(priors[0].text[&TextField::City], "Pune");
        assert_eq!(priors[0].first_access, Some(1_600_000_000_000));
        assert!(priors[0].last_contact.is_none());
    }

    #[test]
    fn a_met_device_seen_again_stays_remembered_across_generations() {
        let met = MetDevices::default();
        met.insert("old");
        for i in 0..MAX_MET_DEVICES {
            met.insert(&format!("d{i}"));
        }
        // "old" is in the previous generation now; finding it moves it back.
        assert!(met.contains("old"));
        for i in 0..MAX_MET_DEVICES {
            met.insert(&format!("e{i}"));
        }
        assert!(met.contains("old"));
        assert!(
            !met.contains("d0"),
            "two generations on, an idle device is forgotten"
        );
    }
}
