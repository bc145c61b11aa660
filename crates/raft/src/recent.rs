//! The newest Raft log entries, kept in memory. Right after an entry is appended, openraft
//! reads it back twice: to replicate it (on the leader) and to apply it once committed (on
//! every node). Served from here, neither read opens a RocksDB iterator or decodes the entry.
//!
//! The cache holds a contiguous run of entries that always ends at the last entry of the log,
//! so any range starting inside it is answered completely or not at all; a range starting
//! before it is read from RocksDB as before.

use std::collections::VecDeque;

use crate::types::Entry;

/// At most this many bytes (encoded size) of entries are kept.
pub const DEFAULT_BUDGET: usize = 8 << 20;

pub struct Recent {
    /// Entries with consecutive indexes, each with its encoded size.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
    budget: usize,
}

impl Recent {
    pub fn new(budget: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn next_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index + 1)
    }

    /// Records an entry just written to the log (with its encoded size). Entries at its
    /// index and after are no longer the log's; one that does not follow the last one left
    /// (a gap) starts the run afresh.
    pub fn appended(&mut self, entry: Entry, size: usize) {
        let index = entry.log_id.index;
        self.truncate_from(index);
        if self.next_index().is_some_and(|next| next != index) {
            self.clear();
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
        while self.bytes > self.budget {
            self.drop_oldest();
        }
    }

    /// Forgets the entries at `index` and after (the log was truncated there).
    pub fn truncate_from(&mut self, index: u64) {
        while self.next_index().is_some_and(|next| next > index) {
            let (_, size) = self
                .entries
                .pop_back()
                .expect("a next index means an entry");
            self.bytes -= size;
        }
    }

    /// Forgets the entries up to and including `index` (the log was purged there).
    pub fn purge_through(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries with indexes in `start..end` (`end: None` for no bound), if the run holds
    /// the whole range; the log has no entries past the run's end.
    pub fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let next = self.next_index()?;
        if start < first {
            return None;
        }
        let end = end.map_or(next, |end| end.min(next));
        if start >= end {
            return Some(Vec::new());
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LogId;
    use openraft::impls::leader_id_adv::LeaderId;

    fn entry(term: u64, index: u64) -> Entry {
        openraft::Entry {
            log_id: LogId {
                leader_id: LeaderId { term, node_id: 1 },
                index,
            },
            payload: openraft::EntryPayload::Blank,
        }
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        entries.map(|v| {
            v.iter()
                .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                .collect()
        })
    }

    #[test]
    fn serves_only_ranges_that_start_inside_the_run() {
        let mut recent = Recent::new(1000);
        assert_eq!(indexes(recent.get(1, None)), None, "empty: read the log");
        for i in 5..=9 {
            recent.appended(entry(1, i), 10);
        }
        assert_eq!(
            indexes(recent.get(4, Some(7))),
            None,
            "starts before the run"
        );
        assert_eq!(indexes(recent.get(6, Some(8))), Some(vec![(1, 6), (1, 7)]));
        assert_eq!(
            indexes(recent.get(8, None)),
            Some(vec![(1, 8), (1, 9)]),
            "no end bound: up to the log's end"
        );
        assert_eq!(
            indexes(recent.get(9, Some(100))),
            Some(vec![(1, 9)]),
            "nothing exists past the run"
        );
        assert_eq!(indexes(recent.get(10, None)), Some(vec![]));
    }

    #[test]
    fn truncation_and_conflicting_appends_replace_the_tail() {
        let mut recent = Recent::new(1000);
        for i in 1..=5 {
            recent.appended(entry(1, i), 10);
        }
        recent.truncate_from(4);
        assert_eq!(
            indexes(recent.get(1, None)),
            Some(vec![(1, 1), (1, 2), (1, 3)])
        );
        // A new leader's entry at 3 without a truncation call first still wins.
        recent.appended(entry(2, 3), 10);
        assert_eq!(
            indexes(recent.get(1, None)),
            Some(vec![(1, 1), (1, 2), (2, 3)])
        );
        // A gap (entries written elsewhere, e.g. after a snapshot) restarts the run.
        recent.appended(entry(2, 10), 10);
        assert_eq!(indexes(recent.get(3, None)), None);
        assert_eq!(indexes(recent.get(10, None)), Some(vec![(2, 10)]));
        assert_eq!(recent.bytes, 10);
    }

    #[test]
    fn purges_and_the_budget_drop_the_oldest_entries() {
        let mut recent = Recent::new(30);
        for i in 1..=5 {
            recent.appended(entry(1, i), 10);
        }
        assert_eq!(indexes(recent.get(2, None)), None, "over budget: 3 kept");
        assert_eq!(
            indexes(recent.get(3, None)),
            Some(vec![(1, 3), (1, 4), (1, 5)])
        );
        recent.purge_through(4);
        assert_eq!(indexes(recent.get(4, None)), None);
        assert_eq!(indexes(recent.get(5, None)), Some(vec![(1, 5)]));
        assert_eq!(recent.bytes, 10);
        recent.purge_through(9);
        assert_eq!(indexes(recent.get(5, None)), None);
        assert_eq!(recent.bytes, 0);
    }
}
