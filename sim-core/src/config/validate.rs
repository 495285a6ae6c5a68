//! The rules a parsed config must satisfy before anything starts. Each problem names the
//! field path and the value found, so a user can fix the file without reading code.

use std::time::Duration;

use super::duration::format_duration;
use super::{ChaosEvent, Config, ConfigError, NatsConfig, NatsMode, StrategyConfig};

/// Problems found so far, in field order.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    /// Records a problem at `path` unless `ok`.
    fn check(&mut self, ok: bool, path: &str, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(ConfigError::new(path, message()));
        }
    }

    /// A count that must be at least 1.
    fn positive_count(&mut self, path: &str, value: u32) {
        self.check(value > 0, path, || {
            format!("must be greater than 0, got {value}")
        });
    }

    /// A finite number that must be greater than 0 (NaN fails too).
    fn positive_number(&mut self, path: &str, value: f64) {
        self.check(value > 0.0 && value.is_finite(), path, || {
            format!("must be a number greater than 0, got {value}")
        });
    }

    /// A duration that must be longer than zero.
    fn positive_duration(&mut self, path: &str, value: Duration) {
        self.check(!value.is_zero(), path, || {
            format!("must be longer than 0s, got {}", format_duration(value))
        });
    }

    /// `min <= max` for a pair of durations, reported at the `min` field.
    fn ordered_durations(&mut self, path: &str, min: Duration, max: Duration, max_name: &str) {
        self.check(min <= max, path, || {
            let (min, max) = (format_duration(min), format_duration(max));
            format!("{min} is greater than {max_name} {max}")
        });
    }
}

impl Config {
    /// Checks every rule and returns the first problem (see [`Config::validation_errors`]
    /// for all of them).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.validation_errors().into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    /// Every rule violation, in field order (for `simctl config validate`, which can report
    /// them all at once).
    pub fn validation_errors(&self) -> Vec<ConfigError> {
        let mut p = Problems::default();
        self.check_simulation(&mut p);
        self.check_partitions(&mut p);
        self.check_producers(&mut p);
        self.check_workers(&mut p);
        self.check_coordinator(&mut p);
        self.check_chaos(&mut p);
        self.check_nats(&mut p);
        p.positive_duration("checkpointing.interval", self.checkpointing.interval);
        let path = &self.checkpointing.path;
        p.check(
            !self.checkpointing.enabled || !path.as_os_str().is_empty(),
            "checkpointing.path",
            || "must not be empty when checkpointing is enabled".into(),
        );
        self.check_telemetry(&mut p);
        p.0
    }

    fn check_telemetry(&self, p: &mut Problems) {
        let traces = &self.telemetry.traces;
        use super::telemetry::{MIN_PUSH_INTERVAL, Signal, check_endpoint};
        if let Some(endpoint) = &traces.endpoint
            && let Err(message) = check_endpoint(Signal::Traces, endpoint, traces.insecure)
        {
            p.check(false, "telemetry.traces.endpoint", || message);
        }
        let pushed = &self.telemetry.metrics;
        if let Some(endpoint) = &pushed.endpoint
            && let Err(message) = check_endpoint(Signal::Metrics, endpoint, pushed.insecure)
        {
            p.check(false, "telemetry.metrics.endpoint", || message);
        }
        if let Some(interval) = pushed.interval {
            p.check(
                interval >= MIN_PUSH_INTERVAL,
                "telemetry.metrics.interval",
                || format!("must be at least 1s, got {interval:?}"),
            );
        }
        if let Some(ratio) = traces.sample_ratio {
            p.check(
                (0.0..=1.0).contains(&ratio),
                "telemetry.traces.sample_ratio",
                || format!("must be a number from 0 to 1, got {ratio}"),
            );
        }
        let url = &self.telemetry.tempo_url;
        p.check(
            url.starts_with("http://") || url.starts_with("https://"),
            "telemetry.tempo_url",
            || format!("must be an http:// or https:// URL, got {url:?}"),
        );
    }

    fn check_simulation(&self, p: &mut Problems) {
        p.positive_duration("simulation.duration", self.simulation.duration);
    }

    fn check_partitions(&self, p: &mut Problems) {
        let partitions = &self.partitions;
        p.positive_count("partitions.count", partitions.count);
        p.positive_number(
            "partitions.message_rate_per_partition",
            partitions.message_rate_per_partition,
        );
        let weights = &partitions.weights.exponential;
        let percent = weights.extreme_percent;
        p.check(
            percent > 0.0 && percent <= 1.0,
            "partitions.weights.exponential.extreme_percent",
            || format!("must be in (0, 1] (a fraction: 0.05 = 5%), got {percent}"),
        );
        for (field, value) in [
            ("extreme_weight", weights.extreme_weight),
            ("normal_weight", weights.normal_weight),
        ] {
            p.check(
                value >= 1,
                &format!("partitions.weights.exponential.{field}"),
                || format!("must be at least 1, got {value}"),
            );
        }
    }

