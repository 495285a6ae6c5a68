//! The run's partition map (`proto::v1::PartitionMap`, JSON in the KV bucket
//! [`proto::SIM_BUCKET`] under [`proto::PARTITIONS_KEY`]): which partitions exist and who
//! publishes them. The coordinator edits it for `partition_changes`; producers and workers
//! read it when they start (a respawned process must not go back to the spec's original
//! list) and follow it while they run.

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use proto::v1::PartitionMap;
use tokio::sync::mpsc;

/// The bucket, if the coordinator created one (it always does; a missing bucket means the
/// spec's partitions are all there is).
pub(crate) async fn open(js: &jetstream::Context) -> Option<kv::Store> {
    js.get_key_value(proto::SIM_BUCKET).await.ok()
}

/// The map as it is now, if there is one.
pub(crate) async fn current(store: &kv::Store) -> Option<PartitionMap> {
    let value = store.get(proto::PARTITIONS_KEY).await.ok()??;
    serde_json::from_slice(&value).ok()
}

/// Every version of the map from the current one on, in order, over a channel (closed if
/// the watch fails; the caller then keeps what it has).
pub(crate) fn follow(store: kv::Store) -> mpsc::Receiver<PartitionMap> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut watch = match store.watch_with_history(proto::PARTITIONS_KEY).await {
            Ok(watch) => watch,
            Err(error) => {
                tracing::warn!(%error, "cannot watch the partition map");
                return;
            }
        };
        while let Some(entry) = watch.next().await {
            let Ok(entry) = entry else { continue };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            match serde_json::from_slice::<PartitionMap>(&entry.value) {
                Ok(map) => {
                    if tx.send(map).await.is_err() {
                        return;
                    }
                }
                Err(error) => tracing::warn!(%error, "unreadable partition map ignored"),
            }
        }
    });
    rx
}
