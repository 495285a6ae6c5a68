//! The managed JetStream cluster with real nats-server processes on loopback: a replicated
//! stream keeps every acknowledged message while one server is SIGKILLed (from a second
//! handle, as the coordinator would) and restarted; `open` needs a cluster; only the
//! starting handle stops the cluster on drop.
//!
//! Needs nats-server 2.15 (`scripts/setup.sh`, or `NATS_SERVER_BIN`).

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use nats_cluster::{NatsCluster, NatsClusterError};
use sim_core::config::Config;
use test_support::eventually;

/// A run config with a three-server cluster and small JetStream limits (three servers share
/// this machine's memory and disk).
fn cluster_config() -> Config {
    Config::from_yaml_str(
        "simulation: {duration: 1m}\n\
         partitions: {count: 4, message_rate_per_partition: 1}\n\
         workers: {count: 2}\n\
         nats:\n\
         \x20 cluster_size: 3\n\
         \x20 jetstream: {max_memory: 64MB, max_file_storage: 1GB}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn start(dir: &std::path::Path, config: &Config) -> NatsCluster {
    let size = config.nats.managed_servers().expect("embedded") as usize;
    NatsCluster::start(dir, &config.nats.jetstream, size)
        .await
        .unwrap_or_else(|e| panic!("starting the cluster: {e}"))
}

/// Publish message `k` with a message id and wait for the server's ack; retry (same id, so
/// at most one copy is stored) until `deadline` while a leader is being elected or the
/// client moves to another server. Returns the number of attempts.
async fn publish_acked(js: &jetstream::Context, subject: &str, k: u64, deadline: Instant) -> u32 {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("msg-{k}").as_str());
        let outcome = match js
            .publish_with_headers(subject.to_string(), headers, k.to_string().into())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => return attempts,
            Err(error) if Instant::now() < deadline => {
                eprintln!("publish {k} attempt {attempts}: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("message {k} never acked: {error}"),
        }
    }
}

