//! The refresh's Redis edge against the real Redis: the lock admits one holder and only its
//! holder can release it, and publishing swaps the staging hash in atomically (live without
//! TTL, meta, changes cleared), or changes nothing when the lock is lost or staging is short.

use hawkeye_customer_cache::cache::keys::CacheKeys;
use hawkeye_customer_cache::cache::publish::{
    self, Generation, PublishError, RefreshLock, LOCK_TTL,
};
use hawkeye_customer_cache::stores::redis::RedisConnection;
use hawkeye_devtools::testkit::cache_fixture::redis_connection;
use hawkeye_devtools::testkit::unique;
use redis::AsyncCommands;

fn generation(devices: usize) -> Generation {
    Generation {
        id: uuid::Uuid::new_v4().to_string(),
        refreshed_at: "2024-05-01T10:00:00.000Z".into(),
        devices,
    }
}

fn entries(serials: &[&str]) -> Vec<(String, String)> {
    serials
        .iter()
        .map(|serial| {
            (
                serial.to_string(),
                format!(r#"{{"serial_number":"{serial}"}}"#),
            )
        })
        .collect()
}

async fn live(redis: &mut RedisConnection, keys: &CacheKeys) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = redis.hgetall(keys.live()).await.unwrap();
    all.sort();
    all
}

async fn acquire(redis: &RedisConnection, keys: &CacheKeys) -> RefreshLock {
    RefreshLock::try_acquire(redis.clone(), keys)
        .await
        .unwrap()
        .expect("the lock is free")
}

#[tokio::test]
async fn the_lock_has_one_holder_and_an_expiry() {
    let mut redis = redis_connection().await;
    let keys = CacheKeys::new(&unique("lock"));
    let first = acquire(&redis, &keys).await;
    assert!(RefreshLock::try_acquire(redis.clone(), &keys)
        .await
        .unwrap()
        .is_none());
    let ttl: i64 = redis.pttl(keys.lock()).await.unwrap();
    assert!(ttl > 0 && ttl <= LOCK_TTL.as_millis() as i64, "ttl {ttl}");
    assert!(first.renew().await.unwrap());

    first.release().await.unwrap();
    let second = acquire(&redis, &keys).await;
    second.release().await.unwrap();
    let exists: bool = redis.exists(keys.lock()).await.unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn a_lost_lock_is_neither_renewed_nor_released_nor_published() {
    let mut redis = redis_connection().await;
    let keys = CacheKeys::new(&unique("lost"));
    let lock = acquire(&redis, &keys).await;
    // The lock expired and another instance took it.
    let _: () = redis.set(keys.lock(), "other-instance").await.unwrap();
    assert!(!lock.renew().await.unwrap());

    let staging = keys.staging("run");
    publish::write_staging(redis.clone(), &staging, &entries(&["A"]))
        .await
        .unwrap();
    let error = publish::publish(&lock, &keys, &staging, &generation(1))
        .await
        .unwrap_err();
    assert!(matches!(error, PublishError::LockLost), "{error}");
    let live_exists: bool = redis.exists(keys.live()).await.unwrap();
    assert!(!live_exists);

    lock.release().await.unwrap();
    let holder: String = redis.get(keys.lock()).await.unwrap();
    assert_eq!(holder, "other-instance");
    let _: () = redis.del(&[keys.lock(), staging]).await.unwrap();
}

#[tokio::test]
async fn publishing_swaps_in_the_staging_hash_with_meta_and_no_ttl() {
    let mut redis = redis_connection().await;
    let keys = CacheKeys::new(&unique("publish"));
    let _: () = redis.hset(keys.live(), "OLD", "{}").await.unwrap();
    let _: String = redis
        .xadd(keys.changes(), "*", &[("serial", "OLD")])
        .await
        .unwrap();
    let lock = acquire(&redis, &keys).await;

    // More than one pipelined chunk.
    let serials: Vec<String> = (0..2500).map(|i| format!("S{i:05}")).collect();
    let serial_refs: Vec<&str> = serials.iter().map(String::as_str).collect();
    let staging = keys.staging("run1");
    publish::write_staging(redis.clone(), &staging, &entries(&serial_refs))
        .await
        .unwrap();
    let staging_ttl: i64 = redis.ttl(&staging).await.unwrap();
    assert!(staging_ttl > 0, "the staging hash must expire by itself");
    let published = generation(serials.len());
    publish::publish(&lock, &keys, &staging, &published)
        .await
        .unwrap();

    let stored = live(&mut redis, &keys).await;
    assert_eq!(stored.len(), 2500);
    assert_eq!(
        stored[0],
        ("S00000".into(), r#"{"serial_number":"S00000"}"#.into())
    );
    let live_ttl: i64 = redis.ttl(keys.live()).await.unwrap();
    assert_eq!(live_ttl, -1, "the live cache must not expire");
    let meta: std::collections::HashMap<String, String> = redis.hgetall(keys.meta()).await.unwrap();
    assert_eq!(meta["generation"], published.id);
    assert_eq!(meta["devices"], "2500");
    assert_eq!(meta["refreshed_at"], "2024-05-01T10:00:00.000Z");
    let gone: Vec<bool> = redis::pipe()
        .exists(&staging)
        .exists(keys.changes())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(gone, [false, false]);

    // An empty fleet result empties the cache but still records the generation.
    let empty = generation(0);
    publish::publish(&lock, &keys, &keys.staging("run2"), &empty)
        .await
        .unwrap();
    assert!(live(&mut redis, &keys).await.is_empty());
    let devices: String = redis.hget(keys.meta(), "devices").await.unwrap();
    assert_eq!(devices, "0");
    lock.release().await.unwrap();
    let _: () = redis.del(keys.meta()).await.unwrap();
}

#[tokio::test]
async fn an_incomplete_staging_hash_is_not_published() {
    let mut redis = redis_connection().await;
    let keys = CacheKeys::new(&unique("short"));
    let _: () = redis.hset(keys.live(), "OLD", "{}").await.unwrap();
    let lock = acquire(&redis, &keys).await;
    let staging = keys.staging("run");
    publish::write_staging(redis.clone(), &staging, &entries(&["A", "B"]))
        .await
        .unwrap();

    let error = publish::publish(&lock, &keys, &staging, &generation(3))
        .await
        .unwrap_err();
    assert!(matches!(error, PublishError::StagingIncomplete), "{error}");
    assert_eq!(live(&mut redis, &keys).await, [("OLD".into(), "{}".into())]);
    let meta_exists: bool = redis.exists(keys.meta()).await.unwrap();
    assert!(!meta_exists);

    publish::discard_staging(redis.clone(), &staging)
        .await
        .unwrap();
    lock.release().await.unwrap();
    let _: () = redis.del(keys.live()).await.unwrap();
}
