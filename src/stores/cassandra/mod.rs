//! Cassandra/ScyllaDB: the session (nodes, TLS, credentials, consistency) and the schema the
//! service finds or makes ([`schema`]); the device profile writer ([`writer`]), the cell
//! encoding of its rules ([`cells`]), the devices' lives across deletes ([`lives`]) and the
//! reader of stored rows ([`scan`]).

mod acknowledged;
mod batches;
mod cells;
pub mod lives;
pub mod scan;
pub mod schema;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openssl::ssl::{SslConnector, SslConnectorBuilder, SslMethod};
use scylla::client::execution_profile::{ExecutionProfile, ExecutionProfileHandle};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;

use self::schema::{ensure_schema, schema_in_place, SchemaRights};
use super::StoreError;
use crate::config::{CassandraTls, StoreSettings};
use crate::observe::http::ReadinessCheck;

pub use self::cells::ColumnValue;
pub use self::schema::DEVICE_PROFILE_CQL;
pub use self::writer::{Folds, ProfileWriter, Refusals};

#[derive(Clone)]
pub struct CassandraStore {
    session: Arc<Session>,
    keyspace: String,
    /// `CASSANDRA_WRITE_CONCURRENCY`: requests (batches of devices) in flight at once per
    /// upsert call.
    writes_in_flight: usize,
    /// The deployment's base of the smallest-wins cell timestamps (micros).
    smallest_wins_base: i64,
}

/// Every request at `CASSANDRA_CONSISTENCY`; token-aware routing, within `CASSANDRA_LOCAL_DC`
/// when set (no failover to another datacenter: its latency and consistency would surprise).
fn execution_profile(settings: &StoreSettings) -> ExecutionProfileHandle {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(datacenter) = &settings.cassandra_local_dc {
        policy = policy
            .prefer_datacenter(datacenter.clone())
            .permit_dc_failover(false);
    }
    ExecutionProfile::builder()
        .consistency(settings.cassandra_consistency)
        .load_balancing_policy(policy.build())
        .build()
        .into_handle()
}

/// OpenSSL's client defaults (peer verification on); the driver checks that the certificate
/// names the node's IP address.
fn tls_connector(tls: &CassandraTls) -> Result<SslConnectorBuilder, openssl::error::ErrorStack> {
    let mut builder = SslConnector::builder(SslMethod::tls_client())?;
    if let Some(ca_file) = &tls.ca_file {
        builder.set_ca_file(ca_file)?;
    }
    Ok(builder)
}

async fn session(settings: &StoreSettings) -> Result<Session, StoreError> {
    let mut builder = SessionBuilder::new()
        .known_nodes(&settings.cassandra_nodes)
        .connection_timeout(Duration::from_secs(5))
        .default_execution_profile_handle(execution_profile(settings));
    if let Some((user, password)) = settings.cassandra_credentials.login() {
        builder = builder.user(user, password.expose());
    }
    if settings.cassandra_tls.enabled {
        let connector = tls_connector(&settings.cassandra_tls)
            .map_err(|e| StoreError::cassandra("cannot set up TLS", e))?;
        builder = builder.tls_context(Some(connector));
    }
    builder
        .build()
        .await
        .map_err(|e| StoreError::cassandra("cannot connect", e))
}

impl CassandraStore {
    /// The service's connection: creates the keyspace (when allowed) and the tables when
    /// missing, adopts an existing `device_profile` ([`ensure_schema`]).
    pub async fn connect(settings: &StoreSettings) -> Result<Self, StoreError> {
        let session = session(settings).await?;
        let rights = SchemaRights {
            create_keyspace_with: settings
                .cassandra_create_keyspace
                .then_some(settings.cassandra_replication.as_str()),
            alter_table: settings.cassandra_alter_table,
        };
        let smallest_wins_base =
            ensure_schema(&session, &settings.cassandra_keyspace, rights).await?;
        Ok(Self::with_session(session, settings, smallest_wins_base))
    }

    /// The operator tools' connection: the schema as the service left it, changed in nothing
    /// ([`schema_in_place`]), so that a read-only tool writes nothing.
    pub async fn open(settings: &StoreSettings) -> Result<Self, StoreError> {
        let session = session(settings).await?;
        let smallest_wins_base = schema_in_place(&session, &settings.cassandra_keyspace).await?;
        Ok(Self::with_session(session, settings, smallest_wins_base))
    }

    fn with_session(session: Session, settings: &StoreSettings, smallest_wins_base: i64) -> Self {
        CassandraStore {
            session: Arc::new(session),
            keyspace: settings.cassandra_keyspace.clone(),
            writes_in_flight: settings.cassandra_write_concurrency,
            smallest_wins_base,
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.session
            .query_unpaged("SELECT release_version FROM system.local", ())
            .await
            .map_err(|e| StoreError::cassandra("ping", e))?;
        Ok(())
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// `CASSANDRA_WRITE_CONCURRENCY`.
    pub fn writes_in_flight(&self) -> usize {
        self.writes_in_flight
    }

    pub fn smallest_wins_base(&self) -> i64 {
        self.smallest_wins_base
    }
}

impl ReadinessCheck for CassandraStore {
    fn name(&self) -> &'static str {
        "cassandra"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.ping().await.map_err(|e| e.to_string()) })
    }
}
