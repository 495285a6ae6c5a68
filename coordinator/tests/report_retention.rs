//! Reports survive a coordinator restart from a checkpoint.
//!
//! A real agent process runs a real producer (real nats-server); the test plays the
//! coordinator's Agent service, with checkpointing on, on its own tokio runtime. It
//! releases one position (a checkpoint the agent was told about), restores a later one
//! (a checkpoint whose release never reached the agent), kills the service with its runtime
//! (every task and socket gone at once, as with SIGKILL), lets the producer go on while
//! nobody listens, and starts a fresh service on the same port from the restored position.
//! Every report must then be ingested exactly once across both services: the first one's
//! batches up to the restored position, the second one's after it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use coordinator::agents::{AgentRegistry, AgentService};
use proto::v1::agent_server::AgentServer;
use proto::v1::{
    ProducerSpec, Report, Signal, SignalProcess, Spawn, coordinator_message, report, spawn,
};
use test_support::{NatsServer, eventually};
use tokio::runtime::Runtime;

const AGENT: &str = "retain-1";
const STREAM: &str = "RETAIN";
const PREFIX: &str = "retain";

/// One batch as the engine would have applied it.
#[derive(Debug, Clone)]
struct Applied {
    boot_id: u64,
    number: u64,
    reports: Vec<Report>,
}

type Ingested = Arc<Mutex<Vec<Applied>>>;

