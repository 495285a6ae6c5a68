//! The `Manager`: one worker's membership in the group.
//!
//! Start order (why): claim the stable id first (it names every other key), then the
//! heartbeat lease (makes us visible to the leader), then join the election, then follow
//! the assignment. Stop order is the reverse, and drains partitions *before* saying we are
//! leaving, so the leader can hand them over without waiting for any TTL.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use crate::assignment::{AssignmentDoc, MemberStatus};
use crate::control::{ControlBucket, ControlError, decode, encode, keys};
use crate::identity::{self, IdentityError};
use crate::leader::{self, LeaderContext};
use crate::lease::{Fence, Lease, Renewal};
use crate::{Config, ConfigError, Partition, PartitionSource, Strategy};

/// Lifecycle of a manager. Followers go Init → ClaimingId → Election → WaitingAssignment →
/// Stable; the leader additionally shows Scaling / Rebalancing / Emergency while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not started.
    Init,
    /// Claiming a stable id.
    ClaimingId,
    /// Joining the election.
    Election,
    /// Waiting for the first assignment that names this incarnation.
    WaitingAssignment,
    /// Following the assignment.
    Stable,
    /// (leader) a join was seen; waiting for the window.
    Scaling,
    /// (leader) computing and publishing.
    Rebalancing,
    /// (leader) a worker died; reassigning its partitions.
    Emergency,
    /// Disconnected from NATS: keeps the assignment while its leases hold.
    Degraded,
    /// A lease was lost (id or heartbeat taken or expired): processing stopped for good.
    Fenced,
    /// Stopped.
    Shutdown,
}

/// This worker's current partitions, and what the last version changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignment {
    /// Assignment version (0 before the first).
    pub version: u64,
    /// Why the leader wrote it.
    pub lifecycle: String,
    /// Partitions this worker owns now.
    pub partitions: Vec<Partition>,
    /// Gained in this version.
    pub added: Vec<Partition>,
    /// Lost in this version.
    pub removed: Vec<Partition>,
}

/// A change the listener must apply before the manager confirms it to the leader.
#[derive(Debug, Clone)]
pub struct AssignmentChange {
    /// Version being applied.
    pub version: u64,
    /// Start processing these.
    pub added: Vec<Partition>,
    /// Stop processing these — fully (no handler running) before the returned future ends.
    pub removed: Vec<Partition>,
    /// Permission to process; check it before every side effect.
    pub fence: Fence,
}

/// Applies assignment changes, e.g. starts and stops consumers ([`crate::WorkerConsumer`]).
pub trait AssignmentListener: Send + Sync + std::fmt::Debug {
    /// Apply `change`; return only once every removed partition has stopped processing.
    fn apply(&self, change: AssignmentChange) -> BoxFuture<'_, ()>;

    /// Stop everything (shutdown or lost lease); return once no handler runs.
    fn stop_all(&self) -> BoxFuture<'_, ()>;
}

