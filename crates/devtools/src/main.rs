//! `hawkeye-devtools`: the simulator and the benchmark of hawkeye-customer-cache.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use hawkeye_customer_cache::{observe, shutdown};
use hawkeye_devtools::bench::{self, BenchArgs};
use hawkeye_devtools::sim::{SimConfig, Simulator};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a simulated Hawkeye/Ixia + Bruin API (docs/simulator.md) until SIGINT/SIGTERM;
    /// prints the settings that point the service at it.
    Sim(Box<SimArgs>),
    /// Measure throughput, latency and memory against the stack and the simulator, each
    /// figure next to a baseline measured in the same run (BENCHMARKS.md).
    Bench(Box<BenchArgs>),
}

#[derive(clap::Args)]
struct SimArgs {
    #[command(flatten)]
    config: SimConfig,
    /// Address to listen on.
    #[arg(long, env = "SIM_ADDR", default_value = "127.0.0.1:8700")]
    addr: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    observe::logging::init();
    let outcome = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .and_then(|runtime| match cli.command {
            Command::Sim(args) => runtime.block_on(simulate(*args)),
            Command::Bench(args) => runtime.block_on(bench::run(*args)),
        });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sim`: serves the simulator until a signal; the env lines go to stdout for `eval`/`.env`.
async fn simulate(args: SimArgs) -> anyhow::Result<()> {
    let token = shutdown::on_signal().context("cannot install signal handlers")?;
    let devices = args.config.devices;
    let running = Simulator::start(args.config, &args.addr).await?;
    eprintln!(
        "simulator serving {devices} devices at {}",
        running.base_url()
    );
    for line in running.env_lines() {
        println!("{line}");
    }
    token.cancelled().await;
    running.shutdown().await;
    Ok(())
}
