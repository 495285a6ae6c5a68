//! Showing a run's progress: the one-line status, and following the coordinator's status
//! stream until the run finishes — a bar on a terminal, a plain line every 5 s otherwise
//! (logs and CI keep a readable, sparse record).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use proto::v1::control_client::ControlClient;
use proto::v1::{RunStatus, WatchRequest};
use tonic::transport::Channel;

use crate::exit::{ExitError, infrastructure};

/// How often a plain (non-terminal) progress line is printed.
const PLAIN_LINE_EVERY: Duration = Duration::from_secs(5);

/// The phase of a run that has its verdict.
const FINISHED: &str = "finished";

/// One line: run id, phase, elapsed of duration, and the counters.
pub fn status_line(status: &RunStatus) -> String {
    format!(
        "{} {} {:>4}s/{}s  {}",
        status.run_id,
        status.phase,
        status.elapsed_ms / 1000,
        status.duration_ms / 1000,
        counters(status)
    )
}

/// The counters shown by `status`, `watch` and the progress bar.
fn counters(status: &RunStatus) -> String {
    let leader = if status.leader.is_empty() {
        "-"
    } else {
        &status.leader
    };
    format!(
        "sent {}  received {}  in-flight {}  lost {}  dup {}  workers {}  leader {leader}",
        status.sent,
        status.received,
        status.in_flight,
        status.lost,
        status.duplicates,
        status.workers
    )
}

/// Follow the current run's progress on stderr until it finishes.
pub async fn follow(client: &mut ControlClient<Channel>) -> Result<(), ExitError> {
    let mut stream = client
        .watch(WatchRequest {})
        .await
        .map_err(infrastructure)?
        .into_inner();
    let bar = std::io::stderr().is_terminal().then(progress_bar);
    let mut last_line: Option<Instant> = None;
    while let Some(status) = stream.message().await.map_err(infrastructure)? {
        let finished = status.phase == FINISHED;
        match &bar {
            Some(bar) => show_on_bar(bar, &status),
            None if finished || last_line.is_none_or(|at| at.elapsed() >= PLAIN_LINE_EVERY) => {
                eprintln!("{}", status_line(&status));
                last_line = Some(Instant::now());
            }
            None => {}
        }
        if finished {
            break;
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(())
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn show_on_bar(bar: &ProgressBar, status: &RunStatus) {
    let duration_s = status.duration_ms / 1000;
    bar.set_length(duration_s);
    bar.set_position((status.elapsed_ms / 1000).min(duration_s));
    bar.set_message(format!("{} {}", status.phase, counters(status)));
}
