//! Scenario 1: `kill -9` of the service at random points of a push, then a restart, several
//! times. At-least-once means every device still ends at its latest version in both stores.

use std::time::{Duration, Instant};

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::producer;
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use rand::Rng;

use crate::harness::{
    assert_all_latest, produce_paced, size, topic_records, with_short_sessions, Figures,
    VersionedStream,
};

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn kill_9_mid_push_loses_nothing() {
    let started = Instant::now();
    let (devices, kills) = size((2_500, 2), (25_000, 5));
    let stream = VersionedStream::new("kill9", devices, 4);
    let mut service = ServiceProcess::start(binary(), with_short_sessions(isolated_env())).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();

    let push = {
        let (topic, events) = (env["TOPIC_PROFILE_UPDATES"].clone(), stream.events());
        // Spread over roughly 4 s per kill, so every kill lands in the middle of the push.
        let blocks = 16 * kills;
        tokio::spawn(async move {
            produce_paced(
                &producer(),
                &topic,
                &events,
                blocks,
                Duration::from_millis(250),
            )
            .await
        })
    };
    for kill in 1..=kills {
        let wait = rand::rng().random_range(1_000..3_000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        // Dropping the child process sends SIGKILL (kill_on_drop): no shutdown, no final commit.
        drop(service);
        println!("fault: kill -9 number {kill} after {wait} ms");
        service = ServiceProcess::start(binary(), env.clone()).unwrap();
        service.wait_ready(Duration::from_secs(60)).await.unwrap();
    }
    push.await.expect("the push");
    let produced = topic_records(&env["TOPIC_PROFILE_UPDATES"]).await;
    assert_eq!(produced, stream.len() as i64, "every event is in the topic");

    let stored = assert_all_latest(&env, &stream, Duration::from_secs(180)).await;
    assert_eq!(
        topic_records(&env["TOPIC_PROFILE_DLQ"]).await,
        0,
        "nothing dead-lettered"
    );
    assert!(service.terminate().await.unwrap().success());
    Figures {
        scenario: "kill -9 during a push",
        produced: stream.len(),
        stored,
        dead_lettered: 0,
        lost: 0,
        faults: kills,
        started,
    }
    .print();
}
