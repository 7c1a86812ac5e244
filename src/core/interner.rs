//! Dimension key names to small ids, so hot maps hash integers.

use super::FastMap;

/// A name of at most 16 bytes as two words and its length, so that looking
/// it up compares integers: a map keyed by `Box<str>` read each candidate's
/// bytes behind a pointer and compared them with a call to `memcmp`, 7% of
/// the engine's time with hashing the name (docs/performance.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Short {
    lo: u64,
    hi: u64,
    len: u8,
}

impl std::hash::Hash for Short {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u128((u128::from(self.hi) << 64 | u128::from(self.lo)) ^ u128::from(self.len));
    }
}

impl Short {
    /// `s` packed, if it is short enough. Two names of one length pack
    /// alike only if equal: the loads, overlapping when shorter than their
    /// sum, cover every byte.
    fn of(s: &str) -> Option<Short> {
        let b = s.as_bytes();
        let n = b.len();
        let le8 = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let le4 = |at: usize| u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()));
        let (lo, hi) = match n {
            17.. => return None,
            8.. => (le8(0), le8(n - 8)),
            4.. => (le4(0) | le4(n - 4) << 32, 0),
            1.. => (
                u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16,
                0,
            ),
            0 => (0, 0),
        };
        Some(Short {
            lo,
            hi,
            len: n as u8,
        })
    }
}

#[derive(Debug, Default)]
pub(crate) struct Interner {
    short: FastMap<Short, u32>,
    long: FastMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    pub(crate) fn intern(&mut self, s: &str) -> u32 {
        let next = self.names.len() as u32;
        let id = match Short::of(s) {
            Some(k) => *self.short.entry(k).or_insert(next),
            None => *self.long.entry_ref(s).or_insert(next),
        };
        if id == next {
            self.names.push(s.into());
        }
        id
    }

    pub(crate) fn id(&self, s: &str) -> Option<u32> {
        match Short::of(s) {
            Some(k) => self.short.get(&k),
            None => self.long.get(s),
        }
        .copied()
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_gets_its_own_ids_and_keeps_them() {
        let mut names = Vec::new();
        // Every length from 0 to 40, and strings of one length that differ in
        // a single byte, at every position.
        for n in 0..=40usize {
            let base: String = (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            names.push(base.clone());
            for at in 0..n {
                let mut v = base.clone().into_bytes();
                v[at] = b'Z';
                names.push(String::from_utf8(v).unwrap());
            }
        }
        names.push("品牌-天猫".into());
        let mut i = Interner::default();
        let ids: Vec<u32> = names.iter().map(|s| i.intern(s)).collect();
        let want: Vec<u32> = (0..names.len() as u32).collect();
        assert_eq!(ids, want, "each name a new id, in order");
        for (s, id) in names.iter().zip(&ids) {
            assert_eq!(i.intern(s), *id);
            assert_eq!(i.id(s), Some(*id));
            assert_eq!(i.name(*id), s);
        }
        assert_eq!(i.len(), names.len());
        assert_eq!(i.id("not there at all, long"), None);
        assert_eq!(i.id("nope"), None);
    }
}
