//! What Cassandra already holds of the columns whose cell timestamp comes from their value
//! (`first_access`, `user_declared_on`, `last_contact`): per device, the newest cell of each
//! that Cassandra acknowledged, by its timestamp and then its value (Cassandra keeps the
//! greater value of two cells of one timestamp, and values 64 ms apart share a `first_access`
//! timestamp), remembered for a while. A write leaves out a cell that does not beat the
//! remembered one: last-write-wins keeps the stored cell either way, so the row ends up the same.
//!
//! Why: nearly every event repeats its device's `first_access`, and that cell needs a
//! statement of its own (its timestamp is not the event's version). Without this, each event
//! costs Cassandra a batch of two statements where one plain `UPDATE` does (BENCHMARKS.md,
//! issue 14).
//!
//! Only acknowledged writes are remembered, never attempts. A cell is honoured for at most
//! [`REMEMBERED_FOR`](crate::stores::remembered::REMEMBERED_FOR) after it was written, so that one Cassandra lost after acknowledging it
//! (a node that died before syncing its commit log, a `TRUNCATE`) is written again by a later
//! event of its device; and a generation holds at most [`MAX_DEVICES`](crate::stores::remembered::MAX_DEVICES) devices, which bounds the
//! memory (about 100 bytes a device). Forgetting early is always safe: it only costs a write.

use std::time::Instant;

use crate::stores::remembered::Remembered;

/// A cell as Cassandra orders two cells of one column: its timestamp, then its value's bytes
/// (for the timestamp columns here, the value as an unsigned number).
pub type CellOrder = (i64, u64);

/// Newest acknowledged cell of each of `N` columns (by slot); `None`: unknown.
pub type Cells<const N: usize> = [Option<CellOrder>; N];

/// The acknowledged cells of `N` columns per device ([`Remembered`]).
#[derive(Default)]
pub struct AcknowledgedCells<const N: usize> {
    devices: Remembered<Cells<N>>,
}

impl<const N: usize> AcknowledgedCells<N> {
    /// The device's cells that Cassandra is known to hold at `now`.
    pub fn held(&self, device_id: &str, now: Instant) -> Cells<N> {
        self.devices.get(device_id, now).unwrap_or([None; N])
    }

    /// Remembers the cells of the device that Cassandra has just acknowledged, written no
    /// earlier than `written_at`, beside the ones it is known to hold.
    pub fn acknowledged(&self, device_id: &str, cells: &Cells<N>, written_at: Instant) {
        if cells.iter().all(Option::is_none) {
            return;
        }
        let mut held = self.held(device_id, written_at);
        for (held, cell) in held.iter_mut().zip(cells) {
            *held = (*held).max(*cell);
        }
        self.devices.insert(device_id, held, written_at);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stores::remembered::{MAX_DEVICES, REMEMBERED_FOR};

    /// A cell at `timestamp` (the value does not matter to these tests).
    fn at(timestamp: i64) -> Option<CellOrder> {
        Some((timestamp, 0))
    }

    #[test]
    fn an_acknowledged_cell_is_held_and_only_the_newest_counts() {
        let cells = AcknowledgedCells::<2>::default();
        let now = Instant::now();
        assert_eq!(cells.held("d", now), [None, None]);
        cells.acknowledged("d", &[at(-5), None], now);
        cells.acknowledged("d", &[at(-9), at(7)], now);
        assert_eq!(cells.held("d", now), [at(-5), at(7)]);
        assert_eq!(cells.held("other", now), [None, None]);
    }

    #[test]
    fn a_cell_is_forgotten_within_the_remembered_time() {
        let cells = AcknowledgedCells::<1>::default();
        let start = Instant::now();
        cells.acknowledged("d", &[at(1)], start);
        // Still held after the first rotation, which only retires its generation.
        let later = start + REMEMBERED_FOR / 2 + Duration::from_secs(1);
        assert_eq!(cells.held("d", later), [at(1)]);
        assert_eq!(cells.held("d", start + REMEMBERED_FOR), [None]);
    }

    #[test]
    fn a_long_idle_spell_forgets_everything() {
        let cells = AcknowledgedCells::<1>::default();
        let start = Instant::now();
        cells.acknowledged("d", &[at(1)], start);
        assert_eq!(cells.held("d", start + 3 * REMEMBERED_FOR), [None]);
    }

    #[test]
    fn a_write_begun_before_the_current_generation_is_not_remembered() {
        let cells = AcknowledgedCells::<1>::default();
        let start = Instant::now();
        // Rotates: the current generation starts later than the write began.
        assert_eq!(cells.held("x", start + REMEMBERED_FOR), [None]);
        cells.acknowledged("d", &[at(1)], start);
        assert_eq!(cells.held("d", start + REMEMBERED_FOR), [None]);
    }

    #[test]
    fn a_full_generation_is_retired_and_the_one_before_it_forgotten() {
        let cells = AcknowledgedCells::<1>::default();
        let now = Instant::now();
        let fill = |name: &str| {
            for device in 0..MAX_DEVICES {
                cells.acknowledged(&format!("{name}{device}"), &[at(1)], now);
            }
        };
        cells.acknowledged("first", &[at(1)], now);
        fill("a");
        // The generation of "first" was retired when full, and is still relied on.
        assert_eq!(cells.held("first", now), [at(1)]);
        fill("b");
        // Retired again: the generation of "first" is gone, the newest devices are there.
        assert_eq!(cells.held("first", now), [None]);
        assert_eq!(cells.held(&format!("b{}", MAX_DEVICES - 1), now), [at(1)]);
    }
}
