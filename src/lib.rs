//! hawkeye-customer-cache: an event-driven Kafka stream processor that keeps the Hawkeye/Bruin
//! customer cache and pushes device profile updates into Redis and Cassandra.

pub mod apis;
pub mod cache;
pub mod config;
pub mod kafka;
pub mod observe;
pub mod profile;
pub mod push;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod stores;
pub mod supervisor;
pub mod sync;
pub mod tools;
