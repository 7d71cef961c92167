//! Adapters of the two stores the service writes: Redis and Cassandra/ScyllaDB.

pub mod cassandra;
pub mod profiles;
pub mod redis;

pub use self::cassandra::CassandraStore;
pub use self::profiles::ProfileStores;
pub use self::redis::RedisStore;

/// A store call that failed. Texts never include credentials.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("cassandra: {0}")]
    Cassandra(String),
}

impl StoreError {
    pub fn cassandra(context: &str, error: impl std::fmt::Display) -> Self {
        StoreError::Cassandra(format!("{context}: {error}"))
    }
}
