//! A device's life in Cassandra: where its value-ordered cells (`first_access`,
//! `user_declared_on`, `last_contact`, whose cell timestamps come from their values) are placed
//! since its last delete, and what a delete writes (docs/architecture.md, "Deletes").
//!
//! Every value-ordered cell of a life lies in `(base - BASE_AHEAD_MICROS, base]`: smallest-wins
//! cells at `base - step(value)`, the latest `last_contact` at `base - BASE_AHEAD_MICROS + 1 +
//! step(instant)`. A device never deleted lives at the deployment's base. A delete at version
//! `D` removes the row's cells up to `D` (a row tombstone at `D`, so newer fields stay) and the
//! value-ordered columns up to the life's base (they carry no version: every value of the life
//! goes), and starts a new life above both, which the device's later writes use. Pure: no I/O.

use super::schema::BASE_AHEAD_MICROS;
use crate::profile::fields::{smallest_wins_step, MergeRule};

/// How long an instance relies on what it learned of a device's life (and on having met it,
/// `stores::adoption`) before reading it again: long, because each read costs Cassandra about
/// a write; bounded, because another instance may delete the device meanwhile (after a
/// rebalance moved its partition there and back).
pub const LIFE_REMEMBERED_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// How far ahead of the clock a life's base may lie: ScyllaDB refuses cell timestamps more than
/// three days ahead (`restrict_future_timestamp`).
pub const MAX_BASE_AHEAD_MICROS: i64 = 216_000_000_000; // 2.5 days

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Life {
    /// The newest delete applied (epoch ms): updates not newer than it are left out.
    pub deleted_at: Option<i64>,
    /// Base of the value-ordered cells.
    pub base: i64,
}

/// What a delete writes into Cassandra.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deletion {
    /// Timestamp of the row tombstone: the delete's version, in micros.
    pub row_at: i64,
    /// Timestamp of the deletion of the value-ordered columns; `None` when the delete is not
    /// newer than the life's (the row tombstone is all it adds).
    pub value_columns_at: Option<i64>,
    /// The life from then on.
    pub life: Life,
}

impl Life {
    /// The life of a device never deleted.
    pub fn undeleted(deployment_base: i64) -> Self {
        Life {
            deleted_at: None,
            base: deployment_base,
        }
    }

    /// Cell timestamp of a smallest-wins value: smaller values later.
    pub fn smallest_wins_timestamp(&self, value_ms: i64) -> i64 {
        self.base - smallest_wins_step(value_ms)
    }

    /// Cell timestamp of a `last_contact` instant: later instants later; instants of one 64 ms
    /// step tie, and Cassandra keeps the greater value, the later instant.
    pub fn latest_wins_timestamp(&self, instant_ms: i64) -> i64 {
        self.base - BASE_AHEAD_MICROS + 1 + smallest_wins_step(instant_ms)
    }

    /// Cell timestamp of a value (epoch ms) under a value-ordered `rule`; `None` for the rules
    /// whose cell timestamp is the update's version.
    pub fn value_ordered_timestamp(&self, rule: MergeRule, value_ms: i64) -> Option<i64> {
        match rule {
            MergeRule::Smallest | MergeRule::EarliestDeclaration => {
                Some(self.smallest_wins_timestamp(value_ms))
            }
            MergeRule::LatestInstant => Some(self.latest_wins_timestamp(value_ms)),
            MergeRule::NewestVersion | MergeRule::UpdateVersion => None,
        }
    }

    /// Whether an update of `version` is removed by the life's delete.
    pub fn removes(&self, version: i64) -> bool {
        self.deleted_at
            .is_some_and(|deleted_at| version <= deleted_at)
    }

