//! The child → agent report contract, and the client children use.
//!
//! A documented contract, not a Rust detail, so a worker written in any language can be put
//! under test: connect to the Unix socket named by `$PARTI_SIM_REPORT_SOCKET`, send one
//! JSON object per line, first `{"type":"hello","process":"<$PARTI_SIM_PROCESS>"}`, then
//! reports (see [`ChildReport`]; field names as serialised here). Writes block when the agent
//! is behind; never drop a report. A `processed` report must be *written to the socket*
//! (not merely queued in the child's memory) before the message is acknowledged, so a crash
//! in between yields a redelivery, never a false loss.
//!
//! Before writing any bytes to the socket, append the same bytes to the file named by
//! `$PARTI_SIM_JOURNAL` (the hello line too; one connection per process). The agent counts
//! the lines of the connection as the lines of that file: when the agent itself is killed,
//! the next agent replays the file, so the coordinator still gets what the socket lost
//! (`crate::journal`). A child that keeps no journal works, but an agent crash then ends
//! the run as an infrastructure error (its last reports may be gone).
//!
//! A child need not know its run: the agent stamps every line of a connection it can match
//! to one of its children (by the peer's pid, else by the `hello` line's process name) with
//! the run that child was started for, and passes the child's exit on only after the last of
//! those lines (`crate::links`).
//!
//! Which partitions exist is not in the spec alone: `partition_changes` edits the run's
//! partition map, JSON of `proto::v1::PartitionMap` in the NATS KV bucket `parti-sim` under
//! the key `partitions`. A worker implementation should read it at start (falling back to
//! `0..partition_count` of the spec when it is absent) and follow it.

use std::path::Path;

use proto::v1::{Malformed, Processed, Report, Sent, WorkerStatus, report};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// Environment variable holding the report socket path.
pub const SOCKET_ENV: &str = "PARTI_SIM_REPORT_SOCKET";
/// Environment variable holding the process slot name.
pub const PROCESS_ENV: &str = "PARTI_SIM_PROCESS";
/// Environment variable holding the spawn spec (JSON of `ProducerSpec` / `WorkerSpec`).
pub const SPEC_ENV: &str = "PARTI_SIM_SPEC";

/// One line a child writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChildReport {
    /// First line: who is talking.
    Hello {
        /// The slot name from `$PARTI_SIM_PROCESS`.
        process: String,
    },
    /// A message published and confirmed by the server (PubAck).
    Sent {
        /// Partition number.
        partition: u32,
        /// Partition sequence.
        seq: u64,
        /// Producer id.
        producer_id: String,
        /// Publish time, unix µs.
        published_us: i64,
        /// Stream sequence from the PubAck.
        stream_seq: u64,
    },
    /// A message processed (reported before its ack).
    Processed {
        /// Partition number.
        partition: u32,
        /// Partition sequence.
        seq: u64,
        /// Stable worker id.
        worker_id: String,
        /// Process incarnation.
        incarnation: u64,
        /// JetStream delivery count.
        delivered: u32,
        /// Stream sequence.
        stream_seq: u64,
        /// Assignment version in force.
        assignment_version: u64,
        /// Publish time, unix µs (from the message).
        published_us: i64,
        /// When processing started, unix µs.
        received_us: i64,
        /// When processing finished, unix µs.
        processed_us: i64,
    },
    /// A body on a partition subject that is not a simulation message.
    Malformed {
        /// Subject.
        subject: String,
        /// Stream sequence.
        stream_seq: u64,
        /// Why it was rejected.
        reason: String,
    },
    /// Worker status, whenever it changes and at least every 5 s
    /// ([`proto::STATUS_HEARTBEAT`]): a live worker is never silent for longer, and the
    /// coordinator fails a run in which a worker owning partitions went silent after the last
    /// fault (`silent_after_chaos`).
    Status {
        /// Stable worker id.
        worker_id: String,
        /// Process incarnation.
        incarnation: u64,
        /// Manager state.
        state: String,
        /// Holds the leader lease.
        leader: bool,
        /// Assignment version applied.
        assignment_version: u64,
        /// Partitions owned.
        partitions: Vec<u32>,
        /// When, unix µs.
        at_us: i64,
    },
}

