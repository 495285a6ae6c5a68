//! Journals: every report of this host, on disk before it is acted on, so that a SIGKILLed
//! agent loses nothing its children did.
//!
//! Why: an agent's reports sit in its memory (the outbox, the batcher) and in the kernel's
//! socket buffers until the coordinator has them. A SIGKILL of the agent kills its children
//! too (their parent-death signal) and drops all of that: messages processed and
//! acknowledged by a worker whose `processed` line was still in the socket would count as
//! *lost*, blamed on the system under test.
//!
//! So every report is written twice, first to a file, which survives the death of any
//! process (the page cache is the kernel's, not the process's):
//! - each child appends every line it writes to its report socket, the same bytes, to the
//!   file named by `$PARTI_SIM_JOURNAL` *before* writing them to the socket (part of the
//!   report contract, `crate::report`);
//! - the agent appends each of its own reports (starts, exits, signal results, network
//!   faults, resource samples) to `agent.journal` before it queues them ([`OwnReports`]).
//!
//! Every report carries where it is written (`Report.journal`, `Report.line`): the agent
//! counts the lines of each child's connection, which are the lines of its journal. A new
//! agent process replays the journals of the process before it ([`Journals::replay_previous`]): its
//! own reports, then each child's lines, then each child's exit (the children died with
//! it). The coordinator applies each (journal, line) once, so a replay repeats nothing it
//! already has, and it restores what the dead agent never delivered.
//!
//! Layout: `<dir>/journal/<boot id, hex>/agent.journal` (length-prefixed protobuf
//! `Report`s) and `<dir>/journal/<boot id>/<journal id, hex>.jsonl` per child. A replayed
//! directory is deleted once the coordinator has released every batch it went into; a
//! cleanly stopped agent deletes its own. A live child's journal keeps only what the
//! coordinator has not released, give or take [`RECLAIM_MIN`](crate::reclaim::RECLAIM_MIN):
//! the released prefix is given back to the file system (`crate::reclaim`).

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use proto::v1::{JournalReplayed, ProcessExited, Report, report};
use tokio::sync::{Mutex, mpsc};
use tracing::{info, warn};

use crate::outbox::{BATCH_SIZE, Outbox};
use crate::reclaim::{Reclaimer, replay_start};
use crate::report::ChildReport;

/// Environment variable naming the file a child appends every report line to before it
/// writes the line to its socket.
pub const JOURNAL_ENV: &str = "PARTI_SIM_JOURNAL";
/// The agent's own reports, in its boot's directory.
const OWN_FILE: &str = "agent.journal";
/// Test aid: children are not told where to journal, as a consumer written to an older
/// contract would not (an `agent_crash` then cannot restore what the socket lost).
pub const TEST_UNJOURNALED_ENV: &str = "PARTI_SIM_TEST_UNJOURNALED";

/// A random journal id, never 0 (0: no journal).
pub fn new_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// Where this agent process keeps its journals.
#[derive(Debug, Clone)]
pub struct Journals {
    root: PathBuf,
    boot_id: u64,
    reclaimer: Arc<Reclaimer>,
}

impl Journals {
    /// The journals of agent process `boot_id` under `root` (created).
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn create(root: &Path, boot_id: u64) -> std::io::Result<Self> {
        let journals = Self {
            root: root.to_path_buf(),
            boot_id,
            reclaimer: Arc::default(),
        };
        std::fs::create_dir_all(journals.dir())?;
        Ok(journals)
    }

    /// This boot's directory.
    fn dir(&self) -> PathBuf {
        boot_dir(&self.root, self.boot_id)
    }

    /// The file of a child's journal `id`.
    pub fn child_path(&self, id: u64) -> PathBuf {
        self.dir().join(format!("{id:016x}.jsonl"))
    }

    /// What gives back the released prefixes of this boot's child journals.
    pub fn reclaimer(&self) -> Arc<Reclaimer> {
        self.reclaimer.clone()
    }

    /// After a clean stop: nothing of this boot needs replaying.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(self.dir());
    }
}

fn boot_dir(root: &Path, boot_id: u64) -> PathBuf {
    root.join(format!("{boot_id:016x}"))
}

/// The sender of the agent's own reports: each is journaled, stamped with its line, then
/// queued. One at a time, so lines reach the queue in their journal's order (the
/// coordinator keeps the highest line it applied per journal).
#[derive(Debug, Clone)]
pub struct OwnReports {
    queue: mpsc::Sender<Report>,
    journal: Arc<Mutex<OwnJournal>>,
}

