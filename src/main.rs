//! The command line: `run` the service, and the operator's clients `refresh`, `get`,
//! `profile publish`, `profile rebuild-redis`, `profile verify` and `profile replay-dlq`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use hawkeye_customer_cache::cache::{client, trigger};
use hawkeye_customer_cache::config::{
    ConfigError, KafkaSettings, Rule, ServiceSettings, StoreSettings,
};
use hawkeye_customer_cache::service;
use hawkeye_customer_cache::stores::redis::tls_refusal;
use hawkeye_customer_cache::stores::StoreError;
use hawkeye_customer_cache::tools::replay_dlq::{self, ReplayOptions};
use hawkeye_customer_cache::tools::{publish, rebuild, verify};
use hawkeye_customer_cache::{observe, shutdown};

/// mimalloc rather than glibc's malloc: see `Cargo.toml`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: profile push, cache refresh and cache requests.
    Run(Box<ServiceSettings>),
    /// Ask the running service for a customer cache refresh; prints the trigger's request_id,
    /// which the refresh_succeeded / refresh_failed notification echoes.
    Refresh(Box<KafkaSettings>),
    /// Ask the running service for the customer cache; prints the reply's JSON (chunks
    /// joined). Exit code 0 on a 2xx status, 1 on another status, 2 without a reply.
    Get(Box<GetArgs>),
    /// Device profile tools for operators.
    #[command(subcommand)]
    Profile(ProfileCommand),
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Produce device profile events (JSON objects, one per line) to the first topic of
    /// TOPIC_PROFILE_UPDATES, keyed by device_id; prints how many were sent.
    Publish(Box<PublishArgs>),
    /// Rebuild every device's Redis hash (and its versions hash) from Cassandra's
    /// device_profile, through the service's own upsert: safe while the service runs. Prints
    /// `rebuilt N devices in S s`.
    RebuildRedis(Box<StoreSettings>),
    /// Compare every device in Redis and Cassandra field by field; prints how many differ and
    /// the first differences. Exit code 0 when they agree, 1 when they differ.
    Verify(Box<VerifyArgs>),
    /// Re-publish the dead letters of TOPIC_PROFILE_DLQ (their original key and bytes) to the
    /// profile topic each came from, with headers replayed.from.partition and
    /// replayed.from.offset; reads up to the end offsets at start. Letters without their
    /// value (truncated, tombstones) are skipped and counted.
    ReplayDlq(Box<ReplayDlqArgs>),
}

#[derive(clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    stores: StoreSettings,
    /// Write each differing device from each store into the other, by the merge rules; the
    /// exit code then says whether they still differ.
    #[arg(long)]
    repair: bool,
}

#[derive(clap::Args)]
struct ReplayDlqArgs {
    #[command(flatten)]
    kafka: KafkaSettings,
    /// First offset to read in every partition [default: each partition's earliest].
    #[arg(long)]
    from_offset: Option<i64>,
    /// Print one line per dead letter (partition/offset, key, reason, what would be done) and
    /// send nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct PublishArgs {
    #[command(flatten)]
    kafka: KafkaSettings,
    /// File of events, or `-` for standard input.
    #[arg(default_value = "-")]
    file: String,
}

#[derive(clap::Args)]
struct GetArgs {
    #[command(flatten)]
    kafka: KafkaSettings,
    /// Only devices whose last contact is strictly after this datetime (RFC 3339, or a naive
    /// datetime read in the service's TIMEZONE).
    #[arg(long)]
    last_contact_filter: Option<String>,
    /// Seconds to wait for the whole reply.
    #[arg(long, default_value = "30", value_parser = Rule(positive_seconds))]
    timeout: std::time::Duration,
    /// Topic to receive the reply on [default: TOPIC_REPLY].
    #[arg(long)]
    reply_topic: Option<String>,
}

fn positive_seconds(text: &str) -> Result<std::time::Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds.is_finite() => {
            Ok(std::time::Duration::from_secs_f64(seconds))
        }
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

/// Exit code of a setting that is missing or malformed.
const EXIT_BAD_SETTING: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return command_line_error(&e),
    };
    observe::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match cli.command {
        Command::Run(args) => {
            let settings = match args.validate() {
                Ok(settings) => settings,
                Err(e) => return bad_setting(&e),
            };
            runtime.block_on(async {
                let token = match shutdown::on_signal() {
                    Ok(token) => token,
                    Err(e) => return fail(&format!("cannot install signal handlers: {e}")),
                };
                match service::run(settings, token).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(&format!("{e:#}")),
                }
            })
        }
        Command::Refresh(args) => refresh(&runtime, &args),
        Command::Get(args) => get(&runtime, &args),
        Command::Profile(ProfileCommand::Publish(args)) => publish_profiles(&runtime, &args),
        Command::Profile(ProfileCommand::RebuildRedis(settings)) => match settings.validate() {
            Ok(()) => rebuild_redis(&runtime, &settings),
            Err(e) => bad_setting(&e),
        },
        Command::Profile(ProfileCommand::Verify(args)) => match args.stores.validate() {
            Ok(()) => verify_profiles(&runtime, &args.stores, args.repair),
            Err(e) => bad_setting(&e),
        },
        Command::Profile(ProfileCommand::ReplayDlq(args)) => replay_dead_letters(&runtime, &args),
    }
}

