//! The Redis Cluster connection, watched. The cluster client of the `redis` crate (1.8) has been
//! seen to stop answering for good after a master restarted: the cluster was ok again, yet
//! every command of the service timed out for minutes (fault suite in CI, 2026-12-03). Its
//! recovery runs inside the client, out of our reach, so the service watches the answers: when
//! no command has had an answer from any node for [`STALL_LIMIT`] and commands time out, the
//! connection is replaced by a fresh one from the seed nodes. Commands of the old one fail as
//! timeouts, a transient error that their callers retry like any other.

use redis::aio::ConnectionLike;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::RoutingInfo;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::tls::Tls;
use crate::sync;

/// How long the cluster may give no answer at all, while commands time out, before the
/// connection is replaced. Longer than a command's response timeout, so that one slow command
/// among answered ones never counts.
const STALL_LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct WatchedCluster {
    shared: Arc<Shared>,
}

struct Shared {
    /// The client of the seed nodes: each connection it opens starts afresh.
    client: ClusterClient,
    /// Bound of one [`open`].
    open_limit: Duration,
    current: RwLock<ClusterConnection>,
    watch: Mutex<Watch>,
}

struct Watch {
    last_answer: Instant,
    last_replacement: Option<Instant>,
}

impl Watch {
    /// Notes one command's outcome at `now` and says whether to replace the connection: a
    /// timeout after nothing answered for the stall limit, when no replacement was tried within
    /// it (one at a time, not one per timed-out command). Anything else, a server's error reply
    /// too, is an answer.
    fn note(&mut self, timed_out: bool, now: Instant) -> bool {
        if !timed_out {
            self.last_answer = now;
            return false;
        }
        let stalled = now.duration_since(self.last_answer) >= STALL_LIMIT;
        let tried_lately = self
            .last_replacement
            .is_some_and(|at| now.duration_since(at) < STALL_LIMIT);
        if stalled && !tried_lately {
            self.last_replacement = Some(now);
            return true;
        }
        false
    }
}

impl WatchedCluster {
    pub(super) async fn connect(
        seeds: &[&str],
        tls: &Tls,
        connection_timeout: Duration,
        response_timeout: Duration,
    ) -> RedisResult<Self> {
        let builder = ClusterClientBuilder::new(seeds.to_vec())
            .connection_timeout(connection_timeout)
            .response_timeout(response_timeout);
        let client = tls.cluster(builder).build()?;
        let open_limit = connection_timeout + response_timeout;
        let connection = open(&client, open_limit).await?;
        Ok(WatchedCluster {
            shared: Arc::new(Shared {
                client,
                open_limit,
                current: RwLock::new(connection),
                watch: Mutex::new(Watch {
                    last_answer: Instant::now(),
                    last_replacement: None,
                }),
            }),
        })
    }

    /// Sends `cmd` to the node `routing` names.
    pub async fn route_command(&self, cmd: Cmd, routing: RoutingInfo) -> RedisResult<Value> {
        let outcome = self.current().route_command(cmd, routing).await;
        self.observe(outcome).await
    }

    fn current(&self) -> ClusterConnection {
        sync::read(&self.shared.current).clone()
    }

    /// Notes what a command got back and, on a timeout after a stall, replaces the connection
    /// before handing the outcome on.
    async fn observe<T>(&self, outcome: RedisResult<T>) -> RedisResult<T> {
        let timed_out = outcome.as_ref().is_err_and(RedisError::is_timeout);
        let replace = sync::lock(&self.shared.watch).note(timed_out, Instant::now());
        if replace {
            self.replace().await;
        }
        outcome
    }

    async fn replace(&self) {
        let shared = &self.shared;
        tracing::warn!(
            stalled_s = STALL_LIMIT.as_secs(),
            "no answer from the Redis Cluster while commands time out; reconnecting from the seed nodes"
        );
        match open(&shared.client, shared.open_limit).await {
            Ok(fresh) => {
                *sync::write(&shared.current) = fresh;
                tracing::info!("reconnected to the Redis Cluster");
            }
            Err(error) => {
                tracing::warn!(%error, "cannot reconnect to the Redis Cluster yet");
            }
        }
    }
}

/// A new cluster connection (its own slot map and node connections), within `limit`: the
/// client's own connect has no overall limit (redis-rs issue #1953).
async fn open(client: &ClusterClient, limit: Duration) -> RedisResult<ClusterConnection> {
    match tokio::time::timeout(limit, client.get_async_connection()).await {
        Ok(connected) => connected,
        Err(_) => Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        ))),
    }
}

impl ConnectionLike for WatchedCluster {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let outcome = self.current().req_packed_command(cmd).await;
            self.observe(outcome).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let outcome = self
                .current()
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.observe(outcome).await
        })
    }

    fn get_db(&self) -> i64 {
        self.current().get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMED_OUT: bool = true;
    const ANSWERED: bool = false;

    fn watch_started(now: Instant) -> Watch {
        Watch {
            last_answer: now,
            last_replacement: None,
        }
    }

    #[test]
    fn timeouts_within_the_stall_limit_keep_the_connection() {
        let start = Instant::now();
        let mut watch = watch_started(start);
        assert!(!watch.note(TIMED_OUT, start + Duration::from_secs(29)));
    }

    #[test]
    fn a_stall_replaces_the_connection_once_per_stall_limit() {
        let start = Instant::now();
        let mut watch = watch_started(start);
        assert!(watch.note(TIMED_OUT, start + Duration::from_secs(31)));
        assert!(!watch.note(TIMED_OUT, start + Duration::from_secs(40)));
        assert!(watch.note(TIMED_OUT, start + Duration::from_secs(62)));
    }

    #[test]
    fn an_answer_restarts_the_stall_clock() {
        let start = Instant::now();
        let mut watch = watch_started(start);
        assert!(!watch.note(ANSWERED, start + Duration::from_secs(25)));
        assert!(!watch.note(TIMED_OUT, start + Duration::from_secs(50)));
        assert!(watch.note(TIMED_OUT, start + Duration::from_secs(56)));
    }
}
