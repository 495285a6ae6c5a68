//! `simctl report --run-dir D`: judge a run directory offline, no coordinator needed — from
//! its final state, or from its latest checkpoint if the run did not finish — and compare
//! with the verdict recorded when it finished, if any.
//!
//! Everything here is `sim-core`'s: a run state's record ([`RunRecord`]) and the function
//! that judged the run when it finished — no coordinator code is linked.

use std::path::Path;

use proto::v1::RunReport;
use sim_core::record::RunRecord;
use sim_core::report::RunSummary;
use sim_core::rundir::RunDir;

use crate::cli::ReportFiles;
use crate::exit::{Exit, ExitError, bad_input};
use crate::{config, report};

/// Judge `dir` and deliver its report; the exit is the verdict.
pub fn report(dir: &Path, files: &ReportFiles) -> Result<Exit, ExitError> {
    let config = config::load(&dir.join("config.yaml"))?;
    let run = RunDir::open(dir, &config.checkpointing.path);
    let (body, source) = evidence(&run, dir)?;
    let record = RunRecord::from_json(&body)
        .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", dir.display())))?;
    let summary = record
        .summarize()
        .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", dir.display())))?;
    let mut run_report = RunReport::from(&summary);
    run_report.html = sim_core::html::render(&summary, &record.timeline);
    eprintln!("parti-sim: judged {} from its {source}", dir.display());
    compare_with_recorded(dir, &summary);
    report::deliver(&run_report, files)
}

/// The whole evidence of a run (a checkpoint body) and what it was taken from.
pub(crate) fn evidence(run: &RunDir, dir: &Path) -> Result<(Vec<u8>, String), ExitError> {
    let final_error = match run.read_final() {
        Ok(body) => return Ok((body, "final state".to_string())),
        Err(error) => error,
    };
    match run.latest_checkpoint() {
        Ok((generation, body)) => Ok((
            body,
            format!(
                "checkpoint {generation} (the run did not finish; messages in flight at that \
                 point are not judged lost)"
            ),
        )),
        Err(error) => Err(bad_input(anyhow::anyhow!(
            "{}: no final state ({final_error}) and no checkpoint ({error})",
            dir.display()
        ))),
    }
}

/// Say whether the verdict now is the one recorded when the run finished (`report.json`).
fn compare_with_recorded(dir: &Path, now: &RunSummary) {
    let Ok(text) = std::fs::read_to_string(dir.join("report.json")) else {
        return;
    };
    let now = now.judgement.outcome;
    match sim_core::report::recorded_outcome(&text) {
        Some(recorded) if recorded == now => {
            eprintln!("parti-sim: same verdict as recorded ({recorded})");
        }
        recorded => {
            let recorded = recorded.map_or_else(|| "none".to_string(), |o| o.to_string());
            eprintln!("parti-sim: WARNING: recorded verdict {recorded}, re-judged {now}")
        }
    }
}