#[derive(Debug)]
struct OwnJournal {
    /// `None` when it could not be opened: reports still flow, unjournaled.
    file: Option<std::fs::File>,
    id: u64,
    line: u64,
}

/// The report queue is closed: the agent is stopping.
#[derive(Debug, thiserror::Error)]
#[error("the report queue is closed")]
pub struct QueueClosed;

impl OwnReports {
    /// Reports into `queue`, journaled in `journals`' directory.
    pub fn new(queue: mpsc::Sender<Report>, journals: &Journals) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(journals.dir().join(OWN_FILE))
            .map_err(|error| warn!(%error, "the agent's journal cannot be opened; its own reports are not journaled"))
            .ok();
        Self {
            queue,
            journal: Arc::new(Mutex::new(OwnJournal {
                file,
                id: journals.boot_id,
                line: 0,
            })),
        }
    }

    /// Reports into `queue` without a journal (tests).
    pub fn unjournaled(queue: mpsc::Sender<Report>) -> Self {
        Self {
            queue,
            journal: Arc::new(Mutex::new(OwnJournal {
                file: None,
                id: 0,
                line: 0,
            })),
        }
    }

    /// Journal `report`, then queue it (waiting while the queue is full).
    ///
    /// # Errors
    /// [`QueueClosed`]: the agent is stopping.
    pub async fn send(&self, mut report: Report) -> Result<(), QueueClosed> {
        let mut journal = self.journal.lock().await;
        if journal.file.is_some() {
            journal.line += 1;
            report.journal = journal.id;
            report.line = journal.line;
            let mut record = Vec::with_capacity(report.encoded_len() + 4);
            if report.encode_length_delimited(&mut record).is_ok()
                && let Some(file) = journal.file.as_mut()
                && let Err(error) = file.write_all(&record)
            {
                warn!(%error, "writing the agent's journal failed; its own reports are no longer journaled");
                journal.file = None;
            }
        }
        self.queue.send(report).await.map_err(|_| QueueClosed)
    }
}

/// What the previous agent process knew of one child.
#[derive(Debug, Clone)]
struct Child {
    process: String,
    kind: i32,
    pid: u32,
    run_id: String,
    journal: u64,
    exited: bool,
}

impl Journals {
    /// Replay, into `outbox`, every journal directory but this boot's (the agent processes
    /// before this one; their children's logs are in `log_dir`), then delete each once the
    /// coordinator released it. Returns when every directory is replayed; the deletions run
    /// on.
    pub async fn replay_previous(&self, log_dir: &Path, outbox: Arc<Outbox>) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        let current = self.boot_id;
        let mut boots: Vec<(u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name();
                let boot = u64::from_str_radix(name.to_str()?, 16).ok()?;
                (boot != current).then(|| (boot, entry.path()))
            })
            .collect();
        boots.sort_by_key(|(_, path)| {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
        });
        for (boot, dir) in boots {
            let last_batch = replay_boot(boot, &dir, log_dir, &outbox).await;
            let outbox = outbox.clone();
            tokio::spawn(async move {
                // The directory goes when nothing of it can be needed again.
                outbox.released_through(last_batch).await;
                let _ = std::fs::remove_dir_all(&dir);
                info!(boot = %format!("{boot:016x}"), "replayed journals released; removed");
            });
        }
    }
}

/// Replay one previous agent process's journals; the number of the last batch they went
/// into.
async fn replay_boot(boot: u64, dir: &Path, log_dir: &Path, outbox: &Outbox) -> u64 {
    let began_us = crate::report::now_us();
    let own = read_own(&dir.join(OWN_FILE));
    let mut children: Vec<Child> = Vec::new();
    let mut exits = Vec::new();
    let mut before = Vec::new();
    for report in own {
        match &report.body {
            Some(report::Body::Started(started)) => {
                children.push(Child {
                    process: started.process.clone(),
                    kind: started.kind,
                    pid: started.pid,
                    run_id: report.run_id.clone(),
                    journal: started.journal,
                    exited: false,
                });
                before.push(report);
            }
            Some(report::Body::Exited(exited)) => {
                for child in &mut children {
                    if child.process == exited.process && child.pid == exited.pid {
                        child.exited = true;
                    }
                }
                exits.push(report);
            }
            _ => before.push(report),
        }
    }
    info!(boot = %format!("{boot:016x}"), children = children.len(), own = before.len() + exits.len(), "replaying the journals of the previous agent process");
    let mut last = push_chunks(outbox, before).await;
    for child in &children {
        last = last.max(replay_child(boot, began_us, dir, child, outbox).await);
    }
    let died: Vec<Report> = children
        .iter()
        .filter(|child| !child.exited)
        .map(|child| {
            let log_tail = crate::supervisor::exit_log_tail(log_dir, &child.process);
            Report {
                body: Some(report::Body::Exited(ProcessExited {
                    process: child.process.clone(),
                    kind: child.kind,
                    pid: child.pid,
                    code: None,
                    // It died with its agent: by the parent-death signal, SIGKILL.
                    signal: Some(9),
                    log_tail,
                })),
                run_id: child.run_id.clone(),
                journal: 0,
                line: 0,
            }
        })
        .collect();
    exits.extend(died);
    last.max(push_chunks(outbox, exits).await)
}

