//! The slab's index: slot numbers by the table hash of their fingerprints,
//! in one or more hashbrown tables ("parts").
//!
//! Why parts: a hashbrown table has a power-of-two number of buckets and is
//! full at 7/8, so one sized for n entries is between 44% and 87.5% full, and
//! one that grows is half full after each doubling: at 50 million orders the
//! index was a quarter of the state (docs/performance.md). `K` parts of 2^b
//! buckets each come within about 1/32 of the buckets n needs for some `K` ≤
//! [`MAX_PARTS`]. The part is picked by bits 32..48 of the hash: hashbrown
//! takes a bucket from the low bits and its tags from the top seven, so
//! within a part both stay as random as in one table.
//!
//! The index starts as one part. Sized ([`Index::try_reserve`]), it takes the
//! parts closest to the size asked; full, it grows by half, not by double,
//! into the parts closest to that: it stays between about 56% (56.5% at
//! worst in its unit test) and 87.5% full, and every growth moves every
//! entry once, as a doubling does.

use hashbrown::hash_table::{AbsentEntry, Entry, OccupiedEntry};
use hashbrown::{HashTable, TryReserveError};

/// Parts of an index, at most: enough for a 32nd (see above).
const MAX_PARTS: usize = 64;

#[derive(Debug)]
pub(super) struct Index {
    parts: Vec<HashTable<u32>>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            parts: vec![HashTable::new()],
        }
    }
}

impl Index {
    fn part(&self, hash: u64) -> usize {
        ((((hash >> 32) & 0xFFFF) * self.parts.len() as u64) >> 16) as usize
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(HashTable::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(HashTable::is_empty)
    }

    pub fn allocation_size(&self) -> usize {
        self.parts.iter().map(HashTable::allocation_size).sum()
    }

    pub fn find(&self, hash: u64, eq: impl FnMut(&u32) -> bool) -> Option<&u32> {
        self.parts[self.part(hash)].find(hash, eq)
    }

    /// `hash`'s entry. A full part grows the index by half first (whether
    /// the entry is new or not: the next new one would grow it anyway), so
    /// that hashbrown never doubles a part.
    pub fn entry(
        &mut self,
        hash: u64,
        eq: impl FnMut(&u32) -> bool,
        hasher: impl Fn(&u32) -> u64,
    ) -> Entry<'_, u32> {
        let mut p = self.part(hash);
        if self.parts[p].len() == self.parts[p].capacity() {
            // Refused memory: the part then doubles on insert, as one table did.
            let _ = self.try_reserve(self.len() / 2 + 1, &hasher);
            p = self.part(hash);
        }
        self.parts[p].entry(hash, eq, hasher)
    }

    pub fn find_entry(
        &mut self,
        hash: u64,
        eq: impl FnMut(&u32) -> bool,
    ) -> Result<OccupiedEntry<'_, u32>, AbsentEntry<'_, u32>> {
        let p = self.part(hash);
        self.parts[p].find_entry(hash, eq)
    }

    /// Room for `additional` more entries without growing, in the parts that
    /// come closest to it. Changing the number of parts moves every entry
    /// once, as one table's doubling would.
    pub fn try_reserve(
        &mut self,
        additional: usize,
        hasher: impl Fn(&u32) -> u64,
    ) -> Result<(), TryReserveError> {
        let total = self.len().saturating_add(additional);
        if self
            .parts
            .iter()
            .all(|p| p.capacity() >= per_part(total, self.parts.len()))
        {
            return Ok(());
        }
        let parts = plan(total);
        let cap = per_part(total, parts);
        if parts == self.parts.len() {
            for p in &mut self.parts {
                p.try_reserve(cap.saturating_sub(p.len()), &hasher)?;
            }
            return Ok(());
        }
        let mut new = Index {
            parts: Vec::with_capacity(parts),
        };
        for _ in 0..parts {
            let mut p = HashTable::new();
            p.try_reserve(cap, &hasher)?;
            new.parts.push(p);
        }
        for old in std::mem::take(&mut self.parts) {
            for slot in old {
                let h = hasher(&slot);
                let p = new.part(h);
                new.parts[p].insert_unique(h, slot, &hasher);
            }
        }
        *self = new;
        Ok(())
    }
}