impl ChildReport {
    /// The wire form, attributed to `process`. `None` for `Hello`.
    pub fn into_proto(self, process: &str) -> Option<Report> {
        let body = match self {
            Self::Hello { .. } => return None,
            Self::Sent {
                partition,
                seq,
                producer_id,
                published_us,
                stream_seq,
            } => report::Body::Sent(Sent {
                partition,
                seq,
                producer_id,
                published_us,
                stream_seq,
            }),
            Self::Processed {
                partition,
                seq,
                worker_id,
                incarnation,
                delivered,
                stream_seq,
                assignment_version,
                published_us,
                received_us,
                processed_us,
            } => report::Body::Processed(Processed {
                partition,
                seq,
                worker_id,
                incarnation,
                delivered,
                stream_seq,
                assignment_version,
                published_us,
                received_us,
                processed_us,
                process: process.to_string(),
            }),
            Self::Malformed {
                subject,
                stream_seq,
                reason,
            } => report::Body::Malformed(Malformed {
                process: process.to_string(),
                subject,
                stream_seq,
                reason,
            }),
            Self::Status {
                worker_id,
                incarnation,
                state,
                leader,
                assignment_version,
                partitions,
                at_us,
            } => report::Body::Status(WorkerStatus {
                process: process.to_string(),
                worker_id,
                incarnation,
                state,
                leader,
                assignment_version,
                partitions,
                at_us,
            }),
        };
        Some(Report {
            body: Some(body),
            ..Report::default()
        })
    }
}

/// Test aid: the environment variable shifting this host's clock by so many milliseconds
/// (as a host whose clock is off would be). Read by the agent and, inherited, by its
/// children: every timestamp they take, and the agent's answers to clock probes.
pub const CLOCK_SHIFT_ENV: &str = "PARTI_SIM_TEST_CLOCK_SHIFT_MS";

/// The test clock shift, µs (0 unless [`CLOCK_SHIFT_ENV`] says otherwise).
fn clock_shift_us() -> i64 {
    static SHIFT: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *SHIFT.get_or_init(|| {
        std::env::var(CLOCK_SHIFT_ENV)
            .ok()
            .and_then(|ms| ms.trim().parse::<i64>().ok())
            .map_or(0, |ms| ms.saturating_mul(1_000))
    })
}

/// Unix time in microseconds, on this host's clock (shifted by the test aid
/// [`CLOCK_SHIFT_ENV`]).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .saturating_add(clock_shift_us())
}

/// A report and the signal that it has been written to the socket.
type Queued = (ChildReport, oneshot::Sender<()>);

/// A child's connection to its agent.
///
/// `send` returns only once the report is written to the socket: from then on it survives
/// the child's SIGKILL (it sits in the kernel's socket buffer until the agent reads it). A
/// worker that acknowledged a message after a report still queued in its own memory would
/// turn a crash into a false loss. Writes are coalesced across concurrent senders.
#[derive(Debug, Clone)]
pub struct ReportClient {
    lines: mpsc::Sender<Queued>,
}

impl ReportClient {
    /// Connect to `socket` and introduce ourselves as `process`.
    ///
    /// With `journal`, every line is appended to that file before it is written to the
    /// socket (see `crate::journal`): a line the socket lost with a killed agent is still
    /// there for the next agent to replay.
    pub async fn connect(
        socket: &Path,
        process: &str,
        journal: Option<&Path>,
    ) -> std::io::Result<(Self, tokio::task::JoinHandle<std::io::Result<()>>)> {
        let mut journal = match journal {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => None,
        };
        let mut stream = UnixStream::connect(socket).await?;
        let (lines, mut queue) = mpsc::channel::<Queued>(1024);
        let hello = ChildReport::Hello {
            process: process.to_string(),
        };
        let writer = tokio::spawn(async move {
            let mut buffer = serde_json::to_vec(&hello).map_err(std::io::Error::other)?;
            buffer.push(b'\n');
            journal_then_socket(journal.as_mut(), &mut stream, &buffer).await?;
            let mut written = Vec::new();
            while let Some((report, done)) = queue.recv().await {
                buffer.clear();
                serde_json::to_writer(&mut buffer, &report).map_err(std::io::Error::other)?;
                buffer.push(b'\n');
                written.push(done);
                // Coalesce whatever is queued into one write.
                while buffer.len() < 64 * 1024 {
                    let Ok((next, done)) = queue.try_recv() else {
                        break;
                    };
                    serde_json::to_writer(&mut buffer, &next).map_err(std::io::Error::other)?;
                    buffer.push(b'\n');
                    written.push(done);
                }
                journal_then_socket(journal.as_mut(), &mut stream, &buffer).await?;
                for done in written.drain(..) {
                    let _ = done.send(());
                }
            }
            stream.flush().await?;
            Ok(())
        });
        Ok((Self { lines }, writer))
    }

