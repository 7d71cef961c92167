//! The fault suite (issue 7): scenarios that drive the real stack (`scripts/stack`), inject
//! faults (kill -9, stopped servers, rebalances, poison, API faults, bad requests) and check
//! by counting that every produced event is in both stores at its latest version, plus the
//! security checks (an authenticated store, no secret in any output).
//!
//! These tests stop and start the stack's servers, so they are `#[ignore]`d in the ordinary
//! `cargo test` and run on their own, one at a time, after the integration tests:
//!
//! ```sh
//! eval "$(scripts/stack env)"
//! cargo test --test faults -- --ignored --test-threads 1 --nocapture            # quick (CI)
//! FAULTS_FULL=1 cargo test --test faults -- --ignored --test-threads 1 --nocapture  # full
//! ```
//!
//! Each scenario prints a `FIGURES | ...` line: the rows of RELIABILITY.md.

mod cassandra_auth;
mod cassandra_cluster;
mod cassandra_tls;
mod harness;
mod kill9;
mod outages;
mod own_cassandra;
mod own_redis_cluster;
mod own_stack;
mod poison;
mod rebalance;
mod redis_auth;
mod redis_cluster_failover;
mod redis_tls;
mod refresh_faults;
mod refusals;
mod requests;
mod secrets;
mod secured;
