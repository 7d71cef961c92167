//! The harness's own view of the stores: the service's write path for baselines and ceilings,
//! and reads of what a reader of the stores would see.

use std::sync::Arc;

use anyhow::Context;
use redis::AsyncCommands;
use scylla::statement::prepared::PreparedStatement;

use hawkeye_customer_cache::config::StoreSettings;
use hawkeye_customer_cache::observe::Metrics;
use hawkeye_customer_cache::stores::{CassandraStore, ProfileStores, RedisStore};

/// Longest wait for Cassandra's compactions before a timed phase.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Harness {
    pub redis: RedisStore,
    pub cassandra: CassandraStore,
    /// The service's own write path (`ProfileStores::upsert`).
    pub stores: ProfileStores,
    select_text: Arc<PreparedStatement>,
}

impl Harness {
    /// Waits (up to [`SETTLE_TIMEOUT`]) until Cassandra runs no compaction, so that the CPU a
    /// timed phase reads from its process is that phase's, not the debt of the one before it.
    /// A server without `system_views.sstable_tasks` (ScyllaDB) is not waited for.
    pub async fn settle_compactions(&self) {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            let tasks = self
                .cassandra
                .session()
                .query_unpaged("SELECT kind FROM system_views.sstable_tasks", ())
                .await
                .ok()
                .and_then(|result| result.into_rows_result().ok())
                .map(|rows| rows.rows_num());
            match tasks {
                Some(running) if running > 0 => tokio::time::sleep(SETTLE_POLL).await,
                _ => return,
            }
        }
        eprintln!("bench: Cassandra still compacting after {SETTLE_TIMEOUT:?}; timing anyway");
    }

    pub async fn connect(settings: &StoreSettings) -> anyhow::Result<Self> {
        let redis = RedisStore::connect(settings).await?;
        let cassandra = CassandraStore::connect(settings).await?;
        let stores =
            ProfileStores::new(redis.clone(), cassandra.clone(), Arc::new(Metrics::new()?)).await?;
        let cql = format!(
            "SELECT producer_id FROM {}.device_profile WHERE device_id = ?",
            cassandra.keyspace()
        );
        let select_text = cassandra
            .session()
            .prepare(cql)
            .await
            .context("cannot prepare the probe query")?;
        Ok(Harness {
            redis,
            cassandra,
            stores,
            select_text: Arc::new(select_text),
        })
    }

    /// `producer_id` of the device's Redis hash.
    pub async fn redis_producer_id(&self, device_id: &str) -> anyhow::Result<Option<String>> {
        let mut connection = self.redis.connection();
        Ok(connection
            .hget(self.redis.device_key(device_id), "producer_id")
            .await?)
    }

    /// `producer_id` of the device's `device_profile` row.
    pub async fn cassandra_producer_id(&self, device_id: &str) -> anyhow::Result<Option<String>> {
        let row = self
            .cassandra
            .session()
            .execute_unpaged(&self.select_text, (device_id,))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<String>,)>()?;
        Ok(row.and_then(|(producer_id,)| producer_id))
    }

    /// Whether neither store holds a `producer_id` for the device (deleted, or never written).
    pub async fn both_lack(&self, device_id: &str) -> anyhow::Result<bool> {
        let (redis, cassandra) = futures::join!(
            self.redis_producer_id(device_id),
            self.cassandra_producer_id(device_id)
        );
        Ok(redis?.is_none() && cassandra?.is_none())
    }

    /// Whether both stores hold `producer_id` for the device.
    pub async fn both_show(&self, device_id: &str, producer_id: &str) -> anyhow::Result<bool> {
        let (redis, cassandra) = futures::join!(
            self.redis_producer_id(device_id),
            self.cassandra_producer_id(device_id)
        );
        Ok(redis?.as_deref() == Some(producer_id) && cassandra?.as_deref() == Some(producer_id))
    }
}
