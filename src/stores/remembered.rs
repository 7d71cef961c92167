//! A bounded, forgetful memory of one value per device: what an instance learned from
//! Cassandra (the cells it acknowledged, a device's life, that it met a device), relied on for
//! a while (by default [`REMEMBERED_FOR`]), so that what changed meanwhile elsewhere (a cell
//! Cassandra lost, a delete another instance applied after a rebalance) is read or written
//! again. Two generations: entries go to the current one, which becomes the previous one after
//! half of that time or once it holds [`MAX_DEVICES`]; forgetting is always safe, it only costs
//! a read or a write.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync;

/// How long what was learned is relied on, by default.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(600);
/// Devices one generation holds (about 100 bytes each); a full generation is retired early.
pub const MAX_DEVICES: usize = 200_000;

pub struct Remembered<V> {
    generations: Mutex<[Generation<V>; 2]>,
    remembered_for: Duration,
}

struct Generation<V> {
    /// Nothing in this generation was learned before this instant.
    since: Instant,
    devices: HashMap<Box<str>, V>,
}

impl<V> Generation<V> {
    fn new(since: Instant) -> Self {
        Generation {
            since,
            devices: HashMap::new(),
        }
    }
}

impl<V> Default for Remembered<V> {
    fn default() -> Self {
        Self::new(REMEMBERED_FOR)
    }
}

impl<V> Remembered<V> {
    /// A memory whose entries are relied on for at most `remembered_for`.
    pub fn new(remembered_for: Duration) -> Self {
        let now = Instant::now();
        Remembered {
            generations: Mutex::new([Generation::new(now), Generation::new(now)]),
            remembered_for,
        }
    }
}

impl<V: Clone> Remembered<V> {
    /// What is known of the device at `now`, the newest first.
    pub fn get(&self, device_id: &str, now: Instant) -> Option<V> {
        let mut generations = sync::lock(&self.generations);
        self.rotate_if_due(&mut generations, now);
        generations
            .iter()
            .filter(|generation| {
                now.saturating_duration_since(generation.since) < self.remembered_for
            })
            .find_map(|generation| generation.devices.get(device_id).cloned())
    }

    /// Remembers what was learned of the device from a read or write begun at `learned_at`.
    pub fn insert(&self, device_id: &str, value: V, learned_at: Instant) {
        let mut generations = sync::lock(&self.generations);
        self.rotate_if_due(&mut generations, learned_at);
        // What was learned before the current generation began cannot be relied on as long.
        if learned_at >= generations[0].since {
            generations[0].devices.insert(device_id.into(), value);
        }
    }

    fn rotate_if_due(&self, generations: &mut [Generation<V>; 2], now: Instant) {
        let current = &generations[0];
        let age = now.saturating_duration_since(current.since);
        if age >= self.remembered_for / 2 || current.devices.len() >= MAX_DEVICES {
            generations[1] = std::mem::replace(&mut generations[0], Generation::new(now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_value_is_known_until_it_is_too_old() {
        let memory = Remembered::default();
        let start = Instant::now();
        memory.insert("d", 1, start);
        memory.insert("d", 2, start);
        assert_eq!(memory.get("d", start), Some(2));
        assert_eq!(memory.get("other", start), None);
        let later = start + REMEMBERED_FOR / 2 + Duration::from_secs(1);
        assert_eq!(
            memory.get("d", later),
            Some(2),
            "still held in the previous generation"
        );
        assert_eq!(memory.get("d", start + REMEMBERED_FOR), None);
    }

    #[test]
    fn a_full_generation_is_retired_and_the_one_before_it_forgotten() {
        let memory = Remembered::default();
        let now = Instant::now();
        memory.insert("first", (), now);
        for device in 0..2 * MAX_DEVICES {
            memory.insert(&format!("d{device}"), (), now);
        }
        assert_eq!(memory.get("first", now), None);
        assert_eq!(
            memory.get(&format!("d{}", 2 * MAX_DEVICES - 1), now),
            Some(())
        );
    }
}
