//! `simctl`: run a simulation on this machine, drive a coordinator, or judge a run directory
//! offline.
//!
//! Exit codes: 0 PASS, 1 FAIL, 2 bad input, 3 infrastructure error ([`exit::Exit`]).
//!
//! Layout:
//! - this file: parse the flags, set up logging, dispatch, exit.
//! - [`cli`]: the clap types.
//! - [`exit`]: the exit codes and the error that ends simctl with one.
//! - [`config`]: `config validate|dump`, and reading a config file.
//! - [`remote`]: the commands that drive a running coordinator over gRPC.
//! - [`local`]: `simctl run`, a whole simulation on this machine.
//! - [`managed`]: the processes `simctl run` starts and stops.
//! - [`offline`]: `report --run-dir`, judging a run directory without a coordinator.
//! - [`progress`]: status lines and following a run's progress.
//! - [`report`]: printing a report, writing its files, its verdict as the exit.
//! - [`trace`]: `simctl trace`, a message's trace id and where to open it.

#![forbid(unsafe_code)]

mod cli;
mod config;
mod exit;
mod local;
mod managed;
mod offline;
mod progress;
mod remote;
mod report;
mod trace;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, ConfigCommand, ReportArgs};
use exit::{Exit, ExitError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the runtime: {error}");
            return Exit::Infrastructure.into();
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(exit) => exit.into(),
        Err(ExitError { exit, error }) => {
            eprintln!("error: {error:#}");
            exit.into()
        }
    }
}

async fn dispatch(cli: Cli) -> Result<Exit, ExitError> {
    let endpoint = cli.coordinator.as_str();
    match cli.command {
        Command::Run(args) => local::run(args).await,
        Command::Start(args) => remote::start(endpoint, args).await,
        Command::Status => remote::status(endpoint).await,
        Command::Watch => remote::watch(endpoint).await,
        Command::Stop => remote::stop(endpoint).await,
        Command::Report(ReportArgs {
            run_dir: Some(dir),
            files,
        }) => offline::report(&dir, &files),
        Command::Report(ReportArgs {
            run_dir: None,
            files,
        }) => remote::report(endpoint, &files).await,
        Command::Agents => remote::agents(endpoint).await,
        Command::Chaos(args) => remote::chaos(endpoint, args).await,
        Command::Trace(args) => trace::trace(&args),
        Command::Config {
            command: ConfigCommand::Validate { file },
        } => config::validate(&file),
        Command::Config {
            command: ConfigCommand::Dump { file },
        } => config::dump(&file),
    }
}
