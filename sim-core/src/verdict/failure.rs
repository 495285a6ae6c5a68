//! Every reason a run can fail or be an infrastructure failure, as typed data.
//!
//! A failure's `Display` is the line the report shows (and CI systems archive), so the
//! wording is part of the product; what a failure *is* comes from [`Failure::kind`], never
//! from its wording.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::authority::Unowned;
use crate::config::ChaosEvent;
use crate::ownership::Violation;
use crate::resources::Growth;
use crate::tracker::TrackerFailure;

/// One reason the run did not pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The tracker's books: loss, late, order (ordered workers), concurrent processing,
    /// duplicates (strict), refused reports.
    Tracker(TrackerFailure),
    /// Messages stopped flowing while some were still expected.
    Stall {
        /// How long nothing new was processed.
        stalled_for: Duration,
        /// Confirmed sent, not yet processed, at that moment.
        in_flight: u64,
        /// Distinct messages sent so far.
        sent: u64,
        /// Distinct messages processed so far.
        received: u64,
    },
    /// A fault's recovery did not finish within `coordinator.rebalance_timeout`.
    RebalanceTimeout {
        /// The fault.
        event: ChaosEvent,
        /// Its target.
        target: String,
        /// When it was injected (seconds of run time).
        at_s: f64,
        /// What had not happened by the deadline.
        stuck: Unrecovered,
        /// The configured bound.
        timeout: Duration,
    },
    /// The run was stopped (`simctl stop`) while a fault's recovery was still being
    /// measured: that recovery was never judged.
    RecoveryUnfinished {
        /// The fault.
        event: ChaosEvent,
        /// Its target.
        target: String,
        /// When it was injected (seconds of run time).
        at_s: f64,
        /// When the drain began (seconds of run time).
        drain_at_s: f64,
    },
    /// A restarted worker came back under another stable id.
    Identity {
        /// The worker's process slot.
        process: String,
        /// Its stable id before the restart.
        before: String,
        /// The id it came back with.
        after: String,
    },
    /// parti's assignment history broke a rule (versions, leaders, double ownership).
    Assignment {
        /// Violations found.
        count: usize,
        /// The first, as described by the assignment log.
        first: String,
    },
    /// Workers processed partitions the assignment they had applied did not give them.
    Ownership {
        /// Violations found.
        count: usize,
        /// The first.
        first: Violation,
    },
    /// Processing that parti's assignment document did not allow: the partition was
    /// granted to another worker by then, or never to this one (`sim_core::authority`).
    Unowned {
        /// Processings, over all workers and partitions.
        count: u64,
        /// The worker and partition with the earliest of them.
        first: Unowned,
    },
    /// A worker or producer died when no fault targeted it (a panic, a non-zero exit, a
    /// signal the harness did not send).
    UnexpectedExit {
        /// The process slot.
        process: String,
        /// How it ended.
        status: ExitStatus,
        /// The end of its log when it exited, as its agent read it.
        #[serde(default)]
        log_tail: String,
    },
    /// Startup took longer than `coordinator.startup_timeout`.
    Startup(StartupMiss),
    /// After a fault's recovery, its moved partitions' backlog was not processed within
    /// `coordinator.catch_up_timeout`.
    CatchUp {
        /// The fault.
        event: ChaosEvent,
        /// Its target.
        target: String,
        /// When it was injected (seconds of run time).
        at_s: f64,
        /// Moved partitions still behind at the deadline: (partition, messages of the
        /// backlog unprocessed), the first few.
        behind: Vec<(u32, u64)>,
        /// How many partitions were behind in all.
        partitions: usize,
        /// How long after the recovery they were judged (the timeout, or less when the
        /// run ended first).
        waited: Duration,
        /// The configured bound.
        timeout: Duration,
    },
    /// A live worker that owned partitions was not heard of at the end of the run (two
    /// heartbeats): hung, stopped or cut off, whatever its partitions' traffic.
    SilentAfterChaos {
        /// Its process slot.
        process: String,
        /// Partitions its last status said it owned.
        partitions: usize,
        /// Its last report (seconds of run time).
        last_report_s: f64,
        /// When the run ended (seconds of run time).
        end_s: f64,
        /// When the last fault settled (seconds of run time); `None`: no fault.
        settled_s: Option<f64>,
    },
    /// A process's resources grew past `coordinator.max_resource_growth`.
    ResourceGrowth(Growth),
    /// Infrastructure: reports that can never arrive, so the books have a hole.
    ReportGap(ReportGap),
    /// Infrastructure: no agent was connected any more.
    AgentsLost,
    /// Infrastructure: a producer exited without the chaos having caused it. Only in states
    /// written before such exits failed the run ([`Failure::UnexpectedExit`]); kept so
    /// they still read.
    ProducerDied {
        /// The producer's process slot.
        process: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// Infrastructure: the harness failed itself (a bug; the run proves nothing).
    Internal {
        /// What went wrong.
        error: String,
    },
}

