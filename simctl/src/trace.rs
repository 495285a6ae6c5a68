//! `simctl trace PARTITION:SEQ [--run-dir D]`: the trace id of one message of a run, whether
//! its own spans were sampled, and the Grafana Explore link that opens it in Tempo.
//!
//! Nothing is asked of a server: a message's trace id is derived from (run, partition, seq)
//! (`telemetry::ids`), the same way the producer, the worker and the coordinator derived it,
//! and the run directory says the run id (its final state's, or its latest checkpoint's), its
//! sampling ratio and where Grafana is.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sim_core::record::RunRecord;
use sim_core::rundir::RunDir;
use telemetry::MessageTrace;

use crate::cli::TraceArgs;
use crate::exit::{Exit, ExitError, bad_input};

/// A message of a run: `PARTITION:SEQ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRef {
    /// Partition.
    pub partition: u32,
    /// Partition sequence (from 1).
    pub seq: u64,
}

impl FromStr for MessageRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wrong = || format!("{text:?}: expected PARTITION:SEQ, e.g. 3:1042");
        let (partition, seq) = text.split_once(':').ok_or_else(wrong)?;
        let partition = partition.trim().parse().map_err(|_| wrong())?;
        let seq: u64 = seq.trim().parse().map_err(|_| wrong())?;
        if seq == 0 {
            return Err(format!("{text:?}: sequences start at 1"));
        }
        Ok(Self { partition, seq })
    }
}

/// `simctl trace`.
pub fn trace(args: &TraceArgs) -> Result<Exit, ExitError> {
    let dir = match &args.run_dir {
        Some(dir) => dir.clone(),
        None => newest_run(Path::new("runs"))?,
    };
    let config = crate::config::load(&dir.join("config.yaml"))?;
    // The run id as the run recorded it: a copied or renamed directory still names its run.
    let (body, _) =
        crate::offline::evidence(&RunDir::open(&dir, &config.checkpointing.path), &dir)?;
    let record = RunRecord::from_json(&body)
        .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", dir.display())))?;
    let run_id = record.run_id.as_str();
    let traces = &config.telemetry.traces;
    if !traces.enabled {
        return Err(bad_input(anyhow::anyhow!(
            "{run_id} ran with telemetry.traces.enabled: false: nothing of it was exported"
        )));
    }
    // Any partition: partition changes add ids past `partitions.count` during a run.
    let MessageRef { partition, seq } = args.message;
    let ids = MessageTrace::of(run_id, partition, seq);
    let (_, ratio) = traces.effective();
    let trace_id = ids.trace_id.to_string();
    println!("trace_id {trace_id}");
    println!("message  partition {partition} seq {seq} of {run_id}");
    if ids.sampled(ratio) {
        println!("sampled  yes (ratio {ratio}): its send and process spans were exported");
    } else {
        println!(
            "sampled  no (ratio {ratio}): only anomaly spans, if the verdict found one, are in it"
        );
    }
    println!(
        "grafana  {}",
        telemetry::links::explore_url(&config.telemetry.tempo_url, &trace_id)
    );
    Ok(Exit::Pass)
}

/// The newest run directory (by name: run ids start with their start time) under `runs`.
fn newest_run(runs: &Path) -> Result<PathBuf, ExitError> {
    let entries = std::fs::read_dir(runs)
        .map_err(|e| bad_input(anyhow::anyhow!("{}: {e} (give --run-dir)", runs.display())))?;
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            let named = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("run-"));
            named && path.join("config.yaml").is_file()
        })
        .max()
        .ok_or_else(|| {
            bad_input(anyhow::anyhow!(
                "no run directory under {} (give --run-dir)",
                runs.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_refs() {
        assert_eq!(
            "3:1042".parse::<MessageRef>(),
            Ok(MessageRef {
                partition: 3,
                seq: 1042
            })
        );
        for bad in ["3", "x:1", "3:", "3:0", "-1:4"] {
            assert!(bad.parse::<MessageRef>().is_err(), "{bad}");
        }
    }
}
