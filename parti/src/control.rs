//! The control bucket: one JetStream KV bucket holding every piece of shared state, written
//! only with compare-and-set.
//!
//! Why one bucket: a write can be fenced by the sequence of *another* key only when both
//! live in the same stream (`Nats-Expected-Last-Subject-Sequence-Subject`, nats-server 2.11+).
//! The assignment is written fenced by the leader key, so a deposed leader's write is
//! rejected by the server, not merely discouraged by a local check.
//!
//! Why per-key TTLs instead of bucket `MaxAge`: ids, heartbeats and the leader lease each
//! need their own lifetime while the assignment must never expire. The bucket is created
//! with `limit_markers`, so an expired lease leaves a delete marker that watchers see.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, kv};
use bytes::Bytes;
use futures::StreamExt;

/// Keys in the control bucket.
pub(crate) mod keys {
    /// Stable id lease of a worker id.
    pub fn id(worker_id: &str) -> String {
        format!("id.{worker_id}")
    }
    /// Heartbeat lease of a worker id.
    pub fn heartbeat(worker_id: &str) -> String {
        format!("hb.{worker_id}")
    }
    /// Prefix of every heartbeat key.
    pub const HEARTBEAT_PREFIX: &str = "hb.";
    /// Prefix of every id key.
    pub const ID_PREFIX: &str = "id.";
    /// Identity token → the id it holds or just released (TTL `worker_id_ttl`): where a
    /// restarted process looks first, and an id fresh claimers leave alone meanwhile.
    pub const TOKEN_PREFIX: &str = "token.";
    /// See [`TOKEN_PREFIX`].
    pub fn token(token: &str) -> String {
        format!(
            "token.{:016x}",
            xxhash_rust::xxh3::xxh3_64(token.as_bytes())
        )
    }
    /// The leader lease.
    pub const LEADER: &str = "leader";
    /// The one assignment document.
    pub const ASSIGNMENT: &str = "assignment";
    /// Read (never written) to learn whether the bucket serves reads yet.
    pub const READ_PROBE: &str = "read-probe";
}

/// Longest wait in [`ControlBucket::open`] for a young bucket to serve reads.
const READABLE_WAIT: Duration = Duration::from_secs(10);

/// Failure of a control-bucket operation.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A compare-and-set lost: someone else wrote the key (or the fence key) since.
    #[error("conflict writing {key}: revision changed")]
    Conflict {
        /// The key being written.
        key: String,
    },
    /// The key already holds a live value.
    #[error("{key} is already taken")]
    Exists {
        /// The key being created.
        key: String,
    },
    /// NATS did not answer or refused for another reason; the outcome may be unknown.
    #[error("{operation} {key}: {source}")]
    Nats {
        /// What was being done.
        operation: &'static str,
        /// The key involved.
        key: String,
        /// The underlying error.
        #[source]
        source: async_nats::Error,
    },
    /// A stored value could not be decoded.
    #[error("malformed value at {key}: {source}")]
    Malformed {
        /// The key read.
        key: String,
        /// Decoding error.
        #[source]
        source: serde_json::Error,
    },
}

impl ControlError {
    fn nats(operation: &'static str, key: &str, source: impl Into<async_nats::Error>) -> Self {
        Self::Nats {
            operation,
            key: key.to_string(),
            source: source.into(),
        }
    }
}

/// A live value and its revision (the stream sequence that wrote it).
#[derive(Debug, Clone)]
pub(crate) struct Versioned {
    pub value: Bytes,
    pub revision: u64,
}

/// Whether a publish failed its `Nats-Expected-Last-Subject-Sequence` check: error 10071
/// (async-nats' `WrongLastSequence`), or 10164, the form a replicated stream's leader answers
/// with while another expected-sequence write to the same subject is still in flight (it
/// cannot know the final sequence yet). async-nats 0.51 maps only the first; both mean the
/// compare-and-set lost, and callers re-read.
fn lost_compare_and_set(error: &jetstream::context::PublishError) -> bool {
    error.kind() == PublishErrorKind::WrongLastSequence
        || std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<jetstream::Error>())
            .is_some_and(|error| {
                error.error_code() == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            })
}

