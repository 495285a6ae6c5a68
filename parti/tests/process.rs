//! Scenarios that need real process death: workers are child processes (this test binary
//! re-executed into its ignored `child_worker` entry), killed and paused with real signals.
//!
//! A child prints one JSON line per event on stdout: its status (id, leader, state,
//! version, partitions) whenever it changes, and every processed message.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::*;
use futures::future::BoxFuture;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use parti::{
    Config, ConsistentHash, ConsumerConfig, Delivery, HandlerError, Manager, MessageHandler,
    StaticSource, WorkerConsumer,
};
use serde_json::{Value, json};
use test_support::{NatsServer, eventually};

const STREAM: &str = "PROC";
const PARTITIONS: usize = 12;

// === child side ===

#[derive(Debug)]
struct PrintProcessed;

impl MessageHandler for PrintProcessed {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            // The commit point: report only while still allowed to.
            if delivery.fence.is_valid() {
                println!(
                    "{}",
                    json!({"processed": String::from_utf8_lossy(&delivery.payload), "partition": delivery.partition.id(), "delivered": delivery.delivered})
                );
            }
            Ok(())
        })
    }
}

/// Entry point of a child worker; only runs when re-executed by a test.
#[tokio::test]
#[ignore = "child process entry, started by the other tests"]
async fn child_worker() {
    let Ok(url) = std::env::var("PARTI_CHILD_URL") else {
        return;
    };
    let config: Config =
        serde_json::from_str(&std::env::var("PARTI_CHILD_CONFIG").expect("config"))
            .expect("config json");
    let client = connect(&url).await;
    // A message in flight when a worker loses its partition is redelivered after
    // `ack_wait`: keep that well inside the tests' 30 s deadlines (the default is 30 s, which
    // raced the "all messages processed" wait once in about 20 runs).
    let mut consumer_config = ConsumerConfig::new(STREAM, "proc.{partition}");
    consumer_config.ack_wait = Duration::from_secs(5);
    let consumer = WorkerConsumer::new(client.clone(), consumer_config, Arc::new(PrintProcessed))
        .await
        .expect("consumer");
    let source = StaticSource::numbered(PARTITIONS);
    let manager = Manager::start(
        client,
        config,
        Arc::new(source),
        Arc::new(ConsistentHash::default()),
        Some(consumer),
    )
    .await
    .expect("start");
    let mut last = Value::Null;
    loop {
        let assignment = manager.assignment().borrow().clone();
        let status = json!({
            "worker": manager.worker_id(),
            "leader": manager.is_leader(),
            "state": format!("{:?}", manager.state()),
            "version": assignment.version,
            "partitions": assignment.partitions.iter().map(|p| p.id()).collect::<Vec<_>>(),
        });
        if status != last {
            println!("{status}");
            last = status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === parent side ===

/// A child worker process and everything it printed.
struct Worker {
    child: Child,
    status: Arc<Mutex<Value>>,
    processed: Arc<Mutex<Vec<(String, Instant)>>>,
    leader_history: Arc<Mutex<Vec<(bool, Instant)>>>,
}

impl Worker {
    fn spawn(url: &str, config: &Config) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "child_worker",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PARTI_CHILD_URL", url)
            .env(
                "PARTI_CHILD_CONFIG",
                serde_json::to_string(config).expect("config"),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let status = Arc::new(Mutex::new(Value::Null));
        let processed = Arc::new(Mutex::new(Vec::new()));
        let leader_history = Arc::new(Mutex::new(Vec::new()));
        let (s, p, l) = (status.clone(), processed.clone(), leader_history.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(seq) = value.get("processed").and_then(Value::as_str) {
                    p.lock()
                        .expect("processed")
                        .push((seq.to_string(), Instant::now()));
                } else if value.get("worker").is_some() {
                    let leader = value["leader"].as_bool().unwrap_or(false);
                    l.lock().expect("leaders").push((leader, Instant::now()));
                    *s.lock().expect("status") = value;
                }
            }
        });
        Self {
            child,
            status,
            processed,
            leader_history,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal child");
    }

    fn status(&self) -> Value {
        self.status.lock().expect("status").clone()
    }

    fn worker_id(&self) -> String {
        self.status()["worker"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn is_leader(&self) -> bool {
        self.status()["leader"].as_bool().unwrap_or(false)
    }

    fn state(&self) -> String {
        self.status()["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn partitions(&self) -> Vec<String> {
        self.status()["partitions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every partition owned by exactly one of `workers`.
fn covered_once(workers: &[&Worker]) -> bool {
    let mut owners: BTreeMap<String, usize> = BTreeMap::new();
    for worker in workers {
        for partition in worker.partitions() {
            *owners.entry(partition).or_default() += 1;
        }
    }
    owners.len() == PARTITIONS && owners.values().all(|n| *n == 1)
}

async fn setup_stream(url: &str) -> jetstream::Context {
    let js = jetstream::new(connect(url).await);
    js.create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["proc.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    js
}

/// Default lease timings (heartbeat 2s / TTL 6s, grace 3s); short windows so the test
/// does not wait 30 s for the cold start.
fn default_timings() -> Config {
    Config {
        cold_start_window: Duration::from_secs(2),
        planned_scale_window: Duration::from_secs(1),
        min_rebalance_interval: Duration::from_secs(1),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_partitions_get_a_live_owner_within_bound() {
    init_tracing();
    let server = NatsServer::start();
    setup_stream(&server.url()).await;
    let config = default_timings();
    let workers: Vec<Worker> = (0..3)
        .map(|_| Worker::spawn(&server.url(), &config))
        .collect();
    let refs: Vec<&Worker> = workers.iter().collect();
    eventually("three workers share all partitions", LONG, || async {
        covered_once(&refs) && refs.iter().all(|w| !w.partitions().is_empty())
    })
    .await;
    // Kill a follower that owns partitions, so the measurement is the worker-crash path.
    let victim = workers
        .iter()
        .position(|w| !w.is_leader())
        .expect("a follower");
    workers[victim].signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    let survivors: Vec<&Worker> = workers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, w)| w)
        .collect();
    let bound = config.heartbeat_ttl + config.emergency_grace_period + Duration::from_secs(2);
    eventually(
        "survivors own every partition",
        bound + Duration::from_secs(20),
        || async { covered_once(&survivors) },
    )
    .await;
    let took = killed_at.elapsed();
    eprintln!("SIGKILL → every partition owned by a live worker in {took:?} (bound {bound:?})");
    assert!(took <= bound, "reassignment took {took:?}, bound {bound:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_is_fenced_and_steps_down() {
    init_tracing();
    let server = NatsServer::start();
    setup_stream(&server.url()).await;
    let config = Config::fast_for_tests();
    let workers: Vec<Worker> = (0..3)
        .map(|_| Worker::spawn(&server.url(), &config))
        .collect();
    let refs: Vec<&Worker> = workers.iter().collect();
    eventually("stable with one leader", LONG, || async {
        covered_once(&refs) && refs.iter().filter(|w| w.is_leader()).count() == 1
    })
    .await;
    let old = workers.iter().position(Worker::is_leader).expect("leader");
    let old_id = workers[old].worker_id();
    // Watch every assignment version and who wrote it.
    let client = connect(&server.url()).await;
    let kv = jetstream::new(client)
        .get_key_value("parti")
        .await
        .expect("bucket");
    let writers = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    let recorder = {
        let writers = writers.clone();
        let mut watch = kv.watch("assignment").await.expect("watch");
        tokio::spawn(async move {
            use futures::StreamExt;
            while let Some(Ok(entry)) = watch.next().await {
                let doc: Value = serde_json::from_slice(&entry.value).unwrap_or_default();
                let leader = doc["leader"].as_str().unwrap_or_default().to_string();
                writers
                    .lock()
                    .expect("writers")
                    .push((doc["version"].as_u64().unwrap_or(0), leader));
            }
        })
    };

    workers[old].signal(Signal::SIGSTOP);
    let others: Vec<&Worker> = workers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != old)
        .map(|(_, w)| w)
        .collect();
    eventually("a new leader among the others", LONG, || async {
        others.iter().any(|w| w.is_leader())
    })
    .await;
    let new_id = others
        .iter()
        .find(|w| w.is_leader())
        .expect("new leader")
        .worker_id();
    // Past the old leader's heartbeat lease too, so the new leader takes its partitions.
    eventually("the others own every partition", LONG, || async {
        covered_once(&others)
    })
    .await;
    let resumed_at = Instant::now();
    workers[old].signal(Signal::SIGCONT);
    eventually(
        "the old leader reports it is no longer leader",
        LONG,
        || async { !workers[old].is_leader() },
    )
    .await;
    // Give the resumed process time to misbehave, if it would.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acting_leaders = others.iter().filter(|w| w.is_leader()).count();
    assert_eq!(acting_leaders, 1, "exactly one leader after the pause");
    let writers = writers.lock().expect("writers").clone();
    recorder.abort();
    let first_new = writers
        .iter()
        .position(|(_, w)| *w == new_id)
        .expect("new leader published");
    assert!(
        writers[first_new..].iter().all(|(_, w)| *w != old_id),
        "deposed leader {old_id} published after {new_id}: {writers:?}"
    );
    // A paused process must not have processed anything after it resumed while fenced.
    let late: Vec<_> = workers[old]
        .processed
        .lock()
        .expect("processed")
        .iter()
        .filter(|(_, at)| *at > resumed_at)
        .cloned()
        .collect();
    let state = workers[old].state();
    assert!(
        state == "Fenced" || late.is_empty(),
        "resumed ex-leader processed {late:?} in state {state}"
    );
    let history = workers[old].leader_history.lock().expect("history").clone();
    assert!(
        history.iter().any(|(leader, _)| *leader),
        "it was leader before"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_paused_past_its_id_ttl_stops_and_never_shares_its_id() {
    init_tracing();
    let server = NatsServer::start();
    let js = setup_stream(&server.url()).await;
    let config = Config::fast_for_tests();
    let mut workers: Vec<Worker> = (0..3)
        .map(|_| Worker::spawn(&server.url(), &config))
        .collect();
    {
        let refs: Vec<&Worker> = workers.iter().collect();
        eventually("stable", LONG, || async {
            covered_once(&refs) && refs.iter().all(|w| !w.partitions().is_empty())
        })
        .await;
    }
    let paused = workers
        .iter()
        .position(|w| !w.is_leader())
        .expect("a follower");
    let paused_id = workers[paused].worker_id();
    workers[paused].signal(Signal::SIGSTOP);
    // Wait until the server has expired the paused worker's id lease (it cannot renew it),
    // then a new process must be able to take that id.
    let bucket = jetstream::new(connect(&server.url()).await)
        .get_key_value(&config.bucket)
        .await
        .expect("control bucket");
    let id_key = format!("id.{paused_id}");
    eventually(&format!("{id_key} expired while paused"), LONG, || async {
        bucket
            .entry(&id_key)
            .await
            .is_ok_and(|entry| entry.is_none_or(|e| e.operation != jetstream::kv::Operation::Put))
    })
    .await;
    workers.push(Worker::spawn(&server.url(), &config));
    let newcomer = workers.len() - 1;
    eventually(
        "the newcomer claims the paused worker's id",
        LONG,
        || async { workers[newcomer].worker_id() == paused_id },
    )
    .await;
    // Traffic on every partition while the paused one resumes.
    let resumed_at = Instant::now();
    workers[paused].signal(Signal::SIGCONT);
    for round in 0..5 {
        for p in 0..PARTITIONS {
            js.publish(format!("proc.{p}"), format!("{round}-{p}").into())
                .await
                .expect("publish")
                .await
                .expect("ack");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("the resumed worker reports Fenced", LONG, || async {
        workers[paused].state() == "Fenced"
    })
    .await;
    let late = workers[paused]
        .processed
        .lock()
        .expect("processed")
        .iter()
        .filter(|(_, at)| *at > resumed_at)
        .count();
    assert_eq!(
        late, 0,
        "the paused worker processed {late} messages after resuming"
    );
    let live: Vec<&Worker> = workers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != paused)
        .map(|(_, w)| w)
        .collect();
    let ids: BTreeSet<String> = live.iter().map(|w| w.worker_id()).collect();
    assert_eq!(ids.len(), live.len(), "live workers have distinct ids");
    eventually(
        "all 60 messages processed by live workers",
        LONG,
        || async {
            live.iter()
                .map(|w| w.processed.lock().expect("processed").len())
                .sum::<usize>()
                >= 60
        },
    )
    .await;
}
