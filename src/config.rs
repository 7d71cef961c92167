//! Settings from environment variables and CLI flags (`CONTRACT.md` §2).
//!
//! Every setting is typed where clap reads it: each argument's value parser is a [`Rule`],
//! whose error is a [`ConfigError`] naming the argument's environment variable in one line
//! (`main` prints it before exiting 2). The few rules that involve several settings or a
//! required value (Cassandra credentials and TLS, the API settings `run` needs) are checked by
//! a small `validate` step after parsing.

use std::ffi::OsStr;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Arg, ArgAction, Args, Command};
use reqwest::Url;
use scylla::statement::Consistency;

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
// Kafka
// ---------------------------------------------------------------------------------------------

#[derive(Args, Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers.
    #[arg(
        long = "kafka-brokers",
        value_name = "KAFKA_BROKERS",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        value_parser = Rule(non_empty)
    )]
    pub brokers: String,
    /// Consumer group of the service.
    #[arg(
        long = "kafka-group-id",
        value_name = "KAFKA_GROUP_ID",
        env = "KAFKA_GROUP_ID",
        default_value = "hawkeye-customer-cache",
        value_parser = Rule(non_empty)
    )]
    pub group_id: String,
    /// Extra librdkafka settings, `key=value` pairs separated by `,` (SASL/TLS etc.).
    // The values are secrets: they carry SASL passwords.
    #[arg(
        long = "kafka-config",
        value_name = "KAFKA_CONFIG",
        env = "KAFKA_CONFIG",
        default_value = "",
        hide_env_values = true,
        value_parser = Rule(kafka_config)
    )]
    pub extra: std::vec::Vec<(String, Secret)>,
    #[command(flatten)]
    pub topics: Topics,
}

impl KafkaSettings {
    /// Settings without extra librdkafka settings (tools and tests).
    pub fn new(brokers: impl Into<String>, group_id: impl Into<String>, topics: Topics) -> Self {
        KafkaSettings {
            brokers: brokers.into(),
            group_id: group_id.into(),
            extra: Vec::new(),
            topics,
        }
    }
}

/// Names of every topic the service reads or writes.
#[derive(Args, Debug, Clone)]
pub struct Topics {
    /// Device profile events in: one topic or several, comma separated.
    #[arg(
        long = "topic-profile-updates",
        value_name = "TOPIC_PROFILE_UPDATES",
        env = "TOPIC_PROFILE_UPDATES",
        default_value = "device.profile.updates",
        value_parser = Rule(topic_list)
    )]
    pub profile_updates: std::vec::Vec<String>,
    /// Rejected device profile events out.
    #[arg(
        long = "topic-profile-dlq",
        value_name = "TOPIC_PROFILE_DLQ",
        env = "TOPIC_PROFILE_DLQ",
        default_value = "device.profile.updates.dlq",
        value_parser = Rule(topic_name)
    )]
    pub profile_dlq: String,
    /// Refresh triggers in.
    #[arg(
        long = "topic-refresh",
        value_name = "TOPIC_REFRESH",
        env = "TOPIC_REFRESH",
        default_value = "hawkeye.customer.cache.refresh",
        value_parser = Rule(topic_name)
    )]
    pub refresh: String,
    /// Cache requests in.
    #[arg(
        long = "topic-get",
        value_name = "TOPIC_GET",
        env = "TOPIC_GET",
        default_value = "hawkeye.customer.cache.get",
        value_parser = Rule(topic_name)
    )]
    pub get: String,
    /// Default reply topic.
    #[arg(
        long = "topic-reply",
        value_name = "TOPIC_REPLY",
        env = "TOPIC_REPLY",
        default_value = "hawkeye.customer.cache.reply",
        value_parser = Rule(topic_name)
    )]
    pub reply: String,
    /// Operational events out.
    #[arg(
        long = "topic-notifications",
        value_name = "TOPIC_NOTIFICATIONS",
        env = "TOPIC_NOTIFICATIONS",
        default_value = "hawkeye.customer.cache.notifications",
        value_parser = Rule(topic_name)
    )]
    pub notifications: String,
}

