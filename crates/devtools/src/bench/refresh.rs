//! Measurement 3: customer cache refresh time against the simulator with a fixed latency per call,
//! next to the ideal `devices × 2 calls × latency / concurrency` and the original's sequential
//! design (`BRUIN_CONCURRENCY=1`). Memory: the service's peak RSS during the refreshes.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::StreamConsumer;

use hawkeye_customer_cache::kafka::client_log::ClientLog;
use rdkafka::message::Message;
use serde_json::Value;

use super::table::{median, thousands, Row};
use super::{Bench, Report, MEMORY_TARGET_MIB};
use crate::service::{isolated_env, isolated_kafka, Memory};
use crate::sim::{SimConfig, Simulator};
use hawkeye_customer_cache::cache::client::listen_at_end;
use hawkeye_customer_cache::cache::trigger::send_trigger;

const LATENCY_MS: u64 = 20;
/// The service's default `BRUIN_CONCURRENCY`.
const CONCURRENCY: usize = 64;
/// Fleets this large are refreshed once (a run takes about a minute).
const LARGE_FLEET: usize = 50_000;
const REFRESH_TIMEOUT: Duration = Duration::from_secs(900);
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The refresh may take at most this many times the ideal (issue 14: it must not regress).
const TARGET_RATIO: f64 = 1.2;

/// The ideal: every device makes two Bruin calls, `concurrency` at a time.
fn ideal_seconds(devices: usize, concurrency: usize) -> f64 {
    devices as f64 * 2.0 * LATENCY_MS as f64 / 1000.0 / concurrency as f64
}

/// What the refreshes of one fleet took.
struct Refreshes {
    seconds: Vec<f64>,
    /// Bruin calls (inventory + attribute) of the first refresh.
    bruin_calls: u64,
    kept: u64,
    memory: Memory,
}

pub async fn measure(bench: &Bench) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut per_device_concurrent = None;
    for &devices in &bench.sizes.refresh_devices {
        let repetitions = if devices >= LARGE_FLEET {
            1
        } else {
            bench.sizes.repetitions
        };
        let runs = refreshes(bench, devices, CONCURRENCY, repetitions).await?;
        let seconds = median(&runs.seconds);
        per_device_concurrent.get_or_insert(seconds / devices as f64);
        let ideal = ideal_seconds(devices, CONCURRENCY);
        let fleet = thousands(devices as f64);
        report.rows.push(
            Row::new(
                format!(
                    "refresh: {fleet} devices, {LATENCY_MS} ms/call, concurrency {CONCURRENCY}"
                ),
                format!("{seconds:.2} s"),
            )
            .baseline(format!("ideal {ideal:.2} s"), seconds / ideal)
            .target(
                format!("<= {TARGET_RATIO}x"),
                seconds <= TARGET_RATIO * ideal,
            ),
        );
        report.rows.push(
            Row::new(
                format!("memory: peak RSS during refresh of {fleet}"),
                format!("{:.0} MiB", runs.memory.peak_mib),
            )
            .target(
                format!("< {MEMORY_TARGET_MIB:.0} MiB"),
                runs.memory.peak_mib < MEMORY_TARGET_MIB,
            ),
        );
        let by_calls = runs.bruin_calls as f64 * LATENCY_MS as f64 / 1000.0 / CONCURRENCY as f64;
        report.notes.push(format!(
            "refresh {fleet}: {} run(s) {:?} s, {} devices kept; {} Bruin calls were made (the \
             contacted devices only), so the ideal by calls made is {by_calls:.2} s ({:.2}x)",
            runs.seconds.len(),
            runs.seconds,
            runs.kept,
            runs.bruin_calls,
            seconds / by_calls.max(1e-3)
        ));
    }
    let devices = bench.sizes.sequential_devices;
    let sequential = refreshes(bench, devices, 1, 1).await?;
    let seconds = median(&sequential.seconds);
    let ideal = ideal_seconds(devices, 1);
    report.rows.push(
        Row::new(
            format!("refresh: {devices} devices, concurrency 1 (the original's design)"),
            format!("{seconds:.2} s"),
        )
        .baseline(format!("ideal {ideal:.2} s"), seconds / ideal),
    );
    if let Some(concurrent) = per_device_concurrent {
        let per_device = seconds / devices as f64;
        report.rows.push(
            Row::new(
                "refresh: time per device, concurrency 64",
                format!("{:.3} ms", concurrent * 1000.0),
            )
            .baseline(
                format!("sequential {:.3} ms", per_device * 1000.0),
                concurrent / per_device,
            ),
        );
    }
    report.notes.push(format!(
        "refresh: the simulator runs in the harness, {LATENCY_MS} ms before every answer; the first \
         run of each fleet is the service's start-up refresh, later ones are triggered with a \
         refresh message; durations are the refresh_succeeded notifications' duration_ms"
    ));
    Ok(report)
}

