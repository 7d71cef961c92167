//! The alert rules on a real Prometheus (Debian's `prometheus`, installed by `scripts/deps`):
//! it scrapes a running service every second, and a burst of poison events makes the
//! dead-letter alert fire. The rules are `deploy/prometheus/alerts.yml` as shipped, but for the
//! dead-letter alert's `for:`, shortened so that the test does not wait 5 minutes.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use hawkeye_devtools::service::{free_port, ServiceProcess};
use hawkeye_devtools::testkit::profiles::{eventually, produce, produce_json, producer};
use hawkeye_devtools::testkit::service::{binary, isolated_env};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(60);
const ALERT: &str = "HawkeyeCustomerCacheDeadLetters";
const RULES: &str = include_str!("../../deploy/prometheus/alerts.yml");

/// The rules with `alert`'s `for:` replaced by `for: 1s`.
fn with_short_for(rules: &str, alert: &str) -> String {
    let start = rules
        .find(&format!("- alert: {alert}\n"))
        .unwrap_or_else(|| panic!("no alert {alert} in alerts.yml"));
    let (before, after) = rules.split_at(start);
    let end = after[2..].find("- alert: ").map_or(after.len(), |i| i + 2);
    let (rule, rest) = after.split_at(end);
    let for_line = rule
        .lines()
        .find(|line| line.trim_start().starts_with("for: "))
        .unwrap_or_else(|| panic!("{alert} has no for:"));
    let indent = &for_line[..for_line.len() - for_line.trim_start().len()];
    format!(
        "{before}{}{rest}",
        rule.replace(for_line, &format!("{indent}for: 1s"))
    )
}

/// Prometheus scraping `target` every second, with `rules`, on a free loopback port.
struct Prometheus {
    _child: Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Prometheus {
    fn start(target: &str, rules: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("alerts.yml"), rules).expect("write rules");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [alerts.yml]\n\
             scrape_configs:\n  - job_name: hawkeye-customer-cache\n    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write config");
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", data_dir(dir.path())))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start prometheus: run scripts/deps (Debian package prometheus)");
        Prometheus {
            _child: child,
            _dir: dir,
            url: format!("http://{address}"),
        }
    }

    /// `data` of an API answer, `None` while Prometheus does not answer.
    async fn api(&self, path: &str) -> Option<Value> {
        let answer: Value = reqwest::get(format!("{}{path}", self.url))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (answer["status"] == "success").then(|| answer["data"].clone())
    }

    /// The instant query's result vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", urlencode(promql));
        self.api(&path)
            .await
            .and_then(|data| data["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// The state of the alert `name` (`pending`, `firing`), if it is active.
    async fn alert_state(&self, name: &str) -> Option<String> {
        let data = self.api("/api/v1/alerts").await?;
        data["alerts"]
            .as_array()?
            .iter()
            .find(|alert| alert["labels"]["alertname"] == name)
            .and_then(|alert| alert["state"].as_str().map(str::to_string))
    }
}

fn data_dir(dir: &Path) -> String {
    dir.join("data").display().to_string()
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn only_the_named_alert_gets_the_short_for() {
    let rules = with_short_for(RULES, ALERT);
    assert_eq!(rules.matches("for: 1s").count(), 1);
    let rule = &rules[rules.find(ALERT).unwrap()..];
    let next = rule[1..].find("- alert: ").unwrap_or(rule.len());
    assert!(rule[..next].contains("for: 1s"), "{rules}");
    assert_eq!(
        rules.lines().count(),
        RULES.lines().count(),
        "one line changed"
    );
}

#[tokio::test]
async fn a_burst_of_poison_events_fires_the_dead_letter_alert() {
    let mut service = ServiceProcess::start(binary(), isolated_env()).unwrap();
    service.wait_ready(WAIT).await.unwrap();
    let env = service.env.clone();
    let prometheus = Prometheus::start(&env["HTTP_ADDR"], &with_short_for(RULES, ALERT));
    eventually(WAIT, "Prometheus scrapes the service", || async {
        let up = prometheus
            .query("up{job=\"hawkeye-customer-cache\"} == 1")
            .await;
        (!up.is_empty()).then_some(())
    })
    .await;

    let producer = producer();
    let dead_letters = "hawkeye_customer_cache_profile_events_dead_lettered_total";
    // One dead letter does not alert. The burst's reason is another one: its series is new,
    // which the rule must count too.
    produce(&producer, &env, Some("first"), b"{not json").await;
    eventually(WAIT, "Prometheus sees the first dead letter", || async {
        (!prometheus.query(dead_letters).await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        prometheus.alert_state(ALERT).await,
        None,
        "one letter does not alert"
    );

    for index in 0..40 {
        produce_json(
            &producer,
            &env,
            &json!({"device_id": format!("p{index}"), "city": [1]}),
        )
        .await;
    }
    eventually(WAIT, "the dead-letter alert fires", || async {
        (prometheus.alert_state(ALERT).await.as_deref() == Some("firing")).then_some(())
    })
    .await;
    assert!(service.terminate().await.unwrap().success());
}
