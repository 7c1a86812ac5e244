//! Event-time watermark: per input partition the largest `ts_ms` minus the
//! out-of-orderness bound; the job's watermark is the minimum over partitions
//! that are not idle, and never goes back.

use crate::model::InputTopic;

/// An input partition: watermarks are kept per topic and partition.
pub type PartitionId = (InputTopic, i32);

#[derive(Debug, Clone)]
struct PartitionClock {
    /// Largest event time seen; `i64::MIN` until the first event.
    max_ts_ms: i64,
    /// Wall time of the last record (or of the assignment).
    last_seen_wall_ms: i64,
    idle: bool,
}

/// The watermark holder of one job instance.
#[derive(Debug, Clone)]
pub struct Watermarks {
    max_out_of_orderness_ms: i64,
    idle_timeout_ms: i64,
    /// A list, not a map: a task has one partition of each input topic, and
    /// the map's look-up for every event took 2.3% of the engine's time
    /// (docs/performance.md).
    parts: Vec<(PartitionId, PartitionClock)>,
    /// The job's watermark; `i64::MIN` before any partition has data.
    current_ms: i64,
}

impl Watermarks {
    pub fn new(max_out_of_orderness_ms: i64, idle_timeout_ms: i64) -> Self {
        Watermarks {
            max_out_of_orderness_ms,
            idle_timeout_ms,
            parts: Vec::new(),
            current_ms: i64::MIN,
        }
    }

    pub fn current_ms(&self) -> i64 {
        self.current_ms
    }

    /// Sets the assigned partitions; new ones start active at `now_ms`, kept ones keep their clocks.
    pub fn assign(&mut self, partitions: &[PartitionId], now_ms: i64) {
        self.parts.retain(|(p, _)| partitions.contains(p));
        for p in partitions {
            self.clock(*p, now_ms);
        }
        self.recompute();
    }

    /// Records an event; returns true when the job's watermark moved.
    pub fn observe(&mut self, part: PartitionId, ts_ms: i64, now_ms: i64) -> bool {
        let ooo = self.max_out_of_orderness_ms;
        let clock = self.clock(part, now_ms);
        clock.last_seen_wall_ms = now_ms;
        let was_idle = std::mem::replace(&mut clock.idle, false);
        if ts_ms <= clock.max_ts_ms && !was_idle {
            return false;
        }
        let old_wm = clock.max_ts_ms.saturating_sub(ooo);
        clock.max_ts_ms = clock.max_ts_ms.max(ts_ms);
        // Raising a partition that was above the minimum cannot move the minimum.
        if was_idle || old_wm <= self.current_ms || self.current_ms == i64::MIN {
            self.recompute()
        } else {
            false
        }
    }

    /// The partition has records waiting to be read: not idle, though none was read lately.
    pub fn touch(&mut self, part: PartitionId, now_ms: i64) {
        if let Some((_, c)) = self.parts.iter_mut().find(|(p, _)| *p == part) {
            c.last_seen_wall_ms = c.last_seen_wall_ms.max(now_ms);
        }
    }

