//! Settings from environment variables and CLI flags (`CONTRACT.md` §2).
//!
//! clap collects every setting as raw text; the `validate` functions here turn that text into
//! typed settings once, at start-up. A bad value becomes a [`ConfigError`] that names the
//! setting in one line, which `main` prints before exiting non-zero.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use reqwest::Url;

/// A setting that is missing or malformed. Displays as one line naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
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

// ---------------------------------------------------------------------------------------------
// Kafka
// ---------------------------------------------------------------------------------------------

#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Consumer group of the service.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "hawkeye-customer-cache")]
    pub kafka_group_id: String,
    /// Extra librdkafka settings, `key=value` pairs separated by `,` (SASL/TLS etc.).
    #[arg(long, env = "KAFKA_CONFIG", default_value = "", hide_env_values = true)]
    pub kafka_config: String,
    #[command(flatten)]
    pub topics: TopicArgs,
}

#[derive(Args, Debug, Clone)]
pub struct TopicArgs {
    /// Device profile events in.
    #[arg(
        long,
        env = "TOPIC_PROFILE_UPDATES",
        default_value = "device.profile.updates"
    )]
    pub topic_profile_updates: String,
    /// Rejected device profile events out.
    #[arg(
        long,
        env = "TOPIC_PROFILE_DLQ",
        default_value = "device.profile.updates.dlq"
    )]
    pub topic_profile_dlq: String,
    /// Refresh triggers in.
    #[arg(
        long,
        env = "TOPIC_REFRESH",
        default_value = "hawkeye.customer.cache.refresh"
    )]
    pub topic_refresh: String,
    /// Cache requests in.
    #[arg(long, env = "TOPIC_GET", default_value = "hawkeye.customer.cache.get")]
    pub topic_get: String,
    /// Default reply topic.
    #[arg(
        long,
        env = "TOPIC_REPLY",
        default_value = "hawkeye.customer.cache.reply"
    )]
    pub topic_reply: String,
    /// Operational events out.
    #[arg(
        long,
        env = "TOPIC_NOTIFICATIONS",
        default_value = "hawkeye.customer.cache.notifications"
    )]
    pub topic_notifications: String,
}

/// Names of every topic the service reads or writes.
#[derive(Debug, Clone)]
pub struct Topics {
    pub profile_updates: String,
    pub profile_dlq: String,
    pub refresh: String,
    pub get: String,
    pub reply: String,
    pub notifications: String,
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_id: String,
    /// Extra librdkafka settings; values are secret because they carry SASL passwords.
    pub extra: Vec<(String, Secret)>,
    pub topics: Topics,
}

impl KafkaArgs {
    pub fn validate(&self) -> Result<KafkaSettings, ConfigError> {
        Ok(KafkaSettings {
            brokers: non_empty("KAFKA_BROKERS", &self.kafka_brokers)?,
            group_id: non_empty("KAFKA_GROUP_ID", &self.kafka_group_id)?,
            extra: parse_kafka_config(&self.kafka_config)?,
            topics: self.topics.validate()?,
        })
    }
}

impl TopicArgs {
    fn validate(&self) -> Result<Topics, ConfigError> {
        Ok(Topics {
            profile_updates: topic_name("TOPIC_PROFILE_UPDATES", &self.topic_profile_updates)?,
            profile_dlq: topic_name("TOPIC_PROFILE_DLQ", &self.topic_profile_dlq)?,
            refresh: topic_name("TOPIC_REFRESH", &self.topic_refresh)?,
            get: topic_name("TOPIC_GET", &self.topic_get)?,
            reply: topic_name("TOPIC_REPLY", &self.topic_reply)?,
            notifications: topic_name("TOPIC_NOTIFICATIONS", &self.topic_notifications)?,
        })
    }
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

fn topic_name(setting: &'static str, value: &str) -> Result<String, ConfigError> {
    let name = value.trim();
    if is_valid_topic_name(name) {
        Ok(name.to_string())
    } else {
        Err(invalid(
            setting,
            format!("{value:?} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"),
        ))
    }
}

fn parse_kafka_config(raw: &str) -> Result<Vec<(String, Secret)>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .enumerate()
        .map(|(position, pair)| match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), Secret::new(value.trim())))
            }
            // Nothing of the entry is shown: it may be the tail of a password holding a ','.
            _ => Err(invalid(
                "KAFKA_CONFIG",
                format!(
                    "expected key=value pairs separated by ',' (values cannot contain ','), \
                     entry {} has no key=",
                    position + 1
                ),
            )),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Stores