/// Replay one child's journal, then say what it held.
async fn replay_child(boot: u64, began_us: i64, dir: &Path, child: &Child, outbox: &Outbox) -> u64 {
    let path = dir.join(format!("{:016x}.jsonl", child.journal));
    // What was released (and given back, `crate::reclaim`) is skipped.
    let (offset, first_line) = replay_start(&path);
    let mut text = Vec::new();
    let read = if child.journal == 0 {
        Err(std::io::Error::other("started without a journal"))
    } else {
        std::fs::File::open(&path).and_then(|mut file| {
            file.seek(std::io::SeekFrom::Start(offset))?;
            file.read_to_end(&mut text)
        })
    };
    let mut reports = Vec::new();
    let mut last_line = first_line.saturating_sub(1);
    if read.is_ok() {
        // A torn last line (killed in the middle of a write) has no newline: not replayed.
        let complete = text
            .iter()
            .rposition(|byte| *byte == b'\n')
            .map_or(0, |end| end + 1);
        for (index, bytes) in text[..complete]
            .split(|byte| *byte == b'\n')
            .enumerate()
            .take_while(|(_, bytes)| !bytes.is_empty())
        {
            let line = first_line + index as u64;
            last_line = line;
            let Ok(parsed) = serde_json::from_slice::<ChildReport>(bytes) else {
                continue;
            };
            if let Some(mut report) = parsed.into_proto(&child.process) {
                report.run_id.clone_from(&child.run_id);
                report.journal = child.journal;
                report.line = line;
                reports.push(report);
            }
        }
    }
    let (missing, detail) = match &read {
        Ok(_) => (false, format!("{} reports", reports.len())),
        Err(error) => (true, format!("{}: {error}", path.display())),
    };
    if missing {
        warn!(process = %child.process, %detail, "a dead child's journal is missing: what it reported last may be lost");
    }
    reports.push(Report {
        body: Some(report::Body::JournalReplayed(JournalReplayed {
            process: child.process.clone(),
            journal: child.journal,
            last_line,
            missing,
            detail,
            old_boot_id: boot,
            replayed_at_us: began_us,
        })),
        run_id: child.run_id.clone(),
        journal: 0,
        line: 0,
    });
    push_chunks(outbox, reports).await
}

/// Queue `reports` in batch-sized chunks, waiting for room under the outbox's budget;
/// the number of the last batch used (0: none).
async fn push_chunks(outbox: &Outbox, mut reports: Vec<Report>) -> u64 {
    let mut last = 0;
    while !reports.is_empty() {
        outbox.wait_for_room().await;
        let rest = reports.split_off(reports.len().min(BATCH_SIZE));
        last = outbox.push(std::mem::replace(&mut reports, rest));
    }
    last
}

/// The agent's own journal: length-delimited reports, up to a torn end.
fn read_own(path: &Path) -> Vec<Report> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let mut reports = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        match Report::decode_length_delimited(&mut rest) {
            Ok(report) => reports.push(report),
            Err(_) => break,
        }
    }
    reports
}

#[cfg(test)]
mod tests {
    use proto::v1::{ProcessKind, ProcessStarted};

    use super::*;

    fn started(process: &str, pid: u32, journal: u64) -> Report {
        Report {
            body: Some(report::Body::Started(ProcessStarted {
                process: process.into(),
                kind: ProcessKind::Worker as i32,
                pid,
                journal,
            })),
            run_id: "run-1".into(),
            ..Report::default()
        }
    }

    fn exited(process: &str, pid: u32) -> Report {
        Report {
            body: Some(report::Body::Exited(ProcessExited {
                process: process.into(),
                kind: ProcessKind::Producer as i32,
                pid,
                code: Some(0),
                ..ProcessExited::default()
            })),
            run_id: "run-1".into(),
            ..Report::default()
        }
    }

