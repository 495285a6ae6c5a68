//! The parti-sim wire protocol, package `sim.v1`, generated from `proto/sim/v1/sim.proto`.
//!
//! Layout: [`v1`] holds the messages and the `Agent` / `Control` clients and servers.

/// The NATS KV bucket the coordinator keeps run-wide state in (see [`v1::PartitionMap`]).
pub const SIM_BUCKET: &str = "parti-sim";
/// The key of the [`v1::PartitionMap`] (JSON) in [`SIM_BUCKET`].
pub const PARTITIONS_KEY: &str = "partitions";

/// Package `sim.v1`.
pub mod v1 {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("sim.v1");
}