/// Why a manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The control bucket could not be opened.
    #[error("opening the control bucket: {0}")]
    Bucket(#[source] ControlError),
    /// No stable id could be claimed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The heartbeat lease could not be created.
    #[error("creating the heartbeat lease: {0}")]
    Heartbeat(#[source] ControlError),
    /// Startup took longer than `startup_timeout`.
    #[error("startup did not finish within {0:?}")]
    Timeout(Duration),
}

/// Heartbeat value.
type HeartbeatValue = MemberStatus;

struct Shared {
    bucket: ControlBucket,
    config: Config,
    worker_id: String,
    incarnation: u64,
    fence: Fence,
    state: watch::Sender<State>,
    assignment: watch::Sender<Assignment>,
    applied_version: AtomicU64,
    leaving: std::sync::atomic::AtomicBool,
    /// Set by a graceful stop: release the leases on the way out. A dropped manager
    /// behaves like a crash and lets them expire.
    release_on_exit: Arc<std::sync::atomic::AtomicBool>,
    heartbeat_now: Notify,
    listener: Option<Arc<dyn AssignmentListener>>,
    /// Serialises applying a version with stopping everything, so a version that arrives
    /// during shutdown cannot restart a partition after it was stopped.
    apply_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("worker_id", &self.worker_id)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

/// One worker's membership: stable id, heartbeat, election, assignment.
#[derive(Debug)]
pub struct Manager {
    shared: Arc<Shared>,
    is_leader: watch::Receiver<bool>,
    refresh: Arc<Notify>,
    cancel: CancellationToken,
    election_cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    lease_task: Option<JoinHandle<()>>,
}

// === impl Manager ===

impl Manager {
    /// Claim an id, start heartbeating, join the election and follow the assignment.
    ///
    /// Returns once the id is claimed and the heartbeat is live (state `WaitingAssignment`);
    /// use [`Manager::wait_for_state`] to wait for `Stable`.
    pub async fn start(
        client: async_nats::Client,
        config: Config,
        source: Arc<dyn PartitionSource>,
        strategy: Arc<dyn Strategy>,
        listener: Option<Arc<dyn AssignmentListener>>,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let timeout = config.startup_timeout;
        tokio::time::timeout(
            timeout,
            Self::start_inner(client, config, source, strategy, listener),
        )
        .await
        .map_err(|_| StartError::Timeout(timeout))?
    }

    async fn start_inner(
        client: async_nats::Client,
        config: Config,
        source: Arc<dyn PartitionSource>,
        strategy: Arc<dyn Strategy>,
        listener: Option<Arc<dyn AssignmentListener>>,
    ) -> Result<Self, StartError> {
        let (state, _) = watch::channel(State::ClaimingId);
        let bucket = ControlBucket::open(client.clone(), &config.bucket, config.bucket_replicas)
            .await
            .map_err(StartError::Bucket)?;
        let incarnation = new_incarnation();
        let id_lease = identity::claim(&bucket, &config, incarnation).await?;
        let worker_id = id_lease
            .key
            .strip_prefix(keys::ID_PREFIX)
            .unwrap_or(&id_lease.key)
            .to_string();
        let fence = Fence::default();
        fence.set_id(id_lease.valid_until);

        let heartbeat_value = encode(&HeartbeatValue {
            incarnation,
            applied_version: 0,
            leaving: false,
        });
        let heartbeat_key = keys::heartbeat(&worker_id);
        // We own the id, so a leftover heartbeat under it is a dead predecessor's: take it.
        let heartbeat = match Lease::create(
            &bucket,
            heartbeat_key.clone(),
            heartbeat_value.clone(),
            config.heartbeat_ttl,
            incarnation,
        )
        .await
        {
            Err(ControlError::Exists { .. }) => {
                let current = bucket
                    .get(&heartbeat_key)
                    .await
                    .map_err(StartError::Heartbeat)?;
                let expected = current.map_or(0, |value| value.revision);
                Lease::take_over(
                    &bucket,
                    heartbeat_key,
                    heartbeat_value,
                    expected,
                    config.heartbeat_ttl,
                    incarnation,
                )
                .await
            }
            other => other,
        }
        .map_err(StartError::Heartbeat)?;
        fence.set_heartbeat(heartbeat.valid_until);
        info!(worker = %worker_id, incarnation, "joined");
        state.send_replace(State::Election);

        let shared = Arc::new(Shared {
            bucket: bucket.clone(),
            config: config.clone(),
            worker_id: worker_id.clone(),
            incarnation,
            fence,
            state,
            assignment: watch::channel(Assignment::default()).0,
            applied_version: AtomicU64::new(0),
            leaving: false.into(),
            release_on_exit: Arc::new(false.into()),
            heartbeat_now: Notify::new(),
            listener,
            apply_lock: tokio::sync::Mutex::new(()),
        });
        let cancel = CancellationToken::new();
        let election_cancel = cancel.child_token();
        let (is_leader_tx, is_leader) = watch::channel(false);
        let refresh = Arc::new(Notify::new());
        let leader_context = LeaderContext {
            bucket,
            config,
            worker_id,
            incarnation,
            source,
            strategy,
            state: shared.state.clone(),
            is_leader: is_leader_tx,
            refresh: refresh.clone(),
            release_on_exit: shared.release_on_exit.clone(),
        };
        let span = tracing::info_span!("parti", worker = %shared.worker_id);
        let lease_task = tokio::spawn(
            keep_leases(shared.clone(), id_lease, heartbeat, cancel.clone())
                .instrument(span.clone()),
        );
        tokio::spawn(
            log_state_changes(shared.state.subscribe(), cancel.clone()).instrument(span.clone()),
        );
        shared.state.send_replace(State::WaitingAssignment);
        let tasks = vec![
            tokio::spawn(
                leader::run_election(leader_context, election_cancel.clone())
                    .instrument(span.clone()),
            ),
            tokio::spawn(
                follow_assignment(shared.clone(), cancel.clone()).instrument(span.clone()),
            ),
            tokio::spawn(watch_connection(shared.clone(), client, cancel.clone()).instrument(span)),
        ];
        Ok(Self {
            shared,
            is_leader,
            refresh,
            cancel,
            election_cancel,
            tasks,
            lease_task: Some(lease_task),
        })
    }

    /// The stable worker id, e.g. `worker-3`.
    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }

    /// This process's incarnation (distinguishes a restarted process holding the same id).
    pub fn incarnation(&self) -> u64 {
        self.shared.incarnation
    }

    /// Whether this manager currently holds the leader lease.
    pub fn is_leader(&self) -> bool {
        *self.is_leader.borrow()
    }

    /// Leadership changes.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.is_leader.clone()
    }

    /// The current state.
    pub fn state(&self) -> State {
        *self.shared.state.borrow()
    }

    /// State changes.
    pub fn state_watch(&self) -> watch::Receiver<State> {
        self.shared.state.subscribe()
    }

    /// Assignment changes (each value is a whole version).
    pub fn assignment(&self) -> watch::Receiver<Assignment> {
        self.shared.assignment.subscribe()
    }

    /// Permission to process right now.
    pub fn fence(&self) -> Fence {
        self.shared.fence.clone()
    }

    /// Wait until the state is `state`, or `timeout`. Returns whether it was reached.
    pub async fn wait_for_state(&self, state: State, timeout: Duration) -> bool {
        let mut states = self.shared.state.subscribe();
        tokio::time::timeout(timeout, states.wait_for(|current| *current == state))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    /// Ask the leader to redistribute now (after the partition source changed). Followers
    /// do nothing; the leader bypasses windows and cooldown.
    pub fn refresh_partitions(&self) {
        if self.is_leader() {
            self.refresh.notify_one();
        }
    }

    /// Graceful stop: give up leadership, drain every partition, tell the leader we are
    /// leaving (so it reassigns at once), wait until we are out of the assignment (bounded
    /// by `shutdown_timeout`), then release the heartbeat and the id.
    pub async fn stop(mut self) {
        let shared = self.shared.clone();
        let deadline = Instant::now() + shared.config.shutdown_timeout;
        info!(worker = %shared.worker_id, "stopping");
        shared.release_on_exit.store(true, Ordering::SeqCst);
        self.election_cancel.cancel();
        // Leadership goes first so another worker can take over while we drain.
        for task in self.tasks.drain(..1) {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        let was_fenced = *shared.state.borrow() == State::Fenced;
        shared.state.send_replace(State::Shutdown);
        let _ = tokio::time::timeout_at(deadline, stop_processing(&shared)).await;
        if !was_fenced {
            shared.leaving.store(true, Ordering::SeqCst);
            shared.heartbeat_now.notify_one();
            // Stay visible as "leaving" until the leader has published us out.
            let _ = tokio::time::timeout_at(deadline, wait_until_removed(&shared)).await;
        }
        shared.fence.revoke();
        self.cancel.cancel();
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        if let Some(task) = self.lease_task.take() {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        info!(worker = %shared.worker_id, "stopped");
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        // A dropped (not stopped) manager must not keep heartbeating forever; it behaves
        // like a crashed process: nothing released, the leases expire.
        self.cancel.cancel();
    }
}

async fn wait_until_removed(shared: &Shared) {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        interval.tick().await;
        // The last worker standing has nobody to publish it out.
        if let Ok(others) = shared.bucket.scan(keys::HEARTBEAT_PREFIX).await {
            let own = keys::heartbeat(&shared.worker_id);
            if others.iter().all(|(key, _)| *key == own) {
                return;
            }
        }
        match shared.bucket.get(keys::ASSIGNMENT).await {
            Ok(Some(value)) => match decode::<AssignmentDoc>(keys::ASSIGNMENT, &value.value) {
                Ok(doc) if doc.members.get(&shared.worker_id) != Some(&shared.incarnation) => {
                    return;
                }
                _ => {}
            },
            Ok(None) => return,
            Err(_) => {}
        }
    }
}

/// One event per state transition, in order (the Go library fired hooks from fresh
/// goroutines, so observers could see transitions out of order).
async fn log_state_changes(mut states: watch::Receiver<State>, cancel: CancellationToken) {
    let mut previous = *states.borrow_and_update();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = states.changed() => if changed.is_err() { return },
        }
        let current = *states.borrow_and_update();
        if current != previous {
            info!(from = ?previous, to = ?current, "state changed");
            previous = current;
        }
    }
}

