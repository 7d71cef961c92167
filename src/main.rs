//! The command line: `run` the service.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use hawkeye_customer_cache::config::{
    ApiArgs, ConfigError, HttpArgs, KafkaArgs, RefreshArgs, ServeArgs, StoreArgs,
};
use hawkeye_customer_cache::service::{self, RunSettings};
use hawkeye_customer_cache::{observe, shutdown};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: profile push, cache refresh and cache requests.
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    stores: StoreArgs,
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    refresh: RefreshArgs,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    http: HttpArgs,
}

impl RunArgs {
    fn validate(&self) -> Result<RunSettings, ConfigError> {
        let (hawkeye, bruin) = self.api.validate()?;
        Ok(RunSettings {
            kafka: self.kafka.validate()?,
            stores: self.stores.validate()?,
            hawkeye,
            bruin,
            refresh: self.refresh.validate()?,
            serve: self.serve.validate()?,
            http_addr: self.http.validate()?,
        })
    }
}

/// Exit code of a setting that is missing or malformed.
const EXIT_BAD_SETTING: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    observe::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match cli.command {
        Command::Run(args) => {
            let settings = match args.validate() {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_BAD_SETTING);
                }
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
    }
}

/// Prints the error as one line on stderr (causes joined by `: `) and exits with 1.
fn fail(message: &str) -> ExitCode {
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("error: {one_line}");
    ExitCode::FAILURE
}
