//! Leader election and the assignment calculator the leader runs.
//!
//! Election: `create("leader")` with a server-enforced TTL of `election_timeout`, renewed by
//! compare-and-set every third of it. The leader acts only while its lease is locally valid,
//! and every assignment write is fenced by the lease's revision, so a leader that was paused
//! or cut off cannot overwrite its successor's assignment even if its local check raced.
//!
//! Calculator (after parti-spec §1.8, with the Go defects fixed): joins wait for a window
//! (cold start or planned scale) and the rebalance cooldown; a worker whose heartbeat
//! expired moves its partitions after the emergency grace period; a worker that says it is
//! leaving moves its partitions at once, with no grace and no cooldown; a restarted worker
//! (same id, new incarnation) keeps its partitions and only gets a new version.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::assignment::{AssignmentDoc, plan};
use crate::control::{ControlBucket, ControlError, decode, encode, keys};
use crate::lease::{Lease, Renewal};
use crate::membership::{self, Members};
use crate::{Config, PartitionSource, State, Strategy};

/// Value of the leader key.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LeaderValue {
    worker_id: String,
    incarnation: u64,
}

/// Everything the leader side needs, shared by the election loop and the calculator.
#[derive(Debug, Clone)]
pub(crate) struct LeaderContext {
    pub bucket: ControlBucket,
    pub config: Config,
    pub worker_id: String,
    pub incarnation: u64,
    pub source: Arc<dyn PartitionSource>,
    pub strategy: Arc<dyn Strategy>,
    pub state: watch::Sender<State>,
    pub is_leader: watch::Sender<bool>,
    pub refresh: Arc<tokio::sync::Notify>,
    /// Set by a graceful stop; otherwise (a dropped manager, like a crash) the lease is
    /// left to expire.
    pub release_on_exit: Arc<std::sync::atomic::AtomicBool>,
}

