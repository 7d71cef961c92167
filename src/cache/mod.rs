//! The customer cache: crossing rules and their tally, the refresh job and its triggers, its Redis layout, and
//! serving requests from an in-memory snapshot kept in step with Redis.

pub mod client;
pub mod crossing;
pub mod filter;
pub mod get;
pub mod keys;
pub mod last_contact;
pub mod notifications;
pub mod publish;
pub mod reader;
pub mod refresh;
pub mod rules;
pub mod serve;
pub mod snapshot;
pub mod trigger;
