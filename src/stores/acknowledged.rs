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
//! [`REMEMBERED_FOR`] after it was written, so that one Cassandra lost after acknowledging it
//! (a node that died before syncing its commit log, a `TRUNCATE`) is written again by a later
//! event of its device; and a generation holds at most [`MAX_DEVICES`] devices, which bounds the
//! memory (about 100 bytes a device). Forgetting early is always safe: it only costs a write.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync;

/// How long an acknowledged cell is relied on.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(600);
/// Devices one generation remembers; a full generation is retired early.
pub const MAX_DEVICES: usize = 200_000;

/// A cell as Cassandra orders two cells of one column: its timestamp, then its value's bytes
/// (for the timestamp columns here, the value as an unsigned number).
pub type CellOrder = (i64, u64);

/// Newest acknowledged cell of each of `N` columns (by slot); `None`: unknown.
pub type Cells<const N: usize> = [Option<CellOrder>; N];

/// The acknowledged cells of `N` columns per device, in two generations: writes go to the
/// current one, which becomes the previous one after half of [`REMEMBERED_FOR`] (or when full).
pub struct AcknowledgedCells<const N: usize> {
    generations: Mutex<Generations<N>>,
}

struct Generations<const N: usize> {
    current: Generation<N>,
    previous: Generation<N>,
}

struct Generation<const N: usize> {
    /// No cell of this generation was written before this instant.
    since: Instant,
    devices: HashMap<Box<str>, Cells<N>>,
}

impl<const N: usize> Generation<N> {
    fn new(since: Instant) -> Self {
        Generation {
            since,
            devices: HashMap::new(),
        }
    }

    /// Whether every cell of this generation may still be relied on at `now`.
    fn honoured_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) < REMEMBERED_FOR
    }
}

impl<const N: usize> Default for AcknowledgedCells<N> {
    fn default() -> Self {
        let now = Instant::now();
        AcknowledgedCells {
            generations: Mutex::new(Generations {
                current: Generation::new(now),
                previous: Generation::new(now),
            }),
        }
    }
}

impl<const N: usize> AcknowledgedCells<N> {
    /// The device's cells that Cassandra is known to hold at `now`.
    pub fn held(&self, device_id: &str, now: Instant) -> Cells<N> {
        let mut generations = sync::lock(&self.generations);
        generations.rotate_if_due(now);
        let mut held = [None; N];
        for generation in [&generations.current, &generations.previous] {
            if !generation.honoured_at(now) {
                continue;
            }
            if let Some(cells) = generation.devices.get(device_id) {
                for (held, cell) in held.iter_mut().zip(cells) {
                    *held = (*held).max(*cell);
                }
            }
        }
        held
    }

    /// Remembers the cells of the device that Cassandra has just acknowledged, written no
    /// earlier than `written_at`.
    pub fn acknowledged(&self, device_id: &str, cells: &Cells<N>, written_at: Instant) {
        if cells.iter().all(Option::is_none) {
            return;
        }
        let mut generations = sync::lock(&self.generations);
        generations.rotate_if_due(written_at);
        let current = &mut generations.current;
        // A write that began before the generation did cannot be honoured as long as it.
        if written_at < current.since {
            return;
        }
        let remembered = current.devices.entry(device_id.into()).or_insert([None; N]);
        for (remembered, cell) in remembered.iter_mut().zip(cells) {
            *remembered = (*remembered).max(*cell);
        }
    }
}

impl<const N: usize> Generations<N> {
    fn rotate_if_due(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.current.since);
        if age >= REMEMBERED_FOR / 2 || self.current.devices.len() >= MAX_DEVICES {
            self.previous = std::mem::replace(&mut self.current, Generation::new(now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
