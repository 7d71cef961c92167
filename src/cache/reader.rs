//! Keeps an instance's customer cache snapshot in step with Redis. Before each request one
//! atomic round trip reads `meta.generation` and the `changes` since the last applied one; the
//! whole live hash is re-read only when the generation changed (or when the changes stream was
//! trimmed past what this instance applied), and concurrent requests share that one reload.

use std::sync::{Arc, RwLock};

use crate::stores::redis::RedisConnection;
use redis::streams::StreamRangeReply;

use super::keys::CacheKeys;
use super::snapshot::{continues_from, Change, ChangeId, Snapshot};
use crate::observe::Metrics;
use crate::stores::StoreError;
use crate::sync;

/// Why the cache could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("building the in-memory cache failed: {0}")]
    Load(String),
}

/// Keeps an instance's snapshot in step with Redis.
pub struct CacheReader {
    redis: RedisConnection,
    keys: CacheKeys,
    /// Times each round trip in `store_request_seconds`.
    metrics: Arc<Metrics>,
    current: RwLock<Option<Arc<Snapshot>>>,
    /// Held while a snapshot is being replaced, so concurrent requests share one reload.
    updating: tokio::sync::Mutex<()>,
}

/// What one round trip saw: the generation (`None`: no refresh has succeeded yet) and the
/// changes from the last applied one on.
struct Poll {
    generation: Option<String>,
    changes: Vec<Change>,
}

impl CacheReader {
    pub fn new(redis: RedisConnection, keys: CacheKeys, metrics: Arc<Metrics>) -> Self {
        CacheReader {
            redis,
            keys,
            metrics,
            current: RwLock::new(None),
            updating: tokio::sync::Mutex::new(()),
        }
    }

    /// The cache as Redis holds it now; `None` while no refresh has ever succeeded.
    pub async fn snapshot(&self) -> Result<Option<Arc<Snapshot>>, ReadError> {
        let held = self.held();
        let applied = held.as_ref().map(|s| s.applied()).unwrap_or_default();
        let poll = self.poll(applied).await?;
        let Some(generation) = poll.generation else {
            return Ok(None);
        };
        if let Some(held) = held {
            let only_known = poll.changes.iter().all(|c| c.id <= held.applied());
            if held.generation() == generation
                && only_known
                && continues_from(applied, &poll.changes)
            {
                return Ok(Some(held));
            }
        }
        self.update(&generation, applied, poll.changes)
            .await
            .map(Some)
    }

    fn held(&self) -> Option<Arc<Snapshot>> {
        sync::read(&self.current).clone()
    }

    fn store(&self, snapshot: Arc<Snapshot>) {
        *sync::write(&self.current) = Some(snapshot);
    }

    /// Applies the polled changes, or reloads; one request at a time, the others then find the
    /// result already in place.
    async fn update(
        &self,
        generation: &str,
        polled_from: ChangeId,
        changes: Vec<Change>,
    ) -> Result<Arc<Snapshot>, ReadError> {
        let _single_flight = self.updating.lock().await;
        let latest_polled = changes.last().map_or(polled_from, |c| c.id);
        if let Some(latest) = self.held() {
            if latest.generation() == generation {
                if latest.applied() >= latest_polled && latest.applied() >= polled_from {
                    return Ok(latest);
                }
                if latest.applied() >= polled_from && continues_from(polled_from, &changes) {
                    let updated = Arc::new(latest.with_changes(&changes));
                    self.store(updated.clone());
                    return Ok(updated);
                }
            }
        }
        let reloaded = Arc::new(self.reload().await?);
        self.store(reloaded.clone());
        Ok(reloaded)
    }

    /// One atomic round trip: the generation and the changes from `applied` on (inclusive, so
    /// a trimmed stream is noticed).
    async fn poll(&self, applied: ChangeId) -> Result<Poll, StoreError> {
        let mut redis = self.redis.clone();
        let mut pipeline = redis::pipe();
        pipeline
            .atomic()
            .hget(self.keys.meta(), "generation")
            .xrange(self.keys.changes(), applied.to_string(), "+");
        let (generation, changes): (Option<String>, StreamRangeReply) = self
            .metrics
            .timed_store_request("redis", "cache_poll", pipeline.query_async(&mut redis))
            .await
            .map_err(StoreError::from)?;
        Ok(Poll {
            generation,
            changes: read_changes(changes),
        })
    }

    /// Reads the whole live hash and the id of the newest change, atomically: pushes update
    /// both in one script, so the hash already holds every change up to that id.
    async fn reload(&self) -> Result<Snapshot, ReadError> {
        let mut redis = self.redis.clone();
        let mut pipeline = redis::pipe();
        pipeline
            .atomic()
            .hget(self.keys.meta(), "generation")
            .hgetall(self.keys.live())
            .xrevrange_count(self.keys.changes(), "+", "-", 1);
        let (generation, hash, newest): (Option<String>, Vec<(String, String)>, StreamRangeReply) =
            self.metrics
                .timed_store_request("redis", "cache_reload", pipeline.query_async(&mut redis))
                .await
                .map_err(StoreError::from)?;
        let applied = read_changes(newest)
            .first()
            .map(|c| c.id)
            .unwrap_or_default();
        let generation = generation.unwrap_or_default();
        // Sorting 100k entries takes a while: keep it off the async workers.
        let snapshot =
            tokio::task::spawn_blocking(move || Snapshot::load(generation, applied, hash))
                .await
                .map_err(|e| ReadError::Load(e.to_string()))?;
        tracing::info!(
            generation = snapshot.generation(),
            devices = snapshot.len(),
            "customer cache loaded"
        );
        Ok(snapshot)
    }
}

/// Stream entries as changes; entries without a serial or entry field are skipped.
fn read_changes(reply: StreamRangeReply) -> Vec<Change> {
    reply
        .ids
        .into_iter()
        .filter_map(|stream_id| {
            Some(Change {
                id: ChangeId::parse(&stream_id.id)?,
                serial: stream_id.get("serial")?,
                entry: stream_id.get("entry")?,
            })
        })
        .collect()
}
