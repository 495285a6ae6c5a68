//! Stable worker ids: `id.<prefix>-<n>` leases in the control bucket.
//!
//! The lowest free number is taken with a create (compare-and-set against "no live value"),
//! so two claimers can never both win. A process that presents an identity token takes
//! the id whose value carries the same token at once, by compare-and-set on that value's
//! revision — this is how a restarted worker gets its id back without waiting for the TTL.
//! The token must only be reused once its previous holder is dead; the agent guarantees
//! that by reaping the child before respawning its slot.

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

/// Claim an id: ours by token if one exists, else the lowest free.
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
                        return Ok(lease);
                    }
                    // Someone else moved it meanwhile: fall back to the lowest free id.
                    Err(ControlError::Conflict { .. }) => break,
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }
    for n in config.worker_id_min..=config.worker_id_max {
        let key = keys::id(&format!("{}-{n}", config.worker_id_prefix));
        match Lease::create(bucket, key, value.clone(), ttl, incarnation).await {
            Ok(lease) => return Ok(lease),
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
