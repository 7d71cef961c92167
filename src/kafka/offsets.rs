//! Which offsets may be stored for commit: per partition, the records handed out and not yet
//! acknowledged. A record is acknowledged when its work is done (written to both stores,
//! answered, dead-lettered); the offset to store is the one below which every record of the
//! partition is done, so records finishing out of order never commit past unfinished ones.

use std::collections::{BTreeMap, HashMap};

/// The records handed out and not yet acknowledged, per (topic, partition).
#[derive(Debug, Default)]
pub struct PendingOffsets {
    /// offset → acknowledged?
    partitions: HashMap<(String, i32), BTreeMap<i64, bool>>,
}

impl PendingOffsets {
    /// Records that `offset` was handed out.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        self.partitions
            .entry((topic.to_string(), partition))
            .or_default()
            .insert(offset, false);
    }

    /// Marks `offset` acknowledged; returns the highest offset below which every record of the
    /// partition is acknowledged, when that advanced.
    pub fn acknowledge(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let pending = self.partitions.get_mut(&(topic.to_string(), partition))?;
        *pending.get_mut(&offset)? = true;
        let mut done = None;
        while let Some(first) = pending.first_entry() {
            if !*first.get() {
                break;
            }
            done = Some(*first.key());
            first.remove();
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_advance_only_over_acknowledged_records() {
        let mut pending = PendingOffsets::default();
        for offset in 10..14 {
            pending.begin("t", 0, offset);
        }
        pending.begin("t", 1, 3);
        pending.begin("u", 0, 10);
        assert_eq!(
            pending.acknowledge("t", 0, 11),
            None,
            "10 is still in flight"
        );
        assert_eq!(pending.acknowledge("t", 0, 13), None);
        assert_eq!(pending.acknowledge("t", 0, 10), Some(11));
        assert_eq!(pending.acknowledge("t", 1, 3), Some(3));
        assert_eq!(pending.acknowledge("t", 0, 12), Some(13));
        assert_eq!(
            pending.acknowledge("t", 0, 12),
            None,
            "already acknowledged"
        );
        assert_eq!(pending.acknowledge("t", 7, 1), None, "unknown partition");
        assert_eq!(
            pending.acknowledge("u", 0, 10),
            Some(10),
            "topics are apart"
        );
    }
}
