//! Every metric of the service, in one registry per service instance (so tests can run several
//! instances in one process), exported in Prometheus text format on `/metrics`.

use std::future::Future;
use std::time::Instant;

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The namespace of every metric name.
const PREFIX: &str = "hawkeye_customer_cache";

pub struct Metrics {
    registry: Registry,
    /// Device profile events read from Kafka.
    pub profile_events_consumed: IntCounter,
    /// Devices written to both stores (after merging the events of a batch per device).
    pub profile_devices_upserted: IntCounter,
    /// Device deletes (tombstones) acknowledged by both stores.
    pub profile_devices_deleted: IntCounter,
    /// Events sent to the dead-letter topic, by reason kind.
    pub profile_events_dead_lettered: IntCounterVec,
    /// Unknown fields seen in device profile events (ignored, never an error).
    pub profile_unknown_fields: IntCounter,
    /// Events neither written nor dead-lettered (the dead-letter topic refused them for good).
    pub profile_events_dropped: IntCounterVec,
    /// Store write retries, by store.
    pub store_write_retries: IntCounterVec,
    /// Events per processed batch.
    pub profile_batch_size: Histogram,
    /// Seconds from the Kafka record timestamp to both stores acknowledging it.
    pub profile_end_to_end_seconds: Histogram,
    /// Refresh runs, by outcome (`succeeded`, `failed`).
    pub refresh_runs: IntCounterVec,
    /// Devices in the current customer cache.
    pub cache_devices: IntGauge,
    /// Duration of refresh runs.
    pub refresh_duration_seconds: Histogram,
    /// HTTP calls to the external APIs, by api and outcome.
    pub api_requests: IntCounterVec,
    /// Cache requests answered, by status code.
    pub get_requests: IntCounterVec,
    /// Cache requests that could not be answered at all, by reason.
    pub get_failures: IntCounterVec,
    /// Seconds to answer a cache request.
    pub get_duration_seconds: HistogramVec,
    /// Seconds from a reply's first value queued to every value delivered: the Kafka part of
    /// `get_duration_seconds`.
    pub get_delivery_seconds: Histogram,
    /// Records of a partition not yet consumed by a consumer group, from librdkafka's
    /// statistics, by group, topic and partition.
    pub consumer_lag: IntGaugeVec,
    /// Messages in the shared producer's queue, not yet delivered.
    pub producer_queue_messages: IntGauge,
    /// Seconds of one call to one store, by store and operation: a profile batch's upsert (its
    /// Redis pipeline, or its Cassandra batches), a read of last contacts, and the customer
    /// cache reader's round trips (`cache_poll` before each request, `cache_reload`).
    pub store_request_seconds: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some(PREFIX.into()), None)?;
        let metrics = Metrics {
            profile_events_consumed: IntCounter::new(
                "profile_events_consumed_total",
                "Device profile events read from Kafka",
            )?,
            profile_devices_upserted: IntCounter::new(
                "profile_devices_upserted_total",
                "Device upserts acknowledged by both Redis and Cassandra",
            )?,
            profile_devices_deleted: IntCounter::new(
                "profile_devices_deleted_total",
                "Device deletes (Kafka tombstones) acknowledged by both Redis and Cassandra",
            )?,
            profile_events_dead_lettered: IntCounterVec::new(
                Opts::new(
                    "profile_events_dead_lettered_total",
                    "Device profile events sent to the dead-letter topic",
                ),
                &["reason"],
            )?,
            profile_events_dropped: IntCounterVec::new(
                Opts::new(
                    "profile_events_dropped_total",
                    "Device profile events skipped because the dead-letter topic refused them for good",
                ),
                &["reason"],
            )?,
            profile_unknown_fields: IntCounter::new(
                "profile_unknown_fields_total",
                "Unknown fields in device profile events (ignored)",
            )?,
            store_write_retries: IntCounterVec::new(
                Opts::new(
                    "store_write_retries_total",
                    "Store writes retried after a failure",
                ),
                &["store"],
            )?,
            profile_batch_size: Histogram::with_opts(
                HistogramOpts::new("profile_batch_size", "Events per processed batch").buckets(
                    vec![
                        1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
                    ],
                ),
            )?,
            profile_end_to_end_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "profile_end_to_end_seconds",
                    "Seconds from the Kafka record timestamp to both stores acknowledging it",
                )
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
                ]),
            )?,
            refresh_runs: IntCounterVec::new(
                Opts::new("refresh_runs_total", "Customer cache refresh runs"),
                &["outcome"],
            )?,
            cache_devices: IntGauge::new("cache_devices", "Devices in the current customer cache")?,
            refresh_duration_seconds: Histogram::with_opts(
                HistogramOpts::new("refresh_duration_seconds", "Duration of refresh runs")
                    .buckets(vec![0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0]),
            )?,
            api_requests: IntCounterVec::new(
                Opts::new("api_requests_total", "HTTP calls to Hawkeye and Bruin"),
                &["api", "outcome"],
            )?,
            get_requests: IntCounterVec::new(
                Opts::new("get_requests_total", "Cache requests answered, by status"),
                &["status"],
            )?,
            get_failures: IntCounterVec::new(
                Opts::new(
                    "get_failures_total",
                    "Cache requests that could not be answered",
                ),
                &["reason"],
            )?,
            get_duration_seconds: HistogramVec::new(
                HistogramOpts::new("get_duration_seconds", "Seconds to answer a cache request")
                    .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
                &["status"],
            )?,
            get_delivery_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "get_delivery_seconds",
                    "Seconds from a reply's first value queued to every value delivered",
                )
                .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "consumer_lag",
                    "Records of a partition the consumer group has not consumed yet",
                ),
                &["group", "topic", "partition"],
            )?,
            producer_queue_messages: IntGauge::new(
                "producer_queue_messages",
                "Messages in the producer's queue, not yet delivered",
            )?,
            store_request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "store_request_seconds",
                    "Seconds of one call to Redis or Cassandra (a profile batch's upsert, a read, a cache poll or reload)",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
                ]),
                &["store", "operation"],
            )?,
            registry,
        };
        metrics.register_all()?;
        Ok(metrics)
    }

    /// Runs one store request, its duration (failed or not) into `store_request_seconds`.
    pub async fn timed_store_request<T>(
        &self,
        store: &str,
        operation: &str,
        request: impl Future<Output = T>,
    ) -> T {
        let started = Instant::now();
        let outcome = request.await;
        self.store_request_seconds
            .with_label_values(&[store, operation])
            .observe(started.elapsed().as_secs_f64());
        outcome
    }

    fn register_all(&self) -> Result<(), prometheus::Error> {
        self.collectors()
            .into_iter()
            .try_for_each(|collector| self.registry.register(collector))
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.profile_events_consumed.clone()),
            Box::new(self.profile_devices_upserted.clone()),
            Box::new(self.profile_devices_deleted.clone()),
            Box::new(self.profile_events_dead_lettered.clone()),
            Box::new(self.profile_unknown_fields.clone()),
            Box::new(self.profile_events_dropped.clone()),
            Box::new(self.store_write_retries.clone()),
            Box::new(self.profile_batch_size.clone()),
            Box::new(self.profile_end_to_end_seconds.clone()),
            Box::new(self.refresh_runs.clone()),
            Box::new(self.cache_devices.clone()),
            Box::new(self.refresh_duration_seconds.clone()),
            Box::new(self.api_requests.clone()),
            Box::new(self.get_requests.clone()),
            Box::new(self.get_failures.clone()),
            Box::new(self.get_duration_seconds.clone()),
            Box::new(self.get_delivery_seconds.clone()),
            Box::new(self.consumer_lag.clone()),
            Box::new(self.producer_queue_messages.clone()),
            Box::new(self.store_request_seconds.clone()),
        ]
    }

    /// Every series name `/metrics` can show (prefix included; a histogram's `_bucket`,
    /// `_sum` and `_count`), whether or not it has a value yet: what dashboards and alert
    /// rules may name.
    pub fn series_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        // A metric vector without series yet still collects its (empty) family.
        for family in self.collectors().iter().flat_map(|c| c.collect()) {
            let name = format!("{PREFIX}_{}", family.name());
            if family.get_field_type() == MetricType::HISTOGRAM {
                names.extend(["_bucket", "_sum", "_count"].map(|end| format!("{name}{end}")));
            } else {
                names.push(name);
            }
        }
        names
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_the_service_prefix() {
        let metrics = Metrics::new().unwrap();
        metrics.profile_events_consumed.inc_by(3);
        metrics.get_requests.with_label_values(&["200"]).inc();
        let text = metrics.render();
        assert!(text.contains("hawkeye_customer_cache_profile_events_consumed_total 3"));
        assert!(text.contains("hawkeye_customer_cache_get_requests_total{status=\"200\"} 1"));
    }

    #[test]
    fn series_names_include_metrics_without_values_and_histogram_parts() {
        let names = Metrics::new().unwrap().series_names();
        for name in [
            "hawkeye_customer_cache_consumer_lag",
            "hawkeye_customer_cache_profile_events_consumed_total",
            "hawkeye_customer_cache_store_request_seconds_bucket",
            "hawkeye_customer_cache_store_request_seconds_count",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert!(!names
            .iter()
            .any(|n| n == "hawkeye_customer_cache_store_request_seconds"));
    }
}
