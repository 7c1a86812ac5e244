//! State kept by id (orders, payment and delivery ids), with the ids changed
//! since the last commit listed for the changelog.
//!
//! Entries live in a slab, found through a table of slot indices: the table
//! (5 bytes an entry) stays in cache far more than a map of whole entries,
//! recent ids (those the next events look up) sit together at the slab's end,
//! and a commit reaches each changed entry by its index instead of looking its
//! id up again. That look-up, cold, was a fifth of the job's loop
//! (docs/performance.md).

use compact_str::CompactString;

#[derive(Debug, Default)]
struct Entry<T> {
    /// Empty in a free slot.
    id: CompactString,
    value: T,
}

/// What [`IdSlab::retain`] does with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Keep,
    /// Kept, and changed: written at the next drain.
    Changed,
    /// Forgotten: handed out as removed at the next drain.
    Remove,
}

#[derive(Debug, Default)]
pub struct IdSlab<T> {
    entries: Vec<Entry<T>>,
    /// Indices of free slots, reused first.
    free: Vec<u32>,
    /// Slot indices, by the hash of their id.
    index: hashbrown::HashTable<u32>,
    hasher: ahash::RandomState,
    /// `None` until tracking starts (for a changelog).
    changes: Option<Changes>,
}

/// What changed since the last drain.
#[derive(Debug, Default)]
struct Changes {
    /// Slots changed. A slot freed and taken again may be listed twice: its
    /// bit in `listed` has it written once.
    slots: Vec<u32>,
    /// One bit per slot: set while listed in `slots` (a bit, not a flag in the
    /// entry: it keeps an order's entry within one cache line).
    listed: Vec<u64>,
    /// Ids forgotten: handed out as removed, unless made anew since.
    removed: Vec<CompactString>,
}

impl Changes {
    fn bit(&mut self, i: u32) -> (&mut u64, u64) {
        let word = i as usize / 64;
        if word >= self.listed.len() {
            self.listed.resize(word + 1, 0);
        }
        (&mut self.listed[word], 1 << (i % 64))
    }
}

impl<T: Default> IdSlab<T> {
    /// Starts listing changes, for a changelog.
    pub fn track_changes(&mut self) {
        self.changes.get_or_insert_with(Changes::default);
    }

