//! Which report connection belongs to which child, so that a child's exit is reported only
//! after its last report.
//!
//! A child's reports and its exit reach the agent by two paths: the reports over its report
//! socket, the exit from `wait()`. A producer SIGKILLed right after writing its last `sent`
//! lines leaves them in the socket while `wait()` already returns; sent on at once, the exit
//! would overtake them, and the coordinator would stop waiting for a producer whose last
//! messages it has not heard of yet. So the exit waits for the child's connection to reach
//! its end (everything the child wrote has been read and passed on), and a child's reports
//! and exit arrive at the coordinator in the order they happened.
//!
//! The connection is matched to the child by the peer's pid (`SO_PEERCRED`), or, for a
//! child whose reports come from another process (a wrapper script starting the real
//! consumer), by the `hello` line's process name — only when the peer descends from that
//! child (its parent chain in `/proc`), so no other local process can claim a child's name.
//! The match also says which run the child was started for: its reports are stamped with
//! that run id. A connection matched to no child is refused (`crate::socket`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// How long an exited child's connection may take to be accepted: a child that never
/// connected (it failed at start) has its exit reported after this.
const ACCEPT_GRACE: Duration = Duration::from_secs(2);
/// How long an exited child's connection may take to be read to its end. Reading waits
/// while the agent's outbox is full, so this is generous; past it (a grandchild holding the
/// socket open) the exit is reported anyway, with a warning.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Connected,
    Closed,
}

/// The children whose report connection has not been accepted yet, by pid.
#[derive(Debug, Clone, Default)]
pub struct Links {
    pending: Arc<Mutex<HashMap<u32, Pending>>>,
    /// A child was registered ([`Links::started`]).
    registered: Arc<Notify>,
    /// Connections refused as none of our children's.
    refused: Arc<AtomicU64>,
}

/// A started child whose connection has not been accepted yet.
#[derive(Debug)]
struct Pending {
    process: String,
    run_id: String,
    journal: u64,
    state: watch::Sender<State>,
}

/// The end of a child's link its exit waits on.
#[derive(Debug)]
pub struct ExitGate {
    pid: u32,
    state: watch::Receiver<State>,
    links: Links,
}

/// A connection's hold on its child's link: dropped when the connection is read to its end.
#[derive(Debug)]
pub struct Connection {
    state: watch::Sender<State>,
    run_id: String,
    journal: u64,
}

impl Connection {
    fn new(pending: Pending) -> Self {
        pending.state.send_replace(State::Connected);
        Self {
            state: pending.state,
            run_id: pending.run_id,
            journal: pending.journal,
        }
    }

    /// The run the child was started for.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The child's journal (`crate::journal`); its lines are this connection's lines.
    pub fn journal(&self) -> u64 {
        self.journal
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.state.send_replace(State::Closed);
    }
}

impl Links {
    /// A child `process` started as `pid` for `run_id`, journaling into `journal`; its exit
    /// waits on the gate.
    pub fn started(&self, process: &str, pid: u32, run_id: &str, journal: u64) -> ExitGate {
        let (tx, state) = watch::channel(State::Waiting);
        let pending = Pending {
            process: process.to_string(),
            run_id: run_id.to_string(),
            journal,
            state: tx,
        };
        self.lock().insert(pid, pending);
        self.registered.notify_waiters();
        ExitGate {
            pid,
            state,
            links: self.clone(),
        }
    }

    /// A connection from the process `pid` (the peer's credentials).
    pub fn connected_pid(&self, pid: u32) -> Option<Connection> {
        self.lock().remove(&pid).map(Connection::new)
    }

    /// A connection whose `hello` named `process`, from `peer`, a descendant of that child
    /// (a wrapper's consumer) rather than the child itself.
    pub fn connected_name(&self, process: &str, peer: Option<u32>) -> Option<Connection> {
        let peer = peer?;
        let mut pending = self.lock();
        let pid = pending
            .iter()
            .find(|(pid, child)| child.process == process && descends_from(peer, **pid))
            .map(|(pid, _)| *pid)?;
        pending.remove(&pid).map(Connection::new)
    }

