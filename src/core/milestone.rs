//! Milestones: the cumulative GMV of a dimension key first reaching a
//! threshold, found by summing 1-second event-time buckets in time order once
//! they are final, so the result does not depend on arrival order.

use super::window::{TumblingWindows, WindowSums};
use super::FastMap;

/// Event-time bucket of the contract: 1 second.
pub const BUCKET_MS: i64 = 1_000;

/// Which thresholds fire: an explicit list, and optionally every multiple of a step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThresholdRule {
    pub list_fen: Vec<i64>,
    pub every_fen: Option<i64>,
}

impl ThresholdRule {
    /// Thresholds `t` with `before < t <= after`, ascending.
    pub fn crossed(&self, before: i128, after: i128) -> Vec<i128> {
        let mut out: Vec<i128> = self
            .list_fen
            .iter()
            .map(|&t| t as i128)
            .filter(|&t| before < t && t <= after)
            .collect();
        if let Some(step) = self.every_fen.filter(|s| *s > 0).map(|s| s as i128) {
            let mut k = before.div_euclid(step) + 1;
            while k * step <= after {
                out.push(k * step);
                k += 1;
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.list_fen.is_empty() && self.every_fen.is_none()
    }
}

/// A threshold reached; `gmv_fen` is the cumulative GMV at `crossed_at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    pub key: u32,
    pub threshold_fen: i128,
    pub crossed_at_ms: i64,
    pub gmv_fen: i128,
}

/// Milestone tracking for one dimension.
#[derive(Debug, Clone)]
pub struct Milestones {
    rule: ThresholdRule,
    buckets: TumblingWindows,
    /// Cumulative GMV of final buckets, per key: thresholds at or below it have fired.
    final_gmv: FastMap<u32, i128>,
}

impl Milestones {
    pub fn new(rule: ThresholdRule) -> Self {
        Milestones {
            rule,
            buckets: TumblingWindows::new(BUCKET_MS),
            final_gmv: FastMap::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.rule.is_empty()
    }

    pub fn add(&mut self, ts_ms: i64, key: u32, gmv_fen: i128) {
        if self.enabled() && gmv_fen != 0 {
            self.buckets.add(ts_ms, key, |s| s.gmv_fen += gmv_fen);
        }
    }

    /// An open bucket's GMV, for the changelog.
    pub fn bucket(&self, start_ms: i64, key: u32) -> Option<i128> {
        self.buckets.get(start_ms, key).map(|(s, _, _)| s.gmv_fen)
    }

    /// Cumulative GMV of a key's final buckets, for the changelog.
    pub fn final_gmv(&self, key: u32) -> Option<i128> {
        self.final_gmv.get(&key).copied()
    }

    /// Puts back an open bucket (restore).
    pub fn restore_bucket(&mut self, start_ms: i64, key: u32, gmv_fen: i128) {
        let sums = WindowSums {
            gmv_fen,
            ..WindowSums::default()
        };
        self.buckets.restore(start_ms, key, sums, 0, false);
    }

    /// Puts back a key's cumulative final GMV (restore): thresholds up to it never fire again.
    pub fn restore_final(&mut self, key: u32, gmv_fen: i128) {
        self.final_gmv.insert(key, gmv_fen);
    }

    /// Finalizes buckets ending at or before `limit_ms`, in time order, reporting
    /// each finalized bucket (start, key) and each crossing.
    pub fn finalize_through(
        &mut self,
        limit_ms: i64,
        mut bucket_done: impl FnMut(i64, u32),
        mut f: impl FnMut(Crossing),
    ) {
        let Milestones {
            rule,
            buckets,
            final_gmv,
        } = self;
        buckets.close_through(limit_ms, |b| {
            bucket_done(b.start_ms, b.key);
            let cum = final_gmv.entry(b.key).or_insert(0);
            let before = *cum;
            *cum += b.sums.gmv_fen;
            for threshold_fen in rule.crossed(before, *cum) {
                f(Crossing {
                    key: b.key,
                    threshold_fen,
                    crossed_at_ms: b.start_ms + BUCKET_MS,
                    gmv_fen: *cum,
                });
            }
        });
    }

    pub fn open_buckets(&self) -> usize {
        self.buckets.open_slots()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> ThresholdRule {
        ThresholdRule {
            list_fen: vec![100],
            every_fen: None,
        }
    }

    #[test]
    fn crossing_is_at_the_end_of_the_bucket_in_event_time_order() {
        // Same events, two arrival orders: the crossing must be identical.
        let events = [(5_500, 60), (1_200, 30), (3_100, 20), (2_900, 50)];
        let mut results = vec![];
        for order in [[0, 1, 2, 3], [3, 2, 1, 0]] {
            let mut m = Milestones::new(rule());
            for i in order {
                let (ts, gmv) = events[i];
                m.add(ts, 7, gmv);
            }
            let mut hits = vec![];
            m.finalize_through(10_000, |_, _| {}, |c| hits.push(c));
            results.push(hits);
        }
        // Sorted by time: 1.2s:30, 2.9s:50 (80), 3.1s:20 (100) -> bucket [3s,4s) ends at 4s.
        let want = vec![Crossing {
            key: 7,
            threshold_fen: 100,
            crossed_at_ms: 4_000,
            gmv_fen: 100,
        }];
        assert_eq!(results[0], want);
        assert_eq!(results[1], want);
    }

    #[test]
    fn fires_once_even_when_more_arrives_and_not_before_the_bucket_is_final() {
        let mut m = Milestones::new(rule());
        m.add(500, 1, 150);
        let mut hits = vec![];
        m.finalize_through(999, |_, _| {}, |c| hits.push(c));
        assert!(hits.is_empty(), "bucket [0,1s) is not final before 1 s");
        m.finalize_through(1_000, |_, _| {}, |c| hits.push(c));
        assert_eq!(hits.len(), 1);
        m.add(1_500, 1, 500);
        m.finalize_through(5_000, |_, _| {}, |c| hits.push(c));
        assert_eq!(hits.len(), 1);
    }

    #[test]
    fn every_step_fires_each_multiple_and_restored_ones_are_not_repeated() {
        let mut m = Milestones::new(ThresholdRule {
            list_fen: vec![],
            every_fen: Some(10),
        });
        m.restore_final(1, 12);
        m.restore_bucket(0, 1, 23);
        m.add(500, 1, 12);
        assert_eq!(m.bucket(0, 1), Some(35));
        let mut hits = vec![];
        let mut done = vec![];
        m.finalize_through(
            1_000,
            |s, k| done.push((s, k)),
            |c| hits.push(c.threshold_fen),
        );
        assert_eq!(hits, vec![20, 30, 40]);
        assert_eq!(done, vec![(0, 1)]);
        assert_eq!(m.final_gmv(1), Some(47));
    }

    #[test]
    fn crossed_merges_list_and_step() {
        let r = ThresholdRule {
            list_fen: vec![5, 25],
            every_fen: Some(10),
        };
        assert_eq!(r.crossed(0, 30), vec![5, 10, 20, 25, 30]);
        assert_eq!(r.crossed(10, 19), Vec::<i128>::new());
        assert_eq!(r.crossed(9, 10), vec![10]);
    }
}
