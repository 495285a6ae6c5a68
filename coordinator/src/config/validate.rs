//! The rules a parsed config must satisfy before anything starts. Each problem names the
//! field path and the value found, so a user can fix the file without reading code.

use std::time::Duration;

use super::duration::format_duration;
use super::{ChaosEvent, Config, ConfigError, NatsMode, StrategyConfig};

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
        p.0
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
        p.positive_duration("coordinator.drain_timeout", c.drain_timeout);
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
}
