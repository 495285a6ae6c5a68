//! The leak gate: each long-lived process's resources (RSS, open file descriptors, threads)
//! from the end of warm-up to the end of the run.
//!
//! Agents sample their children and themselves every 10 s, the coordinator itself. A
//! process's *baseline* is its second sample (the first is taken while it starts up) at or
//! after the run's warm-up (`chaos.warmup`); its *last* is the newest. A new pid in a slot
//! (a restart) starts a new series. Growth from baseline to last beyond
//! `coordinator.max_resource_growth` percent *and* beyond an absolute floor (so a process
//! going from 3 to 5 threads does not trip it) fails the run, naming the process; series
//! shorter than 10 s are not judged. Every process's baseline and last sample are in the
//! report.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::verdict::Failure;

/// Growth below these never fails, whatever the percentage.
const FLOOR_RSS_BYTES: u64 = 64 << 20;
/// See [`FLOOR_RSS_BYTES`].
const FLOOR_FDS: u64 = 32;
/// See [`FLOOR_RSS_BYTES`].
const FLOOR_THREADS: u64 = 16;
/// The shortest series judged.
const MIN_SPAN_MS: u64 = 10_000;

/// One sample of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Resident set size.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub fds: u32,
    /// Threads.
    pub threads: u32,
    /// Run time of the sample, ms.
    pub at_ms: u64,
}

/// One process's series.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessResources {
    /// `<agent>/<process>`, or `coordinator`.
    pub process: String,
    /// Part of the harness (agent, coordinator, producer), not of the system under test:
    /// its growth is an infrastructure error, not a FAIL.
    #[serde(default)]
    pub harness: bool,
    /// The pid of this series.
    pub pid: u32,
    /// Samples of this pid so far.
    pub samples: u32,
    /// The baseline (see the module docs), once there is one.
    pub first: Option<Usage>,
    /// The newest sample.
    pub last: Option<Usage>,
}

/// Which resource grew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Resident memory.
    Rss,
    /// Open file descriptors.
    Fds,
    /// Threads.
    Threads,
}

impl Resource {
    fn of(self, usage: &Usage) -> u64 {
        match self {
            Self::Rss => usage.rss_bytes,
            Self::Fds => u64::from(usage.fds),
            Self::Threads => u64::from(usage.threads),
        }
    }

    fn floor(self) -> u64 {
        match self {
            Self::Rss => FLOOR_RSS_BYTES,
            Self::Fds => FLOOR_FDS,
            Self::Threads => FLOOR_THREADS,
        }
    }

    /// `value` in this resource's unit.
    pub fn show(self, value: u64) -> String {
        match self {
            #[allow(clippy::cast_precision_loss)]
            Self::Rss => format!("{:.1} MiB", value as f64 / f64::from(1u32 << 20)),
            Self::Fds => format!("{value} fds"),
            Self::Threads => format!("{value} threads"),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rss => "rss",
            Self::Fds => "open files",
            Self::Threads => "threads",
        })
    }
}

/// A process whose resource grew past the limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    /// `<agent>/<process>`, or `coordinator`.
    pub process: String,
    /// A harness process (see [`ProcessResources::harness`]).
    #[serde(default)]
    pub harness: bool,
    /// Its pid.
    pub pid: u32,
    /// What grew.
    pub resource: Resource,
    /// Baseline and last sample.
    pub first: Usage,
    /// See `first`.
    pub last: Usage,
    /// The configured limit, percent.
    pub limit_percent: f64,
}

impl fmt::Display for Growth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (first, last) = (self.resource.of(&self.first), self.resource.of(&self.last));
        write!(
            f,
            "{} (pid {}): {} grew from {} to {} between {}s and {}s (limit {}% and {})",
            self.process,
            self.pid,
            self.resource,
            self.resource.show(first),
            self.resource.show(last),
            self.first.at_ms / 1000,
            self.last.at_ms / 1000,
            self.limit_percent,
            self.resource.show(self.resource.floor()),
        )
    }
}

/// Every process's series.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceWatch {
    processes: BTreeMap<String, ProcessResources>,
}

impl ResourceWatch {
    /// A sample of `process` (pid `pid`; `harness`: see [`ProcessResources::harness`]);
    /// `warmup_end_ms`: run time before which no baseline is taken.
    pub fn record(
        &mut self,
        (process, pid, harness): (&str, u32, bool),
        usage: Usage,
        warmup_end_ms: u64,
    ) {
        let fresh = || ProcessResources {
            process: process.to_string(),
            harness,
            pid,
            ..ProcessResources::default()
        };
        let series = self
            .processes
            .entry(process.to_string())
            .or_insert_with(fresh);
        if series.pid != pid {
            *series = fresh();
        }
        series.samples += 1;
        if series.first.is_none() && series.samples >= 2 && usage.at_ms >= warmup_end_ms {
            series.first = Some(usage);
        }
        series.last = Some(usage);
    }

    /// Every series, by process.
    pub fn processes(&self) -> Vec<ProcessResources> {
        self.processes.values().cloned().collect()
    }

