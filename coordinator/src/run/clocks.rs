//! Host clocks in the verdict: every timestamp a report carries was taken on its host's
//! clock, and is put on the coordinator's before anything judges it (`sim_core::clock`).
//! A processed report's publish time was taken by the producer, possibly on another host:
//! it is corrected by that host's clock.

use std::collections::{BTreeMap, HashMap};

use sim_core::clock::ClockOffset;

use super::ActiveRun;
use crate::agents::AgentRegistry;

/// The host clocks one batch's timestamps are corrected by.
pub(super) struct BatchClocks {
    /// The clock of the agent that sent the batch (its children's).
    pub(super) own: ClockOffset,
    /// Every agent's, for the publishers of processed messages.
    all: BTreeMap<String, ClockOffset>,
}

impl BatchClocks {
    /// The clocks for a batch from `agent`, as measured now; for a host not probed yet in
    /// this coordinator's life, as last measured (`known`: the run's, checkpointed — a
    /// resumed coordinator applies resent batches before its first probe comes back).
    pub(super) fn of(
        registry: &AgentRegistry,
        agent: &str,
        known: &BTreeMap<String, ClockOffset>,
    ) -> Self {
        let mut all = known.clone();
        all.extend(registry.clock_offsets());
        Self {
            own: all.get(agent).copied().unwrap_or_default(),
            all,
        }
    }

    /// The clock of the host whose producer publishes `partition` (this batch's own when
    /// no placed producer does: a partition added by the chaos).
    pub(super) fn publisher(&self, run: &ActiveRun, partition: u32) -> ClockOffset {
        run.local
            .publishers
            .get(&partition)
            .and_then(|agent| self.all.get(agent))
            .copied()
            .unwrap_or(self.own)
    }
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
