//! State kept by id (orders, payment and delivery ids), with the ids changed
//! since the last commit listed for the changelog.
//!
//! Entries live in a slab, found through a table of slot indices: the table
//! (5⅓ bytes a bucket, `slab/index.rs`) stays in cache far more than a map of
//! whole entries, recent ids (those the next events look up) sit together at the slab's end,
//! and a commit reaches each changed entry by its index instead of looking its
//! id up again. That look-up, cold, was a fifth of the job's loop
//! (docs/performance.md).
//!
//! An entry keeps its id as an 80-bit fingerprint, not as the id's bytes (10
//! bytes, not 24 and a heap block past 24; docs/performance.md, "Memory per
//! open order"). The fingerprint is a keyed hash with keys drawn at random per
//! process, so no producer can aim two ids at one fingerprint; two of the
//! ids a task holds share one by chance with a probability of about n²/2⁸¹
//! (10⁻⁹ for 50 million: far below a machine's memory errors; 2 bytes less
//! an entry than 96 bits, 4.6 an open order at 50 million). The table's own hash
//! is 64 bits of it: ids whose table hashes collide are told apart by the
//! other 16 (tested below).
//! The ids themselves are not kept: the changelog writes fingerprints too,
//! and a restore takes the keys they were made with from it ([`Seeds`]).

mod chunks;
mod index;

use chunks::{prefault, Chunks};
use index::Index;

/// An id's fingerprint. Five `u16`s: 2-aligned, so an entry whose value is
/// 2-aligned too takes no padding (an order's entry is 28 bytes, an id's 14).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u16; 5]);

impl Fingerprint {
    /// A free slot's: `Keys::of` never gives it.
    const FREE: Fingerprint = Fingerprint([0; 5]);

    fn new(table: u64, check: u16) -> Self {
        let t = |k: u32| (table >> (16 * k)) as u16;
        Fingerprint([t(0), t(1), t(2), t(3), check])
    }

    /// The table's hash: the first 64 bits.
    fn table(self) -> u64 {
        self.0[..4]
            .iter()
            .rev()
            .fold(0, |acc, &w| acc << 16 | u64::from(w))
    }

    /// Its 10 bytes, as the changelog writes them.
    pub fn to_bytes(self) -> [u8; 10] {
        let mut b = [0; 10];
        for (k, w) in self.0.iter().enumerate() {
            b[2 * k..2 * k + 2].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// Back from [`Fingerprint::to_bytes`]; `None` for a free slot's, which no id has.
    pub fn from_bytes(b: [u8; 10]) -> Option<Self> {
        let fp = Fingerprint(std::array::from_fn(|k| {
            u16::from_le_bytes([b[2 * k], b[2 * k + 1]])
        }));
        (fp != Fingerprint::FREE).then_some(fp)
    }
}

/// The keys of a slab's fingerprints, drawn at random when it is made. Kept
/// in the changelog, so that the fingerprints it writes mean the same ids
/// to the process that restores them.
pub type Seeds = [u64; 8];

fn random_seeds() -> Seeds {
    use std::hash::BuildHasher;
    // Std's hasher keys come from the operating system's random source.
    let s = std::collections::hash_map::RandomState::new();
    std::array::from_fn(|i| s.hash_one(i))
}

/// The keyed hash behind fingerprints.
#[derive(Debug)]
struct Keys {
    seeds: Seeds,
    table: ahash::RandomState,
    check: ahash::RandomState,
    /// Tests only: keeps 4 bits of the table's hash, so that ids collide in it.
    #[cfg(test)]
    weak: bool,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(random_seeds())
    }
}

impl Keys {
    fn new(seeds: Seeds) -> Self {
        let [a, b, c, d, e, f, g, h] = seeds;
        Keys {
            seeds,
            table: ahash::RandomState::with_seeds(a, b, c, d),
            check: ahash::RandomState::with_seeds(e, f, g, h),
            #[cfg(test)]
            weak: false,
        }
    }

