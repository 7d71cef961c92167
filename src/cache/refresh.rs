//! One customer cache refresh (`CONTRACT.md` §4): probes from Hawkeye, each contacted device
//! checked in Bruin (concurrently, bounded), each kept device upserted into the profile stores
//! as soon as it is known (while the other checks run), then the new cache published
//! atomically. A refresh that fails leaves the live cache as it
//! was. Every run ends with a log summary, metrics and notifications (§6).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stores::redis::RedisConnection;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::stream::{self, StreamExt};
use tokio::sync::mpsc;

use super::crossing::{Crossing, DeviceCheck, Verdict};
use super::keys::CacheKeys;
use super::last_contact::LastContactPusher;
use super::notifications::{Notification, Requests};
use super::publish::{self, Generation, PublishError, RefreshLock};
use super::rules::{self, ClientInfo, DropReason, KeptDevice};
use crate::apis::{BruinClient, HawkeyeClient, Probe};
use crate::config::RefreshSettings;
use crate::kafka::notifications::Notifier;
use crate::observe::Metrics;
use crate::profile::{LastContact, ProfileUpdate};
use crate::retry::{Failure, RetryPolicy};
use crate::stores::profiles::Upserted;
use crate::stores::{ProfileStores, StoreError};

/// Most devices per call to the profile stores (calls take what has arrived meanwhile).
const PROFILE_CHUNK: usize = 1000;
/// Up to three calls per profile chunk while the stores fail transiently, about 1 and 2 s apart
/// (the writes are idempotent); a permanent failure fails the refresh at once.
const PROFILE_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: Some(3),
    ..RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(2))
};

