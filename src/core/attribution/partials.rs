//! Partial sums per dimension key and 1-second bucket, between two commits.
//!
//! Most events fall in the latest few seconds, so the sums of a recent bucket
//! sit in a dense array indexed by the key's id: an add is an index, not a
//! hash and a probe. A hash map held them all until the fourteenth session:
//! `perf` put 40% of its adds' time on the first read of the entry, a miss in
//! a table of every bucket of the commit spread over a megabyte
//! (docs/performance.md). The map stays for what the arrays do not hold: a
//! bucket older than the one in its place in the ring, ids past
//! [`DENSE_IDS`] (so memory stays bounded with any number of names), and
//! adds that would overflow an array's sum.

use super::super::milestone::BUCKET_MS;
use super::super::output::Dim;
use super::super::state::Delta;
use super::super::FastMap;

/// Buckets held densely: a ring of this many seconds, each in the place of
/// its second modulo the ring. Wider than the spread of event times in a
/// commit (`max_out_of_orderness`), so that an older bucket rarely finds its
/// place taken by a newer one.
const RING: usize = 32;
/// Ids per dimension held densely (the first names seen, the most popular
/// under a skewed popularity). Bounds the arrays at `RING` × 3 × this many
/// keys of 36 bytes (14 MB) whatever the input. A multiple of 64.
const DENSE_IDS: usize = 4_096;

/// What a payment or delivery adds once attributed.
#[derive(Debug, Clone, Copy)]
pub(super) enum Contribution {
    Paid(i64),
    Refund(i64),
    Placed,
    Shipped,
    Delivered,
}

impl Contribution {
    /// Adds to a sum of the map, which cannot overflow ([`Arrays::add`] is
    /// the arrays', which can).
    fn add_to(self, d: &mut Delta) {
        match self {
            Contribution::Paid(fen) => {
                d.gmv_fen += fen as i128;
                d.paid_orders += 1;
            }
            Contribution::Refund(fen) => d.refund_fen += fen as i128,
            Contribution::Placed => d.placed_orders += 1,
            Contribution::Shipped => d.shipped_orders += 1,
            Contribution::Delivered => d.delivered_orders += 1,
        }
    }
}

/// A partial sum's key: (dimension, name id in `Names`, bucket start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PartialKey(pub(crate) Dim, pub(crate) u32, pub(crate) i64);

/// Hashed as one 128-bit word: one step of the hasher, where the fields
/// one by one took three.
impl std::hash::Hash for PartialKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u128((self.0 as u128) << 96 | u128::from(self.1) << 64 | self.2 as u64 as u128);
    }
}

/// One dimension's sums in one bucket, an array per kind of contribution,
/// indexed by key id. An add touches only its kind's array: an order's
/// count is 4 bytes a key, where the sums of every kind side by side (a
/// cell of 40 bytes) made most of an add's time the wait for its cell's
/// line (docs/performance.md). Within one bucket and one commit the sums
/// fit in 64 bits and the counts in 32; an add that would overflow goes to
/// the map instead ([`Bucket::add`]).
#[derive(Debug, Default)]
struct Arrays {
    /// A bit per key id: set once the key has an add since it was last taken.
    touched: Vec<u64>,
    placed: Vec<u32>,
    paid: Vec<Paid>,
    refund_fen: Vec<i64>,
    shipped: Vec<u32>,
    delivered: Vec<u32>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Paid {
    gmv_fen: i64,
    orders: u32,
}

impl Arrays {
    fn len(&self) -> usize {
        self.placed.len()
    }

    /// Room for ids below `n` (a multiple of 64).
    fn grow(&mut self, n: usize) {
        self.touched.resize(n / 64, 0);
        self.placed.resize(n, 0);
        self.paid.resize(n, Paid::default());
        self.refund_fen.resize(n, 0);
        self.shipped.resize(n, 0);
        self.delivered.resize(n, 0);
    }

    /// Adds `c` to key `i`, or returns false, unchanged, if a sum or count
    /// would overflow. Whether the key was touched before is the caller's.
    fn add(&mut self, i: usize, c: Contribution) -> bool {
        fn count(n: &mut u32) -> bool {
            n.checked_add(1).map(|v| *n = v).is_some()
        }
        match c {
            Contribution::Placed => count(&mut self.placed[i]),
            Contribution::Paid(fen) => {
                let p = &mut self.paid[i];
                match (p.gmv_fen.checked_add(fen), p.orders.checked_add(1)) {
                    (Some(gmv_fen), Some(orders)) => {
                        *p = Paid { gmv_fen, orders };
                        true
                    }
                    _ => false,
                }
            }
            Contribution::Refund(fen) => {
                let r = &mut self.refund_fen[i];
                r.checked_add(fen).map(|v| *r = v).is_some()
            }
            Contribution::Shipped => count(&mut self.shipped[i]),
            Contribution::Delivered => count(&mut self.delivered[i]),
        }
    }