async fn stream_info(js: &jetstream::Context, name: &str) -> Option<stream::Info> {
    let mut stream = js.get_stream(name).await.ok()?;
    stream.info().await.ok().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_stream_keeps_every_acked_message_across_a_server_kill() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("cluster");
    let config = cluster_config();
    assert_eq!(
        config.nats.replicas, 3,
        "replicas default to the cluster size"
    );

    let started = Instant::now();
    let cluster = start(&dir, &config).await;
    eprintln!("3-server cluster ready in {:?}", started.elapsed());
    let urls = cluster.urls();
    assert_eq!(proto::nats_servers(&urls).len(), 3, "{urls}");

    // The run's stream, replicated 3 ways, created through the comma-separated URL list.
    coordinator::stream::prepare(&urls, &config)
        .await
        .unwrap_or_else(|e| panic!("preparing the stream: {e:#}"));
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(proto::nats_servers(&urls))
        .await
        .expect("connecting to the cluster");
    let js = jetstream::new(client);
    let name = config.nats.stream.clone();
    let info = stream_info(&js, &name).await.expect("stream info");
    assert_eq!(info.config.num_replicas, 3);
    let sim_bucket = js
        .get_stream(format!("KV_{}", proto::SIM_BUCKET))
        .await
        .expect("the simulation's KV bucket")
        .info()
        .await
        .expect("bucket info")
        .config
        .num_replicas;
    assert_eq!(
        sim_bucket, 3,
        "the simulation's KV bucket is replicated too"
    );

    let subject = format!("{}.0", config.nats.subject_prefix);
    const PER_PHASE: u64 = 200;
    let deadline = Instant::now() + Duration::from_secs(60);
    for k in 1..=PER_PHASE {
        publish_acked(&js, &subject, k, deadline).await;
    }

    // Kill the stream's leader — the hardest case: the survivors must elect a new one —
    // from a second handle, as the coordinator daemon would.
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader");
    let victim = (0..cluster.size())
        .find(|&i| cluster.server_name(i).ok() == Some(leader.as_str()))
        .unwrap_or_else(|| panic!("leader {leader} is not one of ours"));
    let other = NatsCluster::open(cluster.dir()).expect("opening the cluster by its directory");
    assert!(other.is_running(victim));
    let killed = Instant::now();
    other.kill(victim).expect("kill");
    assert!(!other.is_running(victim), "{leader} still runs after kill");
    assert!(
        !cluster.is_running(victim),
        "the first handle sees it gone too"
    );
    assert!(matches!(
        other.kill(victim),
        Err(NatsClusterError::NotRunning { .. })
    ));

    // Two of three keep the stream writable.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut retries = 0;
    for k in PER_PHASE + 1..=2 * PER_PHASE {
        retries += publish_acked(&js, &subject, k, deadline).await - 1;
    }
    eprintln!(
        "{PER_PHASE} messages acked with {leader} down ({retries} retries, {:?} after the kill)",
        killed.elapsed()
    );

    // The survivors see it gone, so "current" after the restart means caught up, not stale.
    eventually(
        "the killed server reported behind or offline",
        Duration::from_secs(60),
        || {
            let (js, name, leader) = (&js, &name, &leader);
            async move {
                let cluster = stream_info(js, name).await.and_then(|info| info.cluster);
                cluster.is_some_and(|cluster| {
                    cluster
                        .replicas
                        .iter()
                        .any(|peer| &peer.name == leader && (!peer.current || peer.offline))
                })
            }
        },
    )
    .await;
    eprintln!(
        "{leader} reported down {:?} after the kill",
        killed.elapsed()
    );

    let restarted = Instant::now();
    other.restart(victim).await.expect("restart");
    let answered = restarted.elapsed();
    assert!(matches!(
        other.restart(victim).await,
        Err(NatsClusterError::AlreadyRunning { .. })
    ));
    let last = std::sync::Mutex::new(String::new());
    eventually(
        "every replica, the restarted server's included, current",
        Duration::from_secs(60),
        || {
            let (js, name, leader, last) = (&js, &name, &leader, &last);
            async move {
                let Some(info) = stream_info(js, name).await else {
                    return false;
                };
                let Some(cluster) = info.cluster else {
                    return false;
                };
                if let Ok(mut last) = last.lock() {
                    *last = format!("{cluster:?}");
                }
                let members = cluster.replicas.len() + usize::from(cluster.leader.is_some());
                let restarted_in = cluster.leader.as_deref() == Some(leader.as_str())
                    || cluster.replicas.iter().any(|peer| &peer.name == leader);
                members == 3
                    && restarted_in
                    && cluster
                        .replicas
                        .iter()
                        .all(|peer| peer.current && !peer.offline)
            }
        },
    )
    .await;
    eprintln!(
        "{leader} answering {answered:?} after restart, current after {:?}: {}",
        restarted.elapsed(),
        last.lock().map(|s| s.clone()).unwrap_or_default()
    );

    let info = stream_info(&js, &name).await.expect("stream info");
    assert_eq!(
        info.state.messages,
        2 * PER_PHASE,
        "every acked message, once"
    );
    assert_eq!(info.state.last_sequence, 2 * PER_PHASE);
    assert!(cluster.stop_all(Duration::from_secs(10)).is_ok());
}