/// Starts a simulator and a service against it, waits for the start-up refresh, then triggers
/// `repetitions - 1` more.
async fn refreshes(
    bench: &Bench,
    devices: usize,
    concurrency: usize,
    repetitions: usize,
) -> anyhow::Result<Refreshes> {
    let config = SimConfig {
        devices,
        latency_ms: LATENCY_MS,
        ..SimConfig::default()
    };
    let sim = Simulator::start(config, "127.0.0.1:0").await?;
    let name = bench.name(&format!("refresh{devices}c{concurrency}"));
    let mut env = isolated_env(&bench.stack, &name);
    for line in sim.env_lines() {
        if let Some((key, value)) = line.split_once('=') {
            env.insert(key.to_string(), value.to_string());
        }
    }
    env.insert("BRUIN_CONCURRENCY".into(), concurrency.to_string());
    let kafka = isolated_kafka(&bench.stack, &name);
    let notifications =
        listen_at_end(&kafka, kafka.topics.notifications.clone(), LISTEN_TIMEOUT).await?;
    let service = bench.start_service(&env).await?;
    let (first, kept) = succeeded(&notifications, None).await?;
    let stats = sim.stats();
    let mut seconds = vec![first];
    eprintln!("bench: refresh of {devices} at concurrency {concurrency}: {first:.2} s");
    for _ in 1..repetitions {
        let request_id = send_trigger(&kafka).await?;
        let (run, _) = succeeded(&notifications, Some(&request_id)).await?;
        eprintln!("bench: refresh of {devices} at concurrency {concurrency}: {run:.2} s");
        seconds.push(run);
    }
    let memory = service.memory()?;
    service.stop().await?;
    sim.shutdown().await;
    Ok(Refreshes {
        seconds,
        bruin_calls: stats.inventory_calls + stats.attribute_calls,
        kept,
        memory,
    })
}

/// The next `refresh_succeeded` (for `request_id` when given): its duration in seconds and
/// its device count. A `refresh_failed` ends the measurement.
async fn succeeded(
    notifications: &StreamConsumer<ClientLog>,
    request_id: Option<&str>,
) -> anyhow::Result<(f64, u64)> {
    loop {
        let message = tokio::time::timeout(REFRESH_TIMEOUT, notifications.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no refresh notification within {REFRESH_TIMEOUT:?}"))?
            .context("cannot read the notifications")?;
        let Some(payload) = message.payload() else {
            continue;
        };
        let event: Value = serde_json::from_slice(payload).context("a notification is not JSON")?;
        match event["event"].as_str() {
            Some("refresh_failed") => anyhow::bail!("the refresh failed: {}", event["reason"]),
            Some("refresh_succeeded")
                if request_id.is_none() || event["request_id"].as_str() == request_id =>
            {
                let duration_ms = event["duration_ms"].as_u64().unwrap_or_default();
                let devices = event["devices"].as_u64().unwrap_or_default();
                return Ok((duration_ms as f64 / 1000.0, devices));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ideal_is_two_calls_per_device_spread_over_the_concurrency() {
        assert!((ideal_seconds(10_000, 64) - 6.25).abs() < 1e-9);
        assert!((ideal_seconds(1_000, 1) - 40.0).abs() < 1e-9);
    }
}
