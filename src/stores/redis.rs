//! Redis: one server or a Redis Cluster, behind one connection type shared by every task.

use chrono::DateTime;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Script,
    ServerErrorKind, Value,
};
use std::collections::BTreeSet;
use std::time::Duration;

use super::redis_cluster::WatchedCluster;
use super::slots::same_slot_name;
use super::StoreError;
use crate::config::StoreSettings;
use crate::observe::http::ReadinessCheck;
use crate::profile::fields::{map_text, FieldValue, MergeRule, ValueType, FIELDS};
use crate::profile::{LastContact, ProfileUpdate};

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
    pub async fn connect(urls: &str) -> RedisResult<Self> {
        let seeds: Vec<&str> = urls.split(',').map(str::trim).collect();
        let mut unreachable = None;
        for seed in &seeds {
            let client = redis::Client::open(*seed)?;
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
                    WatchedCluster::connect(&seeds, CONNECTION_TIMEOUT, RESPONSE_TIMEOUT).await?;
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

#[derive(Clone)]
pub struct RedisStore {
    connection: RedisConnection,
    device_key_prefix: String,
}

impl RedisStore {
    /// Connects and checks the server answers; start-up fails here when Redis is unreachable.
    pub async fn connect(settings: &StoreSettings) -> Result<Self, StoreError> {
        let connection = RedisConnection::connect(settings.redis_url.expose()).await?;
        let store = RedisStore {
            connection,
            device_key_prefix: settings.redis_device_key_prefix.clone(),
        };
        store.ping().await?;
        Ok(store)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await?;
        Ok(())
    }

    /// A handle for issuing commands; cheap to clone, reconnects by itself.
    pub fn connection(&self) -> RedisConnection {
        self.connection.clone()
    }

    /// Key of the hash of one device: `{REDIS_DEVICE_KEY_PREFIX}{device_id}`.
    pub fn device_key(&self, device_id: &str) -> String {
        format!("{}{device_id}", self.device_key_prefix)
    }

    /// Key of the companion hash holding the per-field versions of one device.
    pub fn device_versions_key(&self, device_id: &str) -> String {
        versions_key(&self.device_key(device_id))
    }
}

/// Key of the versions hash that goes with the device hash `device_key`, in its slot, so that
/// the upsert script may touch both on a cluster: `versions:{device:d-1}` for `device:d-1`
/// (see [`same_slot_name`] for keys holding braces).
pub fn versions_key(device_key: &str) -> String {
    format!("versions:{}", same_slot_name(device_key))
}

/// Writes device profiles into Redis with the upsert and delete scripts, loaded once and
/// invoked by their SHA in one pipeline per batch.
#[derive(Clone)]
pub struct ProfileWriter {
    store: RedisStore,
    upsert_script: Script,
    delete_script: Script,
}

/// The orders both scripts use, loaded in front of each.
const ORDER_LUA: &str = include_str!("profile_order.lua");

impl ProfileWriter {
    /// Loads the scripts on the server so that pipelines can call them by SHA.
    pub async fn load(store: RedisStore) -> Result<Self, StoreError> {
        let writer = ProfileWriter {
            store,
            upsert_script: Script::new(&[ORDER_LUA, include_str!("profile_upsert.lua")].concat()),
            delete_script: Script::new(&[ORDER_LUA, include_str!("profile_delete.lua")].concat()),
        };
        writer.load_scripts().await?;
        Ok(writer)
    }

    async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut connection = self.store.connection();
        for script in [&self.upsert_script, &self.delete_script] {
            script.prepare_invoke().load_async(&mut connection).await?;
        }
        Ok(())
    }

    /// Upserts every update (one script call each, pipelined) and returns, per update in
    /// order, the device's `last_contact` as stored afterwards, or why Redis refused it for
    /// good (a key that is not a hash: the script fails and leaves it alone). A transient
    /// failure of any call fails the whole call, to be retried.
    pub async fn upsert(
        &self,
        updates: &[ProfileUpdate],
    ) -> Result<Vec<Result<Option<LastContact>, StoreError>>, StoreError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut answers = self.run_pipelines(updates).await?;
        // A restarted or flushed server forgot the scripts: load them again and repeat.
        if answers.iter().any(|answer| {
            answer
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::Server(ServerErrorKind::NoScript))
        }) {
            self.load_scripts().await?;
            answers = self.run_pipelines(updates).await?;
        }
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            match answer.map_err(StoreError::from) {
                Ok(stored) => outcomes.push(Ok(stored_last_contact(stored))),
                Err(error) if error.is_transient() => return Err(error),
                Err(refused) => outcomes.push(Err(refused)),
            }
        }
        Ok(outcomes)
    }

    /// Each device's `last_contact` as stored now, in order; `None` for a device without one.
    pub async fn last_contacts(
        &self,
        device_ids: &[&str],
    ) -> Result<Vec<Option<LastContact>>, StoreError> {
        let mut pipeline = redis::pipe();
        for device_id in device_ids {
            pipeline
                .hget(self.store.device_key(device_id), "last_contact")
                .hget(self.store.device_versions_key(device_id), "last_contact");
        }
        let answers: Vec<Option<String>> = self.store.connection().query_all(pipeline).await?;
        Ok(answers
            .chunks(2)
            .map(|pair| match pair {
                [Some(text), Some(micros)] => {
                    stored_last_contact(vec![text.clone(), micros.clone()])
                }
                _ => None,
            })
            .collect())
    }

    /// One answer per update, in order: the deletes in a pipeline of their own first (on a
    /// cluster the calls of one pipeline run at once, and a device's delete must come before
    /// its newer updates of the same batch), then the upserts.
    async fn run_pipelines(
        &self,
        updates: &[ProfileUpdate],
    ) -> RedisResult<Vec<RedisResult<Vec<String>>>> {
        let (deletes, upserts): (Vec<usize>, Vec<usize>) =
            (0..updates.len()).partition(|&index| updates[index].delete);
        let mut answers = Vec::with_capacity(updates.len());
        for group in [deletes, upserts] {
            if group.is_empty() {
                continue;
            }
            let got = self
                .run_pipeline(group.iter().map(|&index| &updates[index]))
                .await?;
            answers.extend(group.into_iter().zip(got));
        }
        answers.sort_by_key(|(index, _)| *index);
        Ok(answers.into_iter().map(|(_, answer)| answer).collect())
    }

    /// One answer per update: a failing script call fails only its own answer.
    async fn run_pipeline(
        &self,
        updates: impl Iterator<Item = &ProfileUpdate>,
    ) -> RedisResult<Vec<RedisResult<Vec<String>>>> {
        let mut pipeline = redis::pipe();
        for update in updates {
            let (script, arguments) = if update.delete {
                (&self.delete_script, delete_arguments(update))
            } else {
                (&self.upsert_script, script_arguments(update))
            };
            let mut invocation = script.prepare_invoke();
            invocation
                .key(self.store.device_key(&update.device_id))
                .key(self.store.device_versions_key(&update.device_id))
                .arg(arguments);
            pipeline.invoke_script(&invocation);
        }
        self.store.connection().query_each(pipeline).await
    }
}

