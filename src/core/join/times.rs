//! Event times in four bytes, for entries kept by the million: milliseconds
//! above a base that each sweep moves up to its limit, so the 49 days above
//! it cover every time a task holds. A time outside them (a backfill while
//! another partition holds the watermark back, or before the first sweep) is
//! kept whole in a side map by slot. Against six-byte absolute times this
//! saves 4 bytes an order and 2 an id (docs/performance.md).

use crate::core::FastMap;

/// The code of `i64::MAX` ("none": no order, no paid payment yet).
const NONE: u32 = u32::MAX;
/// The code of a time kept in the side map.
const FAR: u32 = u32::MAX - 1;

/// A time's four bytes, 2-aligned (an entry with a fingerprint takes no padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Code([u16; 2]);

impl Default for Code {
    fn default() -> Self {
        Code::of(NONE)
    }
}

impl Code {
    fn of(v: u32) -> Self {
        Code([v as u16, (v >> 16) as u16])
    }

    fn get(self) -> u32 {
        u32::from(self.0[0]) | u32::from(self.0[1]) << 16
    }

    pub fn is_none(self) -> bool {
        self.get() == NONE
    }
}

/// The base and the far times of one field of a slab's entries.
#[derive(Debug, Default)]
pub(super) struct Times {
    /// Set by the first time coded; moved by [`Times::rebase`].
    base: Option<i64>,
    far: FastMap<u32, i64>,
    /// A rebase under way: the slots from the first number on are still
    /// coded in these times (a sweep walks the slab a step per tick, in slot
    /// order, and recodes each slot it passes).
    before: Option<(u32, Box<Times>)>,
}

impl Times {
    /// The times slot `slot` is coded in: these, or those before the rebase
    /// under way, if the sweep has not passed it yet.
    fn of(&self, slot: u32) -> &Times {
        match &self.before {
            Some((from, old)) if slot >= *from => old,
            _ => self,
        }
    }

    fn of_mut(&mut self, slot: u32) -> &mut Times {
        if self.before.as_ref().is_some_and(|(from, _)| slot >= *from) {
            return &mut self.before.as_mut().expect("checked").1;
        }
        self
    }

    /// Codes `ts` for slot `slot`, replacing what the slot had.
    pub fn code(&mut self, slot: u32, ts: i64) -> Code {
        self.of_mut(slot).code_here(slot, ts)
    }

    fn code_here(&mut self, slot: u32, ts: i64) -> Code {
        self.forget_here(slot);
        if ts == i64::MAX {
            return Code::of(NONE);
        }
        // Before any sweep: the first time in the middle of the range.
        let base = *self.base.get_or_insert(ts.saturating_sub(1 << 31));
        match ts.checked_sub(base) {
            Some(r) if (0..i64::from(FAR)).contains(&r) => Code::of(r as u32),
            _ => {
                self.far.insert(slot, ts);
                Code::of(FAR)
            }
        }
    }

    /// The time slot `slot`'s code stands for.
    pub fn time(&self, slot: u32, code: Code) -> i64 {
        let t = self.of(slot);
        match code.get() {
            NONE => i64::MAX,
            FAR => t.far[&slot],
            r => t.base.expect("a time was coded") + i64::from(r),
        }
    }

    /// Slot `slot` is freed (or recoded).
    pub fn forget(&mut self, slot: u32) {
        self.of_mut(slot).forget_here(slot);
    }

    fn forget_here(&mut self, slot: u32) {
        if !self.far.is_empty() {
            self.far.remove(&slot);
        }
    }

    /// Starts coding at `base`: a sweep at its limit, which then recodes
    /// every slot it keeps (none below the limit) as it passes it
    /// ([`Times::recode`]), and ends with [`Times::rebased`]. Until then a
    /// slot not passed yet is coded at the old base. With TTLs over 49 days
    /// the newest times would be kept whole: exact, but in the side map.
    pub fn rebase(&mut self, base: i64) {
        assert!(self.before.is_none(), "one rebase at a time");
        let old = std::mem::take(self);
        *self = Times {
            base: Some(base),
            far: FastMap::default(),
            before: Some((0, Box::new(old))),
        };
    }