/// A process-unique, restart-unique number: time, pid and a counter through xxh3.
fn new_incarnation() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(&nanos.to_le_bytes());
    bytes.extend_from_slice(&std::process::id().to_le_bytes());
    bytes.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    // Zero is reserved for "no incarnation".
    xxhash_rust::xxh3::xxh3_64(&bytes).max(1)
}

// === background tasks ===

/// Renew the heartbeat every interval (and at once after applying a version) and the id
/// every third of its TTL. Losing either fences this worker for good.
async fn keep_leases(
    shared: Arc<Shared>,
    mut id: Lease,
    mut heartbeat: Lease,
    cancel: CancellationToken,
) {
    let config = &shared.config;
    let id_every = config.worker_id_ttl / 3;
    let mut last_id_renewal = Instant::now();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = shared.heartbeat_now.notified() => {}
            () = tokio::time::sleep(config.heartbeat_interval) => {}
        }
        let value = encode(&HeartbeatValue {
            incarnation: shared.incarnation,
            applied_version: shared.applied_version.load(Ordering::SeqCst),
            leaving: shared.leaving.load(Ordering::SeqCst),
        });
        let mut lost = match heartbeat.renew(&shared.bucket, value).await {
            Renewal::Renewed => {
                shared.fence.set_heartbeat(heartbeat.valid_until);
                false
            }
            Renewal::Lost => true,
            Renewal::Unknown(error) => {
                debug!(worker = %shared.worker_id, %error, "heartbeat renewal failed; retrying");
                false
            }
        };
        if !lost && last_id_renewal.elapsed() >= id_every {
            let value = identity::id_value(config, shared.incarnation);
            match id.renew(&shared.bucket, value).await {
                Renewal::Renewed => {
                    shared.fence.set_id(id.valid_until);
                    last_id_renewal = Instant::now();
                }
                Renewal::Lost => lost = true,
                Renewal::Unknown(error) => {
                    debug!(worker = %shared.worker_id, %error, "id renewal failed; retrying");
                }
            }
        }
        if lost {
            fence_for_good(&shared).await;
            return;
        }
    }
    if !shared.release_on_exit.load(Ordering::SeqCst) {
        return;
    }
    // Graceful stop: release both leases so the id is free at once — for this process's
    // identity token first (reserved before the delete, so no fresh claimer slips in).
    if let Some(worker_id) = id.key.strip_prefix(crate::control::keys::ID_PREFIX)
        && let Err(error) =
            crate::identity::remember_token(&shared.bucket, &shared.config, worker_id).await
    {
        debug!(%error, "reserving the id for the identity token failed");
    }
    for lease in [&heartbeat, &id] {
        if let Err(error) = lease.release(&shared.bucket).await {
            debug!(%error, key = %lease.key, "release failed; the lease will expire");
        }
    }
}

