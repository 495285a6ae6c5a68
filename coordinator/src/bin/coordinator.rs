//! `coordinator`: the daemon that owns runs. Agents and simctl connect to it over gRPC.

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "coordinator", version, about = "parti-sim coordinator daemon")]
struct Cli {
    /// Address to listen on for agents and simctl.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: String,
    /// NATS URL(s) to use instead of the run config's, comma-separated (set by `simctl run`).
    #[arg(long)]
    nats_url: Option<String>,
    /// Where run directories (config, events, checkpoints, reports) go.
    #[arg(long, default_value = "runs")]
    runs_dir: std::path::PathBuf,
    /// Resume the newest unfinished run under --runs-dir from its latest checkpoint before
    /// accepting agents (after a crash of the previous coordinator).
    #[arg(long)]
    resume: bool,
    /// Directory of the managed NATS cluster (its cluster.json), for faults that kill and
    /// restart its servers (set by `simctl run` when nats.cluster_size > 1).
    #[arg(long, value_name = "DIR")]
    nats_cluster_dir: Option<std::path::PathBuf>,
    /// The pid of the managed NATS server (set by `simctl run`): its resources are sampled
    /// with the coordinator's own and judged by the leak gate.
    #[arg(long, value_name = "PID")]
    nats_server_pid: Option<u32>,
    /// The lab CA's certificate (PEM): agents and simctl must present a certificate it
    /// issued. With --tls-cert and --tls-key: mutual TLS (see `simctl certs`).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// This coordinator's certificate (PEM), naming the hosts agents reach it by.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// Allow plaintext on a non-loopback address: anyone who can reach it can then command
    /// every agent (kill processes, rewrite iptables). Only on a network you trust.
    #[arg(long)]
    insecure: bool,
    /// Test aid: milliseconds to pause before applying each report batch.
    #[arg(long, hide = true, default_value_t = 0)]
    ingest_delay_ms: u64,
}

/// Exit status for a refused command line or TLS material (as simctl's bad input).
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let tls = match fleet_tls::TlsFiles::from_flags(
        cli.tls_ca.clone(),
        cli.tls_cert.clone(),
        cli.tls_key.clone(),
    )
    .and_then(|files| {
        files
            .map(|f| f.load(fleet_tls::Role::Coordinator))
            .transpose()
    }) {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("coordinator: {error}");
            return std::process::ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    // The TLS stack's own checks (a key that is not the certificate's, an encrypted key),
    // before anything is bound or resumed.
    if let Some(material) = &tls
        && let Err(error) = tonic::transport::Server::builder().tls_config(material.server())
    {
        let mut text = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(current) = cause {
            text.push_str(": ");
            text.push_str(&current.to_string());
            cause = current.source();
        }
        eprintln!("coordinator: --tls-cert and --tls-key are not a usable pair: {text}");
        return std::process::ExitCode::from(EXIT_BAD_INPUT);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("coordinator: starting the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(cli, tls)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(Refusal::BadInput(error)) => {
            eprintln!("coordinator: {error}");
            std::process::ExitCode::from(EXIT_BAD_INPUT)
        }
        Err(Refusal::Failed(error)) => {
            eprintln!("coordinator: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Why the coordinator did not run: refused input, or a failure while serving.
enum Refusal {
    BadInput(String),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Refusal {
    fn from(error: anyhow::Error) -> Self {
        Self::Failed(error)
    }
}

async fn serve(cli: Cli, tls: Option<fleet_tls::Material>) -> Result<(), Refusal> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // tonic reports a refused TLS handshake (a client certificate of another
                // CA, expired) only at debug, on this target: the operator must see it.
                .unwrap_or_else(|_| {
                    "info,async_nats=warn,h2=warn,tonic::transport::server::io_stream=debug".into()
                }),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    // Checked on the bound address (a host name resolves here), before anything is served.
    if tls.is_none() && !cli.insecure && !fleet_tls::plaintext_allowed(local) {
        return Err(Refusal::BadInput(format!(
            "--listen {}: plaintext on a non-loopback address ({local}) would let anyone who \
             can reach it command every agent; give --tls-ca, --tls-cert and --tls-key (see \
             simctl certs), or --insecure on a network you trust",
            cli.listen
        )));
    }
    // The first stdout line tells a parent (simctl run) where we are.
    println!("listening on {local}");
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    coordinator::serve(
        listener,
        coordinator::ServeOptions {
            nats_url: cli.nats_url,
            nats_cluster_dir: cli.nats_cluster_dir,
            nats_server_pid: cli.nats_server_pid,
            ingest_delay: std::time::Duration::from_millis(cli.ingest_delay_ms),
            runs_dir: Some(cli.runs_dir),
            resume: cli.resume,
            tls,
        },
        shutdown,
    )
    .await
    .map_err(anyhow::Error::from)?;
    Ok(())
}
