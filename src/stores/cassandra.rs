//! Cassandra/ScyllaDB: session, keyspace and `device_profile` table creation.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use super::StoreError;
use crate::config::StoreSettings;
use crate::observe::http::ReadinessCheck;

/// The CQL of the table, kept in `schemas/` for operators and applied by the service.
pub const DEVICE_PROFILE_CQL: &str = include_str!("../../schemas/device_profile.cql");

#[derive(Clone)]
pub struct CassandraStore {
    session: Arc<Session>,
    keyspace: String,
}

impl CassandraStore {
    /// Connects, creates the keyspace (when allowed) and the table when missing.
    pub async fn connect(settings: &StoreSettings) -> Result<Self, StoreError> {
        let mut builder = SessionBuilder::new()
            .known_nodes(&settings.cassandra_nodes)
            .connection_timeout(Duration::from_secs(5));
        if let Some((user, password)) = &settings.cassandra_credentials {
            builder = builder.user(user, password.expose());
        }
        let session = builder
            .build()
            .await
            .map_err(|e| StoreError::cassandra("cannot connect", e))?;
        let store = CassandraStore {
            session: Arc::new(session),
            keyspace: settings.cassandra_keyspace.clone(),
        };
        store
            .ensure_schema(settings.cassandra_create_keyspace)
            .await?;
        Ok(store)
    }

    async fn ensure_schema(&self, create_keyspace: bool) -> Result<(), StoreError> {
        let keyspace = &self.keyspace;
        if create_keyspace {
            let cql = format!(
                "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            );
            self.session
                .query_unpaged(cql, ())
                .await
                .map_err(|e| StoreError::cassandra("cannot create keyspace", e))?;
        }
        self.session
            .use_keyspace(keyspace, false)
            .await
            .map_err(|e| {
                StoreError::cassandra(
                    &format!("cannot use keyspace {keyspace} (CASSANDRA_CREATE_KEYSPACE={create_keyspace})"),
                    e,
                )
            })?;
        self.session
            .query_unpaged(DEVICE_PROFILE_CQL, ())
            .await
            .map_err(|e| StoreError::cassandra("cannot create table device_profile", e))?;
        self.session
            .await_schema_agreement()
            .await
            .map_err(|e| StoreError::cassandra("schema agreement", e))?;
        Ok(())
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
}

impl ReadinessCheck for CassandraStore {
    fn name(&self) -> &'static str {
        "cassandra"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.ping().await.map_err(|e| e.to_string()) })
    }
}
