//! The one retry policy of the service: capped exponential backoff with jitter, an optional
//! limit on the calls; a permanent failure is final. Every retry loop (API
//! calls, probe fetches, the refresh's profile writes, the profile push) is this policy with its
//! own figures; the caller decides which failures are transient, what to record before each
//! retry, and how to wait (a sleep, or polling a paused consumer).

use std::future::Future;
use std::time::Duration;

use rand::Rng;

/// How a retry loop waits between calls: a function of the delay (e.g. `tokio::time::sleep`),
/// or a type holding state the wait needs mutably (e.g. a consumer polled while paused).
pub trait Wait {
    fn wait(&mut self, delay: Duration) -> impl Future<Output = ()> + Send;
}

impl<F, Fut> Wait for F
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = ()> + Send,
{
    fn wait(&mut self, delay: Duration) -> impl Future<Output = ()> + Send {
        self(delay)
    }
}

/// What a failed call says about trying it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// It may succeed later: an outage, an overload, a timeout.
    Transient,
    /// It may succeed later, and the other side asked to wait this long (HTTP `Retry-After`).
    TransientAfter(Duration),
    /// It would fail the same way again: an invalid request, a value of the wrong type.
    Permanent,
}

impl Failure {
    pub fn of(transient: bool) -> Self {
        if transient {
            Failure::Transient
        } else {
            Failure::Permanent
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Calls in all, the first included; `None`: until one succeeds.
    pub max_attempts: Option<u32>,
    /// Backoff ceiling after the first failure; doubles after each further failure.
    pub base_delay: Duration,
    /// Cap of the backoff ceiling.
    pub max_delay: Duration,
    /// Longest `Retry-After` obeyed; a longer one is shortened to this.
    pub max_retry_after: Duration,
}

/// A retry about to happen, for the caller's logs and metrics.
#[derive(Debug)]
pub struct Retry<'a, E> {
    pub error: &'a E,
    pub failure: Failure,
    /// Consecutive failed calls so far, this one included (1 on the first failure).
    pub failures: u32,
    /// The wait before the next call.
    pub delay: Duration,
}

impl RetryPolicy {
    /// Transient failures retried until a call succeeds, a permanent failure final, a
    /// `Retry-After` obeyed up to `max_delay`. Set the public fields for other limits.
    pub const fn new(base_delay: Duration, max_delay: Duration) -> Self {
        RetryPolicy {
            max_attempts: None,
            base_delay,
            max_delay,
            max_retry_after: max_delay,
        }
    }

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

    fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            failures: 0,
        }
    }

    /// Calls `call` until it succeeds or the policy gives up, then returns its last result.
    /// After each failure `classify` judges the error, `on_retry` sees the retry about to
    /// happen (log, count it) and `wait` waits the policy's delay: pass `tokio::time::sleep` to
    /// sleep. Dropping the future abandons the retries (e.g. in a `select!` with a shutdown).
    pub async fn run<T, E, Fut>(
        &self,
        mut call: impl FnMut() -> Fut,
        classify: impl Fn(&E) -> Failure,
        mut on_retry: impl FnMut(&Retry<'_, E>),
        mut wait: impl Wait,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = self.backoff();
        loop {
            let error = match call().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let failure = classify(&error);
            let Some(delay) = backoff.next_delay(failure) else {
                return Err(error);
            };
            on_retry(&Retry {
                error: &error,
                failure,
                failures: backoff.failures(),
                delay,
            });
            wait.wait(delay).await;
        }
    }
}

/// The consecutive failures of one operation: how long to wait after each, and when to stop.
#[derive(Debug, Clone)]
struct Backoff {
    policy: RetryPolicy,
    failures: u32,
}

