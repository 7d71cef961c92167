//! Every row of the status table of `CONTRACT.md` §5, as a requester sees it: 202 before any
//! refresh (the start-up refresh fails here: no API is reachable), 400 for unreadable, oversized
//! requests and bad filters, 404 when nothing is left, 200 with the entries; and the row this
//! service adds, 503 while Redis cannot be read.

use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::cache_fixture::{entry, CacheFixture};
use hawkeye_devtools::testkit::profiles::eventually;
use hawkeye_devtools::testkit::request_reply::{json_of, run_get, send_request, ReplyListener};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use hawkeye_devtools::testkit::stack;
use serde_json::{json, Value};

use crate::common::proxy::TcpProxy;

const MISSING_BODY: &str = r#"You must specify {.."body":{...}} in the request"#;
const NO_DEVICES: &str = "No devices were found for the specified filters";

#[tokio::test]
async fn answers_every_row_of_the_status_table() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let cache = CacheFixture::new(&env).await;

    let building = run_get(&env, &["--timeout", "30"]).await;
    assert_eq!(building.code, 0, "202 is a success: {building:?}");
    assert_eq!(building.reply["status"], 202);
    assert_eq!(building.reply["body"], "Cache is still being built");

    let listener = ReplyListener::at_end(&env["TOPIC_REPLY"]).await;
    for (value, request_id) in [
        (&b"{not json"[..], Value::Null),
        (&b"[1,2]"[..], Value::Null),
        (&br#"{"request_id":"no-body"}"#[..], json!("no-body")),
        (
            &br#"{"request_id":"body-not-object","body":"x"}"#[..],
            json!("body-not-object"),
        ),
    ] {
        let correlation = uuid::Uuid::new_v4().to_string();
        send_request(
            &env,
            Some("k"),
            Some(value),
            &[("kafka_correlationId", correlation.as_bytes())],
        )
        .await;
        let reply = json_of(&listener.reply(correlation.as_bytes()).await);
        assert_eq!(
            reply,
            json!({"request_id": request_id, "status": 400, "body": MISSING_BODY}),
            "request {}",
            String::from_utf8_lossy(value)
        );
    }

    let correlation = uuid::Uuid::new_v4().to_string();
    let oversized = json!({"request_id": "big", "body": {}, "pad": "x".repeat(70_000)});
    send_request(
        &env,
        Some("k"),
        Some(oversized.to_string().as_bytes()),
        &[("kafka_correlationId", correlation.as_bytes())],
    )
    .await;
    let reply = json_of(&listener.reply(correlation.as_bytes()).await);
    assert_eq!(
        (&reply["status"], &reply["request_id"]),
        (&json!(400), &Value::Null),
        "{reply}"
    );
    assert!(
        reply["body"]
            .as_str()
            .is_some_and(|line| line.contains("larger than the limit of 65536 bytes")),
        "{reply}"
    );

    let bad_filter = run_get(&env, &["--last-contact-filter", "last tuesday"]).await;
    assert_eq!(bad_filter.code, 1, "{bad_filter:?}");
    assert_eq!(bad_filter.reply["status"], 400);
    let line = bad_filter.reply["body"].as_str().unwrap();
    assert!(
        line.contains("\"last tuesday\"") && !line.contains('\n'),
        "{line}"
    );

    // A refresh that kept no device: meta exists, the live hash does not.
    cache.publish(&[]).await;
    let empty = run_get(&env, &[]).await;
    assert_eq!(
        (empty.code, &empty.reply["status"]),
        (1, &json!(404)),
        "{empty:?}"
    );
    assert_eq!(empty.reply["body"], NO_DEVICES);

    let entries = [
        entry("A1", "2020-11-05T13:57:07Z"),
        entry("B2", "2021-01-01T00:00:00Z"),
    ];
    cache.publish(&entries).await;
    let found = run_get(&env, &[]).await;
    assert_eq!(found.code, 0, "{found:?}");
    assert_eq!(found.reply["status"], 200);
    assert_eq!(found.reply["body"], json!(entries));
    assert!(found.reply.get("chunk").is_none());

    let none_left = run_get(&env, &["--last-contact-filter", "2030-01-01T00:00:00Z"]).await;
    assert_eq!(
        (none_left.code, &none_left.reply["body"]),
        (1, &json!(NO_DEVICES))
    );

    let metrics = service.metrics().await.unwrap();
    for status in ["200", "202", "400", "404"] {
        let series = format!("hawkeye_customer_cache_get_requests_total{{status=\"{status}\"}}");
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
    cache.remove().await;
}

#[tokio::test]
async fn while_redis_cannot_be_read_requests_are_503_and_answered_again_after() {
    let url = reqwest::Url::parse(&stack().redis_url).unwrap();
    let redis = TcpProxy::start(&format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port().unwrap_or(6379)
    ))
    .await;
    let mut env = isolated_env();
    env.insert("REDIS_URL".into(), format!("redis://{}/0", redis.address()));
    let mut service = ServiceProcess::start(binary(), env).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let cache = CacheFixture::new(&env).await;
    let entries = [entry("A1", "2020-11-05T13:57:07Z")];
    cache.publish(&entries).await;
    assert_eq!(run_get(&env, &[]).await.reply["status"], 200);

    redis.pause();
    let down = run_get(&env, &[]).await;
    assert_eq!(down.code, 1, "{down:?}");
    assert_eq!(
        down.reply["body"], "The customer cache cannot be read right now; try again later",
        "{down:?}"
    );
    assert_eq!(down.reply["status"], 503);

    redis.resume();
    let found = eventually(
        Duration::from_secs(30),
        "a 200 after Redis is back",
        || async {
            let run = run_get(&env, &[]).await;
            (run.reply["status"] == 200).then_some(run)
        },
    )
    .await;
    assert_eq!(found.reply["body"], json!(entries));
    cache.remove().await;
}
