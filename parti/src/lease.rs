//! Leases on control keys, and the fence that turns them into permission to process.
//!
//! The lease math: a renewal sent at local instant `t` is stored by the server at some
//! `s >= t` and expires there at `s + ttl`. We treat it as ours until `t + ttl - margin`,
//! measured on the monotonic clock (which keeps running while the process is SIGSTOPped).
//! So by the time the server — and therefore the leader — sees the lease gone, we have
//! already stopped acting on it. Nothing here trusts wall clocks across hosts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::control::{ControlBucket, ControlError, decode};

/// Safety margin subtracted from every local lease deadline: covers the gap between
/// checking the fence and acting on it.
pub(crate) fn margin(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_millis(250))
}

/// Outcome of a renewal attempt.
#[derive(Debug)]
pub(crate) enum Renewal {
    /// Renewed; the local deadline moved forward.
    Renewed,
    /// Someone else holds the key now: the lease is gone for good.
    Lost,
    /// NATS did not answer; retry, the deadline did not move.
    Unknown(ControlError),
}

/// A lease on one key: the revision we last wrote and how long it is ours.
#[derive(Debug)]
pub(crate) struct Lease {
    pub key: String,
    pub ttl: Duration,
    pub revision: u64,
    pub valid_until: Instant,
    incarnation: u64,
}

/// Every lease value carries the writer's incarnation, so a renewal whose acknowledgement
/// was lost can be recognised as ours instead of being mistaken for a takeover.
#[derive(Debug, serde::Deserialize)]
struct IncarnationOnly {
    incarnation: u64,
}

impl Lease {
    /// Create the key (it must hold no live value).
    pub async fn create(
        bucket: &ControlBucket,
        key: String,
        value: Bytes,
        ttl: Duration,
        incarnation: u64,
    ) -> Result<Self, ControlError> {
        let sent = Instant::now();
        let revision = bucket.create(&key, value, Some(ttl)).await?;
        Ok(Self {
            key,
            ttl,
            revision,
            valid_until: sent + ttl - margin(ttl),
            incarnation,
        })
    }

    /// Take over the key from a known revision (a predecessor we know to be dead).
    pub async fn take_over(
        bucket: &ControlBucket,
        key: String,
        value: Bytes,
        expected: u64,
        ttl: Duration,
        incarnation: u64,
    ) -> Result<Self, ControlError> {
        let sent = Instant::now();
        let revision = bucket.update(&key, value, expected, Some(ttl)).await?;
        Ok(Self {
            key,
            ttl,
            revision,
            valid_until: sent + ttl - margin(ttl),
            incarnation,
        })
    }

    /// Whether the lease is still ours by the local clock.
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }

    /// Compare-and-set renewal with a new value.
    pub async fn renew(&mut self, bucket: &ControlBucket, value: Bytes) -> Renewal {
        let sent = Instant::now();
        match bucket
            .update(&self.key, value, self.revision, Some(self.ttl))
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                self.valid_until = sent + self.ttl - margin(self.ttl);
                Renewal::Renewed
            }
            Err(ControlError::Conflict { .. }) => match bucket.get(&self.key).await {
                // A previous renewal landed but its ack was lost: adopt it; the deadline
                // stays where it was until the next renewal succeeds.
                Ok(Some(current))
                    if decode::<IncarnationOnly>(&self.key, &current.value)
                        .is_ok_and(|value| value.incarnation == self.incarnation) =>
                {
                    self.revision = current.revision;
                    Renewal::Unknown(ControlError::Conflict {
                        key: self.key.clone(),
                    })
                }
                Ok(_) => Renewal::Lost,
                Err(error) => Renewal::Unknown(error),
            },
            Err(error) => Renewal::Unknown(error),
        }
    }

    /// Delete the key if it is still ours (graceful release).
    pub async fn release(&self, bucket: &ControlBucket) -> Result<(), ControlError> {
        bucket.delete_if(&self.key, self.revision).await
    }
}

/// Permission to process, shared with the consumption helper.
///
/// Valid while both the stable-id lease and the heartbeat lease are locally valid and
/// neither has been lost. The consumer checks it before running a handler and again
/// before acknowledging, so a worker that was paused past its lease does nothing after it
/// resumes.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    inner: Arc<Mutex<FenceState>>,
}

#[derive(Debug, Default)]
struct FenceState {
    id_until: Option<Instant>,
    heartbeat_until: Option<Instant>,
    lost: bool,
}

impl Fence {
    /// Whether this worker may process (and acknowledge) right now.
    pub fn is_valid(&self) -> bool {
        let state = self.lock();
        if state.lost {
            return false;
        }
        match (state.id_until, state.heartbeat_until) {
            (Some(id), Some(heartbeat)) => Instant::now() < id.min(heartbeat),
            _ => false,
        }
    }

    pub(crate) fn set_id(&self, until: Instant) {
        self.lock().id_until = Some(until);
    }

    pub(crate) fn set_heartbeat(&self, until: Instant) {
        self.lock().heartbeat_until = Some(until);
    }

    /// Revoke permanently (id lost, shutdown).
    pub(crate) fn revoke(&self) {
        self.lock().lost = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FenceState> {
        // A panic while holding this lock cannot leave the plain-data state inconsistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
