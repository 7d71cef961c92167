//! A reply larger than `REPLY_MAX_BYTES` arrives as complete reply objects, each within the
//! limit and marked `chunk: {index, count}`; joined back (raw, and by the `get` client) they
//! are the whole cache.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeDelta, TimeZone, Utc};
use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::cache_fixture::{entry, CacheFixture};
use hawkeye_devtools::testkit::request_reply::{json_of, run_get, send_request, ReplyListener};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use rdkafka::Message;
use serde_json::{json, Value};

const LIMIT: usize = 20_000;

#[tokio::test]
async fn a_large_cache_is_chunked_and_joins_back_to_the_cache() {
    let mut env = isolated_env();
    env.insert("REPLY_MAX_BYTES".into(), LIMIT.to_string());
    let mut service = ServiceProcess::start(binary(), env).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let cache = CacheFixture::new(&env).await;
    let start = Utc.with_ymd_and_hms(2022, 1, 1, 0, 0, 0).unwrap();
    // In last_contact order, which is the order of the replies.
    let entries: Vec<Value> = (0..3000)
        .map(|i| {
            let at = (start + TimeDelta::seconds(i)).to_rfc3339();
            entry(&format!("SER{i:06}"), &at)
        })
        .collect();
    cache.publish(&entries).await;

    let listener = ReplyListener::at_end(&env["TOPIC_REPLY"]).await;
    let correlation = b"chunked-request";
    let request = json!({"request_id": "big", "body": {}}).to_string();
    send_request(
        &env,
        Some("key"),
        Some(request.as_bytes()),
        &[("kafka_correlationId", correlation)],
    )
    .await;
    let replies = listener
        .replies(correlation, |replies| {
            replies.first().is_some_and(|first| {
                let count = json_of(first)["chunk"]["count"].as_u64().unwrap_or(1) as usize;
                replies.len() >= count
            })
        })
        .await;

    let mut parts = BTreeMap::new();
    for reply in &replies {
        let size = reply.payload().unwrap().len();
        assert!(size <= LIMIT, "a chunk of {size} bytes");
        assert_eq!(reply.key(), Some(&b"key"[..]));
        let value = json_of(reply);
        assert_eq!(
            (&value["request_id"], &value["status"]),
            (&json!("big"), &json!(200))
        );
        assert_eq!(value["chunk"]["count"].as_u64(), Some(replies.len() as u64));
        let index = value["chunk"]["index"].as_u64().unwrap();
        parts.insert(index, value["body"].as_array().unwrap().clone());
    }
    assert!(parts.len() > 1, "expected several chunks");
    assert_eq!(
        parts.keys().copied().collect::<Vec<_>>(),
        (0..parts.len() as u64).collect::<Vec<_>>()
    );
    let joined: Vec<Value> = parts.into_values().flatten().collect();
    assert_eq!(joined, entries);

    let client = run_get(&env, &[]).await;
    assert_eq!(client.code, 0, "{}", client.stderr);
    assert_eq!(client.reply["body"], json!(entries));
    assert!(client.reply.get("chunk").is_none());
    cache.remove().await;
}