/// Kafka's own rule for topic names: 1 to 249 characters of `[a-zA-Z0-9._-]`.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn topic_name(value: &str) -> Result<String, String> {
    let name = value.trim();
    if is_valid_topic_name(name) {
        Ok(name.to_string())
    } else {
        Err(format!(
            "{value:?} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
        ))
    }
}

/// One topic or several, comma separated (as Kafka Connect's `topics`); the first one named
/// comes first, a repeated one is dropped.
fn topic_list(value: &str) -> Result<Vec<String>, String> {
    let mut topics: Vec<String> = Vec::new();
    for entry in value.split(',').filter(|entry| !entry.trim().is_empty()) {
        let topic = topic_name(entry)?;
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    if topics.is_empty() {
        return Err("is empty; give a topic or several, comma separated".to_string());
    }
    Ok(topics)
}

fn kafka_config(raw: &str) -> Result<Vec<(String, Secret)>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .enumerate()
        .map(|(position, pair)| match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), Secret::new(value.trim())))
            }
            // Nothing of the entry is shown: it may be the tail of a password holding a ','.
            _ => Err(format!(
                "expected key=value pairs separated by ',' (values cannot contain ','), \
                 entry {} has no key=",
                position + 1
            )),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Stores
// ---------------------------------------------------------------------------------------------

const DEFAULT_DEVICE_KEY_PREFIX: &str = "device:";
const DEFAULT_KEYSPACE: &str = "device_db";
const DEFAULT_ENVIRONMENT_NAME: &str = "dev";
const DEFAULT_REPLICATION: &str = "{'class': 'SimpleStrategy', 'replication_factor': 1}";

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// `redis://` or `rediss://` URL, with password if needed; several, comma separated, are
    /// seed nodes of a Redis Cluster (a cluster is detected either way).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0",
        hide_env_values = true,
        value_parser = Rule(redis_url)
    )]
    pub redis_url: Secret,
    /// Prefix of the per-device Redis hash.
    #[arg(long, env = "REDIS_DEVICE_KEY_PREFIX", default_value = DEFAULT_DEVICE_KEY_PREFIX)]
    pub redis_device_key_prefix: String,
    /// Comma separated Cassandra contact points.
    #[arg(
        long,
        env = "CASSANDRA_NODES",
        default_value = "127.0.0.1:9042",
        value_parser = Rule(cassandra_nodes)
    )]
    pub cassandra_nodes: std::vec::Vec<String>,
    /// Keyspace of the `device_profile` table.
    #[arg(
        long,
        env = "CASSANDRA_KEYSPACE",
        default_value = DEFAULT_KEYSPACE,
        value_parser = Rule(cql_identifier)
    )]
    pub cassandra_keyspace: String,
    /// Create the keyspace (with CASSANDRA_REPLICATION) when it is missing.
    #[arg(
        long,
        env = "CASSANDRA_CREATE_KEYSPACE",
        default_value = "true",
        action = ArgAction::Set,
        value_parser = Rule(boolean)
    )]
    pub cassandra_create_keyspace: bool,
    /// Add the columns the service writes to an existing `device_profile` that lacks them
    /// (`ALTER TABLE … ADD`; nothing is dropped or changed). With false, a missing column stops
    /// start-up with the statement to run.
    #[arg(
        long,
        env = "CASSANDRA_ALTER_TABLE",
        default_value = "true",
        action = ArgAction::Set,
        value_parser = Rule(boolean)
    )]
    pub cassandra_alter_table: bool,
    /// Plain-text auth user name (auth is used when set).
    #[arg(long, env = "CASSANDRA_USERNAME", default_value = "")]
    pub cassandra_username: String,
    #[arg(
        long,
        env = "CASSANDRA_PASSWORD",
        default_value = "",
        hide_env_values = true,
        value_parser = Rule(secret)
    )]
    pub cassandra_password: Secret,
    /// TLS to Cassandra (client-to-node encryption): the node's certificate must chain to
    /// `CASSANDRA_TLS_CA_FILE` (else the system's roots) and name the node's IP address.
    #[arg(
        long,
        env = "CASSANDRA_TLS",
        default_value = "false",
        action = ArgAction::Set,
        value_parser = Rule(boolean)
    )]
    pub cassandra_tls: bool,
    /// PEM file of the CA certificates the Cassandra nodes' certificates chain to.
    #[arg(
        long,
        env = "CASSANDRA_TLS_CA_FILE",
        default_value = "",
        value_parser = Rule(optional_path)
    )]
    pub cassandra_tls_ca_file: std::option::Option<PathBuf>,
    /// Consistency level of every Cassandra request (see README, "Scaling out").
    #[arg(
        long,
        env = "CASSANDRA_CONSISTENCY",
        default_value = "LOCAL_QUORUM",
        value_parser = Rule(consistency)
    )]
    pub cassandra_consistency: Consistency,
    /// Datacenter whose nodes are used (token-aware routing within it, no failover to others)
    /// [default: any node, token-aware].
    #[arg(long, env = "CASSANDRA_LOCAL_DC", value_parser = Rule(non_empty))]
    pub cassandra_local_dc: Option<String>,
    /// Cassandra requests in flight at once per batch of events (each an unlogged batch of up
    /// to 8 devices of the same replicas, or one statement); 256 measured best against one
    /// node of the local stack when each request carried one device (BENCHMARKS.md).
    #[arg(
        long,
        env = "CASSANDRA_WRITE_CONCURRENCY",
        default_value = "256",
        value_parser = Rule(positive::<usize>)
    )]
    pub cassandra_write_concurrency: usize,
    /// Replication map of the keyspace when the service creates it, as CQL.
    #[arg(
        long,
        env = "CASSANDRA_REPLICATION",
        default_value = DEFAULT_REPLICATION,
        value_parser = Rule(replication_map)
    )]
    pub cassandra_replication: String,
    /// Prefix of every Redis key of the customer cache.
    #[arg(
        long,
        env = "ENVIRONMENT_NAME",
        default_value = DEFAULT_ENVIRONMENT_NAME,
        value_parser = Rule(non_empty)
    )]
    pub environment_name: String,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub redis_url: Secret,
    pub redis_device_key_prefix: String,
    pub cassandra_nodes: Vec<String>,
    pub cassandra_keyspace: String,
    pub cassandra_create_keyspace: bool,
    pub cassandra_alter_table: bool,
    pub cassandra_credentials: Option<(String, Secret)>,
    pub cassandra_tls: Option<CassandraTls>,
    pub cassandra_consistency: Consistency,
    pub cassandra_local_dc: Option<String>,
    pub cassandra_write_concurrency: usize,
    pub cassandra_replication: String,
    pub environment_name: String,
}

