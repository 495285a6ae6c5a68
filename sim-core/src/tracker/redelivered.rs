//! Seqs whose *first* processed report was already a redelivery (delivery count > 1).
//!
//! Why it exists: a duplicate is classified when its second report arrives, and reports of
//! different workers arrive in any order. A worker frozen (SIGSTOP) after processing a
//! message but before its report left the process lets the ack wait expire; the new owner
//! processes the redelivery (delivery 2) and reports first. When the frozen worker is
//! continued, its report of delivery 1 arrives seconds later. Judged by that late report
//! alone, it is "a second first delivery", i.e. two consumers at once — a false
//! `concurrent` FAIL, seen in the three-host lab. Remembering which first processings were
//! redeliveries lets the tracker see both reports: one of them says the broker delivered
//! the message again, so it is a redelivery whichever arrived first.
//!
//! Narrow on purpose: an entry excuses one later report of delivery 1, from another worker,
//! that finished processing no later than the redelivery was received (plus the overlap
//! tolerance for clock skew) — exactly the frozen worker's case. A second such report, the
//! same worker's, or one processed after the redelivery arrived is still two consumers.
//!
//! Bounded: a partition keeps the [`CAP`] highest such seqs. A fault leaves about one
//! batch (the durable's `max_ack_pending`) of redeliveries per partition, and the late
//! report concerns a seq processed just before the fault, so eviction drops the oldest. A
//! late report whose entry was evicted is judged as before (`concurrent`): the bound can only
//! make the tracker stricter, never blind.

use std::collections::BTreeMap;

use super::types::WorkerRef;

/// Entries kept per partition.
pub(super) const CAP: usize = 256;

/// A first processing that was a redelivery: who, and when it received the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Redelivery {
    /// The worker that processed it.
    pub worker: WorkerRef,
    /// When that worker received it (µs, its clock).
    pub received_us: i64,
}

/// The remembered first processings of one partition that were redeliveries, by seq.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct RedeliveredFirst {
    seqs: BTreeMap<u64, Redelivery>,
}

impl RedeliveredFirst {
    /// Remembers that `seq`'s first processing was the redelivery `redelivery`.
    pub fn insert(&mut self, seq: u64, redelivery: Redelivery) {
        self.seqs.insert(seq, redelivery);
        if self.seqs.len() > CAP {
            self.seqs.pop_first();
        }
    }

    /// Whether a report of delivery 1 of `seq` by `worker`, processed until `processed_us`,
    /// is the earlier delivery of a remembered redelivery (see the module docs); if so, the
    /// entry is used up and its worker returned.
    pub fn excuse(
        &mut self,
        seq: u64,
        worker: WorkerRef,
        processed_us: i64,
        tolerance_us: i64,
    ) -> Option<WorkerRef> {
        let entry = self.seqs.get(&seq)?;
        let earlier = entry.worker != worker
            && processed_us <= entry.received_us.saturating_add(tolerance_us);
        if !earlier {
            return None;
        }
        self.seqs.remove(&seq).map(|entry| entry.worker)
    }

    /// The entries in seq order, for a checkpoint.
    pub fn iter(&self) -> impl Iterator<Item = (u64, WorkerRef, i64)> + '_ {
        self.seqs
            .iter()
            .map(|(&seq, entry)| (seq, entry.worker, entry.received_us))
    }

    /// Rebuilds from a checkpoint's entries.
    ///
    /// # Errors
    /// Names what is wrong: more than [`CAP`] entries, a seq listed twice or out of order,
    /// or a seq `processed` says was never processed (export cannot write one).
    pub fn import(
        entries: &[(u64, WorkerRef, i64)],
        processed: impl Fn(u64) -> bool,
    ) -> Result<Self, String> {
        if entries.len() > CAP {
            return Err(format!("{} entries, at most {CAP} are kept", entries.len()));
        }
        let mut seqs = BTreeMap::new();
        let mut previous = 0;
        for &(seq, worker, received_us) in entries {
            if seq <= previous {
                return Err(format!("seq {seq} after {previous} (strictly increasing)"));
            }
            if !processed(seq) {
                return Err(format!("seq {seq} was never processed"));
            }
            seqs.insert(
                seq,
                Redelivery {
                    worker,
                    received_us,
                },
            );
            previous = seq;
        }
        Ok(Self { seqs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(worker: u32, received_us: i64) -> Redelivery {
        Redelivery {
            worker: WorkerRef(worker),
            received_us,
        }
    }

    #[test]
    fn keeps_the_highest_cap_seqs() {
        let mut r = RedeliveredFirst::default();
        for seq in 1..=(CAP as u64 + 10) {
            r.insert(seq, at(1, 100));
        }
        assert_eq!(r.iter().count(), CAP);
        assert_eq!(
            r.excuse(10, WorkerRef(2), 50, 0),
            None,
            "the oldest are evicted"
        );
        assert_eq!(r.excuse(11, WorkerRef(2), 50, 0), Some(WorkerRef(1)));
    }

    #[test]
    fn excuses_once_another_workers_earlier_processing() {
        let mut r = RedeliveredFirst::default();
        r.insert(5, at(2, 1_000));
        assert_eq!(r.excuse(5, WorkerRef(2), 500, 0), None, "the same worker");
        assert_eq!(
            r.excuse(5, WorkerRef(1), 1_500, 100),
            None,
            "processed after"
        );
        assert_eq!(
            r.excuse(5, WorkerRef(1), 1_050, 100),
            Some(WorkerRef(2)),
            "skew"
        );
        assert_eq!(r.excuse(5, WorkerRef(3), 500, 0), None, "used up");
    }

    #[test]
    fn import_refuses_what_export_cannot_write() {
        let ok = [(3, WorkerRef(1), 10), (7, WorkerRef(2), 20)];
        let all = |_| true;
        let r = RedeliveredFirst::import(&ok, all);
        assert_eq!(r.map(|r| r.iter().collect::<Vec<_>>()), Ok(ok.to_vec()));
        let twice = [(3, WorkerRef(1), 0), (3, WorkerRef(1), 0)];
        assert!(RedeliveredFirst::import(&twice, all).is_err());
        let backwards = [(7, WorkerRef(1), 0), (3, WorkerRef(1), 0)];
        assert!(RedeliveredFirst::import(&backwards, all).is_err());
        assert!(RedeliveredFirst::import(&[(0, WorkerRef(1), 0)], all).is_err());
        assert!(RedeliveredFirst::import(&[(4, WorkerRef(1), 0)], |s| s != 4).is_err());
        let many: Vec<_> = (1..=CAP as u64 + 1).map(|s| (s, WorkerRef(0), 0)).collect();
        assert!(RedeliveredFirst::import(&many, all).is_err());
    }
}
