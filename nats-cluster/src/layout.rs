//! What a cluster directory holds: the description (`cluster.json`), each server's config
//! file, and the helpers that write them.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{NatsClusterError, io_error};
use sim_core::config::JetStreamConfig;

/// The JetStream cluster's name (routes are explicit, so several clusters on one machine
/// never meet even with the same name).
pub(super) const CLUSTER_NAME: &str = "parti-sim";

/// Version of the `cluster.json` format.
pub(super) const FORMAT: u32 = 1;

/// The contents of `cluster.json`: everything needed to find, check, kill and restart the
/// servers of a cluster from any process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterDescription {
    /// Format version (1).
    pub format: u32,
    /// Number of servers.
    pub size: usize,
    /// The JetStream cluster name.
    pub name: String,
    /// The nats-server binary the servers run (restarts use the same one, and a pid only
    /// counts as a server of this cluster when its command line names it).
    pub binary: PathBuf,
    /// The servers, by index.
    pub servers: Vec<ServerDescription>,
}

/// One server of a [`ClusterDescription`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerDescription {
    /// `n<i>`: the JetStream server name.
    pub name: String,
    /// `nats://127.0.0.1:<client_port>`.
    pub url: String,
    /// Client port.
    pub client_port: u16,
    /// Cluster (route) port.
    pub cluster_port: u16,
    /// The config file, as passed to `nats-server -c`.
    pub conf: PathBuf,
}

/// Server `index`'s directory.
pub(super) fn server_dir(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("nats-{index}"))
}

/// `count` distinct free loopback ports: all bound at once (so they differ), then released.
pub(super) fn free_ports(count: usize) -> Result<Vec<u16>, NatsClusterError> {
    let any = Path::new("127.0.0.1:0");
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(io_error("binding", any)))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .map(|address| address.port())
                .map_err(io_error("reading the address of", any))
        })
        .collect()
}

/// One server's config. `cluster`: this server's route port and every server's, when the
/// cluster has more than one server.
pub(super) fn server_conf(
    name: &str,
    client_port: u16,
    store: &Path,
    limits: &JetStreamConfig,
    cluster: Option<(u16, &[u16])>,
) -> String {
    let mut text = format!(
        "# Written by parti-sim (the nats-cluster crate).\n\
         server_name: {name:?}\n\
         listen: \"127.0.0.1:{client_port}\"\n\
         jetstream {{\n\
         \x20 store_dir: {:?}\n\
         \x20 max_memory_store: {}\n\
         \x20 max_file_store: {}\n\
         \x20 # sync_interval: the server's default (2m, lazy fsync); see docs/NATS.md.\n\
         }}\n",
        store.display().to_string(),
        limits.max_memory.0,
        limits.max_file_storage.0,
    );
    if let Some((cluster_port, all)) = cluster {
        let routes: Vec<String> = all
            .iter()
            .map(|port| format!("    \"nats-route://127.0.0.1:{port}\""))
            .collect();
        text.push_str(&format!(
            "cluster {{\n\
             \x20 name: {CLUSTER_NAME:?}\n\
             \x20 listen: \"127.0.0.1:{cluster_port}\"\n\
             \x20 routes: [\n{}\n  ]\n\
             }}\n",
            routes.join("\n")
        ));
    }
    text
}

/// Write `bytes` to `path` through a temporary file and a rename, so another process never
/// reads half a file.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), NatsClusterError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::File::create(&temporary).map_err(io_error("creating", &temporary))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error("writing", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error("renaming", &temporary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_conf_routes_to_every_server() {
        let text = server_conf(
            "n1",
            4001,
            Path::new("/tmp/x/store"),
            &JetStreamConfig::default(),
            Some((5001, &[5000, 5001, 5002])),
        );
        for line in [
            "server_name: \"n1\"",
            "listen: \"127.0.0.1:4001\"",
            "store_dir: \"/tmp/x/store\"",
            "max_memory_store: 1073741824",
            "name: \"parti-sim\"",
            "listen: \"127.0.0.1:5001\"",
            "\"nats-route://127.0.0.1:5000\"",
            "\"nats-route://127.0.0.1:5002\"",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
    }

    #[test]
    fn a_single_server_conf_has_no_cluster_block() {
        let text = server_conf(
            "n0",
            4000,
            Path::new("/s"),
            &JetStreamConfig::default(),
            None,
        );
        assert!(!text.contains("cluster {"), "{text}");
    }

    #[test]
    fn free_ports_differ() {
        let ports = free_ports(10).expect("free ports");
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 10, "{ports:?}");
    }
}