    /// The connection of the process `pid` (else of the child named `process`), waiting up
    /// to `limit` for that child to be registered: a child can connect and report right
    /// after its fork, a moment before the supervisor registers it.
    pub async fn connected_within(
        &self,
        pid: Option<u32>,
        process: &str,
        limit: Duration,
    ) -> Option<Connection> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Armed before the look, so a registration in between is not missed.
            let registered = self.registered.notified();
            tokio::pin!(registered);
            registered.as_mut().enable();
            let found = pid
                .and_then(|pid| self.connected_pid(pid))
                .or_else(|| self.connected_name(process, pid));
            if found.is_some() {
                return found;
            }
            tokio::time::timeout_at(deadline, registered).await.ok()?;
        }
    }

    /// Counts a refused connection; returns how many so far.
    pub fn refuse(&self) -> u64 {
        self.refused.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether process `pid` is `ancestor` or one of its descendants, by the parent chain in
/// `/proc` (bounded: a wrapper is a level or two).
fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    for _ in 0..16 {
        if current == ancestor {
            return true;
        }
        match parent_of(current) {
            Some(parent) if parent > 1 => current = parent,
            _ => return false,
        }
    }
    false
}

/// The parent of `pid`, from `/proc/<pid>/stat` ("pid (comm) state ppid …"; the name may
/// hold spaces and parentheses, so the fields are read after its last ')').
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

impl ExitGate {
    /// After the child exited: wait until its connection is read to its end (bounded); false
    /// when that limit passed with the connection still open.
    pub async fn passed(mut self) -> bool {
        let accepted =
            tokio::time::timeout(ACCEPT_GRACE, self.state.wait_for(|s| *s != State::Waiting))
                .await
                .is_ok();
        if !accepted {
            // Never connected (or not yet accepted): nothing of it can overtake the exit
            // any more than it could a second ago.
            self.links.lock().remove(&self.pid);
            return true;
        }
        tokio::time::timeout(DRAIN_LIMIT, self.state.wait_for(|s| *s == State::Closed))
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_exit_waits_for_its_connection_to_end() {
        let links = Links::default();
        let gate = links.started("producer-0", 41, "run-1", 5);
        let connection = links.connected_pid(41).expect("linked");
        let exit = tokio::spawn(gate.passed());
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!exit.is_finished(), "the connection is still being read");
        drop(connection);
        assert!(exit.await.expect("join"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_that_never_connected_is_not_waited_for_long() {
        let links = Links::default();
        let gate = links.started("producer-0", 41, "run-1", 5);
        assert!(gate.passed().await);
        assert!(links.connected_pid(41).is_none(), "forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_held_open_past_the_limit_lets_the_exit_go() {
        let links = Links::default();
        // This test process stands for a wrapper's consumer: its parent is the "child".
        let me = std::process::id();
        let parent = parent_of(me).expect("a parent");
        let gate = links.started("worker-0", parent, "run-1", 5);
        let _held = links.connected_name("worker-0", Some(me)).expect("by name");
        assert!(!gate.passed().await);
    }

    #[test]
    fn only_a_started_child_is_linked() {
        let links = Links::default();
        let _gate = links.started("worker-0", 7, "run-1", 5);
        assert!(links.connected_pid(8).is_none());
        assert!(links.connected_name("worker-1", Some(7)).is_none());
        // A process that is not the child's descendant cannot claim its name.
        let _other = links.started("worker-9", u32::MAX - 1, "run-1", 6);
        assert!(
            links
                .connected_name("worker-9", Some(std::process::id()))
                .is_none()
        );
        assert!(links.connected_name("worker-9", None).is_none());
        let connection = links.connected_pid(7).expect("linked");
        assert_eq!(connection.run_id(), "run-1");
        assert!(links.connected_pid(7).is_none(), "once");
    }

    /// A report that arrives before its child is registered waits for the registration (an
    /// event, not a poll), and a stranger waits no longer than the limit.
    #[tokio::test(start_paused = true)]
    async fn a_connection_waits_for_its_child_to_be_registered() {
        let links = Links::default();
        let waiting = {
            let links = links.clone();
            tokio::spawn(async move {
                links
                    .connected_within(Some(41), "producer-0", Duration::from_secs(1))
                    .await
                    .map(|c| c.journal())
            })
        };
        tokio::task::yield_now().await;
        let _gate = links.started("producer-0", 41, "run-1", 5);
        assert_eq!(waiting.await.expect("join"), Some(5));
        let began = tokio::time::Instant::now();
        assert!(
            links
                .connected_within(Some(99), "stranger", Duration::from_secs(1))
                .await
                .is_none()
        );
        assert_eq!(began.elapsed(), Duration::from_secs(1));
    }
}
