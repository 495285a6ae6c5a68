//! What the tracker says when asked: the snapshot of its books, each partition's progress,
//! the messages counted lost, and the latency distribution. Reading only; what changes the
//! books is in the parent module.

use super::{Anomaly, AnomalyKind, LatencySummary, PartitionProgress, Tracker, TrackerSnapshot};

impl Tracker {
    /// The counters, latency, per-worker load and anomaly samples as of `now_us`.
    #[must_use]
    pub fn snapshot(&self, now_us: i64) -> TrackerSnapshot {
        let c = &self.counters;
        let limit = self.config.sample_limit;
        let mut anomalies = Vec::with_capacity(self.samples.len() + limit.min(64));
        let (mut missing, mut oldest, mut removed) = (0u64, None::<i64>, 0u32);
        for (p, part) in self.partitions.iter().enumerate() {
            missing += part.missing();
            removed += u32::from(part.removed);
            if let Some(t) = part.oldest_missing_known_at() {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
            if part.lost == 0 || anomalies.len() >= limit {
                continue;
            }
            let left = limit - anomalies.len();
            anomalies.extend(part.lost_seqs().take(left).map(|seq| Anomaly {
                kind: AnomalyKind::Lost,
                partition: u32::try_from(p).unwrap_or(u32::MAX),
                seq,
                worker: None,
                other_worker: None,
                at_us: None,
                trace_id: None,
            }));
        }
        anomalies.extend_from_slice(&self.samples);
        let total = u32::try_from(self.partitions.len()).unwrap_or(u32::MAX);
        TrackerSnapshot {
            at_us: now_us,
            partitions_active: total - removed,
            partitions_removed: removed,
            sent: c.sent,
            received: c.received,
            received_unconfirmed: c.received - c.sent_received,
            in_flight: c.sent.saturating_sub(c.sent_received + c.sent_written_off),
            missing,
            oldest_missing_age_us: oldest.map(|t| now_us.saturating_sub(t).max(0)),
            lost: c.lost,
            late: c.late,
            late_worst_us: c.late_worst_us,
            excused: c.excused,
            duplicates_redelivery: c.dup_redelivery,
            duplicates_concurrent: c.dup_concurrent,
            ownership_overlaps: c.overlaps,
            order_violations: c.order_violations,
            duplicate_sent: c.duplicate_sent,
            malformed: c.malformed,
            rejected: c.rejected,
            latency: self.latency_summary(),
            workers: self
                .workers
                .iter()
                .filter(|w| w.processed > 0 || w.malformed > 0)
                .copied()
                .collect(),
            anomalies,
        }
    }

    /// The progress of the active partitions with the `limit` lowest ids, lowest first, and
    /// how many active partitions were left out.
    #[must_use]
    pub fn partition_progress(&self, limit: u32) -> (Vec<PartitionProgress>, u32) {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut shown = Vec::with_capacity(limit.min(self.partitions.len()));
        let mut left_out = 0u32;
        for (p, part) in self.partitions.iter().enumerate() {
            if part.removed {
                continue;
            }
            if shown.len() == limit {
                left_out += 1;
                continue;
            }
            shown.push(PartitionProgress {
                partition: u32::try_from(p).unwrap_or(u32::MAX),
                known_seq: part.known_max(),
                processed_seq: part.processed_max(),
                missing: part.missing(),
                lost: part.lost,
            });
        }
        (shown, left_out)
    }

    /// Every message currently counted as lost, as (partition, seq), partition by partition,
    /// lowest seq first.
    pub fn lost(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.partitions
            .iter()
            .enumerate()
            .filter(|(_, part)| part.lost > 0)
            .flat_map(|(p, part)| {
                let p = u32::try_from(p).unwrap_or(u32::MAX);
                part.lost_seqs().map(move |seq| (p, seq))
            })
    }

    /// Publish→processed latency of first-time processing as a histogram: how many
    /// measurements fell at or below each of the ascending `bounds_us` and above the one
    /// before (the last entry: above every bound), and their sum in whole µs. The resolution is
    /// the histogram's (three significant digits).
    #[must_use]
    pub fn latency_buckets(&self, bounds_us: &[u64]) -> (Vec<u64>, f64) {
        let h = &self.latency;
        let mut counts = Vec::with_capacity(bounds_us.len() + 1);
        let mut below = 0;
        for bound in bounds_us {
            let upto = if h.is_empty() {
                0
            } else {
                h.count_between(0, *bound)
            };
            counts.push(upto.saturating_sub(below));
            below = below.max(upto);
        }
        counts.push(h.len().saturating_sub(below));
        // Whole µs: the mean's float error must not show as a fraction of a µs.
        (counts, (h.mean() * h.len() as f64).round())
    }

    fn latency_summary(&self) -> LatencySummary {
        let h = &self.latency;
        if h.is_empty() {
            return LatencySummary {
                clamped: self.latency_clamped,
                ..LatencySummary::default()
            };
        }
        LatencySummary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            clamped: self.latency_clamped,
        }
    }
}
