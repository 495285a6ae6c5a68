//! The leader's view of live workers, from their heartbeat leases.
//!
//! A KV watch on `hb.>` gives changes at once (TTL expiry shows up as a delete marker);
//! a full scan every `heartbeat_ttl / 2` repairs anything a reconnecting watch missed.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::assignment::MemberStatus;
use crate::control::{ControlBucket, decode, keys};

/// Live workers and what their heartbeats say.
pub(crate) type Members = BTreeMap<String, MemberStatus>;

/// Keep `sender` up to date until `cancel` fires.
pub(crate) async fn run(
    bucket: ControlBucket,
    rescan_every: Duration,
    sender: watch::Sender<Members>,
    cancel: CancellationToken,
) {
    let watch_task = tokio::spawn(watch_changes(
        bucket.clone(),
        sender.clone(),
        cancel.clone(),
    ));
    loop {
        match bucket.scan(keys::HEARTBEAT_PREFIX).await {
            Ok(entries) => {
                let members: Members = entries
                    .into_iter()
                    .filter_map(|(key, value)| {
                        let worker = key.strip_prefix(keys::HEARTBEAT_PREFIX)?.to_string();
                        let status = decode::<MemberStatus>(&key, &value.value).ok()?;
                        Some((worker, status))
                    })
                    .collect();
                sender.send_if_modified(|current| {
                    let changed = *current != members;
                    *current = members;
                    changed
                });
            }
            Err(error) => tracing::debug!(%error, "heartbeat scan failed"),
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(rescan_every) => {}
        }
    }
    watch_task.abort();
}

async fn watch_changes(
    bucket: ControlBucket,
    sender: watch::Sender<Members>,
    cancel: CancellationToken,
) {
    let pattern = format!("{}>", keys::HEARTBEAT_PREFIX);
    while !cancel.is_cancelled() {
        let mut watch = match bucket.store().watch_with_history(&pattern).await {
            Ok(watch) => watch,
            Err(error) => {
                tracing::debug!(%error, "heartbeat watch failed; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        loop {
            let entry = tokio::select! {
                () = cancel.cancelled() => return,
                entry = watch.next() => entry,
            };
            let Some(Ok(entry)) = entry else { break };
            let Some(worker) = entry.key.strip_prefix(keys::HEARTBEAT_PREFIX) else {
                continue;
            };
            let worker = worker.to_string();
            match entry.operation {
                async_nats::jetstream::kv::Operation::Put => {
                    if let Ok(status) = decode::<MemberStatus>(&entry.key, &entry.value) {
                        sender.send_if_modified(|members| {
                            members.insert(worker, status) != Some(status)
                        });
                    }
                }
                _ => {
                    sender.send_if_modified(|members| members.remove(&worker).is_some());
                }
            }
        }
    }
}
