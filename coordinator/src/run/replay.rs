//! Agents that were restarted: the journals they replay (`agent::journal`), the
//! `agent_crash` faults they end, and the restarts nobody asked for.
//!
//! A restarted agent replays what its dead children journaled; the ingest applies each
//! (journal, line) once (`RunState::journals`). What the replay cannot restore is a hole
//! in the evidence, so it is an infrastructure error naming the agent and the span of
//! time, never a failure blamed on the system under test:
//! - a child's journal is missing, or ends before what the coordinator had received from
//!   that child (it does not keep the journal the report contract asks for);
//! - an `agent_crash`'s agent does not come back within
//!   [`AGENT_RETURN_TIMEOUT`](super::faults::AGENT_RETURN_TIMEOUT);
//! - an agent process is replaced when no fault killed it (the harness crashed; its
//!   children died with it, not by parti).

use std::collections::BTreeMap;
use std::time::Duration;

use proto::v1::JournalReplayed;
use tracing::warn;

use super::ActiveRun;
use super::faults::host_healed;
use sim_core::chaos::FaultOutcome;
use sim_core::events::{EventKind, RunEvent};
use sim_core::verdict::{Failure, MissingReports, ReportGap};

/// A restarted `agent` replayed the journal of a child of its previous process.
pub(super) fn on_journal_replayed(
    run: &mut ActiveRun,
    agent: &str,
    replayed: &JournalReplayed,
    now_ms: u64,
) {
    let applied = run.state.journals.get(&replayed.journal).copied();
    let behind = applied.filter(|(line, _)| *line > replayed.last_line);
    let detail = if replayed.missing {
        Some(replayed.detail.clone())
    } else {
        behind.map(|(line, _)| {
            format!(
                "it ends at line {}, but line {line} had been received: the child does not journal what it reports",
                replayed.last_line
            )
        })
    };
    run.state.events.push(RunEvent::new(
        EventKind::Process,
        format!(
            "{agent} replayed the journal of {} ({})",
            replayed.process,
            if replayed.missing {
                "missing"
            } else {
                &replayed.detail
            }
        ),
    ));
    if let Some(detail) = detail {
        let gap = ReportGap {
            agent: agent.to_string(),
            boot_id: replayed.old_boot_id,
            missing: MissingReports::Journal {
                process: replayed.process.clone(),
                detail,
                since_ms: applied.map(|(_, at)| at),
                until_ms: now_ms,
            },
        };
        record_gap(run, gap);
    }
}

/// Compare each agent's process with the last tick's: an `agent_crash`'s agent back (or
/// not back in time), or an agent restarted by nobody's fault.
pub(super) fn watch_boots(run: &mut ActiveRun, boots: &BTreeMap<String, u64>, now: Duration) {
    let crashed: Vec<(String, usize, super::faults::HostCrash)> = run
        .state
        .faults
        .host_faults
        .iter()
        .filter(|(_, fault)| fault.excused_until.is_none())
        .filter_map(|(agent, fault)| Some((agent.clone(), fault.record, fault.crash?)))
        .collect();
    for (agent, index, crash) in crashed {
        match boots.get(&agent) {
            Some(boot) if *boot != crash.boot => {
                run.state.events.push(RunEvent::new(
                    EventKind::Fault,
                    format!(
                        "agent_crash on {agent}: back (boot {:#x} -> {boot:#x})",
                        crash.boot
                    ),
                ));
                host_healed(run, &agent, index, now);
            }
            _ if now >= crash.return_by => {
                let waited = super::faults::AGENT_RETURN_TIMEOUT;
                let gap = ReportGap {
                    agent: agent.clone(),
                    boot_id: crash.boot,
                    missing: MissingReports::NotBack {
                        crashed_ms: super::clock::millis(crash.return_by.saturating_sub(waited)),
                        waited_s: waited.as_secs(),
                    },
                };
                record_gap(run, gap);
                if let Some(record) = run.state.faults.records.get_mut(index) {
                    record.outcome = FaultOutcome::Failed("the agent did not come back".into());
                }
                // Its recovery cannot be judged: the evidence is what is missing.
                run.state.faults.unmeasure(index);
                if let Some(fault) = run.state.faults.host_faults.get_mut(&agent) {
                    fault.excused_until = Some(now);
                }
            }
            _ => {}
        }
    }
    for (agent, boot) in boots {
        let Some(old) = run.local.boots.get(agent) else {
            continue;
        };
        if old == boot {
            continue;
        }
        let planned = run
            .state
            .faults
            .host_faults
            .get(agent)
            .and_then(|fault| fault.crash)
            .is_some_and(|crash| crash.boot == *old);
        if !planned {
            let gap = ReportGap {
                agent: agent.clone(),
                boot_id: *old,
                missing: MissingReports::Unplanned {
                    new_boot_id: *boot,
                    at_ms: super::clock::millis(now),
                },
            };
            record_gap(run, gap);
        }
    }
    run.local.boots.clone_from(boots);
}

/// A hole in the evidence: an infrastructure failure of the run, logged.
pub(super) fn record_gap(run: &mut ActiveRun, gap: ReportGap) {
    warn!(run = %run.state.id, %gap, "report gap");
    run.state.failures.push(Failure::ReportGap(gap));
}

/// An `agent_crash` whose agent has not come back yet: the run waits for it rather than
/// ending for want of agents.
pub(super) fn crash_pending(run: &ActiveRun) -> bool {
    run.state
        .faults
        .host_faults
        .values()
        .any(|fault| fault.crash.is_some() && fault.excused_until.is_none())
}
