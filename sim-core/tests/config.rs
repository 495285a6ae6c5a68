//! The run configuration: the shipped configs load, the effective dump round-trips, every
//! file in `config_corpus/` fails with the field path and message it announces, and the
//! derived weights and producer ranges are right and deterministic.
//!
//! A corpus file starts with two comment lines:
//! `# expect-path: workers.count` and `# expect-message: <fragment of the message>`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sim_core::config::{
    AssignmentStrategy, ChaosEvent, Config, ConfigError, Distribution, Interval, NatsMode,
    SimulationMode, format_duration, parse_duration,
};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[track_caller]
fn load(name: &str) -> Config {
    let path = configs_dir().join(name);
    Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The smallest valid config, plus `extra` sections.
#[track_caller]
fn minimal(extra: &str) -> Config {
    let text = format!(
        "simulation: {{duration: 10m}}\n\
         partitions: {{count: 10, message_rate_per_partition: 1}}\n\
         workers: {{count: 2}}\n{extra}"
    );
    Config::from_yaml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

// === shipped configs ===

#[test]
fn every_shipped_config_loads_and_round_trips() {
    let files = yaml_files(&configs_dir());
    let names: Vec<_> = files
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    for required in [
        "dev.yaml",
        "realistic.yaml",
        "stress.yaml",
        "extreme.yaml",
        "quick.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "configs/{required} missing"
        );
    }
    for path in files {
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let dump = config.effective_yaml();
        let again = Config::from_yaml_str(&dump)
            .unwrap_or_else(|e| panic!("{}: dump does not reload: {e}\n{dump}", path.display()));
        assert_eq!(
            again,
            config,
            "{}: round trip changed the config",
            path.display()
        );
        assert_eq!(
            again.effective_yaml(),
            dump,
            "{}: dump is not stable",
            path.display()
        );
    }
}

#[test]
fn dev_config_reads_as_the_plan_says() {
    let c = load("dev.yaml");
    assert_eq!(c.simulation.duration, Duration::from_secs(3600));
    assert_eq!(c.simulation.mode, SimulationMode::AllInOne);
    assert_eq!(c.simulation.seed, None);
    assert_eq!(c.partitions.count, 100);
    assert_eq!(c.partitions.message_rate_per_partition, 0.1);
    assert_eq!(c.partitions.distribution, Distribution::Uniform);
    assert_eq!((c.producers.count, c.partitions_per_producer()), (10, 10));
    assert!(!c.producers.rate_variation.enabled);
    assert_eq!(c.workers.count, 10);
    assert_eq!(
        c.workers.assignment_strategy,
        AssignmentStrategy::ConsistentHash
    );
    assert_eq!(c.workers.processing_delay.min, Duration::from_millis(10));
    assert_eq!(c.workers.processing_delay.max, Duration::from_millis(50));
    assert_eq!(c.coordinator.validation_window, Duration::from_secs(300));
    assert!(!c.chaos.enabled);
    assert_eq!(c.nats.mode, NatsMode::Embedded);
    assert_eq!(c.nats.url, "nats://localhost:4222");
    assert!(c.metrics.prometheus.enabled);
    assert_eq!(c.metrics.prometheus.port, 9090);
    assert!(!c.checkpointing.enabled);
}

#[test]
fn realistic_config_reads_as_the_plan_says() {
    let c = load("realistic.yaml");
    assert_eq!(c.simulation.duration, Duration::from_secs(12 * 3600));
    assert_eq!(c.partitions.distribution, Distribution::Exponential);
    let weights = &c.partitions.weights.exponential;
    assert_eq!(
        (
            weights.extreme_percent,
            weights.extreme_weight,
            weights.normal_weight
        ),
        (0.05, 100, 1)
    );
    let variation = &c.producers.rate_variation;
    assert!(variation.enabled);
    assert_eq!(
        (variation.min_multiplier, variation.max_multiplier),
        (0.5, 2.0)
    );
    assert_eq!(variation.ramp_interval, Duration::from_secs(300));
    let strategy = &c.workers.strategy_config;
    assert_eq!(strategy.virtual_nodes, 150);
    assert_eq!(
        (strategy.overload_threshold, strategy.extreme_threshold),
        (1.3, 2.0)
    );
    assert!(c.chaos.enabled);
    assert_eq!(c.chaos.events, ChaosEvent::ALL[..8].to_vec());
    let minutes = |m: u64| Duration::from_secs(60 * m);
    assert_eq!(
        c.chaos.interval,
        Some(Interval::new(minutes(10), minutes(30)))
    );
    assert_eq!(c.nats.jetstream.max_memory.bytes(), 10 << 30);
    assert_eq!(c.nats.jetstream.max_file_storage.bytes(), 50 << 30);
    assert!(c.checkpointing.enabled);
    assert_eq!(c.checkpointing.interval, minutes(30));
    assert_eq!(c.checkpointing.path, PathBuf::from("./checkpoints"));
    // Extensions take their defaults.
    assert_eq!(c.coordinator.drain_timeout, Duration::from_secs(120));
    assert_eq!(c.coordinator.rebalance_timeout, Duration::from_secs(60));
    assert_eq!(c.coordinator.stall_timeout, Duration::from_secs(30));
    assert!(!c.coordinator.strict_duplicates);
    assert_eq!(c.nats.stream, "SIMULATION");
    assert_eq!(c.nats.subject_prefix, "simulation.partition");
    assert_eq!(c.workers.faults, Default::default());
}

#[test]
fn stress_extreme_and_quick_have_their_rates() {
    let total =
        |c: &Config| f64::from(c.partitions.count) * c.partitions.message_rate_per_partition;
    assert!((total(&load("stress.yaml")) - 100.5).abs() < 1e-9);
    assert!((total(&load("extreme.yaml")) - 1500.0).abs() < 1e-9);
    let quick = load("quick.yaml");
    assert!((total(&quick) - 80.0).abs() < 1e-9);
    // About a minute: traffic plus the drain that follows it.
    let run = quick.simulation.duration + quick.coordinator.drain_timeout;
    assert!(run <= Duration::from_secs(75), "quick run takes {run:?}");
    assert!(!quick.chaos.enabled && !quick.checkpointing.enabled);
    assert!(!quick.metrics.prometheus.enabled);
}

// === the bad-config corpus ===

/// Reads the `# expect-path:` and `# expect-message:` header of a corpus file.
fn expectation(path: &Path, text: &str) -> (String, String) {
    let header = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("# expect-{key}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("{}: no `# expect-{key}:` line", path.display()))
    };
    (header("path"), header("message"))
}

#[test]
fn every_corpus_config_fails_with_its_path_and_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config_corpus");
    let files = yaml_files(&dir);
    assert!(
        files.len() >= 40,
        "corpus unexpectedly small: {}",
        files.len()
    );
    let mut failures = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("corpus file is readable");
        let (want_path, want_message) = expectation(&path, &text);
        assert!(
            !want_message.is_empty(),
            "{}: empty expect-message",
            path.display()
        );
        match Config::from_yaml_str(&text) {
            Ok(_) => failures.push(format!("{}: loaded, expected an error", path.display())),
            Err(ConfigError {
                path: got_path,
                message,
            }) => {
                if got_path != want_path || !message.contains(&want_message) {
                    failures.push(format!(
                        "{}:\n  want {want_path}: …{want_message}…\n  got  {got_path}: {message}",
                        path.display()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn error_display_is_path_then_message() {
    let err = Config::from_yaml_str(
        "simulation: {duration: 10m}\n\
         partitions: {count: 10, message_rate_per_partition: 1}\n\
         workers: {count: 2, processing_delay: {min: 5q}}\n",
    )
    .expect_err("bad duration");
    assert_eq!(err.path, "workers.processing_delay.min");
    let shown = err.to_string();
    assert!(
        shown.starts_with("workers.processing_delay.min: invalid duration \"5q\""),
        "{shown}"
    );
}

#[test]
fn validation_errors_lists_every_problem() {
    let mut config = minimal("");
    config.partitions.count = 0;
    config.workers.count = 0;
    config.chaos.enabled = true;
    let paths: Vec<String> = config
        .validation_errors()
        .into_iter()
        .map(|e| e.path)
        .collect();
    for want in [
        "partitions.count",
        "workers.count",
        "chaos.events",
        "chaos.interval",
    ] {
        assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
    }
    assert_eq!(
        config.validate().map_err(|e| e.path),
        Err("partitions.count".to_owned())
    );
}

#[test]
fn unreadable_file_names_the_file() {
    let err = Config::load("/nonexistent/run.yaml").expect_err("no such file");
    assert_eq!(err.path, "/nonexistent/run.yaml");
    assert!(err.message.contains("cannot read config"), "{err}");
}

// === defaults and the effective dump ===

#[test]
fn effective_yaml_fills_every_default() {
    let config = minimal("");
    let dump = config.effective_yaml();
    for line in [
        "partitions_per_producer: 10",
        "drain_timeout: 2m",
        "drain_settle: 0s",
        "url: nats://localhost:4222",
        "stream: SIMULATION",
        "assignment_strategy: WeightedConsistentHash",
        "max_memory: 1GB",
        "overload_threshold: 1.3",
        "drop_and_ack_one_in: 0",
        "seed: null",
    ] {
        assert!(dump.contains(line), "{line:?} not in dump:\n{dump}");
    }
    assert_eq!(Config::from_yaml_str(&dump), Ok(config));
}

#[test]
fn fully_specified_config_round_trips() {
    let text = "\
simulation: {duration: 1h30m, mode: coordinator, seed: 12345}
partitions:
  count: 300
  message_rate_per_partition: 0.25
  distribution: exponential
  weights: {exponential: {extreme_percent: 0.1, extreme_weight: 50, normal_weight: 2}}
producers:
  count: 4
  partitions_per_producer: 80
  rate_variation: {enabled: true, pattern: global, min_multiplier: 0.25, max_multiplier: 4, ramp_interval: 90s}
workers:
  count: 7
  assignment_strategy: RoundRobin
  strategy_config: {virtual_nodes: 64, overload_threshold: 1.15, extreme_threshold: 1.5, hash_seed: 99}
  processing_delay: {min: 250us, max: 1s500ms}
  faults: {drop_and_ack_one_in: 1000, process_after_revoke: true, ack_then_crash_after: 50}
coordinator:
  validation_window: 45s
  strict_duplicates: true
  rebalance_timeout: 20s
  stall_timeout: 10s
  drain_timeout: 3m
  drain_settle: 10s
chaos:
  enabled: true
  events: [worker_pause, leader_pause, network_degrade, nats_server_kill]
  interval: 30s-60s
nats:
  mode: external
  url: tls://a:4222,nats://b:4222
  stream: SIM2
  subject_prefix: sim.p
  jetstream: {max_memory: 512MB, max_file_storage: 2TB}
metrics: {prometheus: {enabled: true, port: 9100}}
checkpointing: {enabled: true, interval: 1m, path: /var/lib/parti-sim}
";
    let config = Config::from_yaml_str(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.simulation.seed, Some(12345));
    assert_eq!(
        config.workers.processing_delay.max,
        Duration::from_millis(1500)
    );
    assert_eq!(config.coordinator.drain_timeout, Duration::from_secs(180));
    assert_eq!(
        config.producer_partitions()[3],
        (240..300).collect::<Vec<u32>>()
    );
    let dump = config.effective_yaml();
    assert_eq!(Config::from_yaml_str(&dump), Ok(config), "dump:\n{dump}");
}

#[test]
fn derived_defaults_follow_their_fields() {
    // drain_timeout: the validation window, capped at 2m.
    let short = minimal("coordinator: {validation_window: 15s}");
    assert_eq!(short.coordinator.drain_timeout, Duration::from_secs(15));
    let long = minimal("coordinator: {validation_window: 10m}");
    assert_eq!(long.coordinator.drain_timeout, Duration::from_secs(120));
    // partitions_per_producer: ⌈partitions / producers⌉.
    let three = minimal("producers: {count: 3}");
    assert_eq!(three.producers.partitions_per_producer, Some(4));
}

#[test]
fn resolve_seed_pins_the_seed_into_the_dump() {
    let mut config = minimal("");
    let seed = config.resolve_seed();
    assert_eq!(config.simulation.seed, Some(seed));
    assert_eq!(
        config.resolve_seed(),
        seed,
        "resolving twice keeps the seed"
    );
    let again = Config::from_yaml_str(&config.effective_yaml()).expect("dump reloads");
    assert_eq!(again.simulation.seed, Some(seed));
    let mut fixed = minimal("");
    fixed.simulation.seed = Some(7);
    assert_eq!(fixed.resolve_seed(), 7);
}

// === weights and producer ranges ===

#[test]
fn realistic_weights_put_84_percent_on_75_extremes() {
    let config = load("realistic.yaml");
    let weights = config.partition_weights(1);
    assert_eq!(weights.len(), 1500);
    assert_eq!(config.extreme_partition_count(), 75);
    assert_eq!(weights.iter().filter(|w| **w == 100).count(), 75);
    assert_eq!(weights.iter().filter(|w| **w == 1).count(), 1425);
    let total: i64 = weights.iter().sum();
    let share = 75.0 * 100.0 / total as f64;
    // 7500 / (7500 + 1425) = 84.03 %.
    assert_eq!(total, 8925);
    assert!((share - 0.8403).abs() < 0.0001, "extreme share {share}");
}

#[test]
fn weights_are_deterministic_per_seed() {
    let config = load("realistic.yaml");
    let a = config.partition_weights(42);
    assert_eq!(a, config.partition_weights(42), "same seed, same weights");
    assert_ne!(
        a,
        config.partition_weights(43),
        "different seed, different extremes"
    );
    // Not clustered at the front: the choice is spread over the partitions.
    let extremes: Vec<usize> = (0..a.len()).filter(|i| a[*i] == 100).collect();
    assert!(extremes.first().is_some_and(|&i| i < 300), "{extremes:?}");
    assert!(extremes.last().is_some_and(|&i| i > 1200), "{extremes:?}");
}

#[test]
fn uniform_weights_are_all_one_and_quick_has_two_extremes() {
    assert!(
        load("dev.yaml")
            .partition_weights(5)
            .iter()
            .all(|w| *w == 1)
    );
    let quick = load("quick.yaml").partition_weights(5);
    assert_eq!(quick.iter().filter(|w| **w == 10).count(), 2);
    assert_eq!(quick.iter().filter(|w| **w == 1).count(), 14);
}

#[test]
fn producer_ranges_are_contiguous_and_cover_everything() {
    let realistic = load("realistic.yaml").producer_partitions();
    assert_eq!(realistic.len(), 10);
    for (i, range) in realistic.iter().enumerate() {
        let start = i as u32 * 150;
        assert_eq!(*range, (start..start + 150).collect::<Vec<u32>>());
    }
    // Larger than needed: the last producer gets fewer.
    let uneven = minimal("producers: {count: 3, partitions_per_producer: 4}");
    assert_eq!(
        uneven.producer_partitions(),
        vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
    );
    // Absent: ⌈10/3⌉ = 4, the same split.
    let default = minimal("producers: {count: 3}");
    assert_eq!(default.producer_partitions(), uneven.producer_partitions());
}

#[test]
fn chaos_interval_samples_reproducibly() {
    let interval = load("realistic.yaml")
        .chaos
        .interval
        .expect("realistic has an interval");
    let schedule = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..50)
            .map(|_| interval.sample(&mut rng))
            .collect::<Vec<_>>()
    };
    let a = schedule(9);
    assert_eq!(a, schedule(9));
    assert_ne!(a, schedule(10));
    assert!(a.iter().all(|d| (interval.min..=interval.max).contains(d)));
}

// === human formats ===

#[test]
fn plan_durations_and_intervals_parse() {
    assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
    let m = |n: u64| Duration::from_secs(60 * n);
    for text in ["10-30m", "10m-30m"] {
        assert_eq!(
            text.parse::<Interval>(),
            Ok(Interval::new(m(10), m(30))),
            "{text}"
        );
    }
    assert_eq!(
        "30s-60s".parse::<Interval>(),
        Ok(Interval::new(Duration::from_secs(30), m(1)))
    );
}

proptest! {
    #[test]
    fn any_duration_formats_and_parses_back(nanos in 0u64..u64::MAX) {
        let value = Duration::from_nanos(nanos);
        prop_assert_eq!(parse_duration(&format_duration(value)), Ok(value));
    }

    #[test]
    fn any_interval_displays_and_parses_back(a in 0u64..10_000_000, b in 0u64..10_000_000) {
        let interval = Interval::new(Duration::from_millis(a.min(b)), Duration::from_millis(a.max(b)));
        prop_assert_eq!(interval.to_string().parse::<Interval>(), Ok(interval));
    }
}

#[test]
fn telemetry_settings_are_checked_by_field() {
    let base = "simulation: {duration: 10m}\n\
                partitions: {count: 10, message_rate_per_partition: 1}\n\
                workers: {count: 2}\n";
    for (telemetry, path, says) in [
        (
            "{traces: {enabled: true, endpoint: 'http://10.0.0.5:4317'}}",
            "telemetry.traces.endpoint",
            "not on loopback",
        ),
        (
            "{traces: {enabled: true, endpoint: 'https://127.0.0.1:4317'}}",
            "telemetry.traces.endpoint",
            "TLS",
        ),
        (
            "{traces: {sample_ratio: 1.5}}",
            "telemetry.traces.sample_ratio",
            "from 0 to 1",
        ),
        ("{tempo_url: 'grafana:3000'}", "telemetry.tempo_url", "http"),
        ("{metrics: true}", "telemetry.metrics", "expected a mapping"),
        (
            "{metrics: {enabled: true, endpoint: 'http://10.0.0.5:4317'}}",
            "telemetry.metrics.endpoint",
            "telemetry.metrics.insecure",
        ),
        (
            "{metrics: {interval: 200ms}}",
            "telemetry.metrics.interval",
            "at least 1s",
        ),
        (
            "{logs: {enabled: true}}",
            "telemetry",
            "unknown field `logs`",
        ),
    ] {
        let text = format!("{base}telemetry: {telemetry}\n");
        let err = Config::from_yaml_str(&text).expect_err(&text);
        assert!(err.path.starts_with(path), "{path}: {err}");
        assert!(err.to_string().contains(says), "{says}: {err}");
    }
    let allowed = format!(
        "{base}telemetry: {{traces: {{enabled: true, endpoint: 'http://collector:4317', insecure: true, sample_ratio: 0.1}}}}\n"
    );
    let config = Config::from_yaml_str(&allowed).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.telemetry.traces.effective(),
        ("http://collector:4317", 0.1)
    );
}
