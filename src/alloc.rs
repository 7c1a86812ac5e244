//! The memory allocator: mimalloc, for the job's own allocations (one small
//! key per order and id on the hot path, where it is markedly faster than
//! glibc's) and, through its `override` feature, as the process's `malloc`,
//! so librdkafka's records and fetch buffers come from it too. glibc's malloc
//! made the loop wait on an arena lock whenever it freed a message that the
//! broker thread had allocated (docs/performance.md); mimalloc frees from
//! another thread without a lock. It is told to keep freed memory for reuse.
//! Built with its `no_thp` feature, it asks for no transparent huge pages:
//! on these VMs fresh huge pages are slow to fault in, and the short-lived
//! memory of a catch-up (librdkafka's fetch buffers and messages) kept
//! faulting in fresh ones (up to 45% of the rate, docs/performance.md).
//!
//! The job's big blocks (the state's tables) are each a mapping of their
//! own, with huge pages: see [`Alloc`].

use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static ALLOC: Alloc = Alloc;

/// `mi_option_purge_delay` in mimalloc's option enum (its v3 `mimalloc.h`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Call first thing in `main`. The job's memory is long-lived state that grows
/// until `order_ttl` and is then reused; handing freed pages back to the OS
/// only makes the next allocation fault them in and zero them again, which is
/// slow on virtual machines (measured in docs/performance.md).
pub fn keep_freed_memory() {
    // SAFETY: sets a process-wide option; mimalloc documents it as safe at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// A huge page, and the smallest block [`Alloc`] maps on its own.
const BIG: usize = 2 << 20;

/// mimalloc, except for blocks of [`BIG`] or more (on Linux): in the job, the
/// state's tables above all, read at random by the million, where a huge page
/// spares a TLB miss per look-up. Each is an anonymous mapping of its own,
/// aligned to a huge page and advised `MADV_HUGEPAGE` before it is first
/// written, so that its pages are huge as they are faulted in (transparent huge
/// pages are `madvise` on Debian). From mimalloc a table got whatever memory
/// other allocations had freed, already faulted in as small pages, and so no
/// huge page: after 3 GB freed, as a catch-up's fetches free it, the state held
/// 208 – 334 MB of huge pages at 50 million orders instead of 2,682, and the
/// engine ran 9% slower, 21% slower in the last tenth (medians of 3 runs,
/// `CHURN_MB=3000 cargo bench --bench state`, docs/performance.md). A freed
/// block goes back to the OS: a table is freed when its task is dropped or its
/// index grows, not per event.
pub struct Alloc;

fn mapped(layout: Layout) -> bool {
    cfg!(target_os = "linux") && layout.size() >= BIG && layout.align() <= BIG
}

/// The length of a big block's mapping: whole small pages.
fn map_len(size: usize) -> usize {
    size.next_multiple_of(4096)
}

// SAFETY: every block is mimalloc's or a mapping of its own, told apart by
// its layout, which the caller passes unchanged to `dealloc` and `realloc`.
unsafe impl GlobalAlloc for Alloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            map(map_len(layout.size()))
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            // SAFETY: as `alloc`; a fresh anonymous mapping reads as zeros.
            unsafe { self.alloc(layout) }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapped(layout) {
            // SAFETY: `ptr` is a mapping of this length (`alloc`).
            unsafe { unmap(ptr, map_len(layout.size())) }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to the
        // alignment, does not overflow `isize`.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !mapped(layout) && !mapped(new) {
            // SAFETY: the caller's contract, passed on.
            return unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        }
        // Into or out of a mapping, or from one to another: a table grows
        // by doubling, rarely, so a copy is what it costs.
        // SAFETY: `new` has a non-zero size (`mapped` on one side, and a
        // caller of `realloc` asks for a non-zero size).
        let fresh = unsafe { self.alloc(new) };
        if !fresh.is_null() {
            // SAFETY: both blocks hold at least the smaller size, and are distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        fresh
    }
}