/// Wait until `store` answers a read, at most [`READABLE_WAIT`].
///
/// A replicated bucket that was just created answers reads (direct gets) with "no
/// responders" until its replicas are set up: three workers starting at once on a 3-server
/// cluster failed their first id claim that way. Waiting here keeps that youth from failing
/// `Manager::start`; anything else wrong shows up, with its error, at the next operation.
/// Each probe gets a second: a request that found a responder but no answer would otherwise
/// hold us for the client's whole request timeout.
async fn wait_until_readable(store: &kv::Store) {
    let deadline = tokio::time::Instant::now() + READABLE_WAIT;
    let mut pause = Duration::from_millis(10);
    loop {
        let probe = tokio::time::timeout(Duration::from_secs(1), store.entry(keys::READ_PROBE));
        if matches!(probe.await, Ok(Ok(_))) || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Handle on the control bucket.
#[derive(Debug, Clone)]
pub(crate) struct ControlBucket {
    js: jetstream::Context,
    store: kv::Store,
    bucket: String,
}

impl ControlBucket {
    /// Open the bucket, creating it on first use.
    pub async fn open(
        client: async_nats::Client,
        bucket: &str,
        replicas: usize,
    ) -> Result<Self, ControlError> {
        let js = jetstream::new(client);
        let mut last_error = None;
        // Several managers start at once: creation races are expected, so retry open/create.
        for attempt in 0..5u32 {
            // Not there yet (or not reachable): try to create it below.
            if let Ok(store) = js.get_key_value(bucket).await {
                wait_until_readable(&store).await;
                return Ok(Self {
                    js,
                    store,
                    bucket: bucket.to_string(),
                });
            }
            let config = kv::Config {
                bucket: bucket.to_string(),
                history: 1,
                num_replicas: replicas,
                // Markers make TTL expiry visible to watchers; they only need to outlive a
                // watcher's reconnect.
                limit_markers: Some(Duration::from_secs(60)),
                ..Default::default()
            };
            match js.create_key_value(config).await {
                Ok(store) => {
                    wait_until_readable(&store).await;
                    return Ok(Self {
                        js,
                        store,
                        bucket: bucket.to_string(),
                    });
                }
                Err(error) => {
                    last_error = Some(ControlError::nats("create bucket", bucket, error));
                }
            }
            tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
        }
        Err(last_error.unwrap_or_else(|| ControlError::nats("open bucket", bucket, "unknown")))
    }

    /// The KV store, for watches.
    pub fn store(&self) -> &kv::Store {
        &self.store
    }

    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{}", self.bucket, key)
    }

    /// The live value of `key`, or `None` when absent, deleted or expired.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>, ControlError> {
        Ok(self
            .entry(key)
            .await?
            .and_then(|(value, live)| live.then_some(value)))
    }

    /// The latest entry of `key` and whether it is live (a put) — a tombstone's revision is
    /// what a create must expect.
    async fn entry(&self, key: &str) -> Result<Option<(Versioned, bool)>, ControlError> {
        let entry = self
            .store
            .entry(key)
            .await
            .map_err(|error| ControlError::nats("read", key, error))?;
        Ok(entry.map(|entry| {
            let live = entry.operation == kv::Operation::Put;
            (
                Versioned {
                    value: entry.value,
                    revision: entry.revision,
                },
                live,
            )
        }))
    }

    /// Write `value` only if the last revision of `key` is `expected` (0 = never written).
    pub async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: u64,
        ttl: Option<Duration>,
    ) -> Result<u64, ControlError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string());
        if let Some(ttl) = ttl {
            headers.insert("Nats-TTL", ttl.as_secs().max(1).to_string());
        }
        self.publish(key, headers, value).await
    }

    /// Write `value` unconditionally, expiring after `ttl`.
    pub async fn put_with_ttl(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<u64, ControlError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-TTL", ttl.as_secs().max(1).to_string());
        self.publish(key, headers, value).await
    }

    /// Write `value` only if the last revision of `fence_key` is still `fence_revision`.
    ///
    /// This is the fencing token: the leader writes the assignment fenced by its own lease
    /// revision, and any renewal or takeover of the lease since makes the server refuse.
    pub async fn fenced_put(
        &self,
        key: &str,
        value: Bytes,
        fence_key: &str,
        fence_revision: u64,
    ) -> Result<u64, ControlError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            fence_revision.to_string(),
        );
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence-Subject",
            self.subject(fence_key),
        );
        self.publish(key, headers, value).await
    }

    async fn publish(
        &self,
        key: &str,
        headers: HeaderMap,
        value: Bytes,
    ) -> Result<u64, ControlError> {
        let ack = self
            .js
            .publish_with_headers(self.subject(key), headers, value)
            .await
            .map_err(|error| ControlError::nats("write", key, error))?
            .await;
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(error) if lost_compare_and_set(&error) => Err(ControlError::Conflict {
                key: key.to_string(),
            }),
            Err(error) => Err(ControlError::nats("write", key, error)),
        }
    }

    /// Create `key` if it holds no live value (absent, deleted or expired).
    pub async fn create(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<u64, ControlError> {
        let expected = match self.entry(key).await? {
            None => 0,
            Some((_, true)) => {
                return Err(ControlError::Exists {
                    key: key.to_string(),
                });
            }
            Some((tombstone, false)) => tombstone.revision,
        };
        match self.update(key, value, expected, ttl).await {
            Err(ControlError::Conflict { key }) => Err(ControlError::Exists { key }),
            other => other,
        }
    }

    /// Delete `key` if its revision is still `revision` (releasing a lease we hold).
    pub async fn delete_if(&self, key: &str, revision: u64) -> Result<(), ControlError> {
        self.store
            .delete_expect_revision(key, Some(revision))
            .await
            .map_err(|error| ControlError::nats("delete", key, error))
    }

    /// All live keys starting with `prefix`, with their values.
    pub async fn scan(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, ControlError> {
        let mut keys = self
            .store
            .keys()
            .await
            .map_err(|error| ControlError::nats("list", prefix, error))?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|error| ControlError::nats("list", prefix, error))?;
            if key.starts_with(prefix) {
                names.push(key);
            }
        }
        let mut found = Vec::with_capacity(names.len());
        for key in names {
            if let Some(value) = self.get(&key).await? {
                found.push((key, value));
            }
        }
        Ok(found)
    }
}