fn ingested(list: &Ingested) -> Vec<Applied> {
    list.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// The Agent service with checkpointing on, on a runtime of its own.
struct Service {
    runtime: Option<Runtime>,
    registry: AgentRegistry,
    ingested: Ingested,
    port: u16,
}

impl Service {
    /// Serve on `port` (0: any), after seeding `restore`.
    fn start(port: u16, restore: Option<BTreeMap<String, (u64, u64)>>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("service runtime");
        let (ingest, mut ingest_rx) = tokio::sync::mpsc::channel(64);
        let registry = AgentRegistry::new(ingest);
        registry.set_checkpointing(true);
        if let Some(positions) = restore {
            registry.restore(positions);
        }
        // The killed service's port can take a moment to come free.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(listener) => break listener,
                Err(error) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "binding 127.0.0.1:{port}: {error}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let list: Ingested = Arc::default();
        {
            let list = list.clone();
            runtime.spawn(async move {
                while let Some(batch) = ingest_rx.recv().await {
                    list.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Applied {
                            boot_id: batch.boot_id,
                            number: batch.number,
                            reports: batch.reports,
                        });
                }
            });
        }
        let service = AgentService::new(registry.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            tonic::transport::Server::builder()
                .add_service(AgentServer::new(service).max_decoding_message_size(64 << 20))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("serve");
        });
        Self {
            runtime: Some(runtime),
            registry,
            ingested: list,
            port,
        }
    }

    /// Gone at once: every task dropped, every socket closed, nothing flushed.
    fn kill(&mut self) -> Vec<Applied> {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        ingested(&self.ingested)
    }

    fn batches(&self) -> Vec<Applied> {
        ingested(&self.ingested)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The agent daemon; stopped with SIGTERM (its children with it). Its log is printed
/// when the test fails.
struct AgentProcess {
    child: Child,
    log: std::path::PathBuf,
}

impl AgentProcess {
    fn start(port: u16, dir: &Path) -> Self {
        let log = dir.join("agent.log");
        let child = Command::new(test_support::workspace_binary("agent"))
            .args([
                "run",
                "--coordinator",
                &format!("http://127.0.0.1:{port}"),
                "--id",
                AGENT,
                "--dir",
            ])
            .arg(dir.join("agent"))
            .env("RUST_LOG", "info,async_nats=warn")
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("agent log"))
            .spawn()
            .expect("agent");
        Self { child, log }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- agent log ---\n{log}");
        }
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn highest(batches: &[Applied]) -> u64 {
    batches.iter().map(|b| b.number).max().unwrap_or(0)
}

async fn stream_messages(js: &jetstream::Context) -> u64 {
    js.get_stream(STREAM)
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .state
        .messages
}

#[test]
fn reports_after_the_checkpoint_survive_a_coordinator_restart_exactly_once() {
    let started = std::time::Instant::now();
    let test = Runtime::new().expect("test runtime");
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let js = test.block_on(async {
        let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
        js.create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("{PREFIX}.>")],
            ..Default::default()
        })
        .await
        .expect("stream");
        js
    });

    // --- first coordinator: runs, releases P, checkpoints P2 (release lost), dies ---
    let mut first = Service::start(0, None);
    let port = first.port;
    let _agent = AgentProcess::start(port, dir.path());
    let registry = first.registry.clone();
    test.block_on(async {
        eventually("the agent connects", Duration::from_secs(30), || {
            let registry = registry.clone();
            async move { registry.connected().await == [AGENT] }
        })
        .await;
        let spec = ProducerSpec {
            producer_id: "producer-0".into(),
            nats_url: nats.url(),
            stream: STREAM.into(),
            subject_prefix: PREFIX.into(),
            partitions: vec![0, 1],
            weights: vec![1, 1],
            rate_per_partition: 250.0,
            ..Default::default()
        };
        let spawned = registry
            .send(
                AGENT,
                coordinator_message::Body::Spawn(Spawn {
                    process: "producer-0".into(),
                    spec: Some(spawn::Spec::Producer(spec)),
                    run_id: "run-1".into(),
                }),
            )
            .await;
        assert!(spawned, "spawn sent");
    });
    let wait_for_batches = |service: &Service, at_least: u64, what: &str| {
        let list = service.ingested.clone();
        test.block_on(eventually(what, Duration::from_secs(60), move || {
            let list = list.clone();
            async move { highest(&ingested(&list)) >= at_least }
        }));
    };
    wait_for_batches(&first, 30, "30 batches reach the first coordinator");
    let boot_id = first.batches()[0].boot_id;
    assert_ne!(boot_id, 0, "boot ids are never 0");
    let released = highest(&first.batches());
    first.registry.release(AGENT, boot_id, released);
    wait_for_batches(&first, released + 20, "more batches after the release");
    // A checkpoint covering this became durable, but the coordinator died before telling
    // the agent: the agent still holds (released, checkpointed].
    let checkpointed = highest(&first.batches());
    wait_for_batches(&first, checkpointed + 20, "batches after the checkpoint");
    let killed_at = now_us();
    let before = first.kill();
    let in_stream_at_kill = test.block_on(stream_messages(&js));

    // --- the outage: producing goes on ---
    test.block_on(eventually(
        "the producer publishes 1500 messages while no coordinator listens",
        Duration::from_secs(60),
        || {
            let js = js.clone();
            async move { stream_messages(&js).await >= in_stream_at_kill + 1500 }
        },
    ));

    // --- second coordinator, restored from the checkpoint ---
    let restarted_at = now_us();
    let second = Service::start(
        port,
        Some(BTreeMap::from([(
            AGENT.to_string(),
            (boot_id, checkpointed),
        )])),
    );
    let registry = second.registry.clone();
    test.block_on(async {
        eventually("the agent reconnects", Duration::from_secs(30), || {
            let registry = registry.clone();
            async move { registry.connected().await == [AGENT] }
        })
        .await;
    });
    wait_for_batches(
        &second,
        highest(&before) + 10,
        "the second coordinator gets past the first one's last batch",
    );
    test.block_on(async {
        let stopped = registry
            .send(
                AGENT,
                coordinator_message::Body::Signal(SignalProcess {
                    process: "producer-0".into(),
                    signal: Signal::Term.into(),
                    fault: 0,
                }),
            )
            .await;
        assert!(stopped, "SIGTERM sent");
    });
    let exited = |batches: &[Applied]| {
        batches
            .iter()
            .flat_map(|b| &b.reports)
            .any(|r| matches!(r.body, Some(report::Body::Exited(_))))
    };
    {
        let list = second.ingested.clone();
        test.block_on(eventually(
            "the producer's exit is reported",
            Duration::from_secs(30),
            move || {
                let list = list.clone();
                async move { exited(&ingested(&list)) }
            },
        ));
    }
    let total = test.block_on(stream_messages(&js));
    let union_sent = |after: &[Applied]| -> Vec<(u32, u64, i64)> {
        before
            .iter()
            .filter(|b| b.number <= checkpointed)
            .chain(after)
            .flat_map(|b| &b.reports)
            .filter_map(|r| match &r.body {
                Some(report::Body::Sent(sent)) => {
                    Some((sent.partition, sent.seq, sent.published_us))
                }
                _ => None,
            })
            .collect()
    };
    {
        // The last Sent lines may trail the exit report by a moment.
        let list = second.ingested.clone();
        let union_sent = &union_sent;
        test.block_on(eventually(
            "every published message is reported",
            Duration::from_secs(30),
            move || {
                let count = union_sent(&ingested(&list)).len();
                async move { u64::try_from(count).unwrap_or(u64::MAX) >= total }
            },
        ));
    }
    let after = second.batches();

    // Numbering: one agent process throughout; the first coordinator saw 1.., the second
    // exactly what came after the restored position, in order, nothing at or below it.
    assert!(before.iter().chain(&after).all(|b| b.boot_id == boot_id));
    let numbers = |batches: &[Applied]| batches.iter().map(|b| b.number).collect::<Vec<_>>();
    assert_eq!(numbers(&before), (1..=highest(&before)).collect::<Vec<_>>());
    assert_eq!(
        numbers(&after),
        (checkpointed + 1..=highest(&after)).collect::<Vec<_>>(),
        "the second coordinator applies exactly the batches after the checkpoint"
    );
    assert!(
        highest(&before) > checkpointed,
        "batches after the checkpoint were lost with the first coordinator"
    );
    // What the first coordinator applied after the checkpoint came again, unchanged.
    for lost in before.iter().filter(|b| b.number > checkpointed) {
        let again = after
            .iter()
            .find(|b| b.number == lost.number)
            .expect("resent batch");
        assert_eq!(again.reports, lost.reports, "batch {} resent", lost.number);
    }
    assert!(
        second.registry.gaps().is_empty(),
        "{:?}",
        second.registry.gaps()
    );

    // Reports: every message in the stream exactly once, sequences gap-free.
    let sent = union_sent(&after);
    assert_eq!(u64::try_from(sent.len()).expect("count"), total);
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (partition, seq, _) in &sent {
        per_partition.entry(*partition).or_default().push(*seq);
    }
    for (partition, mut seqs) in per_partition {
        seqs.sort_unstable();
        let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            seqs.len(),
            "partition {partition}: duplicates"
        );
        assert_eq!(
            seqs,
            (1..=u64::try_from(seqs.len()).expect("len")).collect::<Vec<_>>(),
            "partition {partition}: gap-free"
        );
    }
    let during_outage = sent
        .iter()
        .filter(|(_, _, at)| (killed_at..restarted_at).contains(at))
        .count();
    assert!(
        during_outage >= 1000,
        "reports produced during the outage arrived: {during_outage}"
    );
    let lifecycle = |wanted: fn(&report::Body) -> bool| {
        before
            .iter()
            .filter(|b| b.number <= checkpointed)
            .chain(&after)
            .flat_map(|b| &b.reports)
            .filter(|r| r.body.as_ref().is_some_and(wanted))
            .count()
    };
    assert_eq!(
        lifecycle(|b| matches!(b, report::Body::Started(_))),
        1,
        "started once"
    );
    assert_eq!(
        lifecycle(|b| matches!(b, report::Body::Exited(_))),
        1,
        "exited once"
    );
    eprintln!(
        "released {released}, checkpointed {checkpointed}, first coordinator applied {}, \
         second {} batches; {} messages, {during_outage} produced during the outage; {:?}",
        highest(&before),
        after.len(),
        total,
        started.elapsed()
    );
}