/// A lease was taken or expired on the server: stop all processing now.
async fn fence_for_good(shared: &Shared) {
    shared.fence.revoke();
    warn!(worker = %shared.worker_id, "lease lost: stopping all processing (restart to rejoin)");
    shared.state.send_replace(State::Fenced);
    stop_processing(shared).await;
}

/// Stop every partition (after the state became `Fenced` or `Shutdown`, which keeps
/// `apply` from starting any again) and publish the empty assignment.
async fn stop_processing(shared: &Shared) {
    let _applying = shared.apply_lock.lock().await;
    if let Some(listener) = &shared.listener {
        listener.stop_all().await;
    }
    shared.assignment.send_modify(|assignment| {
        assignment.removed = std::mem::take(&mut assignment.partitions);
        assignment.added.clear();
    });
}

/// Watch the assignment key (plus a periodic read, in case the watch is reconnecting) and
/// apply every newer version.
async fn follow_assignment(shared: Arc<Shared>, cancel: CancellationToken) {
    let (docs_tx, mut docs_rx) = watch::channel::<Option<AssignmentDoc>>(None);
    let reader = tokio::spawn(read_assignments(shared.clone(), docs_tx, cancel.clone()));
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = docs_rx.changed() => if changed.is_err() { break },
        }
        let Some(doc) = docs_rx.borrow_and_update().clone() else {
            continue;
        };
        if doc.version <= shared.applied_version.load(Ordering::SeqCst) {
            continue;
        }
        let state = *shared.state.borrow();
        if matches!(state, State::Fenced | State::Shutdown) {
            break;
        }
        apply(&shared, &doc).await;
    }
    reader.abort();
}

