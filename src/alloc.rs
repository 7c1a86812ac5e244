//! The memory allocator: mimalloc (one small key per order and id is
//! allocated on the hot path, and it is markedly faster there than glibc's),
//! told to keep freed memory for reuse rather than return it to the OS; and
//! glibc's malloc, which librdkafka uses, told the same.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's option enum (its v3 `mimalloc.h`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Call first thing in `main`. The job's memory is long-lived state that grows
/// until `order_ttl` and is then reused; handing freed pages back to the OS
/// only makes the next allocation fault them in again (measured in
/// docs/performance.md).
pub fn keep_freed_memory() {
    // SAFETY: sets a process-wide option; mimalloc documents it as safe at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    keep_freed_c_memory();
}

/// librdkafka allocates every produced record and every fetch response with
/// glibc's malloc and frees them once acknowledged or consumed. By default glibc
/// serves large blocks (a fetch response) with fresh `mmap`s and trims its heaps
/// after a burst of frees, so each commit interval faulted in and zeroed new pages
/// again (`perf`: a third of the job's time in the kernel's `clear_page_erms`).
/// Large blocks from the heap and no trimming keep those pages for reuse.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_c_memory() {
    // glibc's largest allowed mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX).
    const MMAP_THRESHOLD: libc::c_int = 32 << 20;
    // SAFETY: mallopt only changes malloc's parameters; called before any client thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_c_memory() {}