    /// The rebase under way, if one is: its base (the sweep's limit) and
    /// the first slot not passed yet. The sweep's own state: nothing else
    /// keeps it.
    pub fn under_way(&self) -> Option<(i64, u32)> {
        let (from, _) = self.before.as_ref()?;
        Some((self.base.expect("set by the rebase"), *from))
    }

    /// Slot `slot`'s `code`, from the old base to the new: the sweep passes it.
    pub fn recode(&mut self, slot: u32, code: Code) -> Code {
        let ts = self.time(slot, code);
        self.forget(slot);
        self.passed(slot + 1);
        self.code_here(slot, ts)
    }

    /// The sweep has passed every slot before `next`.
    pub fn passed(&mut self, next: u32) {
        if let Some((from, _)) = &mut self.before {
            *from = next;
        }
    }

    /// The sweep has passed every slot: the old base is gone.
    pub fn rebased(&mut self) {
        self.before = None;
    }

    /// Bytes of the side maps.
    pub fn heap_bytes(&self) -> usize {
        self.far.allocation_size() + self.before.as_ref().map_or(0, |(_, t)| t.heap_bytes())
    }

    /// Times kept whole.
    #[cfg(test)]
    pub fn far_len(&self) -> usize {
        self.far.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every time comes back whole: near the base, at the range's ends, far
    /// below and above it (kept apart), and `i64::MAX`; a recode or a rebase
    /// leaves no far time behind.
    #[test]
    fn times_come_back_whole() {
        let mut t = Times::default();
        let first = 1_762_790_400_000i64; // 2025-11-10
        let cases = [
            first,
            first + 1,
            first - (1 << 31),
            first - (1 << 31) - 1,
            first + (1i64 << 31) - 3,
            first + (1i64 << 31) - 2,
            946_684_800_000,
            9_000_000_000_000,
            i64::MAX,
        ];
        let codes: Vec<Code> = cases
            .iter()
            .enumerate()
            .map(|(s, &ts)| t.code(s as u32, ts))
            .collect();
        for (s, (&ts, &c)) in cases.iter().zip(&codes).enumerate() {
            assert_eq!(t.time(s as u32, c), ts, "{ts}");
        }
        assert_eq!(
            t.far_len(),
            4,
            "the two just outside the range, 2000 and 2255"
        );
        assert!(codes[8].is_none() && !codes[0].is_none());
        // Recoding a slot in range drops its far time.
        let c = t.code(6, first);
        assert_eq!((t.time(6, c), t.far_len()), (first, 3));
        // A sweep at `first`: kept times recoded from the old into the new,
        // slot by slot; a slot not passed yet is still read (and written) at
        // the old base.
        let mut codes: Vec<Code> = cases
            .iter()
            .enumerate()
            .map(|(s, &ts)| t.code(s as u32, ts))
            .collect();
        t.rebase(first);
        for s in 1..cases.len() {
            let slot = s as u32;
            codes[s] = t.recode(slot, codes[s]);
            assert_eq!(t.under_way(), Some((first, slot + 1)));
            for (k, (&ts, &c)) in cases.iter().zip(&codes).enumerate().skip(1) {
                assert_eq!(t.time(k as u32, c), ts, "slot {k} with {s} recoded");
            }
        }
        let c = t.code(cases.len() as u32, first + 5);
        assert_eq!(
            t.time(cases.len() as u32, c),
            first + 5,
            "a slot not passed"
        );
        t.passed(cases.len() as u32 + 1);
        t.rebased();
        assert_eq!(t.under_way(), None);
        for (s, (&ts, &c)) in cases.iter().zip(&codes).enumerate().skip(1) {
            assert_eq!(t.time(s as u32, c), ts);
        }
        assert_eq!(t.far_len(), 4, "below the new base: 3; 2255: 1");
    }
}