    fn check_producers(&self, p: &mut Problems) {
        let producers = self.producers.count;
        let partitions = self.partitions.count;
        p.positive_count("producers.count", producers);
        p.check(producers <= partitions, "producers.count", || {
            format!(
                "{producers} producers for {partitions} partitions would leave producers \
                 with nothing to publish; use at most {partitions}"
            )
        });
        let per = self.partitions_per_producer();
        let per_path = "producers.partitions_per_producer";
        let shown = match self.producers.partitions_per_producer {
            Some(_) => per.to_string(),
            None => format!("{per} (default ⌈{partitions}/{producers}⌉)"),
        };
        p.check(per > 0, per_path, || {
            format!("must be greater than 0, got {per}")
        });
        // Only meaningful once the counts themselves are sane.
        if per > 0 && producers > 0 && producers <= partitions {
            let covered = u64::from(per) * u64::from(producers);
            p.check(covered >= u64::from(partitions), per_path, || {
                format!(
                    "{shown} × {producers} producers covers only {covered} of {partitions} \
                     partitions; need at least {}",
                    partitions.div_ceil(producers)
                )
            });
            // Contiguous ranges of `per`: producer k starts at k × per.
            let first_idle = partitions.div_ceil(per);
            p.check(first_idle >= producers, per_path, || {
                format!(
                    "{shown} per producer leaves producer {first_idle} of 0..{producers} \
                     without partitions ({partitions} partitions run out after \
                     {first_idle} producers); use fewer producers or fewer partitions each"
                )
            });
        }
        let variation = &self.producers.rate_variation;
        let base = "producers.rate_variation";
        p.positive_number(&format!("{base}.min_multiplier"), variation.min_multiplier);
        p.positive_number(&format!("{base}.max_multiplier"), variation.max_multiplier);
        let (min, max) = (variation.min_multiplier, variation.max_multiplier);
        p.check(
            min <= max || min.is_nan(),
            &format!("{base}.min_multiplier"),
            || format!("{min} is greater than max_multiplier {max}"),
        );
        p.positive_duration(&format!("{base}.ramp_interval"), variation.ramp_interval);
    }

    fn check_workers(&self, p: &mut Problems) {
        let workers = &self.workers;
        p.positive_count("workers.count", workers.count);
        let strategy = &workers.strategy_config;
        let virtual_nodes = strategy.virtual_nodes;
        p.check(
            virtual_nodes >= 1,
            "workers.strategy_config.virtual_nodes",
            || format!("must be at least 1, got {virtual_nodes}"),
        );
        for (field, value, min) in [
            (
                "overload_threshold",
                strategy.overload_threshold,
                StrategyConfig::MIN_OVERLOAD_THRESHOLD,
            ),
            (
                "extreme_threshold",
                strategy.extreme_threshold,
                StrategyConfig::MIN_EXTREME_THRESHOLD,
            ),
        ] {
            p.check(
                value >= min && value.is_finite(),
                &format!("workers.strategy_config.{field}"),
                || format!("must be at least {min} (parti's minimum), got {value}"),
            );
        }
        let delay = &workers.processing_delay;
        p.ordered_durations("workers.processing_delay.min", delay.min, delay.max, "max");
    }

    fn check_coordinator(&self, p: &mut Problems) {
        let c = &self.coordinator;
        p.positive_duration("coordinator.validation_window", c.validation_window);
        p.positive_duration("coordinator.rebalance_timeout", c.rebalance_timeout);
        p.positive_duration("coordinator.stall_timeout", c.stall_timeout);
        p.positive_duration("coordinator.startup_timeout", c.startup_timeout);
        p.positive_duration("coordinator.catch_up_timeout", c.catch_up_timeout);
        p.positive_number("coordinator.max_resource_growth", c.max_resource_growth);
        p.positive_duration("coordinator.drain_timeout", c.drain_timeout);
        p.ordered_durations(
            "coordinator.drain_settle",
            c.drain_settle,
            c.drain_timeout,
            "coordinator.drain_timeout",
        );
    }

