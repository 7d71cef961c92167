//! The retry of both APIs: the service's [`RetryPolicy`] with transient failures
//! ([`ApiError::is_transient`]) retried and a small `Retry-After` honoured; every call counted in
//! `api_requests_total{api, outcome=ok|retry|error}`.

use std::future::Future;
use std::time::Duration;

use super::ApiError;
use crate::observe::Metrics;
use crate::retry::{Failure, RetryPolicy};

/// Five calls, waiting about 0.2, 0.4, 0.8 and 1.6 s between them: a blip is ridden out within
/// seconds, an outage is reported instead of stalling the refresh.
pub const DEFAULT_RETRY_POLICY: RetryPolicy = RetryPolicy {
    max_attempts: Some(5),
    max_retry_after: Duration::from_secs(10),
    ..RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(5))
};

/// Runs `call` under `policy` until it succeeds, fails permanently or used the attempts.
pub async fn with_retries<T, Fut>(
    policy: &RetryPolicy,
    api: &'static str,
    metrics: &Metrics,
    call: impl FnMut() -> Fut,
) -> Result<T, ApiError>
where
    Fut: Future<Output = Result<T, ApiError>>,
{
    let count = |outcome: &str| {
        metrics
            .api_requests
            .with_label_values(&[api, outcome])
            .inc()
    };
    let result = policy
        .run(
            call,
            classify,
            |retry| {
                count("retry");
                tracing::debug!(api, error = %retry.error, failures = retry.failures, delay_ms = retry.delay.as_millis() as u64, "retrying");
            },
            tokio::time::sleep,
        )
        .await;
    count(if result.is_ok() { "ok" } else { "error" });
    result
}

fn classify(error: &ApiError) -> Failure {
    match error.retry_after() {
        Some(asked) if error.is_transient() => Failure::TransientAfter(asked),
        _ => Failure::of(error.is_transient()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: Some(4),
            ..RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(2))
        }
    }

    fn unavailable() -> ApiError {
        ApiError::Status {
            api: "test",
            status: 503,
            retry_after: None,
        }
    }

    #[test]
    fn a_retry_after_is_obeyed_only_on_a_transient_answer() {
        let answer = |status| ApiError::Status {
            api: "test",
            status,
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            classify(&answer(429)),
            Failure::TransientAfter(Duration::from_secs(3))
        );
        assert_eq!(classify(&answer(404)), Failure::Permanent);
        assert_eq!(classify(&unavailable()), Failure::Transient);
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let metrics = Metrics::new().unwrap();
        let calls = AtomicU32::new(0);
        let result = with_retries(&fast(), "test", &metrics, || async {
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
        let result: Result<(), _> = with_retries(&fast(), "test", &metrics, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(unavailable())
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retries(&fast(), "test", &metrics, || async {
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
