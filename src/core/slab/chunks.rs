//! The slab's entries in memory: chunks that grow without moving an entry,
//! backed by huge pages (each chunk of 2 MiB or more is a mapping of its own,
//! `crate::alloc::Alloc`) and faulted in off the loop.

use super::{Entry, Fingerprint};

/// The slab's entries, in chunks of [`Chunks::LEN`]: growing adds a chunk and moves
/// no entry. A `Vec` that doubles copies every entry, holds both copies
/// meanwhile, and leaves up to half its room unused after: a job without
/// `state.expected_orders` held 101–104 bytes per open order at 10 and 50
/// million, 75–83 in chunks (docs/performance.md). The first chunk grows as
/// a `Vec` does, so a small task holds little.
#[derive(Debug)]
pub(super) struct Chunks<T> {
    chunks: Vec<Vec<Entry<T>>>,
    len: usize,
}

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Chunks {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

/// How far past the last entry [`Chunks::push`] asks for memory (a few
/// lines: 16 or 48 entries of an order measured the same).
const TAIL_AHEAD_BYTES: usize = 512;

impl<T> Chunks<T> {
    /// Entries per chunk past the first: a power of two, and at least 4 MiB
    /// of them, so that a chunk is a mapping of its own, in huge pages
    /// (`crate::alloc::Alloc`; 7.3 MB of orders' entries or of ids').
    const BITS: u32 = (4usize << 20)
        .div_ceil(std::mem::size_of::<Entry<T>>())
        .next_power_of_two()
        .trailing_zeros();
    const LEN: usize = 1 << Self::BITS;

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn push(&mut self, e: Entry<T>) {
        let c = self.len >> Self::BITS;
        if c == self.chunks.len() {
            self.chunks.push(Vec::new());
        }
        let chunk = &mut self.chunks[c];
        if chunk.len() == chunk.capacity() {
            // The first chunk, or one reserved in part: doubles, up to `LEN`;
            // a chunk past the first comes whole.
            let room = if c == 0 {
                chunk.capacity() * 2
            } else {
                Self::LEN
            };
            chunk.reserve_exact(room.clamp(4, Self::LEN) - chunk.len());
        }
        chunk.push(e);
        self.len += 1;
        // The entries to come lie in lines not read since the memory was
        // faulted in or moved: asked for a few lines ahead, a push does not
        // wait for its line (in the core bench, 2 – 6% more events/s:
        // docs/performance.md).
        let ahead = TAIL_AHEAD_BYTES / std::mem::size_of::<Entry<T>>();
        if let Some(ahead) = chunk.spare_capacity_mut().get(ahead) {
            super::prefetch(ahead.as_ptr().cast());
        }
    }

    /// Room for `n` more entries; the new room's address ranges (to fault
    /// in), or `None` if the memory was refused.
    pub(super) fn try_reserve(&mut self, n: usize) -> Option<Vec<(usize, usize)>> {
        let want = self.len.checked_add(n)?;
        let mut fresh = Vec::new();
        let mut c = 0;
        while c * Self::LEN < want {
            if c == self.chunks.len() {
                self.chunks.try_reserve(1).ok()?;
                self.chunks.push(Vec::new());
            }
            let chunk = &mut self.chunks[c];
            let room = (want - c * Self::LEN).min(Self::LEN);
            if chunk.capacity() < room {
                chunk.try_reserve_exact(room - chunk.len()).ok()?;
            }
            let spare = chunk.spare_capacity_mut();
            fresh.push((spare.as_ptr() as usize, std::mem::size_of_val(spare)));
            c += 1;
        }
        Some(fresh)
    }

    pub(super) fn heap_bytes(&self) -> usize {
        let entries: usize = self.chunks.iter().map(Vec::capacity).sum();
        entries * std::mem::size_of::<Entry<T>>()
            + self.chunks.capacity() * std::mem::size_of::<Vec<Entry<T>>>()
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &Entry<T>> {
        self.chunks.iter().flatten()
    }

    /// The table hash and slot of every entry held (not free), in slot
    /// order: what the index is filled from when it grows.
    pub(super) fn held(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, e)| e.id != Fingerprint::FREE)
            .map(|(i, e)| (e.id.table(), i as u32))
    }
}

