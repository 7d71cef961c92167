//! librdkafka's own log and error callbacks, through `tracing` and rate-limited: with no broker
//! listening, librdkafka reports the same few failures many times a second ("Connect to … failed",
//! "All broker connections are down"), which would drown the one line that says what is wrong.
//!
//! Until a broker has answered once ([`brokers_reached`]), those reports go to `debug`: start-up
//! then ends with its own single line (`cannot reach Kafka (KAFKA_BROKERS)`). Afterwards each
//! distinct report is logged once per [`REPEAT_WINDOW`], with the number of repeats it stood for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientContext, TopicPartitionList};

use super::access;
use crate::sync;

/// How long a report is not repeated.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// The context of every Kafka client of the process (producer, consumers, admin): librdkafka's
/// reports through one rate limiter, and the consumers' rebalances and commit failures logged.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientLog;

/// Whether any client of the process has reached a broker; librdkafka's reports stay at `debug`
/// until then.
static BROKERS_REACHED: AtomicBool = AtomicBool::new(false);
static LIMITER: LazyLock<RepeatLimiter> = LazyLock::new(|| RepeatLimiter::new(REPEAT_WINDOW));

/// Called once a broker answered: from now on librdkafka's failures are warnings.
pub fn brokers_reached() {
    BROKERS_REACHED.store(true, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    Error,
    Warning,
    Info,
    Debug,
}

fn severity(level: RDKafkaLogLevel) -> Severity {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => Severity::Error,
        RDKafkaLogLevel::Warning => Severity::Warning,
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => Severity::Info,
        RDKafkaLogLevel::Debug => Severity::Debug,
    }
}

fn report(severity: Severity, message: &str) {
    let severity = if BROKERS_REACHED.load(Ordering::Relaxed) {
        severity
    } else {
        Severity::Debug
    };
    if severity == Severity::Debug {
        tracing::debug!(target: "librdkafka", "{message}");
        return;
    }
    let Some(repeats) = LIMITER.admit(message, Instant::now()) else {
        return;
    };
    match severity {
        Severity::Error => tracing::error!(target: "librdkafka", repeats, "{message}"),
        Severity::Warning => tracing::warn!(target: "librdkafka", repeats, "{message}"),
        _ => tracing::info!(target: "librdkafka", repeats, "{message}"),
    }
}

/// A warning about a Kafka client of the service, rate-limited like librdkafka's own reports.
pub fn warn(message: &str) {
    report(Severity::Warning, message);
}

impl ClientContext for ClientLog {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        report(
            severity(level),
            &format!("librdkafka {facility}: {message}"),
        );
    }

    fn error(&self, error: KafkaError, reason: &str) {
        access::note_error(&error, reason);
        report(Severity::Error, &format!("librdkafka: {error}: {reason}"));
    }
}

impl ConsumerContext for ClientLog {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        log_rebalance(rebalance);
    }

    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        log_commit(result);
    }
}

/// Logs a consumer's rebalance (every consumer context of the service does).
pub fn log_rebalance(rebalance: &Rebalance<'_>) {
    match rebalance {
        Rebalance::Assign(partitions) => {
            tracing::info!(partitions = %describe(partitions), "partitions assigned")
        }
        Rebalance::Revoke(partitions) => {
            tracing::info!(partitions = %describe(partitions), "partitions revoked")
        }
        Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
    }
}

/// Reports a failed automatic offset commit, rate-limited.
pub fn log_commit(result: KafkaResult<()>) {
    match result {
        // NoOffset: nothing was stored since the last commit.
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => report(Severity::Warning, &format!("offset commit failed: {e}")),
    }
}

/// `topic[partition],…` for logs.
pub fn describe(partitions: &TopicPartitionList) -> String {
    partitions
        .elements()
        .iter()
        .map(|element| format!("{}[{}]", element.topic(), element.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Lets each distinct report through once per window.
struct RepeatLimiter {
    window: Duration,
    /// Report shape → when it was last let through, and how often it came since.
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl RepeatLimiter {
    fn new(window: Duration) -> Self {
        RepeatLimiter {
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(repeats)` when `message` is to be logged now, `repeats` being how many times it
    /// was held back since it was last logged; `None` while it is held back.
    fn admit(&self, message: &str, now: Instant) -> Option<u64> {
        let mut seen = sync::lock(&self.seen);
        match seen.get_mut(&shape(message)) {
            Some((last, held)) if now.duration_since(*last) < self.window => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                seen.insert(shape(message), (now, 0));
                Some(0)
            }
        }
    }
}

/// A report without its numbers (elapsed times, counts, ports), so that the same failure
/// reported with a new figure counts as a repeat.
fn shape(message: &str) -> String {
    message.chars().filter(|c| !c.is_ascii_digit()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_report_is_let_through_once_per_window_with_its_count() {
        let limiter = RepeatLimiter::new(Duration::from_secs(60));
        let start = Instant::now();
        let down = "librdkafka: 1/1 brokers are down (after 0ms)";
        assert_eq!(limiter.admit(down, start), Some(0));
        for second in 1..=30 {
            let message = format!("librdkafka: 1/1 brokers are down (after {second}ms)");
            let at = start + Duration::from_secs(second);
            assert_eq!(limiter.admit(&message, at), None, "held back");
            assert_eq!(limiter.admit(&message, at), None, "held back");
        }
        // Another report is not held back by the first one.
        assert_eq!(limiter.admit("librdkafka: other", start), Some(0));
        let later = start + Duration::from_secs(61);
        assert_eq!(limiter.admit(down, later), Some(60));
        assert_eq!(limiter.admit(down, later), None);
    }

    #[test]
    fn numbers_do_not_make_a_report_new() {
        assert_eq!(
            shape("Connect to ipv4#127.0.0.1:9092 failed (after 0ms)"),
            shape("Connect to ipv4#127.0.0.1:9092 failed (after 13ms)")
        );
        assert_ne!(shape("Connect failed"), shape("Disconnected"));
    }
}
