//! Tumbling event-time windows aligned to the epoch, keyed by window start and
//! dimension key, closed in start order once the watermark allows.

use std::collections::BTreeMap;

use super::FastMap;

/// What a window sums. Money is i128 fen so no input can overflow it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowSums {
    pub gmv_fen: i128,
    pub refund_fen: i128,
    pub paid_orders: u64,
}

#[derive(Debug, Clone, Default)]
struct Slot {
    sums: WindowSums,
    revision: u64,
    dirty: bool,
}

/// One emitted state of a window (the upsert record's payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    pub start_ms: i64,
    pub key: u32,
    pub sums: WindowSums,
    pub revision: u64,
}

/// Open windows of one size for one dimension.
#[derive(Debug, Clone)]
pub struct TumblingWindows {
    size_ms: i64,
    open: BTreeMap<i64, FastMap<u32, Slot>>,
    /// Windows changed since the last `drain_dirty`; may name closed ones, which are skipped.
    dirty: Vec<(i64, u32)>,
    open_slots: usize,
}

impl TumblingWindows {
    pub fn new(size_ms: i64) -> Self {
        assert!(size_ms > 0, "window size must be positive");
        TumblingWindows {
            size_ms,
            open: BTreeMap::new(),
            dirty: Vec::new(),
            open_slots: 0,
        }
    }

    pub fn size_ms(&self) -> i64 {
        self.size_ms
    }

