//! `TOPIC_PROFILE_UPDATES` may name several topics (comma separated, as Kafka Connect's
//! `topics`): events of each land, and each dead letter names the topic it came from.

use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{header, producer, wait_for_city, TopicReader};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::{cassandra_session, unique};
use rdkafka::producer::FutureRecord;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn events_of_every_profile_topic_land_and_dead_letters_name_their_topic() {
    let mut env = isolated_env();
    let first = env["TOPIC_PROFILE_UPDATES"].clone();
    let second = format!("{first}.legacy");
    env.insert("TOPIC_PROFILE_UPDATES".into(), format!("{first}, {second}"));
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(WAIT).await.unwrap();

    let producer = producer();
    let (on_first, on_second) = (unique("first"), unique("second"));
    for (topic, value) in [
        (
            &first,
            json!({"device_id": on_first, "city": "Pune"}).to_string(),
        ),
        (
            &second,
            json!({"device_id": on_second, "city": "Goa"}).to_string(),
        ),
        (&second, "not json".to_string()),
    ] {
        producer
            .send(
                FutureRecord::<str, str>::to(topic).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
    }
    let session = cassandra_session().await;
    wait_for_city(&env, &session, &on_first, "Pune", WAIT).await;
    wait_for_city(&env, &session, &on_second, "Goa", WAIT).await;
    let letters = TopicReader::from_beginning(&env["TOPIC_PROFILE_DLQ"])
        .take(1, WAIT)
        .await;
    assert_eq!(header(&letters[0], "source.topic"), Some(second));
    assert!(service.terminate().await.unwrap().success());
}
