//! Lag and client metrics on `/metrics` after a few events and a cache get: the per-partition
//! consumer lag of the profiles group (from librdkafka's statistics), the producer's queue
//! depth, and the request latency histograms of both stores, the cache reader's Redis round
//! trips included.

use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::cache_fixture::{entry, CacheFixture};
use hawkeye_devtools::testkit::profiles::{eventually, produce_json, producer};
use hawkeye_devtools::testkit::request_reply::run_get;
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::unique;
use serde_json::json;

/// librdkafka reports every 5 s; the first report after the group's first commit has lags.
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn consumer_lag_producer_queue_and_store_latencies_are_exported() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(WAIT).await.unwrap();
    let env = service.env.clone();
    let producer = producer();
    for _ in 0..5 {
        produce_json(
            &producer,
            &env,
            &json!({"device_id": unique("m"), "city": "Lag"}),
        )
        .await;
    }

    let lag_of_profiles = format!(
        "hawkeye_customer_cache_consumer_lag{{group=\"{}.profiles\",partition=\"",
        env["KAFKA_GROUP_ID"]
    );
    let topic_label = format!("topic=\"{}\"}}", env["TOPIC_PROFILE_UPDATES"]);
    let lag_line = eventually(WAIT, "the profiles group's lag on /metrics", || async {
        let text = service.metrics().await.ok()?;
        text.lines()
            .find(|line| line.starts_with(&lag_of_profiles) && line.contains(&topic_label))
            .map(str::to_string)
    })
    .await;
    let lag: f64 = lag_line
        .rsplit(' ')
        .next()
        .and_then(|value| value.parse().ok())
        .unwrap_or(-1.0);
    assert!(lag >= 0.0, "{lag_line}");

    for store in ["redis", "cassandra"] {
        let series = format!(
            "hawkeye_customer_cache_store_request_seconds_count{{operation=\"upsert\",store=\"{store}\"}}"
        );
        eventually(WAIT, &series, || async {
            (service.metric(&series).await.unwrap() >= 1.0).then_some(())
        })
        .await;
    }

    // A get polls the cache's meta and changes, then loads the live hash it has not seen.
    let cache = CacheFixture::new(&env).await;
    cache
        .publish(&[entry("SN-METRICS", "2024-01-01T00:00:00Z")])
        .await;
    let got = run_get(&env, &["--timeout", "30"]).await;
    assert_eq!(got.reply["status"], 200, "{got:?}");
    for operation in ["cache_poll", "cache_reload"] {
        let series = format!(
            "hawkeye_customer_cache_store_request_seconds_count{{operation=\"{operation}\",store=\"redis\"}}"
        );
        assert!(service.metric(&series).await.unwrap() >= 1.0, "{series}");
    }
    cache.remove().await;

    let text = service.metrics().await.unwrap();
    assert!(
        text.lines()
            .any(|line| line.starts_with("hawkeye_customer_cache_producer_queue_messages ")),
        "the producer reported its queue"
    );
    assert!(service.terminate().await.unwrap().success());
}
