//! When refreshes run (`CONTRACT.md` §4): once at start-up, every `REFRESH_INTERVAL_SECS`, and
//! on any message on `TOPIC_REFRESH`. Triggers that arrive while a refresh runs coalesce into
//! one follow-up run. Across instances the Redis lock lets one refresh run at a time; an
//! instance that finds it taken waits for it, then runs its own refresh.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use rdkafka::message::Message;
use rdkafka::producer::{FutureRecord, Producer};
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::publish::{self, RefreshLock};
use super::refresh::Refresher;
use crate::config::KafkaSettings;
use crate::kafka;
use crate::kafka::ingress::{Ingress, Role};
use crate::sync;

/// How often an instance waiting for another instance's refresh looks at the lock again.
const LOCK_POLL: Duration = Duration::from_secs(1);
/// How long the `refresh` command waits for the broker to take its trigger.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Pending refresh requests: any number of them make one run.
#[derive(Default)]
pub struct Triggers {
    pending: Mutex<Pending>,
    wake: Notify,
}

#[derive(Default)]
struct Pending {
    requested: bool,
    request_ids: Vec<String>,
}

impl Triggers {
    pub fn request(&self, request_id: Option<String>) {
        let mut pending = sync::lock(&self.pending);
        pending.requested = true;
        pending.request_ids.extend(request_id);
        // Stores a permit when no one waits, so a request made during a run is not missed.
        self.wake.notify_one();
    }

    /// Waits for at least one request and takes every pending one: their request ids.
    pub async fn next(&self) -> Vec<String> {
        loop {
            if let Some(request_ids) = self.take() {
                return request_ids;
            }
            self.wake.notified().await;
        }
    }

    fn take(&self) -> Option<Vec<String>> {
        let mut pending = sync::lock(&self.pending);
        let taken = std::mem::take(&mut *pending);
        taken.requested.then_some(taken.request_ids)
    }
}

/// The `request_id` of a trigger message: its value is optional and may be any bytes; only a
/// JSON object with a string `request_id` names a request.
pub fn request_id(payload: Option<&[u8]>) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload?).ok()?;
    Some(value.get("request_id")?.as_str()?.to_string())
}

/// The refresh's triggers and runs: subscribed at start-up, run by [`RefreshTask::run`].
pub struct RefreshTask {
    refresher: Refresher,
    triggers: Ingress,
    interval: Duration,
}

impl RefreshTask {
    /// Subscribes to `TOPIC_REFRESH` in the refresh group, whose lag goes to the refresher's
    /// metrics.
    pub async fn new(
        refresher: Refresher,
        kafka: &KafkaSettings,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let triggers = Ingress::subscribe(
            kafka,
            Role::Refresh,
            &[&kafka.topics.refresh],
            refresher.metrics.clone(),
        )
        .await?;
        Ok(RefreshTask {
            refresher,
            triggers,
            interval,
        })
    }

    /// Runs the triggers and the refreshes they cause until `shutdown`. A refresh running at
    /// shutdown is abandoned: it publishes nothing, and its lock and staging hash are removed
    /// before this returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let triggers = Triggers::default();
        tokio::join!(
            schedule(&triggers, self.interval, &shutdown),
            listen(&self.triggers, &triggers, &shutdown),
            run_refreshes(&self.refresher, &triggers, &shutdown),
        );
        self.triggers.commit();
    }
}

/// The start-up trigger (the first tick is immediate), then one every `interval`.
async fn schedule(triggers: &Triggers, interval: Duration, shutdown: &CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => triggers.request(None),
            () = shutdown.cancelled() => return,
        }
    }
}

/// A trigger is acknowledged once it is pending: one lost to a crash before its refresh ran
/// is made up for by the start-up refresh of the restarted instance.
async fn listen(ingress: &Ingress, triggers: &Triggers, shutdown: &CancellationToken) {
    loop {
        let message = tokio::select! {
            message = ingress.recv() => message,
            () = shutdown.cancelled() => return,
        };
        let request_id = request_id(message.payload());
        tracing::info!(
            request_id = request_id.as_deref().unwrap_or("-"),
            "refresh trigger received"
        );
        triggers.request(request_id);
        ingress.acknowledge(&message);
    }
}

