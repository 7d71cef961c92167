//! Scenario 3: a rebalance mid-stream. A second instance joins the group while a push runs,
//! takes over some partitions and processes events, then leaves (SIGTERM); every device still
//! ends at its latest version in both stores.

use std::time::{Duration, Instant};

use hawkeye_devtools::service::{free_port, ServiceProcess};
use hawkeye_devtools::testkit::profiles::producer;
use hawkeye_devtools::testkit::refresh::wait_for_log;
use hawkeye_devtools::testkit::service::{binary, isolated_env};

use crate::harness::{
    assert_all_latest, produce_paced, size, topic_records, with_short_sessions, Figures,
    VersionedStream,
};

const CONSUMED: &str = "hawkeye_customer_cache_profile_events_consumed_total";

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn an_instance_joining_and_leaving_mid_stream_loses_nothing() {
    let started = Instant::now();
    let stream = VersionedStream::new("rebalance", size(2_000, 20_000), 4);
    let mut first = ServiceProcess::start(binary(), with_short_sessions(isolated_env())).unwrap();
    first.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = first.env.clone();

    let push = {
        let (topic, events) = (env["TOPIC_PROFILE_UPDATES"].clone(), stream.events());
        tokio::spawn(async move {
            produce_paced(&producer(), &topic, &events, 60, Duration::from_millis(250)).await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut second_env = env.clone();
    second_env.insert("HTTP_ADDR".into(), format!("127.0.0.1:{}", free_port()));
    let mut second = ServiceProcess::start(binary(), second_env).unwrap();
    second.wait_ready(Duration::from_secs(60)).await.unwrap();
    let profile_topic = format!("{}[", env["TOPIC_PROFILE_UPDATES"]);
    wait_for_log(&mut second, &profile_topic, 1, Duration::from_secs(60)).await;
    // The newcomer really takes part: it processes events of the push before it leaves.
    let deadline = Instant::now() + Duration::from_secs(60);
    while second.metric(CONSUMED).await.unwrap() == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the second instance processed nothing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let by_second = second.metric(CONSUMED).await.unwrap();
    assert!(
        second.terminate().await.unwrap().success(),
        "the second instance leaves cleanly"
    );
    println!("fault: second instance joined, processed {by_second} events, left");

    push.await.expect("the push");
    let stored = assert_all_latest(&env, &stream, Duration::from_secs(180)).await;
    assert_eq!(
        topic_records(&env["TOPIC_PROFILE_UPDATES"]).await,
        stream.len() as i64
    );
    assert_eq!(topic_records(&env["TOPIC_PROFILE_DLQ"]).await, 0);
    assert!(first.terminate().await.unwrap().success());
    Figures {
        scenario: "a second instance joins and leaves mid-stream",
        produced: stream.len(),
        stored,
        dead_lettered: 0,
        lost: 0,
        faults: 2,
        started,
    }
    .print();
}