/// What was not up in time at the start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartupMiss {
    /// A worker did not follow an assignment (parti state Stable, or leading) this long
    /// after it started.
    Worker {
        /// Its process slot.
        process: String,
        /// The last state it reported ("" for none).
        state: String,
        /// The timeout.
        timeout: Duration,
    },
    /// Partitions of the map had no single live owner this long after the run started.
    Partitions {
        /// How many had none (or several).
        unowned: usize,
        /// Of how many.
        of: usize,
        /// The timeout.
        timeout: Duration,
    },
}

impl fmt::Display for StartupMiss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Worker {
                process,
                state,
                timeout,
            } => {
                let state = if state.is_empty() { "none" } else { state };
                write!(
                    f,
                    "{process} was not following an assignment {timeout:?} after it started \
                     (last state: {state})"
                )
            }
            Self::Partitions {
                unowned,
                of,
                timeout,
            } => write!(
                f,
                "{unowned} of {of} partitions had no single live owner {timeout:?} after the \
                 run started"
            ),
        }
    }
}

/// What a kind of failure is about: one per check of the verdict (and JUnit test case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Messages known to exist were never processed.
    Loss,
    /// Two workers processed one partition at once.
    ConcurrentProcessing,
    /// Messages processed more than once (strict mode only).
    Duplicates,
    /// Messages processed later than the validation window.
    Late,
    /// Messages processed after a successor (ordered workers).
    Order,
    /// Reports were refused: the books are incomplete.
    InvalidReports,
    /// Messages stopped flowing.
    Stall,
    /// A recovery took longer than allowed.
    RebalanceTimeout,
    /// A restarted worker lost its stable id.
    Identity,
    /// parti's assignment history broke a rule.
    Assignment,
    /// Processing without owning the partition.
    Ownership,
    /// A worker or producer died when no fault targeted it.
    UnexpectedExit,
    /// A worker or the partitions were not up within the startup timeout.
    Startup,
    /// A process's resources grew past the limit (a leak).
    ResourceGrowth,
    /// A moved partition's backlog was not processed in time after a recovery.
    CatchUp,
    /// A live worker reported nothing after the last fault.
    SilentAfterChaos,
    /// The harness could not test (agents, producers or reports lost): not a FAIL of the
    /// system under test.
    Infrastructure,
}

impl FailureKind {
    /// Every kind, in report order.
    pub const ALL: [FailureKind; 17] = [
        Self::Loss,
        Self::ConcurrentProcessing,
        Self::Duplicates,
        Self::Late,
        Self::Order,
        Self::InvalidReports,
        Self::Stall,
        Self::RebalanceTimeout,
        Self::Identity,
        Self::Assignment,
        Self::Ownership,
        Self::UnexpectedExit,
        Self::Startup,
        Self::ResourceGrowth,
        Self::CatchUp,
        Self::SilentAfterChaos,
        Self::Infrastructure,
    ];

