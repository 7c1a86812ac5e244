//! Ends the process when the processing loop has been silent for far longer
//! than any of its own waits can last, so that a supervisor starts it again.
//!
//! Why: librdkafka 2.12 has calls that can wait forever once the broker comes
//! back from an absence: an offset request of a member the group has left
//! (librdkafka#5456, fixed after 2.12), and `rd_kafka_assign`, which waits
//! without a limit for librdkafka's own thread to answer. A test's job stopped
//! for good after a broker pause, its log ending just before it gave up a
//! lost assignment, most likely in the latter (docs/performance.md, ninth
//! session). `/healthz` reports such a loop after 30 s, but a supervisor that
//! restarts only exited processes (docker-compose's `restart:
//! unless-stopped`) would leave the job stuck through the sale. A restart
//! resumes from the last commit: nothing is lost or counted twice.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::telemetry::http::{now_ms, silent_past};

/// Longer than the longest the loop may rightly go without a turn: a failed
/// commit waits up to two of the producer's 60 s timeouts, then its recovery
/// retries for 5 minutes (`RECOVER_FOR`), each try up to about 3 minutes of
/// timeouts before it gives up. A restore, however long, counts as turns.
pub const EXIT_AFTER_SILENT_MS: i64 = 15 * 60 * 1000;

/// How often the watchdog looks, at most.
const EVERY: Duration = Duration::from_secs(5);

/// The exit status of a process the watchdog ended (`EX_SOFTWARE`).
const EXIT_STATUS: i32 = 70;

/// Starts the watchdog's thread: it ends the process with [`EXIT_STATUS`]
/// once the loop's heartbeat is older than `limit_ms`, and stops looking once
/// the job is shutting down.
pub fn start(heartbeat_ms: Arc<AtomicI64>, shutdown: Arc<AtomicBool>, limit_ms: i64) {
    let every = EVERY.min(Duration::from_millis(limit_ms as u64 / 2));
    let watch = move || loop {
        std::thread::sleep(every);
        if shutdown.load(Ordering::Relaxed) {
            return;
        }
        let heartbeat = heartbeat_ms.load(Ordering::Relaxed);
        if let Some(silent) = silent_past(now_ms(), heartbeat, limit_ms) {
            tracing::error!(
                silent_s = silent / 1000,
                "the processing loop has not turned for {} s: it waits on a call that has not returned. Exiting so that a supervisor starts the job again; it resumes from its last commit",
                silent / 1000
            );
            std::process::exit(EXIT_STATUS);
        }
    };
    // Not started, the job runs on without it: it is a last resort, not a condition.
    if let Err(e) = std::thread::Builder::new()
        .name("gmv-watchdog".into())
        .spawn(watch)
    {
        tracing::warn!(
            "starting the watchdog: {e}; a loop stuck in librdkafka would not end the process"
        );
    }
}