async fn run_refreshes(refresher: &Refresher, triggers: &Triggers, shutdown: &CancellationToken) {
    loop {
        let request_ids = tokio::select! {
            request_ids = triggers.next() => request_ids,
            () = shutdown.cancelled() => return,
        };
        let Some(lock) = wait_for_lock(refresher, shutdown).await else {
            return;
        };
        let run_id = uuid::Uuid::new_v4().to_string();
        tracing::info!(run_id, request_ids = ?request_ids, "refresh started");
        let finished = tokio::select! {
            () = refresher.run(&lock, &run_id, request_ids) => true,
            () = shutdown.cancelled() => false,
        };
        if !finished {
            tracing::info!(
                run_id,
                "shutdown: refresh abandoned, the previous cache stays"
            );
            let staging = refresher.keys.staging(&run_id);
            if let Err(e) = publish::discard_staging(refresher.redis.clone(), &staging).await {
                tracing::warn!(error = %e, "cannot remove the staging cache; it expires by itself");
            }
        }
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "cannot release the refresh lock; it expires by itself");
        }
    }
}

/// Takes the refresh lock, waiting while another instance holds it. `None` at shutdown.
async fn wait_for_lock(refresher: &Refresher, shutdown: &CancellationToken) -> Option<RefreshLock> {
    let mut told = false;
    loop {
        match RefreshLock::try_acquire(refresher.redis.clone(), &refresher.keys).await {
            Ok(Some(lock)) => return Some(lock),
            Ok(None) if !told => {
                tracing::info!("another instance is refreshing; waiting for it to finish");
                told = true;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot take the refresh lock; trying again"),
        }
        tokio::select! {
            () = tokio::time::sleep(LOCK_POLL) => {}
            () = shutdown.cancelled() => return None,
        }
    }
}

/// The `refresh` command: publishes one trigger with a new `request_id` and returns it.
pub async fn send_trigger(settings: &KafkaSettings) -> anyhow::Result<String> {
    let producer = kafka::producer(settings)?;
    kafka::wait_for_brokers(&producer).await?;
    kafka::ensure_topics(settings, &[&settings.topics.refresh]).await?;
    let request_id = uuid::Uuid::new_v4().to_string();
    let payload = serde_json::json!({ "request_id": request_id }).to_string();
    let record = FutureRecord::to(&settings.topics.refresh)
        .key(&request_id)
        .payload(&payload);
    producer
        .send(record, SEND_TIMEOUT)
        .await
        .map_err(|(e, _)| anyhow::anyhow!("cannot publish the refresh trigger: {e}"))?;
    producer
        .flush(SEND_TIMEOUT)
        .context("cannot flush the refresh trigger")?;
    Ok(request_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn triggers_during_a_run_coalesce_into_one_follow_up() {
        let triggers = Triggers::default();
        triggers.request(None);
        assert_eq!(triggers.next().await, Vec::<String>::new());
        // A run is going on: five triggers arrive.
        for i in 0..5 {
            triggers.request(Some(format!("r{i}")));
        }
        assert_eq!(triggers.next().await, ["r0", "r1", "r2", "r3", "r4"]);
        // Nothing is pending any more: no third run.
        assert!(triggers.take().is_none());
    }

    #[tokio::test]
    async fn a_waiting_runner_wakes_on_a_request() {
        let triggers = Arc::new(Triggers::default());
        let waiter = tokio::spawn({
            let triggers = triggers.clone();
            async move { triggers.next().await }
        });
        tokio::task::yield_now().await;
        triggers.request(Some("r".into()));
        assert_eq!(waiter.await.unwrap(), ["r"]);
    }

    #[test]
    fn the_request_id_comes_from_a_json_object_only() {
        assert_eq!(
            request_id(Some(br#"{"request_id":"abc"}"#)),
            Some("abc".into())
        );
        assert_eq!(request_id(Some(br#"{"request_id":7}"#)), None);
        assert_eq!(request_id(Some(b"refresh please")), None);
        assert_eq!(request_id(Some(b"")), None);
        assert_eq!(request_id(None), None);
    }
}
