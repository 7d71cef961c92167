//! Redis: connection with automatic reconnection, shared by every task.

use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

use super::StoreError;
use crate::config::StoreSettings;
use crate::observe::http::ReadinessCheck;

#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    device_key_prefix: String,
}

impl RedisStore {
    /// Connects and checks the server answers; start-up fails here when Redis is unreachable.
    pub async fn connect(settings: &StoreSettings) -> Result<Self, StoreError> {
        let client = redis::Client::open(settings.redis_url.expose())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(2);
        let connection = client.get_connection_manager_with_config(config).await?;
        let store = RedisStore {
            connection,
            device_key_prefix: settings.redis_device_key_prefix.clone(),
        };
        store.ping().await?;
        Ok(store)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await?;
        Ok(())
    }

    /// A handle for issuing commands; cheap to clone, reconnects by itself.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Key of the hash of one device: `{REDIS_DEVICE_KEY_PREFIX}{device_id}`.
    pub fn device_key(&self, device_id: &str) -> String {
        format!("{}{device_id}", self.device_key_prefix)
    }
}

impl ReadinessCheck for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.ping().await.map_err(|e| e.to_string()) })
    }
}