    /// Makes room for `n` ids at once; false if the memory was refused. The
    /// room is faulted in on a thread of its own, so the kernel's zeroing of
    /// fresh pages (slow on virtual machines) leaves the loop.
    pub fn reserve(&mut self, n: usize) -> bool {
        let (entries, hasher) = (&self.entries, &self.hasher);
        let reserved = self
            .index
            .try_reserve(n, |&i| hasher.hash_one(entries[i as usize].id.as_str()))
            .is_ok()
            && self.entries.try_reserve(n).is_ok();
        if reserved {
            let spare = self.entries.spare_capacity_mut();
            prefault(spare.as_ptr() as usize, std::mem::size_of_val(spare));
        }
        reserved
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The slot of `id`, if it has one.
    pub fn find(&self, id: &str) -> Option<u32> {
        let entries = &self.entries;
        self.index
            .find(self.hasher.hash_one(id), |&i| entries[i as usize].id == id)
            .copied()
    }

    /// The slot of `id`, made (with the default value) if there is none; true when made.
    pub fn slot_of(&mut self, id: &str) -> (u32, bool) {
        let (entries, hasher) = (&self.entries, &self.hasher);
        let entry = self.index.entry(
            hasher.hash_one(id),
            |&i| entries[i as usize].id == id,
            |&i| hasher.hash_one(entries[i as usize].id.as_str()),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(e) => (*e.get(), false),
            hashbrown::hash_table::Entry::Vacant(e) => {
                let i = self.free.pop().unwrap_or_else(|| {
                    self.entries.push(Entry::default());
                    u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 slots")
                });
                self.entries[i as usize].id = id.into();
                e.insert(i);
                (i, true)
            }
        }
    }

    pub fn get(&self, i: u32) -> &T {
        &self.entries[i as usize].value
    }

    pub fn get_mut(&mut self, i: u32) -> &mut T {
        &mut self.entries[i as usize].value
    }

    /// Lists slot `i` as changed (when tracking), unless it is listed already.
    pub fn mark(&mut self, i: u32) {
        if let Some(c) = &mut self.changes {
            let (word, bit) = c.bit(i);
            if *word & bit == 0 {
                *word |= bit;
                c.slots.push(i);
            }
        }
    }

    /// Frees slot `i`: its id is forgotten (handed out as removed, when tracking).
    /// Lists `id` as changed: its entry, or (absent) its removal.
    pub fn touch(&mut self, id: &str) {
        match self.find(id) {
            Some(i) => self.mark(i),
            None => {
                if let Some(c) = &mut self.changes {
                    c.removed.push(id.into());
                }
            }
        }
    }

    pub fn remove(&mut self, i: u32) {
        let hash = self.hasher.hash_one(self.entries[i as usize].id.as_str());
        if let Ok(e) = self.index.find_entry(hash, |&j| j == i) {
            e.remove();
        }
        let entry = std::mem::take(&mut self.entries[i as usize]);
        if let Some(c) = &mut self.changes {
            let (word, bit) = c.bit(i);
            *word &= !bit;
            c.removed.push(entry.id);
        }
        self.free.push(i);
    }

    /// Visits every id: `f` says whether it stays as it is, changed, or goes.
    pub fn retain(&mut self, mut f: impl FnMut(&str, &mut T) -> Fate) {
        let (entries, free) = (&mut self.entries, &mut self.free);
        let mut changes = self.changes.as_mut();
        self.index.retain(|&mut i| {
            let e = &mut entries[i as usize];
            let fate = f(&e.id, &mut e.value);
            if let Some(c) = changes.as_deref_mut() {
                let (word, bit) = c.bit(i);
                match fate {
                    Fate::Keep => {}
                    Fate::Changed if *word & bit == 0 => {
                        *word |= bit;
                        c.slots.push(i);
                    }
                    Fate::Changed => {}
                    Fate::Remove => {
                        *word &= !bit;
                        c.removed.push(std::mem::take(&mut e.id));
                    }
                }
            }
            if fate == Fate::Remove {
                *e = Entry::default();
                free.push(i);
            }
            fate != Fate::Remove
        });
    }

    /// Each id changed since the last call, once, with its value now (`None`:
    /// forgotten). The lists keep their capacity: regrowing them every commit
    /// faulted in fresh pages each time.
    pub fn drain_changes(&mut self, mut f: impl FnMut(&str, Option<&T>)) {
        let Some(mut c) = self.changes.take() else {
            return;
        };
        for id in c.removed.drain(..) {
            // Made anew since: listed as changed, and written with its value below.
            if self.find(&id).is_none() {
                f(&id, None);
            }
        }
        for &i in &c.slots {
            // Listed slots have their bit's word: marking made it.
            let (word, bit) = (&mut c.listed[i as usize / 64], 1 << (i % 64));
            if *word & bit != 0 {
                *word &= !bit;
                let e = &self.entries[i as usize];
                f(&e.id, Some(&e.value));
            }
        }
        c.slots.clear();
        self.changes = Some(c);
    }
}

/// Has the kernel fault in the pages of `len` bytes from `addr` for writing, on
/// a thread of its own. `MADV_POPULATE_WRITE` maps zeroed pages where none are
/// and changes no byte of memory, so it is sound whatever the memory holds or
/// whoever writes it meanwhile, and harmless if the block is freed before it
/// ends (the call then fails, and nothing depends on it).
fn prefault(addr: usize, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = addr.next_multiple_of(PAGE);
        let end = (addr + len) / PAGE * PAGE;
        if end <= start {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("gmv-prefault".into())
            .spawn(move || {
                // SAFETY: madvise reads and writes no memory of ours; see above.
                unsafe {
                    libc::madvise(
                        start as *mut libc::c_void,
                        end - start,
                        libc::MADV_POPULATE_WRITE,
                    )
                };
            });
        // Without the thread the pages are faulted in as they are first written.
        drop(spawned);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (addr, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(s: &mut IdSlab<i64>) -> Vec<(String, Option<i64>)> {
        let mut out = vec![];
        s.drain_changes(|id, v| out.push((id.to_string(), v.copied())));
        out.sort();
        out
    }

    #[test]
    fn changes_drain_once_each_with_the_value_at_the_drain() {
        let mut s = IdSlab::<i64>::default();
        let (a, made) = s.slot_of("a");
        assert!(made);
        s.mark(a);
        s.track_changes();
        assert!(
            drained(&mut s).is_empty(),
            "changes before tracking are not listed"
        );
        assert_eq!(s.slot_of("a"), (a, false));
        *s.get_mut(a) = 1;
        s.mark(a);
        *s.get_mut(a) = 2;
        s.mark(a);
        let (b, _) = s.slot_of("b");
        s.mark(b);
        assert_eq!(
            drained(&mut s),
            vec![("a".into(), Some(2)), ("b".into(), Some(0))]
        );
        assert!(drained(&mut s).is_empty(), "each change is drained once");
        // b goes and its slot is taken by c in the same interval; a goes and comes back.
        s.mark(b);
        s.remove(b);
        let (c, _) = s.slot_of("c");
        assert_eq!(c, b, "a free slot is reused");
        *s.get_mut(c) = 3;
        s.mark(c);
        s.remove(a);
        let (a2, _) = s.slot_of("a");
        *s.get_mut(a2) = 4;
        s.mark(a2);
        assert_eq!(
            drained(&mut s),
            vec![
                ("a".into(), Some(4)),
                ("b".into(), None),
                ("c".into(), Some(3))
            ]
        );
        assert_eq!((s.find("b"), s.len()), (None, 2));
    }

    #[test]
    fn retain_keeps_changes_and_lists_removals() {
        let mut s = IdSlab::<i64>::default();
        s.track_changes();
        for (id, v) in [("x", 1), ("y", 2), ("z", 3)] {
            let (i, _) = s.slot_of(id);
            *s.get_mut(i) = v;
        }
        s.retain(|id, v| match id {
            "x" => Fate::Keep,
            "y" => {
                *v = 20;
                Fate::Changed
            }
            _ => Fate::Remove,
        });
        assert_eq!(
            drained(&mut s),
            vec![("y".into(), Some(20)), ("z".into(), None)]
        );
        assert_eq!((s.len(), s.find("z")), (2, None));
        assert_eq!(*s.get(s.find("x").unwrap()), 1);
    }
}