    /// The table's hash of `id`: [`Fingerprint::table`] of [`Keys::of`]. Of
    /// its bytes, so that a hint can hash a record's key as it comes.
    fn table_of(&self, id: &[u8]) -> u64 {
        let table = self.table.hash_one(id);
        #[cfg(test)]
        let table = if self.weak { table & 0xF } else { table };
        table
    }

    fn of(&self, id: &str) -> Fingerprint {
        let id = id.as_bytes();
        let table = self.table_of(id);
        let fp = Fingerprint::new(table, self.check.hash_one(id) as u16);
        // Merges two of 2⁸⁰ fingerprints into one, so that a free slot is known by its own.
        if fp == Fingerprint::FREE {
            return Fingerprint::new(0, 1);
        }
        fp
    }
}

/// A free slot's entry is the default: `Fingerprint::FREE` and the default value.
#[derive(Debug, Default)]
struct Entry<T> {
    id: Fingerprint,
    value: T,
}

#[derive(Debug, Default)]
pub struct IdSlab<T> {
    entries: Chunks<T>,
    /// Indices of free slots, reused first.
    free: Vec<u32>,
    /// Slot indices, by the table hash of their fingerprint.
    index: Index,
    keys: Keys,
    /// `None` until tracking starts (for a changelog).
    changes: Option<Changes>,
}

/// What changed since the last drain.
#[derive(Debug, Default)]
struct Changes {
    /// Slots changed, with the fingerprint each held then. A slot freed and
    /// taken again may be listed twice: its bit in `listed` and the
    /// fingerprint have it written once, under its id now.
    slots: Vec<(u32, Fingerprint)>,
    /// One bit per slot: set while listed in `slots` (a bit, not a flag in the
    /// entry: it keeps an order's entry small).
    listed: Vec<u64>,
    /// Ids forgotten: handed out as removed, unless made anew since.
    removed: Vec<Fingerprint>,
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

impl<T> IdSlab<T> {
    /// Bytes of one entry (the fingerprint and the value).
    pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry<T>>();
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
        let entries = &self.entries;
        if self.index.try_reserve(n, || entries.held()).is_err() {
            return false;
        }
        match self.entries.try_reserve(n) {
            Some(fresh) => {
                prefault(fresh);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes held: the slab and the table (not the changes of one interval).
    pub fn heap_bytes(&self) -> usize {
        self.entries.heap_bytes() + self.free.capacity() * 4 + self.index.allocation_size()
    }

    /// `id`'s fingerprint in this slab.
    pub fn fingerprint(&self, id: &str) -> Fingerprint {
        self.keys.of(id)
    }

    /// The fingerprint slot `i` holds.
    pub fn fingerprint_at(&self, i: u32) -> Fingerprint {
        self.entries[i as usize].id
    }

    /// The keys of this slab's fingerprints, for the changelog.
    pub fn seeds(&self) -> Seeds {
        self.keys.seeds
    }

    /// Takes the keys a changelog's fingerprints were made with (restore),
    /// before it holds any id; false, unchanged, if it holds some.
    pub fn set_seeds(&mut self, seeds: Seeds) -> bool {
        if !self.is_empty() {
            return false;
        }
        self.keys = Keys::new(seeds);
        true
    }

    pub fn find_fp(&self, fp: Fingerprint) -> Option<u32> {
        let entries = &self.entries;
        self.index
            .find(fp.table(), |i| entries[i as usize].id == fp)
    }

    /// The slot of `id`, if it has one.
    pub fn find(&self, id: &str) -> Option<u32> {
        self.find_fp(self.keys.of(id))
    }

    /// The slot of `id`, made (with the default value) if there is none; true when made.
    pub fn slot_of(&mut self, id: &str) -> (u32, bool) {
        self.slot_of_fp(self.keys.of(id))
    }

    /// [`IdSlab::slot_of`] by fingerprint.
    pub fn slot_of_fp(&mut self, fp: Fingerprint) -> (u32, bool) {
        if let Some(i) = self.find_fp(fp) {
            return (i, false);
        }
        let i = self.free.pop().unwrap_or_else(|| {
            self.entries.push(Entry::default());
            u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 slots")
        });
        // The next new id's slot, asked for now: a free one lies anywhere in
        // the slab (the end's lines are asked for by `Chunks::push`).
        if let Some(&next) = self.free.last() {
            self.prefetch_slot(next);
        }
        // Into the index before the entry holds its id: were the index to
        // grow, it would be filled from the entries held, and then hold `i` twice.
        let entries = &self.entries;
        self.index.insert(fp.table(), i, || entries.held());
        self.entries[i as usize].id = fp;
        (i, true)
    }

    /// Asks the CPU for `id`'s entry, if it has one, a record or two before
    /// it is looked up ([`IdSlab::prefetch`] asked for its line of the index
    /// earlier still). Every entry its tag matches, without comparing
    /// fingerprints: comparing waited for the entry, a cache miss that was a
    /// tenth of the job's loop (docs/performance.md).
    pub fn prefetch_entry(&self, id: &[u8]) {
        self.index
            .prefetch_matches(self.keys.table_of(id), |i| self.prefetch_slot(i));
    }

    /// Visits `slots` (slot, fingerprint it held) in order, at commit. The
    /// entries are spread over the slab (a payment's order may be hours old)
    /// and long out of cache by then: each visit asks for the entry
    /// `DRAIN_AHEAD` on, so the misses overlap (docs/performance.md).
    pub fn visit_listed(&self, slots: &[(u32, Fingerprint)], mut f: impl FnMut(u32, Fingerprint)) {
        const DRAIN_AHEAD: usize = 8;
        for &(j, _) in slots.iter().take(DRAIN_AHEAD) {
            self.prefetch_slot(j);
        }
        for (k, &(i, fp)) in slots.iter().enumerate() {
            if let Some(&(j, _)) = slots.get(k + DRAIN_AHEAD) {
                self.prefetch_slot(j);
            }
            f(i, fp);
        }
    }

    /// Asks the CPU for slot `i`'s entry.
    fn prefetch_slot(&self, i: u32) {
        prefetch((&raw const self.entries[i as usize]).cast());
    }

    /// Asks the CPU for where `id` would be looked up, a few records before it is.
    pub fn prefetch(&self, id: &[u8]) {
        self.index.prefetch(self.keys.table_of(id));
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
                c.slots.push((i, self.entries[i as usize].id));
            }
        }
    }

