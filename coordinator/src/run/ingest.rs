//! Applying agents' report batches: processes, workers, producers, exits and logs.

use proto::v1::{ProcessKind, ResourceSample, report};
use tracing::warn;

use super::{ActiveRun, Engine, Phase};
use crate::agents::IngestBatch;
use proto::resources::AGENT_PROCESS;
use sim_core::events::{EventKind, RunEvent};
use sim_core::resources::Usage;
use sim_core::tracker::{Processed, Sent};
use sim_core::verdict::{ExitStatus, Failure};

impl Engine {
    pub(super) async fn ingest(&mut self, batch: IngestBatch) {
        if !self.ingest_delay.is_zero() {
            tokio::time::sleep(self.ingest_delay).await;
        }
        let Some(run) = self.run.as_mut() else { return };
        if run.state.phase == Phase::Finished {
            // Only the logs a failed run asked for still count.
            for report in batch.reports {
                if let Some(report::Body::ChildLog(log)) = report.body {
                    save_child_log(run, &batch.agent, &log);
                }
            }
            return;
        }
        run.state
            .applied
            .insert(batch.agent.clone(), (batch.boot_id, batch.number));
        let now_ms = super::clock::millis(run.clock.now());
        if run.local.publishers.is_empty() {
            run.local.publishers = super::clocks::publishers(run);
        }
        let own_clock = super::clocks::host_clock(run, &self.registry, &batch.agent);
        for report in batch.reports {
            let Some(run) = self.run.as_mut() else { return };
            if !run
                .state
                .foreign_reports
                .admits(&run.state.id, &report.run_id)
            {
                if run.state.foreign_reports.count == 1 {
                    warn!(run = %run.state.id, from = %report.run_id, "a report of another run's process refused (further ones are counted)");
                }
                if matches!(report.body, Some(report::Body::Exited(_))) {
                    // Its start was counted; the agent's process count is kept right.
                    self.registry.count_process(&batch.agent, -1).await;
                }
                continue;
            }
            if report.journal != 0 {
                // A line of a journal applied before: a restarted agent's replay.
                let last = run.state.journals.entry(report.journal).or_insert((0, 0));
                if report.line <= last.0 {
                    continue;
                }
                *last = (report.line, now_ms);
            }
            let Some(body) = report.body else { continue };
            if let report::Body::JournalReplayed(replayed) = &body {
                super::replay::on_journal_replayed(run, &batch.agent, replayed, now_ms);
                continue;
            }
            if let report::Body::Network(network) = &body {
                self.on_network_report(&batch.agent, network);
                continue;
            }
            if let report::Body::SignalResult(result) = &body {
                self.on_signal_result(&batch.agent, result);
                continue;
            }
            if let report::Body::ResourceSample(sample) = &body {
                let name = format!("{}/{}", batch.agent, sample.process);
                // The agent and the producers are the harness; the workers run parti.
                let harness = sample.process == AGENT_PROCESS
                    || run.state.producers_alive.contains_key(&sample.process);
                record_resources(run, &name, harness, sample, std::time::Duration::ZERO);
                continue;
            }
            let Some(run) = self.run.as_mut() else { return };
            match body {
                report::Body::Network(_)
                | report::Body::SignalResult(_)
                | report::Body::ResourceSample(_)
                | report::Body::JournalReplayed(_) => {}
                report::Body::ChildLog(log) => save_child_log(run, &batch.agent, &log),
                report::Body::Sent(sent) => {
                    if let Err(error) = run.tracker.sent(Sent {
                        partition: sent.partition,
                        seq: sent.seq,
                        at_us: own_clock.correct(sent.published_us),
                    }) {
                        warn!(%error, "invalid sent report");
                    }
                }
                report::Body::Processed(processed) => {
                    if let Some(view) = run.state.workers.get_mut(&processed.process) {
                        view.last_report_ms = now_ms;
                    }
                    let worker = run.state.worker_ref(
                        &processed.process,
                        processed.incarnation,
                        &processed.worker_id,
                    );
                    let processed_us = own_clock.correct(processed.processed_us);
                    let published_us =
                        super::clocks::publisher_clock(run, processed.partition, own_clock)
                            .correct(processed.published_us);
                    run.state.ownership.processed(
                        &processed.process,
                        processed.incarnation,
                        processed.assignment_version,
                        processed.partition,
                    );
                    run.state.authority.processed_within(
                        &processed.worker_id,
                        &processed.process,
                        processed.partition,
                        processed_us,
                        own_clock.error_bound_us(),
                    );
                    let observed = run.tracker.processed(Processed {
                        partition: processed.partition,
                        seq: processed.seq,
                        worker,
                        delivered: processed.delivered,
                        published_us,
                        received_us: own_clock.correct(processed.received_us),
                        processed_us,
                    });
                    match observed {
                        Ok(observation) => {
                            // Both times are the worker's own clock: no correction.
                            let took_us =
                                processed.processed_us.saturating_sub(processed.received_us);
                            run.local.processing.record(took_us.max(0) as f64 / 1e6);
                            if observation.first {
                                let latency_us = processed_us.saturating_sub(published_us);
                                run.state.timeline.latency(latency_us.max(0).unsigned_abs());
                            }
                            for kind in super::traces::observed(&observation) {
                                let other = observation.overlap_with.and_then(|w| {
                                    run.state.worker_names.get(w.0 as usize).cloned()
                                });
                                let involved = super::traces::Involved {
                                    worker: &processed.worker_id,
                                    other: other.as_deref(),
                                    at_us: processed_us,
                                };
                                let message = (processed.partition, processed.seq);
                                super::traces::anomaly(run, kind, message, involved);
                            }
                        }
                        // Not counted in the processing histogram either: its times may
                        // be as invalid as the rest of it.
                        Err(error) => warn!(%error, "invalid processed report"),
                    }
                }
                report::Body::Malformed(malformed) => {
                    warn!(process = %malformed.process, subject = %malformed.subject, "malformed message");
                    let worker = run.state.worker_ref(&malformed.process, 0, "");
                    run.tracker.malformed(worker);
                }
                report::Body::Status(status) => {
                    run.state.ownership.status(
                        &status.process,
                        status.incarnation,
                        &status.worker_id,
                        status.assignment_version,
                        &status.partitions,
                    );
                    run.state.faults.check_restarted_identity(
                        &status.process,
                        &status.worker_id,
                        status.incarnation,
                        &mut run.state.failures,
                    );
                    run.state.startup.status(&status.process, &status.state);
                    let view = run.state.workers.entry(status.process.clone()).or_default();
                    view.worker_id = status.worker_id;
                    view.incarnation = status.incarnation;
                    view.leader = status.leader;
                    view.state = status.state;
                    view.alive = true;
                    view.partitions = status.partitions;
                    view.last_report_ms = now_ms;
                }
                report::Body::Started(started) => {
                    self.registry.count_process(&batch.agent, 1).await;
                    run.state.pids.insert(started.process.clone(), started.pid);
                    run.state.events.push(RunEvent::new(
                        EventKind::Process,
                        format!("{} started (pid {})", started.process, started.pid),
                    ));
                    if started.kind == ProcessKind::Worker as i32 {
                        let now = super::clock::millis(run.clock.now());
                        run.state.startup.started(&started.process, now);
                    }
                    if started.kind == ProcessKind::Producer as i32 {
                        // A respawned producer counts again until the drain stops it.
                        run.state
                            .producers_alive
                            .insert(started.process.clone(), true);
                    }
                }
                report::Body::Exited(exited) => {
                    self.registry.count_process(&batch.agent, -1).await;
                    // A child of a previous run, stopped as this one began (same slot names).
                    let ours = match run.state.pids.get(&exited.process) {
                        Some(pid) => *pid == exited.pid,
                        None => !run.state.pids_tracked,
                    };
                    if !ours {
                        warn!(run = %run.state.id, process = %exited.process, pid = exited.pid, "exit of a child this run did not start (or reported again by a replay): ignored");
                        continue;
                    }
                    // Applied once: a restarted agent replays exits it cannot know were
                    // delivered (a pid is never 0).
                    run.state.pids.insert(exited.process.clone(), 0);
                    let status = ExitStatus::from(&exited);
                    let now = run.clock.now();
                    let signalled = run.state.faults.expect_exit.remove(&exited.process);
                    if signalled {
                        // Until the agent confirms the signal reached it (`on_signal_result`).
                        run.state
                            .faults
                            .excused_exits
                            .insert(exited.process.clone(), (status, exited.log_tail.clone()));
                    }
                    let caused_by_chaos =
                        signalled || run.state.faults.host_faulted(&exited.process, now);
                    let expected = caused_by_chaos
                        || (matches!(run.state.phase, Phase::Draining { .. } | Phase::Finished)
                            && exited.code == Some(0));
                    let line = format!("{} (pid {}) exited: {status}", exited.process, exited.pid);
                    if !expected {
                        warn!(run = %run.state.id, "{line}");
                    }
                    let kind = if expected {
                        EventKind::Process
                    } else {
                        EventKind::Unexpected
                    };
                    run.state.events.push(RunEvent::new(kind, line));
                    run.state.faults.on_exit(
                        &exited.process,
                        run.state.phase == Phase::Running,
                        now,
                    );
                    // A producer stopped by the drain may exit as it likes; anything else
                    // no fault explains fails the run, naming the process and its last words.
                    let producer = exited.kind == ProcessKind::Producer as i32;
                    let drained_producer =
                        producer && matches!(run.state.phase, Phase::Draining { .. });
                    if !expected && !drained_producer {
                        // Its last words, in the run directory now (a failed run's full
                        // logs are collected at the end, if the agent is still there).
                        let last_words = proto::v1::ChildLog {
                            process: format!("{}-exit-{}", exited.process, exited.pid),
                            tail: exited.log_tail.clone(),
                            truncated: true,
                        };
                        save_child_log(run, &batch.agent, &last_words);
                        run.state.failures.push(Failure::UnexpectedExit {
                            process: exited.process.clone(),
                            status,
                            log_tail: exited.log_tail.clone(),
                        });
                    }
                    run.state.startup.exited(&exited.process);
                    if producer {
                        run.state
                            .producers_alive
                            .insert(exited.process.clone(), false);
                    } else if let Some(view) = run.state.workers.get_mut(&exited.process) {
                        view.alive = false;
                        view.leader = false;
                    }
                }
            }
        }
    }
}

