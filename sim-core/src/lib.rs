//! parti-sim's offline core: everything judging a run needs, and nothing that talks to a
//! network or needs an async runtime. The coordinator daemon feeds it live; `simctl report
//! --run-dir` feeds it a run directory; both reach the same verdict from the same state.
//!
//! Layout:
//! - [`config`]: the YAML run configuration (the plan's schema), defaults and validation.
//! - [`tracker`]: per-partition message accounting and the verdict's evidence.
//! - [`ownership`]: processing without ownership (statuses vs processed reports).
//! - [`assignment`]: parti's assignment history, judged version by version.
//! - [`authority`]: processing judged against that history (the oracle a worker cannot
//!   bend).
//! - [`chaos`]: the seeded fault schedule, fault records and their outcomes.
//! - [`clock`]: each host's clock offset from the coordinator's, and its estimate.
//! - [`stream_check`]: the stream read as the ground truth once the producers stopped.
//! - [`foreign_reports`]: reports of another run's children, refused and counted.
//! - [`events`]: the run's events, typed by kind, and how a run ended.
//! - [`verdict`]: the verdict: every failure, typed, and `judge` (PASS / FAIL /
//!   infrastructure).
//! - [`rundir`]: a run's directory: config, events, checkpoints, final state, reports.
//! - [`record`]: what judging needs, read from a run state (checkpoint or `final.json`).
//! - [`resources`]: the leak gate (each process's resources over the run).
//! - [`report`]: the final report (text, JSON, JUnit).
//! - [`timeline`]: the run over time (sampled counters, owner changes); [`html`]: the
//!   report as a picture drawn from it.

#![forbid(unsafe_code)]

pub mod assignment;
pub mod authority;
pub mod chaos;
pub mod clock;
pub mod config;
pub mod events;
pub mod foreign_reports;
pub mod html;
pub mod ownership;
pub mod record;
pub mod report;
pub mod resources;
pub mod rundir;
pub mod stream_check;
pub mod timeline;
pub mod tracker;
pub mod verdict;
