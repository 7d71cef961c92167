//! Scenario 11: events that pass validation but can never be written, 1% among good ones: an
//! event for a device whose Redis key is someone's string (the script fails with `WRONGTYPE`
//! every time), a version dated ten days ahead, a tombstone whose key is not a device_id (longer than 256 bytes), and a value larger
//! than the dead-letter topic takes (the source topic allows 5 MB; the bytes do not compress);
//! beside them, keyed tombstones, which are deletes. Every good event lands in both stores,
//! every bad one is in the dead-letter topic with its reason (the oversized one without its
//! value, saying so), every delete is counted, the foreign keys are left alone, nothing is
//! dropped and the stream never stalls.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::cache_fixture::redis_connection;
use hawkeye_devtools::testkit::profiles::{header, producer};
use hawkeye_devtools::testkit::request_reply::create_topic_with;
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use rand::RngCore;
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use redis::AsyncCommands;
use serde_json::json;

use crate::harness::{
    assert_all_latest, dead_letters_of, produce_all, size, topic_records, Figures, VersionedStream,
};

/// What a bad event is, and what its dead letter must show.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bad {
    ForeignKey,
    AheadOfClock,
    /// A tombstone whose key is no device_id: no device to delete.
    TombstoneOfNoDevice,
    Oversized,
    /// A keyed tombstone: not bad, a delete; in the mix to show it is counted as one.
    Delete,
}

const KINDS: [Bad; 5] = [
    Bad::ForeignKey,
    Bad::AheadOfClock,
    Bad::TombstoneOfNoDevice,
    Bad::Oversized,
    Bad::Delete,
];

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn events_that_can_never_be_written_are_dead_lettered_and_the_stream_goes_on() {
    let started = Instant::now();
    let stream = VersionedStream::new("refusals", size(1_000, 10_000), 2);
    let env = isolated_env();
    let topic = env["TOPIC_PROFILE_UPDATES"].clone();
    create_topic_with(&topic, 3, &[("max.message.bytes", "5000000")]).await;
    let mut service = ServiceProcess::start(binary(), env.clone()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let mut redis = redis_connection().await;
    let prefix = env["REDIS_DEVICE_KEY_PREFIX"].clone();

    let mut events = Vec::new();
    let mut tombstones = Vec::new();
    let mut bad: HashMap<String, (Bad, Option<Vec<u8>>)> = HashMap::new();
    let mut deletes = 0;
    for (index, event) in stream.events().into_iter().enumerate() {
        events.push(event);
        if index % 100 != 99 {
            continue;
        }
        let kind = KINDS[(bad.len() + deletes) % KINDS.len()];
        let key = match kind {
            Bad::TombstoneOfNoDevice => format!("{index}-{}", "x".repeat(300)),
            _ => format!("bad-{}-{index}", stream.devices[0]),
        };
        let value = match kind {
            Bad::ForeignKey => {
                let () = redis
                    .set(format!("{prefix}{key}"), "foreign")
                    .await
                    .unwrap();
                Some(
                    json!({"device_id": key, "city": "x"})
                        .to_string()
                        .into_bytes(),
                )
            }
            Bad::AheadOfClock => {
                let in_ten_days = chrono::Utc::now().timestamp_millis() + 10 * 86_400_000;
                let event = json!({"device_id": key, "api_last_updated_on": in_ten_days});
                Some(event.to_string().into_bytes())
            }
            Bad::TombstoneOfNoDevice | Bad::Delete => None,
            Bad::Oversized => {
                let mut noise = vec![0u8; 1_500_000];
                rand::rng().fill_bytes(&mut noise);
                Some(noise)
            }
        };
        match &value {
            Some(value) => events.push((key.clone(), value.clone())),
            None => tombstones.push(key.clone()),
        }
        if kind == Bad::Delete {
            deletes += 1;
            continue;
        }
        bad.insert(key, (kind, value));
    }
    let producer = producer();
    produce_all(&producer, &topic, &events).await;
    for key in &tombstones {
        let tombstone: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic).key(key);
        producer
            .send(tombstone, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("tombstone delivered");
    }

    let stored = assert_all_latest(&env, &stream, Duration::from_secs(180)).await;
    for (key, &(kind, ref value), letter) in &dead_letters_of(&env, &bad).await {
        let reason = header(letter, "error.reason").expect("error.reason");
        let expected = match kind {
            Bad::ForeignKey => "WRONGTYPE",
            Bad::AheadOfClock => "ahead of the service's clock",
            Bad::TombstoneOfNoDevice => "tombstone key is not a valid device_id",
            Bad::Oversized => "larger than the limit",
            Bad::Delete => unreachable!("deletes are not dead-lettered"),
        };
        assert!(reason.contains(expected), "{key} ({kind:?}): {reason:?}");
        if kind == Bad::ForeignKey {
            assert!(reason.starts_with("redis: "), "names the store: {reason:?}");
        }
        if kind == Bad::Oversized {
            assert_eq!(letter.payload(), None, "{key}: sent without the value");
            assert_eq!(
                header(letter, "error.value.truncated").as_deref(),
                Some("true")
            );
            assert_eq!(
                header(letter, "error.value.bytes").as_deref(),
                Some("1500000")
            );
        } else {
            assert_eq!(
                letter.payload(),
                value.as_deref(),
                "{key}: the original bytes"
            );
        }
    }
    let dead_lettered = topic_records(&env["TOPIC_PROFILE_DLQ"]).await as usize;
    assert_eq!(
        dead_lettered,
        bad.len(),
        "exactly the bad events are dead-lettered"
    );
    for (key, (kind, _)) in &bad {
        if *kind == Bad::ForeignKey {
            let kept: String = redis.get(format!("{prefix}{key}")).await.unwrap();
            assert_eq!(kept, "foreign", "{key}: the foreign key is left alone");
        }
    }
    let deleted = "hawkeye_customer_cache_profile_devices_deleted_total";
    assert_eq!(
        service.metric(deleted).await.unwrap(),
        deletes as f64,
        "every delete counted"
    );
    let dropped =
        "hawkeye_customer_cache_profile_events_dropped_total{reason=\"dead_letter_refused\"}";
    assert_eq!(
        service.metric(dropped).await.unwrap(),
        0.0,
        "nothing dropped"
    );
    assert!(
        service.terminate().await.unwrap().success(),
        "the consumer is still running"
    );
    Figures {
        scenario: "refusals mix (1%: foreign key, ahead of clock, bad-key tombstone, oversized letter, delete)",
        produced: events.len() + tombstones.len(),
        stored,
        dead_lettered,
        lost: 0,
        faults: bad.len(),
        started,
    }
    .print();
}
