//! Checkpoints: the run's whole state as one serializable value, and resuming from it.
//!
//! A checkpoint is taken inside the engine's loop, between two report batches, so it is a
//! consistent cut: "the state after batch N_a of each agent a" (`applied`). Agents keep
//! every batch after the last durable checkpoint and resend it to a resumed coordinator,
//! which therefore ends up with exactly the reports it would have had without the crash.
//!
//! What is *not* in a checkpoint is what is rebuilt: the NATS handles (the run's KV bucket
//! is reopened, never re-created — that would delete the stream), the assignment watch
//! (restarted; documents at or below the saved KV revision are skipped) and the chaos plan
//! (rebuilt from config, seed and its saved stream position).
//!
//! Side effects are written ahead: the engine checkpoints the state that records a fault,
//! a drain or a spawn *before* sending the command, so a resumed run never forgets a
//! command it sent (it may, rarely, believe in one that was never sent: a fault recorded
//! but not injected, which costs nothing but a quiet entry in the report).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use proto::v1::PartitionMap;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use super::clock::{RunClock, millis};
use super::faults::FaultState;
use super::{ActiveRun, Engine, Phase, StartError, WorkerView, now_us};
use crate::assignment_log::AssignmentLog;
use crate::placement::Placement;
use sim_core::config::Config;
use sim_core::events::{EndReason, EventKind, RunEvent};
use sim_core::ownership::OwnershipCheck;
use sim_core::record::{read_state, tracker_config};
use sim_core::rundir::RunDir;
use sim_core::tracker::{Tracker, TrackerState, WorkerRef};
use sim_core::verdict::Failure;

/// The shape of [`RunCheckpoint`] this build writes and reads (`sim_core::record`'s: the
/// record the verdict reads is part of this state). Files without a `format` are format 1
/// (failures and events as plain text); 2 typed them.
pub use sim_core::record::{STATE_FORMAT as CHECKPOINT_FORMAT, StateError};

/// The state of a run, as written to `checkpoints/ckpt-*.json` and `final.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunCheckpoint<'a> {
    /// [`CHECKPOINT_FORMAT`] when written.
    format: u32,
    run_id: Cow<'a, str>,
    seed: u64,
    nats_url: Cow<'a, str>,
    config: Cow<'a, Config>,
    /// Run time at the checkpoint.
    elapsed_ms: u64,
    /// Wall clock at the checkpoint (µs since the epoch): a resumed run adds the time the
    /// coordinator was down to its run time.
    written_unix_us: i64,
    phase: Phase,
    /// How the run ended (the final state only).
    end: Option<EndReason>,
    placement: Cow<'a, Placement>,
    tracker: TrackerState,
    /// (process, incarnation, tracker reference).
    worker_refs: Vec<(String, u64, u32)>,
    worker_names: Cow<'a, [String]>,
    workers: Cow<'a, BTreeMap<String, WorkerView>>,
    producers_alive: Cow<'a, BTreeMap<String, bool>>,
    failures: Cow<'a, [Failure]>,
    events: Cow<'a, [RunEvent]>,
    ownership: Cow<'a, OwnershipCheck>,
    faults: Cow<'a, FaultState>,
    /// When the second wave of workers starts (run time, ms), while it has not.
    second_wave_at_ms: Option<u64>,
    partition_map: Cow<'a, PartitionMap>,
    assignment_log: Cow<'a, AssignmentLog>,
    /// Per agent: (boot id, last batch number applied).
    applied: Cow<'a, BTreeMap<String, (u64, u64)>>,
}

impl RunCheckpoint<'_> {
    /// Read one from a checkpoint body.
    ///
    /// # Errors
    /// The body is of another format, or not a run state.
    pub fn from_json(body: &[u8]) -> Result<RunCheckpoint<'static>, StateError> {
        read_state(body)
    }
}

