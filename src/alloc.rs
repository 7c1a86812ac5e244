//! The memory allocator: mimalloc (one small key per order and id is
//! allocated on the hot path, and it is markedly faster there than glibc's),
//! told to keep freed memory for reuse rather than return it to the OS.

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
}