impl Backoff {
    /// Records a failed call: the wait before the next one, or `None` once the policy gives up
    /// (`max_attempts` calls made, or one failed permanently).
    fn next_delay(&mut self, failure: Failure) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        if failure == Failure::Permanent {
            return None;
        }
        if self
            .policy
            .max_attempts
            .is_some_and(|max_attempts| self.failures >= max_attempts)
        {
            return None;
        }
        let retry_after = match failure {
            Failure::TransientAfter(asked) => Some(asked),
            Failure::Transient | Failure::Permanent => None,
        };
        Some(
            self.policy
                .delay(self.failures, retry_after, rand::rng().random()),
        )
    }

    /// Failed calls so far.
    fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: Some(4),
            max_retry_after: Duration::from_secs(2),
            ..RetryPolicy::new(Duration::from_millis(100), Duration::from_millis(500))
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

    #[test]
    fn the_backoff_gives_up_at_the_attempt_limit_and_at_a_permanent_failure() {
        let mut backoff = policy().backoff();
        let delays: Vec<Option<Duration>> = (0..4)
            .map(|_| backoff.next_delay(Failure::Transient))
            .collect();
        assert!(delays[..3].iter().all(Option::is_some), "{delays:?}");
        assert_eq!(delays[3], None);
        assert_eq!(backoff.failures(), 4);

        let mut backoff = policy().backoff();
        assert!(backoff.next_delay(Failure::Transient).is_some());
        assert_eq!(backoff.next_delay(Failure::Permanent), None);
    }

    #[test]
    fn without_a_limit_transient_failures_never_end_and_a_permanent_one_ends_them() {
        let forever = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut backoff = forever.backoff();
        for _ in 0..10_000 {
            let delay = backoff.next_delay(Failure::Transient);
            assert!(delay.is_some_and(|delay| delay <= Duration::from_secs(5)));
        }
        assert_eq!(backoff.next_delay(Failure::Permanent), None);
    }

    #[test]
    fn a_retry_after_replaces_the_backoff() {
        let mut backoff = policy().backoff();
        assert_eq!(
            backoff.next_delay(Failure::TransientAfter(Duration::from_millis(1500))),
            Some(Duration::from_millis(1500))
        );
    }

    #[tokio::test]
    async fn run_retries_transient_failures_and_reports_each_retry() {
        let calls = Cell::new(0);
        let mut retries = Vec::new();
        let result = policy()
            .run(
                || async {
                    calls.set(calls.get() + 1);
                    if calls.get() < 3 {
                        Err("down")
                    } else {
                        Ok(calls.get())
                    }
                },
                |_| Failure::Transient,
                |retry| retries.push((retry.failures, *retry.error)),
                |_| async {},
            )
            .await;
        assert_eq!(result, Ok(3));
        assert_eq!(retries, vec![(1, "down"), (2, "down")]);
    }

    #[tokio::test]
    async fn run_returns_the_last_error_when_it_gives_up() {
        let calls = Cell::new(0);
        let result: Result<(), u32> = policy()
            .run(
                || async {
                    calls.set(calls.get() + 1);
                    Err(calls.get())
                },
                |&call| Failure::of(call < 2),
                |_| {},
                |_| async {},
            )
            .await;
        assert_eq!(result, Err(2));
    }

    /// Records its waits the way the profile push polls its paused consumer: through `&mut`.
    struct Recorder<'a>(&'a mut Vec<Duration>);

    impl Wait for Recorder<'_> {
        async fn wait(&mut self, delay: Duration) {
            tokio::task::yield_now().await;
            self.0.push(delay);
        }
    }

    #[tokio::test]
    async fn a_wait_may_hold_state_mutably_inside_a_spawned_task() {
        let task = tokio::spawn(async move {
            let mut waits = Vec::new();
            let result: Result<(), &str> = policy()
                .run(
                    || async { Err("down") },
                    |_| Failure::Transient,
                    |_| {},
                    Recorder(&mut waits),
                )
                .await;
            (result, waits)
        });
        let (result, waits) = task.await.unwrap();
        assert_eq!(result, Err("down"));
        assert_eq!(waits.len(), 3);
        assert!(waits[2] >= Duration::from_millis(200) && waits[2] <= Duration::from_millis(400));
    }
}