impl StoreSettings {
    /// The stores at `redis_url` and `cassandra_nodes` with every other setting at its default:
    /// no Cassandra auth or TLS (tools and tests).
    pub fn new(redis_url: impl Into<String>, cassandra_nodes: Vec<String>) -> Self {
        StoreSettings {
            redis_url: Secret::new(redis_url),
            redis_device_key_prefix: DEFAULT_DEVICE_KEY_PREFIX.to_string(),
            cassandra_nodes,
            cassandra_keyspace: DEFAULT_KEYSPACE.to_string(),
            cassandra_create_keyspace: true,
            cassandra_alter_table: true,
            cassandra_credentials: None,
            cassandra_tls: None,
            cassandra_consistency: Consistency::LocalQuorum,
            cassandra_local_dc: None,
            cassandra_write_concurrency: 256,
            cassandra_replication: DEFAULT_REPLICATION.to_string(),
            environment_name: DEFAULT_ENVIRONMENT_NAME.to_string(),
        }
    }
}

/// The write levels (`SERIAL`/`LOCAL_SERIAL` are for reads of lightweight transactions, which
/// the service does not use).
fn consistency(value: &str) -> Result<Consistency, String> {
    let level = match value.trim().to_ascii_uppercase().as_str() {
        "ANY" => Consistency::Any,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => {
            return Err(format!(
                "{value:?} is not a consistency level (ANY, ONE, TWO, THREE, QUORUM, ALL, \
                 LOCAL_QUORUM, EACH_QUORUM, LOCAL_ONE)"
            ))
        }
    };
    Ok(level)
}