    /// Send a report; returns once it is written to the socket (waits while the agent is
    /// behind: nothing is dropped).
    pub async fn send(&self, report: ChildReport) -> Result<(), ReportClosed> {
        let (done, written) = oneshot::channel();
        self.lines
            .send((report, done))
            .await
            .map_err(|_| ReportClosed)?;
        written.await.map_err(|_| ReportClosed)
    }
}

/// Write `bytes` to the journal (a blocking write into the page cache: microseconds), then
/// to the socket.
async fn journal_then_socket(
    journal: Option<&mut std::fs::File>,
    stream: &mut UnixStream,
    bytes: &[u8],
) -> std::io::Result<()> {
    if let Some(journal) = journal {
        std::io::Write::write_all(journal, bytes)?;
    }
    stream.write_all(bytes).await
}

/// The agent's socket is gone; the child should exit (its agent died).
#[derive(Debug, thiserror::Error)]
#[error("report socket closed")]
pub struct ReportClosed;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_lines_are_stable() {
        let line = r#"{"type":"sent","partition":3,"seq":17,"producer_id":"producer-0","published_us":5,"stream_seq":9}"#;
        let parsed: ChildReport = serde_json::from_str(line).expect("parse");
        assert_eq!(
            parsed,
            ChildReport::Sent {
                partition: 3,
                seq: 17,
                producer_id: "producer-0".into(),
                published_us: 5,
                stream_seq: 9
            }
        );
        let report = parsed.into_proto("producer-0").expect("report");
        assert!(matches!(
            report.body,
            Some(report::Body::Sent(Sent { seq: 17, .. }))
        ));
        assert!(
            ChildReport::Hello {
                process: "w".into()
            }
            .into_proto("w")
            .is_none()
        );
    }

    /// Hostile input: a line that is any JSON object whose `type` is one of the contract's
    /// and whose fields hold any JSON value (negative, huge, wrong-typed, missing) is either
    /// a report or an error, never a panic; arbitrary bytes likewise.
    mod hostile {
        use proptest::prelude::*;
        use serde_json::{Map, Value, json};

        use super::*;

        const FIELDS: [&str; 17] = [
            "process",
            "partition",
            "seq",
            "producer_id",
            "published_us",
            "stream_seq",
            "worker_id",
            "incarnation",
            "delivered",
            "assignment_version",
            "received_us",
            "processed_us",
            "subject",
            "reason",
            "state",
            "leader",
            "partitions",
        ];

        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                Just(json!(u64::MAX)),
                Just(json!(-1)),
                any::<f64>().prop_map(|f| json!(f)),
                ".{0,40}".prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
                Just(Value::Null),
                proptest::collection::vec(any::<i64>(), 0..4).prop_map(|v| json!(v)),
            ]
        }

        fn line() -> impl Strategy<Value = Vec<u8>> {
            let kind = prop_oneof![
                Just("hello"),
                Just("sent"),
                Just("processed"),
                Just("malformed"),
                Just("status"),
                Just("other"),
            ];
            let fields = proptest::collection::vec((0..FIELDS.len(), value()), 0..18);
            (kind, fields).prop_map(|(kind, fields)| {
                let mut object = Map::new();
                object.insert("type".into(), Value::from(kind));
                for (index, value) in fields {
                    object.insert(FIELDS[index].into(), value);
                }
                serde_json::to_vec(&Value::Object(object)).expect("json")
            })
        }

        proptest! {
            #[test]
            fn any_object_line_decodes_or_errs(line in line()) {
                if let Ok(report) = serde_json::from_slice::<ChildReport>(&line) {
                    let _ = report.into_proto("worker-0");
                }
            }

            #[test]
            fn any_bytes_decode_or_err(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                if let Ok(report) = serde_json::from_slice::<ChildReport>(&bytes) {
                    let _ = report.into_proto("worker-0");
                }
            }
        }
    }
}
