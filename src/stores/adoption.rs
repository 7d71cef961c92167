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
//! Which devices an instance has met is kept for at most an hour ([`Remembered`]); forgetting
//! one is always safe (its row is read once more, and the read finds nothing to fold).
//! docs/architecture.md, "Taking over an existing deployment", says what this costs and what
//! it gets wrong.

use std::collections::BTreeSet;
use std::time::Instant;

use futures::StreamExt;

use super::cassandra::lives::{Life, LIFE_REMEMBERED_FOR};
use super::cassandra::scan::ProfileScan;
use super::cassandra::{Folds, ProfileWriter};
use super::remembered::Remembered;
use super::stored_profile::StoredProfile;
use super::{CassandraStore, StoreError};
use crate::profile::fields::{Field, FIELDS};
use crate::profile::ProfileUpdate;

/// What the rows of the devices met for the first time add to a write.
#[derive(Debug, Default)]
pub struct FirstMeetings {
    /// The rows' values as updates at their cells' write times, for Redis (Cassandra holds
    /// them already). `last_contact` is left out: Cassandra keeps no text of it.
    pub priors: Vec<ProfileUpdate>,
    /// The value-ordered cells to write again in today's encoding.
    pub folds: Folds,
    /// Every device read, to be remembered once the write succeeded.
    pub devices: Vec<String>,
}

pub struct Adoption {
    scan: ProfileScan,
    met: Remembered<()>,
    reads_in_flight: usize,
}

impl Adoption {
    pub async fn prepare(
        store: &CassandraStore,
        reads_in_flight: usize,
    ) -> Result<Self, StoreError> {
        Ok(Adoption {
            scan: ProfileScan::prepare(store).await?,
            met: Remembered::new(LIFE_REMEMBERED_FOR),
            reads_in_flight,
        })
    }

    /// The devices of `updates` this instance has not met lately.
    pub fn unmet<'a>(&self, updates: &'a [ProfileUpdate]) -> BTreeSet<&'a str> {
        let now = Instant::now();
        updates
            .iter()
            .map(|update| update.device_id.as_str())
            .filter(|device_id| self.met.get(device_id, now).is_none())
            .collect()
    }

    /// Reads the rows of devices not met lately ([`Self::unmet`]), and their lives from the
    /// writer that places their cells: both in multi-partition reads of devices of the same
    /// replicas ([`ProfileWriter::read_groups`]).
    pub async fn meet(
        &self,
        unmet: BTreeSet<&str>,
        writer: &ProfileWriter,
    ) -> Result<FirstMeetings, StoreError> {
        let reads: Vec<_> = writer
            .read_groups(unmet.iter().copied())
            .into_iter()
            .map(|group| async move { self.scan.read(&group).await })
            .collect();
        let rows = futures::stream::iter(reads)
            .buffer_unordered(self.reads_in_flight)
            .collect::<Vec<_>>();
        let (lives, groups) = futures::join!(writer.lives(unmet.iter().copied()), rows);
        let lives = lives?;
        let mut meetings = FirstMeetings::default();
        for group in groups {
            for profile in group? {
                if let Some(life) = lives.get(profile.device_id.as_str()) {
                    let folds = foreign_value_cells(&profile, life);
                    if !folds.is_empty() {
                        meetings.folds.insert(profile.device_id.clone(), folds);
                    }
                    meetings.priors.extend(priors(&profile));
                }
            }
        }
        meetings.devices = unmet.into_iter().map(str::to_string).collect();
        Ok(meetings)
    }

    /// Remembers devices whose first write, begun at `began`, both stores acknowledged.
    pub fn remember<'a>(&self, device_ids: impl IntoIterator<Item = &'a str>, began: Instant) {
        for device_id in device_ids {
            self.met.insert(device_id, (), began);
        }
    }
}

/// The value-ordered values of a row whose cells are not where today's encoding puts them in
/// the device's life.
fn foreign_value_cells(profile: &StoredProfile, life: &Life) -> Vec<(Field, i64)> {
    FIELDS
        .iter()
        .filter_map(|spec| {
            let value = profile.fields.get(&spec.field)?.value.epoch_ms()?;
            let ours = life.value_ordered_timestamp(spec.rule, value)?;
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

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use super::*;
    use crate::profile::fields::FieldValue;
    use crate::profile::TextField;
    use crate::stores::stored_profile::StoredField;

    const LIFE: Life = Life {
        deleted_at: None,
        base: 1_800_000_000_000_000,
    };

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
            foreign_value_cells(&foreign, &LIFE),
            [(Field::FirstAccess, value)]
        );
        // This service's earlier encoding, `-value`.
        let earlier_build = row(value, -value);
        assert_eq!(
            foreign_value_cells(&earlier_build, &LIFE),
            [(Field::FirstAccess, value)]
        );
        let ours = row(value, LIFE.smallest_wins_timestamp(value));
        assert!(foreign_value_cells(&ours, &LIFE).is_empty());
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
}