    /// The delete of version `version_ms`, processed at `now_micros`; an error when its new
    /// life would lie further ahead of the clock than ScyllaDB accepts (a device deleted more
    /// than three times within 0.8 day).
    pub fn delete(&self, version_ms: i64, now_micros: i64) -> Result<Deletion, String> {
        let row_at = version_ms.saturating_mul(1000);
        if self.removes(version_ms) {
            return Ok(Deletion {
                row_at,
                value_columns_at: None,
                life: *self,
            });
        }
        let value_columns_at = row_at.max(self.base);
        let base = value_columns_at + BASE_AHEAD_MICROS;
        if base > now_micros + MAX_BASE_AHEAD_MICROS {
            return Err(format!(
                "deleted again too soon: its next life's cell timestamps would lie {:.1} days \
                 ahead of the clock, more than ScyllaDB accepts; produce the tombstone again in \
                 a day",
                (base - now_micros) as f64 / 86_400e6
            ));
        }
        Ok(Deletion {
            row_at,
            value_columns_at: Some(value_columns_at),
            life: Life {
                deleted_at: Some(version_ms),
                base,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_800_000_000_000;
    const NOW: i64 = NOW_MS * 1000;
    /// A deployment adopted two days ago.
    const ADOPTED: Life = Life {
        deleted_at: None,
        base: NOW - 2 * 86_400_000_000 + BASE_AHEAD_MICROS,
    };

    #[test]
    fn value_ordered_cells_of_a_life_lie_within_its_window() {
        for value in [i64::MIN, -1, 0, 1_600_000_000_000, i64::MAX] {
            for timestamp in [
                ADOPTED.smallest_wins_timestamp(value),
                ADOPTED.latest_wins_timestamp(value),
            ] {
                assert!(timestamp <= ADOPTED.base && timestamp > ADOPTED.base - BASE_AHEAD_MICROS);
            }
        }
        assert!(ADOPTED.latest_wins_timestamp(2_000) > ADOPTED.latest_wins_timestamp(1_000));
    }

    #[test]
    fn a_delete_removes_the_row_up_to_its_version_and_the_whole_life_of_the_value_columns() {
        let deletion = ADOPTED.delete(NOW_MS, NOW).unwrap();
        assert_eq!(deletion.row_at, NOW);
        // The life's cells lie below the delete's version here: the row tombstone is enough,
        // and the column deletion at the same time is harmless.
        assert_eq!(deletion.value_columns_at, Some(NOW));
        let life = deletion.life;
        assert_eq!(life.deleted_at, Some(NOW_MS));
        // The new life lies above everything deleted.
        assert!(life.smallest_wins_timestamp(i64::MAX) > NOW);
        assert!(life.latest_wins_timestamp(0) > NOW);
        assert!(life.removes(NOW_MS) && !life.removes(NOW_MS + 1));
    }

    #[test]
    fn a_delete_older_than_the_lifes_cells_removes_them_all_and_moves_above_them() {
        // Adopted just now: its cells lie ahead of the delete's version.
        let fresh = Life::undeleted(NOW + BASE_AHEAD_MICROS);
        let deletion = fresh.delete(NOW_MS - 1_000, NOW).unwrap();
        assert_eq!(deletion.row_at, NOW - 1_000_000);
        assert_eq!(deletion.value_columns_at, Some(fresh.base));
        assert!(deletion.life.latest_wins_timestamp(0) > fresh.base);
    }

    #[test]
    fn a_delete_not_newer_than_the_last_adds_only_its_row_tombstone() {
        let life = ADOPTED.delete(NOW_MS, NOW).unwrap().life;
        let again = life.delete(NOW_MS, NOW + 5).unwrap();
        assert_eq!(again.value_columns_at, None);
        assert_eq!(again.life, life);
        let older = life.delete(NOW_MS - 10, NOW).unwrap();
        assert_eq!((older.value_columns_at, older.life), (None, life));
    }

    #[test]
    fn three_quick_deletes_fit_ahead_of_the_clock_and_a_fourth_waits() {
        let mut life = ADOPTED;
        for delete in 1..=3 {
            life = life.delete(NOW_MS + delete, NOW).unwrap().life;
        }
        let error = life.delete(NOW_MS + 4, NOW).unwrap_err();
        assert!(error.starts_with("deleted again too soon"), "{error}");
        // A day later it fits.
        assert!(life.delete(NOW_MS + 4, NOW + 86_400_000_000).is_ok());
    }
}
