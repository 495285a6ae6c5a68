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

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use super::clock::{RunClock, millis};
use super::state::RunState;
use super::{ActiveRun, Engine, Local, Phase, RunIo, StartError, now_us};
use sim_core::config::Config;
use sim_core::events::{EventKind, RunEvent};
use sim_core::record::{read_state, tracker_config};
use sim_core::rundir::RunDir;
use sim_core::tracker::{Tracker, TrackerState};

/// The shape of a run state file this build writes and reads (`sim_core::record`'s: the
/// record the verdict reads is part of this file). Files without a `format` are format 1
/// (failures and events as plain text); 2 typed them.
pub use sim_core::record::{STATE_FORMAT as CHECKPOINT_FORMAT, StateError};

/// A run state file (`checkpoints/ckpt-*.json`, `final.json`): the [`RunState`] with, beside
/// it, what the engine keeps in another form — the tracker's books (versioned on their own)
/// and the run clock as "run time, wall clock" at writing.
#[derive(Debug, Serialize)]
struct StateFile<'a> {
    /// Run time at the checkpoint.
    elapsed_ms: u64,
    /// Wall clock at the checkpoint (µs since the epoch): a resumed run adds the time the
    /// coordinator was down to its run time.
    written_unix_us: i64,
    tracker: TrackerState,
    #[serde(flatten)]
    state: &'a RunState,
}

/// A run state file as read back (see [`StateFile`]).
#[derive(Debug)]
pub(super) struct SavedRun {
    elapsed_ms: u64,
    written_unix_us: i64,
    tracker: TrackerState,
    state: RunState,
}

/// The part of a state file beside the [`RunState`].
#[derive(Debug, Deserialize)]
struct Beside {
    elapsed_ms: u64,
    written_unix_us: i64,
    tracker: TrackerState,
}

impl SavedRun {
    /// Read one from a checkpoint body.
    ///
    /// The state and what is beside it are read in two passes over the body rather than
    /// through `#[serde(flatten)]`, which buffers the fields and then cannot read maps with
    /// integer keys (JSON writes them as strings). Resuming is rare; the second pass is cheap.
    ///
    /// # Errors
    /// The body is of another format, or not a run state.
    pub(super) fn from_json(body: &[u8]) -> Result<Self, StateError> {
        let state: RunState = read_state(body)?;
        let beside: Beside = read_state(body)?;
        Ok(Self {
            elapsed_ms: beside.elapsed_ms,
            written_unix_us: beside.written_unix_us,
            tracker: beside.tracker,
            state,
        })
    }
}

/// The state file of `run` now (call `run.state.faults.prepare_checkpoint()` first).
pub(super) fn state_body(run: &ActiveRun) -> Result<Vec<u8>, serde_json::Error> {
    encode(&run.state, &run.tracker, run.clock.now())
}

/// The state file of `state` with `tracker`'s books, at run time `elapsed`.
fn encode(
    state: &RunState,
    tracker: &Tracker,
    elapsed: Duration,
) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&StateFile {
        elapsed_ms: millis(elapsed),
        written_unix_us: now_us(),
        tracker: tracker.export(),
        state,
    })
}

/// Whether the run config text `text` is `wanted` (seeds aside: `simctl start --resume`
/// names the file, not the seed the run drew).
fn same_config(text: &str, wanted: &Config) -> bool {
    let Ok(mut found) = Config::from_yaml_str(text) else {
        return false;
    };
    let mut wanted = wanted.clone();
    // The run directory holds telemetry as resolved from the environment at its start; what
    // the wanted config leaves to the environment is taken as it was then (a restarted
    // coordinator may lack the variables).
    wanted.telemetry.resolve_as(&found.telemetry);
    found.simulation.seed = None;
    wanted.simulation.seed = None;
    found == wanted
}

impl Engine {
    /// Write a checkpoint now (when checkpointing is on) and, once it is durable, tell each
    /// agent which of its batches it may drop.
    pub(super) async fn write_checkpoint(&mut self, why: &str) {
        let Some(run) = self.run.as_mut() else { return };
        if !run.state.config.checkpointing.enabled {
            return;
        }
        let generation = run.local.checkpoints.0 + 1;
        let started = std::time::Instant::now();
        run.state.faults.prepare_checkpoint();
        let body = match state_body(run) {
            Ok(body) => body,
            Err(error) => {
                warn!(run = %run.state.id, %error, "checkpoint not serializable");
                return;
            }
        };
        let positions = run.state.applied.clone();
        let dir = run.io.dir.clone();
        let bytes = body.len();
        let written =
            tokio::task::spawn_blocking(move || dir.write_checkpoint(generation, &body)).await;
        let took = started.elapsed();
        match written {
            Ok(Ok(path)) => {
                run.local.checkpoints = (generation, Instant::now());
                run.local.checkpointed.clone_from(&positions);
                run.local.checkpoint_stats.record(bytes, took);
                info!(run = %run.state.id, generation, why, bytes, ms = took.as_millis(), path = %path.display(), "checkpoint written");
                for (agent, (boot_id, number)) in positions {
                    self.registry.release(&agent, boot_id, number);
                }
            }
            Ok(Err(error)) => {
                warn!(run = %run.state.id, %error, "checkpoint failed");
                run.state.events.push(RunEvent::new(
                    EventKind::Checkpoint,
                    format!("checkpoint {generation} failed: {error}"),
                ));
            }
            Err(error) => warn!(run = %run.state.id, %error, "checkpoint task failed"),
        }
    }