// ---------------------------------------------------------------------------------------------

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// `redis://` or `rediss://` URL, with password if needed.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0",
        hide_env_values = true
    )]
    pub redis_url: String,
    /// Prefix of the per-device Redis hash.
    #[arg(long, env = "REDIS_DEVICE_KEY_PREFIX", default_value = "device:")]
    pub redis_device_key_prefix: String,
    /// Comma separated Cassandra contact points.
    #[arg(long, env = "CASSANDRA_NODES", default_value = "127.0.0.1:9042")]
    pub cassandra_nodes: String,
    /// Keyspace of the `device_profile` table.
    #[arg(long, env = "CASSANDRA_KEYSPACE", default_value = "device_db")]
    pub cassandra_keyspace: String,
    /// Create the keyspace (SimpleStrategy RF 1) when it is missing.
    #[arg(long, env = "CASSANDRA_CREATE_KEYSPACE", default_value = "true")]
    pub cassandra_create_keyspace: String,
    /// Plain-text auth user name (auth is used when set).
    #[arg(long, env = "CASSANDRA_USERNAME", default_value = "")]
    pub cassandra_username: String,
    #[arg(
        long,
        env = "CASSANDRA_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub cassandra_password: String,
    /// TLS to Cassandra (client-to-node encryption): the node's certificate must chain to
    /// `CASSANDRA_TLS_CA_FILE` (else the system's roots) and name the node's IP address.
    #[arg(long, env = "CASSANDRA_TLS", default_value = "false")]
    pub cassandra_tls: String,
    /// PEM file of the CA certificates the Cassandra nodes' certificates chain to.
    #[arg(long, env = "CASSANDRA_TLS_CA_FILE", default_value = "")]
    pub cassandra_tls_ca_file: String,
    /// Prefix of every Redis key of the customer cache.
    #[arg(long, env = "ENVIRONMENT_NAME", default_value = "dev")]
    pub environment_name: String,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub redis_url: Secret,
    pub redis_device_key_prefix: String,
    pub cassandra_nodes: Vec<String>,
    pub cassandra_keyspace: String,
    pub cassandra_create_keyspace: bool,
    pub cassandra_credentials: Option<(String, Secret)>,
    pub cassandra_tls: Option<CassandraTls>,
    pub environment_name: String,
}

/// TLS to Cassandra; the CA file was readable PEM at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct CassandraTls {
    /// `None`: the system's root certificates.
    pub ca_file: Option<PathBuf>,
}

impl StoreArgs {
    pub fn validate(&self) -> Result<StoreSettings, ConfigError> {
        Ok(StoreSettings {
            redis_url: redis_url(&self.redis_url)?,
            redis_device_key_prefix: self.redis_device_key_prefix.clone(),
            cassandra_nodes: cassandra_nodes(&self.cassandra_nodes)?,
            cassandra_keyspace: cql_identifier("CASSANDRA_KEYSPACE", &self.cassandra_keyspace)?,
            cassandra_create_keyspace: boolean(
                "CASSANDRA_CREATE_KEYSPACE",
                &self.cassandra_create_keyspace,
            )?,
            cassandra_credentials: cassandra_credentials(
                &self.cassandra_username,
                &self.cassandra_password,
            )?,
            cassandra_tls: cassandra_tls(&self.cassandra_tls, &self.cassandra_tls_ca_file)?,
            environment_name: non_empty("ENVIRONMENT_NAME", &self.environment_name)?,
        })
    }
}

