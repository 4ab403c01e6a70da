//! Resident pages of one process (the resident lens): which stack first
//! touched each page, until the page is unmapped, discarded or moved.

use std::collections::BTreeMap;

use super::StackId;

pub const PAGE: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub stack: StackId,
    pub ts: u64,
    /// False once excluded as warm-up (or copied into a forked child).
    pub counted: bool,
}

/// Pages by address (page-aligned).
#[derive(Clone, Debug, Default)]
pub struct ResidentPages {
    pages: BTreeMap<u64, Page>,
}

impl ResidentPages {
    /// Records a first touch; false when the page was already resident.
    pub fn touch(&mut self, addr: u64, page: Page) -> bool {
        let addr = addr & !(PAGE - 1);
        match self.pages.entry(addr) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(page);
                true
            }
        }
    }

    /// Removes and returns the pages in `start..end`, in the time of those
    /// pages (splitting the map and appending it back would take the time
    /// of all the process's pages, at every unmap).
    pub fn remove(&mut self, start: u64, end: u64) -> Vec<(u64, Page)> {
        if start >= end {
            return Vec::new();
        }
        let addrs: Vec<u64> = self.pages.range(start..end).map(|(addr, _)| *addr).collect();
        addrs.into_iter().filter_map(|addr| Some((addr, self.pages.remove(&addr)?))).collect()
    }

    /// Moves the pages of `old..old + len` to start at `new` (mremap);
    /// returns what the move displaced at the destination.
    pub fn relocate(&mut self, old: u64, len: u64, new: u64) -> Vec<(u64, Page)> {
        let moved = self.remove(old, old.saturating_add(len));
        let displaced = self.remove(new, new.saturating_add(len));
        for (addr, page) in moved {
            self.pages.insert(addr - old + new, page);
        }
        displaced
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Page)> {
        self.pages.iter()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Page> {
        self.pages.values_mut()
    }

    pub fn drain(&mut self) -> Vec<(u64, Page)> {
        std::mem::take(&mut self.pages).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(stack: StackId) -> Page {
        Page { stack, ts: 0, counted: true }
    }

    #[test]
    fn a_page_is_touched_first_once() {
        let mut r = ResidentPages::default();
        assert!(r.touch(0x1234, page(1)));
        assert!(!r.touch(0x1000, page(2)), "same page");
        assert_eq!(r.iter().next(), Some((&0x1000, &page(1))));
    }

    #[test]
    fn removal_takes_exactly_the_range() {
        let mut r = ResidentPages::default();
        for i in 0..10 {
            r.touch(i * PAGE, page(i as StackId));
        }
        let gone: Vec<u64> = r.remove(2 * PAGE, 5 * PAGE).into_iter().map(|(a, _)| a).collect();
        assert_eq!(gone, [2 * PAGE, 3 * PAGE, 4 * PAGE]);
        assert_eq!(r.iter().count(), 7);
        assert!(r.remove(5 * PAGE, 5 * PAGE).is_empty());
    }

    #[test]
    fn relocation_keeps_stacks_and_displaces_the_destination() {
        let mut r = ResidentPages::default();
        r.touch(0, page(1));
        r.touch(PAGE, page(2));
        r.touch(0x10_0000, page(9));
        let displaced = r.relocate(0, 2 * PAGE, 0x10_0000);
        assert_eq!(displaced, [(0x10_0000, page(9))]);
        let now: Vec<(u64, StackId)> = r.iter().map(|(a, p)| (*a, p.stack)).collect();
        assert_eq!(now, [(0x10_0000, 1), (0x10_1000, 2)]);
    }
}
