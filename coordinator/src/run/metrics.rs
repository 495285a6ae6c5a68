//! The run as Prometheus metrics: rendered from the tracker, the run state and the fault
//! records when a scrape asks (see [`crate::metrics`]). docs/OBSERVABILITY.md lists every
//! family and what it counts.
//!
//! Counters restart from zero with each run (Prometheus's `rate` and `increase` treat that
//! as a reset); `simulation_run_info` names the run the numbers belong to.

use tokio::time::Instant;

use sim_core::chaos::FaultRecord;
use sim_core::config::{ChaosEvent, Config, PrometheusConfig};
use sim_core::resources::Usage;
use tracing::{info, warn};

use super::{ActiveRun, Engine, StartError, clock, now_us};
use crate::metrics::Endpoint;
use crate::metrics::exposition::{Buckets, Exposition, Kind};
use crate::metrics::otlp::Pusher;

/// Bounds (seconds) of the processing-duration histogram: a simulated handler takes
/// microseconds to (with a configured processing delay) seconds.
pub(super) const PROCESSING_BOUNDS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
];

/// Bounds (seconds) of publish→processed latency: milliseconds when healthy, up to the
/// validation window's tens of seconds when a fault holds messages back.
static LATENCY_BOUNDS: [f64; 14] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bounds (seconds) of a fault's recovery (rebalance) and catch-up times.
static RECOVERY_BOUNDS: [f64; 12] = [
    0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
];

impl Engine {
    /// Open, keep, move or close the `/metrics` endpoint as a starting (or resumed) run's
    /// config asks, before anything of the run exists: a port that cannot be bound refuses
    /// the run rather than leaving an accepted setting doing nothing.
    pub(super) async fn open_metrics(
        &mut self,
        config: &PrometheusConfig,
    ) -> Result<(), StartError> {
        if !config.enabled {
            self.metrics = None;
            return Ok(());
        }
        if self
            .metrics
            .as_ref()
            .is_some_and(|endpoint| endpoint.serves(config.port))
        {
            return Ok(());
        }
        // The old port is given back first: a run may move the endpoint to it again.
        self.metrics = None;
        let endpoint = Endpoint::bind(config.port).await.map_err(|error| {
            StartError::Infrastructure(format!(
                "metrics.prometheus.port {}: cannot listen: {error}",
                config.port
            ))
        })?;
        info!(addr = %endpoint.addr(), "serving metrics at /metrics");
        self.metrics = Some(endpoint);
        Ok(())
    }

    /// The text of a scrape: the current run's metrics, or only the endpoint's liveness when
    /// no run has started since the daemon began.
    pub(super) fn render_metrics(&self) -> String {
        self.run.as_ref().map(exposition).unwrap_or_default().text()
    }
}

/// The run's metric pusher, when its config pushes (`telemetry.metrics`). Its cumulative
/// series start now, also in a resumed run: the books restart from the checkpoint (below
/// what the previous coordinator process may have pushed) and the processing histogram from
/// zero, and a new start time is how OTLP says a cumulative series was reset.
pub(super) fn start_push(config: &Config, run_id: &str) -> Option<Pusher> {
    let pushed = &config.telemetry.metrics;
    if !pushed.enabled {
        return None;
    }
    let (endpoint, interval) = pushed.effective();
    match Pusher::start(endpoint, interval, run_id) {
        Ok(pusher) => Some(pusher),
        Err(error) => {
            warn!(%error, "metrics not pushed for this run");
            None
        }
    }
}

/// Push the run's metrics when a push is due.
pub(super) fn push(run: &mut ActiveRun, now: Instant) {
    if run.io.metrics_push.as_ref().is_some_and(|p| p.due(now)) {
        let metrics = exposition(run);
        if let Some(pusher) = run.io.metrics_push.as_mut() {
            pusher.offer(metrics, now);
        }
    }
}

