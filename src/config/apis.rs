//! The Hawkeye/Ixia and Bruin APIs the refresh reads.

use clap::Args;
use reqwest::Url;

use super::{invalid, non_empty, ConfigError, Rule, Secret};

/// The API settings: optional here (only `run` needs them), required by [`ApiArgs::validate`].
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Base URL of the Hawkeye/Ixia API.
    #[arg(long, env = "HAWKEYE_BASE_URL", value_parser = Rule(http_url))]
    pub hawkeye_base_url: Option<Url>,
    #[arg(long, env = "HAWKEYE_USERNAME", value_parser = Rule(non_empty))]
    pub hawkeye_username: Option<String>,
    #[arg(
        long,
        env = "HAWKEYE_PASSWORD",
        hide_env_values = true,
        value_parser = Rule(non_empty_secret)
    )]
    pub hawkeye_password: Option<Secret>,
    /// Base URL of the Bruin API.
    #[arg(long, env = "BRUIN_BASE_URL", value_parser = Rule(http_url))]
    pub bruin_base_url: Option<Url>,
    /// Base URL of Bruin's OAuth server.
    #[arg(long, env = "BRUIN_LOGIN_URL", value_parser = Rule(http_url))]
    pub bruin_login_url: Option<Url>,
    #[arg(long, env = "BRUIN_CLIENT_ID", value_parser = Rule(non_empty))]
    pub bruin_client_id: Option<String>,
    #[arg(
        long,
        env = "BRUIN_CLIENT_SECRET",
        hide_env_values = true,
        value_parser = Rule(non_empty_secret)
    )]
    pub bruin_client_secret: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct HawkeyeSettings {
    pub base_url: Url,
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone)]
pub struct BruinSettings {
    pub base_url: Url,
    pub login_url: Url,
    pub client_id: String,
    pub client_secret: Secret,
}

impl ApiArgs {
    /// Checks that every API setting is set.
    pub fn validate(self) -> Result<(HawkeyeSettings, BruinSettings), ConfigError> {
        let hawkeye = HawkeyeSettings {
            base_url: required("HAWKEYE_BASE_URL", self.hawkeye_base_url)?,
            username: required("HAWKEYE_USERNAME", self.hawkeye_username)?,
            password: required("HAWKEYE_PASSWORD", self.hawkeye_password)?,
        };
        let bruin = BruinSettings {
            base_url: required("BRUIN_BASE_URL", self.bruin_base_url)?,
            login_url: required("BRUIN_LOGIN_URL", self.bruin_login_url)?,
            client_id: required("BRUIN_CLIENT_ID", self.bruin_client_id)?,
            client_secret: required("BRUIN_CLIENT_SECRET", self.bruin_client_secret)?,
        };
        Ok((hawkeye, bruin))
    }
}

fn required<T>(setting: &str, value: Option<T>) -> Result<T, ConfigError> {
    value.ok_or_else(|| invalid(setting, "is not set"))
}

fn http_url(value: &str) -> Result<Url, String> {
    let text = non_empty(value)?;
    let url = Url::parse(&text).map_err(|e| format!("{text:?} is not a URL ({e})"))?;
    if matches!(url.scheme(), "http" | "https") {
        Ok(url)
    } else {
        Err(format!("{text:?} is not an http(s) URL"))
    }
}

fn non_empty_secret(value: &str) -> Result<Secret, String> {
    non_empty(value).map(Secret::new)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{parse, rejected};

    #[test]
    fn missing_api_settings_are_named() {
        let all = parse(&[
            "--hawkeye-base-url",
            "http://127.0.0.1:1",
            "--hawkeye-username",
            "u",
        ]);
        assert_eq!(
            all.api.validate().unwrap_err().to_string(),
            "invalid setting HAWKEYE_PASSWORD: is not set"
        );
        let err = rejected(&["--bruin-base-url", "ftp://bruin"]);
        assert_eq!(err.setting, "BRUIN_BASE_URL");
    }

    #[test]
    fn every_api_setting_set_is_valid_and_the_secrets_stay_hidden() {
        let all = parse(&[
            "--hawkeye-base-url",
            "http://hawkeye",
            "--hawkeye-username",
            "u",
            "--hawkeye-password",
            "hunter2",
            "--bruin-base-url",
            "https://bruin",
            "--bruin-login-url",
            "https://login",
            "--bruin-client-id",
            "c",
            "--bruin-client-secret",
            "s3cret",
        ]);
        let (hawkeye, bruin) = all.api.validate().unwrap();
        assert_eq!(hawkeye.password.expose(), "hunter2");
        assert_eq!(bruin.login_url.as_str(), "https://login/");
        let shown = format!("{hawkeye:?} {bruin:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        let err = rejected(&["--hawkeye-password", " "]);
        assert_eq!(
            err.to_string(),
            "invalid setting HAWKEYE_PASSWORD: is empty"
        );
    }
}
