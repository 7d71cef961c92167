//! The device profile push.

use std::time::Duration;

use clap::Args;

use super::{whole_seconds, Rule};

#[derive(Args, Debug, Clone)]
pub struct PushSettings {
    /// How far ahead of the service's clock an event's version (`api_last_updated_on`, else
    /// the record timestamp) or `last_contact` may be, in seconds; later ones are dead-lettered,
    /// since they would win over every event until that time comes.
    #[arg(
        long = "profile-max-future-secs",
        value_name = "PROFILE_MAX_FUTURE_SECS",
        env = "PROFILE_MAX_FUTURE_SECS",
        default_value = "86400",
        value_parser = Rule(whole_seconds)
    )]
    pub max_future: Duration,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::defaults;
    use super::super::testing::{parse, rejected};
    use super::PushSettings;

    #[test]
    fn the_default_is_a_day() {
        let push: PushSettings = defaults();
        assert_eq!(push.max_future, Duration::from_secs(86_400));
    }

    #[test]
    fn the_limit_is_whole_seconds() {
        let push = parse(&["--profile-max-future-secs", "3600"]).push;
        assert_eq!(push.max_future, Duration::from_secs(3600));
        for bad in ["0", "-5", "1.5", "soon"] {
            let err = rejected(&[&format!("--profile-max-future-secs={bad}")]);
            assert_eq!(
                err.to_string(),
                format!("invalid setting PROFILE_MAX_FUTURE_SECS: {bad:?} is not a positive whole number")
            );
        }
    }
}
