//! `agent_crash`: an agent SIGKILLs itself on command, its children die with it, and
//! whoever supervises it (simctl run, systemd) starts it again. The new agent process
//! replays its children's journals (`agent::journal`), so the run's books stay whole.
//!
//! The host is *faulted* from the command until the agent is back (a new boot id says
//! hello) and [`HOST_FAULT_GRACE`](super::state::HOST_FAULT_GRACE) after: the exits of its
//! children, replayed with the journals, are the fault's doing. Recovery is measured from
//! the agent's return, as a network fault's is from its healing.

use std::time::Duration;

use proto::v1::{Crash, coordinator_message};

use super::InjectOptions;
use super::plan::{Action, Draw, Effect, Plan, PlanInput, Skip, choose};
use super::recovery::TargetDone;

/// One agent not under another host fault.
pub(super) fn crash(
    input: &PlanInput<'_>,
    draw: &mut dyn Draw,
    options: &InjectOptions,
) -> Result<Plan, Skip> {
    let faults = input.faults;
    let target = choose(draw, &input.free_hosts()?, options)?;
    // Its workers' partitions all move.
    let held = input
        .workers
        .iter()
        .filter(|(process, view)| {
            view.alive
                && faults
                    .slots
                    .get(*process)
                    .is_some_and(|(agent, _)| *agent == target)
        })
        .map(|(_, view)| view.partitions.len() as u64)
        .sum();
    let crash = Crash {
        fault: input.record_index() as u64 + 1,
    };
    Ok(Plan {
        ideal_moves: Some(held),
        target_done: TargetDone::Nothing,
        detail: "SIGKILL of the agent; its children die with it".into(),
        action: Action::Send(
            target.clone(),
            Box::new(coordinator_message::Body::Crash(crash)),
        ),
        effects: vec![Effect::HostFault(target.clone())],
        target,
        measure: Some(true),
        lasts: Duration::ZERO,
    })
}