    /// Whether slot `i` is listed as changed (`None`: changes are not tracked).
    pub fn listed(&self, i: u32) -> Option<bool> {
        let c = self.changes.as_ref()?;
        let word = c.listed.get(i as usize / 64).copied().unwrap_or(0);
        Some(word & (1 << (i % 64)) != 0)
    }

    /// Lists the id of `fp` as changed: its entry, or (absent) its removal.
    pub fn touch(&mut self, fp: Fingerprint) {
        match self.find_fp(fp) {
            Some(i) => self.mark(i),
            None => {
                if let Some(c) = &mut self.changes {
                    c.removed.push(fp);
                }
            }
        }
    }

    /// Frees slot `i`: handed out as removed, when tracking.
    pub fn remove(&mut self, i: u32) {
        let fp = self.entries[i as usize].id;
        self.free_slot(i);
        if let Some(c) = &mut self.changes {
            c.removed.push(fp);
        }
    }

    fn free_slot(&mut self, i: u32) {
        let fp = self.entries[i as usize].id;
        self.index.remove(fp.table(), i);
        debug_assert!(fp != Fingerprint::FREE, "slot {i} freed twice");
        self.entries[i as usize] = Entry::default();
        if let Some(c) = &mut self.changes {
            let (word, bit) = c.bit(i);
            *word &= !bit;
        }
        self.free.push(i);
    }