/// A CQL map literal naming a replication class, e.g.
/// `{'class': 'NetworkTopologyStrategy', 'dc1': 3}`. It goes into `CREATE KEYSPACE` as it is,
/// so only the characters such a map needs are allowed.
fn replication_map(value: &str) -> Result<String, String> {
    let map = value.trim();
    let allowed = |c: char| c.is_ascii_alphanumeric() || " {}':,_.-".contains(c);
    if map.starts_with('{')
        && map.ends_with('}')
        && map.contains("'class'")
        && map.chars().all(allowed)
    {
        Ok(map.to_string())
    } else {
        Err(format!(
            "{value:?} is not a CQL replication map such as {DEFAULT_REPLICATION}"
        ))
    }
}

/// TLS to Cassandra; the CA file was readable PEM at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct CassandraTls {
    /// `None`: the system's root certificates.
    pub ca_file: Option<PathBuf>,
}

impl StoreArgs {
    /// Checks the rules between settings: credentials and TLS.
    pub fn validate(self) -> Result<StoreSettings, ConfigError> {
        Ok(StoreSettings {
            cassandra_credentials: cassandra_credentials(
                self.cassandra_username,
                self.cassandra_password,
            )?,
            cassandra_tls: cassandra_tls(self.cassandra_tls, self.cassandra_tls_ca_file)?,
            redis_url: self.redis_url,
            redis_device_key_prefix: self.redis_device_key_prefix,
            cassandra_nodes: self.cassandra_nodes,
            cassandra_keyspace: self.cassandra_keyspace,
            cassandra_create_keyspace: self.cassandra_create_keyspace,
            cassandra_alter_table: self.cassandra_alter_table,
            cassandra_consistency: self.cassandra_consistency,
            cassandra_local_dc: self.cassandra_local_dc,
            cassandra_write_concurrency: self.cassandra_write_concurrency,
            cassandra_replication: self.cassandra_replication,
            environment_name: self.environment_name,
        })
    }
}

fn redis_url(value: &str) -> Result<Secret, String> {
    // The URLs may carry a password, so the error shows only what is wrong with them.
    let urls: Vec<&str> = value.split(',').map(str::trim).collect();
    for (position, text) in urls.iter().enumerate() {
        let url =
            Url::parse(text).map_err(|e| format!("URL {} is not a URL ({e})", position + 1))?;
        match url.scheme() {
            "redis" | "rediss" if url.host_str().is_some() => {}
            "redis" | "rediss" => return Err(format!("URL {} has no host", position + 1)),
            other => {
                return Err(format!(
                    "URL {}: scheme must be redis:// or rediss://, got {other}://",
                    position + 1
                ))
            }
        }
    }
    Ok(Secret::new(urls.join(",")))
}

fn cassandra_nodes(value: &str) -> Result<Vec<String>, String> {
    let nodes: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
        .map(str::to_string)
        .collect();
    if nodes.is_empty() {
        return Err("is empty; give host:port[,host:port]".to_string());
    }
    for node in &nodes {
        let port_ok = node
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!("{node:?} is not host:port"));
        }
    }
    Ok(nodes)
}

fn cassandra_credentials(
    username: String,
    password: Secret,
) -> Result<Option<(String, Secret)>, ConfigError> {
    match (username.is_empty(), password.is_empty()) {
        (true, true) => Ok(None),
        (false, _) => Ok(Some((username, password))),
        (true, false) => Err(invalid(
            "CASSANDRA_USERNAME",
            "is empty while CASSANDRA_PASSWORD is set",
        )),
    }
}

