//! Helpers of the API client tests: clients of a running simulator with a fast retry policy.

use std::sync::Arc;
use std::time::Duration;

use hawkeye_customer_cache::apis::{BruinClient, HawkeyeClient, DEFAULT_RETRY_POLICY};
use hawkeye_customer_cache::observe::Metrics;
use hawkeye_customer_cache::retry::RetryPolicy;
use hawkeye_devtools::sim::RunningSim;

/// The default number of attempts, with waits of milliseconds so tests stay quick.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retry_after: Duration::from_millis(50),
        ..DEFAULT_RETRY_POLICY
    }
}

pub fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new().expect("metrics registry"))
}

pub fn hawkeye_client(sim: &RunningSim, metrics: Arc<Metrics>) -> HawkeyeClient {
    HawkeyeClient::new(&sim.hawkeye_settings(), metrics)
        .expect("hawkeye client")
        .with_retry_policy(fast_retry())
}

pub fn bruin_client(sim: &RunningSim, metrics: Arc<Metrics>) -> BruinClient {
    BruinClient::new(&sim.bruin_settings(), metrics)
        .expect("bruin client")
        .with_retry_policy(fast_retry())
}