async fn apply(shared: &Shared, doc: &AssignmentDoc) {
    let _applying = shared.apply_lock.lock().await;
    if matches!(*shared.state.borrow(), State::Fenced | State::Shutdown) {
        return;
    }
    let mine: BTreeSet<Partition> = doc
        .partitions_for(&shared.worker_id, shared.incarnation)
        .into_iter()
        .collect();
    let before: BTreeSet<Partition> = shared
        .assignment
        .borrow()
        .partitions
        .iter()
        .cloned()
        .collect();
    let added: Vec<Partition> = mine.difference(&before).cloned().collect();
    let removed: Vec<Partition> = before.difference(&mine).cloned().collect();
    if let Some(listener) = &shared.listener
        && (!added.is_empty() || !removed.is_empty())
    {
        listener
            .apply(AssignmentChange {
                version: doc.version,
                added: added.clone(),
                removed: removed.clone(),
                fence: shared.fence.clone(),
            })
            .await;
    }
    shared.applied_version.store(doc.version, Ordering::SeqCst);
    // Confirm at once: a drain waits on this.
    shared.heartbeat_now.notify_one();
    info!(
        worker = %shared.worker_id,
        version = doc.version,
        lifecycle = %doc.lifecycle,
        owned = mine.len(),
        added = added.len(),
        removed = removed.len(),
        "applied assignment"
    );
    shared.assignment.send_replace(Assignment {
        version: doc.version,
        lifecycle: doc.lifecycle.clone(),
        partitions: mine.into_iter().collect(),
        added,
        removed,
    });
    if doc.members.get(&shared.worker_id) == Some(&shared.incarnation) {
        shared.state.send_if_modified(|state| {
            let waiting = *state == State::WaitingAssignment;
            if waiting {
                *state = State::Stable;
            }
            waiting
        });
    }
}

async fn read_assignments(
    shared: Arc<Shared>,
    docs: watch::Sender<Option<AssignmentDoc>>,
    cancel: CancellationToken,
) {
    let offer = |doc: AssignmentDoc| {
        docs.send_if_modified(|current| {
            let newer = current.as_ref().is_none_or(|c| doc.version > c.version);
            if newer {
                *current = Some(doc);
            }
            newer
        });
    };
    let mut watch = None;
    let mut poll = tokio::time::interval(shared.config.heartbeat_interval);
    loop {
        if watch.is_none() {
            watch = shared
                .bucket
                .store()
                .watch_with_history(keys::ASSIGNMENT)
                .await
                .ok();
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            entry = async { match watch.as_mut() { Some(w) => w.next().await, None => std::future::pending().await } } => {
                match entry {
                    Some(Ok(entry)) => {
                        if let Ok(doc) = decode::<AssignmentDoc>(&entry.key, &entry.value) {
                            offer(doc);
                        }
                    }
                    _ => watch = None,
                }
            }
            _ = poll.tick() => {
                if let Ok(Some(value)) = shared.bucket.get(keys::ASSIGNMENT).await
                    && let Ok(doc) = decode::<AssignmentDoc>(keys::ASSIGNMENT, &value.value) {
                        offer(doc);
                    }
            }
        }
    }
}

/// Degraded mode: disconnected longer than the threshold ⇒ `Degraded`; the assignment is
/// kept and processing continues only while the leases hold (the fence enforces that).
/// On reconnect the lease task's next compare-and-set revalidates the id and heartbeat,
/// and the assignment reader re-reads the current version.
async fn watch_connection(
    shared: Arc<Shared>,
    client: async_nats::Client,
    cancel: CancellationToken,
) {
    use async_nats::connection::State as Conn;
    let mut down_since: Option<Instant> = None;
    let mut before_degraded = State::Stable;
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        let connected = client.connection_state() == Conn::Connected;
        let state = *shared.state.borrow();
        if connected {
            down_since = None;
            if state == State::Degraded {
                info!(worker = %shared.worker_id, "reconnected; leaving degraded mode");
                shared.heartbeat_now.notify_one();
                shared.state.send_replace(before_degraded);
            }
        } else {
            let since = *down_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= shared.config.degraded_enter_threshold
                && !matches!(state, State::Degraded | State::Fenced | State::Shutdown)
            {
                warn!(worker = %shared.worker_id, "disconnected from NATS; degraded");
                before_degraded = if matches!(state, State::WaitingAssignment) {
                    state
                } else {
                    State::Stable
                };
                shared.state.send_replace(State::Degraded);
            }
        }
    }
}