/// Run elections until `cancel`; while leader, run the calculator. Releases the lease on exit.
pub(crate) async fn run_election(context: LeaderContext, cancel: CancellationToken) {
    let tick = context.config.election_timeout / 3;
    let value = encode(&LeaderValue {
        worker_id: context.worker_id.clone(),
        incarnation: context.incarnation,
    });
    let mut term: Option<(Arc<Mutex<Lease>>, CancellationToken)> = None;
    loop {
        match &term {
            None => {
                match Lease::create(
                    &context.bucket,
                    keys::LEADER.to_string(),
                    value.clone(),
                    context.config.election_timeout,
                    context.incarnation,
                )
                .await
                {
                    Ok(lease) => {
                        info!(worker = %context.worker_id, revision = lease.revision, "became leader");
                        let lease = Arc::new(Mutex::new(lease));
                        let term_cancel = cancel.child_token();
                        context.is_leader.send_replace(true);
                        tokio::spawn(run_calculator(
                            context.clone(),
                            lease.clone(),
                            term_cancel.clone(),
                        ));
                        term = Some((lease, term_cancel));
                    }
                    Err(ControlError::Exists { .. }) => {}
                    Err(error) => debug!(%error, "leader election attempt failed"),
                }
            }
            Some((lease, term_cancel)) => {
                let mut guard = lease.lock().await;
                let outcome = guard.renew(&context.bucket, value.clone()).await;
                let step_down = match outcome {
                    Renewal::Renewed => false,
                    Renewal::Lost => {
                        warn!(worker = %context.worker_id, "leader lease taken over; stepping down");
                        true
                    }
                    Renewal::Unknown(error) => {
                        let expired = !guard.is_valid();
                        if expired {
                            warn!(worker = %context.worker_id, %error, "leader lease expired locally; stepping down");
                        }
                        expired
                    }
                };
                drop(guard);
                if step_down {
                    term_cancel.cancel();
                    context.is_leader.send_replace(false);
                    term = None;
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(tick) => {}
        }
    }
    if let Some((lease, term_cancel)) = term {
        term_cancel.cancel();
        context.is_leader.send_replace(false);
        if !context
            .release_on_exit
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let lease = lease.lock().await;
        if let Err(error) = lease.release(&context.bucket).await {
            debug!(%error, "releasing leader lease failed; it will expire");
        }
        info!(worker = %context.worker_id, "released leadership");
    }
}

/// A rebalance waiting for its window.
#[derive(Debug)]
struct Pending {
    lifecycle: &'static str,
    due: Instant,
}

struct Calculator {
    context: LeaderContext,
    lease: Arc<Mutex<Lease>>,
    doc: AssignmentDoc,
    /// Workers used for the last target.
    last_workers: BTreeSet<String>,
    missing_since: BTreeMap<String, Instant>,
    pending: Option<Pending>,
    last_publish: Option<Instant>,
}

async fn run_calculator(
    context: LeaderContext,
    lease: Arc<Mutex<Lease>>,
    cancel: CancellationToken,
) {
    let (members_tx, mut members_rx) = watch::channel(Members::new());
    tokio::spawn(membership::run(
        context.bucket.clone(),
        context.config.heartbeat_ttl / 2,
        members_tx,
        cancel.clone(),
    ));
    let doc = loop {
        match context.bucket.get(keys::ASSIGNMENT).await {
            Ok(Some(value)) => match decode::<AssignmentDoc>(keys::ASSIGNMENT, &value.value) {
                Ok(doc) => break doc,
                Err(error) => {
                    warn!(%error, "unreadable assignment; starting over from version 0");
                    break AssignmentDoc::default();
                }
            },
            Ok(None) => break AssignmentDoc::default(),
            Err(error) => {
                debug!(%error, "reading assignment failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    };
    // Let the first heartbeat scan land before judging membership.
    let _ = tokio::time::timeout(Duration::from_secs(2), members_rx.changed()).await;
    let mut calculator = Calculator {
        last_workers: doc.members.keys().cloned().collect(),
        context,
        lease,
        doc,
        missing_since: BTreeMap::new(),
        pending: None,
        last_publish: None,
    };
    let members = members_rx.borrow().clone();
    calculator.start_term(&members).await;
    let tick = Duration::from_millis(100);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = members_rx.changed() => {}
            () = calculator.context.refresh.notified() => {
                let members = members_rx.borrow().clone();
                calculator.rebalance(&members, "manual-refresh").await;
            }
            () = tokio::time::sleep(tick) => {}
        }
        let members = members_rx.borrow().clone();
        calculator.step(&members).await;
    }
    calculator.set_state(State::Stable);
}

impl Calculator {
    fn set_state(&self, state: State) {
        self.context.state.send_if_modified(|current| {
            // Mirror leader phases only over the follower-visible stable states.
            let mirrorable = matches!(
                current,
                State::Stable | State::Scaling | State::Rebalancing | State::Emergency
            );
            let changed = mirrorable && *current != state;
            if changed {
                *current = state;
            }
            changed
        });
    }

    fn workers(members: &Members) -> BTreeSet<String> {
        members
            .iter()
            .filter(|(_, status)| !status.leaving)
            .map(|(worker, _)| worker.clone())
            .collect()
    }

    /// First decision of a new term: a cold start publishes at once and schedules the final
    /// assignment; a takeover keeps the existing assignment and only reacts to changes.
    async fn start_term(&mut self, members: &Members) {
        if self.doc.version > 0 {
            info!(
                version = self.doc.version,
                "leader adopted existing assignment"
            );
            return;
        }
        let workers = Self::workers(members);
        let partitions = self.context.source.list_partitions().len();
        let expected = (partitions / 10).max(1) as f64;
        let window =
            if workers.len() as f64 / expected >= self.context.config.restart_detection_ratio {
                self.context.config.cold_start_window
            } else {
                self.context.config.planned_scale_window
            };
        self.rebalance(members, "cold_start_immediate").await;
        self.pending = Some(Pending {
            lifecycle: "cold_start_final",
            due: Instant::now() + window,
        });
        self.set_state(State::Scaling);
    }

    async fn step(&mut self, members: &Members) {
        let now = Instant::now();
        let workers = Self::workers(members);
        let config = &self.context.config;

        // Leaves and confirmed deaths are urgent: no window, no cooldown.
        let leaving = members.values().any(|status| status.leaving)
            && self
                .doc
                .members
                .keys()
                .any(|w| members.get(w).is_some_and(|s| s.leaving));
        let gone: Vec<String> = self.last_workers.difference(&workers).cloned().collect();
        self.missing_since.retain(|worker, _| gone.contains(worker));
        for worker in &gone {
            self.missing_since.entry(worker.clone()).or_insert(now);
        }
        let confirmed_dead = self
            .missing_since
            .values()
            .any(|since| now.duration_since(*since) >= config.emergency_grace_period);
        let gone_within_grace = !gone.is_empty() && !confirmed_dead && !leaving;

        if confirmed_dead || leaving {
            let lifecycle = if leaving && !confirmed_dead {
                "planned_leave"
            } else {
                "emergency"
            };
            if lifecycle == "emergency" {
                self.set_state(State::Emergency);
            }
            self.rebalance(members, lifecycle).await;
            return;
        }

        let joined = workers.difference(&self.last_workers).next().is_some();
        if joined && self.pending.is_none() && !gone_within_grace {
            let (lifecycle, window) = if self.last_workers.is_empty() {
                ("cold_start", config.cold_start_window)
            } else {
                ("planned_scale", config.planned_scale_window)
            };
            let mut due = now + window;
            if let Some(last) = self.last_publish {
                due = due.max(last + config.min_rebalance_interval);
            }
            debug!(
                lifecycle,
                ?window,
                "membership grew; waiting for the window"
            );
            self.pending = Some(Pending { lifecycle, due });
            self.set_state(State::Scaling);
        }
        if let Some(pending) = &self.pending
            && now >= pending.due
            && !gone_within_grace
        {
            let lifecycle = pending.lifecycle;
            self.rebalance(members, lifecycle).await;
            return;
        }
        // Nothing to recompute: move drains forward and re-issue restarted members.
        self.settle(members).await;
    }

    /// Recompute the target with the strategy and move towards it.
    async fn rebalance(&mut self, members: &Members, lifecycle: &str) {
        let workers: Vec<String> = Self::workers(members).into_iter().collect();
        self.pending = None;
        self.missing_since.clear();
        if workers.is_empty() {
            self.last_workers.clear();
            return;
        }
        self.set_state(State::Rebalancing);
        let partitions = self.context.source.list_partitions();
        let current = self.doc.intent();
        let strategy = &self.context.strategy;
        let target = match strategy.assign_from(&workers, &partitions, &current) {
            Ok(target) => target,
            Err(error) => {
                warn!(%error, "strategy failed; keeping the current assignment");
                return;
            }
        };
        let next = plan(
            &self.doc,
            members,
            &target,
            lifecycle,
            &self.context.worker_id,
        );
        let moved = count_moved(&self.doc, &next);
        if self.publish(next).await {
            info!(
                lifecycle,
                version = self.doc.version,
                workers = workers.len(),
                partitions = partitions.len(),
                moved,
                draining = self.doc.draining.len(),
                "published assignment"
            );
            self.last_workers = workers.into_iter().collect();
            self.last_publish = Some(Instant::now());
        }
        if self.pending.is_none() {
            self.set_state(State::Stable);
        }
    }

    /// Progress without a new target: finish drains, re-issue restarted members.
    async fn settle(&mut self, members: &Members) {
        // Only move towards the current intent while everyone in it is alive; a missing
        // worker is the membership logic's business (grace, then a full rebalance).
        let intent = self.doc.intent();
        if !intent
            .keys()
            .all(|worker| members.get(worker).is_some_and(|s| !s.leaving))
        {
            return;
        }
        let next = plan(
            &self.doc,
            members,
            &intent,
            "handoff",
            &self.context.worker_id,
        );
        if !next.same_content(&self.doc) {
            let granted = self.doc.draining.len().saturating_sub(next.draining.len());
            if self.publish(next).await {
                info!(version = self.doc.version, granted, "handoff progressed");
            }
        }
        if self.pending.is_none() {
            self.set_state(State::Stable);
        }
    }

    /// Fenced write; `false` when it did not land (deposed, or NATS trouble: retried later).
    async fn publish(&mut self, mut next: AssignmentDoc) -> bool {
        if next.same_content(&self.doc) {
            return true;
        }
        for _ in 0..2 {
            let fence = {
                let lease = self.lease.lock().await;
                if !lease.is_valid() {
                    warn!("leader lease expired locally; not publishing");
                    return false;
                }
                lease.revision
            };
            next.leader_revision = fence;
            match self
                .context
                .bucket
                .fenced_put(keys::ASSIGNMENT, encode(&next), keys::LEADER, fence)
                .await
            {
                Ok(_) => {
                    self.doc = next;
                    return true;
                }
                // A renewal may have moved the revision under us: retry once with the new one.
                Err(ControlError::Conflict { .. }) => {
                    let current = self.lease.lock().await.revision;
                    if current == fence {
                        warn!("assignment write rejected by the fence: no longer leader");
                        return false;
                    }
                }
                Err(error) => {
                    warn!(%error, "assignment write failed; will retry");
                    return false;
                }
            }
        }
        false
    }
}

/// Partitions whose eventual owner changed between two documents.
fn count_moved(before: &AssignmentDoc, after: &AssignmentDoc) -> usize {
    let owner_of = |doc: &AssignmentDoc| -> BTreeMap<String, String> {
        doc.intent()
            .into_iter()
            .flat_map(|(worker, partitions)| {
                partitions
                    .into_iter()
                    .map(move |p| (p.id(), worker.clone()))
            })
            .collect()
    };
    let before = owner_of(before);
    owner_of(after)
        .iter()
        .filter(|(partition, worker)| before.get(*partition).is_some_and(|w| w != *worker))
        .count()
}
