//! The coordinator and agent processes `simctl run` starts and owns (moved here from
//! `nats-cluster`: starting the harness's own daemons is simctl's concern; the managed
//! nats-servers stay there). Both are binaries built next to simctl.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context;
use nats_cluster::managed::{ManagedProcess, ReadyOn, sibling_binary, start_and_wait};

/// Start the coordinator daemon on a free port; returns its `http://` endpoint. `nats_url`
/// may list several servers (comma-separated); `nats_cluster_dir` names a managed cluster's
/// directory (see [`nats_cluster`]).
pub fn start_coordinator(
    dir: &Path,
    nats_url: &str,
    nats_cluster_dir: Option<&Path>,
) -> anyhow::Result<(ManagedProcess, String)> {
    let mut command = Command::new(sibling_binary("coordinator")?);
    command.args(["--listen", "127.0.0.1:0", "--nats-url", nats_url]);
    if let Some(cluster) = nats_cluster_dir {
        command.arg("--nats-cluster-dir").arg(cluster);
    }
    let (process, address) = start_and_wait(
        "coordinator",
        command,
        &dir.join("coordinator.log"),
        ReadyOn::Stdout,
        |line| {
            line.strip_prefix("listening on ")
                .map(|a| a.trim().to_string())
        },
    )?;
    Ok((process, format!("http://{address}")))
}

/// Start one agent connected to `coordinator`, working under `dir/<id>`.
pub fn start_agent(dir: &Path, coordinator: &str, id: &str) -> anyhow::Result<ManagedProcess> {
    let log = std::fs::File::create(dir.join(format!("{id}.log")))?;
    let child = Command::new(sibling_binary("agent")?)
        .args(["run", "--coordinator", coordinator, "--id", id, "--dir"])
        .arg(dir.join(id))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the agent")?;
    Ok(ManagedProcess::new(id, child))
}