    /// Visits the entries of up to `count` slots from slot `from` on, with
    /// their slots: `f` says whether each stays. Returns the first slot not
    /// visited, or `None` if that is the end of the slab. An entry dropped here
    /// is not handed out as removed: the attribution task's sweeps drop this
    /// way, and a restore sweeps again.
    ///
    /// In slot order, through the slab, not through the index: the index
    /// holds slots in no order, and reaching each entry from it cost a cache
    /// miss an entry (a sweep of 28 million entries stalled the loop for
    /// seconds, docs/performance.md). Only a dropped entry is looked up in the
    /// index, to take it out.
    pub fn retain(
        &mut self,
        from: u32,
        count: usize,
        mut f: impl FnMut(u32, &mut T) -> bool,
    ) -> Option<u32> {
        let end = self
            .entries
            .len()
            .min((from as usize).saturating_add(count));
        for i in from as usize..end {
            let e = &mut self.entries[i];
            if e.id == Fingerprint::FREE {
                continue;
            }
            let i = i as u32;
            if !f(i, &mut e.value) {
                self.free_slot(i);
            }
        }
        (end < self.entries.len()).then_some(end as u32)
    }

    /// Each id changed since the last call, once, with its slot and value now
    /// (`None`: forgotten). The lists keep their capacity: regrowing them every
    /// commit faulted in fresh pages each time.
    pub fn drain_changes(&mut self, mut f: impl FnMut(Fingerprint, Option<(u32, &T)>)) {
        let Some(mut c) = self.changes.take() else {
            return;
        };
        for fp in c.removed.drain(..) {
            // Made anew since: listed as changed, and written with its value below.
            if self.find_fp(fp).is_none() {
                f(fp, None);
            }
        }
        let Changes { slots, listed, .. } = &mut c;
        self.visit_listed(slots, |i, fp| {
            // Listed slots have their bit's word: marking made it.
            let (word, bit) = (&mut listed[i as usize / 64], 1 << (i % 64));
            let e = &self.entries[i as usize];
            // The slot may since hold another id, listed after this one.
            if *word & bit != 0 && e.id == fp {
                *word &= !bit;
                f(fp, Some((i, &e.value)));
            }
        });
        slots.clear();
        self.changes = Some(c);
    }
}

/// A hint that the cache line at `p` is read soon.
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a hint; it reads nothing, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(s: &mut IdSlab<i64>) -> Vec<(Fingerprint, Option<i64>)> {
        let mut out = vec![];
        s.drain_changes(|fp, v| out.push((fp, v.map(|(_, v)| *v))));
        out.sort();
        out
    }

    /// What [`drained`] hands out for these ids and values, in its order.
    fn expect(s: &IdSlab<i64>, ids: &[(&str, Option<i64>)]) -> Vec<(Fingerprint, Option<i64>)> {
        let mut out: Vec<_> = ids.iter().map(|(id, v)| (s.fingerprint(id), *v)).collect();
        out.sort();
        out
    }

    /// A hint hashes a record's key bytes as a look-up hashes the id: it asks
    /// for the line the look-up reads.
    #[test]
    fn a_hint_hashes_the_key_as_a_look_up_does() {
        let k = Keys::default();
        for id in ["o-1", "", "订单-7", &"x".repeat(300)] {
            assert_eq!(k.table_of(id.as_bytes()), k.of(id).table(), "{id}");
        }
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
            expect(&s, &[("a", Some(2)), ("b", Some(0))])
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
            expect(&s, &[("a", Some(4)), ("b", None), ("c", Some(3))])
        );
        assert_eq!((s.find("b"), s.len()), (None, 2));
    }

