//! The stores: Redis, and Cassandra with its credentials and TLS.

use std::path::{Path, PathBuf};

use clap::{ArgAction, Args};
use reqwest::Url;
use scylla::statement::Consistency;

use super::{defaults, invalid, non_empty, positive, ConfigError, Rule, Secret};

const DEFAULT_REPLICATION: &str = "{'class': 'SimpleStrategy', 'replication_factor': 1}";

/// Redis and Cassandra, for `run` and the store tools; [`StoreSettings::validate`] checks the
/// rules between Cassandra's settings.
#[derive(Args, Debug, Clone)]
pub struct StoreSettings {
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
    #[arg(long, env = "REDIS_DEVICE_KEY_PREFIX", default_value = "device:")]
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
        default_value = "device_db",
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
    #[command(flatten)]
    pub cassandra_credentials: CassandraCredentials,
    #[command(flatten)]
    pub cassandra_tls: CassandraTls,
    /// Consistency level of every Cassandra request (see README, "Configuration").
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
        default_value = "dev",
        value_parser = Rule(non_empty)
    )]
    pub environment_name: String,
}

impl StoreSettings {
    /// The stores at `redis_url` and `cassandra_nodes` with every other setting at its default:
    /// no Cassandra auth or TLS (tools and tests).
    pub fn new(redis_url: impl Into<String>, cassandra_nodes: Vec<String>) -> Self {
        StoreSettings {
            redis_url: Secret::new(redis_url),
            cassandra_nodes,
            ..defaults()
        }
    }

    /// Checks the rules between settings: Cassandra's credentials and TLS.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.cassandra_credentials.validate()?;
        self.cassandra_tls.validate()
    }
}

/// Cassandra's plain-text auth, used when the user name is set.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct CassandraCredentials {
    /// Plain-text auth user name (auth is used when set).
    #[arg(
        long = "cassandra-username",
        value_name = "CASSANDRA_USERNAME",
        env = "CASSANDRA_USERNAME",
        default_value = ""
    )]
    pub username: String,
    #[arg(
        long = "cassandra-password",
        value_name = "CASSANDRA_PASSWORD",
        env = "CASSANDRA_PASSWORD",
        default_value = "",
        hide_env_values = true,
        value_parser = Rule(secret)
    )]
    pub password: Secret,
}

impl CassandraCredentials {
    /// The user name and password to log in with, when auth is used.
    pub fn login(&self) -> Option<(&str, &Secret)> {
        (!self.username.is_empty()).then_some((self.username.as_str(), &self.password))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.username.is_empty() && !self.password.is_empty() {
            return Err(invalid(
                "CASSANDRA_USERNAME",
                "is empty while CASSANDRA_PASSWORD is set",
            ));
        }
        Ok(())
    }
}

/// TLS to Cassandra; when it is on, the CA file (if any) was readable PEM at start-up.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct CassandraTls {
    /// TLS to Cassandra (client-to-node encryption): the node's certificate must chain to
    /// `CASSANDRA_TLS_CA_FILE` (else the system's roots) and name the node's IP address.
    #[arg(
        long = "cassandra-tls",
        value_name = "CASSANDRA_TLS",
        env = "CASSANDRA_TLS",
        default_value = "false",
        action = ArgAction::Set,
        value_parser = Rule(boolean)
    )]
    pub enabled: bool,
    /// PEM file of the CA certificates the Cassandra nodes' certificates chain to.
    // `None`: the system's root certificates.
    #[arg(
        long = "cassandra-tls-ca-file",
        value_name = "CASSANDRA_TLS_CA_FILE",
        env = "CASSANDRA_TLS_CA_FILE",
        default_value = "",
        value_parser = Rule(optional_path)
    )]
    pub ca_file: std::option::Option<PathBuf>,
}

impl CassandraTls {
    fn validate(&self) -> Result<(), ConfigError> {
        match (self.enabled, &self.ca_file) {
            (false, Some(_)) => Err(invalid(
                "CASSANDRA_TLS_CA_FILE",
                "is set while CASSANDRA_TLS is false",
            )),
            (true, Some(ca_file)) => check_pem(ca_file),
            (_, None) => Ok(()),
        }
    }
}