/// Waits between failed probe fetches: about 1, 2, 4, 8, 16 s, then 30 s.
fn probe_fetch_backoff(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: Some(max_attempts),
        // Every failure counts as transient (see `fetch_probes`).
        ..RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

/// Why a refresh failed; the text is the `reason` of `refresh_failed`.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("probes unavailable after {attempts} attempts: {last_error}")]
    ProbesUnavailable { attempts: u32, last_error: String },
    #[error(
        "{errors} of {contacted} contacted devices could not be checked in Bruin \
         (more than the allowed ratio {max_ratio}); last error: {last_error}"
    )]
    TooManyBruinErrors {
        errors: usize,
        contacted: usize,
        max_ratio: f64,
        last_error: String,
    },
    #[error("cannot write the device profiles: {0}")]
    Profiles(#[from] StoreError),
    #[error("cannot write the staging cache: {0}")]
    Staging(#[source] redis::RedisError),
    #[error("cannot publish the cache: {0}")]
    Publish(#[from] PublishError),
}

/// Runs refreshes; shared by the trigger loop for the life of the service.
pub struct Refresher {
    pub hawkeye: HawkeyeClient,
    pub bruin: BruinClient,
    pub profiles: ProfileStores,
    pub redis: RedisConnection,
    pub keys: CacheKeys,
    pub settings: RefreshSettings,
    pub metrics: Arc<Metrics>,
    pub notifier: Notifier,
    /// Brings newer profile `last_contact`s into the cache a refresh just published.
    pub cache: LastContactPusher,
}

impl Refresher {
    /// Runs one refresh while `lock` is held, then reports it (log, metrics, notifications).
    /// `run_id` names the generation and the staging hash. A run that loses the lock stops
    /// at once and fails.
    pub async fn run(&self, lock: &RefreshLock, run_id: &str, request_ids: Vec<String>) {
        let started = Instant::now();
        let attempts = AtomicU32::new(0);
        let result = tokio::select! {
            result = self.refresh(lock, run_id, Utc::now(), &attempts) => result,
            () = lock.keep_alive() => Err(RefreshError::Publish(PublishError::LockLost)),
        };
        let attempts = attempts.load(Ordering::Relaxed);
        self.report(
            result,
            attempts,
            started.elapsed(),
            Requests::new(request_ids),
        )
        .await;
    }

    async fn refresh(
        &self,
        lock: &RefreshLock,
        run_id: &str,
        started_at: DateTime<Utc>,
        attempts: &AtomicU32,
    ) -> Result<Crossing, RefreshError> {
        let probes = self.fetch_probes(attempts).await?;
        let crossing = self
            .check_devices(probes, started_at.timestamp_millis())
            .await?;
        if crossing.too_many_errors(self.settings.bruin_max_error_ratio) {
            return Err(RefreshError::TooManyBruinErrors {
                errors: crossing.errors,
                contacted: crossing.contacted,
                max_ratio: self.settings.bruin_max_error_ratio,
                last_error: crossing.last_error.clone().unwrap_or_default(),
            });
        }
        self.publish(lock, run_id, started_at, &crossing).await?;
        self.catch_up_last_contacts(&crossing).await;
        Ok(crossing)
    }

    /// Fetches every probe, trying up to `HAWKEYE_MAX_ATTEMPTS` times (counted in `attempts`).
    /// Every failure is tried again, even one the API client calls permanent: the client has
    /// already retried its transient ones, and a refresh is worth a few more minutes before it
    /// fails. An empty list counts as a failed attempt: an API fault must not empty the cache.
    async fn fetch_probes(&self, attempts: &AtomicU32) -> Result<Vec<Probe>, RefreshError> {
        let max_attempts = self.settings.hawkeye_max_attempts;
        let fetch = || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            match self.hawkeye.fetch_probes().await {
                Ok(probes) if !probes.is_empty() => Ok(probes),
                Ok(_) => Err("Hawkeye returned no probes".to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        probe_fetch_backoff(max_attempts)
            .run(
                fetch,
                |_| Failure::Transient,
                |retry| {
                    tracing::warn!(attempt = retry.failures, max_attempts, error = %retry.error, delay_ms = retry.delay.as_millis() as u64, "probe fetch failed; retrying");
                },
                tokio::time::sleep,
            )
            .await
            .map_err(|last_error| RefreshError::ProbesUnavailable {
                attempts: attempts.load(Ordering::Relaxed),
                last_error,
            })
    }

    /// Skips the never-contacted probes and checks the others in Bruin, at most
    /// `BRUIN_CONCURRENCY` devices (each one call at a time) in flight. Each kept device goes to
    /// the profile stores at once, so the writes hide behind the Bruin latency; the cache entry
    /// then takes the last contact the stores hold, so a newer one pushed by a producer is not
    /// rolled back. A refresh that fails later leaves these profile writes in place: they hold
    /// what Hawkeye and Bruin said of each device, true whatever the rest of the run does.
    async fn check_devices(
        &self,
        probes: Vec<Probe>,
        version: i64,
    ) -> Result<Crossing, RefreshError> {
        let mut crossing = Crossing::new(probes.len());
        let mut contacted = Vec::new();
        for (index, probe) in probes.into_iter().enumerate() {
            match rules::last_contact(&probe) {
                Some(last_contact) => contacted.push((index, probe, last_contact)),
                None => crossing.drop_device(DropReason::NeverContacted),
            }
        }
        let (kept_tx, kept_rx) = mpsc::channel(PROFILE_CHUNK);
        let checks = async move {
            let kept_tx = &kept_tx;
            let checks: Vec<DeviceCheck> = stream::iter(contacted)
                .map(|(index, probe, last_contact)| async move {
                    let check = self.check_device(index, probe, last_contact).await;
                    if let Verdict::Kept(device) = &check.verdict {
                        // The writer drains the channel until it closes, even after a failure.
                        let _ = kept_tx.send(device.profile_update(version)).await;
                    }
                    check
                })
                .buffer_unordered(self.settings.bruin_concurrency)
                .collect()
                .await;
            // Leaving this block drops the sender: the writer sees the channel close and ends.
            checks
        };
        let (checks, stored) = tokio::join!(checks, self.upsert_as_checked(kept_rx));
        crossing.add_checks(checks);
        let stored = stored?;
        for device in &mut crossing.kept {
            if let Some(last_contact) = stored.get(device.serial()) {
                device.last_contact = last_contact.clone();
            }
        }
        Ok(crossing)
    }

    async fn check_device(
        &self,
        index: usize,
        probe: Probe,
        last_contact: LastContact,
    ) -> DeviceCheck {
        let serial = probe.serial_number.clone();
        let check = |verdict, multiple_inventories| DeviceCheck {
            index,
            verdict,
            multiple_inventories,
        };
        let documents = match self.bruin.inventory(&serial).await {
            Ok(documents) => documents,
            Err(e) => return check(Verdict::Failed(e), None),
        };
        let active = rules::active_documents(&serial, &documents);
        let Some(first) = active.first() else {
            return check(Verdict::Dropped(DropReason::NoActiveInventory), None);
        };
        let client = ClientInfo::from(*first);
        let multiple = (active.len() > 1).then(|| {
            let clients = active.iter().map(|doc| ClientInfo::from(*doc)).collect();
            (serial.clone(), clients)
        });
        let status = match self
            .bruin
            .management_status(&client.client_id, &serial)
            .await
        {
            Ok(status) => status,
            Err(e) => return check(Verdict::Failed(e), multiple),
        };
        let verdict = match status {
            Some(status) if rules::is_monitorable(&status, &self.settings.monitorable_statuses) => {
                Verdict::Kept(Box::new(KeptDevice {
                    probe,
                    last_contact,
                    client,
                    management_status: status,
                }))
            }
            _ => Verdict::Dropped(DropReason::NotMonitorable),
        };
        check(verdict, multiple)
    }

    /// Upserts the kept devices as they arrive, in chunks of what arrived during the previous
    /// call; returns the last contact each device holds afterwards, by serial. After a failed
    /// chunk it keeps receiving (so the checks never wait on a full channel) but writes no more.
    async fn upsert_as_checked(
        &self,
        mut kept: mpsc::Receiver<ProfileUpdate>,
    ) -> Result<HashMap<String, LastContact>, RefreshError> {
        let mut stored = HashMap::new();
        let mut failure = None;
        let mut chunk = Vec::with_capacity(PROFILE_CHUNK);
        while kept.recv_many(&mut chunk, PROFILE_CHUNK).await > 0 {
            if failure.is_none() {
                match self.upsert_chunk(&chunk).await {
                    Ok(outcomes) => {
                        for (update, outcome) in chunk.iter().zip(outcomes) {
                            match outcome {
                                Ok(Some(last_contact)) => {
                                    stored.insert(update.device_id.clone(), last_contact);
                                }
                                Ok(None) => {}
                                // The device stays in the cache; its profile is not written
                                // (e.g. its Redis key is not a hash: never overwritten).
                                Err(refused) => tracing::warn!(
                                    device_id = %update.device_id,
                                    error = %refused,
                                    "a store refused the device's profile; left as it is"
                                ),
                            }
                        }
                    }
                    Err(e) => failure = Some(e),
                }
            }
            chunk.clear();
        }
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(stored),
        }
    }

    async fn upsert_chunk(&self, updates: &[ProfileUpdate]) -> Result<Vec<Upserted>, StoreError> {
        PROFILE_RETRY
            .run(
                || self.profiles.upsert(updates),
                |error: &StoreError| Failure::of(error.is_transient()),
                |retry| {
                    tracing::warn!(error = %retry.error, attempt = retry.failures, "profile upsert failed; retrying");
                },
                tokio::time::sleep,
            )
            .await
    }

    async fn publish(
        &self,
        lock: &RefreshLock,
        run_id: &str,
        started_at: DateTime<Utc>,
        crossing: &Crossing,
    ) -> Result<(), RefreshError> {
        let staging = self.keys.staging(run_id);
        let entries: Vec<(String, String)> = crossing
            .kept
            .iter()
            .map(|device| {
                (
                    device.serial().to_string(),
                    device.cache_entry().to_string(),
                )
            })
            .collect();
        let generation = Generation {
            id: run_id.to_string(),
            refreshed_at: started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            devices: entries.len(),
        };
        let published = match publish::write_staging(self.redis.clone(), &staging, &entries).await {
            Ok(()) => publish::publish(lock, &self.keys, &staging, &generation)
                .await
                .map_err(RefreshError::from),
            Err(e) => Err(RefreshError::Staging(e)),
        };
        if published.is_err() {
            if let Err(e) = publish::discard_staging(self.redis.clone(), &staging).await {
                tracing::warn!(error = %e, "cannot remove the staging cache; it expires by itself");
            }
        }
        published
    }

    /// A profile event may have moved a kept device's `last_contact` on after the refresh
    /// upserted it and before the publish: it was pushed into the old cache (or found none), so
    /// the new cache would miss it. Pushes every such later `last_contact` into the published
    /// cache. Failing here fails no refresh (the cache is published); the next event or refresh
    /// brings the value.
    async fn catch_up_last_contacts(&self, crossing: &Crossing) {
        let mut caught_up = 0;
        for devices in crossing.kept.chunks(PROFILE_CHUNK) {
            let serials: Vec<&str> = devices.iter().map(|device| device.serial()).collect();
            let stored = match self.profiles.last_contacts(&serials).await {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the profiles' last contacts after the publish");
                    return;
                }
            };
            let later: Vec<ProfileUpdate> = devices
                .iter()
                .zip(stored)
                .filter_map(|(device, stored)| {
                    let stored = stored.filter(|stored| stored.at > device.last_contact.at)?;
                    Some(ProfileUpdate {
                        device_id: device.serial().to_string(),
                        last_contact: Some(stored),
                        ..ProfileUpdate::default()
                    })
                })
                .collect();
            if let Err(e) = self.cache.push(&later).await {
                tracing::warn!(error = %e, "cannot push later last contacts into the new cache");
                return;
            }
            caught_up += later.len();
        }
        if caught_up > 0 {
            tracing::info!(
                devices = caught_up,
                "pushed last contacts that arrived during the refresh into the new cache"
            );
        }
    }

    async fn report(
        &self,
        result: Result<Crossing, RefreshError>,
        attempts: u32,
        duration: Duration,
        requests: Requests,
    ) {
        self.metrics
            .refresh_duration_seconds
            .observe(duration.as_secs_f64());
        let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        match result {
            Ok(crossing) => {
                self.metrics
                    .refresh_runs
                    .with_label_values(&["succeeded"])
                    .inc();
                self.metrics.cache_devices.set(crossing.kept.len() as i64);
                tracing::info!(duration_ms, "refresh succeeded: {}", crossing.summary());
                if !crossing.multiple_inventories.is_empty() {
                    self.notifier
                        .send(&Notification::MultipleInventories {
                            serials: crossing.multiple_inventories.clone(),
                        })
                        .await;
                }
                self.notifier
                    .send(&Notification::RefreshSucceeded {
                        devices: crossing.kept.len(),
                        probes: crossing.probes,
                        duration_ms,
                        requests,
                    })
                    .await;
            }
            Err(error) => {
                self.metrics
                    .refresh_runs
                    .with_label_values(&["failed"])
                    .inc();
                tracing::error!(
                    duration_ms,
                    attempts,
                    "refresh failed, the previous cache stays: {error}"
                );
                self.notifier
                    .send(&Notification::RefreshFailed {
                        reason: error.to_string(),
                        attempts,
                        requests,
                    })
                    .await;
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_fetch_waits_grow_to_half_a_minute() {
        let backoff = probe_fetch_backoff(10);
        assert_eq!(backoff.delay(1, None, 1.0), Duration::from_secs(1));
        assert_eq!(backoff.delay(3, None, 1.0), Duration::from_secs(4));
        assert_eq!(backoff.delay(9, None, 1.0), Duration::from_secs(30));
    }
}
