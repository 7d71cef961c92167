//! Poison events (`CONTRACT.md` §3) go to the dead-letter topic with their original key and
//! bytes and the `error.reason`, `source.topic`, `source.partition`, `source.offset` headers,
//! while the good events around them still land in both stores.

use std::collections::HashMap;
use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{
    header, produce, produce_json, producer, redis_hash, wait_for_city, TopicReader,
};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::{cassandra_session, unique};
use rdkafka::Message;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// (key, value, a word the reason must contain) of every kind of poison.
fn poison() -> Vec<(String, Vec<u8>, &'static str)> {
    let long_id = "x".repeat(257);
    // Compressible, so the producer's lz4 batch passes the broker's ~1 MiB limit.
    let over_limit = json!({"device_id": "big", "note": "x".repeat(1024 * 1024 + 10_000)});
    vec![
        ("not-json".into(), b"{not json".to_vec(), "not JSON"),
        ("not-object".into(), b"[1,2]".to_vec(), "not an object"),
        ("no-id".into(), br#"{"city":"Pune"}"#.to_vec(), "missing"),
        (
            "empty-id".into(),
            br#"{"device_id":"   ","city":"Pune"}"#.to_vec(),
            "empty",
        ),
        (
            "long-id".into(),
            json!({"device_id": long_id}).to_string().into_bytes(),
            "longer than 256",
        ),
        (
            "wrong-type".into(),
            br#"{"device_id":"w","city":["Pune"]}"#.to_vec(),
            "city",
        ),
        (
            "wrong-epoch".into(),
            br#"{"device_id":"w","first_access":"soon"}"#.to_vec(),
            "first_access",
        ),
        (
            "too-large".into(),
            over_limit.to_string().into_bytes(),
            "larger than the limit",
        ),
    ]
}

#[tokio::test]
async fn poison_events_are_dead_lettered_and_good_ones_still_land() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let session = cassandra_session().await;
    let producer = producer();
    let (before, after) = (unique("good"), unique("good"));

    produce_json(
        &producer,
        &env,
        &json!({"device_id": before, "city": "Before"}),
    )
    .await;
    let poison = poison();
    for (key, value, _) in &poison {
        produce(&producer, &env, Some(key), value).await;
    }
    produce_json(
        &producer,
        &env,
        &json!({"device_id": after, "city": "After"}),
    )
    .await;

    let letters = TopicReader::from_beginning(&env["TOPIC_PROFILE_DLQ"])
        .take(poison.len(), WAIT)
        .await;
    let by_key: HashMap<Vec<u8>, _> = letters
        .iter()
        .map(|letter| (letter.key().expect("the original key").to_vec(), letter))
        .collect();
    for (key, value, reason_word) in &poison {
        let letter = by_key
            .get(key.as_bytes())
            .unwrap_or_else(|| panic!("no dead letter for {key}"));
        assert!(
            letter.payload() == Some(value.as_slice()),
            "{key}: original bytes"
        );
        let reason = header(letter, "error.reason").expect("error.reason");
        assert!(reason.contains(reason_word), "{key}: reason {reason:?}");
        assert!(!reason.contains('\n'), "one line: {reason:?}");
        assert_eq!(
            header(letter, "source.topic").as_ref(),
            Some(&env["TOPIC_PROFILE_UPDATES"])
        );
        let partition: i32 = header(letter, "source.partition").unwrap().parse().unwrap();
        assert!(partition >= 0, "{key}: source.partition");
        let offset: i64 = header(letter, "source.offset").unwrap().parse().unwrap();
        assert!(offset >= 0, "{key}: source.offset");
    }

    for (device, city) in [(&before, "Before"), (&after, "After")] {
        wait_for_city(&env, &session, device, city, WAIT).await;
    }
    for id in ["w", "big"] {
        assert!(
            redis_hash(&env, id).await.is_empty(),
            "rejected device {id} was written"
        );
    }
    service.terminate().await.unwrap();
}
