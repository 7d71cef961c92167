//! Two instances of the service (same group, same ENVIRONMENT_NAME) never refresh at the same
//! time: the second waits for the first one's lock, then runs; Bruin calls stay within
//! BRUIN_CONCURRENCY throughout.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use hawkeye_devtools::service::{free_port, ServiceProcess};
use hawkeye_devtools::sim::SimConfig;
use hawkeye_devtools::testkit::refresh::{monitorable, refresh_env, start_sim, Notifications};
use hawkeye_devtools::testkit::service::binary;
use serde_json::Value;

const RUN: Duration = Duration::from_secs(180);

/// When a run held the lock: `at` minus `duration_ms`, `at`.
fn span(notification: &Value) -> (DateTime<Utc>, DateTime<Utc>) {
    let end = DateTime::parse_from_rfc3339(notification["at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc);
    let duration = TimeDelta::milliseconds(notification["duration_ms"].as_i64().unwrap());
    (end - duration, end)
}

#[tokio::test]
async fn two_instances_never_refresh_at_once() {
    let sim = start_sim(SimConfig {
        seed: 4501,
        devices: 200,
        latency_ms: 100,
        ..SimConfig::default()
    })
    .await;
    let mut env = refresh_env(&sim);
    env.insert("BRUIN_CONCURRENCY".into(), "4".into());
    let mut second_env = env.clone();
    second_env.insert("HTTP_ADDR".into(), format!("127.0.0.1:{}", free_port()));

    let mut first = ServiceProcess::start(binary(), env.clone()).unwrap();
    let mut second = ServiceProcess::start(binary(), second_env).unwrap();
    first.wait_ready(Duration::from_secs(60)).await.unwrap();
    second.wait_ready(Duration::from_secs(60)).await.unwrap();
    let mut notifications = Notifications::subscribe(&env);
    let one = notifications
        .wait_for(&mut first, "refresh_succeeded", RUN, |_| true)
        .await;
    let other = notifications
        .wait_for(&mut first, "refresh_succeeded", RUN, |n| *n != one)
        .await;

    let (mut earlier, mut later) = (span(&one), span(&other));
    if later.0 < earlier.0 {
        std::mem::swap(&mut earlier, &mut later);
    }
    assert!(
        earlier.1 <= later.0,
        "runs overlap: {earlier:?} and {later:?}"
    );
    for run in [&one, &other] {
        assert_eq!(run["devices"], sim.expected_cache(&monitorable()).len());
    }
    let stats = sim.stats();
    assert!(stats.max_bruin_in_flight <= 4, "{stats:?}");
    assert!(
        stats.max_bruin_in_flight >= 2,
        "Bruin calls run concurrently: {stats:?}"
    );

    assert!(first.terminate().await.unwrap().success());
    assert!(second.terminate().await.unwrap().success());
    let waited = first
        .log
        .iter()
        .chain(&second.log)
        .any(|line| line.contains("another instance is refreshing"));
    assert!(
        waited,
        "the start-up runs of both instances met at the lock"
    );
}
