//! The stores: Redis with its TLS files, and Cassandra with its credentials and TLS.

use std::path::{Path, PathBuf};

use clap::{ArgAction, Args};
use reqwest::Url;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use scylla::statement::Consistency;

#[cfg(test)]
use super::without_env;
use super::{defaults, invalid, non_empty, positive, ConfigError, Rule, Secret};

const DEFAULT_REPLICATION: &str = "{'class': 'SimpleStrategy', 'replication_factor': 1}";

/// Redis and Cassandra, for `run` and the store tools; [`StoreSettings::validate`] checks the
/// rules between Redis's URL and TLS files and between Cassandra's settings.
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
    #[command(flatten)]
    pub redis_tls: RedisTls,
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

    /// Checks the rules between settings: Redis's TLS files, Cassandra's credentials and TLS.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.redis_tls.validate(&self.redis_url)?;
        self.cassandra_credentials.validate()?;
        self.cassandra_tls.validate()
    }
}

/// TLS files for every URL of `REDIS_URL` (one server or the seeds of a cluster), which must
/// then all be `rediss://`; when set, they were readable PEM at start-up and the client key
/// was the certificate's. (The `id`s keep the arguments apart from [`CassandraTls`]'s.)
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct RedisTls {
    /// PEM file of the CA certificates the Redis servers' certificates chain to (`rediss://`
    /// only); the certificate must also name the host of the URL [default: the system's roots].
    #[arg(
        id = "redis_tls_ca_file",
        long = "redis-tls-ca-file",
        value_name = "REDIS_TLS_CA_FILE",
        env = "REDIS_TLS_CA_FILE",
        default_value = "",
        value_parser = Rule(optional_path)
    )]
    pub ca_file: std::option::Option<PathBuf>,
    /// PEM client certificate (chain) presented to the Redis servers, for `tls-auth-clients
    /// yes`; with REDIS_TLS_KEY_FILE.
    #[arg(
        id = "redis_tls_cert_file",
        long = "redis-tls-cert-file",
        value_name = "REDIS_TLS_CERT_FILE",
        env = "REDIS_TLS_CERT_FILE",
        default_value = "",
        value_parser = Rule(optional_path)
    )]
    pub cert_file: std::option::Option<PathBuf>,
    /// PEM private key of REDIS_TLS_CERT_FILE, unencrypted (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        id = "redis_tls_key_file",
        long = "redis-tls-key-file",
        value_name = "REDIS_TLS_KEY_FILE",
        env = "REDIS_TLS_KEY_FILE",
        default_value = "",
        value_parser = Rule(optional_path)
    )]
    pub key_file: std::option::Option<PathBuf>,
}

const REDIS_TLS_CA_FILE: &str = "REDIS_TLS_CA_FILE";
const REDIS_TLS_CERT_FILE: &str = "REDIS_TLS_CERT_FILE";
const REDIS_TLS_KEY_FILE: &str = "REDIS_TLS_KEY_FILE";

impl RedisTls {
    /// Whether any file is set (else TLS, on `rediss://` URLs, is as before: the system's
    /// roots, no client certificate).
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    fn validate(&self, redis_url: &Secret) -> Result<(), ConfigError> {
        let set = [
            (REDIS_TLS_CA_FILE, &self.ca_file),
            (REDIS_TLS_CERT_FILE, &self.cert_file),
            (REDIS_TLS_KEY_FILE, &self.key_file),
        ];
        let Some((first_set, _)) = set.iter().find(|(_, file)| file.is_some()) else {
            return Ok(());
        };
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    REDIS_TLS_KEY_FILE,
                    "is empty while REDIS_TLS_CERT_FILE is set",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    REDIS_TLS_CERT_FILE,
                    "is empty while REDIS_TLS_KEY_FILE is set",
                ))
            }
            _ => {}
        }
        if let Some(plain) = plain_redis_url(redis_url) {
            return Err(invalid(
                first_set,
                format!("is set while {plain} is redis:// (the TLS files need rediss://)"),
            ));
        }
        if let Some(ca_file) = &self.ca_file {
            check_ca_file(ca_file)?;
        }
        if let (Some(cert_file), Some(key_file)) = (&self.cert_file, &self.key_file) {
            check_client_key_pair(cert_file, key_file)?;
        }
        Ok(())
    }
}

