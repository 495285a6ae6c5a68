//! The parti-sim wire protocol, package `sim.v1`, generated from `proto/proto/sim/v1/sim.proto`.
//!
//! Layout: [`v1`] holds the messages and the `Agent` / `Control` clients and servers;
//! `convert` turns `sim-core` values into wire messages.

mod convert;
pub mod resources;

/// The NATS KV bucket the coordinator keeps run-wide state in (see [`v1::PartitionMap`]).
pub const SIM_BUCKET: &str = "parti-sim";
/// The key of the [`v1::PartitionMap`] (JSON) in [`SIM_BUCKET`].
pub const PARTITIONS_KEY: &str = "partitions";

/// The prefix of the durable consumer our workers bind per partition (`sim-<partition>`):
/// the coordinator reads a removed partition's ack floor from it.
pub const DURABLE_PREFIX: &str = "sim";

/// A worker reports its status whenever it changes and at least this often (the report
/// contract, `agent/src/report.rs`): the coordinator tells a silent worker from a quiet one
/// by it.
pub const STATUS_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// The durable consumer of `partition` (see [`DURABLE_PREFIX`]).
pub fn partition_durable(partition: u32) -> String {
    format!("{DURABLE_PREFIX}-{partition}")
}

/// The servers named by a `nats_url` field (and by the config's `nats.url`): a
/// comma-separated list, as the Go client and the `nats` CLI take it, whitespace around each
/// entry ignored.
///
/// async-nats parses a `&str` as exactly one URL (`ToServerAddrs for str`), so a list must
/// be split before `async_nats::connect`, which takes the `Vec<&str>` this returns.
pub fn nats_servers(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// Package `sim.v1`.
pub mod v1 {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("sim.v1");
}

#[cfg(test)]
mod tests {
    use super::nats_servers;

    #[test]
    fn nats_servers_splits_a_comma_separated_list() {
        assert_eq!(nats_servers("nats://a:4222"), ["nats://a:4222"]);
        assert_eq!(
            nats_servers("nats://a:1, tls://b:2 ,nats://c:3,"),
            ["nats://a:1", "tls://b:2", "nats://c:3"]
        );
        assert!(nats_servers("").is_empty());
    }
}
