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
//! Bounded: a partition keeps the [`CAP`] highest such seqs. A fault leaves about one
//! batch (the durable's `max_ack_pending`) of redeliveries per partition, and the late
//! report concerns a seq processed just before the fault, so eviction drops the oldest. A
//! late report whose entry was evicted is judged as before (`concurrent`): the bound can only
//! make the tracker stricter, never blind.

use std::collections::BTreeMap;

use super::types::WorkerRef;

/// Entries kept per partition.
pub(super) const CAP: usize = 256;

/// The remembered first processings of one partition that were redeliveries: seq → the
/// worker that reported it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct RedeliveredFirst {
    seqs: BTreeMap<u64, WorkerRef>,
}

impl RedeliveredFirst {
    /// Remembers that `worker` processed `seq` for the first time on a redelivery.
    pub fn insert(&mut self, seq: u64, worker: WorkerRef) {
        self.seqs.insert(seq, worker);
        if self.seqs.len() > CAP {
            self.seqs.pop_first();
        }
    }

    /// The worker whose first processing of `seq` was a redelivery, if remembered.
    pub fn get(&self, seq: u64) -> Option<WorkerRef> {
        self.seqs.get(&seq).copied()
    }

    /// The entries in seq order, for a checkpoint.
    pub fn iter(&self) -> impl Iterator<Item = (u64, WorkerRef)> + '_ {
        self.seqs.iter().map(|(&seq, &worker)| (seq, worker))
    }

    /// Rebuilds from a checkpoint's entries.
    ///
    /// # Errors
    /// Names what is wrong: more than [`CAP`] entries, a seq listed twice or out of order,
    /// or a seq above `processed_max` (it cannot have been processed).
    pub fn import(entries: &[(u64, WorkerRef)], processed_max: u64) -> Result<Self, String> {
        if entries.len() > CAP {
            return Err(format!("{} entries, at most {CAP} are kept", entries.len()));
        }
        let mut seqs = BTreeMap::new();
        let mut previous = 0;
        for &(seq, worker) in entries {
            if seq <= previous {
                return Err(format!("seq {seq} after {previous} (strictly increasing)"));
            }
            if seq > processed_max {
                return Err(format!(
                    "seq {seq} is above the highest processed seq {processed_max}"
                ));
            }
            seqs.insert(seq, worker);
            previous = seq;
        }
        Ok(Self { seqs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_highest_cap_seqs() {
        let mut r = RedeliveredFirst::default();
        for seq in 1..=(CAP as u64 + 10) {
            r.insert(seq, WorkerRef(1));
        }
        assert_eq!(r.iter().count(), CAP);
        assert_eq!(r.get(10), None, "the oldest are evicted");
        assert_eq!(r.get(11), Some(WorkerRef(1)));
        assert_eq!(r.get(CAP as u64 + 10), Some(WorkerRef(1)));
    }

    #[test]
    fn import_refuses_what_export_cannot_write() {
        let ok = [(3, WorkerRef(1)), (7, WorkerRef(2))];
        let r = RedeliveredFirst::import(&ok, 7);
        assert_eq!(r.map(|r| r.iter().collect::<Vec<_>>()), Ok(ok.to_vec()));
        assert!(RedeliveredFirst::import(&[(7, WorkerRef(1)), (3, WorkerRef(1))], 9).is_err());
        assert!(RedeliveredFirst::import(&[(3, WorkerRef(1)), (3, WorkerRef(1))], 9).is_err());
        assert!(RedeliveredFirst::import(&[(0, WorkerRef(1))], 9).is_err());
        assert!(RedeliveredFirst::import(&[(10, WorkerRef(1))], 9).is_err());
        let many: Vec<_> = (1..=CAP as u64 + 1).map(|s| (s, WorkerRef(0))).collect();
        assert!(RedeliveredFirst::import(&many, u64::MAX).is_err());
    }
}
