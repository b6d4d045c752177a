//! The `timbridge` binary: parse flags, set up logging, run the bridge until SIGTERM/SIGINT.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use timbridge::app::cli::{
    AuditArgs, Cli, Command, DeadLettersAction, DeadLettersArgs, ForwardAllArgs, LogFormat,
    SpoolCommand,
};
use timbridge::app::shutdown;
use timbridge::{Bridge, StartError};
use tracing_subscriber::EnvFilter;

/// BSD's EX_USAGE: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;
/// BSD's EX_IOERR: the spool's disk failed; what it holds is kept for the next start.
const EXIT_IO: u8 = 74;

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
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Spool(SpoolCommand::Inspect { dir }) => return inspect(&dir),
        Command::Spool(SpoolCommand::Forward(args)) => return forward_all(*args),
        Command::Spool(SpoolCommand::DeadLetters(args)) => return dead_letters(*args),
        Command::Audit(args) => return audit(*args),
    };

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
        tokio::select! {
            _ = shutdown::signal() => {}
            _ = bridge.failed() => {
                eprintln!("timbridge: the spool's disk failed; exiting (what was answered 200 stays in the spool)");
                return ExitCode::from(EXIT_IO);
            }
        }
        tokio::select! {
            _ = bridge.shutdown() => ExitCode::SUCCESS,
            _ = shutdown::signal() => {
                eprintln!("timbridge: second signal: exiting without finishing the drain");
                ExitCode::FAILURE
            }
        }
    })
}

/// `timbridge spool inspect DIR`: the report on stdout; 1 when a record is corrupt.
fn inspect(dir: &std::path::Path) -> ExitCode {
    match timbridge::spool::inspect::inspect(dir) {
        Ok(report) => {
            print!("{report}");
            if report.is_corrupt() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("timbridge: {}: {err}", dir.display());
            ExitCode::from(EXIT_IO)
        }
    }
}

/// `timbridge spool forward DIR` (alias `drain`): forwards the spool's records and exits once
/// it is empty.
fn forward_all(args: ForwardAllArgs) -> ExitCode {
    init_logs(&args.broker.log_level);
    let (sink, spool) = match args.into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("timbridge: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    block_on(async {
        match timbridge::spool::forward_all(sink, spool).await {
            Ok(forwarded) => {
                eprintln!("timbridge: spool emptied ({forwarded} records forwarded)");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("timbridge: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `timbridge spool dead-letters DIR [replay …]`: lists the dead letters, or sends them again.
fn dead_letters(args: DeadLettersArgs) -> ExitCode {
    let dir = args.dir;
    let Some(DeadLettersAction::Replay(broker)) = args.action else {
        return match timbridge::spool::dead_letters::list(&dir) {
            Ok((letters, damaged)) => {
                for letter in &letters {
                    match &letter.record {
                        Ok(r) => println!(
                            "seq {}  {}  key {}  dedup {}  {} bytes",
                            letter.seq,
                            r.destination,
                            r.key,
                            r.dedup_id().unwrap_or("-"),
                            r.body.len()
                        ),
                        Err(why) => println!("seq {}  unreadable by this build: {why}", letter.seq),
                    }
                }
                println!("dead letters: {}", letters.len());
                if damaged > 0 {
                    println!("DAMAGED: {damaged} places in the file could not be read");
                    return ExitCode::FAILURE;
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("timbridge: {}: {err}", dir.display());
                ExitCode::from(EXIT_IO)
            }
        };
    };
    init_logs(&broker.log_level);
    let timeout = broker.publish_timeout;
    let sink = match broker.into_sink() {
        Ok(sink) => sink,
        Err(err) => {
            eprintln!("timbridge: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    block_on(async move {
        match timbridge::spool::dead_letters::replay(&dir, sink, timeout).await {
            Ok(r) => {
                eprintln!(
                    "timbridge: dead letters: {} sent, {} refused again, {} not tried (kept: {})",
                    r.sent,
                    r.refused,
                    r.left,
                    r.refused + r.left
                );
                if r.refused + r.left > 0 {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(err) => {
                eprintln!("timbridge: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `timbridge audit`: runs the auditor until SIGTERM/SIGINT.
fn audit(args: AuditArgs) -> ExitCode {
    init_logs(&args.log_level);
    let config = match args.into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("timbridge: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    block_on(async {
        match timbridge::audit::run(config, shutdown::signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("timbridge: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Text logs on stderr for the one-shot commands (colours only on a terminal).
fn init_logs(level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs `command` on a multi-thread runtime to its exit code.
fn block_on(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(command),
        Err(err) => {
            eprintln!("timbridge: cannot start the runtime: {err}");
            ExitCode::FAILURE
        }
    }
}