    fn check_chaos(&self, p: &mut Problems) {
        let chaos = &self.chaos;
        if chaos.enabled {
            p.check(!chaos.events.is_empty(), "chaos.events", || {
                let all: Vec<&str> = ChaosEvent::ALL.iter().map(|e| e.as_str()).collect();
                format!(
                    "chaos is enabled but no events are listed; choose from {}",
                    all.join(", ")
                )
            });
            p.check(chaos.interval.is_some(), "chaos.interval", || {
                "required when chaos is enabled (e.g. 10-30m)".into()
            });
        }
        p.check(
            chaos.warmup + chaos.cooldown < self.simulation.duration || !chaos.enabled,
            "chaos.warmup",
            || {
                format!(
                    "warmup {} plus cooldown {} leave no time for faults in a {} run",
                    format_duration(chaos.warmup),
                    format_duration(chaos.cooldown),
                    format_duration(self.simulation.duration)
                )
            },
        );
        if let Some(interval) = chaos.interval {
            p.positive_duration("chaos.interval", interval.min);
            p.check(interval.min <= interval.max, "chaos.interval", || {
                let (min, max) = (format_duration(interval.min), format_duration(interval.max));
                format!("minimum {min} is greater than maximum {max} in {interval}")
            });
        }
    }

    fn check_nats(&self, p: &mut Problems) {
        let nats = &self.nats;
        if nats.url.is_empty() {
            p.check(false, "nats.url", || match nats.mode {
                NatsMode::External => {
                    "required when nats.mode is external (e.g. nats://localhost:4222)".into()
                }
                NatsMode::Embedded => "must not be empty".into(),
            });
        } else {
            // Several comma-separated URLs name the seeds of a cluster.
            for url in nats.url.split(',').map(str::trim) {
                let host = url
                    .strip_prefix("nats://")
                    .or_else(|| url.strip_prefix("tls://"));
                p.check(host.is_some_and(|h| !h.is_empty()), "nats.url", || {
                    format!("{url:?} must start with nats:// or tls:// followed by a host")
                });
            }
        }
        self.check_nats_cluster(p);
        let stream = &nats.stream;
        // JetStream stream names become subject tokens and file names.
        let bad_stream = |c: char| c.is_whitespace() || ".*>/\\".contains(c);
        p.check(
            !stream.is_empty() && !stream.contains(bad_stream),
            "nats.stream",
            || format!("{stream:?} must be non-empty without spaces, '.', '*', '>', '/' or '\\'"),
        );
        let prefix = &nats.subject_prefix;
        let valid_prefix = !prefix.is_empty()
            && prefix.split('.').all(|t| {
                !t.is_empty() && !t.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
            });
        p.check(valid_prefix, "nats.subject_prefix", || {
            format!("{prefix:?} must be dot-separated non-empty tokens without spaces or wildcards")
        });
    }

