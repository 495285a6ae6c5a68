//! `partition_changes`: the partition map edited during the run. One partition is added
//! (a new id, weight 1, to the producer publishing the fewest) or removed (never a
//! producer's last), seeded. The tracker learns of it first: a removed partition's
//! unprocessed messages are excused, not lost — except those its durable had already
//! acknowledged (the ack floor, read from the server just before): somebody took them.

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
    Remove {
        /// The partition.
        partition: u32,
        /// What its durable had acknowledged, read from the server before the change is
        /// applied ([`ack_floor`]).
        taken: Taken,
    },
}

/// What a removed partition's durable had acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Taken {
    /// Not read yet.
    Unread,
    /// Every partition seq up to this one (0: none).
    Through(u64),
    /// Could not be read (why); the removal excuses every missing seq, as before.
    Unknown(String),
}

/// A partition to remove named by `target` (`partition-<id>`), which must be `removable`.
fn targeted(target: &str, removable: &[u32]) -> Result<u32, Skip> {
    let not_one = || Skip::NotACandidate {
        target: target.to_string(),
        candidates: removable.iter().map(|p| format!("partition-{p}")).collect(),
    };
    let id: u32 = target
        .strip_prefix("partition-")
        .and_then(|id| id.parse().ok())
        .ok_or_else(not_one)?;
    if removable.contains(&id) {
        Ok(id)
    } else {
        Err(not_one())
    }
}

/// Draw whether to add or remove (and which), then publish the edited map. A `target`
/// (`partition-<id>`) removes that partition.
pub(super) fn plan(
    input: &PlanInput<'_>,
    draw: &mut dyn Draw,
    options: &super::InjectOptions,
) -> Result<Plan, Skip> {
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
    let remove = match &options.target {
        Some(target) => Some(targeted(target, &removable)?),
        None if coin == 0 && !removable.is_empty() => Some(
            removable
                .get(draw.pick(removable.len()))
                .copied()
                .ok_or(Skip::NoCandidate)?,
        ),
        None => None,
    };
    let (change, detail) = if let Some(partition) = remove {
        // The detail names what the tracker excused; `apply` fills it in.
        let taken = Taken::Unread;
        (PartitionChange::Remove { partition, taken }, String::new())
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
        PartitionChange::Remove { partition, taken } => {
            let partition = *partition;
            let through = match taken {
                Taken::Through(seq) => *seq,
                Taken::Unread | Taken::Unknown(_) => 0,
            };
            let excused = tracker
                .remove_partition(partition, through, super::super::now_us())
                .map_err(|error| Skip::TrackerRefused {
                    adding: false,
                    partition,
                    error,
                })?;
            map.partitions.retain(|entry| entry.id != partition);
            let floor = match taken {
                Taken::Through(seq) => format!("acknowledged through seq {seq}, owed"),
                Taken::Unread => "ack floor not read".to_string(),
                Taken::Unknown(why) => format!("ack floor unknown: {why}"),
            };
            Some(format!(
                "removed partition {partition} ({floor}; {excused} unprocessed message(s) \
                 excused)"
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

/// Read what a removal's partition durable had acknowledged, into the plan, before it is
/// applied (the tracker must know which missing seqs are owed).
pub(super) async fn ack_floor(plan: &mut Plan, run: &ActiveRun) {
    for effect in &mut plan.effects {
        if let Effect::Partitions(PartitionChange::Remove { partition, taken }) = effect {
            let read = crate::stream::acked_through(
                &run.state.nats_url,
                &run.state.config.nats,
                *partition,
            );
            // Bounded: the engine waits for this.
            *taken = match tokio::time::timeout(Duration::from_secs(3), read).await {
                Ok(Ok(seq)) => Taken::Through(seq),
                Ok(Err(error)) => Taken::Unknown(format!("{error:#}")),
                Err(_) => Taken::Unknown("no answer within 3s".into()),
            };
            if let Taken::Unknown(why) = taken {
                warn!(run = %run.state.id, partition, %why, "ack floor of a removed partition");
            }
        }
    }
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
