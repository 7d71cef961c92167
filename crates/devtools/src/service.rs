//! The service under test or measurement: the settings and environment of one isolated
//! instance (its own topics, group, Redis prefixes and HTTP port) on the local stack, the
//! `hawkeye-customer-cache` child process ([`ServiceProcess`], the one harness of the tests and
//! the benchmark), and what `/proc` tells of it and of the stack's servers.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::LazyLock;

use anyhow::Context;

use hawkeye_customer_cache::config::{KafkaSettings, StoreSettings, Topics};

mod process;

pub use process::{built_binary, run_command, Exit, ServiceProcess};

/// The keyspace of isolated services (device ids and Redis keys are unique per service; the
/// integration tests use their own keyspace).
pub const KEYSPACE: &str = "hcc_bench";

/// Endpoints of the stack the service and the harness use.
#[derive(Debug, Clone)]
pub struct Stack {
    pub kafka_brokers: String,
    pub redis_url: String,
    pub cassandra_nodes: String,
}

/// Memory of a process, in MiB: resident now, and the peak since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Memory {
    pub rss_mib: f64,
    pub peak_mib: f64,
}

/// The Kafka settings of the isolated service `name`: its own group and topics (one profile
/// topic), all named `{name}.…`.
pub fn isolated_kafka(stack: &Stack, name: &str) -> KafkaSettings {
    let topic = |what: &str| format!("{name}.{what}");
    let topics = Topics {
        profile_updates: vec![topic("profile.updates")],
        profile_dlq: topic("profile.updates.dlq"),
        refresh: topic("refresh"),
        get: topic("get"),
        reply: topic("reply"),
        notifications: topic("notifications"),
    };
    KafkaSettings::new(&stack.kafka_brokers, topic("group"), topics)
}

/// The store settings of the isolated service `name`: its own Redis prefixes, in the
/// benchmark keyspace.
pub fn isolated_stores(stack: &Stack, name: &str) -> StoreSettings {
    let nodes = stack
        .cassandra_nodes
        .split(',')
        .map(str::to_string)
        .collect();
    StoreSettings {
        redis_device_key_prefix: format!("{name}:device:"),
        cassandra_keyspace: KEYSPACE.to_string(),
        environment_name: name.to_string(),
        ..StoreSettings::new(&stack.redis_url, nodes)
    }
}

/// The environment of the isolated service `name` (unique per run): the settings of
/// [`isolated_kafka`] and [`isolated_stores`], a free HTTP port, and unreachable APIs.
pub fn isolated_env(stack: &Stack, name: &str) -> HashMap<String, String> {
    let kafka = isolated_kafka(stack, name);
    let stores = isolated_stores(stack, name);
    let topics = kafka.topics;
    [
        ("KAFKA_BROKERS", kafka.brokers),
        ("KAFKA_GROUP_ID", kafka.group_id),
        ("TOPIC_PROFILE_UPDATES", topics.profile_updates.join(",")),
        ("TOPIC_PROFILE_DLQ", topics.profile_dlq),
        ("TOPIC_REFRESH", topics.refresh),
        ("TOPIC_GET", topics.get),
        ("TOPIC_REPLY", topics.reply),
        ("TOPIC_NOTIFICATIONS", topics.notifications),
        ("REDIS_URL", stack.redis_url.clone()),
        ("CASSANDRA_NODES", stack.cassandra_nodes.clone()),
        ("CASSANDRA_KEYSPACE", stores.cassandra_keyspace),
        ("ENVIRONMENT_NAME", stores.environment_name),
        ("REDIS_DEVICE_KEY_PREFIX", stores.redis_device_key_prefix),
        ("HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
        // Unreachable: the refresh measurement points these at the simulator.
        ("HAWKEYE_BASE_URL", "http://127.0.0.1:9/".to_string()),
        ("HAWKEYE_USERNAME", "bench".to_string()),
        ("HAWKEYE_PASSWORD", "bench".to_string()),
        ("BRUIN_BASE_URL", "http://127.0.0.1:9/".to_string()),
        ("BRUIN_LOGIN_URL", "http://127.0.0.1:9/".to_string()),
        ("BRUIN_CLIENT_ID", "bench".to_string()),
        ("BRUIN_CLIENT_SECRET", "bench".to_string()),
        ("RUST_LOG", "warn".to_string()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value))
    .collect()
}

/// A loopback port that was free a moment ago (9899 if none could be found: the service then
/// names the port it cannot bind). It lies below the kernel's ephemeral range (32768 and up):
/// a port from there could be taken by any outgoing connection, a Kafka client's say, between
/// this check and the service's bind, which once failed a CI run. Ports are handed out in turn
/// from a random start, so two tests of one process never get the same one.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_768;
    static NEXT: LazyLock<AtomicU16> = LazyLock::new(|| {
        let seed = RandomState::new().build_hasher().finish();
        AtomicU16::new((seed % u64::from(COUNT)) as u16)
    });
    (0..COUNT)
        .map(|_| FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % COUNT)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .unwrap_or(9899)
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, fixed at 100 by the kernel ABI).
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// CPU seconds (user + system, `utime` + `stime`) process `pid` has used so far.
pub fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_cpu_seconds(&stat).with_context(|| format!("no CPU times in {path}"))
}

