//! Scenario 4: a poison mix. About 1% of the events are bad in every way of `CONTRACT.md` §3,
//! plus invalid UTF-8, deep nesting, 2 MiB values and huge numbers; good events carry
//! duplicate keys (the last one wins, as in JavaScript's and Python's JSON parsers), huge
//! numbers in text fields (kept as their digits) and deeply nested unknown fields (ignored).
//! Every good event lands, every bad one is in the dead-letter topic with its reason, and the
//! consumer never stops.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::profiles::{header, producer, redis_hash};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use rdkafka::Message;
use serde_json::json;

use crate::harness::{
    assert_all_latest, dead_letters_of, produce_all, size, topic_records, Figures, VersionedStream,
};

/// A bad value and a word its `error.reason` must contain.
fn bad_value(kind: usize) -> (Vec<u8>, &'static str) {
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    match kind % 16 {
        0 => (b"{not json".to_vec(), "not JSON"),
        1 => (b"[1,2,3]".to_vec(), "not an object"),
        2 => (br#"{"city":"Pune"}"#.to_vec(), "device_id is missing"),
        3 => (
            br#"{"device_id":"  \t ","city":"Pune"}"#.to_vec(),
            "device_id is empty",
        ),
        4 => (
            json!({"device_id": "x".repeat(300)})
                .to_string()
                .into_bytes(),
            "longer than 256",
        ),
        5 => (
            br#"{"device_id":"p","city":["Pune"]}"#.to_vec(),
            "field city",
        ),
        6 => (br#"{"device_id":"p","uaspec":42}"#.to_vec(), "field uaspec"),
        7 => (
            br#"{"device_id":"p","first_access":"soon"}"#.to_vec(),
            "field first_access",
        ),
        8 => (
            br#"{"device_id":"p","last_contact":"yesterday"}"#.to_vec(),
            "field last_contact",
        ),
        9 => (
            b"{\"device_id\":\"p\",\"city\":\"Pu\xff\xfene\"}".to_vec(),
            "not JSON",
        ),
        // Valid JSON, only deep: skipped without recursion, then rejected as not an object.
        10 => (nested(100_000).into_bytes(), "not an object"),
        11 => (br#"{"device_id":42}"#.to_vec(), "field device_id"),
        // 2 MiB: the broker's default message.max.bytes (~1 MiB) takes it because the test
        // producer compresses (lz4) and the repeated text shrinks to a few KiB.
        12 => (
            json!({"device_id": "p", "note": "x".repeat(2 * 1024 * 1024)})
                .to_string()
                .into_bytes(),
            "larger than the limit",
        ),
        13 => (
            br#"{"device_id":"p","first_access":1e400}"#.to_vec(),
            "field first_access",
        ),
        14 => (
            br#"{"device_id":"p","api_last_updated_on":123456789012345678901234567890}"#.to_vec(),
            "field api_last_updated_on",
        ),
        _ => (
            br#"{"device_id":"p","device_spec":"{not an object"}"#.to_vec(),
            "field device_spec",
        ),
    }
}

/// The good event of `device` at `version`, with a duplicate key or a huge number now and then.
fn good_value(index: usize, device: &str, version: i64) -> Vec<u8> {
    let event = VersionedStream::event(device, version).to_string();
    let body = event.strip_suffix('}').expect("an object");
    let text = match index % 50 {
        0 => format!(r#"{body},"city":"loser","city":"v{version}"}}"#),
        1 => format!(r#"{body},"state_code":123456789012345678901234567890}}"#),
        // Deep nesting in an unknown field is skipped (without recursion) and ignored.
        2 => format!(
            r#"{body},"extra":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        ),
        _ => event,
    };
    text.into_bytes()
}

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn a_poison_mix_is_dead_lettered_and_good_events_land() {
    let started = Instant::now();
    let stream = VersionedStream::new("poison", size(1_000, 10_000), 2);
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();

    let mut events = Vec::new();
    let mut bad: HashMap<String, (Vec<u8>, &'static str)> = HashMap::new();
    for (index, (device, _)) in stream.events().into_iter().enumerate() {
        let version = 1 + (index / stream.devices.len()) as i64;
        events.push((device.clone(), good_value(index, &device, version)));
        if index % 100 == 99 {
            let key = format!("bad-{}-{index}", stream.devices[0]);
            let (value, reason) = bad_value(bad.len());
            events.push((key.clone(), value.clone()));
            bad.insert(key, (value, reason));
        }
    }
    produce_all(&producer(), &env["TOPIC_PROFILE_UPDATES"], &events).await;

    let stored = assert_all_latest(&env, &stream, Duration::from_secs(180)).await;
    for (key, (value, word), letter) in &dead_letters_of(&env, &bad).await {
        assert!(
            letter.payload() == Some(value.as_slice()),
            "{key}: the original bytes"
        );
        let reason = header(letter, "error.reason").expect("error.reason");
        assert!(
            reason.contains(*word),
            "{key}: reason {reason:?} should say {word:?}"
        );
        assert!(
            !reason.contains('\n') && reason.len() < 500,
            "{key}: one short line: {reason:?}"
        );
    }
    let dead_lettered = topic_records(&env["TOPIC_PROFILE_DLQ"]).await as usize;
    assert_eq!(
        dead_lettered,
        bad.len(),
        "exactly the bad events are dead-lettered"
    );
    assert!(
        redis_hash(&env, "p").await.is_empty(),
        "no bad event was stored"
    );
    service.drain_log();
    assert!(
        service.terminate().await.unwrap().success(),
        "the consumer is still running"
    );
    Figures {
        scenario: "poison mix (1% bad, 16 kinds)",
        produced: events.len(),
        stored,
        dead_lettered,
        lost: 0,
        faults: bad.len(),
        started,
    }
    .print();
}
