//! The stream as the ground truth once the producers stopped (`sim_core::stream_check`):
//! each partition's last stored message is read once, during the drain, and what lies
//! beyond the reports becomes known to the tracker — processed before the drain ends, or
//! lost.
//!
//! Read when every producer's exit has been applied: an agent passes a child's exit on only
//! after the reports its connection carried (agent `links`), so by then every `sent` report
//! that will ever arrive has arrived, and the stream holds everything that will ever be
//! published.

use std::time::Duration;

use tracing::{info, warn};

use super::{Engine, Phase, now_us};
use sim_core::events::{EventKind, RunEvent};

/// Bound on reading every partition's last message (the engine waits for it).
const READ_LIMIT: Duration = Duration::from_secs(15);

impl Engine {
    /// Read the stream, when the drain has reached the point where it is final and it has
    /// not been read yet.
    pub(super) async fn read_stream_once(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        let state = &run.state;
        let producers_done = state.producers_alive.values().all(|alive| !alive);
        if state.stream_check.read
            || !matches!(state.phase, Phase::Draining { .. })
            || !producers_done
        {
            return;
        }
        let partitions: Vec<u32> = state
            .partition_map
            .partitions
            .iter()
            .map(|p| p.id)
            .collect();
        let read = crate::stream::stored_through(&state.nats_url, &state.config.nats, &partitions);
        let results = match tokio::time::timeout(READ_LIMIT, read).await {
            Ok(Ok(results)) => results,
            Ok(Err(error)) => unread(&partitions, &format!("{error:#}")),
            Err(_) => unread(
                &partitions,
                &format!("no answer within {}s", READ_LIMIT.as_secs()),
            ),
        };
        let now = now_us();
        let check = &mut run.state.stream_check;
        for (partition, stored) in results {
            let learned = stored.and_then(|seq| {
                run.tracker
                    .stored_through(partition, seq, now)
                    .map(|unannounced| (seq, unannounced))
                    .map_err(|e| e.to_string())
            });
            match learned {
                Ok((seq, unannounced)) => check.read_partition(partition, seq, unannounced),
                Err(why) => {
                    warn!(run = %run.state.id, partition, %why, "stream not verified");
                    check.unreadable(partition, &why);
                }
            }
        }
        check.read = true;
        let summary = check.summary();
        info!(run = %run.state.id, "{summary}");
        run.state
            .events
            .push(RunEvent::new(EventKind::Phase, summary));
    }
}

/// Every partition unread, for one reason.
fn unread(partitions: &[u32], why: &str) -> Vec<(u32, Result<u64, String>)> {
    partitions
        .iter()
        .map(|p| (*p, Err(why.to_string())))
        .collect()
}

/// At the end: how many of the messages beyond the reports were lost.
pub(super) fn count_unannounced_lost(run: &mut super::ActiveRun) {
    let lost = run
        .state
        .stream_check
        .tails
        .iter()
        .map(|tail| {
            run.tracker
                .lost_between(tail.partition, tail.reported_through, tail.stored_through)
        })
        .sum();
    run.state.stream_check.unannounced_lost = lost;
}