    /// Growth past `limit_percent` (and the floor), one failure per process and resource.
    pub fn failures(&self, limit_percent: f64) -> Vec<Failure> {
        let mut failures = Vec::new();
        for series in self.processes.values() {
            let (Some(first), Some(last)) = (series.first, series.last) else {
                continue;
            };
            if last.at_ms < first.at_ms + MIN_SPAN_MS {
                continue;
            }
            for resource in [Resource::Rss, Resource::Fds, Resource::Threads] {
                let (before, after) = (resource.of(&first), resource.of(&last));
                let growth = after.saturating_sub(before);
                #[allow(clippy::cast_precision_loss)]
                let over_percent = growth as f64 > before as f64 * limit_percent / 100.0;
                if growth > resource.floor() && over_percent {
                    failures.push(Failure::ResourceGrowth(Growth {
                        process: series.process.clone(),
                        harness: series.harness,
                        pid: series.pid,
                        resource,
                        first,
                        last,
                        limit_percent,
                    }));
                }
            }
        }
        failures
    }
}

/// One line for the text report: how many processes were judged, and the largest RSS
/// growth among them. `None` when nothing was sampled.
pub fn summary_line(processes: &[ProcessResources]) -> Option<String> {
    if processes.is_empty() {
        return None;
    }
    let judged: Vec<(&ProcessResources, Usage, Usage)> = processes
        .iter()
        .filter_map(|p| Some((p, p.first?, p.last?)))
        .filter(|(_, first, last)| last.at_ms >= first.at_ms + MIN_SPAN_MS)
        .collect();
    let mut line = format!(
        "resources: {} process(es) sampled, {} judged",
        processes.len(),
        judged.len()
    );
    let most = judged
        .iter()
        .max_by_key(|(_, first, last)| last.rss_bytes.saturating_sub(first.rss_bytes));
    if let Some((process, first, last)) = most {
        line.push_str(&format!(
            "; most grown: {} rss {} → {}",
            process.process,
            Resource::Rss.show(first.rss_bytes),
            Resource::Rss.show(last.rss_bytes)
        ));
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(mib: u64, fds: u32, at_s: u64) -> Usage {
        Usage {
            rss_bytes: mib << 20,
            fds,
            threads: 4,
            at_ms: at_s * 1000,
        }
    }

    #[test]
    fn growth_past_the_percentage_and_the_floor_fails_naming_the_process() {
        let mut watch = ResourceWatch::default();
        for (at, mib) in [(5, 10), (15, 40), (25, 90), (35, 200)] {
            watch.record(("local/worker-1", 7, false), usage(mib, 20, at), 0);
        }
        // Small numbers: +100 % but below the floor.
        for (at, mib) in [(5, 10), (15, 20), (35, 40)] {
            watch.record(("local/worker-2", 8, false), usage(mib, 20, at), 0);
        }
        let failures = watch.failures(25.0);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(
            failures[0].to_string(),
            "resource growth: local/worker-1 (pid 7): rss grew from 40.0 MiB to 200.0 MiB \
             between 15s and 35s (limit 25% and 64.0 MiB)"
        );
        assert!(watch.failures(500.0).is_empty(), "within a looser limit");
        assert_eq!(
            summary_line(&watch.processes()).as_deref(),
            Some(
                "resources: 2 process(es) sampled, 2 judged; most grown: local/worker-1 rss \
                 40.0 MiB → 200.0 MiB"
            )
        );
    }

    #[test]
    fn a_restart_starts_a_new_series_and_warm_up_is_not_judged() {
        let mut watch = ResourceWatch::default();
        watch.record(("local/worker-1", 7, false), usage(10, 20, 5), 0);
        watch.record(("local/worker-1", 7, false), usage(500, 20, 15), 0);
        // Restarted: the new pid's startup is not growth.
        for (at, mib) in [(20, 10), (30, 300), (45, 310)] {
            watch.record(("local/worker-1", 9, false), usage(mib, 20, at), 0);
        }
        assert!(watch.failures(25.0).is_empty(), "{:?}", watch.processes());
        // Baselines only after the warm-up (40 s here): too short a series to judge.
        let mut warm = ResourceWatch::default();
        for (at, mib) in [(5, 10), (15, 20), (35, 300), (45, 310)] {
            warm.record(("coordinator", 1, true), usage(mib, 20, at), 40_000);
        }
        assert!(warm.failures(25.0).is_empty());
        assert_eq!(warm.processes()[0].first.map(|u| u.at_ms), Some(45_000));
    }

    #[test]
    fn the_harnesss_own_growth_is_an_infrastructure_error() {
        let mut watch = ResourceWatch::default();
        for (at, mib) in [(5, 10), (15, 40), (35, 200)] {
            watch.record(("local/agent", 3, true), usage(mib, 20, at), 0);
        }
        let failures = watch.failures(25.0);
        assert_eq!(failures.len(), 1);
        assert!(failures[0].is_infrastructure());
        assert!(
            failures[0]
                .to_string()
                .starts_with("harness resource growth: local/agent (pid 3): rss grew")
        );
    }

    #[test]
    fn leaking_file_descriptors_fail_too() {
        let mut watch = ResourceWatch::default();
        for (at, fds) in [(5, 10), (15, 20), (35, 200)] {
            watch.record(("local/worker-1", 7, false), usage(10, fds, at), 0);
        }
        let failures = watch.failures(25.0);
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0]
                .to_string()
                .contains("open files grew from 20 fds to 200 fds")
        );
    }
}
