//! Scenario 2: the real Cassandra, then Redis, then the Kafka broker stopped mid-stream and
//! started again (`scripts/stack stop|start`). While a store is down nothing produced during
//! the outage may be committed; afterwards every device ends at its latest version.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::producer;
use hawkeye_devtools::testkit::service::{binary, isolated_env};

use crate::harness::{
    assert_all_latest, committed_records, produce_all, size, topic_records, Figures, StoppedServer,
    VersionedStream,
};

const WAIT: Duration = Duration::from_secs(180);

/// Version 1 lands, `server` stops, version 2 is produced into the outage, the server comes
/// back after `outage`, version 3 is produced; every device must end at version 3.
async fn outage_of(server: &'static str, store_label: Option<&str>) {
    let started = Instant::now();
    let outage = Duration::from_secs(size(8, 30));
    let stream = VersionedStream::new(server, size(1_000, 10_000), 3);
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env: HashMap<String, String> = service.env.clone();
    let topic = env["TOPIC_PROFILE_UPDATES"].clone();
    let producer = producer();

    produce_all(&producer, &topic, &stream.version_events(1)).await;
    assert_all_latest(&env, &stream.up_to(1), WAIT).await;
    let committed_before =
        committed_records(&format!("{}.profiles", env["KAFKA_GROUP_ID"]), &topic).await;
    let produced_before = topic_records(&topic).await;

    let stopped = StoppedServer::stop(server);
    let during = {
        let (producer, topic, events) = (producer.clone(), topic.clone(), stream.version_events(2));
        // Against a stopped broker the producer keeps its events until the broker is back.
        tokio::spawn(async move { produce_all(&producer, &topic, &events).await })
    };
    if let Some(store) = store_label {
        let series =
            format!("hawkeye_customer_cache_store_write_retries_total{{store=\"{store}\"}}");
        let deadline = Instant::now() + WAIT;
        while service.metric(&series).await.unwrap() == 0.0 {
            assert!(
                Instant::now() < deadline,
                "the service never retried {store}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(outage).await;
    if store_label.is_some() {
        // Nothing written during the outage may be committed: at most what was before it.
        let committed =
            committed_records(&format!("{}.profiles", env["KAFKA_GROUP_ID"]), &topic).await;
        assert!(
            committed <= produced_before,
            "{server} down: {committed} records committed, but only {produced_before} \
             were produced before the outage (committed before it: {committed_before})"
        );
    }
    stopped.restart();
    during.await.expect("the events produced into the outage");
    produce_all(&producer, &topic, &stream.version_events(3)).await;

    let stored = assert_all_latest(&env, &stream, WAIT).await;
    assert_eq!(topic_records(&topic).await, stream.len() as i64);
    assert_eq!(topic_records(&env["TOPIC_PROFILE_DLQ"]).await, 0);
    service.wait_ready(WAIT).await.unwrap();
    assert!(service.terminate().await.unwrap().success());
    Figures {
        scenario: &format!("{server} stopped {} s mid-stream", outage.as_secs()),
        produced: stream.len(),
        stored,
        dead_lettered: 0,
        lost: 0,
        faults: 1,
        started,
    }
    .print();
}

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn store_and_broker_outages_lose_nothing() {
    outage_of("cassandra", Some("cassandra")).await;
    outage_of("redis", Some("redis")).await;
    outage_of("kafka", None).await;
}
