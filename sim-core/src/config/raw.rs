//! Sections as written in the YAML, for the fields whose default depends on another field of
//! the same section. They deserialize into these shapes (with `Option` for "absent") and
//! convert into the public structs, which then hold plain values that the rest of the
//! system can use without asking "was this set?".

use std::time::Duration;

use serde::Deserialize;

use super::duration::{human, human_opt};
use super::schema::{CoordinatorConfig, JetStreamConfig, NatsConfig, NatsMode};

/// `coordinator` as written: `drain_timeout` may be absent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCoordinator {
    #[serde(with = "human")]
    validation_window: Duration,
    strict_duplicates: bool,
    #[serde(with = "human")]
    rebalance_timeout: Duration,
    #[serde(with = "human")]
    stall_timeout: Duration,
    #[serde(with = "human_opt")]
    drain_timeout: Option<Duration>,
    #[serde(with = "human")]
    drain_settle: Duration,
    #[serde(with = "human")]
    startup_timeout: Duration,
    #[serde(with = "human")]
    catch_up_timeout: Duration,
    max_resource_growth: f64,
}

impl Default for RawCoordinator {
    fn default() -> Self {
        let defaults = CoordinatorConfig::default();
        Self {
            validation_window: defaults.validation_window,
            strict_duplicates: defaults.strict_duplicates,
            rebalance_timeout: defaults.rebalance_timeout,
            stall_timeout: defaults.stall_timeout,
            drain_timeout: None,
            drain_settle: defaults.drain_settle,
            startup_timeout: defaults.startup_timeout,
            catch_up_timeout: defaults.catch_up_timeout,
            max_resource_growth: defaults.max_resource_growth,
        }
    }
}

impl From<RawCoordinator> for CoordinatorConfig {
    fn from(raw: RawCoordinator) -> Self {
        Self {
            drain_timeout: raw
                .drain_timeout
                .unwrap_or_else(|| CoordinatorConfig::default_drain(raw.validation_window)),
            validation_window: raw.validation_window,
            strict_duplicates: raw.strict_duplicates,
            rebalance_timeout: raw.rebalance_timeout,
            stall_timeout: raw.stall_timeout,
            drain_settle: raw.drain_settle,
            startup_timeout: raw.startup_timeout,
            catch_up_timeout: raw.catch_up_timeout,
            max_resource_growth: raw.max_resource_growth,
        }
    }
}

/// `nats` as written: `url` may be absent, which is fine when embedded but an error when
/// external; `cluster_size` and `replicas` default by mode.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawNats {
    mode: NatsMode,
    url: Option<String>,
    cluster_size: Option<u32>,
    replicas: Option<u32>,
    stream: String,
    subject_prefix: String,
    jetstream: JetStreamConfig,
}

impl Default for RawNats {
    fn default() -> Self {
        let defaults = NatsConfig::default();
        Self {
            mode: defaults.mode,
            url: None,
            cluster_size: None,
            replicas: None,
            stream: defaults.stream,
            subject_prefix: defaults.subject_prefix,
            jetstream: defaults.jetstream,
        }
    }
}

impl From<RawNats> for NatsConfig {
    fn from(raw: RawNats) -> Self {
        // An external server has no sensible default address: leave it empty so validation
        // reports `nats.url` as required instead of silently trying localhost.
        let url = raw.url.unwrap_or_else(|| match raw.mode {
            NatsMode::Embedded => NatsConfig::DEFAULT_URL.to_owned(),
            NatsMode::External => String::new(),
        });
        // Embedded: the size is ours, default one server. External: keep whatever was
        // written (normally nothing), so validation can reject a size given there.
        let cluster_size = match raw.mode {
            NatsMode::Embedded => Some(raw.cluster_size.unwrap_or(1)),
            NatsMode::External => raw.cluster_size,
        };
        // Embedded: one replica per server unless told otherwise. External: we cannot know
        // how many servers there are, so the safe default is 1.
        let replicas = raw.replicas.unwrap_or(match raw.mode {
            NatsMode::Embedded => cluster_size.unwrap_or(1),
            NatsMode::External => 1,
        });
        Self {
            mode: raw.mode,
            url,
            cluster_size,
            replicas,
            stream: raw.stream,
            subject_prefix: raw.subject_prefix,
            jetstream: raw.jetstream,
        }
    }
}
