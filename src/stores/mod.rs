//! Adapters of the two stores the service writes: Redis and Cassandra/ScyllaDB.

mod acknowledged;
mod adoption;
mod batches;
pub mod cassandra;
mod error;
pub mod lives;
pub mod profiles;
pub mod rebuild;
pub mod redis;
mod redis_cluster;
mod remembered;
pub mod scan;
pub mod schema;
pub mod slots;
pub mod stored_profile;
pub mod verify;

pub use self::cassandra::CassandraStore;
pub use self::error::{CassandraCause, CassandraError, StoreError};
pub use self::profiles::ProfileStores;
pub use self::redis::RedisStore;
