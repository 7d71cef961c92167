//! The customer cache refresh: its schedule, which devices it keeps, and how hard it may call
//! the APIs.

use std::time::Duration;

use clap::Args;

use super::{positive, whole_seconds, Rule};

#[derive(Args, Debug, Clone)]
pub struct RefreshSettings {
    /// Period of the scheduled refresh, in seconds (one also runs at start-up).
    #[arg(
        long = "refresh-interval-secs",
        value_name = "REFRESH_INTERVAL_SECS",
        env = "REFRESH_INTERVAL_SECS",
        default_value = "14400",
        value_parser = Rule(whole_seconds)
    )]
    pub interval: Duration,
    /// JSON list of the management statuses that make a device monitorable.
    #[arg(
        long = "monitorable-management-statuses",
        value_name = "MONITORABLE_MANAGEMENT_STATUSES",
        env = "MONITORABLE_MANAGEMENT_STATUSES",
        default_value = r#"["Pending","Active – Gold Monitoring","Active – Platinum Monitoring"]"#,
        value_parser = Rule(json_strings)
    )]
    pub monitorable_statuses: std::vec::Vec<String>,
    /// Consecutive failed probe fetches before a refresh fails.
    #[arg(
        long,
        env = "HAWKEYE_MAX_ATTEMPTS",
        default_value = "10",
        value_parser = Rule(positive::<u32>)
    )]
    pub hawkeye_max_attempts: u32,
    /// Bruin requests in flight at once.
    #[arg(
        long,
        env = "BRUIN_CONCURRENCY",
        default_value = "64",
        value_parser = Rule(positive::<usize>)
    )]
    pub bruin_concurrency: usize,
    /// Share of devices that may fail with errors before a refresh fails.
    #[arg(
        long,
        env = "BRUIN_MAX_ERROR_RATIO",
        default_value = "0.05",
        value_parser = Rule(ratio)
    )]
    pub bruin_max_error_ratio: f64,
}

fn json_strings(value: &str) -> Result<Vec<String>, String> {
    serde_json::from_str(value).map_err(|e| format!("not a JSON list of strings ({e})"))
}

fn ratio(value: &str) -> Result<f64, String> {
    let ratio: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("{ratio} is not between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::defaults;
    use super::super::testing::rejected;
    use super::RefreshSettings;

    #[test]
    fn defaults_are_the_contract_defaults() {
        let refresh: RefreshSettings = defaults();
        assert_eq!(refresh.interval, Duration::from_secs(14400));
        assert_eq!(refresh.hawkeye_max_attempts, 10);
        assert_eq!(refresh.bruin_concurrency, 64);
        assert_eq!(refresh.bruin_max_error_ratio, 0.05);
        // The default statuses carry an EN DASH (U+2013), not a hyphen.
        assert!(refresh
            .monitorable_statuses
            .contains(&"Active \u{2013} Gold Monitoring".to_string()));
    }

    #[test]
    fn a_rejected_value_names_the_variable_in_one_line() {
        assert_eq!(
            rejected(&["--refresh-interval-secs", "abc"]).to_string(),
            "invalid setting REFRESH_INTERVAL_SECS: \"abc\" is not a positive whole number"
        );
    }

    #[test]
    fn numbers_must_be_positive() {
        let err = rejected(&["--refresh-interval-secs", "0"]);
        assert_eq!(err.setting, "REFRESH_INTERVAL_SECS");
        let err = rejected(&["--bruin-max-error-ratio", "1.5"]);
        assert_eq!(err.setting, "BRUIN_MAX_ERROR_RATIO");
    }

    #[test]
    fn statuses_must_be_a_json_list() {
        let err = rejected(&["--monitorable-management-statuses", "Pending"]);
        assert_eq!(err.setting, "MONITORABLE_MANAGEMENT_STATUSES");
    }
}