    /// Partitions that turn idle at `now_ms` (nothing read for `idle_timeout`).
    /// Nothing read can also mean the broker is away; the caller asks it
    /// whether each has more to read, and `touch`es those it cannot clear.
    pub fn turning_idle(&self, now_ms: i64) -> impl Iterator<Item = PartitionId> + '_ {
        self.parts
            .iter()
            .filter(move |(_, c)| !c.idle && now_ms - c.last_seen_wall_ms >= self.idle_timeout_ms)
            .map(|(p, _)| *p)
    }

    /// Marks partitions idle after `idle_timeout`; returns true when the watermark moved.
    pub fn on_tick(&mut self, now_ms: i64) -> bool {
        let mut changed = false;
        for (_, c) in &mut self.parts {
            let idle = now_ms - c.last_seen_wall_ms >= self.idle_timeout_ms;
            changed |= idle != c.idle;
            c.idle = idle;
        }
        changed && self.recompute()
    }

    /// True when every assigned partition is idle (and there is at least one).
    pub fn all_idle(&self) -> bool {
        !self.parts.is_empty() && self.parts.iter().all(|(_, c)| c.idle)
    }

    pub fn idle_count(&self) -> usize {
        self.parts.iter().filter(|(_, c)| c.idle).count()
    }

    pub fn partition_count(&self) -> usize {
        self.parts.len()
    }

    /// Largest event time seen on any partition.
    pub fn max_event_ms(&self) -> i64 {
        self.parts
            .iter()
            .map(|(_, c)| c.max_ts_ms)
            .max()
            .unwrap_or(i64::MIN)
    }

    /// Largest event time per partition, for the changelog.
    pub fn clocks(&self) -> Vec<(PartitionId, i64)> {
        let mut v: Vec<_> = self.parts.iter().map(|(p, c)| (*p, c.max_ts_ms)).collect();
        v.sort_unstable();
        v
    }

    /// Puts back saved clocks and watermark (restore); idleness starts over from `now_ms`.
    pub fn restore(&mut self, clocks: &[(PartitionId, i64)], current_ms: i64, now_ms: i64) {
        for (p, max_ts_ms) in clocks {
            *self.clock(*p, now_ms) = PartitionClock {
                max_ts_ms: *max_ts_ms,
                last_seen_wall_ms: now_ms,
                idle: false,
            };
        }
        self.current_ms = self.current_ms.max(current_ms);
    }

    /// Moves the watermark forward to at least `to_ms` (the after-the-sale flush).
    pub fn advance_to(&mut self, to_ms: i64) -> bool {
        if to_ms > self.current_ms {
            self.current_ms = to_ms;
            true
        } else {
            false
        }
    }

    /// `part`'s clock, made (active, as of `now_ms`) if it has none.
    fn clock(&mut self, part: PartitionId, now_ms: i64) -> &mut PartitionClock {
        let i = match self.parts.iter().position(|(p, _)| *p == part) {
            Some(i) => i,
            None => {
                let fresh = PartitionClock {
                    max_ts_ms: i64::MIN,
                    last_seen_wall_ms: now_ms,
                    idle: false,
                };
                self.parts.push((part, fresh));
                self.parts.len() - 1
            }
        };
        &mut self.parts[i].1
    }

    fn recompute(&mut self) -> bool {
        let min = self
            .parts
            .iter()
            .map(|(_, c)| c)
            .filter(|c| !c.idle)
            .map(|c| c.max_ts_ms.saturating_sub(self.max_out_of_orderness_ms))
            .min();
        match min {
            Some(m) if m > self.current_ms => {
                self.current_ms = m;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InputTopic::*;

    #[test]
    fn minimum_over_partitions_minus_out_of_orderness() {
        let mut w = Watermarks::new(5_000, 10_000);
        w.assign(&[(Orders, 0), (Payments, 0)], 0);
        assert!(!w.observe((Orders, 0), 100_000, 0));
        assert_eq!(w.current_ms(), i64::MIN, "payments has no data yet");
        assert!(w.observe((Payments, 0), 50_000, 0));
        assert_eq!(w.current_ms(), 45_000);
        assert!(w.observe((Payments, 0), 200_000, 0));
        assert_eq!(w.current_ms(), 95_000);
        // Out-of-order event does not move it back.
        assert!(!w.observe((Payments, 0), 1_000, 0));
        assert_eq!(w.current_ms(), 95_000);
    }

    #[test]
    fn idle_partition_is_left_out_and_rejoins() {
        let mut w = Watermarks::new(5_000, 10_000);
        w.assign(&[(Orders, 0), (Orders, 1)], 0);
        w.observe((Orders, 0), 100_000, 0);
        assert_eq!(w.current_ms(), i64::MIN);
        // Partition 1 never speaks: idle after 10 s of wall time.
        assert!(!w.on_tick(9_999));
        w.observe((Orders, 0), 100_000, 9_999);
        assert!(w.on_tick(10_000));
        assert_eq!(w.current_ms(), 95_000);
        assert!(!w.all_idle());
        assert_eq!(w.idle_count(), 1);
        // It comes back behind: it rejoins, but the watermark never goes back.
        w.observe((Orders, 1), 50_000, 11_000);
        assert_eq!(w.current_ms(), 95_000);
        w.observe((Orders, 0), 300_000, 11_000);
        assert_eq!(w.current_ms(), 95_000, "held by partition 1 at 45 s");
        w.observe((Orders, 1), 250_000, 11_000);
        assert_eq!(w.current_ms(), 245_000);
        assert!(!w.on_tick(30_000), "no active partition left to move it");
        assert!(w.all_idle());
    }

    #[test]
    fn a_partition_with_records_waiting_is_not_idle() {
        let mut w = Watermarks::new(0, 10_000);
        w.assign(&[(Orders, 0), (Orders, 1)], 0);
        w.observe((Orders, 0), 100, 0);
        w.observe((Orders, 1), 50, 0);
        // Nothing read from partition 1 for 15 s, but its records wait to be read.
        w.touch((Orders, 1), 8_000);
        w.observe((Orders, 0), 200, 15_000);
        assert!(!w.on_tick(15_000));
        assert_eq!(w.idle_count(), 0);
        assert_eq!(w.current_ms(), 50, "held where partition 1 stands");
        // Once its queue stays empty for the timeout, it is idle.
        assert!(w.on_tick(18_000));
        assert_eq!(w.current_ms(), 200);
    }

    #[test]
    fn a_partition_turning_idle_is_named_first_and_a_touch_keeps_it_active() {
        let mut w = Watermarks::new(0, 10_000);
        w.assign(&[(Orders, 0), (Orders, 1)], 0);
        w.observe((Orders, 0), 100, 0);
        w.observe((Orders, 1), 50, 5_000);
        assert_eq!(w.turning_idle(9_999).count(), 0);
        assert_eq!(
            w.turning_idle(10_000).collect::<Vec<_>>(),
            vec![(Orders, 0)]
        );
        // The broker could not say it has nothing more: it stays active.
        w.touch((Orders, 0), 10_000);
        assert!(!w.on_tick(10_000));
        assert_eq!((w.idle_count(), w.current_ms()), (0, 50));
        // Cleared: idle, and no longer named.
        assert_eq!(w.turning_idle(20_000).count(), 2);
        w.on_tick(20_000);
        assert!(w.all_idle());
        assert_eq!(w.turning_idle(30_000).count(), 0);
    }

    #[test]
    fn raising_a_non_minimum_partition_is_cheap_and_correct() {
        let mut w = Watermarks::new(0, 10_000);
        w.assign(&[(Orders, 0), (Orders, 1)], 0);
        w.observe((Orders, 0), 10, 0);
        w.observe((Orders, 1), 20, 0);
        assert_eq!(w.current_ms(), 10);
        assert!(!w.observe((Orders, 1), 30, 0));
        assert!(w.observe((Orders, 0), 40, 0));
        assert_eq!(w.current_ms(), 30);
    }
}
