//! Adapters of the two stores the service writes, Redis and Cassandra/ScyllaDB, and the unit
//! that writes both at once ([`ProfileStores`]).

mod adoption;
pub mod cassandra;
mod error;
pub mod profiles;
pub mod redis;
mod remembered;
pub mod stored_profile;

pub use self::cassandra::CassandraStore;
pub use self::error::{CassandraCause, CassandraError, StoreError};
pub use self::profiles::ProfileStores;
pub use self::redis::RedisStore;
