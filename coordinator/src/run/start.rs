//! Starting a run: placement, the run directory, the NATS state, the first spawns.

use tracing::{info, warn};

use super::clock::RunClock;
use super::state::RunState;
use super::{ActiveRun, Engine, Local, Phase, RunIo, StartError, now_us};
use crate::placement;
use sim_core::config::Config;
use sim_core::record::tracker_config;
use sim_core::rundir::{RunDir, RunDirError};
use sim_core::tracker::Tracker;

impl Engine {
    pub(super) async fn start(
        &mut self,
        mut config: Config,
        seed: u64,
    ) -> Result<String, StartError> {
        if let Some(run) = &self.run
            && run.state.phase != Phase::Finished
        {
            return Err(StartError::Busy(run.state.id.clone()));
        }
        let agents = self.registry.connected().await;
        if agents.is_empty() {
            return Err(StartError::Infrastructure("no agent is connected".into()));
        }
        resolve_telemetry(&mut config)?;
        self.open_metrics(&config.metrics.prometheus).await?;
        let nats_url = self
            .nats_url
            .clone()
            .unwrap_or_else(|| config.nats.url.clone());
        let sim_kv = crate::stream::prepare(&nats_url, &config)
            .await
            .map_err(|e| {
                StartError::Infrastructure(format!("preparing JetStream at {nats_url}: {e:#}"))
            })?;
        let mut placement = placement::place(&config, seed, &agents, &nats_url);
        let partition_map = placement.partition_map(config.partitions.count);
        crate::stream::publish_partition_map(&sim_kv, &partition_map)
            .await
            .map_err(|e| StartError::Infrastructure(format!("{e:#}")))?;
        // Two runs started in one second with one seed (two `simctl run`s side by side) get
        // the same id; the second takes the next free suffix.
        let base = format!("run-{}-{seed:x}", now_us() / 1_000_000);
        let mut attempt = 1;
        let (id, dir) = loop {
            let id = match attempt {
                1 => base.clone(),
                n => format!("{base}-{n}"),
            };
            let dir = RunDir::new(&self.runs_dir, &id, &config.checkpointing.path);
            match dir.create(&config.effective_yaml(), seed) {
                Ok(()) => break (id, dir),
                Err(RunDirError::Taken(_)) if attempt < 100 => attempt += 1,
                Err(e) => {
                    return Err(StartError::Infrastructure(format!(
                        "creating the run directory: {e}"
                    )));
                }
            }
        };
        placement.trace_with(trace_spec(&config, &id).as_ref());
        info!(run = %id, dir = %dir.root().display(), agents = agents.len(), producers = placement.producers.len(), workers = placement.workers.len(), "starting run");
        let state = RunState::new(
            id.clone(),
            config,
            seed,
            (placement, partition_map),
            nats_url.clone(),
        );
        let (first_wave, _) = state.worker_waves();
        let producers = state.placement.producer_spawns();
        self.report_tx.send_replace(None);
        self.registry
            .set_checkpointing(state.config.checkpointing.enabled);
        self.run = Some(ActiveRun {
            tracker: Tracker::new(tracker_config(&state.config), state.config.partitions.count),
            clock: RunClock::start(),
            io: RunIo {
                sim_kv,
                assignments: crate::assignment_log::watch(nats_url),
                dir,
                nats_cluster: self.open_nats_cluster(),
                traces: super::traces::start(&state.config, &id),
                metrics_push: super::metrics::start_push(&state.config, &id),
            },
            local: Local::new(self.registry.gaps().len()),
            state,
        });
        // Write-ahead: the run exists on disk before any process does, so a coordinator
        // killed from here on can be resumed.
        self.write_checkpoint("start").await;
        for (agent, spawn) in first_wave.into_iter().chain(producers) {
            if !self
                .registry
                .send(&agent, super::spawn_for(&id, spawn))
                .await
            {
                self.run = None;
                return Err(StartError::Infrastructure(format!(
                    "agent {agent} went away"
                )));
            }
        }
        // Visible before Start returns, so a watcher never sees the previous phase.
        self.publish_status();
        Ok(id)
    }
}

/// Fill the run's tracing and metric-push settings from this coordinator's environment
/// where the config leaves them out (the config wins); the run directory records the result.
pub(super) fn resolve_telemetry(config: &mut Config) -> Result<(), StartError> {
    let env = |name: &str| std::env::var(name).ok();
    let telemetry = &mut config.telemetry;
    telemetry
        .traces
        .resolve(env)
        .and_then(|()| telemetry.metrics.resolve(env))
        .map_err(|e| StartError::Config(e.to_string()))
}

/// What the run's children are told about tracing (`None`: traces off).
pub(super) fn trace_spec(config: &Config, run_id: &str) -> Option<proto::v1::TraceSpec> {
    let traces = &config.telemetry.traces;
    traces.enabled.then(|| {
        let (endpoint, sample_ratio) = traces.effective();
        proto::v1::TraceSpec {
            endpoint: endpoint.to_string(),
            sample_ratio,
            run_id: run_id.to_string(),
        }
    })
}

impl Engine {
    /// The managed NATS cluster the daemon was pointed at, if any (a cluster that cannot be
    /// opened is logged: its `nats_server_kill` faults are then skipped, saying why).
    pub(super) fn open_nats_cluster(&self) -> Option<nats_cluster::NatsCluster> {
        let dir = self.nats_cluster_dir.as_ref()?;
        match nats_cluster::NatsCluster::open(dir) {
            Ok(cluster) => Some(cluster),
            Err(error) => {
                warn!(%error, "managed NATS cluster not usable");
                None
            }
        }
    }
}
