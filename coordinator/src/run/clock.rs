//! The run's clock: time since the run started, continuing across a coordinator restart.
//!
//! Every timer of a run (fault deadlines, pauses, respawns, the drain) is kept as run time
//! rather than as an `Instant`, so the state can be checkpointed and a resumed coordinator
//! carries on with the same schedule. The time the coordinator was down counts as run time:
//! the system under test kept running meanwhile.

use std::time::Duration;

use tokio::time::Instant;

/// Run time = `base_elapsed` + time since `base`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunClock {
    base: Instant,
    base_elapsed: Duration,
    /// Run time at the finish: what a finished run shows as its age ([`Self::shown`]).
    frozen: Option<Duration>,
}

impl RunClock {
    /// A clock at zero now.
    pub(crate) fn start() -> Self {
        Self::at(Duration::ZERO)
    }

    /// A clock reading `elapsed` now (a resumed run).
    pub(crate) fn at(elapsed: Duration) -> Self {
        Self {
            base: Instant::now(),
            base_elapsed: elapsed,
            frozen: None,
        }
    }

    /// Run time now.
    pub(crate) fn now(&self) -> Duration {
        self.base_elapsed + self.base.elapsed()
    }

    /// Stop the age a finished run shows at its current value. Timers and wall-clock
    /// conversions keep using [`Self::now`].
    pub(crate) fn freeze(&mut self) {
        if self.frozen.is_none() {
            self.frozen = Some(self.now());
        }
    }

    /// The run's age as shown (status, metrics): run time now, or at the finish.
    pub(crate) fn shown(&self) -> Duration {
        self.frozen.unwrap_or_else(|| self.now())
    }
}

/// Milliseconds of a duration, saturating (for files and messages).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
