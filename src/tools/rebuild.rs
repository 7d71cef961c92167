//! `profile rebuild-redis`: every device's Redis hash and versions companion hash rebuilt from
//! `device_profile`. Each row becomes the updates that would have produced it
//! ([`StoredProfile::updates`]), written through the service's own Redis upsert: a field
//! already newer in Redis (an event the running service wrote meanwhile) stays, an older one is
//! replaced, so the rebuild may run beside the service and loses no event. The deletes go first
//! (`device_profile_deletes`): Redis then remembers each one, and brings back nothing older.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::StoreSettings;
use crate::stores::cassandra::scan::{with_progress, ProfileScan};
use crate::stores::redis::ProfileWriter;
use crate::stores::{CassandraStore, RedisStore, StoreError};
use crate::sync;

/// How often the progress line is printed.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What a rebuild did.
#[derive(Debug)]
pub struct Rebuilt {
    pub devices: u64,
    /// Devices Redis refused for good (a key that is not a hash), with why.
    pub refused: BTreeMap<String, StoreError>,
    pub elapsed: Duration,
}

/// Connects to both stores and rebuilds Redis from Cassandra, with a progress line on stderr.
pub async fn rebuild_redis(settings: &StoreSettings) -> Result<Rebuilt, StoreError> {
    let redis = ProfileWriter::load(RedisStore::connect(settings).await?).await?;
    let scan = ProfileScan::prepare(&CassandraStore::open(settings).await?).await?;
    let scanned = AtomicU64::new(0);
    let started = Instant::now();
    let refused = with_progress(
        "rebuild-redis",
        &scanned,
        PROGRESS_EVERY,
        rebuild(&scan, &redis, &scanned),
    )
    .await?;
    Ok(Rebuilt {
        devices: scanned.into_inner(),
        refused,
        elapsed: started.elapsed(),
    })
}

/// Writes every row of the scan into Redis, one pipeline per page; counts the rows in
/// `scanned`. Returns the devices Redis refused.
pub async fn rebuild(
    scan: &ProfileScan,
    redis: &ProfileWriter,
    scanned: &AtomicU64,
) -> Result<BTreeMap<String, StoreError>, StoreError> {
    let refused = Mutex::new(BTreeMap::new());
    let refused_so_far = &refused;
    scan.for_each_delete_page(|deletes| async move {
        for (delete, outcome) in deletes.iter().zip(redis.upsert(&deletes).await?) {
            if let Err(error) = outcome {
                sync::lock(refused_so_far).insert(delete.device_id.clone(), error);
            }
        }
        Ok(())
    })
    .await?;
    scan.for_each_page(scanned, |page| async move {
        let updates: Vec<_> = page.iter().flat_map(|profile| profile.updates()).collect();
        let outcomes = redis.upsert(&updates).await?;
        let mut refused = sync::lock(refused_so_far);
        for (update, outcome) in updates.iter().zip(outcomes) {
            if let Err(error) = outcome {
                refused.insert(update.device_id.clone(), error);
            }
        }
        Ok(())
    })
    .await?;
    Ok(sync::into_inner(refused))
}
