//! `parti` — a partition manager over NATS JetStream, and the system under test of
//! parti-sim.
//!
//! Workers share a set of partitions: each claims a stable id, heartbeats, one of them is
//! leader and publishes an assignment computed by a [`Strategy`], and each consumes its
//! partitions through durable JetStream consumers ([`WorkerConsumer`]). It follows the Go
//! library `arloliu/parti` in concepts and defaults, and fixes its correctness gaps:
//! leases renewed by compare-and-set and enforced locally (a paused process stops acting
//! before anyone replaces it), assignment writes fenced by the leader lease on the server,
//! one atomic assignment document, and a two-phase handoff over per-partition durables so
//! no partition's backlog is skipped. See `parti/README.md` for the guarantees.
//!
//! Layout:
//! - [`config`]: [`Config`], defaults and validation.
//! - `control`: the KV control bucket (compare-and-set, fenced writes, per-key TTLs).
//! - `lease`: lease math and the [`Fence`].
//! - `identity`: stable id claim (lowest free, or by identity token).
//! - `membership`: the leader's heartbeat view.
//! - `leader`: election and the calculator (windows, grace, cooldown).
//! - [`assignment`]: the assignment document and the handoff planner.
//! - `manager`: [`Manager`], the public entry point.
//! - `consumer`: [`WorkerConsumer`], the consumption helper; `takeover`: order kept when
//!   a partition changes owner.
//! - [`strategy`]: [`RoundRobin`], [`ConsistentHash`], [`WeightedConsistentHash`].
//! - `source`: [`PartitionSource`], [`StaticSource`].

#![forbid(unsafe_code)]

pub mod assignment;
pub mod config;
mod consumer;
mod control;
mod identity;
mod leader;
mod lease;
mod manager;
mod membership;
mod partition;
mod source;
pub mod strategy;
mod takeover;

pub use config::{Config, ConfigError};
pub use consumer::{
    ConsumerConfig, ConsumerStats, Delivery, Fenced, HandlerError, MessageHandler, WorkerConsumer,
};
pub use control::ControlError;
pub use identity::IdentityError;
pub use lease::Fence;
pub use manager::{Assignment, AssignmentChange, AssignmentListener, Manager, StartError, State};
pub use partition::Partition;
pub use source::{PartitionSource, StaticSource};
pub use strategy::{
    AssignmentMap, ConsistentHash, RoundRobin, Strategy, StrategyError, WeightedConsistentHash,
};
