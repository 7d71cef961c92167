//! Every metric the alert rules and the Grafana dashboard name is one the service exports
//! (`Metrics::series_names`: every series `/metrics` can show), so a renamed metric cannot
//! leave a silent alert or an empty panel behind.

use hawkeye_customer_cache::observe::Metrics;
use serde_json::Value;

const ALERTS: &str = include_str!("../../deploy/prometheus/alerts.yml");
const DASHBOARD: &str = include_str!("../../deploy/grafana/hawkeye-customer-cache.json");

/// The service's metric names a PromQL text mentions.
fn metric_names(promql: &str) -> Vec<String> {
    regex::Regex::new(r"hawkeye_customer_cache_[a-z0-9_]+")
        .expect("a valid pattern")
        .find_iter(promql)
        .map(|m| m.as_str().to_string())
        .collect()
}

fn unknown_names(promql: &str) -> Vec<String> {
    let exported = Metrics::new().expect("metrics").series_names();
    metric_names(promql)
        .into_iter()
        .filter(|name| !exported.contains(name))
        .collect()
}

/// The `expr` of every target of every panel.
fn dashboard_queries() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| {
            target["expr"]
                .as_str()
                .expect("a target's expr")
                .to_string()
        })
        .collect()
}

#[test]
fn every_metric_of_the_alert_rules_is_exported() {
    assert!(metric_names(ALERTS).len() > 5);
    assert_eq!(unknown_names(ALERTS), Vec::<String>::new());
}

#[test]
fn every_query_of_the_dashboard_names_an_exported_metric() {
    let queries = dashboard_queries();
    assert!(queries.len() > 10, "{queries:?}");
    for query in &queries {
        assert_eq!(unknown_names(query), Vec::<String>::new(), "in {query}");
        assert!(
            query.starts_with("up{") || !metric_names(query).is_empty(),
            "a query of no service metric: {query}"
        );
    }
}

#[test]
fn a_name_the_service_does_not_export_is_found() {
    assert_eq!(
        unknown_names(
            "rate(hawkeye_customer_cache_no_such_total[5m]) + hawkeye_customer_cache_cache_devices"
        ),
        ["hawkeye_customer_cache_no_such_total"]
    );
}