fn redis_url(value: &str) -> Result<Secret, ConfigError> {
    // The URL may carry a password, so the error shows only what is wrong with it.
    let url =
        Url::parse(value.trim()).map_err(|e| invalid("REDIS_URL", format!("not a URL ({e})")))?;
    match url.scheme() {
        "redis" | "rediss" if url.host_str().is_some() => Ok(Secret::new(value.trim())),
        "redis" | "rediss" => Err(invalid("REDIS_URL", "the URL has no host")),
        other => Err(invalid(
            "REDIS_URL",
            format!("scheme must be redis:// or rediss://, got {other}://"),
        )),
    }
}

fn cassandra_nodes(value: &str) -> Result<Vec<String>, ConfigError> {
    let nodes: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
        .map(str::to_string)
        .collect();
    if nodes.is_empty() {
        return Err(invalid(
            "CASSANDRA_NODES",
            "is empty; give host:port[,host:port]",
        ));
    }
    for node in &nodes {
        let port_ok = node
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(invalid(
                "CASSANDRA_NODES",
                format!("{node:?} is not host:port"),
            ));
        }
    }
    Ok(nodes)
}

fn cassandra_credentials(
    username: &str,
    password: &str,
) -> Result<Option<(String, Secret)>, ConfigError> {
    match (username.is_empty(), password.is_empty()) {
        (true, true) => Ok(None),
        (false, _) => Ok(Some((username.to_string(), Secret::new(password)))),
        (true, false) => Err(invalid(
            "CASSANDRA_USERNAME",
            "is empty while CASSANDRA_PASSWORD is set",
        )),
    }
}

fn cassandra_tls(enabled: &str, ca_file: &str) -> Result<Option<CassandraTls>, ConfigError> {
    let enabled = boolean("CASSANDRA_TLS", enabled)?;
    let ca_file = ca_file.trim();
    match (enabled, ca_file.is_empty()) {
        (false, true) => Ok(None),
        (false, false) => Err(invalid(
            "CASSANDRA_TLS_CA_FILE",
            "is set while CASSANDRA_TLS is false",
        )),
        (true, true) => Ok(Some(CassandraTls { ca_file: None })),
        (true, false) => {
            let pem = std::fs::read(ca_file).map_err(|e| {
                invalid(
                    "CASSANDRA_TLS_CA_FILE",
                    format!("cannot read {ca_file}: {e}"),
                )
            })?;
            match openssl::x509::X509::stack_from_pem(&pem) {
                Ok(certificates) if !certificates.is_empty() => Ok(Some(CassandraTls {
                    ca_file: Some(PathBuf::from(ca_file)),
                })),
                _ => Err(invalid(
                    "CASSANDRA_TLS_CA_FILE",
                    format!("{ca_file} holds no PEM certificate"),
                )),
            }
        }
    }
}

