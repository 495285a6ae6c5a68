//! Resource samples for the leak gate: every [`SAMPLE_EVERY`], the RSS, open file
//! descriptors and threads of every live child and of the agent itself, read from `/proc`
//! and sent as `ResourceSample` reports (a child's stamped with its run).

use std::time::Duration;

use proto::resources::{AGENT_PROCESS, sample};
use proto::v1::{Report, ResourceSample, report};

use crate::journal::OwnReports;
use crate::supervisor::Supervisor;

/// How often every process is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Sample every live child and the agent every [`SAMPLE_EVERY`], forever.
pub async fn run(supervisor: Supervisor, reports: OwnReports) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let mut samples: Vec<(ResourceSample, String)> = supervisor
            .live_children()
            .await
            .into_iter()
            .filter_map(|(process, pid, run_id)| sample(&process, pid).map(|s| (s, run_id)))
            .collect();
        if let Some(own) = sample(AGENT_PROCESS, std::process::id()) {
            samples.push((own, String::new()));
        }
        for (sample, run_id) in samples {
            let report = Report {
                body: Some(report::Body::ResourceSample(sample)),
                run_id,
                ..Report::default()
            };
            if reports.send(report).await.is_err() {
                return;
            }
        }
    }
}
