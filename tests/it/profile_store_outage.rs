//! A store going away mid-stream loses nothing (`CONTRACT.md` §3): the service retries with
//! backoff, pauses instead of committing past the failure, and catches up by itself when the
//! store is back. The outage is a TCP proxy between the service and the shared server.

use std::collections::HashMap;
use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{eventually, produce_json, producer, wait_for_city};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::{cassandra_session, stack, unique};
use serde_json::json;

use crate::common::proxy::TcpProxy;

const WAIT: Duration = Duration::from_secs(90);
const DEVICES: usize = 20;

/// Produces version `version` of every device: its city names the version.
async fn produce_version(env: &HashMap<String, String>, devices: &[String], version: i64) {
    let producer = producer();
    for device in devices {
        let event = json!({
            "device_id": device, "api_last_updated_on": 1_700_000_000_000_i64 + version,
            "city": format!("v{version}")
        });
        produce_json(&producer, env, &event).await;
    }
}

/// Waits until every device shows `city` in both stores.
async fn wait_for_all(env: &HashMap<String, String>, devices: &[String], city: &str) {
    let session = cassandra_session().await;
    for device in devices {
        wait_for_city(env, &session, device, city, WAIT).await;
    }
}

/// Runs an outage of the store behind `proxy`, whose retries count under `store`.
async fn survives_an_outage(
    mut env: HashMap<String, String>,
    variable: &str,
    upstream: &str,
    store: &str,
) {
    let proxy = TcpProxy::start(upstream).await;
    let address = if variable == "REDIS_URL" {
        format!("redis://{}/0", proxy.address())
    } else {
        proxy.address()
    };
    env.insert(variable.to_string(), address);
    let mut service = ServiceProcess::start(binary(), env).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let devices: Vec<String> = (0..DEVICES).map(|_| unique("outage")).collect();

    produce_version(&env, &devices[..DEVICES / 2], 1).await;
    wait_for_all(&env, &devices[..DEVICES / 2], "v1").await;

    proxy.pause();
    produce_version(&env, &devices, 2).await;
    let series = format!("hawkeye_customer_cache_store_write_retries_total{{store=\"{store}\"}}");
    eventually(WAIT, "the service retries the store", || async {
        (service.metric(&series).await.unwrap() > 0.0).then_some(())
    })
    .await;
    produce_version(&env, &devices, 3).await;
    proxy.resume();

    wait_for_all(&env, &devices, "v3").await;
    assert!(service.terminate().await.unwrap().success());
    let log = service.log.join("\n");
    assert!(
        log.contains("write failed; pausing partitions"),
        "the outage is logged:\n{log}"
    );
    assert!(
        log.contains("writes succeed again"),
        "the recovery is logged:\n{log}"
    );
}

#[tokio::test]
async fn a_cassandra_outage_loses_nothing() {
    let upstream = stack()
        .cassandra_nodes
        .split(',')
        .next()
        .unwrap()
        .to_string();
    survives_an_outage(isolated_env(), "CASSANDRA_NODES", &upstream, "cassandra").await;
}

#[tokio::test]
async fn a_redis_outage_loses_nothing() {
    let url = reqwest::Url::parse(&stack().redis_url).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(6379));
    survives_an_outage(isolated_env(), "REDIS_URL", &upstream, "redis").await;
}
