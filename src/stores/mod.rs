//! Adapters of the two stores the service writes: Redis and Cassandra/ScyllaDB.

pub mod cassandra;
mod error;
pub mod profiles;
pub mod redis;

pub use self::cassandra::CassandraStore;
pub use self::error::{CassandraCause, CassandraError, StoreError};
pub use self::profiles::ProfileStores;
pub use self::redis::RedisStore;