/// `REDIS_URL` (or `URL n of REDIS_URL`, when there are several) when a URL is not TLS.
fn plain_redis_url(redis_url: &Secret) -> Option<String> {
    let urls: Vec<&str> = redis_url.expose().split(',').collect();
    let position = urls
        .iter()
        .position(|text| Url::parse(text.trim()).map_or(true, |url| url.scheme() != "rediss"))?;
    Some(if urls.len() == 1 {
        "REDIS_URL".to_string()
    } else {
        format!("URL {} of REDIS_URL", position + 1)
    })
}

fn read_file(setting: &str, file: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(file)
        .map_err(|e| invalid(setting, format!("cannot read {}: {e}", file.display())))
}

/// What is wrong with a PEM file, in words that show none of its contents (the parser's
/// errors quote lines and characters of it, which in a key file are the secret).
fn pem_fault(error: &pem::Error) -> &'static str {
    match error {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section is not base64",
        _ => "it cannot be parsed",
    }
}

/// The certificates of the PEM file `file`: at least one, each well-formed.
fn pem_certificates(
    setting: &str,
    file: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_file(setting, file)?;
    let shown = file.display();
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(setting, format!("{shown} is not PEM: {}", pem_fault(&e))))?;
    if certificates.is_empty() {
        return Err(invalid(
            setting,
            format!("{shown} holds no PEM certificate"),
        ));
    }
    Ok(certificates)
}

/// The CA file holds certificates that can each be a root of trust.
fn check_ca_file(ca_file: &Path) -> Result<(), ConfigError> {
    let mut roots = RootCertStore::empty();
    for (position, certificate) in pem_certificates(REDIS_TLS_CA_FILE, ca_file)?
        .into_iter()
        .enumerate()
    {
        roots.add(certificate).map_err(|e| {
            invalid(
                REDIS_TLS_CA_FILE,
                format!(
                    "certificate {} of {} is not a usable CA certificate: {e}",
                    position + 1,
                    ca_file.display()
                ),
            )
        })?;
    }
    Ok(())
}