    pub fn start_of(&self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.size_ms) * self.size_ms
    }

    /// Puts back an open window's state (restore from the changelog); `dirty`:
    /// changed since its last emission, so emitted at the next `drain_dirty`.
    pub fn restore(
        &mut self,
        start_ms: i64,
        key: u32,
        sums: WindowSums,
        revision: u64,
        dirty: bool,
    ) {
        let slots = self.open.entry(start_ms).or_default();
        if slots
            .insert(
                key,
                Slot {
                    sums,
                    revision,
                    dirty,
                },
            )
            .is_none()
        {
            self.open_slots += 1;
        }
        if dirty {
            self.dirty.push((start_ms, key));
        }
    }

    /// An open window's sums, revision and whether it changed since its last
    /// emission, for the changelog.
    pub fn get(&self, start_ms: i64, key: u32) -> Option<(WindowSums, u64, bool)> {
        self.open
            .get(&start_ms)
            .and_then(|m| m.get(&key))
            .map(|s| (s.sums, s.revision, s.dirty))
    }

    /// True when the window starting at `start_ms` is closed (its end is at or before `limit_ms`).
    pub fn is_closed(&self, start_ms: i64, limit_ms: i64) -> bool {
        start_ms.saturating_add(self.size_ms) <= limit_ms
    }

    /// Adds to the window of `ts_ms` for `key`, opening it if needed.
    pub fn add(&mut self, ts_ms: i64, key: u32, f: impl FnOnce(&mut WindowSums)) {
        let start = self.start_of(ts_ms);
        let slots = self.open.entry(start).or_default();
        let slot = slots.entry(key).or_insert_with(|| {
            self.open_slots += 1;
            Slot::default()
        });
        f(&mut slot.sums);
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push((start, key));
        }
    }

    /// Emits every changed open window with its next revision.
    pub fn drain_dirty(&mut self, mut f: impl FnMut(WindowState)) {
        for (start, key) in self.dirty.drain(..) {
            let Some(slot) = self.open.get_mut(&start).and_then(|m| m.get_mut(&key)) else {
                continue;
            };
            if !slot.dirty {
                continue;
            }
            slot.dirty = false;
            slot.revision += 1;
            f(WindowState {
                start_ms: start,
                key,
                sums: slot.sums,
                revision: slot.revision,
            });
        }
    }

    /// Closes, in start order, every window whose end is at or before `limit_ms`.
    pub fn close_through(&mut self, limit_ms: i64, mut f: impl FnMut(WindowState)) {
        while let Some(entry) = self.open.first_entry() {
            if entry.key().saturating_add(self.size_ms) > limit_ms {
                break;
            }
            let start = *entry.key();
            let slots = entry.remove();
            self.open_slots -= slots.len();
            let mut keys: Vec<_> = slots.into_iter().collect();
            // Stable output order makes runs reproducible.
            keys.sort_unstable_by_key(|(k, _)| *k);
            for (key, slot) in keys {
                f(WindowState {
                    start_ms: start,
                    key,
                    sums: slot.sums,
                    revision: slot.revision + 1,
                });
            }
        }
    }

    /// Number of open (window, key) slots, for the state-size metric.
    pub fn open_slots(&self) -> usize {
        self.open_slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gmv(v: i128) -> impl FnOnce(&mut WindowSums) {
        move |s| {
            s.gmv_fen += v;
            s.paid_orders += 1;
        }
    }

    #[test]
    fn windows_align_to_the_epoch_and_close_in_order() {
        let mut w = TumblingWindows::new(60_000);
        w.add(59_999, 1, gmv(5));
        w.add(60_000, 1, gmv(7));
        w.add(-1, 1, gmv(11));
        assert_eq!(w.start_of(-1), -60_000);
        let mut closed = vec![];
        w.close_through(60_000, |s| {
            closed.push((s.start_ms, s.sums.gmv_fen, s.revision))
        });
        assert_eq!(closed, vec![(-60_000, 11, 1), (0, 5, 1)]);
        assert_eq!(w.open_slots(), 1);
        closed.clear();
        w.close_through(119_999, |s| {
            closed.push((s.start_ms, s.sums.gmv_fen, s.revision))
        });
        assert!(closed.is_empty(), "window [60s,120s) ends at 120s");
        w.close_through(120_000, |s| {
            closed.push((s.start_ms, s.sums.gmv_fen, s.revision))
        });
        assert_eq!(closed, vec![(60_000, 7, 1)]);
    }

    #[test]
    fn a_restored_window_continues_its_sums_and_revisions() {
        let mut w = TumblingWindows::new(1_000);
        let sums = WindowSums {
            gmv_fen: 2,
            refund_fen: 0,
            paid_orders: 2,
        };
        w.restore(0, 1, sums, 5, false);
        assert_eq!(w.get(0, 1), Some((sums, 5, false)));
        assert_eq!(w.open_slots(), 1);
        let mut seen = vec![];
        w.add(30, 1, gmv(1));
        w.drain_dirty(|s| seen.push((s.start_ms, s.sums.gmv_fen, s.revision)));
        assert_eq!(seen, vec![(0, 3, 6)]);
        assert!(!w.is_closed(0, 999) && w.is_closed(0, 1_000));
    }

    #[test]
    fn a_window_restored_with_an_update_not_yet_emitted_emits_it() {
        let mut w = TumblingWindows::new(1_000);
        let sums = WindowSums {
            gmv_fen: 2,
            refund_fen: 0,
            paid_orders: 2,
        };
        w.restore(0, 1, sums, 5, true);
        assert_eq!(w.get(0, 1), Some((sums, 5, true)));
        let mut seen = vec![];
        w.drain_dirty(|s| seen.push((s.start_ms, s.sums.gmv_fen, s.revision)));
        assert_eq!(seen, vec![(0, 2, 6)]);
        assert_eq!(w.get(0, 1), Some((sums, 6, false)));
    }

    #[test]
    fn dirty_updates_carry_growing_revisions_and_final_follows() {
        let mut w = TumblingWindows::new(1_000);
        w.add(10, 3, gmv(1));
        w.add(20, 3, gmv(2));
        let mut seen = vec![];
        w.drain_dirty(|s| seen.push((s.sums.gmv_fen, s.revision)));
        assert_eq!(seen, vec![(3, 1)]);
        w.drain_dirty(|s| seen.push((s.sums.gmv_fen, s.revision)));
        assert_eq!(seen.len(), 1, "nothing changed");
        w.add(30, 3, gmv(4));
        w.close_through(1_000, |s| seen.push((s.sums.gmv_fen, s.revision)));
        assert_eq!(seen, vec![(3, 1), (7, 2)]);
        // The closed window's stale dirty mark emits nothing.
        w.drain_dirty(|s| seen.push((s.sums.gmv_fen, s.revision)));
        assert_eq!(seen.len(), 2);
    }
}