fn cassandra_tls(
    enabled: bool,
    ca_file: Option<PathBuf>,
) -> Result<Option<CassandraTls>, ConfigError> {
    match (enabled, ca_file) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(invalid(
            "CASSANDRA_TLS_CA_FILE",
            "is set while CASSANDRA_TLS is false",
        )),
        (true, None) => Ok(Some(CassandraTls { ca_file: None })),
        (true, Some(ca_file)) => {
            let shown = ca_file.display();
            let pem = std::fs::read(&ca_file).map_err(|e| {
                invalid("CASSANDRA_TLS_CA_FILE", format!("cannot read {shown}: {e}"))
            })?;
            match openssl::x509::X509::stack_from_pem(&pem) {
                Ok(certificates) if !certificates.is_empty() => Ok(Some(CassandraTls {
                    ca_file: Some(ca_file),
                })),
                _ => Err(invalid(
                    "CASSANDRA_TLS_CA_FILE",
                    format!("{shown} holds no PEM certificate"),
                )),
            }
        }
    }
}

/// Unquoted CQL identifiers: a letter then up to 47 letters, digits or `_`.
fn cql_identifier(value: &str) -> Result<String, String> {
    let mut chars = value.chars();
    let valid = value.len() <= 48
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(format!(
            "{value:?} is not a keyspace name (a letter, then letters, digits or _; at most 48)"
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The customer cache: APIs, refresh and serving
// ---------------------------------------------------------------------------------------------

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

fn whole_seconds(value: &str) -> Result<Duration, String> {
    positive(value).map(Duration::from_secs)
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

#[derive(Args, Debug, Clone)]
pub struct HttpSettings {
    /// Address of the `/health`, `/ready` and `/metrics` endpoints.
    #[arg(
        long = "http-addr",
        value_name = "HTTP_ADDR",
        env = "HTTP_ADDR",
        default_value = "127.0.0.1:9898",
        value_parser = Rule(socket_address)
    )]
    pub addr: SocketAddr,
}

fn socket_address(value: &str) -> Result<SocketAddr, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not an address such as 127.0.0.1:9898"))
}

// ---------------------------------------------------------------------------------------------
// Shared value rules
// ---------------------------------------------------------------------------------------------

fn non_empty(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        Err("is empty".to_string())
    } else {
        Ok(value.to_string())
    }
}

fn non_empty_secret(value: &str) -> Result<Secret, String> {
    non_empty(value).map(Secret::new)
}

fn secret(value: &str) -> Result<Secret, String> {
    Ok(Secret::new(value))
}

/// An empty value is no path (the setting is off).
fn optional_path(value: &str) -> Result<Option<PathBuf>, String> {
    let value = value.trim();
    Ok((!value.is_empty()).then(|| PathBuf::from(value)))
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

fn boolean(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{value:?} is not true or false")),
    }
}

