//! `last_contact_filter` in every accepted form, compared as instants: strictly after, naive
//! forms read in `TIMEZONE`, a filter equal to a device's last contact excludes it.

use std::time::Duration;

use hawkeye_devtools::service::ServiceProcess;
use hawkeye_devtools::testkit::cache_fixture::{entry, CacheFixture};
use hawkeye_devtools::testkit::request_reply::{run_get, serials_after};
use hawkeye_devtools::testkit::service::{binary, isolated_env};

#[tokio::test]
async fn filters_in_every_form_compare_instants_strictly_after() {
    let mut env = isolated_env();
    // UTC+2 in June.
    env.insert("TIMEZONE".into(), "Europe/Madrid".into());
    let mut service = ServiceProcess::start(binary(), env).unwrap();
    service.wait_ready(Duration::from_secs(60)).await.unwrap();
    let env = service.env.clone();
    let cache = CacheFixture::new(&env).await;
    cache
        .publish(&[
            entry("D1", "2023-06-11T10:34:56Z"),
            entry("D2", "2023-06-11T10:34:57.5Z"),
            // 10:00 UTC: earlier than D1 although its text sorts later.
            entry("D3", "2023-06-11T12:00:00+02:00"),
            // Never contacted: only listed without a filter.
            entry("D4", "never"),
        ])
        .await;

    let cases: [(&str, &[&str]); 7] = [
        ("2023-06-11T09:59:59Z", &["D3", "D1", "D2"]),
        // Exactly D1's last contact, in three spellings: D1 is not strictly after it.
        ("2023-06-11T10:34:56.000Z", &["D2"]),
        ("2023-06-11T12:34:56+02:00", &["D2"]),
        ("2023-06-11 12:34:56", &["D2"]),
        // Naive, read in Madrid: 09:59:59 UTC (read as UTC it would leave nothing).
        ("2023-06-11 11:59:59", &["D3", "D1", "D2"]),
        // Naive with T, exactly D3's instant.
        ("2023-06-11T12:00:00", &["D1", "D2"]),
        ("2023-06-11 12:34:56.789012", &["D2"]),
    ];
    for (filter, expected) in cases {
        let serials = serials_after(&env, &["--last-contact-filter", filter]).await;
        assert_eq!(serials, expected, "filter {filter}");
    }
    assert_eq!(serials_after(&env, &[]).await, ["D4", "D3", "D1", "D2"]);

    let after_all = run_get(&env, &["--last-contact-filter", "2023-06-11T10:34:57.5Z"]).await;
    assert_eq!(after_all.reply["status"], 404, "{after_all:?}");
    cache.remove().await;
}