impl<'a> RunCheckpoint<'a> {
    /// The state of `run` now; `end` for the final state. Call
    /// `run.faults.prepare_checkpoint()` first.
    pub(super) fn capture(run: &'a ActiveRun, end: Option<EndReason>) -> Self {
        let mut worker_refs: Vec<(String, u64, u32)> = run
            .worker_refs
            .iter()
            .map(|((process, incarnation), worker)| (process.clone(), *incarnation, worker.0))
            .collect();
        worker_refs.sort_by_key(|entry| entry.2);
        Self {
            format: CHECKPOINT_FORMAT,
            run_id: Cow::Borrowed(&run.id),
            seed: run.seed,
            nats_url: Cow::Borrowed(&run.nats_url),
            config: Cow::Borrowed(&run.config),
            elapsed_ms: millis(run.clock.now()),
            written_unix_us: now_us(),
            phase: run.phase,
            end,
            placement: Cow::Borrowed(&run.placement),
            tracker: run.tracker.export(),
            worker_refs,
            worker_names: Cow::Borrowed(&run.worker_names),
            workers: Cow::Borrowed(&run.workers),
            producers_alive: Cow::Borrowed(&run.producers_alive),
            failures: Cow::Borrowed(&run.failures),
            events: Cow::Borrowed(&run.events),
            ownership: Cow::Borrowed(&run.ownership),
            faults: Cow::Borrowed(&run.faults),
            second_wave_at_ms: run.second_wave.as_ref().map(|(at, _)| millis(*at)),
            partition_map: Cow::Borrowed(&run.partition_map),
            assignment_log: Cow::Borrowed(&run.assignment_log),
            applied: Cow::Borrowed(&run.applied),
        }
    }
}

/// Whether the run config text `text` is `wanted` (seeds aside: `simctl start --resume`
/// names the file, not the seed the run drew).
fn same_config(text: &str, wanted: &Config) -> bool {
    let Ok(mut found) = Config::from_yaml_str(text) else {
        return false;
    };
    let mut wanted = wanted.clone();
    found.simulation.seed = None;
    wanted.simulation.seed = None;
    found == wanted
}

impl Engine {
    /// Write a checkpoint now (when checkpointing is on) and, once it is durable, tell each
    /// agent which of its batches it may drop.
    pub(super) async fn write_checkpoint(&mut self, why: &str) {
        let Some(run) = self.run.as_mut() else { return };
        if !run.config.checkpointing.enabled {
            return;
        }
        let generation = run.checkpoints.0 + 1;
        let started = std::time::Instant::now();
        run.faults.prepare_checkpoint();
        let state = RunCheckpoint::capture(run, None);
        let body = match serde_json::to_vec(&state) {
            Ok(body) => body,
            Err(error) => {
                warn!(run = %run.id, %error, "checkpoint not serializable");
                return;
            }
        };
        let positions = run.applied.clone();
        let dir = run.dir.clone();
        let bytes = body.len();
        let written =
            tokio::task::spawn_blocking(move || dir.write_checkpoint(generation, &body)).await;
        let took = started.elapsed();
        match written {
            Ok(Ok(path)) => {
                run.checkpoints = (generation, Instant::now());
                run.checkpointed.clone_from(&positions);
                run.checkpoint_stats.record(bytes, took);
                info!(run = %run.id, generation, why, bytes, ms = took.as_millis(), path = %path.display(), "checkpoint written");
                for (agent, (boot_id, number)) in positions {
                    self.registry.release(&agent, boot_id, number);
                }
            }
            Ok(Err(error)) => {
                warn!(run = %run.id, %error, "checkpoint failed");
                run.events.push(RunEvent::new(
                    EventKind::Checkpoint,
                    format!("checkpoint {generation} failed: {error}"),
                ));
            }
            Err(error) => warn!(run = %run.id, %error, "checkpoint task failed"),
        }
    }

