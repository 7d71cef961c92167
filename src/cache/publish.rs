//! The Redis side of a refresh (layout in `docs/architecture.md`): the lock that keeps one
//! refresh at a time across instances, the staging hash a refresh builds, and the one Lua
//! script that swaps it in, so readers see the old cache or the new one, never a mix.

use std::sync::LazyLock;
use std::time::Duration;

use crate::stores::redis::RedisConnection;
use redis::{RedisError, Script};

use super::keys::CacheKeys;

/// A lock whose holder died frees itself after this long.
pub const LOCK_TTL: Duration = Duration::from_secs(30);
/// The holder renews well before the TTL runs out, so one slow Redis call does not lose it.
pub const LOCK_RENEW_EVERY: Duration = Duration::from_secs(10);
/// A staging hash left behind by a refresh that died disappears after this long.
const STAGING_TTL: Duration = Duration::from_secs(600);
/// Entries per pipelined `HSET` of the staging hash.
const STAGING_CHUNK: usize = 1000;

/// Extends the lock only when it still holds our token.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
              return redis.call('PEXPIRE', KEYS[1], ARGV[2])
          end
          return 0",
    )
});

/// Deletes the lock only when it still holds our token (never another instance's lock).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
              return redis.call('DEL', KEYS[1])
          end
          return 0",
    )
});

/// KEYS: lock, staging, live, meta, changes. ARGV: token, generation, refreshed_at, devices.
/// Checks the lock and the staging hash, then replaces the live cache, its meta and its
/// changes in one atomic step. `RENAME` keeps the staging TTL, hence the `PERSIST`.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then
              return 'lock_lost'
          end
          local devices = tonumber(ARGV[4])
          if redis.call('HLEN', KEYS[2]) ~= devices then
              return 'staging_incomplete'
          end
          if devices > 0 then
              redis.call('RENAME', KEYS[2], KEYS[3])
              redis.call('PERSIST', KEYS[3])
          else
              redis.call('DEL', KEYS[3])
          end
          redis.call('HSET', KEYS[4], 'generation', ARGV[2], 'refreshed_at', ARGV[3],
                     'devices', ARGV[4])
          redis.call('DEL', KEYS[5])
          return 'published'",
    )
});

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the refresh lock was lost (it expired or another instance holds it)")]
    LockLost,
    #[error("the staging hash does not hold every entry (it expired or was removed)")]
    StagingIncomplete,
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("unexpected answer of the publish script: {0}")]
    UnexpectedAnswer(String),
}

/// The refresh lock, held by this process until released or expired.
pub struct RefreshLock {
    connection: RedisConnection,
    key: String,
    token: String,
}

impl RefreshLock {
    /// Takes the lock if no one holds it (`SET NX PX` with a random token).
    pub async fn try_acquire(
        mut connection: RedisConnection,
        keys: &CacheKeys,
    ) -> Result<Option<Self>, RedisError> {
        let key = keys.lock();
        let token = uuid::Uuid::new_v4().to_string();
        let taken: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(millis(LOCK_TTL))
            .query_async(&mut connection)
            .await?;
        Ok(taken.map(|_| RefreshLock {
            connection,
            key,
            token,
        }))
    }

    /// Extends the lock by [`LOCK_TTL`]; `Ok(false)` when it is no longer ours.
    pub async fn renew(&self) -> Result<bool, RedisError> {
        let renewed: i64 = RENEW
            .key(&self.key)
            .arg(&self.token)
            .arg(millis(LOCK_TTL))
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(renewed == 1)
    }

    /// Renews the lock every [`LOCK_RENEW_EVERY`]; returns only once the lock is lost. A
    /// renewal that fails on a Redis error is tried again at the next tick: if the lock
    /// expires meanwhile, the publish script refuses to publish anyway.
    pub async fn keep_alive(&self) {
        loop {
            tokio::time::sleep(LOCK_RENEW_EVERY).await;
            match self.renew().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(error = %e, "cannot renew the refresh lock"),
            }
        }
    }

    /// Deletes the lock if it is still ours.
    pub async fn release(self) -> Result<(), RedisError> {
        let mut connection = self.connection.clone();
        RELEASE
            .key(&self.key)
            .arg(&self.token)
            .invoke_async::<i64>(&mut connection)
            .await?;
        Ok(())
    }
}

/// What `meta` records about a published cache.
#[derive(Debug, Clone)]
pub struct Generation {
    pub id: String,
    pub refreshed_at: String,
    pub devices: usize,
}

/// Writes `entries` (serial → entry JSON) into the staging hash, in pipelined chunks that
/// also (re)set its expiry.
pub async fn write_staging(
    mut connection: RedisConnection,
    staging_key: &str,
    entries: &[(String, String)],
) -> Result<(), RedisError> {
    for chunk in entries.chunks(STAGING_CHUNK) {
        redis::pipe()
            .hset_multiple(staging_key, chunk)
            .ignore()
            .expire(staging_key, STAGING_TTL.as_secs() as i64)
            .ignore()
            .query_async::<()>(&mut connection)
            .await?;
    }
    Ok(())
}

/// Replaces the live cache with the staging hash, atomically, if `lock` is still held.
pub async fn publish(
    lock: &RefreshLock,
    keys: &CacheKeys,
    staging_key: &str,
    generation: &Generation,
) -> Result<(), PublishError> {
    let answer: String = PUBLISH
        .key(&lock.key)
        .key(staging_key)
        .key(keys.live())
        .key(keys.meta())
        .key(keys.changes())
        .arg(&lock.token)
        .arg(&generation.id)
        .arg(&generation.refreshed_at)
        .arg(generation.devices)
        .invoke_async(&mut lock.connection.clone())
        .await?;
    match answer.as_str() {
        "published" => Ok(()),
        "lock_lost" => Err(PublishError::LockLost),
        "staging_incomplete" => Err(PublishError::StagingIncomplete),
        _ => Err(PublishError::UnexpectedAnswer(answer)),
    }
}

/// Removes the staging hash of a refresh that will not publish.
pub async fn discard_staging(
    mut connection: RedisConnection,
    staging_key: &str,
) -> Result<(), RedisError> {
    redis::cmd("DEL")
        .arg(staging_key)
        .query_async::<()>(&mut connection)
        .await
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}
