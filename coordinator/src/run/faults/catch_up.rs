//! The catch-up gate (`coordinator.catch_up_timeout`): once a fault has recovered (every
//! partition owned again, messages flowing), the partitions it moved must work off what they
//! held by then — their backlog — within the timeout. A recovery that is quick on paper
//! while a moved partition's new owner crawls through its backlog (or sits on it) is a FAIL
//! (`catch_up`), naming the fault and the partitions still behind.
//!
//! "Moved": owned at the recovery by another live worker than at the injection (by the
//! workers' own statuses), or by nobody at the injection. The backlog of such a partition is
//! every seq up to the newest one known at the recovery; it is worked off when each of them
//! is processed or written off (loss is judged on its own). Like the recovery, one catch-up
//! at a time: the next fault waits, so each catch-up belongs to one fault, and the drain
//! waits for the last one.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sim_core::events::{EventKind, RunEvent};
use sim_core::verdict::Failure;
use tracing::info;

use super::super::ActiveRun;

/// How many partitions a failure lists (the count says how many there were).
const LISTED: usize = 5;

/// A catch-up being watched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(in crate::run) struct CatchUp {
    /// The fault (index into `records`).
    pub(super) index: usize,
    /// When it recovered (run time).
    pub(super) since: Duration,
    /// Behind after this ⇒ FAIL.
    pub(super) deadline: Duration,
    /// Moved partitions still working off their backlog: partition → newest seq at the
    /// recovery.
    pub(super) behind: BTreeMap<u32, u64>,
    /// Messages in the backlog at the recovery, for the record.
    pub(super) backlog: u64,
}

/// Each partition's owner by the workers' statuses, as the recovery counts them: taken at an
/// injection and compared at its recovery.
pub(super) fn owners(run: &ActiveRun) -> BTreeMap<u32, String> {
    super::recovery::holdings(run)
        .flat_map(|(process, partitions)| {
            partitions
                .iter()
                .map(move |partition| (*partition, process.clone()))
        })
        .collect()
}

/// Fault `index` recovered at `now`: watch the backlog of the partitions it moved (none with
/// a backlog: caught up at once).
pub(super) fn begin(
    run: &mut ActiveRun,
    index: usize,
    before: &BTreeMap<u32, String>,
    now: Duration,
) {
    let after = owners(run);
    let mut behind = BTreeMap::new();
    let mut backlog = 0;
    for (partition, owner) in &after {
        if before.get(partition) == Some(owner) {
            continue;
        }
        let through = run.tracker.known_max(*partition);
        let left = run.tracker.unresolved_through(*partition, through);
        if left > 0 {
            behind.insert(*partition, through);
            backlog += left;
        }
    }
    let timeout = run.state.config.coordinator.catch_up_timeout;
    if behind.is_empty() {
        if let Some(record) = run.state.faults.records.get_mut(index) {
            record.catch_up_s = Some(0.0);
        }
        return;
    }
    run.state.faults.catching_up = Some(CatchUp {
        index,
        since: now,
        deadline: now + timeout,
        behind,
        backlog,
    });
}

/// Judge the catch-up being watched: done (its time goes into the record), or past its
/// deadline (a failure). `ending`: the run ends now, so whatever is still behind fails.
pub(in crate::run) fn check(run: &mut ActiveRun, now: Duration, ending: bool) {
    let Some(mut catch) = run.state.faults.catching_up.take() else {
        return;
    };
    catch
        .behind
        .retain(|partition, through| run.tracker.unresolved_through(*partition, *through) > 0);
    let Some(record) = run.state.faults.records.get_mut(catch.index) else {
        return;
    };
    if catch.behind.is_empty() {
        let took = now.saturating_sub(catch.since).as_secs_f64();
        record.catch_up_s = Some(took);
        info!(run = %run.state.id, event = %record.event, took, "caught up");
        let line = format!(
            "caught up after {} {}: the backlog of the moved partitions ({} messages) \
             processed {took:.1}s after the recovery",
            record.event, record.target, catch.backlog
        );
        run.state
            .events
            .push(RunEvent::new(EventKind::Recovery, line));
        run.state.faults.settled(now);
    } else if ending || now > catch.deadline {
        let failure = Failure::CatchUp {
            event: record.event,
            target: record.target.clone(),
            at_s: record.at_s,
            behind: catch
                .behind
                .iter()
                .take(LISTED)
                .map(|(partition, through)| {
                    (
                        *partition,
                        run.tracker.unresolved_through(*partition, *through),
                    )
                })
                .collect(),
            partitions: catch.behind.len(),
            waited: now.saturating_sub(catch.since),
            timeout: run.state.config.coordinator.catch_up_timeout,
        };
        run.state
            .events
            .push(RunEvent::new(EventKind::Recovery, failure.to_string()));
        run.state.failures.push(failure);
        run.state.faults.settled(now);
    } else {
        run.state.faults.catching_up = Some(catch);
    }
}
