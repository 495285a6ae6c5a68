//! The parti-sim wire protocol, package `sim.v1`, generated from `proto/sim/v1/sim.proto`.
//!
//! Layout: [`v1`] holds the messages and the `Agent` / `Control` clients and servers.

/// Package `sim.v1`.
pub mod v1 {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("sim.v1");
}
