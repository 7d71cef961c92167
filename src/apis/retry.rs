//! The one retry policy of both APIs: transient failures ([`ApiError::is_transient`]) are
//! retried with capped exponential backoff and jitter; a small `Retry-After` is honoured.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use super::ApiError;
use crate::observe::Metrics;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Calls in all, the first included.
    pub max_attempts: u32,
    /// Backoff ceiling after the first failure; doubles after each further failure.
    pub base_delay: Duration,
    /// Cap of the backoff ceiling.
    pub max_delay: Duration,
    /// Longest `Retry-After` obeyed; a longer one is shortened to this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// Five calls, waiting about 0.2, 0.4, 0.8 and 1.6 s between them: a blip is ridden out
    /// within seconds, an outage is reported instead of stalling the refresh.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Upper bound of the wait after failed call number `failures` (1-based):
    /// `base_delay · 2^(failures-1)`, capped at `max_delay`.
    pub fn backoff_ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.base_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay)
    }

    /// The wait after failed call number `failures`. `jitter` in `[0, 1]` picks a point in the
    /// upper half of the ceiling ("equal jitter"): never zero, and callers that failed together
    /// do not come back together. A `Retry-After` replaces the backoff, up to `max_retry_after`.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        if let Some(asked) = retry_after {
            return asked.min(self.max_retry_after);
        }
        let ceiling = self.backoff_ceiling(failures);
        ceiling / 2 + ceiling.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    }

    /// Runs `call` until it succeeds, fails permanently or used `max_attempts`. Counts every
    /// call in `api_requests_total{api, outcome=ok|retry|error}`.
    pub async fn run<T, F, Fut>(
        &self,
        api: &'static str,
        metrics: &Metrics,
        mut call: F,
    ) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut failures = 0;
        loop {
            match call().await {
                Ok(value) => {
                    metrics.api_requests.with_label_values(&[api, "ok"]).inc();
                    return Ok(value);
                }
                Err(error) => {
                    failures += 1;
                    if !error.is_transient() || failures >= self.max_attempts {
                        metrics
                            .api_requests
                            .with_label_values(&[api, "error"])
                            .inc();
                        return Err(error);
                    }
                    metrics
                        .api_requests
                        .with_label_values(&[api, "retry"])
                        .inc();
                    let delay = self.delay(failures, error.retry_after(), rand::rng().random());
                    tracing::debug!(api, %error, failures, delay_ms = delay.as_millis() as u64, "retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(2),
        }
    }

    #[test]
    fn backoff_doubles_until_the_cap() {
        let ceilings: Vec<u128> = (1..=6)
            .map(|n| policy().backoff_ceiling(n).as_millis())
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 500, 500, 500]);
        assert_eq!(policy().backoff_ceiling(1000), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_in_the_upper_half_of_the_ceiling() {
        assert_eq!(policy().delay(3, None, 0.0), Duration::from_millis(200));
        assert_eq!(policy().delay(3, None, 1.0), Duration::from_millis(400));
        assert_eq!(policy().delay(3, None, 0.5), Duration::from_millis(300));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_limit() {
        assert_eq!(
            policy().delay(1, Some(Duration::from_secs(1)), 0.3),
            Duration::from_secs(1)
        );
        assert_eq!(
            policy().delay(1, Some(Duration::from_secs(60)), 0.3),
            Duration::from_secs(2)
        );
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            ..policy()
        }
    }

    fn unavailable() -> ApiError {
        ApiError::Status {
            api: "test",
            status: 503,
            retry_after: None,
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let metrics = Metrics::new().unwrap();
        let calls = AtomicU32::new(0);
        let result = fast()
            .run("test", &metrics, || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(unavailable())
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(
            metrics
                .api_requests
                .with_label_values(&["test", "retry"])
                .get(),
            2
        );
        assert_eq!(
            metrics
                .api_requests
                .with_label_values(&["test", "ok"])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_never_retries_permanent_errors() {
        let metrics = Metrics::new().unwrap();
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = fast()
            .run("test", &metrics, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(unavailable())
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        let calls = AtomicU32::new(0);
        let result: Result<(), _> = fast()
            .run("test", &metrics, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ApiError::Status {
                    api: "test",
                    status: 404,
                    retry_after: None,
                })
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            metrics
                .api_requests
                .with_label_values(&["test", "error"])
                .get(),
            2
        );
    }
}