    /// Append the events not yet in `events.log`.
    pub(super) fn log_events(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        if run.local.events_logged >= run.state.events.len() {
            return;
        }
        let at = run.clock.now().as_secs_f64();
        let lines: Vec<String> = run.state.events[run.local.events_logged..]
            .iter()
            .map(|line| format!("[{at:8.1}s] {line}"))
            .collect();
        match run.io.dir.append_events(lines.iter().map(String::as_str)) {
            Ok(()) => run.local.events_logged = run.state.events.len(),
            Err(error) => warn!(run = %run.state.id, %error, "events.log not written"),
        }
    }

    /// Resume a run from its latest checkpoint (see [`super::Command::Resume`]).
    pub(super) async fn resume(
        &mut self,
        run_dir: Option<PathBuf>,
        config: Option<Config>,
    ) -> Result<String, StartError> {
        if let Some(run) = &self.run
            && run.state.phase != Phase::Finished
        {
            return Err(StartError::Busy(run.state.id.clone()));
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
        let saved = SavedRun::from_json(&body).map_err(|e| {
            StartError::Config(format!(
                "checkpoint {generation} in {}: {e}",
                root.display()
            ))
        })?;
        if saved.state.phase == Phase::Finished {
            return Err(StartError::Config(format!(
                "{} already finished",
                root.display()
            )));
        }
        self.open_metrics(&run_config.metrics.prometheus).await?;
        let nats_url = self
            .nats_url
            .clone()
            .unwrap_or_else(|| saved.state.nats_url.clone());
        let sim_kv = crate::stream::open_sim_kv(&nats_url)
            .await
            .map_err(|e| StartError::Infrastructure(format!("reopening {nats_url}: {e:#}")))?;
        let io = RunIo {
            sim_kv,
            assignments: crate::assignment_log::watch(nats_url.clone()),
            dir,
            nats_cluster: self.open_nats_cluster(),
            traces: super::traces::start(&run_config, &saved.state.id),
            // Started below, once the run is restored.
            metrics_push: None,
        };
        let downtime =
            Duration::from_micros(u64::try_from(now_us() - saved.written_unix_us).unwrap_or(0));
        let gaps_seen = self.registry.gaps().len();
        let mut run = restore(saved, io, nats_url, downtime, gaps_seen)
            .map_err(|e| StartError::Config(format!("checkpoint {generation}: {e}")))?;
        run.local.checkpoints.0 = generation;
        run.io.metrics_push = super::metrics::start_push(&run_config, &run.state.id);
        run.state.events.push(RunEvent::new(
            EventKind::Resume,
            format!(
                "resumed from checkpoint {generation} (written {:.1}s before; reports after it are resent by the agents)",
                downtime.as_secs_f64()
            ),
        ));
        let id = run.state.id.clone();
        let phase = run.state.phase.name();
        info!(run = %id, generation, phase, downtime_s = downtime.as_secs_f64(), "resuming run");
        // Agents resend what this checkpoint did not cover; those already connected are
        // made to reconnect so they do.
        self.registry.restore(run.state.applied.clone());
        self.registry.set_checkpointing(true);
        self.report_tx.send_replace(None);
        self.run = Some(run);
        self.log_events();
        self.publish_status();
        Ok(id)
    }
}

/// Rebuild a running run from its saved state; `downtime`: how long no coordinator ran it.
fn restore(
    saved: SavedRun,
    io: RunIo,
    nats_url: String,
    downtime: Duration,
    gaps_seen: usize,
) -> Result<ActiveRun, String> {
    let mut state = saved.state;
    let tracker = Tracker::import(tracker_config(&state.config), saved.tracker)
        .map_err(|e| format!("tracker state: {e}"))?;
    state.faults.restore_plan(&state.config, state.seed)?;
    state.faults.shift_deadlines(downtime);
    state.nats_url = nats_url;
    let now = Instant::now();
    let local = Local {
        progress: (tracker.progress_marker().0, now),
        events_logged: state.events.len(),
        resume_hold: Some((state.applied.keys().cloned().collect(), now)),
        checkpointed: state.applied.clone(),
        ..Local::new(gaps_seen)
    };
    Ok(ActiveRun {
        clock: RunClock::at(Duration::from_millis(saved.elapsed_ms) + downtime),
        tracker,
        state,
        io,
        local,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{CHECKPOINT_FORMAT, SavedRun, StateError, encode};
    use crate::run::state::{Phase, RunState};
    use sim_core::config::Config;
    use sim_core::events::{EventKind, RunEvent};
    use sim_core::record::{RunRecord, tracker_config};
    use sim_core::tracker::{Processed, Sent, Tracker};
    use sim_core::verdict::Failure;

    /// A state of another format is refused before any field is read, naming both formats:
    /// format 1 (no `format` field) held failures and events as text, which this build
    /// would misread.
    #[test]
    fn a_checkpoint_of_another_format_is_refused() {
        let format_one = br#"{"run_id": "run-1", "seed": 7, "extra_failures": ["stall: ..."],
            "infrastructure": [], "events": ["UNEXPECTED: worker-0 exited"]}"#;
        let error = SavedRun::from_json(format_one).expect_err("format 1");
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
        let error = SavedRun::from_json(newer.as_bytes()).expect_err("newer");
        assert_eq!(
            error.to_string(),
            format!(
                "checkpoint format {}, this build reads format {CHECKPOINT_FORMAT}",
                CHECKPOINT_FORMAT + 1
            )
        );
    }

    /// A body of this format with a bad field is refused, naming the field.
    #[test]
    fn a_damaged_checkpoint_names_the_field() {
        let (state, tracker) = sample();
        let body = encode(&state, &tracker, Duration::from_secs(1)).expect("encoded");
        let mut value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        value["run_id"] = serde_json::json!(5);
        let damaged = serde_json::to_vec(&value).expect("json");
        let error = SavedRun::from_json(&damaged).expect_err("damaged");
        assert!(
            matches!(&error, StateError::Invalid { message, .. } if message.contains("expected a string")),
            "{error:?}"
        );
        value["run_id"] = serde_json::json!("run-1");
        value["tracker"]["tick"] = serde_json::json!("many");
        let damaged = serde_json::to_vec(&value).expect("json");
        let error = SavedRun::from_json(&damaged).expect_err("damaged tracker");
        assert!(
            matches!(&error, StateError::Invalid { path, .. } if path == "tracker.tick"),
            "{error:?}"
        );
        let error = SavedRun::from_json(b"not json").expect_err("not json");
        assert!(matches!(error, StateError::Invalid { .. }), "{error:?}");
    }

    /// A run state as a run has it a minute in, built without NATS: a worker known to the
    /// tracker, a message sent and processed, a recorded failure and event, the drain begun.
    fn sample() -> (RunState, Tracker) {
        let config = Config::from_yaml_str(
            "simulation: {duration: 1m}\n\
             partitions: {count: 4, message_rate_per_partition: 1}\n\
             workers: {count: 2}\n",
        )
        .expect("config");
        let url = "nats://127.0.0.1:4222";
        let placement = crate::placement::place(&config, 7, &["a".into()], url);
        let map = placement.partition_map(config.partitions.count);
        let mut state = RunState::new(
            "run-1".into(),
            config.clone(),
            7,
            (placement, map),
            url.into(),
        );
        let worker = state.worker_ref("worker-0", 1, "w0");
        state.failures.push(Failure::AgentsLost);
        state
            .events
            .push(RunEvent::new(EventKind::Phase, "drain: duration reached"));
        state.phase = Phase::Draining {
            since: Duration::from_secs(60),
        };
        state.applied.insert("a".into(), (3, 17));
        // Maps with integer keys (versions here), which JSON writes as strings.
        state.ownership.status("worker-0", 1, "w0", 3, &[1, 2]);
        state.ownership.processed("worker-0", 1, 3, 1);
        state.faults.prepare_checkpoint();
        let mut tracker = Tracker::new(tracker_config(&config), 4);
        tracker
            .sent(Sent {
                partition: 1,
                seq: 1,
                at_us: 1_000,
            })
            .expect("sent");
        tracker
            .processed(Processed {
                partition: 1,
                seq: 1,
                worker,
                delivered: 1,
                published_us: 1_000,
                received_us: 2_000,
                processed_us: 3_000,
            })
            .expect("processed");
        (state, tracker)
    }

    /// Without the write time, which differs on every write.
    fn without_write_time(body: &[u8]) -> serde_json::Value {
        let mut value: serde_json::Value = serde_json::from_slice(body).expect("json");
        value
            .as_object_mut()
            .expect("object")
            .remove("written_unix_us");
        value
    }

    /// The whole state survives its file: read back and written again, it is the same file
    /// (so every field is both written and read), and the record the verdict reads finds its
    /// fields in it.
    #[test]
    fn a_run_state_round_trips_through_its_file() {
        let (state, tracker) = sample();
        let body = encode(&state, &tracker, Duration::from_millis(61_000)).expect("encoded");
        let saved = SavedRun::from_json(&body).expect("read back");
        assert_eq!(saved.elapsed_ms, 61_000);
        let tracker = Tracker::import(tracker_config(&saved.state.config), saved.tracker)
            .expect("tracker imports");
        let again = encode(&saved.state, &tracker, Duration::from_millis(61_000)).expect("again");
        assert_eq!(without_write_time(&body), without_write_time(&again));
        assert_eq!(saved.state.worker_refs.len(), 1);
        assert_eq!(saved.state.phase.name(), "draining");

        let record = RunRecord::from_json(&body).expect("record");
        assert_eq!(record.run_id, "run-1");
        assert_eq!(record.elapsed_ms, 61_000);
        assert_eq!(record.worker_names, vec!["w0/worker-0".to_string()]);
        assert_eq!(record.failures, vec![Failure::AgentsLost]);
        assert_eq!(record.events.len(), 1);
        assert!(record.end.is_none());
    }

    /// Every leaf of a JSON value, as a JSON pointer.
    fn leaves(value: &serde_json::Value, at: String, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    let key = key.replace('~', "~0").replace('/', "~1");
                    leaves(child, format!("{at}/{key}"), out);
                }
            }
            serde_json::Value::Array(items) if !items.is_empty() => {
                for (i, child) in items.iter().enumerate() {
                    leaves(child, format!("{at}/{i}"), out);
                }
            }
            _ => out.push(at),
        }
    }

    /// What a resuming coordinator and `simctl report --run-dir` do with a state body, up to
    /// where they would touch NATS or the disk: each step either refuses it or works.
    fn read_everything(body: &[u8]) {
        if let Ok(saved) = SavedRun::from_json(body) {
            let config = tracker_config(&saved.state.config);
            if let Ok(tracker) = Tracker::import(config, saved.tracker) {
                let _ = tracker.snapshot(0);
            }
            let mut state = saved.state;
            let _ = state.faults.restore_plan(&state.config, state.seed);
        }
        if let Ok(record) = RunRecord::from_json(body) {
            let _ = record.summarize();
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Issue 12, hostile input: a checkpoint edited by hand (checksum recomputed, so
        /// the frame lets it through) with any one field replaced by a value of any type
        /// is refused with an error or read, never a panic.
        #[test]
        fn a_checkpoint_with_any_field_replaced_never_panics(
            at in proptest::prelude::any::<proptest::sample::Index>(),
            with in proptest::sample::select(vec![
                serde_json::json!(null),
                serde_json::json!(0),
                serde_json::json!(-1),
                serde_json::json!(u64::MAX),
                serde_json::json!(i64::MIN),
                serde_json::json!(1e300),
                serde_json::json!(0.5),
                serde_json::json!(""),
                serde_json::json!("x".repeat(1000)),
                serde_json::json!(true),
                serde_json::json!([]),
                serde_json::json!({}),
                serde_json::json!([u64::MAX, u64::MAX]),
            ]),
        ) {
            let (state, tracker) = sample();
            let body = encode(&state, &tracker, Duration::from_secs(1)).expect("encoded");
            let mut value: serde_json::Value = serde_json::from_slice(&body).expect("json");
            let mut paths = Vec::new();
            leaves(&value, String::new(), &mut paths);
            let path = at.get(&paths).clone();
            if let Some(leaf) = value.pointer_mut(&path) {
                *leaf = with;
            }
            read_everything(&serde_json::to_vec(&value).expect("json"));
        }

        /// Cut short or with a byte changed, a body is refused or read, never a panic.
        #[test]
        fn a_truncated_or_flipped_checkpoint_never_panics(
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            flip in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::prelude::any::<u8>(),
        ) {
            let (state, tracker) = sample();
            let body = encode(&state, &tracker, Duration::from_secs(1)).expect("encoded");
            let mut flipped = body.clone();
            let at = flip.index(flipped.len());
            flipped[at] = byte;
            read_everything(&flipped);
            read_everything(&body[..cut.index(body.len())]);
        }
    }
}
