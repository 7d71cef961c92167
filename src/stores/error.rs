//! Store errors that keep the driver's error, so a caller can tell an outage (retry, pause)
//! from a refusal that no retry will change (dead-letter the event).
//!
//! The rule, for both stores: no answer (connection refused or broken, timeout, no connection
//! available) is transient; an answer that refuses the request is permanent, unless it names a
//! passing state of the server or cluster (loading, busy, overloaded, unavailable replicas, a
//! failover in progress); a request the driver cannot even build is permanent.

use redis::{ErrorKind, RedisError};
use scylla::errors::{
    DbError, DeserializationError, ExecutionError, IntoRowsResultError, MetadataError,
    NewSessionError, PrepareError, RequestAttemptError, RowsError, SchemaAgreementError,
    UseKeyspaceError,
};

/// A store call that failed. Texts never include credentials.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// Boxed: the driver's errors are large, and every store call returns this type.
    #[error("cassandra: {0}")]
    Cassandra(Box<CassandraError>),
}

/// A failed Cassandra call: what the service was doing, and why it failed.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {cause}")]
pub struct CassandraError {
    context: String,
    // Not a `source`: the text is already in this error's own, so a chain would repeat it.
    cause: CassandraCause,
}

/// The driver's error of a failed Cassandra call, as the driver returned it.
#[derive(Debug, thiserror::Error)]
pub enum CassandraCause {
    #[error(transparent)]
    NewSession(#[from] NewSessionError),
    #[error(transparent)]
    Execution(#[from] ExecutionError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    UseKeyspace(#[from] UseKeyspaceError),
    #[error(transparent)]
    SchemaAgreement(#[from] SchemaAgreementError),
    #[error(transparent)]
    Tls(#[from] openssl::error::ErrorStack),
    /// A schema the service cannot write into as it is (a column of another type, columns
    /// missing that it may not add): what is wrong and what to do.
    #[error("{0}")]
    Schema(String),
    /// A write the service will not make as it is (why, and what to do).
    #[error("{0}")]
    Unwritable(String),
    /// A write of a column the service prepared no statement for: a bug, never retried.
    #[error("no prepared update for column {0}")]
    UnpreparedColumn(&'static str),
    /// An answer that is not the rows asked for, or rows of unexpected types.
    #[error(transparent)]
    IntoRows(#[from] IntoRowsResultError),
    #[error(transparent)]
    Rows(#[from] RowsError),
    #[error(transparent)]
    Deserialization(#[from] DeserializationError),
}

impl StoreError {
    pub fn cassandra(context: &str, cause: impl Into<CassandraCause>) -> Self {
        StoreError::Cassandra(Box::new(CassandraError {
            context: context.to_string(),
            cause: cause.into(),
        }))
    }

    /// `redis` or `cassandra`: the `store` label of metrics.
    pub fn store(&self) -> &'static str {
        match self {
            StoreError::Redis(_) => "redis",
            StoreError::Cassandra(_) => "cassandra",
        }
    }

    /// Whether the same call may succeed later unchanged (see the module's rule).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Redis(error) => redis_is_transient(error),
            StoreError::Cassandra(error) => error.cause.is_transient(),
        }
    }
}

/// Redis: I/O errors (refused, reset, timed out) and the server's passing states are transient;
/// other answers (`WRONGTYPE`, script errors, `ERR …`), answers of an unexpected type and
/// client-side faults are permanent. A pipeline is transient when any of its commands is: a
/// retry repeats them all, and once the passing state is over only the permanent ones fail.
fn redis_is_transient(error: &RedisError) -> bool {
    if let Some(server_errors) = error.clone().into_server_errors() {
        return server_errors
            .iter()
            .any(|(_, error)| redis_code_is_transient(error.code()));
    }
    match error.kind() {
        ErrorKind::Io
        | ErrorKind::AuthenticationFailed
        | ErrorKind::ClusterConnectionNotFound
        | ErrorKind::MasterNameNotFoundBySentinel
        | ErrorKind::NoValidReplicasFoundBySentinel => true,
        ErrorKind::Server(_) => error.code().is_some_and(redis_code_is_transient),
        _ => false,
    }
}

/// Error codes of a server (or cluster) that cannot take the command now but will.
fn redis_code_is_transient(code: &str) -> bool {
    matches!(
        code,
        // Loading its data set; running a slow script.
        "LOADING" | "BUSY"
        // Cluster: resharding, failover, slots moving.
        | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "MOVED" | "ASK"
        // Failover: the connection reached a replica that was the primary.
        | "READONLY"
        // Out of memory, cannot persist, too few replicas: the server's state, not the command's.
        | "OOM" | "MISCONF" | "NOREPLICAS"
        // The script cache was flushed; the writer loads the script again on the next call.
        | "NOSCRIPT"
        // The service's user lacks a permission or its password changed: the operator's to
        // fix, and the same for every event.
        | "NOPERM" | "NOAUTH" | "WRONGPASS"
    )
}

impl CassandraCause {
    fn is_transient(&self) -> bool {
        match self {
            CassandraCause::NewSession(error) => match error {
                NewSessionError::FailedToResolveAnyHostname(_) => true,
                NewSessionError::MetadataError(error) => metadata_is_transient(error),
                NewSessionError::UseKeyspaceError(error) => use_keyspace_is_transient(error),
                _ => false,
            },
            CassandraCause::Execution(error) => execution_is_transient(error),
            CassandraCause::Prepare(error) => prepare_is_transient(error),
            CassandraCause::UseKeyspace(error) => use_keyspace_is_transient(error),
            CassandraCause::SchemaAgreement(error) => schema_agreement_is_transient(error),
            CassandraCause::Tls(_)
            | CassandraCause::Schema(_)
            | CassandraCause::Unwritable(_)
            | CassandraCause::UnpreparedColumn(_)
            | CassandraCause::IntoRows(_)
            | CassandraCause::Rows(_)
            | CassandraCause::Deserialization(_) => false,
        }
    }
}

pub(super) fn execution_is_transient(error: &ExecutionError) -> bool {
    match error {
        // No node to send the request to, or no connection to it: an outage.
        ExecutionError::EmptyPlan
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_) => true,
        ExecutionError::LastAttemptError(error) => attempt_is_transient(error),
        ExecutionError::PrepareError(error) => prepare_is_transient(error),
        ExecutionError::UseKeyspaceError(error) => use_keyspace_is_transient(error),
        ExecutionError::SchemaAgreementError(error) => schema_agreement_is_transient(error),
        ExecutionError::MetadataError(error) => metadata_is_transient(error),
        _ => false,
    }
}

fn prepare_is_transient(error: &PrepareError) -> bool {
    match error {
        PrepareError::ConnectionPoolError(_) => true,
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_is_transient(first_attempt),
        _ => false,
    }
}

fn use_keyspace_is_transient(error: &UseKeyspaceError) -> bool {
    match error {
        UseKeyspaceError::RequestError(error) => attempt_is_transient(error),
        UseKeyspaceError::RequestTimeout(_) => true,
        _ => false,
    }
}

fn schema_agreement_is_transient(error: &SchemaAgreementError) -> bool {
    match error {
        SchemaAgreementError::ConnectionPoolError(_)
        | SchemaAgreementError::Timeout(_)
        | SchemaAgreementError::RequiredHostAbsent(_) => true,
        SchemaAgreementError::PrepareError(error) => prepare_is_transient(error),
        SchemaAgreementError::RequestError(error) => attempt_is_transient(error),
        _ => false,
    }
}

fn metadata_is_transient(error: &MetadataError) -> bool {
    // Fetching failed (no connection, a failed query) rather than the metadata being malformed.
    matches!(
        error,
        MetadataError::ConnectionPoolError(_) | MetadataError::FetchError(_)
    )
}

fn attempt_is_transient(error: &RequestAttemptError) -> bool {
    match error {
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => true,
        RequestAttemptError::DbError(error, _) => db_error_is_transient(error),
        // Values that do not serialize, answers the driver cannot read: the same next time.
        _ => false,
    }
}

/// The server's answer: transient when it names the cluster's state (replicas down or slow,
/// overloaded, starting) or the service's credentials, permanent when it judges the request
/// (invalid, a server error on its values).
fn db_error_is_transient(error: &DbError) -> bool {
    match error {
        DbError::Unavailable { .. }
        | DbError::Overloaded
        | DbError::IsBootstrapping
        | DbError::ReadTimeout { .. }
        | DbError::WriteTimeout { .. }
        // Replicas failed the write or read (disk, tombstones): theirs to fix, not the event's.
        | DbError::ReadFailure { .. }
        | DbError::WriteFailure { .. }
        | DbError::TruncateError
        | DbError::RateLimitReached { .. }
        // A missing grant or bad credentials: the operator's to fix, and the same for every
        // event, so dead-lettering would only empty the stream into the dead-letter topic.
        | DbError::Unauthorized
        | DbError::AuthenticationError
        // The node forgot a prepared statement; the driver prepares it again.
        | DbError::Unprepared { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::Arc;
    use std::time::Duration;

    use redis::{RedisResult, ServerErrorKind, Value};
    use scylla::errors::{
        BadQuery, BrokenConnectionErrorKind, ConnectionError, ConnectionPoolError, CqlResponseKind,
        WriteType,
    };
    use scylla::statement::Consistency;

    /// The error a Redis server answers with, from its RESP bytes (`-CODE detail`).
    fn redis_answer(line: &str) -> StoreError {
        let value = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).unwrap();
        StoreError::Redis(value.extract_error().unwrap_err())
    }

    fn redis_io(kind: io::ErrorKind) -> StoreError {
        StoreError::Redis(io::Error::from(kind).into())
    }

    fn redis_kind(kind: ErrorKind) -> StoreError {
        StoreError::Redis((kind, "test").into())
    }

    #[test]
    fn redis_outages_and_passing_server_states_are_transient() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::TimedOut,
        ] {
            assert!(redis_io(kind).is_transient(), "{kind:?}");
        }
        for kind in [
            ServerErrorKind::BusyLoading,
            ServerErrorKind::TryAgain,
            ServerErrorKind::ClusterDown,
            ServerErrorKind::MasterDown,
            ServerErrorKind::ReadOnly,
        ] {
            assert!(
                redis_kind(ErrorKind::Server(kind)).is_transient(),
                "{kind:?}"
            );
        }
        for line in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "READONLY You can't write against a read only replica.",
            "OOM command not allowed when used memory > 'maxmemory'.",
        ] {
            assert!(redis_answer(line).is_transient(), "{line}");
        }
        assert!(redis_kind(ErrorKind::ClusterConnectionNotFound).is_transient());
    }

    #[test]
    fn redis_refusals_of_the_request_are_permanent() {
        for line in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            // Redis 7 passes the code of a failed call inside a script through.
            "WRONGTYPE Operation against a key holding the wrong kind of value script: \
             4f2c0d9b, on @user_script:52.",
            // Redis 6 wraps it in ERR.
            "ERR Error running script (call to f_4f2c0d9b): @user_script:52: WRONGTYPE \
             Operation against a key holding the wrong kind of value",
            "ERR user_script:12: Script attempted to access nonexistent global variable 'x' \
             script: 4f2c0d9b, on @user_script:12.",
            "ERR wrong number of arguments for 'hset' command",
        ] {
            assert!(!redis_answer(line).is_transient(), "{line}");
        }
        let credentials = "NOPERM this user has no permissions to run the 'evalsha' command";
        assert!(redis_answer(credentials).is_transient());
        let wrong_type = redis::from_redis_value::<i64>(Value::Array(Vec::new())).unwrap_err();
        assert!(!StoreError::Redis(wrong_type.into()).is_transient());
        assert!(!redis_kind(ErrorKind::UnexpectedReturnType).is_transient());
        // Credentials are the operator's to fix, the same for every event.
        assert!(redis_kind(ErrorKind::AuthenticationFailed).is_transient());
    }

    /// A connection that answers a pipeline with the replies given, as RESP text.
    struct Replies(Vec<&'static str>);

    impl redis::ConnectionLike for Replies {
        fn req_packed_command(&mut self, _: &[u8]) -> RedisResult<Value> {
            unreachable!("only pipelines are sent")
        }
        fn req_packed_commands(&mut self, _: &[u8], _: usize, _: usize) -> RedisResult<Vec<Value>> {
            self.0
                .iter()
                .map(|reply| redis::parse_redis_value(reply.as_bytes()))
                .collect()
        }
        fn get_db(&self) -> i64 {
            0
        }
        fn check_connection(&mut self) -> bool {
            true
        }
        fn is_open(&self) -> bool {
            true
        }
    }

    fn pipeline_error(replies: Vec<&'static str>) -> StoreError {
        let mut pipeline = redis::pipe();
        for _ in &replies {
            pipeline.hget("device:d", "city");
        }
        let error = pipeline
            .query::<Vec<Option<String>>>(&mut Replies(replies))
            .unwrap_err();
        StoreError::Redis(error)
    }

    #[test]
    fn a_redis_pipeline_is_transient_when_any_of_its_commands_is() {
        let wrong_type = "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
        let loading = "-LOADING Redis is loading the dataset in memory\r\n";
        assert!(!pipeline_error(vec!["$2\r\nok\r\n", wrong_type]).is_transient());
        assert!(pipeline_error(vec![wrong_type, loading]).is_transient());
        assert!(pipeline_error(vec![loading]).is_transient());
    }

    fn db_error(error: DbError) -> StoreError {
        StoreError::cassandra(
            "cannot write device_profile",
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(error, "test".into())),
        )
    }

    fn refused() -> ConnectionError {
        ConnectionError::IoError(Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused)))
    }

    #[test]
    fn cassandra_outages_and_cluster_states_are_transient() {
        let consistency = Consistency::LocalQuorum;
        for error in [
            DbError::Overloaded,
            DbError::IsBootstrapping,
            DbError::Unavailable {
                consistency,
                required: 2,
                alive: 1,
            },
            DbError::ReadTimeout {
                consistency,
                received: 1,
                required: 2,
                data_present: false,
            },
            DbError::WriteTimeout {
                consistency,
                received: 1,
                required: 2,
                write_type: WriteType::UnloggedBatch,
            },
            DbError::TruncateError,
        ] {
            assert!(db_error(error.clone()).is_transient(), "{error:?}");
        }
        let no_answer = [
            ExecutionError::RequestTimeout(Duration::from_secs(12)),
            ExecutionError::ConnectionPoolError(ConnectionPoolError::Broken {
                last_connection_error: refused(),
            }),
            ExecutionError::ConnectionPoolError(ConnectionPoolError::Broken {
                last_connection_error: ConnectionError::ConnectTimeout,
            }),
            ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(
                BrokenConnectionErrorKind::ChannelError.into(),
            )),
            ExecutionError::LastAttemptError(RequestAttemptError::UnableToAllocStreamId),
        ];
        for error in no_answer {
            let error = StoreError::cassandra("ping", error);
            assert!(error.is_transient(), "{error}");
        }
        let prepare = PrepareError::ConnectionPoolError(ConnectionPoolError::Initializing);
        assert!(StoreError::cassandra("cannot prepare", prepare).is_transient());
        let hostname = NewSessionError::FailedToResolveAnyHostname(vec!["cassandra".into()]);
        assert!(StoreError::cassandra("cannot connect", hostname).is_transient());
    }

    #[test]
    fn cassandra_refusals_of_the_request_are_permanent() {
        for error in [
            DbError::Invalid,
            DbError::SyntaxError,
            DbError::ServerError,
            DbError::ConfigError,
        ] {
            assert!(!db_error(error.clone()).is_transient(), "{error:?}");
        }
        let unreadable = [
            ExecutionError::BadQuery(BadQuery::ValuesTooLongForKey(70_000, 65_535)),
            ExecutionError::LastAttemptError(RequestAttemptError::UnexpectedResponse(
                CqlResponseKind::Ready,
            )),
        ];
        for error in unreadable {
            let error = StoreError::cassandra("cannot write device_profile", error);
            assert!(!error.is_transient(), "{error}");
        }
        let prepare = PrepareError::AllAttemptsFailed {
            first_attempt: RequestAttemptError::DbError(DbError::SyntaxError, "line 1".into()),
        };
        assert!(!StoreError::cassandra("cannot prepare", prepare).is_transient());
        let session = NewSessionError::EmptyKnownNodesList;
        assert!(!StoreError::cassandra("cannot connect", session).is_transient());
        let missing = CassandraCause::UnpreparedColumn("city");
        assert!(!StoreError::cassandra("cannot write device_profile", missing).is_transient());
    }

    #[test]
    fn texts_name_the_store_the_context_and_the_driver_error() {
        let error = StoreError::cassandra(
            "cannot write device_profile",
            ExecutionError::RequestTimeout(Duration::from_secs(12)),
        );
        assert_eq!(
            error.to_string(),
            "cassandra: cannot write device_profile: \
             Request execution exceeded a client timeout of 12000ms"
        );
        let error =
            redis_answer("WRONGTYPE Operation against a key holding the wrong kind of value");
        assert!(error.to_string().starts_with("redis: "), "{error}");
        assert!(error.to_string().contains("WRONGTYPE"), "{error}");
    }
}
