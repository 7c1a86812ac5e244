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
    /// Set by the first time coded; moved by [`Times::rebased`].
    base: Option<i64>,
    far: FastMap<u32, i64>,
}

impl Times {
    /// Codes `ts` for slot `slot`, replacing what the slot had.
    pub fn code(&mut self, slot: u32, ts: i64) -> Code {
        self.forget(slot);
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
        match code.get() {
            NONE => i64::MAX,
            FAR => self.far[&slot],
            r => self.base.expect("a time was coded") + i64::from(r),
        }
    }

    /// Slot `slot` is freed (or recoded).
    pub fn forget(&mut self, slot: u32) {
        if !self.far.is_empty() {
            self.far.remove(&slot);
        }
    }

    /// New, empty times based at `base`: a sweep at its limit recodes every
    /// entry it keeps (none below the limit) into them (`time` from the old,
    /// `code` into the new). With TTLs over 49 days the newest times would be
    /// kept whole: exact, but in the side map.
    pub fn rebased(base: i64) -> Self {
        Times {
            base: Some(base),
            far: FastMap::default(),
        }
    }

    /// Slot `slot`'s `code` in `old`, coded again here (a sweep's recoding).
    pub fn recode(&mut self, old: &Times, slot: u32, code: Code) -> Code {
        self.code(slot, old.time(slot, code))
    }

    /// Bytes of the side map.
    pub fn heap_bytes(&self) -> usize {
        self.far.allocation_size()
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
        // A sweep at `first`: kept times recoded from the old into the new.
        let mut new = Times::rebased(first);
        for (s, &ts) in cases.iter().enumerate().skip(1) {
            let s = s as u32;
            let old = t.code(s, ts);
            let c = new.recode(&t, s, old);
            assert_eq!(new.time(s, c), ts);
        }
        assert_eq!(new.far_len(), 4, "below the new base: 3; 2255: 1");
    }
}
