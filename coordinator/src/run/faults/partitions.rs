//! `partition_changes`: the partition map edited during the run.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::ActiveRun;
use super::plan::{Action, Planned};
use super::recovery::TargetDone;

/// Add one partition (a new id, weight 1, to the producer publishing the fewest) or remove
/// one (never a producer's last), seeded. The tracker learns of it first: a removed
/// partition's unprocessed messages are excused, not lost.
pub(super) fn change_partitions(run: &mut ActiveRun) -> Result<Planned, String> {
    let coin = run.faults.plan.as_mut().map_or(0, |plan| plan.pick(2));
    let mut per_producer: BTreeMap<String, Vec<u32>> = run
        .placement
        .producers
        .iter()
        .map(|(_, _, spec)| (spec.producer_id.clone(), Vec::new()))
        .collect();
    for entry in &run.partition_map.partitions {
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
    let detail = if coin == 0 && !removable.is_empty() {
        let index = run
            .faults
            .plan
            .as_mut()
            .map_or(0, |plan| plan.pick(removable.len()));
        let partition = removable[index];
        let excused = run
            .tracker
            .remove_partition(partition)
            .map_err(|e| format!("tracker refused removing {partition}: {e}"))?;
        run.partition_map.partitions.retain(|e| e.id != partition);
        format!("removed partition {partition} ({excused} unprocessed message(s) excused)")
    } else {
        let Some(producer) = per_producer
            .iter()
            .min_by_key(|(_, list)| list.len())
            .map(|(producer, _)| producer.clone())
        else {
            return Err("no producer".into());
        };
        // Never an id used before: a new partition starts with an empty subject.
        let partition = run.faults.next_partition;
        run.faults.next_partition += 1;
        run.tracker
            .add_partition(partition)
            .map_err(|e| format!("tracker refused adding {partition}: {e}"))?;
        run.partition_map
            .partitions
            .push(proto::v1::PartitionEntry {
                id: partition,
                weight: 1,
                producer: producer.clone(),
            });
        format!("added partition {partition} (published by {producer})")
    };
    run.partition_map.version += 1;
    Ok(Planned {
        ideal_moves: None,
        target_done: TargetDone::Nothing,
        target: String::new(),
        action: Action::PublishMap,
        detail,
        measure: Some(false),
        lasts: Duration::ZERO,
    })
}
