//! Stable worker ids: `id.<prefix>-<n>` leases in the control bucket.
//!
//! The lowest free number is taken with a create (compare-and-set against "no live value"),
//! so two claimers can never both win. A process that presents an identity token takes
//! the id whose value carries the same token at once, by compare-and-set on that value's
//! revision — this is how a restarted worker gets its id back without waiting for the TTL.
//! The token must only be reused once its previous holder is dead; the agent guarantees
//! that by reaping the child before respawning its slot.
//!
//! A graceful stop deletes the id key, so there is no value to take over. For that case the
//! token also names its id in a reservation (`token.<hash>` → id, TTL `worker_id_ttl`),
//! written when the id is claimed and again just before it is released: a restarted process
//! first re-creates its reserved id, and fresh claimers skip ids reserved by other tokens.
//! (Found by the harness twice: a SIGTERM-restarted worker came back under the lower id a
//! scale-down had released, and, once that was fixed, lost its own released id to a worker
//! starting at the same moment.) A fresh claimer that read the reservations just before
//! the release wrote one can still take the id in a window of milliseconds; accepted.

use bytes::Bytes;

use crate::Config;
use crate::control::{ControlBucket, ControlError, decode, encode, keys};
use crate::lease::Lease;

/// Value of an id key.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct IdValue {
    incarnation: u64,
    #[serde(default)]
    token: Option<String>,
}

/// Why no id could be claimed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Every id in `worker_id_min..=worker_id_max` is held.
    #[error("no free worker id in {prefix}-{min}..={prefix}-{max}")]
    NoneFree {
        /// The prefix.
        prefix: String,
        /// Lowest id.
        min: u32,
        /// Highest id.
        max: u32,
    },
    /// NATS failed while claiming.
    #[error("claiming a worker id: {0}")]
    Control(#[from] ControlError),
}

/// Encoded id value for this process.
pub(crate) fn id_value(config: &Config, incarnation: u64) -> Bytes {
    encode(&IdValue {
        incarnation,
        token: config.identity_token.clone(),
    })
}

/// Reserve `id` for this process's identity token for `worker_id_ttl`: on claim, and just
/// before a graceful release (so the restarted process finds it free and nobody else takes
/// it meanwhile).
pub(crate) async fn remember_token(
    bucket: &ControlBucket,
    config: &Config,
    id: &str,
) -> Result<(), ControlError> {
    if let Some(token) = &config.identity_token {
        let key = keys::token(token);
        bucket
            .put_with_ttl(&key, Bytes::from(id.to_string()), config.worker_id_ttl)
            .await?;
    }
    Ok(())
}

/// Claim an id: ours by token if one exists (held, or released), else the lowest free.
pub(crate) async fn claim(
    bucket: &ControlBucket,
    config: &Config,
    incarnation: u64,
) -> Result<Lease, IdentityError> {
    let value = id_value(config, incarnation);
    let ttl = config.worker_id_ttl;
    if let Some(token) = &config.identity_token {
        for (key, current) in bucket.scan(keys::ID_PREFIX).await? {
            let Ok(held) = decode::<IdValue>(&key, &current.value) else {
                continue;
            };
            if held.token.as_deref() == Some(token.as_str()) {
                match Lease::take_over(
                    bucket,
                    key.clone(),
                    value.clone(),
                    current.revision,
                    ttl,
                    incarnation,
                )
                .await
                {
                    Ok(lease) => {
                        tracing::info!(%key, "reclaimed id by identity token");
                        if let Some(id) = key.strip_prefix(keys::ID_PREFIX) {
                            remember_token(bucket, config, id).await?;
                        }
                        return Ok(lease);
                    }
                    // Someone else moved it meanwhile: fall back to the lowest free id.
                    Err(ControlError::Conflict { .. }) => break,
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }
    if let Some(token) = &config.identity_token
        && let Some(previous) = bucket.get(&keys::token(token)).await?
    {
        let id = String::from_utf8_lossy(&previous.value).into_owned();
        match Lease::create(bucket, keys::id(&id), value.clone(), ttl, incarnation).await {
            Ok(lease) => {
                tracing::info!(%id, "reclaimed the released id of this identity token");
                remember_token(bucket, config, &id).await?;
                return Ok(lease);
            }
            Err(ControlError::Exists { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
    // Ids other tokens hold or have just released are left to them.
    let mine = config.identity_token.as_deref().map(keys::token);
    let reserved: Vec<String> = bucket
        .scan(keys::TOKEN_PREFIX)
        .await?
        .into_iter()
        .filter(|(key, _)| Some(key) != mine.as_ref())
        .map(|(_, held)| String::from_utf8_lossy(&held.value).into_owned())
        .collect();
    for n in config.worker_id_min..=config.worker_id_max {
        let id = format!("{}-{n}", config.worker_id_prefix);
        if reserved.contains(&id) {
            continue;
        }
        match Lease::create(bucket, keys::id(&id), value.clone(), ttl, incarnation).await {
            Ok(lease) => {
                remember_token(bucket, config, &id).await?;
                return Ok(lease);
            }
            Err(ControlError::Exists { .. }) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(IdentityError::NoneFree {
        prefix: config.worker_id_prefix.clone(),
        min: config.worker_id_min,
        max: config.worker_id_max,
    })
}