/// Record a resource sample of process `name`; its baseline is taken after the run's
/// warm-up and at least `settled` into the run.
pub(super) fn record_resources(
    run: &mut ActiveRun,
    name: &str,
    harness: bool,
    sample: &ResourceSample,
    settled: std::time::Duration,
) {
    let usage = Usage {
        rss_bytes: sample.rss_bytes,
        fds: sample.fds,
        threads: sample.threads,
        at_ms: super::clock::millis(run.clock.now()),
    };
    let warmup_end_ms = super::clock::millis(run.state.config.chaos.warmup.max(settled));
    run.state
        .resources
        .record((name, sample.pid, harness), usage, warmup_end_ms);
}

/// Write a collected child log to `logs/<agent>-<process>.log` in the run directory.
fn save_child_log(run: &ActiveRun, agent: &str, log: &proto::v1::ChildLog) {
    let safe = |name: &str| -> String {
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let name = format!("logs/{}-{}.log", safe(agent), safe(&log.process));
    let mut text = String::new();
    if log.truncated {
        text.push_str("[... earlier output not collected ...]\n");
    }
    text.push_str(&log.tail);
    let written = std::fs::create_dir_all(run.io.dir.root().join("logs"))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            run.io
                .dir
                .write_file(&name, text.as_bytes())
                .map_err(|e| e.to_string())
        });
    if let Err(error) = written {
        warn!(run = %run.state.id, %error, "child log not saved");
    }
}