/// How the script resolves one field (see `profile_upsert.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScriptRule {
    Text,
    Int,
    Min,
    LastContact,
}

impl ScriptRule {
    fn of(rule: MergeRule, value_type: ValueType) -> Self {
        match (rule, value_type) {
            (
                MergeRule::NewestVersion | MergeRule::UpdateVersion,
                ValueType::BigInt | ValueType::Timestamp,
            ) => ScriptRule::Int,
            (
                MergeRule::NewestVersion | MergeRule::UpdateVersion,
                ValueType::Text | ValueType::TextMap,
            ) => ScriptRule::Text,
            (MergeRule::Smallest | MergeRule::EarliestDeclaration, _) => ScriptRule::Min,
            (MergeRule::LatestInstant, _) => ScriptRule::LastContact,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ScriptRule::Text => "text",
            ScriptRule::Int => "int",
            ScriptRule::Min => "min",
            ScriptRule::LastContact => "lc",
        }
    }
}

/// The delete script's ARGV: the version, then the fields it removes whatever their version
/// (those ordered by their value, whose Cassandra columns the delete removes whole).
fn delete_arguments(delete: &ProfileUpdate) -> Vec<String> {
    let value_ordered = FIELDS.iter().filter(|spec| spec.rule.is_value_ordered());
    std::iter::once(delete.version.to_string())
        .chain(value_ordered.filter_map(|spec| spec.redis.map(str::to_string)))
        .collect()
}

