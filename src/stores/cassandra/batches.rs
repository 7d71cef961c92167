//! Groups the device writes of one upsert into multi-partition unlogged batches, each sent to
//! replicas of all of its partitions: one request carries several devices, which costs the
//! driver and the coordinator far less than one request each, while every mutation still lands
//! on a node that owns it (docs/architecture.md, "Device profile push"). The first reads of
//! devices are grouped the same way, into multi-partition `IN` reads.

use std::collections::BTreeMap;

/// Devices per batch: at most Cassandra's default `unlogged_batch_across_partitions_warn_threshold`
/// (10), beyond which it logs a warning for every batch.
pub const DEVICES_PER_BATCH: usize = 8;

/// Estimated bytes of bound values per batch: below Cassandra's default
/// `batch_size_warn_threshold` (5 KiB), which also logs a warning per batch, and far below
/// `batch_size_fail_threshold` (50 KiB), which refuses the batch.
pub const BATCH_BYTES: usize = 4096;

/// Partition keys per multi-partition read (`WHERE device_id IN ?`): one request instead of
/// one per device, below ScyllaDB's default `max_partition_key_restrictions_per_query` (100).
pub const DEVICES_PER_READ: usize = 32;

/// Splits `writes` into batches of writes with the same `replicas`, at most `per_batch` writes
/// and [`BATCH_BYTES`] `bytes` each; a write larger than that is a batch of its own. Writes
/// keep their order within a batch.
pub fn replica_batches<W, R: Ord>(
    writes: impl IntoIterator<Item = W>,
    per_batch: usize,
    replicas: impl Fn(&W) -> R,
    bytes: impl Fn(&W) -> usize,
) -> Vec<Vec<W>> {
    let mut open: BTreeMap<R, (Vec<W>, usize)> = BTreeMap::new();
    let mut full = Vec::new();
    for write in writes {
        let size = bytes(&write);
        let (batch, batch_bytes) = open.entry(replicas(&write)).or_default();
        if !batch.is_empty() && (batch.len() >= per_batch || *batch_bytes + size > BATCH_BYTES) {
            full.push(std::mem::take(batch));
            *batch_bytes = 0;
        }
        batch.push(write);
        *batch_bytes += size;
    }
    full.extend(open.into_values().map(|(batch, _)| batch));
    full
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (replica set, bytes, name) of each write.
    fn batched(writes: &[(u8, usize, &'static str)]) -> Vec<Vec<&'static str>> {
        let mut batches: Vec<Vec<&str>> =
            replica_batches(writes.iter().copied(), DEVICES_PER_BATCH, |w| w.0, |w| w.1)
                .into_iter()
                .map(|batch| batch.into_iter().map(|w| w.2).collect())
                .collect();
        batches.sort();
        batches
    }

    #[test]
    fn writes_share_a_batch_only_with_writes_of_the_same_replicas() {
        let writes = [(1, 10, "a"), (2, 10, "b"), (1, 10, "c"), (3, 10, "d")];
        assert_eq!(batched(&writes), [vec!["a", "c"], vec!["b"], vec!["d"]]);
    }

    #[test]
    fn a_batch_holds_at_most_the_devices_cassandra_takes_without_a_warning() {
        let names = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"];
        let writes: Vec<_> = names.iter().map(|name| (1, 10, *name)).collect();
        let batches = replica_batches(writes, DEVICES_PER_BATCH, |w| w.0, |w| w.1);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [DEVICES_PER_BATCH, names.len() - DEVICES_PER_BATCH]);
        let order: Vec<&str> = batches.into_iter().flatten().map(|w| w.2).collect();
        assert_eq!(order, names, "every write once, in order");
    }

    #[test]
    fn a_batch_stays_under_the_size_warning_and_a_larger_write_goes_alone() {
        let third = BATCH_BYTES / 3;
        let writes = [
            (1, third, "a"),
            (1, third, "b"),
            (1, third, "c"),
            (1, third, "d"),
            (1, BATCH_BYTES * 2, "huge"),
            (1, 1, "e"),
        ];
        assert_eq!(
            batched(&writes),
            [vec!["a", "b", "c"], vec!["d"], vec!["e"], vec!["huge"]]
        );
    }

    #[test]
    fn no_writes_no_batches() {
        assert!(batched(&[]).is_empty());
    }
}