    /// The name in the JSON report's `failures` (`concurrent_processing`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loss => "loss",
            Self::ConcurrentProcessing => "concurrent_processing",
            Self::Duplicates => "duplicates",
            Self::Late => "late",
            Self::Order => "order",
            Self::InvalidReports => "invalid_reports",
            Self::Stall => "stall",
            Self::RebalanceTimeout => "rebalance_timeout",
            Self::Identity => "identity",
            Self::Assignment => "assignment",
            Self::Ownership => "ownership",
            Self::UnexpectedExit => "unexpected_exit",
            Self::Startup => "startup",
            Self::ResourceGrowth => "resource_growth",
            Self::CatchUp => "catch_up",
            Self::SilentAfterChaos => "silent_after_chaos",
            Self::Infrastructure => "infrastructure",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl Failure {
    /// The check this failure belongs to.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Tracker(TrackerFailure::Loss { .. }) => FailureKind::Loss,
            Self::Tracker(TrackerFailure::ConcurrentProcessing { .. }) => {
                FailureKind::ConcurrentProcessing
            }
            Self::Tracker(TrackerFailure::Duplicates { .. }) => FailureKind::Duplicates,
            Self::Tracker(TrackerFailure::Late { .. }) => FailureKind::Late,
            Self::Tracker(TrackerFailure::OrderViolation { .. }) => FailureKind::Order,
            Self::Tracker(TrackerFailure::InvalidReports { .. }) => FailureKind::InvalidReports,
            Self::Stall { .. } => FailureKind::Stall,
            Self::RebalanceTimeout { .. } | Self::RecoveryUnfinished { .. } => {
                FailureKind::RebalanceTimeout
            }
            Self::Identity { .. } => FailureKind::Identity,
            Self::Assignment { .. } => FailureKind::Assignment,
            Self::Ownership { .. } | Self::Unowned { .. } => FailureKind::Ownership,
            Self::UnexpectedExit { .. } => FailureKind::UnexpectedExit,
            Self::Startup(_) => FailureKind::Startup,
            Self::CatchUp { .. } => FailureKind::CatchUp,
            Self::SilentAfterChaos { .. } => FailureKind::SilentAfterChaos,
            // The harness's own growth says nothing about the system under test.
            Self::ResourceGrowth(growth) if growth.harness => FailureKind::Infrastructure,
            Self::ResourceGrowth(_) => FailureKind::ResourceGrowth,
            Self::ReportGap(_)
            | Self::AgentsLost
            | Self::ProducerDied { .. }
            | Self::Internal { .. } => FailureKind::Infrastructure,
        }
    }

    /// Whether this failure makes the run an infrastructure error rather than a FAIL: the
    /// one place that decides it.
    pub fn is_infrastructure(&self) -> bool {
        self.kind() == FailureKind::Infrastructure
    }
}

impl From<TrackerFailure> for Failure {
    fn from(failure: TrackerFailure) -> Self {
        Self::Tracker(failure)
    }
}