    #[test]
    fn retain_keeps_changes_and_drops_silently() {
        let mut s = IdSlab::<i64>::default();
        s.track_changes();
        for (id, v) in [("x", 1), ("y", 2), ("z", 3)] {
            let (i, _) = s.slot_of(id);
            *s.get_mut(i) = v;
            s.mark(i);
        }
        drained(&mut s);
        s.mark(s.find("z").unwrap());
        let mut changed = vec![];
        let end = s.retain(0, usize::MAX, |i, v| match *v {
            1 => true,
            2 => {
                *v = 20;
                changed.push(i);
                true
            }
            _ => false,
        });
        assert_eq!(end, None, "the whole slab in one walk");
        assert_eq!(
            changed,
            vec![s.find("y").unwrap()],
            "retain hands out each entry's slot"
        );
        s.mark(changed[0]);
        assert_eq!(
            drained(&mut s),
            expect(&s, &[("y", Some(20))]),
            "z was listed, then dropped by retain: not written, and not as removed"
        );
        assert_eq!((s.len(), s.find("z")), (2, None));
        assert_eq!(*s.get(s.find("x").unwrap()), 1);
    }

    /// `retain` walks the slab in slot order, in steps that resume where the
    /// last stopped: it visits each live entry once, never a free slot, and
    /// an entry it drops is gone from the index and its slot taken again.
    #[test]
    fn retain_visits_live_entries_once_and_skips_free_slots() {
        let mut s = IdSlab::<i64>::default();
        for n in 0..1_000 {
            let (i, _) = s.slot_of(&format!("o-{n}"));
            *s.get_mut(i) = n;
        }
        for n in (0..1_000).step_by(3) {
            let id = format!("o-{n}");
            s.remove(s.find(&id).unwrap());
        }
        let (mut seen, mut steps, mut from) = (Vec::new(), 0, Some(0));
        while let Some(f) = from {
            from = s.retain(f, 7, |i, v| {
                seen.push(i);
                *v % 2 == 0
            });
            steps += 1;
        }
        assert_eq!(steps, 1_000usize.div_ceil(7));
        let live: Vec<u32> = (0..1_000).filter(|n| n % 3 != 0).collect();
        assert_eq!(seen, live, "each live slot once, in order");
        for n in 0..1_000i64 {
            let kept = n % 3 != 0 && n % 2 == 0;
            assert_eq!(
                s.find(&format!("o-{n}")).map(|i| *s.get(i)),
                kept.then_some(n)
            );
        }
        assert_eq!(
            s.len(),
            (0..1_000).filter(|n| n % 3 != 0 && n % 2 == 0).count()
        );
        let (i, made) = s.slot_of("new");
        assert!(made && i < 1_000, "a freed slot is taken again");
    }

    /// The index grows from the slab's entries, not from its old lines: ids
    /// made through many growths, with free slots among them (some taken
    /// again, one taken by the very id whose insert grows the index), and a
    /// reserve past the index's room, are all found with their values, and
    /// the removed ones are not. (A growth that put an entry twice, or missed
    /// one, fails the index's count of what it held.)
    #[test]
    fn the_index_grows_from_the_slab_with_its_free_slots() {
        let mut s = IdSlab::<i64>::default();
        let mut live = std::collections::BTreeMap::new();
        for n in 0..60_000i64 {
            let id = format!("o-{n}");
            let (i, made) = s.slot_of(&id);
            assert!(made, "{id}");
            *s.get_mut(i) = n;
            live.insert(id, n);
            if n % 5 == 4 {
                let gone = format!("o-{}", n - 3);
                s.remove(s.find(&gone).unwrap());
                live.remove(&gone);
            }
            if n == 30_000 {
                assert!(s.reserve(100_000));
            }
        }
        assert_eq!(s.len(), live.len());
        for n in 0..60_000i64 {
            let id = format!("o-{n}");
            assert_eq!(
                s.find(&id).map(|i| *s.get(i)),
                live.get(&id).copied(),
                "{id}"
            );
        }
    }

