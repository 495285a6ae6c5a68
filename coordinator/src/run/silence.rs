//! The "seen after chaos" gate: at the end of the run, every live worker that owns
//! partitions must have been heard of (a status or a processed message) within the last
//! [`HEARD_WITHIN`]. Workers send a status at least every [`proto::STATUS_HEARTBEAT`] (the
//! report contract), so a worker that fell silent — hung, stopped by something the harness
//! did not do, cut off from its agent — is a FAIL (`silent_after_chaos`) naming it, even
//! when its partitions had no traffic to show it. Since the chaos ends before the run does
//! (`chaos.cooldown`, and the drain waits for the last recovery), a worker heard of at the
//! end was heard of after the last fault; the failure says when that fault settled.
//!
//! Not judged: a worker the chaos paused, one whose agent is not connected (its reports may
//! still come; the report-gap check covers what never does), a worker owning nothing, and
//! a run shorter than [`HEARD_WITHIN`].

use std::time::Duration;

use super::ActiveRun;
use sim_core::verdict::Failure;

/// A worker is silent once it was not heard of for this long at the end: two heartbeats.
const HEARD_WITHIN: Duration = Duration::from_secs(2 * proto::STATUS_HEARTBEAT.as_secs());

/// Judge, at the end (run time `now`), who was heard of lately. `agents`: those connected.
pub(super) fn check(run: &mut ActiveRun, now: Duration, agents: &[String]) {
    let Some(cutoff) = now.checked_sub(HEARD_WITHIN) else {
        return;
    };
    let cutoff_ms = super::clock::millis(cutoff);
    let faults = &run.state.faults;
    let mut silent = Vec::new();
    for (process, view) in &run.state.workers {
        let connected = faults
            .agent_of(process)
            .is_none_or(|agent| agents.iter().any(|a| a == agent));
        if view.alive
            && connected
            && !view.partitions.is_empty()
            && !faults.paused.contains_key(process)
            && view.last_report_ms < cutoff_ms
        {
            silent.push(Failure::SilentAfterChaos {
                process: process.clone(),
                partitions: view.partitions.len(),
                last_report_s: Duration::from_millis(view.last_report_ms).as_secs_f64(),
                end_s: now.as_secs_f64(),
                settled_s: faults.settled_at.map(|at| at.as_secs_f64()),
            });
        }
    }
    run.state.failures.extend(silent);
}
