//! Several `get` clients sharing one reply topic, with requests interleaved: each prints only
//! the answer to its own request.

use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::cache_fixture::{entry, CacheFixture};
use hawkeye_devtools::testkit::request_reply::serials_after;
use hawkeye_devtools::testkit::service::{binary, isolated_env};

#[tokio::test]
async fn clients_on_one_reply_topic_each_get_their_own_answer() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let cache = CacheFixture::new(&env).await;
    cache
        .publish(&[
            entry("OLD", "2020-01-01T00:00:00Z"),
            entry("MID", "2021-01-01T00:00:00Z"),
            entry("NEW", "2022-01-01T00:00:00Z"),
        ])
        .await;

    let all: &[&str] = &[];
    let recent: &[&str] = &["--last-contact-filter", "2021-06-01T00:00:00Z"];
    // Two clients at a time, three rounds: their requests and replies interleave on the
    // service's request and reply topics.
    for _ in 0..3 {
        let (everything, only_new) =
            tokio::join!(serials_after(&env, all), serials_after(&env, recent));
        assert_eq!(everything, ["OLD", "MID", "NEW"]);
        assert_eq!(only_new, ["NEW"]);
    }
    cache.remove().await;
}
