//! `nats_server_kill`: one server of the managed cluster down for a while.

use std::time::Duration;

use sim_core::events::{EventKind, RunEvent};
use tracing::{info, warn};

use super::super::ActiveRun;
use super::plan::{Action, Planned, choose};
use super::recovery::TargetDone;
use super::{InjectOptions, NATS_KILL_FOR, NATS_RESTART_GRACE, NatsDown};

/// Kill one server of the managed cluster (seeded choice, or `--target n<i>`) for a while.
pub(super) fn kill_nats_server(
    run: &mut ActiveRun,
    now: Duration,
    options: &InjectOptions,
) -> Result<Planned, String> {
    let Some(cluster) = run.nats_cluster.as_ref() else {
        return Err("no managed NATS cluster (nats.cluster_size 3 or 5 with simctl run)".into());
    };
    let size = cluster.size();
    if size < 3 {
        return Err("a cluster of fewer than three servers has no quorum without one".into());
    }
    // One server down at a time: a second one would cost the quorum.
    if let Some(down) = (0..size).find(|i| !cluster.is_running(*i)) {
        return Err(format!("NATS server n{down} is not running"));
    }
    if run
        .faults
        .nats_down
        .values()
        .any(|d| d.restart_at.is_some())
    {
        return Err("a NATS server is still down".into());
    }
    let names: Vec<String> = (0..size).map(|i| format!("n{i}")).collect();
    let target = choose(run, &names, options)?;
    let index = names.iter().position(|n| *n == target).unwrap_or(0);
    let lasts = options.duration.unwrap_or(NATS_KILL_FOR);
    run.faults.nats_down.insert(
        index,
        NatsDown {
            restart_at: Some(now + lasts),
            excused_until: None,
        },
    );
    Ok(Planned {
        ideal_moves: None,
        target_done: TargetDone::NatsServerBack(index),
        detail: format!("SIGKILL, restarted after {lasts:?}"),
        action: Action::KillNatsServer(index),
        target,
        measure: Some(false),
        lasts,
    })
}

/// Start killed server `index` again (in the background: it takes seconds to rejoin); exits
/// stay excused for a while after.
pub(super) fn restart_nats_server(run: &mut ActiveRun, index: usize, now: Duration) {
    let Some(down) = run.faults.nats_down.get_mut(&index) else {
        return;
    };
    down.restart_at = None;
    down.excused_until = Some(now + NATS_RESTART_GRACE);
    let Some(dir) = run.nats_cluster.as_ref().map(|c| c.dir().to_path_buf()) else {
        return;
    };
    run.events.push(RunEvent::new(
        EventKind::Fault,
        format!("NATS server n{index} restarted"),
    ));
    let id = run.id.clone();
    tokio::spawn(async move {
        let result = match nats_cluster::NatsCluster::open(&dir) {
            Ok(cluster) => cluster.restart(index).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => info!(run = %id, index, "NATS server back"),
            Err(error) => warn!(run = %id, index, %error, "NATS server not restarted"),
        }
    });
}
