//! Delivering a run's report: its text on stdout, the JSON and JUnit files where asked, and
//! its verdict as the exit code. The same for a live run, a coordinator's last run and an
//! offline judgement.

use std::path::Path;

use anyhow::Context;
use proto::v1::RunReport;

use crate::cli::ReportFiles;
use crate::exit::{Exit, ExitError, infrastructure};

/// Print `report`, write the files asked for; the exit is its verdict.
pub fn deliver(report: &RunReport, files: &ReportFiles) -> Result<Exit, ExitError> {
    print!("{}", report.text);
    if let Some(path) = &files.json {
        write(path, &report.json)?;
    }
    if let Some(path) = &files.junit {
        write(path, &report.junit)?;
    }
    if let Some(path) = &files.html {
        if report.html.is_empty() {
            return Err(infrastructure(anyhow::anyhow!(
                "the coordinator sent no HTML report (an older coordinator?)"
            )));
        }
        write(path, &report.html)?;
    }
    Ok(Exit::of_report(report))
}

fn write(path: &Path, contents: &str) -> Result<(), ExitError> {
    std::fs::write(path, contents)
        .with_context(|| format!("writing {}", path.display()))
        .map_err(infrastructure)
}
