//! Device profile writes into both stores at once: the unit every writer (profile events and
//! the customer cache refresh) uses.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use super::adoption::{Adoption, FirstMeetings};
use super::{cassandra, redis, CassandraStore, RedisStore, StoreError};
use crate::observe::Metrics;
use crate::profile::{LastContact, ProfileUpdate};

/// What one upsert did with one update: the device's stored `last_contact`, or a store's
/// refusal of it for good.
pub type Upserted = Result<Option<LastContact>, StoreError>;

#[derive(Clone)]
pub struct ProfileStores {
    redis: redis::ProfileWriter,
    cassandra: cassandra::ProfileWriter,
    adoption: Arc<Adoption>,
    metrics: Arc<Metrics>,
}

impl ProfileStores {
    /// Loads the Redis script and prepares the Cassandra statements, once.
    pub async fn new(
        redis: RedisStore,
        cassandra: CassandraStore,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        Ok(ProfileStores {
            redis: redis::ProfileWriter::load(redis).await?,
            cassandra: cassandra::ProfileWriter::prepare(&cassandra).await?,
            adoption: Arc::new(Adoption::prepare(&cassandra, cassandra.writes_in_flight()).await?),
            metrics,
        })
    }

    /// Writes both stores concurrently (one attempt). Returns, per update in order, the
    /// device's last_contact as stored after the write (the max rule, read back from the Redis
    /// script's result), or the refusal of a store that will refuse that update every time
    /// (`StoreError::is_transient` is false). Any transient failure fails the whole call;
    /// writes are idempotent, so it may simply be repeated. A delete (`ProfileUpdate::delete`)
    /// goes before the device's updates of the call in both stores.
    ///
    /// The first write of a device this instance has not met reads its row first
    /// (`stores::adoption`): Redis gets the row's values at their write times before the
    /// updates, Cassandra its smallest-wins cells again in today's encoding.
    pub async fn upsert(&self, updates: &[ProfileUpdate]) -> Result<Vec<Upserted>, StoreError> {
        let began = Instant::now();
        let unmet = self.adoption.unmet(updates);
        let mut meetings = if unmet.is_empty() {
            FirstMeetings::default()
        } else {
            let reads = self.adoption.meet(unmet, &self.cassandra);
            self.metrics
                .timed_store_request("cassandra", "first_read", reads)
                .await?
        };
        forget_deleted_values(&mut meetings.priors, updates);
        let priors = meetings.priors.len();
        let into_redis = match priors {
            0 => Cow::Borrowed(updates),
            _ => Cow::Owned([meetings.priors.as_slice(), updates].concat()),
        };
        // Both run to completion even when one fails, so a retry finds no half-sent batch.
        let (stored, written) = futures::join!(
            self.metrics
                .timed_store_request("redis", "upsert", self.redis.upsert(&into_redis)),
            self.metrics.timed_store_request(
                "cassandra",
                "upsert",
                self.cassandra.upsert_folding(updates, &meetings.folds)
            )
        );
        let mut stored = stored?.split_off(priors);
        let mut refused_by_cassandra = written?;
        for (update, outcome) in updates.iter().zip(stored.iter_mut()) {
            if let Some(error) = refused_by_cassandra.remove(&update.device_id) {
                *outcome = Err(error);
            }
        }
        let refused: BTreeSet<&str> = updates
            .iter()
            .zip(&stored)
            .filter(|(_, outcome)| outcome.is_err())
            .map(|(update, _)| update.device_id.as_str())
            .collect();
        let written = meetings.devices.iter().map(String::as_str);
        self.adoption.remember(
            written.filter(|device_id| !refused.contains(device_id)),
            began,
        );
        for (update, outcome) in updates.iter().zip(&stored) {
            match (update.delete, outcome.is_ok()) {
                (true, true) => self.metrics.profile_devices_deleted.inc(),
                (false, true) => self.metrics.profile_devices_upserted.inc(),
                (_, false) => {}
            }
        }
        Ok(stored)
    }

    /// Each device's `last_contact` as the profile stores hold it now (read from Redis).
    pub async fn last_contacts(
        &self,
        device_ids: &[&str],
    ) -> Result<Vec<Option<LastContact>>, StoreError> {
        self.metrics
            .timed_store_request(
                "redis",
                "last_contacts",
                self.redis.last_contacts(device_ids),
            )
            .await
    }
}

/// The value-ordered fields of the rows of devices that `updates` delete: a delete removes them
/// whatever their age, so the rows' values must not come back through Redis.
fn forget_deleted_values(priors: &mut [ProfileUpdate], updates: &[ProfileUpdate]) {
    let deleted: BTreeSet<&str> = updates
        .iter()
        .filter(|update| update.delete)
        .map(|update| update.device_id.as_str())
        .collect();
    for prior in priors
        .iter_mut()
        .filter(|prior| deleted.contains(prior.device_id.as_str()))
    {
        prior.first_access = None;
        prior.undated_declaration = true;
    }
}