    /// `nats.cluster_size` and `nats.replicas`.
    fn check_nats_cluster(&self, p: &mut Problems) {
        let nats = &self.nats;
        let size = match (nats.mode, nats.cluster_size) {
            (NatsMode::External, None) => None,
            (NatsMode::External, Some(size)) => {
                p.check(false, "nats.cluster_size", || {
                    format!(
                        "only for nats.mode embedded (an external cluster's size is not ours \
                         to set), got {size}; remove it"
                    )
                });
                None
            }
            (NatsMode::Embedded, size) => {
                let size = size.unwrap_or(1);
                if !NatsConfig::CLUSTER_SIZES.contains(&size) {
                    p.check(false, "nats.cluster_size", || {
                        format!(
                            "must be 1, 3 or 5 (an odd number of servers keeps a JetStream \
                             majority when one or two fail), got {size}"
                        )
                    });
                    // The replica rules need a sane size (and replicas may be that size by
                    // default): one problem to fix first.
                    return;
                }
                Some(size)
            }
        };
        let replicas = nats.replicas;
        let max = NatsConfig::MAX_REPLICAS;
        if !(1..=max).contains(&replicas) {
            p.check(false, "nats.replicas", || {
                format!("must be between 1 and {max} (JetStream's limit), got {replicas}")
            });
        } else if let Some(size) = size {
            p.check(replicas <= size, "nats.replicas", || {
                format!(
                    "{replicas} replicas need at least {replicas} servers, but \
                     nats.cluster_size is {size}"
                )
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "simulation: {duration: 10m}\n\
                        partitions: {count: 8, message_rate_per_partition: 1}\n\
                        workers: {count: 2}\n";

    fn load(nats: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str(&format!("{BASE}nats: {nats}\n"))
    }

    #[track_caller]
    fn loads(nats: &str) -> Config {
        load(nats).unwrap_or_else(|e| panic!("nats: {nats} should load: {e}"))
    }

    #[track_caller]
    fn fails(nats: &str, path: &str, fragment: &str) {
        let error = load(nats).expect_err(nats);
        assert_eq!(error.path, path, "nats: {nats} → {error}");
        assert!(
            error.message.contains(fragment),
            "nats: {nats} → {error:?} lacks {fragment:?}"
        );
    }

    #[test]
    fn embedded_defaults_to_one_server_and_one_replica() {
        let config = Config::from_yaml_str(BASE).expect("minimal config");
        assert_eq!(config.nats.cluster_size, Some(1));
        assert_eq!(config.nats.replicas, 1);
        assert_eq!(config.nats.managed_servers(), Some(1));
    }

    #[test]
    fn embedded_replicas_default_to_the_cluster_size() {
        let three = loads("{cluster_size: 3}");
        assert_eq!((three.nats.cluster_size, three.nats.replicas), (Some(3), 3));
        let five = loads("{mode: embedded, cluster_size: 5}");
        assert_eq!(
            (five.nats.managed_servers(), five.nats.replicas),
            (Some(5), 5)
        );
        let fewer = loads("{cluster_size: 5, replicas: 3}");
        assert_eq!(fewer.nats.replicas, 3);
        let one = loads("{cluster_size: 3, replicas: 1}");
        assert_eq!(one.nats.replicas, 1);
    }

    #[test]
    fn cluster_size_must_be_one_three_or_five() {
        for size in [0, 2, 4, 6, 7] {
            fails(
                &format!("{{cluster_size: {size}}}"),
                "nats.cluster_size",
                &format!(
                    "must be 1, 3 or 5 (an odd number of servers keeps a JetStream majority when one or two fail), got {size}"
                ),
            );
        }
    }

    #[test]
    fn a_bad_cluster_size_is_the_only_problem_reported() {
        // replicas defaults to the size; reporting it as well would only repeat the problem.
        let config = Config {
            nats: crate::config::NatsConfig {
                cluster_size: Some(7),
                replicas: 7,
                ..crate::config::NatsConfig::default()
            },
            ..Config::from_yaml_str(BASE).expect("minimal config")
        };
        let errors = config.validation_errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "nats.cluster_size");
    }

    #[test]
    fn cluster_size_is_rejected_when_external() {
        fails(
            "{mode: external, url: 'nats://a:4222', cluster_size: 3}",
            "nats.cluster_size",
            "only for nats.mode embedded",
        );
        // Even the default value: an external cluster's size is not ours to state.
        fails(
            "{mode: external, url: 'nats://a:4222', cluster_size: 1}",
            "nats.cluster_size",
            "got 1; remove it",
        );
    }

    #[test]
    fn replicas_must_fit_the_embedded_cluster() {
        fails(
            "{cluster_size: 3, replicas: 5}",
            "nats.replicas",
            "5 replicas need at least 5 servers, but nats.cluster_size is 3",
        );
        fails("{replicas: 3}", "nats.replicas", "nats.cluster_size is 1");
    }

    #[test]
    fn replicas_must_be_between_one_and_five() {
        for (nats, got) in [
            ("{cluster_size: 5, replicas: 0}", 0),
            ("{cluster_size: 5, replicas: 6}", 6),
            ("{mode: external, url: 'nats://a:4222', replicas: 0}", 0),
            ("{mode: external, url: 'nats://a:4222', replicas: 9}", 9),
        ] {
            fails(
                nats,
                "nats.replicas",
                &format!("must be between 1 and 5 (JetStream's limit), got {got}"),
            );
        }
    }

    #[test]
    fn external_defaults_to_one_replica_and_takes_up_to_five() {
        let config = loads("{mode: external, url: 'nats://a:4222,nats://b:4222'}");
        assert_eq!(config.nats.cluster_size, None);
        assert_eq!(config.nats.managed_servers(), None);
        assert_eq!(config.nats.replicas, 1);
        let five = loads("{mode: external, url: 'nats://a:4222', replicas: 5}");
        assert_eq!(five.nats.replicas, 5);
    }

    #[test]
    fn the_dump_round_trips_cluster_settings() {
        for nats in [
            "{cluster_size: 3}",
            "{cluster_size: 5, replicas: 3}",
            "{mode: external, url: 'nats://a:4222,tls://b:4443', replicas: 3}",
        ] {
            let config = loads(nats);
            let dump = config.effective_yaml();
            assert_eq!(
                Config::from_yaml_str(&dump).as_ref(),
                Ok(&config),
                "nats: {nats}, dump:\n{dump}"
            );
            // An external dump must not state a size (reloading it would fail).
            assert_eq!(
                dump.contains("cluster_size"),
                config.nats.mode == NatsMode::Embedded,
                "{dump}"
            );
        }
    }
}
