//! One connection type for a Redis server and a Redis Cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};

use super::cluster::WatchedCluster;
use super::tls::Tls;
use crate::config::RedisTls;

const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands of one [`RedisConnection::query_each`] in flight at once on a cluster.
const CLUSTER_COMMANDS_IN_FLIGHT: usize = 512;

/// A connection to one Redis server (reconnecting by itself) or to a Redis Cluster (the
/// cluster client: it follows `MOVED`/`ASK`, refreshes its slot map after a failover and
/// reconnects to the new masters; replaced when it stalls, see [`WatchedCluster`]). Cheap to
/// clone; every clone shares the connections.
#[derive(Clone)]
pub enum RedisConnection {
    Server(ConnectionManager),
    Cluster(WatchedCluster),
}

impl RedisConnection {
    /// Connects to `urls` (one `redis://` URL, or several separated by commas: seed nodes of a
    /// cluster). The first seed that answers says whether it is a cluster (`INFO cluster`).
    /// `rediss://` URLs: the system's roots, no client certificate.
    pub async fn connect(urls: &str) -> RedisResult<Self> {
        Self::connect_with_tls(urls, &RedisTls::default()).await
    }

    /// [`Self::connect`] with the TLS files of `tls` for every server (`rediss://` URLs): the
    /// server of one URL and every node of a cluster.
    pub async fn connect_with_tls(urls: &str, tls: &RedisTls) -> RedisResult<Self> {
        let tls = Tls::load(tls)?;
        let seeds: Vec<&str> = urls.split(',').map(str::trim).collect();
        let mut unreachable = None;
        for seed in &seeds {
            let client = tls.client(seed)?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECTION_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            let info: String = match client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(mut probe) => {
                    redis::cmd("INFO")
                        .arg("cluster")
                        .query_async(&mut probe)
                        .await?
                }
                Err(error) if error.kind() == ErrorKind::Io => {
                    unreachable = Some(error);
                    continue;
                }
                Err(refused) => return Err(refused),
            };
            if info.lines().any(|line| line.trim() == "cluster_enabled:1") {
                let cluster =
                    WatchedCluster::connect(&seeds, &tls, CONNECTION_TIMEOUT, RESPONSE_TIMEOUT)
                        .await?;
                return Ok(RedisConnection::Cluster(cluster));
            }
            if seeds.len() > 1 {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "several URLs are seed nodes of a Redis Cluster, but this server is not part of one",
                )));
            }
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECTION_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(2);
            let manager = client.get_connection_manager_with_config(config).await?;
            return Ok(RedisConnection::Server(manager));
        }
        Err(unreachable.unwrap_or_else(|| (ErrorKind::InvalidClientConfig, "no URL").into()))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }

    /// Runs the independent commands of `pipeline` (no transaction, any keys) and returns one
    /// answer per command, in order: a command that fails fails only its own answer. One
    /// server: one pipeline, one round trip. A cluster: a pipeline may not span slots, so each
    /// command goes on its own, many at once; the cluster client multiplexes them over one
    /// connection per master, and they cost about the same round trips.
    pub async fn query_each<T: FromRedisValue>(
        &mut self,
        mut pipeline: Pipeline,
    ) -> RedisResult<Vec<RedisResult<T>>> {
        match self {
            RedisConnection::Server(server) => {
                pipeline.ignore_errors();
                pipeline.query_async(server).await
            }
            RedisConnection::Cluster(cluster) => {
                // Owned commands: futures that borrow the pipeline would not be `Send` for
                // every lifetime, as the service's spawned tasks need.
                let calls = pipeline.cmd_iter().cloned().map(|command| {
                    let mut cluster = cluster.clone();
                    async move { command.query_async::<T>(&mut cluster).await }
                });
                let answers = futures::stream::iter(calls)
                    .buffered(CLUSTER_COMMANDS_IN_FLIGHT)
                    .collect()
                    .await;
                Ok(answers)
            }
        }
    }

    /// As [`Self::query_each`], for commands that must all succeed: every answer in order, or
    /// the first failure.
    pub async fn query_all<T: FromRedisValue>(
        &mut self,
        pipeline: Pipeline,
    ) -> RedisResult<Vec<T>> {
        self.query_each(pipeline).await?.into_iter().collect()
    }

    /// Every key matching the glob `pattern`, `count` per `SCAN` round trip (keys written
    /// meanwhile may or may not be listed); on a cluster, of every master.
    pub async fn scan_keys(&mut self, pattern: &str, count: usize) -> RedisResult<Vec<String>> {
        let cluster = match self {
            RedisConnection::Server(server) => {
                return scan_node(pattern, count, |scan| {
                    let mut server = server.clone();
                    async move { scan.query_async(&mut server).await }.boxed()
                })
                .await
            }
            RedisConnection::Cluster(cluster) => cluster,
        };
        let mut found = Vec::new();
        for (host, port) in cluster_masters(cluster).await? {
            let keys = scan_node(pattern, count, |scan| {
                let cluster = cluster.clone();
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port,
                });
                async move {
                    let answer = cluster.route_command(scan, routing).await?;
                    Ok(redis::from_redis_value(answer)?)
                }
                .boxed()
            })
            .await?;
            found.extend(keys);
        }
        Ok(found)
    }
}

/// One node's `SCAN` rounds, each sent by `send`.
async fn scan_node(
    pattern: &str,
    count: usize,
    send: impl Fn(Cmd) -> BoxFuture<'static, RedisResult<(u64, Vec<String>)>>,
) -> RedisResult<Vec<String>> {
    let mut cursor = 0_u64;
    let mut found = Vec::new();
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        let (next, keys) = send(scan).await?;
        found.extend(keys);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

/// The address of every master of the cluster, from `CLUSTER SLOTS` (each slot range names
/// its master first: host, port, id).
async fn cluster_masters(cluster: &mut WatchedCluster) -> RedisResult<BTreeSet<(String, u16)>> {
    let ranges: Vec<Vec<Value>> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(cluster)
        .await?;
    let mut masters = BTreeSet::new();
    for range in ranges {
        let Some(master) = range.into_iter().nth(2) else {
            return Err((
                ErrorKind::UnexpectedReturnType,
                "CLUSTER SLOTS without a master",
            )
                .into());
        };
        let mut node = redis::from_redis_value::<Vec<Value>>(master)?.into_iter();
        let (Some(host), Some(port)) = (node.next(), node.next()) else {
            return Err((
                ErrorKind::UnexpectedReturnType,
                "CLUSTER SLOTS without an address",
            )
                .into());
        };
        masters.insert((
            redis::from_redis_value(host)?,
            redis::from_redis_value(port)?,
        ));
    }
    Ok(masters)
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Server(server) => server.req_packed_command(cmd),
            RedisConnection::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Server(server) => server.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(cluster) => {
                cluster.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Server(server) => server.get_db(),
            RedisConnection::Cluster(cluster) => cluster.get_db(),
        }
    }
}
