//! Address-interval accounting for mappings (`mmap`, `mremap`, `brk`): a map
//! of disjoint half-open ranges, each carrying a value, where removing any
//! sub-range splits the pieces that straddle it. V8 trims its reservations
//! with partial `munmap`s, so exact-start matching is not enough.

use std::collections::BTreeMap;

/// One stored range `[start, end)` and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece<V> {
    pub start: u64,
    pub end: u64,
    pub value: V,
}

impl<V> Piece<V> {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Disjoint ranges keyed by start address.
#[derive(Debug)]
pub struct IntervalMap<V> {
    ranges: BTreeMap<u64, (u64, V)>,
}

impl<V> Default for IntervalMap<V> {
    fn default() -> Self {
        Self { ranges: BTreeMap::new() }
    }
}

impl<V: Clone> IntervalMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes `[start, end)`, splitting straddling ranges, and returns the
    /// removed parts (clipped to the requested range), in address order.
    pub fn remove(&mut self, start: u64, end: u64) -> Vec<Piece<V>> {
        let mut removed = Vec::new();
        if start >= end {
            return removed;
        }
        // A range starting before `start` may straddle it.
        let first = self.ranges.range(..start).next_back().filter(|(_, (e, _))| *e > start).map(|(s, _)| *s);
        let keys: Vec<u64> =
            first.into_iter().chain(self.ranges.range(start..end).map(|(s, _)| *s)).collect();
        for s in keys {
            let (e, value) = self.ranges.remove(&s).expect("key just listed");
            if s < start {
                self.ranges.insert(s, (start, value.clone()));
            }
            if e > end {
                self.ranges.insert(end, (e, value.clone()));
            }
            removed.push(Piece { start: s.max(start), end: e.min(end), value });
        }
        removed
    }

    /// Inserts `[start, end)`, replacing whatever overlapped it (returned).
    pub fn insert(&mut self, start: u64, end: u64, value: V) -> Vec<Piece<V>> {
        let replaced = self.remove(start, end);
        if start < end {
            self.ranges.insert(start, (end, value));
        }
        replaced
    }

    pub fn iter(&self) -> impl Iterator<Item = Piece<&V>> {
        self.ranges.iter().map(|(s, (e, v))| Piece { start: *s, end: *e, value: v })
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = Piece<&mut V>> {
        self.ranges.iter_mut().map(|(s, (e, v))| Piece { start: *s, end: *e, value: v })
    }

    pub fn total_len(&self) -> u64 {
        self.ranges.iter().map(|(s, (e, _))| e - s).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(m: &IntervalMap<char>) -> Vec<(u64, u64, char)> {
        m.iter().map(|p| (p.start, p.end, *p.value)).collect()
    }

    #[test]
    fn partial_unmap_in_the_middle_splits_the_range() {
        let mut m = IntervalMap::new();
        m.insert(0x1000, 0x5000, 'a');
        let removed = m.remove(0x2000, 0x3000);
        assert_eq!(removed, vec![Piece { start: 0x2000, end: 0x3000, value: 'a' }]);
        assert_eq!(spans(&m), vec![(0x1000, 0x2000, 'a'), (0x3000, 0x5000, 'a')]);
        assert_eq!(m.total_len(), 0x3000);
    }

    #[test]
    fn partial_unmap_at_either_end() {
        let mut m = IntervalMap::new();
        m.insert(0x1000, 0x5000, 'a');
        m.remove(0x1000, 0x2000);
        m.remove(0x4000, 0x6000);
        assert_eq!(spans(&m), vec![(0x2000, 0x4000, 'a')]);
    }

    #[test]
    fn unmap_spanning_several_ranges_and_gaps() {
        let mut m = IntervalMap::new();
        m.insert(0x1000, 0x2000, 'a');
        m.insert(0x3000, 0x4000, 'b');
        m.insert(0x5000, 0x6000, 'c');
        let removed = m.remove(0x1800, 0x5800);
        let lens: u64 = removed.iter().map(Piece::len).sum();
        assert_eq!(lens, 0x800 + 0x1000 + 0x800);
        assert_eq!(spans(&m), vec![(0x1000, 0x1800, 'a'), (0x5800, 0x6000, 'c')]);
    }

    #[test]
    fn unmap_of_untracked_range_removes_nothing() {
        let mut m = IntervalMap::new();
        m.insert(0x1000, 0x2000, 'a');
        assert!(m.remove(0x3000, 0x4000).is_empty());
        assert!(m.remove(0x2000, 0x2000).is_empty());
        assert_eq!(m.total_len(), 0x1000);
    }

    #[test]
    fn insert_over_existing_replaces_overlap() {
        let mut m = IntervalMap::new();
        m.insert(0x1000, 0x4000, 'a');
        let replaced = m.insert(0x2000, 0x3000, 'b');
        assert_eq!(replaced.len(), 1);
        assert_eq!(spans(&m), vec![(0x1000, 0x2000, 'a'), (0x2000, 0x3000, 'b'), (0x3000, 0x4000, 'a')]);
    }
}
