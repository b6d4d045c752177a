//! The `timbridge` binary: parse flags, set up logging, run the bridge until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use timbridge::cli::{Cli, Command, LogFormat};
use timbridge::{shutdown, Bridge, StartError};
use tracing_subscriber::EnvFilter;

/// BSD's EX_USAGE: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // clap's first line names the flag and the problem; the rest is usage boilerplate.
            let message = err.to_string();
            let first = message.lines().next().unwrap_or("invalid arguments");
            eprintln!("timbridge: {}", first.trim_start_matches("error: "));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Command::Serve(args) = cli.command;

    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }

    let config = match args.into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("timbridge: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("timbridge: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let bridge = match Bridge::start(config).await {
            Ok(bridge) => bridge,
            Err(StartError::Config(err)) => {
                eprintln!("timbridge: {err}");
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(err) => {
                eprintln!("timbridge: {err}");
                return ExitCode::FAILURE;
            }
        };
        shutdown::signal().await;
        tokio::select! {
            _ = bridge.shutdown() => ExitCode::SUCCESS,
            _ = shutdown::signal() => {
                eprintln!("timbridge: second signal: exiting without finishing the drain");
                ExitCode::FAILURE
            }
        }
    })
}
