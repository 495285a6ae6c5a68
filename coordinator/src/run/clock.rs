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
        }
    }

    /// Run time now.
    pub(crate) fn now(&self) -> Duration {
        self.base_elapsed + self.base.elapsed()
    }
}

/// Milliseconds of a duration, saturating (for files and messages).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