/// Push the finished run's final values, waiting until the collector has them (or could
/// not take them).
pub(super) async fn finish_push(run: &mut ActiveRun) {
    if run.io.metrics_push.is_none() {
        return;
    }
    let metrics = exposition(run);
    if let Some(pusher) = run.io.metrics_push.as_mut() {
        let stats = pusher.flush(metrics).await;
        info!(run = %run.state.id, ?stats, "metrics pushed");
    }
}

/// Every family of the run, at this moment.
fn exposition(run: &ActiveRun) -> Exposition {
    let mut e = Exposition::new();
    render(run, &mut e);
    e
}

fn render(run: &ActiveRun, e: &mut Exposition) {
    let state = &run.state;
    let s = run.tracker.snapshot(now_us());
    e.family(
        "simulation_run_info",
        Kind::Gauge,
        "The run these numbers belong to (always 1).",
    )
    .sample(&[("run_id", &state.id), ("phase", state.phase.name())], 1.0);
    e.family(
        "simulation_run_elapsed_seconds",
        Kind::Gauge,
        "Run time since the run started (stops at the finish).",
    )
    .sample(&[], clock::millis(run.clock.shown()) as f64 / 1e3);
    e.family(
        "simulation_run_duration_seconds",
        Kind::Gauge,
        "How long the run publishes (the configured duration).",
    )
    .sample(&[], state.duration().as_secs_f64());

    let counters: [(&'static str, &str, u64); 11] = [
        (
            "simulation_messages_sent_total",
            "Distinct messages confirmed sent (PubAck).",
            s.sent,
        ),
        (
            "simulation_messages_received_total",
            "Distinct messages processed at least once.",
            s.received,
        ),
        (
            "simulation_message_gaps_total",
            "Messages ever declared lost (still lost, or processed late since).",
            s.lost + s.late,
        ),
        (
            "simulation_messages_late_total",
            "Messages processed after they had been declared lost.",
            s.late,
        ),
        (
            "simulation_messages_excused_total",
            "Messages missing when their partition was removed (not loss).",
            s.excused,
        ),
        (
            "simulation_ownership_overlaps_total",
            "Processed reports overlapping another worker's activity on the same partition.",
            s.ownership_overlaps,
        ),
        (
            "simulation_order_violations_total",
            "Messages first processed below their partition's highest processed seq.",
            s.order_violations,
        ),
        (
            "simulation_messages_malformed_total",
            "Bodies on partition subjects that are not simulation messages.",
            s.malformed,
        ),
        (
            "simulation_reports_rejected_total",
            "Worker reports refused as invalid.",
            s.rejected,
        ),
        (
            "simulation_partition_moves_total",
            "Partitions that changed owner in parti's assignment document.",
            state.assignment_log.moves,
        ),
        (
            "simulation_leaders_seen_total",
            "Distinct parti leaders seen.",
            state.assignment_log.leaders.len() as u64,
        ),
    ];
    for (name, help, value) in counters {
        e.family(name, Kind::Counter, help)
            .sample(&[], value as f64);
    }
    e.family(
        "simulation_message_duplicates_total",
        Kind::Counter,
        "Messages processed again, by class: a redelivery, or concurrent with another worker.",
    )
    .sample(&[("class", "redelivery")], s.duplicates_redelivery as f64)
    .sample(&[("class", "concurrent")], s.duplicates_concurrent as f64);
    let processed: u64 = s.workers.iter().map(|w| w.processed).sum();
    e.family(
        "simulation_messages_processed_total",
        Kind::Counter,
        "Processed reports, duplicates included: the work the workers did.",
    )
    .sample(&[], processed as f64);

    let alive: Vec<_> = state.workers.values().filter(|w| w.alive).collect();
    let gauges: [(&'static str, &str, u64); 7] = [
        (
            "simulation_messages_in_flight",
            "Confirmed sent, not yet processed, not written off.",
            s.in_flight,
        ),
        (
            "simulation_messages_missing",
            "Known to exist, not processed, not written off (in flight, or known only through a higher seq).",
            s.missing,
        ),
        (
            "simulation_messages_lost",
            "Messages currently counted as lost.",
            s.lost,
        ),
        (
            "simulation_workers_active",
            "Worker processes alive.",
            alive.len() as u64,
        ),
        (
            "simulation_producers_active",
            "Producer processes alive.",
            state.producers_alive.values().filter(|a| **a).count() as u64,
        ),
        (
            "simulation_partitions_active",
            "Partitions tracked for loss.",
            u64::from(s.partitions_active),
        ),
        (
            "simulation_assignment_version",
            "Assignment document versions seen.",
            state.assignment_log.versions,
        ),
    ];
    for (name, help, value) in gauges {
        e.family(name, Kind::Gauge, help).sample(&[], value as f64);
    }
    let per_worker = e.family(
        "simulation_partitions_per_worker",
        Kind::Gauge,
        "Partitions each live worker last said it owns.",
    );
    for worker in &alive {
        per_worker.sample(
            &[("worker", &worker.worker_id)],
            worker.partitions.len() as f64,
        );
    }
    let leader = e.family(
        "simulation_worker_leader",
        Kind::Gauge,
        "1 for the live worker that last said it leads.",
    );
    for worker in alive.iter().filter(|w| w.leader) {
        leader.sample(&[("worker", &worker.worker_id)], 1.0);
    }

    let bounds_us = LATENCY_BOUNDS.map(|s| (s * 1e6) as u64);
    let (counts, sum_us) = run.tracker.latency_buckets(&bounds_us);
    e.family(
        "simulation_message_latency_seconds",
        Kind::Histogram,
        "Publish to processed, first processing of each message (clock-corrected).",
    )
    .histogram(
        &[],
        &Buckets::from_counts(&LATENCY_BOUNDS, counts, sum_us / 1e6),
    );
    e.family(
        "simulation_message_processing_duration_seconds",
        Kind::Histogram,
        "Received to processed in the worker, every valid processed report (since this coordinator process took the run).",
    )
    .histogram(&[], &run.local.processing);

    render_partitions(run, e);
    render_faults(state, e);
    render_resources(run, e);
}

/// Per-partition series for the lowest `metrics.partition_series` partition ids, and how
/// many partitions were left out (the cardinality cap).
fn render_partitions(run: &ActiveRun, e: &mut Exposition) {
    let limit = run.state.config.metrics.partition_series;
    let (shown, left_out) = run.tracker.partition_progress(limit);
    type Pick = fn(&sim_core::tracker::PartitionProgress) -> u64;
    let families: [(&'static str, &str, Pick); 4] = [
        (
            "simulation_partition_known_seq",
            "Highest sequence number known to exist on the partition (sent, or processed).",
            |p| p.known_seq,
        ),
        (
            "simulation_partition_processed_seq",
            "Highest sequence number processed on the partition.",
            |p| p.processed_seq,
        ),
        (
            "simulation_partition_missing",
            "Messages of the partition known to exist, not processed, not written off.",
            |p| p.missing,
        ),
        (
            "simulation_partition_lost",
            "Messages of the partition currently counted as lost.",
            |p| p.lost,
        ),
    ];
    let labels: Vec<String> = shown.iter().map(|p| p.partition.to_string()).collect();
    for (name, help, pick) in families {
        let family = e.family(name, Kind::Gauge, help);
        for (progress, label) in shown.iter().zip(&labels) {
            family.sample(&[("partition", label)], pick(progress) as f64);
        }
    }
    e.family(
        "simulation_partition_series_omitted",
        Kind::Gauge,
        "Active partitions without per-partition series (past metrics.partition_series).",
    )
    .sample(&[], f64::from(left_out));
}

/// Chaos events and recoveries, by fault type: every configured type from the start (a
/// series that appears at 1 has no change for `changes()` or `increase()` to see).
fn render_faults(state: &super::state::RunState, e: &mut Exposition) {
    let records = &state.faults.records;
    let mut kinds: Vec<ChaosEvent> = records.iter().map(|r| r.event).collect();
    kinds.extend(state.config.chaos.events.iter().copied());
    kinds.sort_unstable_by_key(|kind| kind.as_str());
    kinds.dedup();
    let injected = |kind: ChaosEvent| {
        records
            .iter()
            .filter(move |r| r.event == kind && r.outcome.is_injected())
    };
    // Counters only go up: a fault withdrawn after its injection (its signal not delivered,
    // its agent gone) stays in the first and is counted in the second, so the report's count
    // is their difference.
    let attempted = |kind: ChaosEvent| {
        let counted = state
            .faults
            .injected_by_type
            .get(&kind)
            .copied()
            .unwrap_or(0);
        counted.max(injected(kind).count() as u64)
    };
    let events = e.family(
        "simulation_chaos_events_total",
        Kind::Counter,
        "Faults injected, by type (including any withdrawn afterwards).",
    );
    for kind in &kinds {
        events.sample(&[("type", kind.as_str())], attempted(*kind) as f64);
    }
    let withdrawn = e.family(
        "simulation_chaos_withdrawn_total",
        Kind::Counter,
        "Faults injected but found afterwards not to have taken effect, by type.",
    );
    for kind in &kinds {
        let gone = attempted(*kind).saturating_sub(injected(*kind).count() as u64);
        withdrawn.sample(&[("type", kind.as_str())], gone as f64);
    }
    let skipped = e.family(
        "simulation_chaos_not_injected_total",
        Kind::Counter,
        "Faults planned but skipped, refused by the agent, or withdrawn, by type.",
    );
    for kind in &kinds {
        let not = records
            .iter()
            .filter(|r| r.event == *kind && !r.outcome.is_injected())
            .count();
        skipped.sample(&[("type", kind.as_str())], not as f64);
    }
    type Pick = fn(&FaultRecord) -> Option<f64>;
    let histograms: [(&'static str, &str, Pick); 2] = [
        (
            "simulation_rebalancing_duration_seconds",
            "Per fault: until every partition had a live owner and messages flowed again (network faults: from the heal).",
            |r| r.rebalance_s,
        ),
        (
            "simulation_catch_up_duration_seconds",
            "Per fault: from the recovery until the partitions it moved had worked off their backlog.",
            |r| r.catch_up_s,
        ),
    ];
    for (name, help, pick) in histograms {
        let family = e.family(name, Kind::Histogram, help);
        for kind in &kinds {
            let mut buckets = Buckets::new(&RECOVERY_BOUNDS);
            for seconds in injected(*kind).filter_map(pick) {
                buckets.record(seconds);
            }
            family.histogram(&[("type", kind.as_str())], &buckets);
        }
    }
}

/// The newest resource sample of every process (workers, producers, agents, coordinator).
fn render_resources(run: &ActiveRun, e: &mut Exposition) {
    type Read = fn(&Usage) -> f64;
    let families: [(&'static str, &str, Read); 3] = [
        (
            "simulation_process_resident_memory_bytes",
            "Resident set size, newest sample.",
            |u| u.rss_bytes as f64,
        ),
        (
            "simulation_process_open_fds",
            "Open file descriptors, newest sample.",
            |u| f64::from(u.fds),
        ),
        (
            "simulation_process_threads",
            "Threads, newest sample.",
            |u| f64::from(u.threads),
        ),
    ];
    let processes = run.state.resources.processes();
    for (name, help, read) in families {
        let family = e.family(name, Kind::Gauge, help);
        for p in &processes {
            let role = if p.harness { "harness" } else { "under_test" };
            if let Some(last) = &p.last {
                family.sample(&[("process", &p.process), ("role", role)], read(last));
            }
        }
    }
}