/// Unquoted CQL identifiers: a letter then up to 47 letters, digits or `_`.
fn cql_identifier(setting: &'static str, value: &str) -> Result<String, ConfigError> {
    let mut chars = value.chars();
    let valid = value.len() <= 48
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(invalid(
            setting,
            format!("{value:?} is not a keyspace name (a letter, then letters, digits or _; at most 48)"),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The customer cache: APIs, refresh and serving
// ---------------------------------------------------------------------------------------------

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Base URL of the Hawkeye/Ixia API.
    #[arg(long, env = "HAWKEYE_BASE_URL")]
    pub hawkeye_base_url: Option<String>,
    #[arg(long, env = "HAWKEYE_USERNAME")]
    pub hawkeye_username: Option<String>,
    #[arg(long, env = "HAWKEYE_PASSWORD", hide_env_values = true)]
    pub hawkeye_password: Option<String>,
    /// Base URL of the Bruin API.
    #[arg(long, env = "BRUIN_BASE_URL")]
    pub bruin_base_url: Option<String>,
    /// Base URL of Bruin's OAuth server.
    #[arg(long, env = "BRUIN_LOGIN_URL")]
    pub bruin_login_url: Option<String>,
    #[arg(long, env = "BRUIN_CLIENT_ID")]
    pub bruin_client_id: Option<String>,
    #[arg(long, env = "BRUIN_CLIENT_SECRET", hide_env_values = true)]
    pub bruin_client_secret: Option<String>,
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
    pub fn validate(&self) -> Result<(HawkeyeSettings, BruinSettings), ConfigError> {
        let hawkeye = HawkeyeSettings {
            base_url: http_url("HAWKEYE_BASE_URL", &self.hawkeye_base_url)?,
            username: required("HAWKEYE_USERNAME", &self.hawkeye_username)?,
            password: Secret::new(required("HAWKEYE_PASSWORD", &self.hawkeye_password)?),
        };
        let bruin = BruinSettings {
            base_url: http_url("BRUIN_BASE_URL", &self.bruin_base_url)?,
            login_url: http_url("BRUIN_LOGIN_URL", &self.bruin_login_url)?,
            client_id: required("BRUIN_CLIENT_ID", &self.bruin_client_id)?,
            client_secret: Secret::new(required("BRUIN_CLIENT_SECRET", &self.bruin_client_secret)?),
        };
        Ok((hawkeye, bruin))
    }
}

#[derive(Args, Debug, Clone)]
pub struct RefreshArgs {
    /// Period of the scheduled refresh, in seconds (one also runs at start-up).
    #[arg(long, env = "REFRESH_INTERVAL_SECS", default_value = "14400")]
    pub refresh_interval_secs: String,
    /// JSON list of the management statuses that make a device monitorable.
    #[arg(
        long,
        env = "MONITORABLE_MANAGEMENT_STATUSES",
        default_value = r#"["Pending","Active – Gold Monitoring","Active – Platinum Monitoring"]"#
    )]
    pub monitorable_management_statuses: String,
    /// Consecutive failed probe fetches before a refresh fails.
    #[arg(long, env = "HAWKEYE_MAX_ATTEMPTS", default_value = "10")]
    pub hawkeye_max_attempts: String,
    /// Bruin requests in flight at once.
    #[arg(long, env = "BRUIN_CONCURRENCY", default_value = "64")]
    pub bruin_concurrency: String,
    /// Share of devices that may fail with errors before a refresh fails.
    #[arg(long, env = "BRUIN_MAX_ERROR_RATIO", default_value = "0.05")]
    pub bruin_max_error_ratio: String,
}

#[derive(Debug, Clone)]
pub struct RefreshSettings {
    pub interval: Duration,
    pub monitorable_statuses: Vec<String>,
    pub hawkeye_max_attempts: u32,
    pub bruin_concurrency: usize,
    pub bruin_max_error_ratio: f64,
}

