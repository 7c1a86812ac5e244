//! Ends the process when the processing loop has been silent for far longer
//! than any of its own waits can last, so that a supervisor starts it again.
//!
//! Why: librdkafka 2.12 has calls that can wait forever once the broker comes
//! back from an absence: an offset request of a member the group has left
//! (librdkafka#5456, open; a commit stuck so is given up at its own deadline,
//! `io::producer::PendingCommit::wait`), and `rd_kafka_assign`, which waits
//! without a limit for librdkafka's own thread to answer. A test's job stopped
//! for good after a broker pause, its log ending just before it gave up a
//! lost assignment, most likely in the latter (docs/performance.md, ninth
//! session). `/healthz` reports such a loop after 30 s, but a supervisor that
//! restarts only exited processes (docker-compose's `restart:
//! unless-stopped`) would leave the job stuck through the sale. A restart
//! resumes from the last commit: nothing is lost or counted twice.
//!
//! The calls that wait for librdkafka's own thread alone, no broker
//! (`assign`, `unassign`, the group's metadata: [`LocalCalls`]), answer within
//! milliseconds or never; one that has not returned in [`EXIT_AFTER_STUCK_CALL_MS`]
//! ends the process then, not after the loop's whole limit, so the screens go
//! dark for about a minute instead of fifteen.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::telemetry::http::{now_ms, silent_past};

/// Longer than the longest the loop may rightly go without a turn: a failed
/// commit is waited for up to 65 s (its calls' shared 60 s timeout and a
/// margin), then its recovery retries for 5 minutes (`RECOVER_FOR`), each
/// try up to about 3 minutes of timeouts before it gives up. A restore,
/// however long, counts as turns.
pub const EXIT_AFTER_SILENT_MS: i64 = 15 * 60 * 1000;

/// How long a local call ([`LocalCalls`]) may take: far more than the
/// milliseconds it takes, less than the loop's own limit.
pub const EXIT_AFTER_STUCK_CALL_MS: i64 = 60 * 1000;

/// The librdkafka call the loop is in that only librdkafka's own thread
/// answers (no broker), if any, with when it began.
#[derive(Debug, Default)]
pub struct LocalCalls(Mutex<Option<(&'static str, i64)>>);

impl LocalCalls {
    /// Runs `call`, named `what`, as the call the loop is in.
    pub fn within<T>(&self, what: &'static str, call: impl FnOnce() -> T) -> T {
        *self.0.lock().expect("local calls lock") = Some((what, now_ms()));
        let out = call();
        *self.0.lock().expect("local calls lock") = None;
        out
    }

    fn current(&self) -> Option<(&'static str, i64)> {
        *self.0.lock().expect("local calls lock")
    }
}

/// Why the process is to end now, if it is: the local call in `call` has
/// run past `call_limit_ms`, or the loop's last heartbeat is older than
/// `limit_ms`.
fn overdue(
    now_ms: i64,
    heartbeat_ms: i64,
    call: Option<(&'static str, i64)>,
    limit_ms: i64,
    call_limit_ms: i64,
) -> Option<String> {
    if let Some((what, since)) = call {
        if let Some(running) = silent_past(now_ms, since, call_limit_ms) {
            return Some(format!(
                "librdkafka's `{what}` has not returned in {} s; it waits for the client's own thread alone, which answers within milliseconds or never",
                running / 1000
            ));
        }
    }
    silent_past(now_ms, heartbeat_ms, limit_ms).map(|silent| {
        format!(
            "the processing loop has not turned for {} s: it waits on a call that has not returned",
            silent / 1000
        )
    })
}

/// How often the watchdog looks, at most.
const EVERY: Duration = Duration::from_secs(5);

/// The exit status of a process the watchdog ended (`EX_SOFTWARE`).
const EXIT_STATUS: i32 = 70;

/// Starts the watchdog's thread: it ends the process with [`EXIT_STATUS`]
/// once the loop's heartbeat is older than `limit_ms`, or a local call has
/// run for [`EXIT_AFTER_STUCK_CALL_MS`] (the lesser of the two), and stops
/// looking once the job is shutting down.
pub fn start(
    heartbeat_ms: Arc<AtomicI64>,
    calls: Arc<LocalCalls>,
    shutdown: Arc<AtomicBool>,
    limit_ms: i64,
) {
    let every = EVERY.min(Duration::from_millis(limit_ms as u64 / 2));
    let call_limit_ms = EXIT_AFTER_STUCK_CALL_MS.min(limit_ms);
    let watch = move || loop {
        std::thread::sleep(every);
        if shutdown.load(Ordering::Relaxed) {
            return;
        }
        let heartbeat = heartbeat_ms.load(Ordering::Relaxed);
        if let Some(why) = overdue(
            now_ms(),
            heartbeat,
            calls.current(),
            limit_ms,
            call_limit_ms,
        ) {
            tracing::error!(
                "{why}. Exiting so that a supervisor starts the job again; it resumes from its last commit"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_call_past_its_limit_or_a_silence_past_the_loops_ends_the_process() {
        let (limit, call_limit) = (EXIT_AFTER_SILENT_MS, EXIT_AFTER_STUCK_CALL_MS);
        let t = 10_000_000;
        let at = |now, heartbeat, call| overdue(now, heartbeat, call, limit, call_limit);
        assert_eq!(at(t, t, None), None, "no call, a fresh heartbeat");
        let call = Some(("unassign", t));
        assert_eq!(at(t + call_limit, t, call), None, "the call at its limit");
        let why = at(t + call_limit + 1, t, call).expect("the call past its limit");
        assert!(why.contains("`unassign` has not returned in 60 s"), "{why}");
        assert_eq!(at(t + limit, t, None), None, "the loop at its limit");
        let why = at(t + limit + 1, t, None).expect("the loop past its limit");
        assert!(why.contains("has not turned for 900 s"), "{why}");
    }

    #[test]
    fn within_marks_the_call_while_it_runs_and_clears_it_after() {
        let calls = LocalCalls::default();
        let before = now_ms();
        let seen = calls.within("assign", || calls.current());
        let (what, since) = seen.expect("marked during the call");
        assert_eq!(what, "assign");
        assert!(since >= before && since <= now_ms());
        assert_eq!(calls.current(), None, "cleared after it");
    }
}
