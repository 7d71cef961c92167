//! SIGTERM during a refresh abandons it cleanly: the service exits 0, nothing is published,
//! and neither the lock nor a staging hash is left behind.

use std::time::{Duration, Instant};

use hawkeye_customer_cache::cache::keys::CacheKeys;
use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::sim::SimConfig;
use hawkeye_devtools::testkit::cache_fixture::redis_connection;
use hawkeye_devtools::testkit::refresh::{
    cache_keys_present, refresh_env, start_sim, wait_for_log,
};
use hawkeye_devtools::testkit::service::binary;

#[tokio::test]
async fn shutdown_abandons_a_running_refresh_without_publishing() {
    let sim = start_sim(SimConfig {
        seed: 4601,
        devices: 60,
        latency_ms: 300,
        ..SimConfig::default()
    })
    .await;
    let mut env = refresh_env(&sim);
    env.insert("BRUIN_CONCURRENCY".into(), "1".into());
    let keys = CacheKeys::new(&env["ENVIRONMENT_NAME"]);
    let mut redis = redis_connection().await;
    let mut service = ServiceProcess::start(binary(), env).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    wait_for_log(&mut service, "refresh started", 1, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sim.stats().inventory_calls == 0 {
        assert!(Instant::now() < deadline, "the refresh never reached Bruin");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cache_keys_present(&mut redis, &keys).await, [keys.lock()]);

    let status = service.terminate().await.unwrap();
    assert!(status.success(), "{}", service.log.join("\n"));
    assert!(service
        .log
        .iter()
        .any(|line| line.contains("refresh abandoned")));
    assert!(!service
        .log
        .iter()
        .any(|line| line.contains("refresh succeeded")));
    assert_eq!(
        cache_keys_present(&mut redis, &keys).await,
        Vec::<String>::new()
    );
}
