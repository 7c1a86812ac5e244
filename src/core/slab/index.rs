//! The slab's index: slot numbers by the table hash of their fingerprints, in
//! lines of one cache line each.
//!
//! Why its own table, not hashbrown's: a hashbrown table keeps its tags and
//! its slots apart, so a look-up that finds its id misses the cache twice
//! before it reaches the entry, an insert twice too (docs/performance.md). Here a
//! line of 64 bytes holds 12 one-byte tags and the 12 slot numbers they stand
//! for: one miss, and an address known from the hash alone, so the loop can
//! ask for a line before it needs it ([`Index::prefetch`]).
//!
//! A hash's home line is picked by its low 32 bits scaled to the number of
//! lines (any number: the index is sized to what it holds, within a line),
//! its tag by its top 8. A full line sends an insert to the next one, and
//! counts it (`overflow`, as folly's F14 does): a look-up goes on past a line
//! only while that count is not zero, and a removal takes its count back, so
//! nothing is left behind as a tombstone. The index is full at 7/8 and then grows
//! by half, filled anew from the slab's entries (`try_reserve`): between about
//! 58% and 87.5% full.

/// Slots in a line.
const WIDTH: usize = 12;

/// One cache line: 12 tags (0: empty), the overflow count, 3 bytes unused,
/// and the 12 slot numbers.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line {
    ctrl: [u8; 16],
    slots: [u32; WIDTH],
}

/// `ctrl[OVERFLOW]`: how many entries were sent past this line (saturating:
/// at 255 it stays, and look-ups always go on).
const OVERFLOW: usize = WIDTH;

impl Line {
    /// Bit `i` set where tag `i` is `tag` (`0`: where empty).
    #[inline]
    fn matches(&self, tag: u8) -> u32 {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{
                _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
            };
            // SAFETY: SSE2 is part of x86_64; the load reads the 16 bytes of `ctrl`.
            let m = unsafe {
                let ctrl = _mm_loadu_si128(self.ctrl.as_ptr().cast());
                _mm_movemask_epi8(_mm_cmpeq_epi8(ctrl, _mm_set1_epi8(tag as i8)))
            };
            m as u32 & ((1 << WIDTH) - 1)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            (0..WIDTH).fold(0, |m, i| m | u32::from(self.ctrl[i] == tag) << i)
        }
    }

    fn overflow(&self) -> u8 {
        self.ctrl[OVERFLOW]
    }
}

fn tag(hash: u64) -> u8 {
    ((hash >> 56) as u8).max(1)
}

#[derive(Debug, Default)]
pub(super) struct Index {
    lines: Vec<Line>,
    len: usize,
}

impl Index {
    fn home(&self, hash: u64) -> usize {
        (((hash & 0xFFFF_FFFF) * self.lines.len() as u64) >> 32) as usize
    }

    fn next(&self, line: usize) -> usize {
        if line + 1 == self.lines.len() {
            0
        } else {
            line + 1
        }
    }

