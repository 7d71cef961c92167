//! Replies follow the request's headers: `kafka_replyTopic` and `kafka_replyPartition` choose
//! where, `kafka_correlationId` (else the `request_id`) is copied, the key is the request's.
//! A request whose reply cannot be sent is counted and does not stop the others.

use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::cache_fixture::{entry, CacheFixture};
use hawkeye_devtools::testkit::request_reply::{
    correlation, create_topic, json_of, send_request, ReplyListener,
};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::unique;
use rdkafka::Message;
use serde_json::json;

#[tokio::test]
async fn replies_go_to_the_requested_topic_and_partition_with_key_and_correlation() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let cache = CacheFixture::new(&env).await;
    let cached = entry("R1", "2020-11-05T13:57:07Z");
    cache.publish(std::slice::from_ref(&cached)).await;
    let reply_topic = unique("it.replies");
    create_topic(&reply_topic, 3).await;
    let listener = ReplyListener::at_end(&reply_topic).await;

    let correlation_id = [0u8, 159, 146, 150, 7];
    let request = json!({"request_id": "routed", "body": {}}).to_string();
    send_request(
        &env,
        Some("the-key"),
        Some(request.as_bytes()),
        &[
            ("kafka_replyTopic", reply_topic.as_bytes()),
            ("kafka_replyPartition", &2i32.to_be_bytes()),
            ("kafka_correlationId", &correlation_id),
        ],
    )
    .await;
    let reply = listener.reply(&correlation_id).await;
    assert_eq!(reply.partition(), 2);
    assert_eq!(reply.key(), Some(&b"the-key"[..]));
    assert_eq!(
        json_of(&reply),
        json!({"request_id": "routed", "status": 200, "body": [cached]})
    );

    // Without a correlation header, the request_id is the correlation id.
    let request = json!({"request_id": "by-request-id", "body": {}}).to_string();
    send_request(
        &env,
        None,
        Some(request.as_bytes()),
        &[("kafka_replyTopic", reply_topic.as_bytes())],
    )
    .await;
    let reply = listener.reply(b"by-request-id").await;
    assert_eq!(correlation(&reply).as_deref(), Some(&b"by-request-id"[..]));
    assert_eq!(reply.key(), None);
    cache.remove().await;
}

#[tokio::test]
async fn unanswerable_requests_are_counted_and_the_next_is_answered() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let listener = ReplyListener::at_end(&env["TOPIC_REPLY"]).await;
    let request = json!({"request_id": "nowhere", "body": {}}).to_string();
    send_request(
        &env,
        None,
        Some(request.as_bytes()),
        &[
            ("kafka_replyTopic", b"not a topic!"),
            ("kafka_correlationId", b"nowhere"),
        ],
    )
    .await;
    send_request(
        &env,
        None,
        Some(request.as_bytes()),
        &[
            ("kafka_replyPartition", &[1, 2]),
            ("kafka_correlationId", b"nowhere"),
        ],
    )
    .await;
    let next = json!({"request_id": "after", "body": {}}).to_string();
    send_request(&env, None, Some(next.as_bytes()), &[]).await;

    // Requests of one partition may be answered in any order: wait for the counters.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let failures = |reason: &'static str| {
        format!("hawkeye_customer_cache_get_failures_total{{reason=\"{reason}\"}}")
    };
    while service
        .metric(&failures("invalid_reply_topic"))
        .await
        .unwrap()
        < 1.0
        || service
            .metric(&failures("invalid_reply_partition"))
            .await
            .unwrap()
            < 1.0
    {
        if tokio::time::Instant::now() > deadline {
            service.drain_log();
            panic!(
                "failures not counted; service log:\n{}",
                service.log.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(json_of(&listener.reply(b"after").await)["status"], 202);
}

#[tokio::test]
async fn replies_are_never_written_into_the_services_own_input_topics() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let inputs = ["TOPIC_REFRESH", "TOPIC_PROFILE_UPDATES", "TOPIC_GET"];
    let mut listeners = Vec::new();
    for input in inputs {
        listeners.push(ReplyListener::at_end(&env[input]).await);
    }
    let request = json!({"request_id": "deputy", "body": {}}).to_string();
    for input in inputs {
        send_request(
            &env,
            None,
            Some(request.as_bytes()),
            &[
                ("kafka_replyTopic", env[input].as_bytes()),
                ("kafka_correlationId", b"deputy"),
            ],
        )
        .await;
    }
    let refused = "hawkeye_customer_cache_get_failures_total{reason=\"reply_topic_not_allowed\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while service.metric(refused).await.unwrap() < inputs.len() as f64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "refusals not counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for listener in &listeners {
        // TOPIC_GET holds the requests themselves; a reply is the one with a status.
        let replies: Vec<_> = listener
            .everything_within(Duration::from_secs(2))
            .await
            .iter()
            .map(json_of)
            .filter(|value| value.get("status").is_some())
            .collect();
        assert!(replies.is_empty(), "replies in an input topic: {replies:?}");
    }
}
