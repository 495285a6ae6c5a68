//! The engine's periodic step, phase by phase: faults, the second wave, the end of a
//! resume's hold, expiry and report gaps, the end conditions (agents lost, stall, drain
//! done), status, and a checkpoint when one is due.

use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::{
    ActiveRun, CHECKPOINT_AFTER_BATCHES, DrainReason, Engine, Phase, RESUME_HOLD_MAX,
    RESUME_SETTLE, now_us,
};
use crate::agents::AgentRegistry;
use sim_core::events::{EndReason, EventKind, RunEvent};
use sim_core::verdict::Failure;

/// What the end conditions say the run does next.
enum Next {
    /// Keep going.
    Continue,
    /// The duration is up: begin the drain.
    Drain,
    /// The run ends now.
    End(EndReason),
}

impl Engine {
    pub(super) async fn tick(&mut self) {
        self.fault_tick().await;
        let now = Instant::now();
        let agents = self.registry.connected().await;
        if self
            .run
            .as_ref()
            .is_none_or(|run| run.state.phase == Phase::Finished)
        {
            return;
        }
        self.start_second_wave().await;
        let Some(run) = self.run.as_mut() else { return };
        end_resume_hold(run, &agents, now);
        if run.local.resume_hold.is_none() {
            run.tracker.expire(now_us());
        }
        record_report_gaps(run, &self.registry);
        super::traces::faults(run, false);
        super::metrics::push(run, now);
        let run_time = run.clock.now();
        sample_timeline(run, run_time, false);
        super::replay::watch_boots(run, &self.registry.boots(), run_time);
        // Measured ones replace what the run knew; a host not probed yet keeps its last.
        run.state.clocks.extend(self.registry.clock_offsets());
        super::startup::check(run, run_time);
        if now >= run.local.next_resource_sample {
            run.local.next_resource_sample = now + RESOURCE_SAMPLE_EVERY;
            sample_own_processes(run, self.nats_server_pid);
        }
        self.read_stream_once().await;
        let Some(run) = self.run.as_mut() else { return };
        let next = end_conditions(run, &agents, now);
        if matches!(next, Next::Drain) {
            self.begin_drain(DrainReason::DurationReached).await;
        }
        self.publish_status();
        if let Next::End(reason) = next {
            self.finish(reason).await;
            return;
        }
        self.log_events();
        if let Some(why) = self.run.as_ref().and_then(|run| checkpoint_due(run, now)) {
            self.write_checkpoint(why).await;
        }
    }

    /// The second wave of workers, when its time has come.
    async fn start_second_wave(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        let due = run
            .state
            .second_wave_at_ms
            .is_some_and(|at| super::clock::millis(run.clock.now()) >= at);
        if !due {
            return;
        }
        // Write-ahead: the spawns are recorded as done before they are sent.
        run.state.second_wave_at_ms = None;
        let (_, workers) = run.state.worker_waves();
        if !workers.is_empty() {
            run.state.events.push(RunEvent::new(
                EventKind::Phase,
                format!("second wave: {} workers join", workers.len()),
            ));
        }
        self.write_checkpoint("second wave").await;
        let Some(run) = self.run.as_ref() else { return };
        for (agent, spawn) in workers {
            if !self
                .registry
                .send(&agent, super::spawn_for(&run.state.id, spawn))
                .await
            {
                warn!(run = %run.state.id, %agent, "second-wave worker not started: agent went away");
            }
        }
    }
}

/// How often the coordinator samples its own resources (as agents do theirs).
const RESOURCE_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Sample the coordinator itself and the managed NATS server(s), as agents sample theirs:
/// all of them are the harness (their growth is an infrastructure error).
fn sample_own_processes(run: &mut ActiveRun, nats_server_pid: Option<u32>) {
    // A NATS server's memory grows with the stream's message-id window until that is full:
    // its baseline comes after it.
    let nats_settled = crate::stream::DUPLICATE_WINDOW + RESOURCE_SAMPLE_EVERY;
    let mut processes = vec![(
        "coordinator".to_string(),
        std::process::id(),
        std::time::Duration::ZERO,
    )];
    processes.extend(nats_server_pid.map(|pid| ("nats-server".to_string(), pid, nats_settled)));
    if let Some(cluster) = &run.io.nats_cluster {
        processes.extend((0..cluster.size()).filter_map(|index| {
            Some((
                format!("nats-server-{index}"),
                cluster.pid(index)?,
                nats_settled,
            ))
        }));
    }
    for (name, pid, settled) in processes {
        if let Some(sample) = proto::resources::sample(&name, pid) {
            super::ingest::record_resources(run, &name, true, &sample, settled);
        }
    }
}

/// After a resume, messages the checkpoint saw unprocessed may have been processed while the
/// coordinator was away; the agents resend those reports when they are back. Until then
/// (bounded), nothing is declared lost.
fn end_resume_hold(run: &mut ActiveRun, agents: &[String], now: Instant) {
    let Some((expected, since)) = &run.local.resume_hold else {
        return;
    };
    let back = expected.iter().all(|agent| agents.contains(agent));
    let waited = now.duration_since(*since);
    if (back && waited >= RESUME_SETTLE) || waited >= RESUME_HOLD_MAX {
        run.state.events.push(RunEvent::new(
            EventKind::Resume,
            format!(
                "resume: {} agent(s) back after {:.1}s, loss detection on again",
                expected.iter().filter(|a| agents.contains(a)).count(),
                waited.as_secs_f64()
            ),
        ));
        run.local.resume_hold = None;
    }
}