/// The report's line for each failure; the wording predates the types, and CI histories
/// compare it, so it stays as it was.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tracker(failure) => failure.fmt(f),
            Self::Stall {
                stalled_for,
                in_flight,
                sent,
                received,
            } => write!(
                f,
                "stall: no new message processed for {stalled_for:?} ({in_flight} in flight, \
                 {sent} sent, {received} received)"
            ),
            Self::RebalanceTimeout {
                event,
                target,
                at_s,
                stuck,
                timeout,
            } => write!(
                f,
                "rebalance: after {event} on {target} at {at_s:.0}s, {stuck} within {timeout:?}"
            ),
            Self::RecoveryUnfinished {
                event,
                target,
                at_s,
                drain_at_s,
            } => write!(
                f,
                "recovery unfinished: after {event} on {target} at {at_s:.0}s, the run was \
                 stopped at {drain_at_s:.0}s before it had recovered"
            ),
            Self::Identity {
                process,
                before,
                after,
            } => write!(
                f,
                "identity: {process} was restarted as {before} and came back as {after}"
            ),
            Self::Assignment { count, first } => write!(
                f,
                "assignment: {count} violation(s) in parti's assignment history, e.g. {first}"
            ),
            Self::Ownership { count, first } => write!(
                f,
                "ownership violation: {count} processing(s) without owning the partition, \
                 e.g. {first}"
            ),
            Self::Unowned { count, first } => write!(
                f,
                "ownership violation: {count} processing(s) the assignment document did not \
                 allow, e.g. {first}"
            ),
            Self::Startup(miss) => write!(f, "startup: {miss}"),
            Self::CatchUp {
                event,
                target,
                at_s,
                behind,
                partitions,
                waited,
                timeout,
            } => {
                write!(
                    f,
                    "catch-up: after {event} on {target} at {at_s:.0}s, {partitions} moved \
                     partition(s) still had backlog {:.1}s after the recovery (limit \
                     {timeout:?})",
                    waited.as_secs_f64()
                )?;
                let listed: Vec<String> = behind
                    .iter()
                    .map(|(partition, left)| format!("partition {partition}: {left} left"))
                    .collect();
                if listed.is_empty() {
                    Ok(())
                } else {
                    write!(f, " ({})", listed.join(", "))
                }
            }
            Self::SilentAfterChaos {
                process,
                partitions,
                last_report_s,
                end_s,
                settled_s,
            } => {
                write!(
                    f,
                    "silent after chaos: {process} (owning {partitions} partition(s) by its \
                     last status) was last heard of at {last_report_s:.0}s, the run ended at \
                     {end_s:.0}s"
                )?;
                match settled_s {
                    Some(settled) => write!(f, "; the last fault settled at {settled:.0}s"),
                    None => f.write_str("; no fault was injected"),
                }
            }
            Self::ResourceGrowth(growth) if growth.harness => {
                write!(f, "harness resource growth: {growth}")
            }
            Self::ResourceGrowth(growth) => write!(f, "resource growth: {growth}"),
            Self::UnexpectedExit {
                process,
                status,
                log_tail,
            } => {
                write!(
                    f,
                    "unexpected exit: {process} died ({status}) and no fault targeted it"
                )?;
                match last_line(log_tail) {
                    Some(line) => write!(f, "; its log ends: {line}"),
                    None => Ok(()),
                }
            }
            Self::ReportGap(gap) => write!(f, "report gap: {gap}"),
            Self::AgentsLost => f.write_str("every agent disconnected"),
            Self::ProducerDied { process, status } => {
                write!(f, "producer {process} died: {status}")
            }
            Self::Internal { error } => {
                write!(f, "internal: the run's state did not re-import: {error}")
            }
        }
    }
}

/// The last non-empty line of a log, without terminal colours, at most 300 characters.
fn last_line(log: &str) -> Option<String> {
    let line = log.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    Some(plain.chars().take(300).collect())
}

/// What a recovery was still waiting for when its deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unrecovered {
    /// The agent never reported the network fault healed.
    NetworkNotHealed,
    /// Partitions were not all owned by live workers, or messages did not flow again.
    NotOwnedAndConsuming,
}

impl fmt::Display for Unrecovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NetworkNotHealed => "the network fault was not healed by its agent",
            Self::NotOwnedAndConsuming => {
                "partitions were not all owned by live workers and consuming"
            }
        })
    }
}

/// How a process ended, as its agent reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// The agent could not tell.
    Unknown,
}

impl ExitStatus {
    /// From the exit code and signal a process report carries (the code wins).
    pub fn new(code: Option<i32>, signal: Option<i32>) -> Self {
        match (code, signal) {
            (Some(code), _) => Self::Code(code),
            (None, Some(signal)) => Self::Signal(signal),
            (None, None) => Self::Unknown,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exit code {code}"),
            Self::Signal(signal) => write!(f, "signal {signal}"),
            Self::Unknown => f.write_str("unknown status"),
        }
    }
}