    /// Key `i`'s sums, emptied.
    fn take(&mut self, i: usize) -> Delta {
        self.touched[i / 64] &= !(1 << (i % 64));
        let paid = std::mem::take(&mut self.paid[i]);
        Delta {
            gmv_fen: paid.gmv_fen.into(),
            refund_fen: std::mem::take(&mut self.refund_fen[i]).into(),
            paid_orders: paid.orders.into(),
            placed_orders: std::mem::take(&mut self.placed[i]).into(),
            shipped_orders: std::mem::take(&mut self.shipped[i]).into(),
            delivered_orders: std::mem::take(&mut self.delivered[i]).into(),
        }
    }
}

/// One place of the ring: the sums of one bucket, by dimension and key id.
#[derive(Debug)]
struct Bucket {
    /// Start of the bucket held (`i64::MIN`: none yet).
    start_ms: i64,
    dims: [Arrays; 4],
    /// Keys with an add since they were last taken, each once.
    touched: Vec<(Dim, u32)>,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            start_ms: i64::MIN,
            dims: Default::default(),
            touched: Vec::new(),
        }
    }
}

impl Bucket {
    /// Adds `c` to key `id` of `dim` in this bucket.
    fn add(&mut self, spilled: &mut Spilled, dim: Dim, id: u32, c: Contribution) {
        let a = &mut self.dims[dim.index()];
        let i = id as usize;
        if i >= a.len() {
            if i >= DENSE_IDS {
                return spill(spilled, PartialKey(dim, id, self.start_ms), c);
            }
            // Ids are given in order from 0: grow in steps, not one by one.
            a.grow((i + 1).next_power_of_two().clamp(64, DENSE_IDS));
        }
        let (word, bit) = (&mut a.touched[i / 64], 1 << (i % 64));
        if *word & bit == 0 {
            *word |= bit;
            self.touched.push((dim, id));
        }
        if !a.add(i, c) {
            // Full: this add goes to the map, beside the sums so far (`take` merges them).
            spill(spilled, PartialKey(dim, id, self.start_ms), c);
        }
    }

    /// Empties every touched key's sums into `f`, with its key.
    fn drain(&mut self, mut f: impl FnMut(PartialKey, Delta)) {
        for (dim, id) in self.touched.drain(..) {
            let delta = self.dims[dim.index()].take(id as usize);
            f(PartialKey(dim, id, self.start_ms), delta);
        }
    }
}

/// The partial sums since they were last taken.
#[derive(Debug)]
pub(crate) struct PartialSums {
    ring: Box<[Bucket]>,
    /// What the ring does not hold: a bucket whose place holds a later one
    /// (places only move on, so it never goes back), far ids, and adds that
    /// would overflow an array's sum.
    spilled: Spilled,
}

type Spilled = FastMap<PartialKey, Delta>;

impl Default for PartialSums {
    fn default() -> Self {
        PartialSums {
            ring: (0..RING).map(|_| Bucket::default()).collect(),
            spilled: FastMap::default(),
        }
    }
}

impl PartialSums {
    /// Adds `c` to each of `keys` (dimension, name id) in the bucket of `ts_ms`.
    pub(super) fn add(&mut self, ts_ms: i64, c: Contribution, keys: &[(Dim, u32)]) {
        let second = ts_ms.div_euclid(BUCKET_MS);
        let start_ms = second * BUCKET_MS;
        let b = &mut self.ring[second.rem_euclid(RING as i64) as usize];
        if b.start_ms != start_ms {
            if start_ms < b.start_ms {
                for &(dim, id) in keys {
                    spill(&mut self.spilled, PartialKey(dim, id, start_ms), c);
                }
                return;
            }
            // A later bucket takes the place: the earlier one's sums move to the map.
            b.drain(|k, d| self.spilled.entry(k).or_default().add(&d));
            b.start_ms = start_ms;
        }
        for &(dim, id) in keys {
            b.add(&mut self.spilled, dim, id, c);
        }
    }

