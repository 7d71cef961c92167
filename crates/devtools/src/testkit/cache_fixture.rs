//! Writes a customer cache into Redis with the layout of `docs/architecture.md` ("The customer
//! cache in Redis"), as a successful refresh publishes it, so that serving can be tested on
//! its own.

use std::collections::HashMap;

use hawkeye_customer_cache::cache::keys::CacheKeys;
use hawkeye_customer_cache::stores::redis::RedisConnection;
use serde_json::{json, Value};

use super::stack;

pub async fn redis_connection() -> RedisConnection {
    RedisConnection::connect(&stack().redis_url)
        .await
        .expect("cannot connect to the stack's Redis")
}

/// The customer cache keys of one service instance (its `ENVIRONMENT_NAME`).
pub struct CacheFixture {
    pub keys: CacheKeys,
    pub redis: RedisConnection,
}

impl CacheFixture {
    pub async fn new(env: &HashMap<String, String>) -> Self {
        CacheFixture {
            keys: CacheKeys::new(&env["ENVIRONMENT_NAME"]),
            redis: redis_connection().await,
        }
    }

    /// Replaces the live cache with `entries` (keyed by their `serial_number`) in one step:
    /// live hash, `meta` with a new generation, `changes` cleared. Returns the generation.
    pub async fn publish(&self, entries: &[Value]) -> String {
        let generation = uuid::Uuid::new_v4().to_string();
        let mut pipe = redis::pipe();
        pipe.atomic().del(self.keys.live());
        for batch in entries.chunks(1000) {
            let fields: Vec<(String, String)> = batch
                .iter()
                .map(|entry| {
                    let serial = entry["serial_number"].as_str().expect("serial_number");
                    (serial.to_string(), entry.to_string())
                })
                .collect();
            pipe.hset_multiple(self.keys.live(), &fields);
        }
        pipe.hset_multiple(
            self.keys.meta(),
            &[
                ("generation", generation.clone()),
                ("refreshed_at", chrono::Utc::now().to_rfc3339()),
                ("devices", entries.len().to_string()),
            ],
        )
        .del(self.keys.changes());
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis)
            .await
            .expect("cannot write the cache fixture");
        generation
    }

    /// The stored JSON of one entry.
    pub async fn stored(&self, serial: &str) -> Option<String> {
        let mut redis = self.redis.clone();
        redis::cmd("HGET")
            .arg(self.keys.live())
            .arg(serial)
            .query_async(&mut redis)
            .await
            .expect("HGET")
    }

    /// Deletes every key of this cache.
    pub async fn remove(&self) {
        let mut redis = self.redis.clone();
        redis::pipe()
            .del(self.keys.live())
            .del(self.keys.meta())
            .del(self.keys.changes())
            .query_async::<()>(&mut redis)
            .await
            .expect("cannot remove the cache fixture");
    }
}

/// A cache entry with the exact keys of `CONTRACT.md` §4.
pub fn entry(serial: &str, last_contact: &str) -> Value {
    json!({
        "probe_id": "27",
        "probe_uid": "b8:27:eb:76:a8:de",
        "probe_group": "FIS",
        "device_type_name": "xr_pi",
        "last_contact": last_contact,
        "serial_number": serial,
        "bruin_client_info": {"client_id": 9994, "client_name": "METTEL/NEW YORK", "site_id": 2048}
    })
}