/// The client certificate file holds certificates, the key file an unencrypted private key of
/// a kind TLS signs with, and the key is the first certificate's.
fn check_client_key_pair(cert_file: &Path, key_file: &Path) -> Result<(), ConfigError> {
    let chain = pem_certificates(REDIS_TLS_CERT_FILE, cert_file)?;
    let pem = read_file(REDIS_TLS_KEY_FILE, key_file)?;
    let shown = key_file.display();
    // The parser skips PKCS#8 `ENCRYPTED PRIVATE KEY` sections and fails on the headers of
    // legacy encrypted PEM (`Proc-Type: 4,ENCRYPTED`): say what is wrong instead.
    let marks = [
        &b"-----BEGIN ENCRYPTED PRIVATE KEY-----"[..],
        b"Proc-Type: 4,ENCRYPTED",
    ];
    let holds = |mark: &[u8]| pem.windows(mark.len()).any(|window| window == mark);
    if marks.into_iter().any(holds) {
        return Err(invalid(
            REDIS_TLS_KEY_FILE,
            format!("{shown} holds an encrypted key; give the key unencrypted"),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let reason = match e {
            pem::Error::NoItemsFound => {
                format!("{shown} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")
            }
            other => format!("{shown} is not PEM: {}", pem_fault(&other)),
        };
        invalid(REDIS_TLS_KEY_FILE, reason)
    })?;
    // What the crate's rustls does with them when it connects: a wrong key fails here instead.
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => invalid(
            REDIS_TLS_KEY_FILE,
            format!(
                "{shown} is not the key of the certificate in {} (REDIS_TLS_CERT_FILE)",
                cert_file.display()
            ),
        ),
        rustls::Error::InvalidCertificate(why) => invalid(
            REDIS_TLS_CERT_FILE,
            format!(
                "{} is not a certificate TLS can use (X.509 v3): {why:?}",
                cert_file.display()
            ),
        ),
        other => invalid(
            REDIS_TLS_KEY_FILE,
            format!("{shown} holds a key TLS cannot sign with: {other}"),
        ),
    })?;
    Ok(())
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
            (true, Some(ca_file)) => pem_certificates("CASSANDRA_TLS_CA_FILE", ca_file).map(drop),
            (_, None) => Ok(()),
        }
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

    /// PEM files of a test: certificates and keys made here, in a directory removed on drop.
    mod pem_files {
        use std::path::PathBuf;

        use openssl::asn1::Asn1Time;
        use openssl::bn::BigNum;
        use openssl::ec::{EcGroup, EcKey};
        use openssl::hash::MessageDigest;
        use openssl::nid::Nid;
        use openssl::pkey::{PKey, Private};
        use openssl::x509::{X509NameBuilder, X509};

        pub struct Files(tempfile::TempDir);

        impl Files {
            pub fn new() -> Self {
                Files(tempfile::tempdir().unwrap())
            }

            pub fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
                let path = self.0.path().join(name);
                std::fs::write(&path, contents).unwrap();
                path
            }
        }

        pub fn ec_key() -> PKey<Private> {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
            PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
        }

        /// A self-signed certificate of `key`, X.509 v3 (`version` 2) or v1 (0), as PEM.
        pub fn certificate(key: &PKey<Private>, version: i32) -> Vec<u8> {
            let mut name = X509NameBuilder::new().unwrap();
            name.append_entry_by_text("CN", "test").unwrap();
            let name = name.build();
            let mut builder = X509::builder().unwrap();
            builder.set_version(version).unwrap();
            let serial = BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap();
            builder.set_serial_number(&serial).unwrap();
            builder.set_subject_name(&name).unwrap();
            builder.set_issuer_name(&name).unwrap();
            builder.set_pubkey(key).unwrap();
            builder
                .set_not_before(&Asn1Time::days_from_now(0).unwrap())
                .unwrap();
            builder
                .set_not_after(&Asn1Time::days_from_now(1).unwrap())
                .unwrap();
            builder.sign(key, MessageDigest::sha256()).unwrap();
            builder.build().to_pem().unwrap()
        }
    }

    /// The Redis TLS group of the arguments, the environment unread.
    fn redis_tls(args: &[&str]) -> RedisTls {
        without_env(args).unwrap()
    }

    const TLS_URL: &str = "rediss://:hunter2@redis.example:6380/0";

    #[test]
    fn redis_tls_files_are_off_by_default_and_set_by_path() {
        assert_eq!(defaults::<RedisTls>(), RedisTls::default());
        assert_eq!(defaults::<StoreSettings>().redis_tls, RedisTls::default());
        assert!(!RedisTls::default().is_set());
        RedisTls::default().validate(&Secret::new(TLS_URL)).unwrap();
        let tls = redis_tls(&[
            "--redis-tls-ca-file",
            "/etc/redis/ca.pem",
            "--redis-tls-cert-file",
            " ",
        ]);
        assert_eq!(tls.ca_file, Some(PathBuf::from("/etc/redis/ca.pem")));
        assert_eq!(tls.cert_file, None, "an empty value is no file");
        assert!(tls.is_set());
    }

    #[test]
    fn redis_tls_files_need_rediss_urls() {
        let files = pem_files::Files::new();
        let ca_file = files.write("ca.pem", &pem_files::certificate(&pem_files::ec_key(), 2));
        let tls = RedisTls {
            ca_file: Some(ca_file),
            ..RedisTls::default()
        };
        tls.validate(&Secret::new(TLS_URL)).unwrap();
        let err = tls
            .validate(&Secret::new("redis://:hunter2@redis.example:6379/0"))
            .unwrap_err();
        assert_eq!(err.setting, "REDIS_TLS_CA_FILE");
        assert!(err.reason.contains("REDIS_URL is redis://"), "{err}");
        assert!(!err.to_string().contains("hunter2"));
        let seeds = format!("{TLS_URL},redis://:hunter2@redis.example:7001");
        let err = tls.validate(&Secret::new(seeds)).unwrap_err();
        assert!(err.reason.contains("URL 2 of REDIS_URL"), "{err}");
        assert!(!err.to_string().contains("hunter2"));

        let client_only = RedisTls {
            key_file: Some("/k.pem".into()),
            cert_file: Some("/c.pem".into()),
            ..RedisTls::default()
        };
        let err = client_only
            .validate(&Secret::new("redis://h:1"))
            .unwrap_err();
        assert_eq!(err.setting, "REDIS_TLS_CERT_FILE");
    }

    #[test]
    fn redis_tls_client_certificate_and_key_go_together() {
        let cert_only = RedisTls {
            cert_file: Some("/c.pem".into()),
            ..RedisTls::default()
        };
        let err = cert_only.validate(&Secret::new(TLS_URL)).unwrap_err();
        assert_eq!(err.setting, "REDIS_TLS_KEY_FILE");
        assert!(err.reason.contains("REDIS_TLS_CERT_FILE is set"), "{err}");
        let key_only = RedisTls {
            key_file: Some("/k.pem".into()),
            ..RedisTls::default()
        };
        let err = key_only.validate(&Secret::new(TLS_URL)).unwrap_err();
        assert_eq!(err.setting, "REDIS_TLS_CERT_FILE");
    }

    #[test]
    fn redis_tls_ca_file_must_be_readable_pem() {
        let files = pem_files::Files::new();
        let ca = |path: PathBuf| {
            RedisTls {
                ca_file: Some(path),
                ..RedisTls::default()
            }
            .validate(&Secret::new(TLS_URL))
        };
        let err = ca(PathBuf::from("/nonexistent/ca.pem")).unwrap_err();
        assert_eq!(err.setting, "REDIS_TLS_CA_FILE");
        assert!(
            err.reason.starts_with("cannot read /nonexistent/ca.pem"),
            "{err}"
        );
        let err = ca(files.write("text.pem", b"not a certificate")).unwrap_err();
        assert_eq!(err.setting, "REDIS_TLS_CA_FILE");
        assert!(err.reason.ends_with("holds no PEM certificate"), "{err}");
        let broken = b"-----BEGIN CERTIFICATE-----\nMIIB!!\n-----END CERTIFICATE-----\n";
        let err = ca(files.write("broken.pem", broken)).unwrap_err();
        assert!(err.reason.contains("is not PEM"), "{err}");
        assert!(!err.reason.contains("MIIB"), "{err}");
        let key = pem_files::ec_key();
        let mut bundle = pem_files::certificate(&key, 2);
        bundle.extend(pem_files::certificate(&pem_files::ec_key(), 2));
        ca(files.write("bundle.pem", &bundle)).unwrap();
    }

    #[test]
    fn redis_tls_client_key_must_be_the_certificates_unencrypted() {
        use openssl::rsa::Rsa;
        use openssl::symm::Cipher;

        let files = pem_files::Files::new();
        let client = |cert: &[u8], key: &[u8]| {
            RedisTls {
                cert_file: Some(files.write("client.pem", cert)),
                key_file: Some(files.write("client.key", key)),
                ..RedisTls::default()
            }
            .validate(&Secret::new(TLS_URL))
        };
        let ec = pem_files::ec_key();
        let ec_cert = pem_files::certificate(&ec, 2);
        let pkcs8 = ec.private_key_to_pem_pkcs8().unwrap();
        client(&ec_cert, &pkcs8).unwrap();
        let sec1 = ec.ec_key().unwrap().private_key_to_pem().unwrap();
        client(&ec_cert, &sec1).unwrap();
        let rsa = openssl::pkey::PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let pkcs1 = rsa.rsa().unwrap().private_key_to_pem().unwrap();
        client(&pem_files::certificate(&rsa, 2), &pkcs1).unwrap();

        let other = pem_files::ec_key().private_key_to_pem_pkcs8().unwrap();
        let err = client(&ec_cert, &other).unwrap_err();
        assert_eq!(err.setting, "REDIS_TLS_KEY_FILE");
        assert!(
            err.reason.contains("is not the key of the certificate"),
            "{err}"
        );

        let encrypted = ec
            .private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), b"pass")
            .unwrap();
        let err = client(&ec_cert, &encrypted).unwrap_err();
        assert_eq!(err.setting, "REDIS_TLS_KEY_FILE");
        assert!(err.reason.contains("encrypted"), "{err}");
        let legacy = ec
            .ec_key()
            .unwrap()
            .private_key_to_pem_passphrase(Cipher::aes_256_cbc(), b"pass")
            .unwrap();
        let err = client(&ec_cert, &legacy).unwrap_err();
        assert!(err.reason.contains("encrypted"), "{err}");

        let err = client(&ec_cert, &ec_cert).unwrap_err();
        assert_eq!(err.setting, "REDIS_TLS_KEY_FILE");
        assert!(err.reason.contains("holds no PEM private key"), "{err}");

        let broken = b"-----BEGIN PRIVATE KEY-----\nS3cr3t!!\n-----END PRIVATE KEY-----\n";
        let err = client(&ec_cert, broken).unwrap_err();
        assert_eq!(err.setting, "REDIS_TLS_KEY_FILE");
        assert!(
            !err.to_string().contains("S3cr3t"),
            "the key is never shown: {err}"
        );

        let err = client(&pem_files::certificate(&ec, 0), &pkcs8).unwrap_err();
        assert_eq!(
            err.setting, "REDIS_TLS_CERT_FILE",
            "an X.509 v1 certificate: {err}"
        );
        let err = client(b"no certificate", &pkcs8).unwrap_err();
        assert_eq!(err.setting, "REDIS_TLS_CERT_FILE");
    }
}