/// Entries one of `parts` parts must hold for `total` in all: the parts
/// fill unevenly (by about the square root of their share), so a margin.
fn per_part(total: usize, parts: usize) -> usize {
    (total + total / 128).div_ceil(parts) + 64
}

/// The number of parts whose buckets, all told, are fewest for `total`.
fn plan(total: usize) -> usize {
    (1..=MAX_PARTS)
        .min_by_key(|&k| k * buckets(per_part(total, k)))
        .expect("at least one part")
}

/// Buckets of a hashbrown table with room for `cap` (its rule: full at 7/8,
/// a power of two).
fn buckets(cap: usize) -> usize {
    (cap.saturating_mul(8) / 7).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(slot: u32) -> u64 {
        // A fixed mix: the test sees the same layout every run.
        u64::from(slot)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29)
    }

    /// Sized for n, the index is within an eighth of n's buckets (one table
    /// is up to twice that), every entry stays findable through a change of
    /// parts, and filling it to n grows no part.
    #[test]
    fn sized_parts_come_close_and_keep_every_entry() {
        for n in [50_000usize, 300_000, 1_100_000] {
            let mut ix = Index::default();
            // Some entries before the sizing: they move to the new parts.
            for s in 0..(n / 10) as u32 {
                ix.entry(hash(s), |&t| t == s, |&t| hash(t)).insert(s);
            }
            ix.try_reserve(n - n / 10, |&t| hash(t)).unwrap();
            let sized = ix.allocation_size();
            let ideal = n * 8 / 7 * 5;
            assert!(
                sized <= ideal + ideal / 8 + ix.parts.len() * 5 * (64 + n / 128),
                "{n}: {sized} bytes in {} parts, ideal {ideal}",
                ix.parts.len()
            );
            for s in (n / 10) as u32..n as u32 {
                match ix.entry(hash(s), |&t| t == s, |&t| hash(t)) {
                    Entry::Vacant(e) => {
                        e.insert(s);
                    }
                    Entry::Occupied(_) => panic!("{s} found before it was put"),
                }
            }
            assert_eq!(ix.allocation_size(), sized, "{n}: a part grew");
            assert_eq!(ix.len(), n);
            for s in 0..n as u32 {
                assert_eq!(ix.find(hash(s), |&t| t == s), Some(&s));
            }
            ix.find_entry(hash(7), |&t| t == 7).unwrap().remove();
            assert_eq!(ix.find(hash(7), |&t| t == 7), None);
            assert_eq!(ix.len(), n - 1);
        }
    }

    /// Never sized, the index grows by half into new parts: at every size
    /// on the way it is at least 55% full (a doubling table falls to 44%),
    /// every entry stays findable, and a reserve it has room for changes nothing.
    #[test]
    fn growing_stays_more_than_half_full() {
        let mut ix = Index::default();
        let mut emptiest = 1.0f64;
        for s in 0..1_000_000u32 {
            ix.entry(hash(s), |&t| t == s, |&t| hash(t)).insert(s);
            let buckets: usize = ix.parts.iter().map(|p| buckets(p.capacity())).sum();
            if s > 100_000 {
                emptiest = emptiest.min(f64::from(s + 1) / buckets as f64);
            }
        }
        assert!(emptiest > 0.55, "{emptiest}");
        assert!(ix.parts.len() > 1);
        for s in (0..1_000_000u32).step_by(7) {
            assert_eq!(ix.find(hash(s), |&t| t == s), Some(&s));
        }
        let (parts, before) = (ix.parts.len(), ix.allocation_size());
        ix.try_reserve(0, |&t| hash(t)).unwrap();
        assert_eq!((ix.parts.len(), ix.allocation_size()), (parts, before));
    }
}
