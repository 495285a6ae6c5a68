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
/// servers; retrying until parti has created its bucket), sending every version in order,
/// until the receiver is dropped.
pub fn watch(url: String) -> mpsc::Receiver<Version> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let Ok(client) = async_nats::connect(proto::nats_servers(&url)).await else {
            tracing::warn!(%url, "assignment watch: cannot connect");
            return;
        };
        let js = jetstream::new(client);
        let store = loop {
            if tx.is_closed() {
                return;
            }
            match js.get_key_value(PARTI_BUCKET).await {
                Ok(store) => break store,
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        let mut watch = match store.watch_with_history(ASSIGNMENT_KEY).await {
            Ok(watch) => watch,
            Err(error) => {
                tracing::warn!(%error, "assignment watch failed");
                return;
            }
        };
        while let Some(entry) = watch.next().await {
            let Ok(entry) = entry else { continue };
            if entry.operation != jetstream::kv::Operation::Put {
                continue;
            }
            let written_us =
                i64::try_from(entry.created.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX);
            if let Ok(doc) = serde_json::from_slice::<Value>(&entry.value)
                && tx
                    .send(Version {
                        revision: entry.revision,
                        written_us,
                        doc,
                    })
                    .await
                    .is_err()
            {
                return;
            }
        }
    });
    rx
}