/// A fresh mapping of `len` bytes aligned to a huge page and advised to be
/// backed by huge pages; null if refused.
#[cfg(target_os = "linux")]
fn map(len: usize) -> *mut u8 {
    // A huge page more than needed, to cut an aligned start from.
    let Some(span) = len.checked_add(BIG) else {
        return std::ptr::null_mut();
    };
    // SAFETY: a new private anonymous mapping; no memory of ours is touched.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let raw = raw as usize;
    let start = raw.next_multiple_of(BIG);
    // SAFETY: the head and tail cut off lie in the mapping just made, and
    // nothing refers to them. Advice only: if refused, nothing depends on it.
    unsafe {
        if start > raw {
            libc::munmap(raw as *mut libc::c_void, start - raw);
        }
        let tail = raw + span - (start + len);
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    start as *mut u8
}

/// # Safety
/// `ptr` and `len` are a mapping made by [`map`], no longer used.
#[cfg(target_os = "linux")]
unsafe fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { libc::munmap(ptr as *mut libc::c_void, len) };
}

#[cfg(not(target_os = "linux"))]
fn map(_: usize) -> *mut u8 {
    unreachable!("blocks are mapped on Linux only")
}

#[cfg(not(target_os = "linux"))]
unsafe fn unmap(_: *mut u8, _: usize) {
    unreachable!("blocks are mapped on Linux only")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks keep their bytes as they grow and shrink across [`BIG`], a
    /// big block is aligned to a huge page and starts zeroed, and a small
    /// block stays mimalloc's.
    #[test]
    fn blocks_keep_their_bytes_across_the_big_size() {
        let a = Alloc;
        let small = Layout::from_size_align(1000, 8).unwrap();
        // SAFETY: each block is used within its layout and freed once, with it.
        unsafe {
            let p = a.alloc(small);
            for i in 0..1000 {
                *p.add(i) = (i % 251) as u8;
            }
            let sizes = [BIG + 12_345, 3 * BIG, BIG, BIG - 1, 700];
            let mut p = p;
            let mut layout = small;
            for size in sizes {
                p = a.realloc(p, layout, size);
                assert!(!p.is_null());
                let new = Layout::from_size_align(size, 8).unwrap();
                if mapped(new) {
                    assert_eq!(p as usize % BIG, 0, "{size}: aligned to a huge page");
                }
                let kept = layout.size().min(size).min(1000);
                assert!((0..kept).all(|i| *p.add(i) == (i % 251) as u8), "{size}");
                // The rest is written too, so a mapping shorter than asked faults.
                std::ptr::write_bytes(p.add(kept), 7, size - kept);
                layout = new;
            }
            a.dealloc(p, layout);

            let big = Layout::from_size_align(5 * BIG + 1, 64).unwrap();
            let z = a.alloc_zeroed(big);
            assert_eq!(z as usize % BIG, 0);
            assert!((0..big.size()).step_by(4093).all(|i| *z.add(i) == 0));
            assert_eq!(*z.add(big.size() - 1), 0);
            a.dealloc(z, big);
        }
    }

    /// A big block's mapping is advised for huge pages (`hg` in its
    /// flags), its whole length; a small block's memory is not.
    #[cfg(target_os = "linux")]
    #[test]
    fn big_blocks_alone_are_advised_huge_pages() {
        /// The `VmFlags` and the range of the mapping holding `addr`.
        fn mapping_of(addr: usize) -> (String, usize, usize) {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let mut range = None;
            for line in smaps.lines() {
                let first = line.split_whitespace().next().unwrap_or("");
                if let Some((lo, hi)) = first.split_once('-') {
                    if let (Ok(lo), Ok(hi)) =
                        (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                    {
                        range = Some((lo, hi));
                        continue;
                    }
                }
                if let (Some(flags), Some((lo, hi))) = (line.strip_prefix("VmFlags:"), range) {
                    if (lo..hi).contains(&addr) {
                        return (flags.to_string(), lo, hi);
                    }
                }
            }
            panic!("no mapping holds {addr:#x}");
        }
        let a = Alloc;
        let big = Layout::from_size_align(3 * BIG + 100, 8).unwrap();
        let small = Layout::from_size_align(64 << 10, 8).unwrap();
        // SAFETY: each block is freed once, with its layout, and not read.
        unsafe {
            let p = a.alloc(big);
            let (flags, lo, hi) = mapping_of(p as usize);
            assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
            assert!(lo <= p as usize && p as usize + big.size() <= hi);
            let q = a.alloc(small);
            let (flags, ..) = mapping_of(q as usize);
            assert!(!flags.split_whitespace().any(|f| f == "hg"), "{flags}");
            a.dealloc(q, small);
            a.dealloc(p, big);
        }
    }
}
