//! Which process runs where, with which spec: deterministic for a seed.
//!
//! Producers and workers are spread round-robin over the agents sorted by id, so the same
//! seed and the same agents give the same placement.

use proto::v1::{
    PartitionEntry, PartitionMap, ProducerSpec, Spawn, TraceSpec, WorkerFaults, WorkerSpec, spawn,
};

use sim_core::config::Config;

/// (agent, process slot, spec) for every process of a run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    /// Producers.
    pub producers: Vec<(String, String, ProducerSpec)>,
    /// Workers.
    pub workers: Vec<(String, String, WorkerSpec)>,
}

/// One process: the agent that runs it and the command that starts it.
pub type PlacedSpawn = (String, Spawn);

impl Placement {
    /// The producers as spawn commands.
    pub fn producer_spawns(&self) -> Vec<PlacedSpawn> {
        let command = |(agent, process, spec): &(String, String, ProducerSpec)| {
            let spec = Some(spawn::Spec::Producer(spec.clone()));
            (
                agent.clone(),
                Spawn {
                    process: process.clone(),
                    spec,
                    // Stamped when sent (`run::spawn_for`).
                    run_id: String::new(),
                },
            )
        };
        self.producers.iter().map(command).collect()
    }

    /// The workers as spawn commands.
    pub fn worker_spawns(&self) -> Vec<PlacedSpawn> {
        let command = |(agent, process, spec): &(String, String, WorkerSpec)| {
            let spec = Some(spawn::Spec::Worker(spec.clone()));
            (
                agent.clone(),
                Spawn {
                    process: process.clone(),
                    spec,
                    // Stamped when sent (`run::spawn_for`).
                    run_id: String::new(),
                },
            )
        };
        self.workers.iter().map(command).collect()
    }
}

impl Placement {
    /// Every child's tracing (the run's `telemetry.traces`, resolved; `None`: off). Kept in
    /// the specs, so a respawned or added process traces like the first ones.
    pub fn trace_with(&mut self, trace: Option<&TraceSpec>) {
        for (_, _, spec) in &mut self.producers {
            spec.trace = trace.cloned();
        }
        for (_, _, spec) in &mut self.workers {
            spec.trace = trace.cloned();
        }
    }

