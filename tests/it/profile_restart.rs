//! A restart (SIGTERM) of the service in the middle of a stream loses nothing: the stopping
//! instance commits only what both stores acknowledged, the next one starts from there.

use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{
    eventually, produce_json, producer, redis_hash, wait_for_city,
};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::{cassandra_session, unique};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);
const DEVICES: usize = 60;
const VERSIONS: i64 = 3;

#[tokio::test]
async fn a_restart_mid_stream_loses_nothing() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let devices: Vec<String> = (0..DEVICES).map(|_| unique("restart")).collect();

    let stream = {
        let (env, devices) = (env.clone(), devices.clone());
        tokio::spawn(async move {
            let producer = producer();
            for version in 1..=VERSIONS {
                for device in &devices {
                    let event = json!({
                        "device_id": device, "api_last_updated_on": 1_700_000_000_000_i64 + version,
                        "city": format!("v{version}")
                    });
                    produce_json(&producer, &env, &event).await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    // Stop once the stream has visibly started, then start a new instance in the same group.
    eventually(WAIT, "the first events", || async {
        (!redis_hash(&env, &devices[0]).await.is_empty()).then_some(())
    })
    .await;
    assert!(
        service.terminate().await.unwrap().success(),
        "clean exit on SIGTERM"
    );
    let log = service.log.join("\n");
    assert!(log.contains("device profile push stopped"), "{log}");

    let mut restarted = ServiceProcess::start(binary(), env.clone()).unwrap();
    restarted.wait_ready(Duration::from_secs(60)).await.unwrap();
    stream.await.unwrap();

    let session = cassandra_session().await;
    let latest = format!("v{VERSIONS}");
    for device in &devices {
        wait_for_city(&env, &session, device, &latest, WAIT).await;
    }
    restarted.terminate().await.unwrap();
}
