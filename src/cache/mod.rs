//! The customer cache: crossing rules, the refresh job, its Redis layout, and serving requests.

pub mod keys;
