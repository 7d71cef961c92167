//! Settings from environment variables and CLI flags (`CONTRACT.md` §2).
//!
//! One struct per group of settings, each parsed by clap (`main` flattens
//! [`ServiceSettings`] into `run`, and the groups a tool needs into the tool), and each default
//! written once, in its `#[arg]` attribute. Every setting is typed where clap reads it: each
//! argument's value parser is a [`Rule`], whose error is a [`ConfigError`] naming the
//! argument's environment variable in one line (`main` prints it before exiting 2). The few
//! rules that involve several settings, files or a required value (Redis's TLS files, Cassandra
//! credentials and TLS, the API settings `run` needs) are checked by a small `validate` step
//! after parsing.
//!
//! The settings are plain data: what the service makes of them at run time (clients, metrics)
//! is handed to the parts that need it where they are built.

mod apis;
mod kafka;
mod push;
mod refresh;
mod serve;
mod service;
mod stores;

pub use apis::{ApiArgs, BruinSettings, HawkeyeSettings};
pub use kafka::{is_valid_topic_name, KafkaSettings, Topics};
pub use push::PushSettings;
pub use refresh::RefreshSettings;
pub use serve::ServeSettings;
pub use service::{HttpSettings, RunSettings, ServiceSettings};
pub use stores::{CassandraCredentials, CassandraTls, RedisTls, StoreSettings};

use std::ffi::OsStr;
use std::fmt;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Arg, Args, Command, FromArgMatches};

/// A setting that is missing or malformed. Displays as one line naming the setting.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    pub setting: String,
    pub reason: String,
}

impl ConfigError {
    /// The setting a clap error is about, when a [`Rule`] rejected its value.
    pub fn of_clap_error(error: &clap::Error) -> Option<&ConfigError> {
        std::error::Error::source(error)?.downcast_ref()
    }
}

fn invalid(setting: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.to_string(),
        reason: reason.into(),
    }
}

/// A value rule as a clap value parser: the rule says what is wrong, and the error it becomes
/// names the argument's environment variable (its `--flag` when it has none).
#[derive(Clone)]
pub struct Rule<T>(pub fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Rule<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let setting = arg.map_or_else(|| "?".to_string(), setting_name);
        let rule = self.0;
        // clap's own closure parser keeps the ConfigError as the error's source.
        let named = move |text: &str| rule(text).map_err(|reason| invalid(&setting, reason));
        named.parse_ref(cmd, arg, value)
    }
}

fn setting_name(arg: &Arg) -> String {
    match (arg.get_env(), arg.get_long()) {
        (Some(variable), _) => variable.to_string_lossy().into_owned(),
        (None, Some(long)) => format!("--{long}"),
        (None, None) => arg.get_id().to_string(),
    }
}

/// A group of settings at the defaults of its `#[arg]` attributes, the environment unread:
/// the base of the settings tools and tests build (e.g. [`StoreSettings::new`]), so that no
/// default is written twice. The unit tests check the defaults through it: they run beside a
/// stack whose settings are exported (`scripts/test`).
fn defaults<T: Args + FromArgMatches>() -> T {
    // ok: the defaults are constants of this crate, each parsed by the unit tests: a default
    // its own rule rejects is a bug, not an input to report.
    without_env(&[]).unwrap_or_else(|e| panic!("the default settings do not parse: {e}"))
}

/// A group of settings parsed from `args` alone, the environment unread.
fn without_env<T: Args + FromArgMatches>(args: &[&str]) -> Result<T, clap::Error> {
    let command = T::augment_args(Command::new("settings")).mut_args(|arg| arg.env(None));
    command
        .try_get_matches_from(std::iter::once("settings").chain(args.iter().copied()))
        .and_then(|matches| T::from_arg_matches(&matches))
}

/// A value that must never reach logs, errors or metrics: `Debug` and `Display` hide it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

// A field typed `std::vec::Vec<_>` or `std::option::Option<_>` (written out in full) holds what
// its rule made of ONE value, e.g. a comma separated list: clap gives the short forms `Vec` and
// `Option` another meaning (several occurrences, an optional argument).

// ---------------------------------------------------------------------------------------------
// Value rules more than one group uses
// ---------------------------------------------------------------------------------------------

fn non_empty(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        Err("is empty".to_string())
    } else {
        Ok(value.to_string())
    }
}

fn positive<T>(value: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + Default,
{
    match value.trim().parse::<T>() {
        Ok(number) if number > T::default() => Ok(number),
        _ => Err(format!("{value:?} is not a positive whole number")),
    }
}

fn whole_seconds(value: &str) -> Result<Duration, String> {
    positive(value).map(Duration::from_secs)
}

/// Parsing exactly what `run` parses, for the unit tests of every group.
#[cfg(test)]
mod testing {
    use clap::Parser;

    use super::{ConfigError, ServiceSettings};

    #[derive(Parser, Debug)]
    struct Run {
        #[command(flatten)]
        settings: ServiceSettings,
    }

    pub(super) fn try_parse(args: &[&str]) -> Result<ServiceSettings, clap::Error> {
        Run::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
            .map(|run| run.settings)
    }

    pub(super) fn parse(args: &[&str]) -> ServiceSettings {
        try_parse(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The setting error of command-line arguments that a rule rejects.
    pub(super) fn rejected(args: &[&str]) -> ConfigError {
        let error = try_parse(args).expect_err("the arguments are rejected");
        ConfigError::of_clap_error(&error)
            .unwrap_or_else(|| panic!("not a setting error: {error}"))
            .clone()
    }
}