/// `utime` + `stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, in seconds. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // After the name, field 3 (state) comes first: field n is at n - 3.
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / CLOCK_TICKS_PER_S)
}

/// The pid of the stack's Cassandra: `chosen`, else the one `java` process whose main class is
/// `CassandraDaemon`; `None` when there is none or more than one (another stack).
pub fn cassandra_pid(chosen: Option<u32>) -> Option<u32> {
    chosen.or_else(|| only_process(|cmdline| runs_java_class(cmdline, b".CassandraDaemon")))
}

/// The pid of the stack's Kafka: the one `java` process whose main class is `kafka.Kafka`.
pub fn kafka_pid() -> Option<u32> {
    only_process(|cmdline| runs_java_class(cmdline, b"kafka.Kafka"))
}

/// The pid of the one `redis-server` listening on `port` (its title names the address).
pub fn redis_pid(port: u16) -> Option<u32> {
    only_process(|cmdline| runs_redis_on(cmdline, port))
}

/// The pid of the only process whose `/proc/<pid>/cmdline` `matches`; `None` when there is
/// none or more than one.
fn only_process(matches: impl Fn(&[u8]) -> bool) -> Option<u32> {
    let mut found = std::fs::read_dir("/proc").ok()?.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        matches(&cmdline).then_some(pid)
    });
    let pid = found.next()?;
    found.next().is_none().then_some(pid)
}

/// CPU seconds the whole machine has been busy so far, summed over its cores (`/proc/stat`).
pub fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    parse_busy_seconds(&stat).context("no cpu line in /proc/stat")
}

/// The first (`cpu`, all cores) line's user, nice, system, irq, softirq and steal times, in
/// seconds: everything but idle and iowait (guest time is already counted in user).
fn parse_busy_seconds(stat: &str) -> Option<f64> {
    let mut fields = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace();
    let mut ticks = [0u64; 8];
    for tick in &mut ticks {
        *tick = fields.next()?.parse().ok()?;
    }
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = ticks;
    Some((user + nice + system + irq + softirq + steal) as f64 / CLOCK_TICKS_PER_S)
}

/// The highest JIT tier the JVM `pid` may use when its arguments limit it
/// (`-XX:TieredStopAtLevel=N`, the last one wins); `None` when unlimited or unreadable.
pub fn jit_tier_limit(pid: u32) -> Option<u32> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    tier_limit(&cmdline)
}

fn tier_limit(cmdline: &[u8]) -> Option<u32> {
    let limit = cmdline
        .split(|&byte| byte == 0)
        .filter_map(|arg| arg.strip_prefix(b"-XX:TieredStopAtLevel="))
        .next_back()?;
    std::str::from_utf8(limit).ok()?.parse().ok()
}

/// Whether a `/proc/<pid>/cmdline` (NUL-separated arguments) is a JVM whose main class ends
/// with `class`, not merely a command naming it (a `pgrep -f CassandraDaemon`).
fn runs_java_class(cmdline: &[u8], class: &[u8]) -> bool {
    let mut args = cmdline.split(|&byte| byte == 0);
    let is_java = args
        .next()
        .is_some_and(|program| program.ends_with(b"java"));
    is_java && args.any(|arg| arg.ends_with(class))
}

/// Whether a cmdline is a `redis-server` on `port`: the server sets its title to
/// `redis-server host:port` (`*:port` when it listens on every address).
fn runs_redis_on(cmdline: &[u8], port: u16) -> bool {
    let title = cmdline.split(|&byte| byte == 0).next().unwrap_or_default();
    let Ok(title) = std::str::from_utf8(title) else {
        return false;
    };
    let mut words = title.split_whitespace();
    words
        .next()
        .is_some_and(|program| program.ends_with("redis-server"))
        && words
            .next()
            .and_then(|address| address.rsplit_once(':'))
            .is_some_and(|(_, listening)| listening == port.to_string())
}

