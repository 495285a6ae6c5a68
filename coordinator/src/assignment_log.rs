//! Watching parti's assignment document (KV bucket `parti`, key `assignment`) for the whole
//! run; what each version shows is judged by `sim_core::assignment::AssignmentLog`.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

pub use sim_core::assignment::AssignmentLog;

/// The bucket and key parti writes its assignment to.
pub const PARTI_BUCKET: &str = "parti";
/// See [`PARTI_BUCKET`].
pub const ASSIGNMENT_KEY: &str = "assignment";

/// One version of the document, as the watch read it.
#[derive(Debug, Clone)]
pub struct Version {
    /// Its KV revision (a resumed run skips revisions its checkpoint already saw).
    pub revision: u64,
    /// When the server stored it (µs since the epoch): the time ownership is judged by.
    pub written_us: i64,
    /// The document.
    pub doc: Value,
}

/// Watch the assignment document at `url` (one URL or a comma-separated list of a cluster's
/// servers), sending every version in order until the receiver is dropped.
///
/// It never ends silently: it waits for parti to create its bucket, and when the watch
/// breaks (a server restart, a lost connection) it says so and watches again. The
/// replayed current version is not sent twice; versions replaced while it was away are
/// never seen, which the version numbers show (`sim_core::authority` counts them and does
/// not judge the time they cover).
pub fn watch(url: String) -> mpsc::Receiver<Version> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut sent_through = 0;
        loop {
            match watch_once(&url, &tx, &mut sent_through).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%url, %error, "assignment watch interrupted; watching again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    rx
}

/// One watch, from the current version on; `Ok` when the receiver is gone, `Err` saying
/// why the watch ended otherwise. `sent_through`: the last revision sent.
async fn watch_once(
    url: &str,
    tx: &mpsc::Sender<Version>,
    sent_through: &mut u64,
) -> Result<(), String> {
    let client = async_nats::connect(proto::nats_servers(url))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let js = jetstream::new(client);
    let store = loop {
        if tx.is_closed() {
            return Ok(());
        }
        // parti's first worker creates the bucket.
        match js.get_key_value(PARTI_BUCKET).await {
            Ok(store) => break store,
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let mut watch = store
        .watch_with_history(ASSIGNMENT_KEY)
        .await
        .map_err(|e| format!("watch failed: {e}"))?;
    while let Some(entry) = watch.next().await {
        // An entry error is reported and skipped (a version lost that way shows as a jump
        // in the version numbers); only the end of the watch starts a new one.
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(%error, "assignment watch: an entry could not be read");
                continue;
            }
        };
        if entry.operation != jetstream::kv::Operation::Put || entry.revision <= *sent_through {
            continue;
        }
        let written_us =
            i64::try_from(entry.created.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX);
        let Ok(doc) = serde_json::from_slice::<Value>(&entry.value) else {
            continue;
        };
        let version = Version {
            revision: entry.revision,
            written_us,
            doc,
        };
        if tx.send(version).await.is_err() {
            return Ok(());
        }
        *sent_through = entry.revision;
    }
    if tx.is_closed() {
        Ok(())
    } else {
        Err("the watch ended".into())
    }
}