/// Decode a JSON control value.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    key: &str,
    value: &[u8],
) -> Result<T, ControlError> {
    serde_json::from_slice(value).map_err(|source| ControlError::Malformed {
        key: key.to_string(),
        source,
    })
}

/// Encode a JSON control value.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Bytes {
    // Serialising our own plain structs cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::NatsServer;

    async fn bucket(server: &NatsServer) -> ControlBucket {
        let client = async_nats::connect(server.url()).await.expect("connect");
        ControlBucket::open(client, "fence-test", 1)
            .await
            .expect("bucket")
    }

    /// The server, not the writer, rejects a deposed leader's write.
    #[tokio::test]
    async fn fenced_write_is_rejected_after_takeover() {
        let server = NatsServer::start();
        let bucket = bucket(&server).await;
        let old = bucket
            .create(
                keys::LEADER,
                Bytes::from_static(b"{\"incarnation\":1}"),
                Some(Duration::from_secs(1)),
            )
            .await
            .expect("old leader");
        bucket
            .fenced_put(
                keys::ASSIGNMENT,
                Bytes::from_static(b"v1"),
                keys::LEADER,
                old,
            )
            .await
            .expect("current leader writes");
        // The lease expires (server TTL) and someone else takes it.
        let new = loop {
            match bucket
                .create(
                    keys::LEADER,
                    Bytes::from_static(b"{\"incarnation\":2}"),
                    Some(Duration::from_secs(5)),
                )
                .await
            {
                Ok(revision) => break revision,
                Err(ControlError::Exists { .. }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(error) => panic!("{error}"),
            }
        };
        let stale = bucket
            .fenced_put(
                keys::ASSIGNMENT,
                Bytes::from_static(b"stale"),
                keys::LEADER,
                old,
            )
            .await;
        assert!(
            matches!(stale, Err(ControlError::Conflict { .. })),
            "stale write accepted: {stale:?}"
        );
        bucket
            .fenced_put(
                keys::ASSIGNMENT,
                Bytes::from_static(b"v2"),
                keys::LEADER,
                new,
            )
            .await
            .expect("new leader writes");
        let stored = bucket
            .get(keys::ASSIGNMENT)
            .await
            .expect("read")
            .expect("value");
        assert_eq!(&stored.value[..], b"v2");
    }

    /// Compare-and-set renewal: a second claimer cannot create a live key, and a renewal
    /// against an old revision fails.
    #[tokio::test]
    async fn create_and_update_are_compare_and_set() {
        let server = NatsServer::start();
        let bucket = bucket(&server).await;
        let first = bucket
            .create(
                "id.w-0",
                Bytes::from_static(b"a"),
                Some(Duration::from_secs(5)),
            )
            .await
            .expect("create");
        assert!(matches!(
            bucket
                .create("id.w-0", Bytes::from_static(b"b"), None)
                .await,
            Err(ControlError::Exists { .. })
        ));
        let second = bucket
            .update(
                "id.w-0",
                Bytes::from_static(b"a2"),
                first,
                Some(Duration::from_secs(5)),
            )
            .await
            .expect("renew");
        assert!(matches!(
            bucket
                .update("id.w-0", Bytes::from_static(b"x"), first, None)
                .await,
            Err(ControlError::Conflict { .. })
        ));
        bucket.delete_if("id.w-0", second).await.expect("release");
        bucket
            .create("id.w-0", Bytes::from_static(b"c"), None)
            .await
            .expect("free again after delete");
    }
}
