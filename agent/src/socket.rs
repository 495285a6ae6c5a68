//! The report socket: one connection per child, JSON lines in (`crate::report`), reports out.
//!
//! Each connection is linked to its child (`crate::links`) until it is read to its end, so
//! that its reports are stamped with the run the child was started for and with their place
//! in its journal (`Report.journal`, `Report.line`: the connection's lines are the journal's
//! lines, the hello is line 0). Every [`MARK_EVERY`] lines the
//! byte offset of the next line is noted, for giving back released journal space
//! (`crate::reclaim`). Lines are read as bytes, so the offsets are exact whatever the line
//! endings.

use std::sync::Arc;
use std::time::Duration;

use proto::v1::Report;
use tokio::io::AsyncBufReadExt;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tracing::{error, warn};

use crate::links::{Connection, Links};
use crate::reclaim::{MARK_EVERY, Reclaimer};
use crate::report::ChildReport;

/// How long a connection may stay unmatched to a child: a child connects right after its
/// fork, a moment before the supervisor registers it (the wait ends at the registration, an
/// event, so a generous limit costs a child nothing even on a loaded host). A connection
/// still unmatched then — another local process — is refused, whatever it sent.
const LINK_WAIT: Duration = Duration::from_secs(10);

/// Test aid: the report socket also admits processes the agent did not start (their reports
/// unstamped), as before the socket checked its peers. `simctl/tests/foreign.rs` needs it to
/// make a NATS client that is not ours report into a run the way a user's misbehaving
/// consumer would; never set it otherwise. The agent warns at start when it is set.
pub const TEST_ADMIT_FOREIGN_ENV: &str = "PARTI_SIM_TEST_ADMIT_FOREIGN_REPORTS";

/// Read JSON lines from each child connection into `reports` (waiting when it is full).
pub async fn serve_socket(
    listener: UnixListener,
    reports: mpsc::Sender<Report>,
    links: Links,
    reclaimer: Arc<Reclaimer>,
) {
    let admit_foreign = std::env::var_os(TEST_ADMIT_FOREIGN_ENV).is_some();
    if admit_foreign {
        warn!("{TEST_ADMIT_FOREIGN_ENV} is set: the report socket admits any local process");
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let peer = stream
            .peer_cred()
            .ok()
            .and_then(|cred| cred.pid())
            .and_then(|pid| u32::try_from(pid).ok());
        let link = peer.and_then(|pid| links.connected_pid(pid));
        tokio::spawn(serve_connection(
            stream,
            peer,
            link,
            reports.clone(),
            links.clone(),
            reclaimer.clone(),
            admit_foreign,
        ));
    }
}

async fn serve_connection(
    stream: tokio::net::UnixStream,
    peer: Option<u32>,
    mut link: Option<Connection>,
    reports: mpsc::Sender<Report>,
    links: Links,
    reclaimer: Arc<Reclaimer>,
    admit_foreign: bool,
) {
    let mut reader = tokio::io::BufReader::new(stream);
    let mut bytes = Vec::with_capacity(512);
    let mut process = String::new();
    let mut number: u64 = 0;
    let mut offset: u64 = 0;
    let mut waited = false;
    // Unlinked past this, whatever it sends (or if it sends nothing): refused.
    let deadline = tokio::time::Instant::now() + LINK_WAIT;
    let mut partial = false;
    loop {
        if !partial {
            bytes.clear();
        }
        partial = false;
        let read = if link.is_none() && !admit_foreign {
            match tokio::time::timeout_at(deadline, reader.read_until(b'\n', &mut bytes)).await {
                Ok(read) => read,
                Err(_) => {
                    // A last look (a registration may have just happened), then refuse.
                    link = peer
                        .and_then(|pid| links.connected_pid(pid))
                        .or_else(|| links.connected_name(&process, peer));
                    if link.is_none() {
                        refuse(&links, peer, &process);
                        return;
                    }
                    // What the interrupted read got is kept in `bytes`; go on with the line.
                    partial = true;
                    continue;
                }
            }
        } else {
            reader.read_until(b'\n', &mut bytes).await
        };
        match read {
            Ok(0) | Err(_) => return,
            // The whole line, also when its start was read before an interruption.
            Ok(_) => offset += bytes.len() as u64,
        }
        let line_number = number;
        number += 1;
        // A child can connect before the supervisor has registered it (right after the
        // fork): until linked, look again at every line.
        if link.is_none() {
            link = peer
                .and_then(|pid| links.connected_pid(pid))
                .or_else(|| links.connected_name(&process, peer));
        }
        if number.is_multiple_of(MARK_EVERY)
            && bytes.last() == Some(&b'\n')
            && let Some(link) = &link
        {
            reclaimer.mark(link.journal(), number, offset);
        }
        match serde_json::from_slice::<ChildReport>(&bytes) {
            Ok(ChildReport::Hello { process: name }) => {
                if link.is_none() {
                    link = links.connected_name(&name, peer);
                }
                process = name;
            }
            Ok(report) => {
                let Some(mut report) = report.into_proto(&process) else {
                    continue;
                };
                // A report before the link: the fork has returned, the registration is a
                // moment away. Its journal line must be known, or a replay after an agent
                // crash would apply it twice.
                if link.is_none() && !waited {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    link = links.connected_within(peer, &process, left).await;
                    waited = true;
                }
                // The run its child was started for, and where it journals. A connection
                // that is none of our children (nor a descendant of one) is refused: another
                // local process must not be able to write evidence into a run.
                let Some(link) = &link else {
                    if admit_foreign {
                        if reports.send(report).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    refuse(&links, peer, &process);
                    return;
                };
                report.run_id = link.run_id().to_string();
                report.journal = link.journal();
                report.line = line_number;
                if reports.send(report).await.is_err() {
                    return;
                }
            }
            Err(error) => warn!(%process, %error, "unreadable report line ignored"),
        }
    }
}

/// Counts and logs a connection refused as none of our children's (nor a descendant of one).
fn refuse(links: &Links, peer: Option<u32>, process: &str) {
    let refused = links.refuse();
    error!(
        peer = ?peer,
        %process,
        refused,
        "report connection refused: not a process this agent started (or a descendant of one)"
    );
}
