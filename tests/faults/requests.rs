//! Scenario 6: cache requests with garbage values, missing and bad headers, a reply topic that
//! does not exist yet, and 1000 requests in a burst, while device profile events keep flowing:
//! every request gets an answer or a clean, counted error; the service neither crashes nor
//! stalls the profile stream.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::cache_fixture::{entry, CacheFixture};
use hawkeye_devtools::testkit::profiles::{producer, TopicReader};
use hawkeye_devtools::testkit::request_reply::{correlation, json_of};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::unique;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

use crate::harness::{
    assert_all_latest, produce_all, size, topic_records, Figures, VersionedStream,
};

const WAIT: Duration = Duration::from_secs(120);

async fn request(
    producer: &FutureProducer,
    topic: &str,
    value: Option<&[u8]>,
    headers: &[(&str, &[u8])],
) {
    let mut owned = OwnedHeaders::new();
    for (key, value) in headers {
        owned = owned.insert(Header {
            key,
            value: Some(*value),
        });
    }
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key("k").headers(owned);
    if let Some(value) = value {
        record = record.payload(value);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(error, _)| error)
        .expect("cannot send a request");
}

/// Values a requester might send by mistake; each must be answered 400.
fn garbage() -> Vec<Option<Vec<u8>>> {
    let filter = |value: Value| json!({"request_id": "g", "body": {"last_contact_filter": value}});
    vec![
        None,
        Some(b"".to_vec()),
        Some(b"{not json".to_vec()),
        Some(b"\xff\xfe\xfd".to_vec()),
        Some(b"[]".to_vec()),
        Some(b"\"body\"".to_vec()),
        Some(b"{}".to_vec()),
        Some(br#"{"body":5}"#.to_vec()),
        Some(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes()),
        Some(vec![b'x'; 900_000]),
        Some(filter(json!("last tuesday")).to_string().into_bytes()),
        Some(filter(json!(5)).to_string().into_bytes()),
        Some(filter(json!({"a": 1})).to_string().into_bytes()),
        Some(filter(json!("9".repeat(100_000))).to_string().into_bytes()),
        Some(
            filter(json!("2020-13-45T99:99:99Z"))
                .to_string()
                .into_bytes(),
        ),
    ]
}

/// Waits until the metric `series` of `service` is at least `at_least`.
async fn wait_metric(service: &ServiceProcess, series: &str, at_least: f64) {
    let deadline = Instant::now() + WAIT;
    while service.metric(series).await.unwrap() < at_least {
        assert!(
            Instant::now() < deadline,
            "{series} never reached {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
#[ignore = "fault suite: run serially by scripts/test (cargo test --test faults -- --ignored)"]
async fn bad_requests_and_a_burst_get_answers_without_stalling_the_stream() {
    let started = Instant::now();
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let cache = CacheFixture::new(&env).await;
    let entries: Vec<Value> = (0..200)
        .map(|i| {
            entry(
                &format!("S{i:05}"),
                &format!("2024-01-01T00:{:02}:{:02}Z", i / 60, i % 60),
            )
        })
        .collect();
    cache.publish(&entries).await;
    let kafka = producer();
    let get_topic = env["TOPIC_GET"].clone();
    let replies = TopicReader::from_beginning(&env["TOPIC_REPLY"]);

    let garbage = garbage();
    for (i, value) in garbage.iter().enumerate() {
        let id = format!("garbage-{i}");
        request(
            &kafka,
            &get_topic,
            value.as_deref(),
            &[("kafka_correlationId", id.as_bytes())],
        )
        .await;
    }
    // Requests that cannot be answered: counted, committed, the consumer goes on.
    let valid = br#"{"request_id":"r","body":{}}"#;
    request(
        &kafka,
        &get_topic,
        Some(valid),
        &[("kafka_replyTopic", b"not a topic!")],
    )
    .await;
    request(
        &kafka,
        &get_topic,
        Some(valid),
        &[("kafka_replyPartition", b"\x00\x01")],
    )
    .await;
    request(
        &kafka,
        &get_topic,
        Some(valid),
        &[("kafka_replyPartition", b"\xff\xff\xff\xff")],
    )
    .await;
    request(
        &kafka,
        &get_topic,
        Some(valid),
        &[("kafka_replyPartition", &99i32.to_be_bytes())],
    )
    .await;
    // A reply topic nobody created: the broker creates it on the reply (auto.create.topics).
    let new_topic = unique("fresh.reply");
    request(
        &kafka,
        &get_topic,
        Some(br#"{"request_id":"to-new-topic","body":{}}"#),
        &[("kafka_replyTopic", new_topic.as_bytes())],
    )
    .await;

    // The burst, with a device profile push at the same time.
    let burst = size(1_000, 5_000);
    let stream = VersionedStream::new("during-burst", 500, 2);
    let push = {
        let (topic, events) = (env["TOPIC_PROFILE_UPDATES"].clone(), stream.events());
        tokio::spawn(async move { produce_all(&producer(), &topic, &events).await })
    };
    let sends = (0..burst).map(|i| {
        let (kafka, topic) = (&kafka, &get_topic);
        async move {
            // No headers at all: the reply goes to TOPIC_REPLY, correlated by request_id.
            let value = json!({"request_id": format!("burst-{i}"), "body": {"last_contact_filter": "2024-01-01T00:01:00Z"}});
            request(kafka, topic, Some(value.to_string().as_bytes()), &[]).await;
        }
    });
    futures::future::join_all(sends).await;
    push.await.expect("the push");

    let mut pending: HashSet<String> = (0..garbage.len()).map(|i| format!("garbage-{i}")).collect();
    pending.extend((0..burst).map(|i| format!("burst-{i}")));
    let expected_after = entries
        .iter()
        .filter(|e| e["last_contact"].as_str().unwrap() > "2024-01-01T00:01:00Z")
        .count();
    let mut statuses: HashMap<u64, usize> = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = replies.take(1, left).await;
        let reply = &batch[0];
        let id = String::from_utf8(correlation(reply).expect("a correlation id")).expect("utf-8");
        let value = json_of(reply);
        let status = value["status"].as_u64().expect("a status");
        if id.starts_with("garbage-") {
            assert_eq!(status, 400, "{id}: {value}");
            let body = value["body"].as_str().expect("an error line");
            assert!(
                !body.contains('\n') && body.len() < 400,
                "{id}: one short line: {body}"
            );
        } else {
            assert_eq!(status, 200, "{id}");
            assert_eq!(
                value["body"].as_array().expect("entries").len(),
                expected_after,
                "{id}"
            );
        }
        if pending.remove(&id) {
            *statuses.entry(status).or_default() += 1;
        }
    }
    wait_metric(
        &service,
        "hawkeye_customer_cache_get_failures_total{reason=\"invalid_reply_topic\"}",
        1.0,
    )
    .await;
    wait_metric(
        &service,
        "hawkeye_customer_cache_get_failures_total{reason=\"invalid_reply_partition\"}",
        2.0,
    )
    .await;
    wait_metric(
        &service,
        "hawkeye_customer_cache_get_failures_total{reason=\"delivery_failed\"}",
        1.0,
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while topic_records(&new_topic).await < 1 {
        assert!(
            Instant::now() < deadline,
            "no reply on the new reply topic {new_topic}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let fresh = TopicReader::from_beginning(&new_topic).take(1, WAIT).await;
    assert_eq!(json_of(&fresh[0])["status"], 200);
    assert!(fresh[0].payload().is_some());

    let stored = assert_all_latest(&env, &stream, WAIT).await;
    let health = reqwest::get(service.http_url("/health"))
        .await
        .expect("/health");
    assert!(health.status().is_success());
    assert!(
        service.terminate().await.unwrap().success(),
        "still running, stops cleanly"
    );
    cache.remove().await;
    println!("requests answered by status: {statuses:?}");
    Figures {
        scenario: "garbage, bad headers and a burst of requests during a push",
        produced: stream.len(),
        stored,
        dead_lettered: 0,
        lost: 0,
        faults: garbage.len() + 5 + burst,
        started,
    }
    .print();
}