impl<T> std::ops::Index<usize> for Chunks<T> {
    type Output = Entry<T>;
    fn index(&self, i: usize) -> &Entry<T> {
        &self.chunks[i >> Self::BITS][i & (Self::LEN - 1)]
    }
}

impl<T> std::ops::IndexMut<usize> for Chunks<T> {
    fn index_mut(&mut self, i: usize) -> &mut Entry<T> {
        &mut self.chunks[i >> Self::BITS][i & (Self::LEN - 1)]
    }
}

/// Has the kernel fault in the pages of the (address, length) ranges for
/// writing, on a thread of its own. `MADV_POPULATE_WRITE` maps zeroed pages
/// where none are and changes no byte of memory, so it is sound whatever the
/// memory holds or whoever writes it meanwhile, and harmless if a block is
/// freed before it ends (the call then fails, and nothing depends on it).
pub(super) fn prefault(ranges: Vec<(usize, usize)>) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let spawned = std::thread::Builder::new()
            .name("gmv-prefault".into())
            .spawn(move || {
                for (addr, len) in ranges {
                    let start = addr.next_multiple_of(PAGE);
                    let end = (addr + len) / PAGE * PAGE;
                    if end > start {
                        // SAFETY: madvise reads and writes no memory of ours; see above.
                        unsafe {
                            libc::madvise(
                                start as *mut libc::c_void,
                                end - start,
                                libc::MADV_POPULATE_WRITE,
                            )
                        };
                    }
                }
            });
        // Without the thread the pages are faulted in as they are first written.
        drop(spawned);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = ranges;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries keep their slot as chunks are added, and no chunk grows past
    /// `Chunks::LEN` (an entry past it would be lost to the index arithmetic).
    #[test]
    fn chunks_grow_without_moving_entries() {
        let entry = |v: i64| Entry {
            id: Fingerprint::default(),
            value: v,
        };
        const CHUNK: usize = Chunks::<i64>::LEN;
        let mut c = Chunks::<i64>::default();
        for v in 0..=CHUNK as i64 {
            c.push(entry(v));
        }
        let second = &c[CHUNK] as *const Entry<i64>;
        for v in (CHUNK + 1) as i64..(2 * CHUNK + 3) as i64 {
            c.push(entry(v));
        }
        assert_eq!(&c[CHUNK] as *const Entry<i64>, second, "not moved");
        assert_eq!(c.len(), 2 * CHUNK + 3);
        assert!((0..c.len()).step_by(997).all(|i| c[i].value == i as i64));
        assert_eq!(c[2 * CHUNK].value, 2 * CHUNK as i64);
        let caps: Vec<usize> = c.chunks.iter().map(Vec::capacity).collect();
        assert_eq!(caps[..2], [CHUNK, CHUNK]);
        assert_eq!(caps[2], CHUNK, "a chunk past the first comes whole");
        c[5].value = -5;
        assert_eq!(c.iter().nth(5).map(|e| e.value), Some(-5));
        // Reserved room is exact, and a chunk reserved in part grows to `CHUNK`, not past it.
        let mut r = Chunks::<i64>::default();
        let fresh = r.try_reserve(CHUNK + 10).expect("memory");
        assert_eq!(fresh.len(), 2);
        assert_eq!(r.heap_bytes() - r.chunks.capacity() * 24, (CHUNK + 10) * 24);
        for v in 0..(2 * CHUNK) as i64 {
            r.push(entry(v));
        }
        assert_eq!(r.chunks[1].capacity(), CHUNK);
        assert_eq!(r[CHUNK + 11].value, CHUNK as i64 + 11);
    }

    /// A chunk past the first is a power of two of entries, 4 to 8 MiB of
    /// them: room for whole huge pages, whatever the entry's size.
    #[test]
    fn chunks_span_huge_pages() {
        fn check<T>() {
            let bytes = Chunks::<T>::LEN * std::mem::size_of::<Entry<T>>();
            assert!(((4 << 20)..(8 << 20)).contains(&bytes), "{bytes}");
            assert!(Chunks::<T>::LEN.is_power_of_two());
        }
        check::<i64>();
        check::<u16>();
        check::<[u8; 18]>();
        check::<[u64; 64]>();
    }
}