    /// Append the events not yet in `events.log`.
    pub(super) fn log_events(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        if run.events_logged >= run.events.len() {
            return;
        }
        let at = run.clock.now().as_secs_f64();
        let lines: Vec<String> = run.events[run.events_logged..]
            .iter()
            .map(|line| format!("[{at:8.1}s] {line}"))
            .collect();
        match run.dir.append_events(lines.iter().map(String::as_str)) {
            Ok(()) => run.events_logged = run.events.len(),
            Err(error) => warn!(run = %run.id, %error, "events.log not written"),
        }
    }

    /// Resume a run from its latest checkpoint (see [`super::Command::Resume`]).
    pub(super) async fn resume(
        &mut self,
        run_dir: Option<PathBuf>,
        config: Option<Config>,
    ) -> Result<String, StartError> {
        if let Some(run) = &self.run
            && run.phase != Phase::Finished
        {
            return Err(StartError::Busy(run.id.clone()));
        }
        let root = match run_dir {
            Some(dir) => dir,
            None => sim_core::rundir::latest_unfinished(&self.runs_dir, |text| {
                config
                    .as_ref()
                    .is_none_or(|wanted| same_config(text, wanted))
            })
            .ok_or_else(|| {
                StartError::Config(format!(
                    "no unfinished run with this config under {}",
                    self.runs_dir.display()
                ))
            })?,
        };
        let config_path = root.join("config.yaml");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| StartError::Config(format!("reading {}: {e}", config_path.display())))?;
        let run_config = Config::from_yaml_str(&text)
            .map_err(|e| StartError::Config(format!("{}: {e}", config_path.display())))?;
        let dir = RunDir::open(&root, &run_config.checkpointing.path);
        if dir.finished() {
            return Err(StartError::Config(format!(
                "{} already finished (it has a report)",
                root.display()
            )));
        }
        let (generation, body) = dir
            .latest_checkpoint()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let state = RunCheckpoint::from_json(&body).map_err(|e| {
            StartError::Config(format!(
                "checkpoint {generation} in {}: {e}",
                root.display()
            ))
        })?;
        if state.phase == Phase::Finished {
            return Err(StartError::Config(format!(
                "{} already finished",
                root.display()
            )));
        }
        let nats_url = self
            .nats_url
            .clone()
            .unwrap_or_else(|| state.nats_url.to_string());
        let sim_kv = crate::stream::open_sim_kv(&nats_url)
            .await
            .map_err(|e| StartError::Infrastructure(format!("reopening {nats_url}: {e:#}")))?;
        let downtime =
            Duration::from_micros(u64::try_from(now_us() - state.written_unix_us).unwrap_or(0));
        let mut run = restore(state, dir, sim_kv, nats_url, downtime)
            .map_err(|e| StartError::Config(format!("checkpoint {generation}: {e}")))?;
        run.nats_cluster = self.open_nats_cluster();
        run.checkpoints.0 = generation;
        run.events.push(RunEvent::new(
            EventKind::Resume,
            format!(
                "resumed from checkpoint {generation} (written {:.1}s before; reports after it are resent by the agents)",
                downtime.as_secs_f64()
            ),
        ));
        let id = run.id.clone();
        let phase = run.phase.name();
        info!(run = %id, generation, phase, downtime_s = downtime.as_secs_f64(), "resuming run");
        // Agents resend what this checkpoint did not cover; those already connected are
        // made to reconnect so they do.
        run.gaps_seen = self.registry.gaps().len();
        self.registry.restore(run.applied.clone());
        self.registry.set_checkpointing(true);
        self.report_tx.send_replace(None);
        self.run = Some(run);
        self.log_events();
        self.publish_status();
        Ok(id)
    }
}