/// VmRSS and VmHWM (kB in the file) of a `/proc/<pid>/status` text, in MiB.
fn parse_memory(status: &str) -> Memory {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(0.0, |kib| kib / 1024.0)
    };
    Memory {
        rss_mib: field("VmRSS:"),
        peak_mib: field("VmHWM:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_tiered_stop_level_of_a_jvm_counts() {
        let cmdline = b"java\0-XX:TieredStopAtLevel=1\0-Xmx1g\0-XX:TieredStopAtLevel=4\0Main\0";
        assert_eq!(tier_limit(cmdline), Some(4));
        assert_eq!(
            tier_limit(b"java\0-XX:TieredStopAtLevel=1\0Main\0"),
            Some(1)
        );
        assert_eq!(tier_limit(b"java\0-Xmx1g\0Main\0"), None);
    }

    #[test]
    fn memory_comes_from_vm_rss_and_vm_hwm() {
        let status =
            "Name:\thawkeye\nVmPeak:\t 900000 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(
            parse_memory(status),
            Memory {
                rss_mib: 100.0,
                peak_mib: 200.0
            }
        );
    }

    #[test]
    fn cpu_seconds_are_utime_plus_stime_counted_after_the_name() {
        let stat = "2566 (java (x) y) S 1 2 3 4 5 6 7 8 9 10 250 150 11 12 20 0";
        assert_eq!(parse_cpu_seconds(stat), Some(4.0));
        assert_eq!(parse_cpu_seconds("2566 (java) S 1 2"), None);
        assert!(process_cpu_seconds(std::process::id()).is_ok());
    }

    #[test]
    fn cassandra_is_a_jvm_whose_main_class_is_the_daemon() {
        let jvm = b"/usr/bin/java\0-Xmx1G\0org.apache.cassandra.service.CassandraDaemon\0";
        assert!(runs_java_class(jvm, b".CassandraDaemon"));
        assert!(!runs_java_class(jvm, b"kafka.Kafka"));
        assert!(!runs_java_class(
            b"pgrep\0-f\0CassandraDaemon\0",
            b".CassandraDaemon"
        ));
        assert!(!runs_java_class(
            b"/usr/bin/java\0-jar\0kafka.jar\0",
            b".CassandraDaemon"
        ));
    }

    #[test]
    fn redis_is_the_server_whose_title_names_the_port() {
        assert!(runs_redis_on(b"redis-server 127.0.0.1:16379\0\0", 16379));
        assert!(runs_redis_on(b"/usr/bin/redis-server *:6379\0", 6379));
        assert!(!runs_redis_on(b"redis-server 127.0.0.1:16379\0", 6379));
        assert!(!runs_redis_on(b"redis-server 127.0.0.1:163790\0", 16379));
        assert!(!runs_redis_on(b"redis-cli\0-h\0localhost:16379\0", 16379));
    }

    #[test]
    fn the_machine_is_busy_for_all_but_idle_and_iowait() {
        let stat = "cpu  100 20 30 4000 50 6 7 8 9 0\ncpu0 50 10 15 2000 25 3 3 4 0 0\n";
        let busy = parse_busy_seconds(stat).unwrap();
        assert!((busy - 1.71).abs() < 1e-9, "{busy}");
        assert_eq!(parse_busy_seconds("intr 1 2 3\n"), None);
    }

    #[test]
    fn every_name_of_an_isolated_service_carries_its_prefix() {
        let stack = Stack {
            kafka_brokers: "k:1".into(),
            redis_url: "redis://r:2/0".into(),
            cassandra_nodes: "c:3".into(),
        };
        let env = isolated_env(&stack, "bench_x.push");
        assert_eq!(env["TOPIC_GET"], "bench_x.push.get");
        assert_eq!(env["TOPIC_PROFILE_UPDATES"], "bench_x.push.profile.updates");
        assert_eq!(env["KAFKA_GROUP_ID"], "bench_x.push.group");
        assert_eq!(env["REDIS_DEVICE_KEY_PREFIX"], "bench_x.push:device:");
        assert_eq!(env["KAFKA_BROKERS"], "k:1");
        assert_eq!(env["CASSANDRA_NODES"], "c:3");
        assert_eq!(
            isolated_stores(&stack, "bench_x.push").cassandra_nodes,
            ["c:3"]
        );
    }
}
