//! Redis: one server or a Redis Cluster behind one connection type shared by every task
//! ([`connection`]), over TLS with the same CA and client certificate for every server
//! ([`tls`]), the device keys ([`RedisStore`]) and the device profile writer ([`writer`]: the
//! upsert and delete scripts).

mod cluster;
mod connection;
pub mod slots;
mod tls;
mod writer;

use futures::future::BoxFuture;

use self::slots::same_slot_name;
use super::StoreError;
use crate::config::StoreSettings;
use crate::observe::http::ReadinessCheck;

pub use self::connection::RedisConnection;
pub use self::tls::TlsRefusal;
pub use self::writer::{hash_value, ProfileWriter};

#[derive(Clone)]
pub struct RedisStore {
    connection: RedisConnection,
    device_key_prefix: String,
}

impl RedisStore {
    /// Connects and checks the server answers; start-up fails here when Redis is unreachable
    /// (see [`connect_failure`] for what to check).
    pub async fn connect(settings: &StoreSettings) -> Result<Self, StoreError> {
        let connection =
            RedisConnection::connect_with_tls(settings.redis_url.expose(), &settings.redis_tls)
                .await?;
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
    pub fn connection(&self) -> RedisConnection {
        self.connection.clone()
    }

    /// Key of the hash of one device: `{REDIS_DEVICE_KEY_PREFIX}{device_id}`.
    pub fn device_key(&self, device_id: &str) -> String {
        format!("{}{device_id}", self.device_key_prefix)
    }

    /// Key of the companion hash holding the per-field versions of one device.
    pub fn device_versions_key(&self, device_id: &str) -> String {
        versions_key(&self.device_key(device_id))
    }
}

/// What a failed [`RedisStore::connect`] says to check, in words naming the setting: a TLS
/// file when the handshake was refused over a certificate ([`TlsRefusal`]), else `REDIS_URL`.
/// Never the URL itself (it may hold the password).
pub fn connect_failure(error: &StoreError) -> &'static str {
    tls_refusal(error).unwrap_or("cannot reach Redis (REDIS_URL)")
}

/// What to check when `error` is a TLS handshake Redis refused over a certificate, naming the
/// setting; `None` for any other error.
pub fn tls_refusal(error: &StoreError) -> Option<&'static str> {
    match error {
        StoreError::Redis(error) => TlsRefusal::of(error).map(TlsRefusal::describe),
        StoreError::Cassandra(_) => None,
    }
}

/// Key of the versions hash that goes with the device hash `device_key`, in its slot, so that
/// the upsert script may touch both on a cluster: `versions:{device:d-1}` for `device:d-1`
/// (see [`same_slot_name`] for keys holding braces).
pub fn versions_key(device_key: &str) -> String {
    format!("versions:{}", same_slot_name(device_key))
}

impl ReadinessCheck for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.ping().await.map_err(|e| e.to_string()) })
    }
}
