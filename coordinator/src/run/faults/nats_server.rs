//! `nats_server_kill`: one server of the managed cluster down for a while.

use std::time::Duration;

use sim_core::events::{EventKind, RunEvent};
use tracing::{info, warn};

use super::super::ActiveRun;
use super::plan::{Action, Draw, Effect, Plan, PlanInput, Skip, choose};
use super::recovery::TargetDone;
use super::{InjectOptions, NATS_KILL_FOR, NATS_RESTART_GRACE};

/// Kill one server of the managed cluster (seeded choice, or `--target n<i>`) for a while.
pub(super) fn plan_kill(
    input: &PlanInput<'_>,
    draw: &mut dyn Draw,
    options: &InjectOptions,
) -> Result<Plan, Skip> {
    let Some(running) = input.nats_servers.as_deref() else {
        return Err(Skip::NoManagedCluster);
    };
    let size = running.len();
    if size < 3 {
        return Err(Skip::ClusterTooSmall);
    }
    // One server down at a time: a second one would cost the quorum.
    if let Some(down) = running.iter().position(|running| !running) {
        return Err(Skip::NatsServerNotRunning(down));
    }
    if input
        .faults
        .nats_down
        .values()
        .any(|down| down.restart_at.is_some())
    {
        return Err(Skip::NatsServerStillDown);
    }
    let names: Vec<String> = (0..size).map(|i| format!("n{i}")).collect();
    let target = choose(draw, &names, options)?;
    let index = names.iter().position(|n| *n == target).unwrap_or(0);
    let lasts = options.duration.unwrap_or(NATS_KILL_FOR);
    Ok(Plan {
        ideal_moves: None,
        target_done: TargetDone::NatsServerBack(index),
        detail: format!("SIGKILL, restarted after {lasts:?}"),
        action: Action::KillNatsServer(index),
        effects: vec![Effect::NatsDown {
            index,
            restart_at: input.now + lasts,
        }],
        target,
        measure: Some(false),
        lasts,
    })
}

/// Start killed server `index` again (in the background: it takes seconds to rejoin); exits
/// stay excused for a while after.
pub(super) fn restart_nats_server(run: &mut ActiveRun, index: usize, now: Duration) {
    let Some(down) = run.state.faults.nats_down.get_mut(&index) else {
        return;
    };
    down.restart_at = None;
    down.excused_until = Some(now + NATS_RESTART_GRACE);
    let Some(dir) = run.io.nats_cluster.as_ref().map(|c| c.dir().to_path_buf()) else {
        return;
    };
    run.state.events.push(RunEvent::new(
        EventKind::Fault,
        format!("NATS server n{index} restarted"),
    ));
    let id = run.state.id.clone();
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

/// SIGKILL managed server `index` (blocking file and process work, off the runtime);
/// whether it was killed.
pub(super) async fn kill(run: &ActiveRun, index: usize) -> bool {
    let Some(cluster) = run.io.nats_cluster.as_ref() else {
        return false;
    };
    let dir = cluster.dir().to_path_buf();
    let killed = tokio::task::spawn_blocking(move || {
        nats_cluster::NatsCluster::open(&dir).and_then(|cluster| cluster.kill(index))
    })
    .await;
    match killed {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            warn!(run = %run.state.id, %error, "NATS server not killed");
            false
        }
        Err(error) => {
            warn!(run = %run.state.id, %error, "NATS kill task failed");
            false
        }
    }
}
