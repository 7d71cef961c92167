//! Triggers that arrive while a refresh runs coalesce into exactly one follow-up run, whose
//! notification lists all their request ids; a trigger after that starts a run of its own.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::sim::SimConfig;
use hawkeye_devtools::testkit::refresh::{
    refresh_env, start_sim, trigger_refresh, wait_for_log, Notifications,
};
use hawkeye_devtools::testkit::service::binary;
use serde_json::Value;

const RUN: Duration = Duration::from_secs(120);

fn request_ids(notification: &Value) -> BTreeSet<String> {
    notification["request_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .map(|id| id.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn triggers_during_a_run_coalesce_into_one_follow_up_run() {
    let sim = start_sim(SimConfig {
        seed: 4401,
        devices: 60,
        ..SimConfig::default()
    })
    .await;
    // Slow Bruin answers keep the start-up run going while the triggers arrive.
    sim.set_latency(Duration::from_millis(300));
    let mut env = refresh_env(&sim);
    env.insert("BRUIN_CONCURRENCY".into(), "1".into());
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    wait_for_log(&mut service, "refresh started", 1, RUN).await;

    let triggers: BTreeSet<String> = join_all((0..5).map(|_| trigger_refresh(&env)))
        .await
        .into_iter()
        .collect();
    wait_for_log(&mut service, "refresh trigger received", 5, RUN).await;
    assert!(
        !service
            .log
            .iter()
            .any(|line| line.contains("refresh succeeded")),
        "the start-up run must still be going on"
    );
    sim.set_latency(Duration::ZERO);

    let mut notifications = Notifications::subscribe(&env);
    let start_up = notifications
        .wait_for(&mut service, "refresh_succeeded", RUN, |n| {
            n.get("request_id").is_none()
        })
        .await;
    assert!(request_ids(&start_up).is_empty());
    let follow_up = notifications
        .wait_for(&mut service, "refresh_succeeded", RUN, |n| {
            n.get("request_id").is_some()
        })
        .await;
    assert_eq!(request_ids(&follow_up), triggers);

    let marker = trigger_refresh(&env).await;
    let last = notifications
        .wait_for(&mut service, "refresh_succeeded", RUN, |n| {
            n["request_id"] == marker.as_str()
        })
        .await;
    assert_eq!(request_ids(&last), BTreeSet::from([marker]));
    assert_eq!(
        notifications.of("refresh_succeeded").len(),
        3,
        "{:#?}",
        notifications.seen
    );
    assert!(service.terminate().await.unwrap().success());
}
