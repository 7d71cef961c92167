//! librdkafka's statistics as metrics: the per-partition lag of each consumer group and the
//! producer's queue depth. The service's long-running clients (the ingress consumers and the
//! shared producer) have a [`ClientMetrics`] context, which reports like [`ClientLog`] and
//! also turns each statistics report into gauges.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};

use super::client_log::{self, ClientLog};
use crate::observe::Metrics;
use crate::sync;

/// How often librdkafka reports its statistics: often enough for a lag alert, rare enough to
/// cost nothing (each report is a JSON document of every partition).
const STATISTICS_INTERVAL_MS: &str = "5000";

/// What a client's statistics say about it.
enum Reported {
    /// A consumer of this group: the lag of its assigned partitions.
    ConsumerLag { group: String },
    /// The producer: its queue depth.
    ProducerQueue,
}

/// The context of a long-running client: [`ClientLog`]'s reports, and its statistics as
/// metrics when it was given the metrics.
pub struct ClientMetrics {
    sink: Option<(Arc<Metrics>, Reported)>,
    /// The partitions whose lag this client last reported, so that a partition it no longer
    /// holds (after a rebalance) stops showing a stale figure.
    lagging: Mutex<HashSet<(String, i32)>>,
}

impl ClientMetrics {
    /// The context of a consumer of `group`, turning on statistics in `config`: its lag goes
    /// to `metrics`.
    pub fn consumer(config: &mut ClientConfig, metrics: Arc<Metrics>, group: &str) -> Self {
        let reported = Reported::ConsumerLag {
            group: group.to_string(),
        };
        Self::new(config, Some(metrics), reported)
    }

    /// The context of a producer; with `metrics`, statistics are turned on in `config` and its
    /// queue depth goes there.
    pub fn producer(config: &mut ClientConfig, metrics: Option<Arc<Metrics>>) -> Self {
        Self::new(config, metrics, Reported::ProducerQueue)
    }

    fn new(config: &mut ClientConfig, metrics: Option<Arc<Metrics>>, reported: Reported) -> Self {
        let sink = metrics.map(|metrics| {
            config.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
            (metrics, reported)
        });
        ClientMetrics {
            sink,
            lagging: Mutex::new(HashSet::new()),
        }
    }

    fn report_lag(&self, metrics: &Metrics, group: &str, statistics: &Statistics) {
        let lags = partition_lags(statistics);
        let now: HashSet<(String, i32)> = lags
            .iter()
            .map(|(topic, partition, _)| (topic.clone(), *partition))
            .collect();
        let mut lagging = sync::lock(&self.lagging);
        for (topic, partition) in lagging.difference(&now) {
            // Absent already when it was never set: nothing to undo.
            let _ =
                metrics
                    .consumer_lag
                    .remove_label_values(&[group, topic, &partition.to_string()]);
        }
        for (topic, partition, lag) in lags {
            metrics
                .consumer_lag
                .with_label_values(&[group, &topic, &partition.to_string()])
                .set(lag);
        }
        *lagging = now;
    }
}

/// `(topic, partition, lag)` of every partition whose lag librdkafka knows: it reports -1
/// for partitions it does not consume or has no offsets for yet, and a partition -1 of its
/// own (messages not yet assigned a partition).
fn partition_lags(statistics: &Statistics) -> Vec<(String, i32, i64)> {
    statistics
        .topics
        .iter()
        .flat_map(|(topic, stats)| {
            stats
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                .map(|p| (topic.clone(), p.partition, p.consumer_lag))
        })
        .collect()
}

impl ClientContext for ClientMetrics {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        ClientLog.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        ClientLog.error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        let Some((metrics, reported)) = &self.sink else {
            return;
        };
        match reported {
            Reported::ConsumerLag { group } => self.report_lag(metrics, group, &statistics),
            Reported::ProducerQueue => metrics
                .producer_queue_messages
                .set(i64::try_from(statistics.msg_cnt).unwrap_or(i64::MAX)),
        }
    }
}

impl ConsumerContext for ClientMetrics {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        client_log::log_rebalance(rebalance);
    }

    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        client_log::log_commit(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::statistics::{Partition, Topic};

    /// A statistics report of a consumer: two assigned partitions of `t` (one without a
    /// committed offset yet) and librdkafka's internal partition -1.
    fn consumer_statistics() -> Statistics {
        let partition = |partition: i32, consumer_lag: i64| {
            let stats = Partition {
                partition,
                consumer_lag,
                ..Partition::default()
            };
            (partition, stats)
        };
        let topic = Topic {
            topic: "t".into(),
            partitions: [partition(0, 7), partition(1, -1), partition(-1, 3)].into(),
            ..Topic::default()
        };
        Statistics {
            topics: [("t".to_string(), topic)].into(),
            ..Statistics::default()
        }
    }

    #[test]
    fn only_partitions_with_a_known_lag_are_reported() {
        assert_eq!(
            partition_lags(&consumer_statistics()),
            [("t".to_string(), 0, 7)]
        );
    }

    #[test]
    fn a_producer_without_metrics_has_no_statistics() {
        let mut config = ClientConfig::new();
        let context = ClientMetrics::producer(&mut config, None);
        assert_eq!(config.get("statistics.interval.ms"), None);
        assert!(context.sink.is_none());
    }

    #[test]
    fn a_partition_no_longer_reported_loses_its_gauge() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut config = ClientConfig::new();
        let context = ClientMetrics::consumer(&mut config, metrics.clone(), "g.profiles");
        assert_eq!(
            config.get("statistics.interval.ms"),
            Some(STATISTICS_INTERVAL_MS)
        );
        metrics
            .consumer_lag
            .with_label_values(&["g.profiles", "t", "5"])
            .set(1);
        context.lagging.lock().unwrap().insert(("t".into(), 5));
        context.stats(consumer_statistics());
        let text = metrics.render();
        assert!(
            text.contains(
                r#"hawkeye_customer_cache_consumer_lag{group="g.profiles",partition="0",topic="t"} 7"#
            ),
            "{text}"
        );
        assert!(!text.contains(r#"partition="5""#), "{text}");
    }
}
