//! Ending a run: the final state judged and written, agents released and stopped.

use proto::v1::coordinator_message;
use tracing::{info, warn};

use super::{ActiveRun, CHILD_LOG_TAIL, Engine, Phase, checkpoint, now_us};
use sim_core::events::{EndReason, EventKind, RunEvent};
use sim_core::record::RunRecord;
use sim_core::report::{Outcome, RunSummary};
use sim_core::tracker::WorkerRef;
use sim_core::verdict::{Failure, Judgement};

impl Engine {
    pub(super) async fn finish(&mut self, reason: EndReason) {
        let agents = self.registry.connected().await;
        let Some(run) = self.run.as_mut() else { return };
        // Before the tracker writes off what is missing: a catch-up still running is judged
        // on what it has not processed.
        let now = run.clock.now();
        super::faults::check_catch_up(run, now, true);
        run.tracker.finish(now_us());
        super::ground_truth::count_unannounced_lost(run);
        super::tick::sample_timeline(run, now, true);
        super::silence::check(run, now, &agents);
        run.state.phase = Phase::Finished;
        run.clock.freeze();
        run.state.end = Some(reason);
        let duplicates = run.tracker.snapshot(now_us()).duplicates();
        run.state.faults.close_duplicates(duplicates);
        run.state.events.push(RunEvent::new(
            EventKind::Phase,
            format!("finished: {reason}"),
        ));
        // The evidence as judged: `simctl report --run-dir` re-judges this very state.
        let Some(run) = self.run.as_mut() else { return };
        let stats = run.local.checkpoint_stats;
        if stats.count > 0 {
            run.state.events.push(RunEvent::new(
                EventKind::Checkpoint,
                format!(
                    "checkpoints: {} written, last {} bytes, slowest {} ms",
                    stats.count,
                    stats.last_bytes,
                    stats.slowest.as_millis()
                ),
            ));
        }
        let fallback = (run.tracker.snapshot(now_us()), run.state.id.clone());
        // The anomalies behind the verdict, with partition and sequence, in the event log.
        for anomaly in &fallback.0.anomalies {
            let name = |w: Option<WorkerRef>| {
                w.and_then(|w| run.state.worker_names.get(w.0 as usize).cloned())
                    .unwrap_or_default()
            };
            run.state.events.push(RunEvent::new(
                EventKind::Anomaly,
                format!(
                    "anomaly {:?}: partition {} seq {} {} {}",
                    anomaly.kind,
                    anomaly.partition,
                    anomaly.seq,
                    name(anomaly.worker),
                    name(anomaly.other_worker)
                ),
            ));
        }
        run.state.faults.prepare_checkpoint();
        let run: &ActiveRun = run;
        // Judged from the very bytes written as `final.json`: `simctl report --run-dir`
        // reads the same record of the same file with the same function.
        let body = checkpoint::state_body(run).map_err(|e| e.to_string());
        let judged = match &body {
            Ok(body) => judge(body),
            Err(error) => Err(error.clone()),
        };
        let summary = judged.unwrap_or_else(|error| {
            // Cannot happen short of a bug: the state was exported just now.
            warn!(%error, "judging the exported state failed");
            RunSummary::bare(
                fallback.1.clone(),
                Judgement::new(vec![Failure::Internal { error }]),
                reason,
                fallback.0.clone(),
            )
        });
        info!(run = %run.state.id, outcome = ?summary.judgement.outcome, "run finished");
        let mut report = proto::v1::RunReport::from(&summary);
        report.html = sim_core::html::render(&summary, &run.state.timeline);
        let files = match &body {
            Ok(body) => run.io.dir.write_final(body),
            Err(error) => {
                warn!(%error, "final state not serializable");
                Ok(())
            }
        }
        .and_then(|()| run.io.dir.write_file("report.txt", report.text.as_bytes()))
        .and_then(|()| run.io.dir.write_file("report.html", report.html.as_bytes()))
        .and_then(|()| {
            run.io
                .dir
                .write_file("report.junit.xml", report.junit.as_bytes())
        })
        // Last: its presence marks the run finished (not resumable).
        .and_then(|()| run.io.dir.write_file("report.json", report.json.as_bytes()));
        if let Err(error) = files {
            warn!(run = %run.state.id, %error, "run directory incomplete");
        }
        if let Some(run) = self.run.as_mut() {
            super::traces::finish(run, summary.judgement.outcome.as_str()).await;
            super::metrics::finish_push(run).await;
        }
        let Some(run) = self.run.as_ref() else { return };
        // The final state is durable: agents may drop everything the run applied.
        for (agent, (boot_id, number)) in &run.state.applied {
            self.registry.release(agent, *boot_id, *number);
        }
        // A failed run keeps its processes' logs (they arrive as ChildLog reports, written
        // to logs/ in the run directory); then every process stops.
        let failed = summary.judgement.outcome != Outcome::Pass;
        for agent in &agents {
            if failed {
                let collect = proto::v1::CollectLogs {
                    max_bytes_per_process: CHILD_LOG_TAIL,
                };
                self.registry
                    .send(agent, coordinator_message::Body::CollectLogs(collect))
                    .await;
            }
            self.registry
                .send(
                    agent,
                    coordinator_message::Body::Shutdown(proto::v1::Shutdown {}),
                )
                .await;
        }
        self.log_events();
        self.publish_status();
        self.status_tx
            .send_modify(|status| status.verdict = report.verdict);
        self.report_tx.send_replace(Some(report));
    }
}

/// The verdict on a run state body: its record, summarized (what `simctl report --run-dir`
/// does with the same file).
fn judge(body: &[u8]) -> Result<RunSummary, String> {
    RunRecord::from_json(body)
        .and_then(|record| record.summarize())
        .map_err(|e| e.to_string())
}
