//! Stable worker ids: `id.<prefix>-<n>` leases in the control bucket.
//!
//! The lowest free number is taken with a create (compare-and-set against "no live value"),
//! so two claimers can never both win. A process that presents an identity token takes
//! the id whose value carries the same token at once, by compare-and-set on that value's
//! revision — this is how a restarted worker gets its id back without waiting for the TTL.
//! The token must only be reused once its previous holder is dead; the agent guarantees
//! that by reaping the child before respawning its slot.
//!
//! A graceful stop deletes the id key, so there is no value to take over; for that case the
//! token also remembers its last id (`token.<hash>`, no TTL) and a restarted process first
//! tries to create that id again. Only if someone else took it meanwhile does it fall back
//! to the lowest free id. (Found by the harness: a SIGTERM-restarted worker came back under
//! the lower id a scale-down had just released.)

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

/// Record which id this process's identity token now holds.
async fn remember_token(
    bucket: &ControlBucket,
    config: &Config,
    id: &str,
) -> Result<(), ControlError> {
    if let Some(token) = &config.identity_token {
        let key = keys::token(token);
        bucket
            .store()
            .put(key.as_str(), Bytes::from(id.to_string()))
            .await
            .map_err(|error| ControlError::Nats {
                operation: "put",
                key,
                source: error.into(),
            })?;
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
                        return Ok(lease);
                    }
                    // Someone else moved it meanwhile: fall back to the lowest free id.
                    Err(ControlError::Conflict { .. }) => break,
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }
    if let Some(token) = &config.identity_token {
        if let Some(previous) = bucket.get(&keys::token(token)).await? {
            let id = String::from_utf8_lossy(&previous.value).into_owned();
            match Lease::create(bucket, keys::id(&id), value.clone(), ttl, incarnation).await {
                Ok(lease) => {
                    tracing::info!(%id, "reclaimed the released id of this identity token");
                    return Ok(lease);
                }
                Err(ControlError::Exists { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    for n in config.worker_id_min..=config.worker_id_max {
        let id = format!("{}-{n}", config.worker_id_prefix);
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