    /// The initial partition map: partitions `0..count` with their weights and producers
    /// (a partition no producer publishes has producer "").
    pub fn partition_map(&self, count: u32) -> PartitionMap {
        let weights = self
            .workers
            .first()
            .map(|(_, _, spec)| spec.weights.clone())
            .unwrap_or_default();
        PartitionMap {
            version: 1,
            partitions: (0..count)
                .map(|id| PartitionEntry {
                    id,
                    weight: weights.get(id as usize).copied().unwrap_or(1),
                    producer: self
                        .producers
                        .iter()
                        .find(|(_, _, spec)| spec.partitions.contains(&id))
                        .map(|(_, _, spec)| spec.producer_id.clone())
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// Place `config`'s producers and workers on `agents` (sorted, non-empty).
pub fn place(config: &Config, seed: u64, agents: &[String], nats_url: &str) -> Placement {
    let weights = config.partition_weights(seed);
    let mut placement = Placement::default();
    for (index, partitions) in config.producer_partitions().into_iter().enumerate() {
        let agent = agents[index % agents.len()].clone();
        let variation = &config.producers.rate_variation;
        let spec = ProducerSpec {
            producer_id: format!("producer-{index}"),
            nats_url: nats_url.to_string(),
            stream: config.nats.stream.clone(),
            subject_prefix: config.nats.subject_prefix.clone(),
            weights: partitions
                .iter()
                .map(|p| weights.get(*p as usize).copied().unwrap_or(1))
                .collect(),
            partitions,
            rate_per_partition: config.partitions.message_rate_per_partition,
            rate_variation: variation.enabled,
            min_multiplier: variation.min_multiplier,
            max_multiplier: variation.max_multiplier,
            ramp_interval_ms: u64::try_from(variation.ramp_interval.as_millis())
                .unwrap_or(u64::MAX),
            unreported_tail: config.producers.faults.unreported_tail,
            // Set once the run has its id (`trace_with`).
            trace: None,
        };
        placement
            .producers
            .push((agent, format!("producer-{index}"), spec));
    }
    let workers = &config.workers;
    let strategy = &workers.strategy_config;
    let faults = &workers.faults;
    for index in 0..workers.count {
        let agent = agents[index as usize % agents.len()].clone();
        let process = format!("worker-{index}");
        let spec = WorkerSpec {
            nats_url: nats_url.to_string(),
            stream: config.nats.stream.clone(),
            subject_prefix: config.nats.subject_prefix.clone(),
            partition_count: config.partitions.count,
            weights: weights.clone(),
            strategy: workers.assignment_strategy.to_string(),
            virtual_nodes: strategy.virtual_nodes,
            overload_threshold: strategy.overload_threshold,
            extreme_threshold: strategy.extreme_threshold,
            hash_seed: strategy.hash_seed,
            processing_delay_min_us: u64::try_from(workers.processing_delay.min.as_micros())
                .unwrap_or(u64::MAX),
            processing_delay_max_us: u64::try_from(workers.processing_delay.max.as_micros())
                .unwrap_or(u64::MAX),
            identity_token: process.clone(),
            parti_config_json: parti_config_json(config),
            faults: Some(WorkerFaults {
                drop_and_ack_one_in: faults.drop_and_ack_one_in,
                process_after_revoke: faults.process_after_revoke,
                ack_then_crash_after: faults.ack_then_crash_after,
                go_style_handoff: faults.go_style_handoff,
                stalled_assignment_watch: faults.stalled_assignment_watch,
                startup_delay_ms: u64::try_from(faults.startup_delay.as_millis())
                    .unwrap_or(u64::MAX),
                leak_kib_per_message: faults.leak_kib_per_message,
                takeover_stall_ms: u64::try_from(faults.takeover_stall.as_millis())
                    .unwrap_or(u64::MAX),
            }),
            seed: seed ^ u64::from(index),
            // Set once the run has its id (`trace_with`).
            trace: None,
        };
        placement.workers.push((agent, process, spec));
    }
    placement
}

/// The parti configuration workers run with: parti's defaults (leases, heartbeats, grace),
/// with the join windows shortened so that a run of a few minutes settles in seconds rather
/// than after parti's 30 s cold-start window, and parti's control bucket replicated like the
/// run's stream (`nats.replicas`: whichever worker starts first creates it).
fn parti_config_json(config: &Config) -> String {
    let parti = parti::Config {
        cold_start_window: std::time::Duration::from_secs(5),
        planned_scale_window: std::time::Duration::from_secs(3),
        min_rebalance_interval: std::time::Duration::from_secs(2),
        worker_id_max: config.workers.count.saturating_mul(4).max(100),
        bucket_replicas: config.nats.replicas as usize,
        ..parti::Config::default()
    };
    serde_json::to_string(&parti).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realistic() -> Config {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/realistic.yaml");
        let text = std::fs::read_to_string(path).expect("configs/realistic.yaml");
        Config::from_yaml_str(&text).expect("valid config")
    }

    /// The same seed gives the same weights and the same placement (the run directory's
    /// `seed` file is enough to reproduce a run's set-up); another seed gives other weights.
    #[test]
    fn same_seed_same_weights_and_placement() {
        let config = realistic();
        let agents = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let first = place(&config, 42, &agents, "nats://x:4222");
        let again = place(&config, 42, &agents, "nats://x:4222");
        assert_eq!(first, again);
        assert_eq!(config.partition_weights(42), config.partition_weights(42));
        assert_ne!(config.partition_weights(42), config.partition_weights(43));
        assert_ne!(first, place(&config, 43, &agents, "nats://x:4222"));
        assert_eq!(
            first.partition_map(config.partitions.count),
            again.partition_map(config.partitions.count)
        );
    }

    #[test]
    fn parti_config_replicates_the_control_bucket_like_the_stream() {
        let config = Config::from_yaml_str(
            "simulation: {duration: 1m}\n\
             partitions: {count: 4, message_rate_per_partition: 1}\n\
             workers: {count: 2}\n\
             nats: {cluster_size: 3}\n",
        )
        .expect("config");
        let placement = place(&config, 7, &["a".into()], "nats://x:1,nats://y:2");
        for (_, _, spec) in &placement.workers {
            let parti: parti::Config =
                serde_json::from_str(&spec.parti_config_json).expect("parti config");
            assert_eq!(parti.bucket_replicas, 3);
            assert_eq!(spec.nats_url, "nats://x:1,nats://y:2");
        }
    }
}