    /// Every report the replay queued, in order.
    fn queued(outbox: &Outbox) -> Vec<Report> {
        let mut state = outbox.lock();
        state.begin_session();
        let mut reports = Vec::new();
        while let Some(batch) = state.next_to_send() {
            reports.extend(batch.reports);
        }
        reports
    }

    /// A dead agent process's journals: its own reports (two children started, one of them
    /// exited), one child's lines (the last torn by the kill), the other child's journal
    /// missing. The replay restores all of it, stamped for de-duplication, says what each
    /// journal held, and reports the exit of the child that died with the agent.
    #[tokio::test]
    async fn a_replay_restores_a_dead_agents_reports_and_the_exits_of_its_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("journal");
        let old = Journals::create(&root, 0xaa).expect("journals");
        let (tx, mut rx) = mpsc::channel(16);
        let own = OwnReports::new(tx, &old);
        for report in [
            started("worker-0", 41, 7),
            started("producer-0", 42, 8),
            exited("producer-0", 42),
        ] {
            own.send(report).await.expect("queued");
            let queued = rx.recv().await.expect("report");
            assert_eq!(queued.journal, 0xaa, "stamped with its journal");
        }
        std::fs::write(
            old.child_path(7),
            concat!(
                r#"{"type":"hello","process":"worker-0"}"#,
                "\n",
                r#"{"type":"status","worker_id":"w0","incarnation":1,"state":"Stable","leader":false,"assignment_version":1,"partitions":[0],"at_us":5}"#,
                "\n",
                r#"{"type":"processed","partition":0,"seq":1,"worker_id":"w0","incarnation":1,"delivered":1,"stream_seq":1,"assignment_version":1,"published_us":1,"received_us":2,"processed_us":3}"#,
                "\n",
                r#"{"type":"processed","partition":0,"se"#,
            ),
        )
        .expect("child journal");

        let outbox = Arc::new(Outbox::new(1 << 20, 64, 100));
        let current = Journals::create(&root, 0xbb).expect("journals");
        current
            .replay_previous(&dir.path().join("logs"), outbox.clone())
            .await;
        let reports = queued(&outbox);
        let own_lines: Vec<(u64, u64)> = reports
            .iter()
            .filter(|r| r.journal == 0xaa)
            .map(|r| (r.journal, r.line))
            .collect();
        assert_eq!(own_lines, vec![(0xaa, 1), (0xaa, 2), (0xaa, 3)]);
        let child: Vec<&Report> = reports.iter().filter(|r| r.journal == 7).collect();
        assert_eq!(
            child.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![1, 2],
            "the hello is line 0, the torn line is not replayed"
        );
        assert!(child.iter().all(|r| r.run_id == "run-1"));
        assert!(matches!(
            &child[1].body,
            Some(report::Body::Processed(p)) if p.process == "worker-0" && p.seq == 1
        ));
        let replayed: Vec<&JournalReplayed> = reports
            .iter()
            .filter_map(|r| match &r.body {
                Some(report::Body::JournalReplayed(j)) => Some(j),
                _ => None,
            })
            .collect();
        assert_eq!(replayed.len(), 2, "{replayed:?}");
        let worker = replayed
            .iter()
            .find(|j| j.process == "worker-0")
            .expect("w");
        assert_eq!((worker.last_line, worker.missing), (2, false));
        assert_eq!(worker.old_boot_id, 0xaa);
        let producer = replayed
            .iter()
            .find(|j| j.process == "producer-0")
            .expect("p");
        assert!(producer.missing, "{producer:?}");
        let exits: Vec<(String, Option<i32>, Option<i32>)> = reports
            .iter()
            .filter_map(|r| match &r.body {
                Some(report::Body::Exited(e)) => Some((e.process.clone(), e.code, e.signal)),
                _ => None,
            })
            .collect();
        assert_eq!(
            exits,
            vec![
                ("producer-0".into(), Some(0), None),
                ("worker-0".into(), None, Some(9)),
            ],
            "the recorded exit, then the one that died with the agent"
        );
        let position = |wanted: &dyn Fn(&Report) -> bool| reports.iter().position(wanted);
        assert!(
            position(&|r| r.journal == 7 && r.line == 2)
                < position(
                    &|r| matches!(&r.body, Some(report::Body::Exited(e)) if e.process == "worker-0")
                ),
            "a child's exit after its last line"
        );
    }
}