#[test]
fn open_without_a_cluster_says_so() {
    let temp = tempfile::tempdir().expect("temp dir");
    let missing = temp.path().join("no-such-cluster");
    let error = NatsCluster::open(&missing).expect_err("no cluster there");
    assert!(
        matches!(error, NatsClusterError::NotACluster { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("no NATS cluster in") && text.contains("cluster.json"),
        "{text}"
    );

    std::fs::write(temp.path().join("cluster.json"), "{}").expect("write");
    let error = NatsCluster::open(temp.path()).expect_err("not a description");
    assert!(
        error
            .to_string()
            .contains("is not a NATS cluster description"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_starting_handle_stops_the_cluster_on_drop() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("cluster");
    let config = cluster_config();
    let cluster = start(&dir, &config).await;
    let ports: Vec<u16> = cluster
        .description()
        .servers
        .iter()
        .map(|server| server.client_port)
        .collect();
    let accepting = |ports: &[u16]| {
        ports
            .iter()
            .filter(|port| std::net::TcpStream::connect(("127.0.0.1", **port)).is_ok())
            .count()
    };
    assert_eq!(accepting(&ports), 3);

    // A second cluster in the same directory would mix stores: refused, nothing disturbed.
    let again = NatsCluster::start(&dir, &config.nats.jetstream, 3).await;
    assert!(
        matches!(again, Err(NatsClusterError::AlreadyDescribed { .. })),
        "{again:?}"
    );

    drop(NatsCluster::open(&dir).expect("open"));
    assert_eq!(
        accepting(&ports),
        3,
        "dropping an opened handle stops nothing"
    );
    assert!((0..3).all(|i| cluster.is_running(i)));

    drop(cluster);
    let observer = NatsCluster::open(&dir).expect("open after stop");
    assert!((0..3).all(|i| !observer.is_running(i)));
    eventually("every client port refuses", Duration::from_secs(10), || {
        let ports = &ports;
        async move { accepting(ports) == 0 }
    })
    .await;
}

/// Whether JetStream answers an account-info request through `url` alone.
async fn jetstream_answers(url: &str) -> bool {
    let Ok(client) = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .ignore_discovered_servers()
        .connect(url)
        .await
    else {
        return false;
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client);
    js.query_account().await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_a_meta_leader_not_just_an_open_port() {
    let temp = tempfile::tempdir().expect("temp dir");
    let cluster = start(&temp.path().join("cluster"), &cluster_config()).await;
    let survivor = cluster.url(2).expect("server 2").to_string();
    assert!(jetstream_answers(&survivor).await);
    cluster.kill(0).expect("kill n0");
    cluster.kill(1).expect("kill n1");
    // One of three has no quorum: its port accepts, but JetStream cannot answer.
    eventually(
        "the lone survivor stops answering JetStream requests",
        Duration::from_secs(60),
        || {
            let survivor = &survivor;
            async move { !jetstream_answers(survivor).await }
        },
    )
    .await;
    assert!(std::net::TcpStream::connect(survivor.trim_start_matches("nats://")).is_ok());
    // Two of three elect a leader again: restart waits for exactly that.
    cluster.restart(0).await.expect("restart n0");
    assert!(jetstream_answers(&survivor).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parti_starts_on_a_fresh_replicated_control_bucket() {
    let temp = tempfile::tempdir().expect("temp dir");
    let cluster = start(&temp.path().join("cluster"), &cluster_config()).await;
    let urls = cluster.urls();
    let source = std::sync::Arc::new(parti::StaticSource::new(
        (0..4)
            .map(|p| parti::Partition::new(p.to_string(), 1))
            .collect(),
    ));
    // Three workers at once, as an agent starts them: one creates the bucket, the others open
    // it, and all read from it right away — when a just-created replicated stream may not
    // serve reads yet.
    let starts = (0..3).map(|_| {
        let (urls, source) = (urls.clone(), source.clone());
        async move {
            let client = async_nats::connect(proto::nats_servers(&urls))
                .await
                .expect("connect");
            let config = parti::Config {
                bucket_replicas: 3,
                ..parti::Config::fast_for_tests()
            };
            parti::Manager::start(
                client,
                config,
                source,
                std::sync::Arc::new(parti::RoundRobin),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("parti on a 3-replica bucket: {e:#}"))
        }
    });
    let started = Instant::now();
    let managers = futures::future::join_all(starts).await;
    eprintln!("3 parti managers started in {:?}", started.elapsed());
    let js = jetstream::new(
        async_nats::connect(proto::nats_servers(&urls))
            .await
            .expect("connect"),
    );
    let bucket = stream_info(&js, "KV_parti").await.expect("parti's bucket");
    assert_eq!(bucket.config.num_replicas, 3);
    for manager in managers {
        manager.stop().await;
    }
}