/// Reports that can no longer arrive: the run's accounting has a hole, which no verdict may
/// hide, so it is an infrastructure failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportGap {
    /// Agent id.
    pub agent: String,
    /// The agent process whose batches are missing.
    pub boot_id: u64,
    /// What is missing.
    pub missing: MissingReports,
}

/// What a [`ReportGap`] lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingReports {
    /// Batches `first..=last` never arrived: the agent had already dropped them (released
    /// by a coordinator whose checkpoint is not the one restored).
    Batches {
        /// First missing number.
        first: u64,
        /// Last missing number.
        last: u64,
    },
    /// The agent process was replaced while the coordinator was away: whatever the old
    /// process sent after batch `after` (the restored position) is gone with it.
    AfterRestart {
        /// The restored position of the old process.
        after: u64,
        /// The new process.
        new_boot_id: u64,
    },
    /// The agent process was replaced (SIGKILLed and restarted) and the journal of a child
    /// that died with it could not be replayed: what that child wrote after the last report
    /// the coordinator had from it (run time `since_ms`, if any) and before the replay
    /// (`until_ms`) may be gone.
    Journal {
        /// The child.
        process: String,
        /// Why (the journal's path and error, or that it ends before what was received).
        detail: String,
        /// Run time (ms) of the last report applied from that child's journal.
        since_ms: Option<u64>,
        /// Run time (ms) the replay arrived.
        until_ms: u64,
    },
    /// An `agent_crash`'s agent did not come back: its children's journals were never
    /// replayed.
    NotBack {
        /// Run time (ms) of the crash.
        crashed_ms: u64,
        /// How long the coordinator waited (s).
        waited_s: u64,
    },
    /// The agent process was replaced with no fault causing it: its children died with
    /// it, not by the system under test.
    Unplanned {
        /// The new process.
        new_boot_id: u64,
        /// Run time (ms) it was noticed.
        at_ms: u64,
    },
}

impl fmt::Display for ReportGap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.missing {
            MissingReports::Batches { first, last } => write!(
                f,
                "agent {}: report batches {first}..={last} of boot {:#x} are missing (dropped by the agent, not in the restored checkpoint)",
                self.agent, self.boot_id
            ),
            MissingReports::AfterRestart { after, new_boot_id } => write!(
                f,
                "agent {}: restarted while the coordinator was away (boot {:#x} -> {new_boot_id:#x}); reports it sent after batch {after} are lost",
                self.agent, self.boot_id
            ),
            MissingReports::Journal {
                process,
                detail,
                since_ms,
                until_ms,
            } => {
                let since = since_ms.map_or_else(
                    || "its start".to_string(),
                    |since| format!("{:.1}s", since as f64 / 1000.0),
                );
                let until_s = *until_ms as f64 / 1000.0;
                write!(
                    f,
                    "agent {}: killed (boot {:#x}); the journal of {process}, which died with it, could not be replayed ({detail}): what it reported between {since} and {until_s:.1}s (run time) may be lost",
                    self.agent, self.boot_id
                )
            }
            MissingReports::NotBack {
                crashed_ms,
                waited_s,
            } => write!(
                f,
                "agent {}: crashed at {:.1}s (agent_crash) and did not come back within {waited_s:.0}s; the journals of its children were never replayed, what they reported last is lost",
                self.agent,
                *crashed_ms as f64 / 1000.0
            ),
            MissingReports::Unplanned { new_boot_id, at_ms } => write!(
                f,
                "agent {}: its process was replaced with no fault causing it (boot {:#x} -> {new_boot_id:#x}, noticed at {:.1}s); its children died with it, not by the system under test",
                self.agent,
                self.boot_id,
                *at_ms as f64 / 1000.0
            ),
        }
    }
}