/// `profile replay-dlq`: progress on stderr, a one-line summary on stdout.
fn replay_dead_letters(runtime: &tokio::runtime::Runtime, args: &ReplayDlqArgs) -> ExitCode {
    let options = ReplayOptions {
        from_offset: args.from_offset,
        dry_run: args.dry_run,
    };
    let started = std::time::Instant::now();
    match runtime.block_on(replay_dlq::replay(&args.kafka, options)) {
        Ok(count) => {
            let verb = if args.dry_run {
                "would replay"
            } else {
                "replayed"
            };
            println!(
                "{verb} {} dead letters ({} skipped) in {:.1} s",
                count.replayed,
                count.skipped,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// `profile rebuild-redis`: progress on stderr, the summary on stdout.
fn rebuild_redis(runtime: &tokio::runtime::Runtime, settings: &StoreSettings) -> ExitCode {
    let rebuilt = match runtime.block_on(rebuild::rebuild_redis(settings)) {
        Ok(rebuilt) => rebuilt,
        Err(e) => return store_failure("rebuild-redis", &e),
    };
    println!(
        "rebuilt {} devices in {:.1} s",
        rebuilt.devices,
        rebuilt.elapsed.as_secs_f64()
    );
    match rebuilt.refused.first_key_value() {
        None => ExitCode::SUCCESS,
        Some((device_id, error)) => fail(&format!(
            "Redis refused {} devices, e.g. {device_id:?}: {error}",
            rebuilt.refused.len()
        )),
    }
}

/// `profile verify [--repair]`: the count and the first differences on stdout.
fn verify_profiles(
    runtime: &tokio::runtime::Runtime,
    settings: &StoreSettings,
    repair: bool,
) -> ExitCode {
    let verified = match runtime.block_on(verify::verify(settings, repair)) {
        Ok(verified) => verified,
        Err(e) => return store_failure("verify", &e),
    };
    println!(
        "{} of {} devices differ",
        verified.differing.len(),
        verified.devices_checked
    );
    for difference in &verified.shown {
        println!(
            "device {:?} field {}: redis {} cassandra {}",
            difference.device_id,
            difference.field,
            shown_value(difference.redis.as_deref()),
            shown_value(difference.cassandra.as_deref()),
        );
    }
    let differing = match &verified.still_differing {
        Some(still) => {
            println!(
                "repaired {} devices, {} still differ",
                verified.differing.len() - still.len(),
                still.len()
            );
            still
        }
        None => &verified.differing,
    };
    if !verified.legacy_timestamps.is_empty() {
        println!(
            "{} devices hold cells in the first timestamp encoding, which ScyllaDB refuses to \
             update: rewrite them as the README's \"Upgrading stored rows\" says",
            verified.legacy_timestamps.len()
        );
    }
    if differing.is_empty() && verified.legacy_timestamps.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A tool's store error in one line; a TLS handshake Redis refused names the setting to check.
fn store_failure(tool: &str, error: &StoreError) -> ExitCode {
    match tls_refusal(error) {
        Some(what) => fail(&format!("{tool}: {what}: {error}")),
        None => fail(&format!("{tool}: {error}")),
    }
}

fn shown_value(value: Option<&str>) -> String {
    value.map_or_else(|| "(none)".to_string(), |value| format!("{value:?}"))
}

/// Exit code of `get` when no reply came (timeout, Kafka unreachable).
const EXIT_NO_REPLY: u8 = 2;

/// `get`: one cache request; the reply's JSON on stdout.
fn get(runtime: &tokio::runtime::Runtime, args: &GetArgs) -> ExitCode {
    let options = client::GetOptions {
        last_contact_filter: args.last_contact_filter.clone(),
        timeout: args.timeout,
        reply_topic: args.reply_topic.clone(),
    };
    match runtime.block_on(client::get(&args.kafka, &options)) {
        Ok(answer) => {
            println!("{}", answer.json);
            if (200..300).contains(&answer.status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            fail(&e.to_string());
            ExitCode::from(EXIT_NO_REPLY)
        }
    }
}

/// `refresh`: publishes one trigger on `TOPIC_REFRESH` and prints its request_id on stdout.
fn refresh(runtime: &tokio::runtime::Runtime, settings: &KafkaSettings) -> ExitCode {
    match runtime.block_on(trigger::send_trigger(settings)) {
        Ok(request_id) => {
            println!("{request_id}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// `profile publish`: sends the events of a file (or stdin) and prints how many were sent.
fn publish_profiles(runtime: &tokio::runtime::Runtime, args: &PublishArgs) -> ExitCode {
    let settings = &args.kafka;
    let Some(topic) = settings.topics.profile_updates.first() else {
        return fail("TOPIC_PROFILE_UPDATES names no topic");
    };
    let sent = if args.file == "-" {
        runtime.block_on(publish::publish(settings, topic, std::io::stdin().lock()))
    } else {
        match std::fs::File::open(&args.file) {
            Ok(file) => runtime.block_on(publish::publish(
                settings,
                topic,
                std::io::BufReader::new(file),
            )),
            Err(e) => return fail(&format!("cannot open {}: {e}", args.file)),
        }
    };
    match sent {
        Ok(count) => {
            println!("sent {count} events to {topic}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// A value a setting's rule rejected is one line naming the setting (exit 2); clap's own
/// messages (help, version, unknown flags) are printed as clap prints them.
fn command_line_error(error: &clap::Error) -> ExitCode {
    match ConfigError::of_clap_error(error) {
        Some(bad) => bad_setting(bad),
        None => error.exit(),
    }
}

fn bad_setting(error: &ConfigError) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(EXIT_BAD_SETTING)
}

/// Prints the error as one line on stderr (causes joined by `: `) and exits with 1.
fn fail(message: &str) -> ExitCode {
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("error: {one_line}");
    ExitCode::FAILURE
}