    /// Takes every partial sum, in key order.
    pub(crate) fn take(&mut self) -> Vec<(PartialKey, Delta)> {
        let mut sums: Vec<_> = self.spilled.drain().collect();
        for b in self.ring.iter_mut() {
            b.drain(|k, d| sums.push((k, d)));
        }
        sums.sort_unstable_by_key(|&(k, _)| k);
        // A key whose add would have overflowed is in both (`Bucket::add`): one entry a key.
        sums.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1.add(&later.1);
            }
            same
        });
        sums
    }

    /// Partial sums held (a key may count twice, in the arrays and in the map).
    pub(crate) fn len(&self) -> usize {
        self.spilled.len() + self.ring.iter().map(|b| b.touched.len()).sum::<usize>()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every partial sum.
    pub(crate) fn clear(&mut self) {
        self.spilled.clear();
        for b in self.ring.iter_mut() {
            b.drain(|_, _| {});
        }
    }
}

fn spill(spilled: &mut Spilled, k: PartialKey, c: Contribution) {
    c.add_to(spilled.entry(k).or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_731_283_200_000;

    /// Contributions, each to some keys at a time.
    type Adds = [(i64, Contribution, Vec<(Dim, u32)>)];

    /// The sums the old map made: every contribution in a map by key.
    fn by_map(adds: &Adds) -> Vec<(PartialKey, Delta)> {
        let mut m: std::collections::BTreeMap<PartialKey, Delta> = Default::default();
        for (ts, c, keys) in adds {
            for &(dim, id) in keys {
                let bucket = ts.div_euclid(1000) * 1000;
                c.add_to(m.entry(PartialKey(dim, id, bucket)).or_default());
            }
        }
        m.into_iter().collect()
    }

    fn by_sums(p: &mut PartialSums, adds: &Adds) -> Vec<(PartialKey, Delta)> {
        for (ts, c, keys) in adds {
            p.add(*ts, *c, keys);
        }
        p.take()
    }

    #[test]
    fn same_sums_as_a_map_in_and_out_of_the_ring() {
        let mut adds = Vec::new();
        // In order, out of order within the ring, older than the ring holds
        // (a bucket 40 s back whose place holds a later one), far ids beside
        // near ones, and negative times.
        for i in 0..5_000i64 {
            let ts = T + i * 37 - (i % 7) * 900;
            let c = match i % 5 {
                0 => Contribution::Paid(i * 101),
                1 => Contribution::Refund(i),
                2 => Contribution::Placed,
                3 => Contribution::Shipped,
                _ => Contribution::Delivered,
            };
            adds.push((ts, c, vec![(Dim::Total, 0), (Dim::Brand, (i % 13) as u32)]));
            if i % 10 == 0 {
                adds.push((ts - 40_000, c, vec![(Dim::Country, 3), (Dim::Brand, 7)]));
                let far = 100_000 + (i % 3) as u32;
                adds.push((ts, c, vec![(Dim::Channel, far), (Dim::Channel, 1)]));
                adds.push((-ts, c, vec![(Dim::Channel, 1)]));
            }
        }
        let mut p = PartialSums::default();
        assert_eq!(by_sums(&mut p, &adds), by_map(&adds));
        assert!(p.is_empty());
        // Taken: the next commit's sums start from zero, in the same places.
        assert_eq!(by_sums(&mut p, &adds[..100]), by_map(&adds[..100]));
    }

    #[test]
    fn an_add_that_would_overflow_goes_to_the_map_and_nothing_is_lost() {
        let mut p = PartialSums::default();
        let big = i64::MAX / 2 + 1;
        let adds: Vec<_> = (0..3)
            .map(|_| (T, Contribution::Paid(big), vec![(Dim::Brand, 5)]))
            .collect();
        let sums = by_sums(&mut p, &adds);
        assert_eq!(sums.len(), 1);
        assert_eq!(sums[0].1.gmv_fen, 3 * big as i128);
        assert_eq!(sums[0].1.paid_orders, 3);
    }

    #[test]
    fn len_and_clear() {
        let mut p = PartialSums::default();
        p.add(T, Contribution::Placed, &[(Dim::Total, 0)]);
        p.add(T, Contribution::Placed, &[(Dim::Total, 0)]);
        p.add(T, Contribution::Placed, &[(Dim::Brand, 9_999)]);
        p.add(T - 60_000, Contribution::Placed, &[(Dim::Brand, 1)]);
        assert_eq!(p.len(), 3);
        p.clear();
        assert!(p.is_empty());
        assert!(p.take().is_empty());
    }
}