/// Reports that can never arrive (an agent dropped batches a restored checkpoint did not
/// hold, or restarted while the coordinator was away): the books are incomplete, which no
/// verdict may hide.
fn record_report_gaps(run: &mut ActiveRun, registry: &AgentRegistry) {
    let gaps = registry.gaps();
    let seen = run.local.gaps_seen;
    run.local.gaps_seen = gaps.len();
    for gap in gaps.into_iter().skip(seen) {
        super::replay::record_gap(run, gap);
    }
}

/// How long a run goes on with no agent connected before it ends as an infrastructure
/// error: long enough for a supervisor to restart an agent (a restart is about 0.1 s; a
/// tick can land in between, which ended runs on a loaded machine), short enough that
/// losing every agent ends the run promptly.
const AGENTS_LOST_AFTER: Duration = Duration::from_secs(5);

/// Whether the run goes on, drains, or ends now: all agents gone, messages stalled, or the
/// drain done (caught up and settled) or timed out. Failures found are recorded.
fn end_conditions(run: &mut ActiveRun, agents: &[String], now: Instant) -> Next {
    let snapshot = run.tracker.snapshot(now_us());
    let marker = run.tracker.progress_marker().0;
    // While an agent_crash waits for its agent, nothing on that host can make progress:
    // the stall clock restarts when it is back (or its absence is an infrastructure error).
    if marker != run.local.progress.0 || super::replay::crash_pending(run) {
        run.local.progress = (marker, now);
    }
    let stalled_for = now.duration_since(run.local.progress.1);
    let coordinator = &run.state.config.coordinator;
    // A resumed coordinator starts before its agents have reconnected. An agent restarted
    // by its supervisor is gone for a moment: the run ends only once no agent has been
    // connected for AGENTS_LOST_AFTER (an unplanned restart is judged by `watch_boots`).
    let agentless =
        agents.is_empty() && run.local.resume_hold.is_none() && !super::replay::crash_pending(run);
    let since = agentless.then(|| run.local.agentless_since.unwrap_or(now));
    run.local.agentless_since = since;
    if since.is_some_and(|since| now.duration_since(since) >= AGENTS_LOST_AFTER) {
        run.state.failures.push(Failure::AgentsLost);
        return Next::End(EndReason::AgentsLost);
    }
    if stalled_for >= coordinator.stall_timeout
        && (snapshot.in_flight > 0 || matches!(run.state.phase, Phase::Running))
    {
        let failure = Failure::Stall {
            stalled_for,
            in_flight: snapshot.in_flight,
            sent: snapshot.sent,
            received: snapshot.received,
        };
        warn!(run = %run.state.id, "{failure}");
        run.state.failures.push(failure);
        return Next::End(EndReason::Stall);
    }
    let run_time = run.clock.now();
    match run.state.phase {
        Phase::Running if run_time >= run.state.duration() => {
            // The last fault's recovery is judged: the drain waits for it to finish or pass
            // its deadline (no new fault starts after the duration).
            match run.state.faults.recovery_in_progress() {
                Some(recovery) => {
                    if !run.local.overtime_noted {
                        run.local.overtime_noted = true;
                        run.state.events.push(RunEvent::new(
                            EventKind::Phase,
                            format!(
                                "duration reached: the drain waits for the recovery from {recovery}"
                            ),
                        ));
                    }
                    Next::Continue
                }
                None => Next::Drain,
            }
        }
        Phase::Draining { since } => {
            let producers_done = run.state.producers_alive.values().all(|alive| !alive);
            let caught_up = producers_done && snapshot.in_flight == 0 && snapshot.missing == 0;
            let draining_for = run_time.saturating_sub(since);
            if caught_up && draining_for >= coordinator.drain_settle {
                Next::End(EndReason::Drained)
            } else if draining_for >= coordinator.drain_timeout {
                Next::End(if caught_up {
                    EndReason::Drained
                } else {
                    EndReason::DrainTimeout
                })
            } else {
                Next::Continue
            }
        }
        _ => Next::Continue,
    }
}

/// Why a checkpoint is due now, if one is.
fn checkpoint_due(run: &ActiveRun, now: Instant) -> Option<&'static str> {
    let checkpointing = &run.state.config.checkpointing;
    if !checkpointing.enabled {
        return None;
    }
    if now.duration_since(run.local.checkpoints.1) >= checkpointing.interval {
        return Some("interval");
    }
    // Agents keep every batch until a checkpoint covers it: a long interval at a high report
    // rate must not fill their outbox and stall the children.
    let backlog = run.state.applied.iter().any(|(agent, (boot, number))| {
        let covered = run
            .local
            .checkpointed
            .get(agent)
            .filter(|(covered_boot, _)| covered_boot == boot)
            .map_or(0, |(_, covered)| *covered);
        number.saturating_sub(covered) >= CHECKPOINT_AFTER_BATCHES
    });
    backlog.then_some("agent backlog")
}

/// A timeline sample when one is due, or now when `force`d (the finish), for report.html.
pub(super) fn sample_timeline(run: &mut ActiveRun, run_time: Duration, force: bool) {
    let at_s = run_time.as_secs_f64();
    if !force && !run.state.timeline.due(at_s) {
        return;
    }
    // The finish's sample only when the last is half a step old: a rate over a few
    // milliseconds would be a spike that rescales the whole chart.
    if force
        && run
            .state
            .timeline
            .samples
            .last()
            .is_some_and(|last| at_s - last.at_s < run.state.timeline.step_s / 2.0)
    {
        return;
    }
    let s = run.tracker.snapshot(now_us());
    let counters = sim_core::timeline::Counters {
        sent: s.sent,
        received: s.received,
        in_flight: s.in_flight,
        lost: s.lost,
    };
    run.state.timeline.sample(at_s, counters);
}
