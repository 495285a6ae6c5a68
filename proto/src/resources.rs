//! A process's resources read from `/proc` (Linux): what agents and the coordinator sample
//! for the leak gate.

use crate::v1::ResourceSample;

/// The process name an agent's samples of itself carry.
pub const AGENT_PROCESS: &str = "agent";

/// `pid`'s resources now; `None` when it is gone (or `/proc` is not readable).
pub fn sample(process: &str, pid: u32) -> Option<ResourceSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
    };
    let rss_bytes = field("VmRSS:")? * 1024;
    let threads = u32::try_from(field("Threads:")?).unwrap_or(u32::MAX);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(ResourceSample {
        process: process.to_string(),
        pid,
        rss_bytes,
        fds: u32::try_from(fds).unwrap_or(u32::MAX),
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_sampled_and_a_gone_one_is_not() {
        let own = sample("me", std::process::id()).expect("own sample");
        assert!(own.rss_bytes > 1 << 20, "{own:?}");
        assert!(own.fds >= 3 && own.threads >= 1, "{own:?}");
        assert!(sample("gone", u32::MAX - 1).is_none());
    }
}
