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
    /// Test aid: milliseconds to pause before applying each report batch.
    #[arg(long, hide = true, default_value_t = 0)]
    ingest_delay_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn,h2=warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    // The first stdout line tells a parent (simctl run) where we are.
    println!("listening on {}", listener.local_addr()?);
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
        },
        shutdown,
    )
    .await?;
    Ok(())
}
