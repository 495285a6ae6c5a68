//! Host clocks in the verdict: every timestamp a report carries was taken on its host's
//! clock, and is put on the coordinator's before anything judges it (`sim_core::clock`).
//! A processed report's publish time was taken by the producer, possibly on another host:
//! it is corrected by that host's clock.
//!
//! The run keeps every host's offset (`RunState.clocks`, checkpointed): the tick refreshes it
//! from the registry's probes, and a batch looks its host up there — no lock or copy per
//! batch. A resumed coordinator applies the batches agents resend with the checkpointed
//! offsets until its own probes answer.

use std::collections::HashMap;

use sim_core::clock::ClockOffset;

use super::ActiveRun;
use crate::agents::AgentRegistry;

/// The clock of `agent`'s host, as the run knows it; an agent the run knows no offset for
/// yet (its first batch came before the next tick) is looked up in the registry first.
pub(super) fn host_clock(
    run: &mut ActiveRun,
    registry: &AgentRegistry,
    agent: &str,
) -> ClockOffset {
    if !run.state.clocks.contains_key(agent) {
        run.state.clocks.extend(registry.clock_offsets());
    }
    run.state.clocks.get(agent).copied().unwrap_or_default()
}

/// The clock of the host whose producer publishes `partition`; `own` (the reporting host's)
/// when no placed producer does (a partition added by the chaos).
pub(super) fn publisher_clock(run: &ActiveRun, partition: u32, own: ClockOffset) -> ClockOffset {
    run.local
        .publishers
        .get(&partition)
        .and_then(|agent| run.state.clocks.get(agent))
        .copied()
        .unwrap_or(own)
}

/// Partition → the agent of the producer placed to publish it.
pub(super) fn publishers(run: &ActiveRun) -> HashMap<u32, String> {
    run.state
        .placement
        .producers
        .iter()
        .flat_map(|(agent, _, spec)| spec.partitions.iter().map(move |p| (*p, agent.clone())))
        .collect()
}
