//! `last_contact` instants past 2^53 microseconds (the year 2255), where doubles no longer
//! tell neighbouring instants apart: the later instant still wins in Redis, even when the
//! earlier one's text is bytewise greater (the tie-break that a rounded comparison would
//! wrongly reach).

use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{
    cassandra_row, produce_json, producer, redis_hash, wait_for_city,
};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::{cassandra_session, unique};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const VERSION: i64 = 1_700_000_000_000;
/// 2300-01-01T00:00:00.000004Z is 10413792000000004 µs, a double exactly. The instant one
/// microsecond before it rounds to the same double.
const LATER: &str = "2300-01-01T00:00:00.000004Z";
/// One microsecond earlier, written in +01:00 so that its text sorts after `LATER`'s.
const EARLIER: &str = "2300-01-01T01:00:00.000003+01:00";

#[tokio::test]
async fn the_later_of_two_far_future_contacts_wins_though_doubles_round_them_equal() {
    let mut env = isolated_env();
    // Lets the far-future contacts in (about 300 years ahead of the clock).
    env.insert("PROFILE_MAX_FUTURE_SECS".into(), "10000000000".into());
    let mut service = ServiceProcess::start(binary(), env).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let session = cassandra_session().await;
    let producer = producer();
    let device = unique("far");

    let contact = |last_contact: &str, city: &str, version: i64| {
        json!({"device_id": device, "api_last_updated_on": version, "city": city,
               "last_contact": last_contact})
    };
    // Separate batches, so the store's own comparison decides, not the in-batch merge.
    produce_json(&producer, &env, &contact(LATER, "first", VERSION)).await;
    wait_for_city(&env, &session, &device, "first", WAIT).await;
    produce_json(&producer, &env, &contact(EARLIER, "second", VERSION + 1)).await;
    wait_for_city(&env, &session, &device, "second", WAIT).await;

    // wait_for_city saw the second event in both stores.
    let hash = redis_hash(&env, &device).await;
    assert_eq!(hash["last_contact"], LATER, "{hash:?}");
    // Cassandra keeps milliseconds, the same for both: this shows the contact reached it.
    let row = cassandra_row(&session, &env, &device)
        .await
        .expect("the device_profile row");
    assert_eq!(row["last_contact"], "2300-01-01 00:00:00.000Z", "{row}");
}
