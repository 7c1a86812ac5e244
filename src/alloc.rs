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
//! faulting in fresh ones (up to 45% of the rate, docs/performance.md). The
//! state's big tables ask for huge pages themselves (`core::slab::chunks`).

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