fn check_pem(ca_file: &Path) -> Result<(), ConfigError> {
    let shown = ca_file.display();
    let pem = std::fs::read(ca_file)
        .map_err(|e| invalid("CASSANDRA_TLS_CA_FILE", format!("cannot read {shown}: {e}")))?;
    match openssl::x509::X509::stack_from_pem(&pem) {
        Ok(certificates) if !certificates.is_empty() => Ok(()),
        _ => Err(invalid(
            "CASSANDRA_TLS_CA_FILE",
            format!("{shown} holds no PEM certificate"),
        )),
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

fn secret(value: &str) -> Result<Secret, String> {
    Ok(Secret::new(value))
}

/// An empty value is no path (the setting is off).
fn optional_path(value: &str) -> Result<Option<PathBuf>, String> {
    let value = value.trim();
    Ok((!value.is_empty()).then(|| PathBuf::from(value)))
}

fn boolean(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{value:?} is not true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{parse, rejected};
    use super::*;

    /// The store settings of the arguments, validated.
    fn stores(args: &[&str]) -> Result<StoreSettings, ConfigError> {
        let stores = parse(args).stores;
        stores.validate().map(|()| stores)
    }

    #[test]
    fn defaults_are_the_contract_defaults() {
        let stores: StoreSettings = defaults();
        stores.validate().unwrap();
        assert_eq!(stores.redis_url.expose(), "redis://127.0.0.1:6379/0");
        assert_eq!(stores.redis_device_key_prefix, "device:");
        assert_eq!(stores.cassandra_nodes, ["127.0.0.1:9042"]);
        assert_eq!(stores.cassandra_keyspace, "device_db");
        assert!(stores.cassandra_create_keyspace);
        assert!(stores.cassandra_alter_table);
        assert_eq!(stores.cassandra_credentials.login(), None);
        assert_eq!(stores.cassandra_tls, CassandraTls::default());
        assert_eq!(stores.environment_name, "dev");
    }

    #[test]
    fn the_constructor_has_the_defaults_of_the_command_line() {
        let parsed = stores(&[]).unwrap();
        let built = StoreSettings::new(parsed.redis_url.expose(), parsed.cassandra_nodes.clone());
        assert_eq!(format!("{built:?}"), format!("{parsed:?}"));
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
    fn cassandra_nodes_need_ports_and_keyspace_must_be_an_identifier() {
        let err = rejected(&["--cassandra-nodes", "db1"]);
        assert_eq!(err.setting, "CASSANDRA_NODES");
        let err = rejected(&["--cassandra-keyspace", "drop table"]);
        assert_eq!(err.setting, "CASSANDRA_KEYSPACE");
    }

    #[test]
    fn cassandra_cluster_settings_are_checked() {
        let defaults = stores(&[]).unwrap();
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
        ])
        .unwrap();
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
        let err = stores(&["--cassandra-password", "hunter2"]).unwrap_err();
        assert_eq!(err.setting, "CASSANDRA_USERNAME");
        let settings = stores(&[
            "--cassandra-username",
            "u",
            "--cassandra-password",
            "hunter2",
        ])
        .unwrap();
        let (user, password) = settings.cassandra_credentials.login().unwrap();
        assert_eq!((user, password.expose()), ("u", "hunter2"));
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn cassandra_tls_needs_a_readable_pem_ca_file() {
        let tls = |args: &[&str]| stores(args).map(|stores| stores.cassandra_tls);
        assert!(!tls(&[]).unwrap().enabled);
        assert_eq!(
            tls(&["--cassandra-tls", "true"]).unwrap(),
            CassandraTls {
                enabled: true,
                ca_file: None
            }
        );
        assert_eq!(
            rejected(&["--cassandra-tls", "maybe"]).setting,
            "CASSANDRA_TLS"
        );
        let without_tls = tls(&["--cassandra-tls-ca-file", "/ca.pem"]).unwrap_err();
        assert_eq!(without_tls.setting, "CASSANDRA_TLS_CA_FILE");

        let missing = "/nonexistent/ca.pem";
        let err = tls(&["--cassandra-tls", "1", "--cassandra-tls-ca-file", missing]).unwrap_err();
        assert_eq!(err.setting, "CASSANDRA_TLS_CA_FILE");
        assert!(
            err.to_string().contains("cannot read /nonexistent/ca.pem"),
            "{err}"
        );

        let not_pem = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(not_pem.path(), "not a certificate").unwrap();
        let path = not_pem.path().to_string_lossy().to_string();
        let err = tls(&["--cassandra-tls", "1", "--cassandra-tls-ca-file", &path]).unwrap_err();
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
    }
}