    /// Entries the index holds before it grows.
    fn capacity(&self) -> usize {
        self.lines.len() * WIDTH * 7 / 8
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn allocation_size(&self) -> usize {
        self.lines.capacity() * std::mem::size_of::<Line>()
    }

    /// Asks the CPU for `hash`'s home line, for a look-up a few records on.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if self.lines.is_empty() {
            return;
        }
        super::prefetch((&raw const self.lines[self.home(hash)]).cast());
    }

    /// Asks the CPU for what each slot whose tag matches `hash`'s, in its
    /// home line, points to (`prefetch_slot`). The line should be in cache
    /// already ([`Index::prefetch`]); nothing here waits for an entry, as
    /// telling the right one apart would.
    #[inline]
    pub fn prefetch_matches(&self, hash: u64, prefetch_slot: impl Fn(u32)) {
        if self.lines.is_empty() {
            return;
        }
        let line = &self.lines[self.home(hash)];
        let mut m = line.matches(tag(hash));
        while m != 0 {
            prefetch_slot(line.slots[m.trailing_zeros() as usize]);
            m &= m - 1;
        }
    }

    /// The slot under `hash` for which `eq` holds.
    pub fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.lines.is_empty() {
            return None;
        }
        let tag = tag(hash);
        let mut l = self.home(hash);
        for _ in 0..self.lines.len() {
            let line = &self.lines[l];
            let mut m = line.matches(tag);
            while m != 0 {
                let slot = line.slots[m.trailing_zeros() as usize];
                if eq(slot) {
                    return Some(slot);
                }
                m &= m - 1;
            }
            if line.overflow() == 0 {
                return None;
            }
            l = self.next(l);
        }
        None
    }

    /// Adds `slot` under `hash`; it must not be there. A full index grows by
    /// half first, from `held`: every (hash, slot) it holds, `slot` not among them.
    pub fn insert<I: Iterator<Item = (u64, u32)>>(
        &mut self,
        hash: u64,
        slot: u32,
        held: impl FnOnce() -> I,
    ) {
        if self.len >= self.capacity() {
            let more = (self.len / 2).max(WIDTH * 4);
            // Refused, it stops the process as a `Vec` that cannot grow does.
            if let Err(e) = self.try_reserve(more, held) {
                panic!("the index of {} ids cannot grow: {e}", self.len);
            }
        }
        self.put(hash, slot);
    }

    fn put(&mut self, hash: u64, slot: u32) {
        let mut l = self.home(hash);
        loop {
            let line = &mut self.lines[l];
            let empty = line.matches(0);
            if empty != 0 {
                let i = empty.trailing_zeros() as usize;
                line.ctrl[i] = tag(hash);
                line.slots[i] = slot;
                self.len += 1;
                return;
            }
            line.ctrl[OVERFLOW] = line.ctrl[OVERFLOW].saturating_add(1);
            l = self.next(l);
        }
    }

    /// Takes `slot` out from under `hash`; false if it was not there.
    pub fn remove(&mut self, hash: u64, slot: u32) -> bool {
        if self.lines.is_empty() {
            return false;
        }
        let tag = tag(hash);
        let home = self.home(hash);
        let mut l = home;
        for _ in 0..self.lines.len() {
            let line = &mut self.lines[l];
            let mut m = line.matches(tag);
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                if line.slots[i] == slot {
                    line.ctrl[i] = 0;
                    self.len -= 1;
                    // The lines it was sent past count it no more.
                    let mut p = home;
                    while p != l {
                        let o = &mut self.lines[p].ctrl[OVERFLOW];
                        if *o != u8::MAX {
                            *o -= 1;
                        }
                        p = self.next(p);
                    }
                    return true;
                }
                m &= m - 1;
            }
            if line.overflow() == 0 {
                return false;
            }
            l = self.next(l);
        }
        false
    }

    /// Room for `additional` more entries without growing; refused memory
    /// leaves the index as it was. Grown, it is filled anew from `held`: every
    /// (hash, slot) it holds. From the slab, in slot order, not from the old
    /// lines: reaching each slot's entry for its hash from the lines was a
    /// cache miss a slot, a third of the inserts' time (docs/performance.md);
    /// the slab is read in order.
    pub fn try_reserve<I: Iterator<Item = (u64, u32)>>(
        &mut self,
        additional: usize,
        held: impl FnOnce() -> I,
    ) -> Result<(), std::collections::TryReserveError> {
        let total = self.len.saturating_add(additional);
        if total <= self.capacity() {
            return Ok(());
        }
        // Lines for `total` at 7/8 full.
        let lines = (total * 8).div_ceil(7 * WIDTH);
        let mut fresh: Vec<Line> = Vec::new();
        fresh.try_reserve_exact(lines)?;
        fresh.resize(lines, Line::default());
        let len = std::mem::replace(&mut self.len, 0);
        self.lines = fresh;
        // Each put is to a line anywhere in the fresh index, out of cache
        // once it outgrows it: the line is asked for `AHEAD` puts before.
        const AHEAD: usize = 16;
        let mut ring = [(0u64, 0u32); AHEAD];
        let mut n = 0;
        for (hash, slot) in held() {
            self.prefetch(hash);
            let next = std::mem::replace(&mut ring[n % AHEAD], (hash, slot));
            if n >= AHEAD {
                self.put(next.0, next.1);
            }
            n += 1;
        }
        for k in n.saturating_sub(AHEAD)..n {
            let (hash, slot) = ring[k % AHEAD];
            self.put(hash, slot);
        }
        assert_eq!(
            self.len, len,
            "the index grew from other entries than it held"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn hash(slot: u32) -> u64 {
        // A fixed mix: the test sees the same layout every run.
        u64::from(slot)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29)
    }

    /// What the index holds when it holds `slots`, for its growth.
    fn held(slots: std::ops::Range<u32>) -> impl Iterator<Item = (u64, u32)> {
        slots.map(|s| (hash(s), s))
    }

    /// A growth puts every entry it holds, however few: fewer than the puts
    /// its lines are asked for ahead of, as many, and more.
    #[test]
    fn a_growth_keeps_every_entry_whatever_their_number() {
        for k in 0..=40u32 {
            let mut ix = Index::default();
            ix.try_reserve(k as usize, std::iter::empty).unwrap();
            for s in 0..k {
                ix.insert(hash(s), s, || held(0..s));
            }
            let before = ix.allocation_size();
            ix.try_reserve(10_000, || held(0..k)).unwrap();
            assert!(ix.allocation_size() > before, "{k}: it did not grow");
            assert_eq!(ix.len(), k as usize);
            for s in 0..k {
                assert_eq!(ix.find(hash(s), |t| t == s), Some(s), "{k}: {s}");
            }
        }
    }

    /// Sized for n, the index takes the lines n needs at 7/8 full and no
    /// more, keeps every entry through the resize, and filling it to n grows
    /// nothing.
    #[test]
    fn sized_it_comes_within_a_line_and_keeps_every_entry() {
        for n in [50_000usize, 300_000, 1_100_000] {
            let mut ix = Index::default();
            // Some entries before the sizing: they move to the new lines.
            for s in 0..(n / 10) as u32 {
                ix.insert(hash(s), s, || held(0..s));
            }
            ix.try_reserve(n - n / 10, || held(0..(n / 10) as u32))
                .unwrap();
            let sized = ix.allocation_size();
            let ideal = n * 8 / 7 * 64 / WIDTH;
            assert!(sized <= ideal + 64, "{n}: {sized} bytes, ideal {ideal}");
            for s in (n / 10) as u32..n as u32 {
                assert_eq!(ix.find(hash(s), |t| t == s), None, "{s} before it was put");
                ix.insert(hash(s), s, || held(0..s));
            }
            assert_eq!(ix.allocation_size(), sized, "{n}: it grew");
            assert_eq!(ix.len(), n);
            for s in 0..n as u32 {
                assert_eq!(ix.find(hash(s), |t| t == s), Some(s));
            }
            assert!(ix.remove(hash(7), 7));
            assert!(!ix.remove(hash(7), 7));
            assert_eq!(ix.find(hash(7), |t| t == 7), None);
            assert_eq!(ix.len(), n - 1);
        }
    }

    /// Never sized, the index grows by half: at every size on the way it is
    /// more than 55% full (a doubling table falls to 44%), every entry stays
    /// findable, and a reserve it has room for changes nothing.
    #[test]
    fn growing_stays_more_than_half_full() {
        let mut ix = Index::default();
        let mut emptiest = 1.0f64;
        for s in 0..1_000_000u32 {
            ix.insert(hash(s), s, || held(0..s));
            if s > 100_000 {
                let slots = ix.lines.len() * WIDTH;
                emptiest = emptiest.min(f64::from(s + 1) / slots as f64);
            }
        }
        assert!(emptiest > 0.55, "{emptiest}");
        for s in (0..1_000_000u32).step_by(7) {
            assert_eq!(ix.find(hash(s), |t| t == s), Some(s));
        }
        let before = ix.allocation_size();
        ix.try_reserve(0, || held(0..1_000_000)).unwrap();
        assert_eq!(ix.allocation_size(), before);
    }

    /// Inserts and removals at random, against a map, with hashes that pile
    /// up on a few lines (long overflow runs, wrapping past the last line,
    /// counts that saturate) and with good ones: every look-up answers as the
    /// map does, and removals leave nothing that stops a look-up short.
    #[test]
    fn runs_of_full_lines_answer_as_a_map_does() {
        for piled in [true, false] {
            // Tags from 2 values and homes on the last 4 of 64 lines, or spread.
            let h = |s: u32| {
                if piled {
                    ((u64::from(s % 2) + 1) << 57) | (0xF000_0000 + u64::from(s % 4) * 0x400_0000)
                } else {
                    hash(s)
                }
            };
            let mut ix = Index::default();
            ix.try_reserve(64 * WIDTH * 7 / 8, std::iter::empty)
                .unwrap();
            let mut model: HashMap<u32, ()> = HashMap::new();
            let mut state = 0x2545_F491_4F6C_DD1Du64;
            for _ in 0..200_000 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let s = (state % 1_500) as u32;
                if state >> 63 == 0 && model.len() < 600 {
                    if !model.contains_key(&s) {
                        ix.insert(h(s), s, || model.keys().map(|&t| (h(t), t)));
                        model.insert(s, ());
                    }
                } else {
                    assert_eq!(ix.remove(h(s), s), model.remove(&s).is_some(), "{s}");
                }
                let probe = ((state >> 20) % 1_500) as u32;
                assert_eq!(
                    ix.find(h(probe), |t| t == probe),
                    model.contains_key(&probe).then_some(probe),
                    "{probe}"
                );
            }
            assert_eq!(ix.len(), model.len());
            for &s in model.keys() {
                assert_eq!(ix.find(h(s), |t| t == s), Some(s));
            }
        }
    }
}
