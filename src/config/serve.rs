//! Cache requests: how replies are read, sized and routed.

use clap::Args;

use super::{positive, Rule};

#[derive(Args, Debug, Clone)]
pub struct ServeSettings {
    /// IANA zone used to read naive datetimes in `last_contact_filter`.
    #[arg(long, env = "TIMEZONE", default_value = "UTC", value_parser = Rule(timezone))]
    pub timezone: chrono_tz::Tz,
    /// Largest reply value, in bytes, before it is split into chunks.
    #[arg(
        long,
        env = "REPLY_MAX_BYTES",
        default_value = "900000",
        value_parser = Rule(reply_max_bytes)
    )]
    pub reply_max_bytes: usize,
    /// Only reply topics this regular expression matches whole (`kafka_replyTopic`); the
    /// service's own input topics are refused in any case [default: any other topic].
    #[arg(long, env = "REPLY_TOPICS_ALLOWED", value_parser = Rule(whole_name_pattern))]
    pub reply_topics_allowed: Option<regex::Regex>,
}

fn whole_name_pattern(value: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(value.trim()).map_err(|e| {
        let first_line = e.to_string().lines().last().unwrap_or_default().to_string();
        format!(
            "{value:?} is not a regular expression ({})",
            first_line.trim()
        )
    })
}

fn timezone(value: &str) -> Result<chrono_tz::Tz, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not an IANA time zone such as UTC or Europe/Madrid"))
}

fn reply_max_bytes(value: &str) -> Result<usize, String> {
    let bytes = positive(value)?;
    // A chunk must at least hold the reply envelope and one entry of a realistic size.
    if bytes < 4096 {
        return Err(format!("{bytes} is below the minimum of 4096"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::super::defaults;
    use super::super::testing::{parse, rejected};
    use super::ServeSettings;

    #[test]
    fn defaults_are_the_contract_defaults() {
        let serve: ServeSettings = defaults();
        assert_eq!(serve.timezone, chrono_tz::UTC);
        assert_eq!(serve.reply_max_bytes, 900_000);
        assert!(serve.reply_topics_allowed.is_none());
    }

    #[test]
    fn replies_have_a_minimum_size() {
        let err = rejected(&["--reply-max-bytes", "100"]);
        assert_eq!(
            err.to_string(),
            "invalid setting REPLY_MAX_BYTES: 100 is below the minimum of 4096"
        );
        assert_eq!(
            parse(&["--reply-max-bytes", "4096"]).serve.reply_max_bytes,
            4096
        );
    }

    #[test]
    fn timezone_and_reply_topics_are_checked() {
        assert_eq!(rejected(&["--timezone", "Mars/Base"]).setting, "TIMEZONE");
        let err = rejected(&["--reply-topics-allowed", "("]);
        assert_eq!(err.setting, "REPLY_TOPICS_ALLOWED");
        let serve = parse(&["--reply-topics-allowed", "replies\\..*"]).serve;
        assert!(serve.reply_topics_allowed.is_some());
    }
}