/// Short topic names for the unit tests of the clients made from settings.
#[cfg(test)]
impl Topics {
    pub(crate) fn example() -> Self {
        Topics {
            profile_updates: vec!["t".into()],
            profile_dlq: "t.dlq".into(),
            refresh: "r".into(),
            get: "g".into(),
            reply: "re".into(),
            notifications: "n".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct All {
        #[command(flatten)]
        kafka: KafkaSettings,
        #[command(flatten)]
        stores: StoreArgs,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        refresh: RefreshSettings,
        #[command(flatten)]
        serve: ServeSettings,
        #[command(flatten)]
        http: HttpSettings,
    }

    fn try_parse(args: &[&str]) -> Result<All, clap::Error> {
        All::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
    }

    fn parse(args: &[&str]) -> All {
        try_parse(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The setting error of command-line arguments that a rule rejects.
    fn rejected(args: &[&str]) -> ConfigError {
        let error = try_parse(args).expect_err("the arguments are rejected");
        ConfigError::of_clap_error(&error)
            .unwrap_or_else(|| panic!("not a setting error: {error}"))
            .clone()
    }

    #[test]
    fn defaults_are_the_contract_defaults() {
        let all = parse(&[]);
        assert_eq!(all.kafka.topics.profile_updates, ["device.profile.updates"]);
        assert_eq!(all.kafka.topics.profile_dlq, "device.profile.updates.dlq");
        assert_eq!(all.refresh.interval, Duration::from_secs(14400));
        assert_eq!(all.refresh.bruin_max_error_ratio, 0.05);
        // The default statuses carry an EN DASH (U+2013), not a hyphen.
        assert!(all
            .refresh
            .monitorable_statuses
            .contains(&"Active \u{2013} Gold Monitoring".to_string()));
        assert_eq!(all.serve.reply_max_bytes, 900_000);
        assert_eq!(all.http.addr.to_string(), "127.0.0.1:9898");
        let stores = all.stores.validate().unwrap();
        assert_eq!(stores.cassandra_keyspace, "device_db");
        assert!(stores.cassandra_create_keyspace);
        assert_eq!(stores.cassandra_credentials, None);
    }

    #[test]
    fn the_constructor_has_the_defaults_of_the_command_line() {
        let parsed = parse(&[]).stores.validate().unwrap();
        let built = StoreSettings::new(parsed.redis_url.expose(), parsed.cassandra_nodes.clone());
        assert_eq!(format!("{built:?}"), format!("{parsed:?}"));
    }

    #[test]
    fn a_rejected_value_names_the_variable_in_one_line() {
        let err = rejected(&["--kafka-brokers", " "]);
        assert_eq!(err.to_string(), "invalid setting KAFKA_BROKERS: is empty");
        assert_eq!(
            rejected(&["--refresh-interval-secs", "abc"]).to_string(),
            "invalid setting REFRESH_INTERVAL_SECS: \"abc\" is not a positive whole number"
        );
    }

    #[test]
    fn kafka_config_pairs_are_parsed_and_hidden() {
        let all = parse(&[
            "--kafka-config",
            "security.protocol=SASL_SSL, sasl.password=hunter2",
        ]);
        assert_eq!(all.kafka.extra[1].0, "sasl.password");
        assert_eq!(all.kafka.extra[1].1.expose(), "hunter2");
        assert!(!format!("{:?}", all.kafka).contains("hunter2"));
    }

    #[test]
    fn kafka_config_without_equals_is_rejected_without_echoing_the_value() {
        let err = rejected(&["--kafka-config", "sasl.password"]);
        assert_eq!(err.setting, "KAFKA_CONFIG");
        // A password with a ',' splits into an entry that is the password's tail.
        let err = rejected(&["--kafka-config", "sasl.password=hun,ter2-tail"]);
        assert!(!err.to_string().contains("ter2"), "{err}");
    }

    #[test]
    fn profile_topics_are_a_list_without_repeats() {
        let all = parse(&["--topic-profile-updates", "a.updates, b.updates,a.updates,"]);
        assert_eq!(all.kafka.topics.profile_updates, ["a.updates", "b.updates"]);
        for bad in [" , ", "a.updates,bad topic"] {
            let err = rejected(&["--topic-profile-updates", bad]);
            assert_eq!(err.setting, "TOPIC_PROFILE_UPDATES", "{bad:?}");
        }
    }

    #[test]
    fn redis_url_errors_never_show_the_password() {
        let err = rejected(&["--redis-url", "http://user:hunter2@host/0"]);
        assert_eq!(err.setting, "REDIS_URL");
        assert!(!err.to_string().contains("hunter2"));
        let err = rejected(&["--redis-url", "redis://:hunter2@a:1, redis//:hunter2@b:2"]);
        assert_eq!(err.setting, "REDIS_URL");
        assert!(err.to_string().contains("URL 2"), "{err}");
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn numbers_must_be_positive() {
        let err = rejected(&["--refresh-interval-secs", "0"]);
        assert_eq!(err.setting, "REFRESH_INTERVAL_SECS");
        let err = rejected(&["--bruin-max-error-ratio", "1.5"]);
        assert_eq!(err.setting, "BRUIN_MAX_ERROR_RATIO");
        let err = rejected(&["--reply-max-bytes", "100"]);
        assert_eq!(
            err.to_string(),
            "invalid setting REPLY_MAX_BYTES: 100 is below the minimum of 4096"
        );
    }

    #[test]
    fn statuses_must_be_a_json_list() {
        let err = rejected(&["--monitorable-management-statuses", "Pending"]);
        assert_eq!(err.setting, "MONITORABLE_MANAGEMENT_STATUSES");
    }

    #[test]
    fn timezone_address_and_topics_are_checked() {
        assert_eq!(rejected(&["--timezone", "Mars/Base"]).setting, "TIMEZONE");
        assert_eq!(rejected(&["--http-addr", "x"]).setting, "HTTP_ADDR");
        assert_eq!(rejected(&["--topic-get", "bad topic"]).setting, "TOPIC_GET");
    }

    #[test]
    fn cassandra_nodes_need_ports_and_keyspace_must_be_an_identifier() {
        let err = rejected(&["--cassandra-nodes", "db1"]);
        assert_eq!(err.setting, "CASSANDRA_NODES");
        let err = rejected(&["--cassandra-keyspace", "drop table"]);
        assert_eq!(err.setting, "CASSANDRA_KEYSPACE");
    }

    #[test]
    fn cassandra_cluster_settings_are_checked() {
        let stores = |args: &[&str]| parse(args).stores.validate().unwrap();
        let defaults = stores(&[]);
        assert_eq!(defaults.cassandra_consistency, Consistency::LocalQuorum);
        assert_eq!(defaults.cassandra_local_dc, None);
        assert_eq!(defaults.cassandra_replication, DEFAULT_REPLICATION);
        let cluster = stores(&[
            "--cassandra-consistency",
            "quorum",
            "--cassandra-local-dc",
            "dc1",
            "--cassandra-replication",
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3}",
        ]);
        assert_eq!(cluster.cassandra_consistency, Consistency::Quorum);
        assert_eq!(cluster.cassandra_local_dc.as_deref(), Some("dc1"));
        let err = rejected(&["--cassandra-consistency", "SERIAL"]);
        assert_eq!(err.setting, "CASSANDRA_CONSISTENCY");
        assert_eq!(defaults.cassandra_write_concurrency, 256);
        let err = rejected(&["--cassandra-write-concurrency", "0"]);
        assert_eq!(err.setting, "CASSANDRA_WRITE_CONCURRENCY");
        for bad in [
            "SimpleStrategy",
            "{'class': 'X'}; DROP KEYSPACE k",
            "{'rf': 1}",
        ] {
            let err = rejected(&["--cassandra-replication", bad]);
            assert_eq!(err.setting, "CASSANDRA_REPLICATION", "{bad}");
        }
    }

    #[test]
    fn cassandra_username_is_needed_with_a_password() {
        let stores = |args: &[&str]| parse(args).stores.validate();
        let err = stores(&["--cassandra-password", "hunter2"]).unwrap_err();
        assert_eq!(err.setting, "CASSANDRA_USERNAME");
        let settings = stores(&[
            "--cassandra-username",
            "u",
            "--cassandra-password",
            "hunter2",
        ])
        .unwrap();
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn cassandra_tls_needs_a_readable_pem_ca_file() {
        let stores = |args: &[&str]| parse(args).stores.validate();
        assert_eq!(stores(&[]).unwrap().cassandra_tls, None);
        assert_eq!(
            stores(&["--cassandra-tls", "true"]).unwrap().cassandra_tls,
            Some(CassandraTls { ca_file: None })
        );
        assert_eq!(
            rejected(&["--cassandra-tls", "maybe"]).setting,
            "CASSANDRA_TLS"
        );
        let without_tls = stores(&["--cassandra-tls-ca-file", "/ca.pem"]).unwrap_err();
        assert_eq!(without_tls.setting, "CASSANDRA_TLS_CA_FILE");

        let missing = "/nonexistent/ca.pem";
        let err =
            stores(&["--cassandra-tls", "1", "--cassandra-tls-ca-file", missing]).unwrap_err();
        assert_eq!(err.setting, "CASSANDRA_TLS_CA_FILE");
        assert!(
            err.to_string().contains("cannot read /nonexistent/ca.pem"),
            "{err}"
        );

        let not_pem = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(not_pem.path(), "not a certificate").unwrap();
        let path = not_pem.path().to_string_lossy().to_string();
        let err = stores(&["--cassandra-tls", "1", "--cassandra-tls-ca-file", &path]).unwrap_err();
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
    }

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
}
