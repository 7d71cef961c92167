//! The customer cache: crossing rules, the refresh job, its Redis layout, and serving requests.

pub mod client;
pub mod filter;
pub mod get;
pub mod keys;
pub mod publish;
pub mod refresh;
pub mod rules;
pub mod serve;
pub mod snapshot;
pub mod trigger;
