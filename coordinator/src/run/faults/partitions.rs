//! `partition_changes`: the partition map edited during the run. One partition is added
//! (a new id, weight 1, to the producer publishing the fewest) or removed (never a
//! producer's last), seeded. The tracker learns of it first: a removed partition's
//! unprocessed messages are excused, not lost.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::v1::{PartitionEntry, PartitionMap};
use sim_core::tracker::Tracker;

use tracing::warn;

use super::super::ActiveRun;
use super::FaultState;
use super::plan::{Action, Draw, Effect, Plan, PlanInput, Skip};
use super::recovery::TargetDone;

/// How the partition map changes.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum PartitionChange {
    /// Partition `id`, published by `producer`; never an id used before.
    Add { id: u32, producer: String },
    /// This partition goes away.
    Remove(u32),
}

/// Draw whether to add or remove (and which), then publish the edited map.
pub(super) fn plan(input: &PlanInput<'_>, draw: &mut dyn Draw) -> Result<Plan, Skip> {
    let coin = draw.pick(2);
    let mut per_producer: BTreeMap<String, Vec<u32>> = input
        .placement
        .producers
        .iter()
        .map(|(_, _, spec)| (spec.producer_id.clone(), Vec::new()))
        .collect();
    for entry in &input.partition_map.partitions {
        if let Some(list) = per_producer.get_mut(&entry.producer) {
            list.push(entry.id);
        }
    }
    let removable: Vec<u32> = per_producer
        .values()
        .filter(|list| list.len() > 1)
        .flatten()
        .copied()
        .collect();
    let (change, detail) = if coin == 0 && !removable.is_empty() {
        let partition = removable
            .get(draw.pick(removable.len()))
            .copied()
            .ok_or(Skip::NoCandidate)?;
        // The detail names what the tracker excused; `apply` fills it in.
        (PartitionChange::Remove(partition), String::new())
    } else {
        let Some(producer) = per_producer
            .iter()
            .min_by_key(|(_, list)| list.len())
            .map(|(producer, _)| producer.clone())
        else {
            return Err(Skip::NoProducer);
        };
        let id = input.faults.next_partition;
        let detail = format!("added partition {id} (published by {producer})");
        (PartitionChange::Add { id, producer }, detail)
    };
    Ok(Plan {
        ideal_moves: None,
        target_done: TargetDone::Nothing,
        target: String::new(),
        action: Action::PublishMap,
        detail,
        effects: vec![Effect::Partitions(change)],
        measure: Some(false),
        lasts: Duration::ZERO,
    })
}

/// Tell the tracker, then edit `map`; a removal's detail (how many messages were excused)
/// is returned.
pub(super) fn apply(
    change: &PartitionChange,
    faults: &mut FaultState,
    tracker: &mut Tracker,
    map: &mut PartitionMap,
) -> Result<Option<String>, Skip> {
    let detail = match change {
        PartitionChange::Remove(partition) => {
            let partition = *partition;
            let excused =
                tracker
                    .remove_partition(partition)
                    .map_err(|error| Skip::TrackerRefused {
                        adding: false,
                        partition,
                        error,
                    })?;
            map.partitions.retain(|entry| entry.id != partition);
            Some(format!(
                "removed partition {partition} ({excused} unprocessed message(s) excused)"
            ))
        }
        PartitionChange::Add { id, producer } => {
            // Taken even if the tracker refuses: a new partition starts with an empty subject.
            faults.next_partition = faults.next_partition.max(id + 1);
            tracker
                .add_partition(*id)
                .map_err(|error| Skip::TrackerRefused {
                    adding: true,
                    partition: *id,
                    error,
                })?;
            map.partitions.push(PartitionEntry {
                id: *id,
                weight: 1,
                producer: producer.clone(),
            });
            None
        }
    };
    map.version += 1;
    Ok(detail)
}

/// Publish the run's (already edited) partition map; whether it went out.
pub(super) async fn publish(run: &ActiveRun) -> bool {
    match crate::stream::publish_partition_map(&run.io.sim_kv, &run.state.partition_map).await {
        Ok(()) => true,
        Err(error) => {
            warn!(run = %run.state.id, %error, "partition map not published");
            false
        }
    }
}
