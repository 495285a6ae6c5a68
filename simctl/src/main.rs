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
//! - [`certs`]: `simctl certs`, the lab's CA and certificates for mutual TLS.

#![forbid(unsafe_code)]

mod certs;
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

use clap::{CommandFactory, FromArgMatches};

use cli::{Cli, Command, ConfigCommand, ReportArgs};
use exit::{Exit, ExitError};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    // Given on the command line, not inherited from SIMCTL_TLS_* in the environment (which
    // a lab's simctl.env exports for every command).
    let tls_flags = ["tls_ca", "tls_cert", "tls_key", "insecure"]
        .into_iter()
        .any(|id| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine));
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
    match runtime.block_on(dispatch(cli, tls_flags)) {
        Ok(exit) => exit.into(),
        Err(ExitError { exit, error }) => {
            eprintln!("error: {error:#}");
            exit.into()
        }
    }
}

/// The coordinator of the remote commands, with simctl's TLS material checked (control
/// role) before anything is sent.
fn coordinator(cli: &Cli) -> Result<remote::Coordinator, ExitError> {
    let tls = fleet_tls::TlsFiles::from_flags(
        cli.tls_ca.clone(),
        cli.tls_cert.clone(),
        cli.tls_key.clone(),
    )
    .and_then(|files| files.map(|f| f.load(fleet_tls::Role::Control)).transpose())
    .map_err(|error| exit::bad_input(anyhow::Error::new(error)))?;
    Ok(remote::Coordinator {
        url: cli.coordinator.clone(),
        tls,
        insecure: cli.insecure,
    })
}

async fn dispatch(cli: Cli, tls_flags: bool) -> Result<Exit, ExitError> {
    let remote_command = matches!(
        cli.command,
        Command::Start(_)
            | Command::Status
            | Command::Watch
            | Command::Stop
            | Command::Report(ReportArgs { run_dir: None, .. })
            | Command::Agents
            | Command::Chaos(_)
    );
    let endpoint = if remote_command {
        coordinator(&cli)?
    } else if tls_flags {
        // Accepted but unused would be a setting that silently does nothing.
        return Err(exit::bad_input(anyhow::anyhow!(
            "--tls-ca, --tls-cert, --tls-key and --insecure apply to the \
             commands that talk to a coordinator (start, status, watch, stop, report, agents, \
             chaos); `run` starts its own on loopback and the others talk to none"
        )));
    } else {
        remote::Coordinator::local(cli.coordinator.clone())
    };
    let endpoint = &endpoint;
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
        Command::Certs { command } => certs::certs(command),
        Command::Config {
            command: ConfigCommand::Validate { file },
        } => config::validate(&file),
        Command::Config {
            command: ConfigCommand::Dump { file },
        } => config::dump(&file),
    }
}