/// The script's ARGV for one update: version, last contact micros, then (rule, field, value).
fn script_arguments(update: &ProfileUpdate) -> Vec<String> {
    let contact_micros = update
        .last_contact
        .as_ref()
        .map(|contact| contact.at.timestamp_micros().to_string())
        .unwrap_or_default();
    let mut arguments = vec![update.version.to_string(), contact_micros];
    for (rule, field, value) in hash_fields(update) {
        arguments.extend([rule.name().to_string(), field.to_string(), value]);
    }
    arguments
}

/// The hash fields an update carries, named as readers expect (`CONTRACT.md` §3).
fn hash_fields(update: &ProfileUpdate) -> Vec<(ScriptRule, &'static str, String)> {
    FIELDS
        .iter()
        .filter_map(|spec| {
            let name = spec.redis?;
            let value = update.value(spec.field)?;
            Some((
                ScriptRule::of(spec.rule, spec.value_type),
                name,
                hash_value(value),
            ))
        })
        .collect()
}

/// A value as the hash stores it: numbers in decimal, maps as their JSON text.
pub fn hash_value(value: FieldValue<'_>) -> String {
    match value {
        FieldValue::Text(text) => text.into_owned(),
        FieldValue::BigInt(number) | FieldValue::Timestamp(number) => number.to_string(),
        FieldValue::TextMap(map) => map_text(&map),
        FieldValue::LastContact(contact) => contact.text.clone(),
    }
}

/// The script's answer: `[text, micros]` when the device has a last contact.
fn stored_last_contact(answer: Vec<String>) -> Option<LastContact> {
    let [text, micros] = <[String; 2]>::try_from(answer).ok()?;
    let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    Some(LastContact { at, text })
}

impl ReadinessCheck for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.ping().await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::TextField;

    #[test]
    fn script_arguments_carry_the_version_and_a_rule_per_field() {
        let update = ProfileUpdate {
            device_id: "d".into(),
            version: 42,
            text: [
                (TextField::State, "Karnataka's".to_string()),
                (TextField::UserDeclaredState, "KA".to_string()),
            ]
            .into(),
            site_id: Some(2048),
            device_spec: Some([("os".to_string(), "Android".to_string())].into()),
            first_access: Some(7),
            last_contact: Some(LastContact {
                at: DateTime::from_timestamp_micros(1_000_001).unwrap(),
                text: "1970-01-01T00:00:01.000001Z".into(),
            }),
            ..ProfileUpdate::default()
        };
        let expected: Vec<String> = [
            "42",
            "1000001",
            "text",
            "state",
            "Karnataka's",
            "text",
            "user_declared_state",
            "KA",
            "int",
            "site_id",
            "2048",
            "text",
            "devicespec",
            r#"{"os":"Android"}"#,
            "min",
            "firstaccess",
            "7",
            "min",
            "user_declared_on",
            "42",
            "lc",
            "last_contact",
            "1970-01-01T00:00:01.000001Z",
        ]
        .map(String::from)
        .into();
        assert_eq!(script_arguments(&update), expected);
    }

    #[test]
    fn the_script_answer_becomes_the_stored_last_contact() {
        let answer = vec![
            "2020-11-05T13:57:07Z".to_string(),
            "1604584627000000".to_string(),
        ];
        let contact = stored_last_contact(answer).unwrap();
        assert_eq!(contact.text, "2020-11-05T13:57:07Z");
        assert_eq!(contact.at.timestamp(), 1_604_584_627);
        assert_eq!(stored_last_contact(Vec::new()), None);
    }
}