/// Rebuild a running run from its checkpoint.
fn restore(
    state: RunCheckpoint<'static>,
    dir: RunDir,
    sim_kv: async_nats::jetstream::kv::Store,
    nats_url: String,
    downtime: Duration,
) -> Result<ActiveRun, String> {
    let config = state.config.into_owned();
    let tracker = Tracker::import(tracker_config(&config), state.tracker)
        .map_err(|e| format!("tracker state: {e}"))?;
    let mut faults = state.faults.into_owned();
    faults.restore_plan(&config, state.seed)?;
    faults.shift_deadlines(downtime);
    let placement = state.placement.into_owned();
    let second_wave = state.second_wave_at_ms.map(|at| {
        let mut workers = placement.worker_spawns();
        let second = workers.split_off(workers.len().div_ceil(2));
        (Duration::from_millis(at), second)
    });
    let worker_refs: HashMap<(String, u64), WorkerRef> = state
        .worker_refs
        .into_iter()
        .map(|(process, incarnation, reference)| ((process, incarnation), WorkerRef(reference)))
        .collect();
    let now = Instant::now();
    let events = state.events.into_owned();
    let applied = state.applied.into_owned();
    Ok(ActiveRun {
        id: state.run_id.into_owned(),
        seed: state.seed,
        nats_url: nats_url.clone(),
        duration: config.simulation.duration,
        clock: RunClock::at(Duration::from_millis(state.elapsed_ms) + downtime),
        phase: state.phase,
        progress: (tracker.progress_marker().0, now),
        tracker,
        worker_refs,
        worker_names: state.worker_names.into_owned(),
        workers: state.workers.into_owned(),
        producers_alive: state.producers_alive.into_owned(),
        failures: state.failures.into_owned(),
        events_logged: events.len(),
        events,
        ownership: state.ownership.into_owned(),
        faults,
        second_wave,
        sim_kv,
        partition_map: state.partition_map.into_owned(),
        assignment_log: state.assignment_log.into_owned(),
        assignments: crate::assignment_log::watch(nats_url),
        resume_hold: Some((applied.keys().cloned().collect(), now)),
        checkpointed: applied.clone(),
        applied,
        checkpoints: (0, now),
        checkpoint_stats: super::CheckpointStats::default(),
        gaps_seen: 0,
        nats_cluster: None,
        dir,
        placement,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::{CHECKPOINT_FORMAT, RunCheckpoint, StateError};

    /// A state of another format is refused before any field is read, naming both formats:
    /// format 1 (no `format` field) held failures and events as text, which this build
    /// would misread.
    #[test]
    fn a_checkpoint_of_another_format_is_refused() {
        let format_one = br#"{"run_id": "run-1", "seed": 7, "extra_failures": ["stall: ..."],
            "infrastructure": [], "events": ["UNEXPECTED: worker-0 exited"]}"#;
        let error = RunCheckpoint::from_json(format_one).expect_err("format 1");
        assert!(
            matches!(error, StateError::Format { found: 1 }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("checkpoint format 1, this build reads format {CHECKPOINT_FORMAT}")
        );
        let newer = format!(
            r#"{{"format": {}, "run_id": "run-1"}}"#,
            CHECKPOINT_FORMAT + 1
        );
        let error = RunCheckpoint::from_json(newer.as_bytes()).expect_err("newer");
        assert_eq!(
            error.to_string(),
            format!(
                "checkpoint format {}, this build reads format {CHECKPOINT_FORMAT}",
                CHECKPOINT_FORMAT + 1
            )
        );
    }

    /// A body of this format with a bad field names where it is.
    #[test]
    fn a_damaged_checkpoint_names_the_field() {
        let body = format!(r#"{{"format": {CHECKPOINT_FORMAT}, "run_id": 5}}"#);
        let error = RunCheckpoint::from_json(body.as_bytes()).expect_err("damaged");
        assert!(
            matches!(&error, StateError::Invalid { path, .. } if path == "run_id"),
            "{error:?}"
        );
        let error = RunCheckpoint::from_json(b"not json").expect_err("not json");
        assert!(matches!(error, StateError::Invalid { .. }), "{error:?}");
    }
}