impl RefreshArgs {
    pub fn validate(&self) -> Result<RefreshSettings, ConfigError> {
        let statuses: Vec<String> = serde_json::from_str(&self.monitorable_management_statuses)
            .map_err(|e| {
                invalid(
                    "MONITORABLE_MANAGEMENT_STATUSES",
                    format!("not a JSON list of strings ({e})"),
                )
            })?;
        let ratio: f64 = self.bruin_max_error_ratio.trim().parse().map_err(|_| {
            invalid(
                "BRUIN_MAX_ERROR_RATIO",
                format!("{:?} is not a number", self.bruin_max_error_ratio),
            )
        })?;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(invalid(
                "BRUIN_MAX_ERROR_RATIO",
                format!("{ratio} is not between 0 and 1"),
            ));
        }
        Ok(RefreshSettings {
            interval: Duration::from_secs(positive(
                "REFRESH_INTERVAL_SECS",
                &self.refresh_interval_secs,
            )?),
            monitorable_statuses: statuses,
            hawkeye_max_attempts: positive("HAWKEYE_MAX_ATTEMPTS", &self.hawkeye_max_attempts)?,
            bruin_concurrency: positive("BRUIN_CONCURRENCY", &self.bruin_concurrency)?,
            bruin_max_error_ratio: ratio,
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// IANA zone used to read naive datetimes in `last_contact_filter`.
    #[arg(long, env = "TIMEZONE", default_value = "UTC")]
    pub timezone: String,
    /// Largest reply value, in bytes, before it is split into chunks.
    #[arg(long, env = "REPLY_MAX_BYTES", default_value = "900000")]
    pub reply_max_bytes: String,
}

#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub timezone: chrono_tz::Tz,
    pub reply_max_bytes: usize,
}

impl ServeArgs {
    pub fn validate(&self) -> Result<ServeSettings, ConfigError> {
        let timezone = self.timezone.trim().parse::<chrono_tz::Tz>().map_err(|_| {
            invalid(
                "TIMEZONE",
                format!(
                    "{:?} is not an IANA time zone such as UTC or Europe/Madrid",
                    self.timezone
                ),
            )
        })?;
        let reply_max_bytes: usize = positive("REPLY_MAX_BYTES", &self.reply_max_bytes)?;
        // A chunk must at least hold the reply envelope and one entry of a realistic size.
        if reply_max_bytes < 4096 {
            return Err(invalid(
                "REPLY_MAX_BYTES",
                format!("{reply_max_bytes} is below the minimum of 4096"),
            ));
        }
        Ok(ServeSettings {
            timezone,
            reply_max_bytes,
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// Address of the `/health`, `/ready` and `/metrics` endpoints.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9898")]
    pub http_addr: String,
}

impl HttpArgs {
    pub fn validate(&self) -> Result<SocketAddr, ConfigError> {
        self.http_addr.trim().parse().map_err(|_| {
            invalid(
                "HTTP_ADDR",
                format!(
                    "{:?} is not an address such as 127.0.0.1:9898",
                    self.http_addr
                ),
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Shared value rules
// ---------------------------------------------------------------------------------------------

fn non_empty(setting: &'static str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        Err(invalid(setting, "is empty"))
    } else {
        Ok(value.to_string())
    }
}

fn required(setting: &'static str, value: &Option<String>) -> Result<String, ConfigError> {
    match value {
        Some(value) => non_empty(setting, value),
        None => Err(invalid(setting, "is not set")),
    }
}

fn http_url(setting: &'static str, value: &Option<String>) -> Result<Url, ConfigError> {
    let text = required(setting, value)?;
    let url =
        Url::parse(&text).map_err(|e| invalid(setting, format!("{text:?} is not a URL ({e})")))?;
    if matches!(url.scheme(), "http" | "https") {
        Ok(url)
    } else {
        Err(invalid(setting, format!("{text:?} is not an http(s) URL")))
    }
}

fn positive<T>(setting: &'static str, value: &str) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + Default,
{
    match value.trim().parse::<T>() {
        Ok(number) if number > T::default() => Ok(number),
        _ => Err(invalid(
            setting,
            format!("{value:?} is not a positive whole number"),
        )),
    }
}

fn boolean(setting: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(setting, format!("{value:?} is not true or false"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct All {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        stores: StoreArgs,
        #[command(flatten)]
        refresh: RefreshArgs,
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        http: HttpArgs,
    }

    fn parse(args: &[&str]) -> All {
        All::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn defaults_are_the_contract_defaults() {
        let all = parse(&[]);
        let kafka = all.kafka.validate().unwrap();
        assert_eq!(kafka.topics.profile_dlq, "device.profile.updates.dlq");
        let refresh = all.refresh.validate().unwrap();
        assert_eq!(refresh.interval, Duration::from_secs(14400));
        // The default statuses carry an EN DASH (U+2013), not a hyphen.
        assert!(refresh
            .monitorable_statuses
            .contains(&"Active \u{2013} Gold Monitoring".to_string()));
        assert_eq!(all.serve.validate().unwrap().reply_max_bytes, 900_000);
        assert_eq!(
            all.stores.validate().unwrap().cassandra_keyspace,
            "device_db"
        );
    }

    #[test]
    fn empty_brokers_name_the_setting() {
        let err = parse(&["--kafka-brokers", " "])
            .kafka
            .validate()
            .unwrap_err();
        assert_eq!(err.to_string(), "invalid setting KAFKA_BROKERS: is empty");
    }

    #[test]
    fn kafka_config_pairs_are_parsed_and_hidden() {
        let all = parse(&[
            "--kafka-config",
            "security.protocol=SASL_SSL, sasl.password=hunter2",
        ]);
        let kafka = all.kafka.validate().unwrap();
        assert_eq!(kafka.extra[1].0, "sasl.password");
        assert_eq!(kafka.extra[1].1.expose(), "hunter2");
        assert!(!format!("{kafka:?}").contains("hunter2"));
    }

    #[test]
    fn kafka_config_without_equals_is_rejected_without_echoing_the_value() {
        let all = parse(&["--kafka-config", "sasl.password"]);
        let err = all.kafka.validate().unwrap_err();
        assert_eq!(err.setting, "KAFKA_CONFIG");
        // A password with a ',' splits into an entry that is the password's tail.
        let all = parse(&["--kafka-config", "sasl.password=hun,ter2-tail"]);
        let err = all.kafka.validate().unwrap_err();
        assert!(!err.to_string().contains("ter2"), "{err}");
    }

    #[test]
    fn redis_url_errors_never_show_the_password() {
        let all = parse(&["--redis-url", "http://user:hunter2@host/0"]);
        let err = all.stores.validate().unwrap_err();
        assert_eq!(err.setting, "REDIS_URL");
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn numbers_must_be_positive() {
        let err = parse(&["--refresh-interval-secs", "0"])
            .refresh
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "REFRESH_INTERVAL_SECS");
        let err = parse(&["--bruin-max-error-ratio", "1.5"])
            .refresh
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "BRUIN_MAX_ERROR_RATIO");
    }

    #[test]
    fn statuses_must_be_a_json_list() {
        let all = parse(&["--monitorable-management-statuses", "Pending"]);
        assert_eq!(
            all.refresh.validate().unwrap_err().setting,
            "MONITORABLE_MANAGEMENT_STATUSES"
        );
    }

    #[test]
    fn timezone_and_topics_are_checked() {
        assert_eq!(
            parse(&["--timezone", "Mars/Base"])
                .serve
                .validate()
                .unwrap_err()
                .setting,
            "TIMEZONE"
        );
        let err = parse(&["--topic-get", "bad topic"])
            .kafka
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "TOPIC_GET");
    }

    #[test]
    fn cassandra_nodes_need_ports_and_keyspace_must_be_an_identifier() {
        let err = parse(&["--cassandra-nodes", "db1"])
            .stores
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "CASSANDRA_NODES");
        let err = parse(&["--cassandra-keyspace", "drop table"])
            .stores
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "CASSANDRA_KEYSPACE");
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
            stores(&["--cassandra-tls", "maybe"]).unwrap_err().setting,
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
        let api = ApiArgs {
            hawkeye_base_url: Some("http://127.0.0.1:1".into()),
            hawkeye_username: Some("u".into()),
            hawkeye_password: None,
            bruin_base_url: None,
            bruin_login_url: None,
            bruin_client_id: None,
            bruin_client_secret: None,
        };
        assert_eq!(
            api.validate().unwrap_err().to_string(),
            "invalid setting HAWKEYE_PASSWORD: is not set"
        );
    }
}