    /// The table's hash comes back whole from the four halves it is kept in,
    /// and the check's bits are kept apart from it.
    #[test]
    fn a_fingerprint_keeps_its_table_hash_and_check() {
        for (t, c) in [
            (0, 0),
            (u64::MAX, 0),
            (0x0123_4567_89ab_cdef, 0xba98),
            (1 << 63, 1),
        ] {
            let fp = Fingerprint::new(t, c);
            assert_eq!(fp.table(), t);
            assert_eq!(fp.0[4], c);
            assert_ne!(
                fp,
                Fingerprint::new(t, c ^ 1 << 15),
                "the check's high bit counts"
            );
        }
    }

    /// A fingerprint comes back from its bytes; a free slot's names no id.
    /// A slab given another's keys gives its ids the same fingerprints (a
    /// restore reads the changelog's so), and takes keys only while empty.
    #[test]
    fn fingerprints_travel_as_bytes_under_the_keys_they_were_made_with() {
        let mut a = IdSlab::<i64>::default();
        let mut b = IdSlab::<i64>::default();
        let fp = a.fingerprint("o-1");
        assert_eq!(Fingerprint::from_bytes(fp.to_bytes()), Some(fp));
        assert_eq!(Fingerprint::from_bytes([0; 10]), None);
        assert_ne!(b.fingerprint("o-1"), fp, "keys drawn at random");
        assert!(b.set_seeds(a.seeds()));
        assert_eq!(b.fingerprint("o-1"), fp);
        let (i, _) = b.slot_of_fp(fp);
        assert_eq!((b.find("o-1"), b.fingerprint_at(i)), (Some(i), fp));
        assert!(
            !b.set_seeds(IdSlab::<i64>::default().seeds()),
            "b holds an id"
        );
        assert_eq!(b.find("o-1"), Some(i), "its keys unchanged");
        a.slot_of("o-2");
        assert!(!a.set_seeds(b.seeds()));
    }

    /// Ids whose table hashes collide (4 bits of it kept) are told apart by
    /// the rest of their fingerprints: found, changed and removed one by one.
    #[test]
    fn ids_colliding_in_the_table_stay_apart() {
        let mut s = IdSlab::<i64> {
            keys: Keys {
                weak: true,
                ..Keys::default()
            },
            ..IdSlab::default()
        };
        s.track_changes();
        // With 4 + 16 bits, 2,000 ids would share a whole fingerprint now and
        // then (about twice a run): such a pair is one id to the slab, so the
        // test keeps the first of each.
        let mut seen = std::collections::HashSet::new();
        let ids: Vec<String> = (0..4_000)
            .map(|n| format!("o-{n}"))
            .filter(|id| seen.insert(s.keys.of(id)))
            .take(2_000)
            .collect();
        assert_eq!(ids.len(), 2_000);
        for (n, id) in ids.iter().enumerate() {
            let (i, made) = s.slot_of(id);
            assert!(made, "{id} is new");
            *s.get_mut(i) = n as i64;
            s.mark(i);
        }
        assert_eq!(s.len(), ids.len());
        assert!(s.entries.iter().map(|e| e.id.table()).all(|h| h < 16));
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(*s.get(s.find(id).unwrap()), n as i64, "{id}");
        }
        assert_eq!(drained(&mut s).len(), ids.len());
        for id in ids.iter().step_by(2) {
            let i = s.find(id).unwrap();
            s.remove(i);
        }
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(
                s.find(id).map(|i| *s.get(i)),
                (n % 2 == 1).then_some(n as i64)
            );
        }
        let out = drained(&mut s);
        assert_eq!(out.len(), 1_000);
        assert!(out.iter().all(|(_, v)| v.is_none()));
        assert_eq!(s.slot_of(&ids[1]), (s.find(&ids[1]).unwrap(), false));
    }
}
