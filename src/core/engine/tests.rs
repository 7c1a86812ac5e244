use super::*;
use crate::core::local::LocalJob;
use crate::core::output::MilestoneRecord;
use crate::model::DeadReason;

struct Harness {
    e: LocalJob,
    out: Vec<Output>,
    offset: i64,
    now: i64,
}

/// Test times are relative to 2024-11-11T00:00:00Z (a whole minute): the
/// contract rejects event times before 2000 and ahead of the wall clock.
const T0: i64 = 1_731_283_200_000;

fn order(id: &str, brand: &str, channel: Option<&str>, ts: i64) -> String {
    let ts = T0 + ts;
    let ch = channel.map_or("null".to_string(), |c| format!("\"{c}\""));
    format!(
        r#"{{"order_id":"{id}","user_id":"u","brand_id":"{brand}","channel_id":{ch},"country":"CN","device":"pc","currency":"CNY","amount_minor":100,"ts_ms":{ts}}}"#
    )
}

fn pay(id: &str, order: &str, kind: &str, fen: i64, ts: i64) -> String {
    let ts = T0 + ts;
    format!(
        r#"{{"payment_id":"{id}","order_id":"{order}","kind":"{kind}","currency":"CNY","amount_minor":{fen},"ts_ms":{ts}}}"#
    )
}

fn deliver(id: &str, order: &str, status: &str, ts: i64) -> String {
    let ts = T0 + ts;
    format!(r#"{{"delivery_id":"{id}","order_id":"{order}","status":"{status}","ts_ms":{ts}}}"#)
}

impl Harness {
    fn new(cfg: EngineConfig) -> Self {
        let e = LocalJob::new(cfg, &[0], 1, T0);
        Harness {
            e,
            out: vec![],
            offset: 0,
            now: T0,
        }
    }

    /// Feeds `v` keyed by its `order_id`, as the contract's producers do.
    fn feed(&mut self, topic: InputTopic, v: &str) {
        let key = serde_json::from_str::<serde_json::Value>(v).unwrap()["order_id"]
            .as_str()
            .unwrap()
            .to_string();
        self.feed_keyed(topic, Some(key.as_bytes()), v);
    }

    fn feed_keyed(&mut self, topic: InputTopic, key: Option<&[u8]>, v: &str) {
        self.offset += 1;
        let src = Source {
            topic,
            partition: 0,
            offset: self.offset,
        };
        self.e
            .engine_mut()
            .on_record(src, key, Some(v.as_bytes()), &mut self.out);
    }

    /// Keeps every partition active and moves their watermarks to `ts`.
    fn heartbeat(&mut self, ts: i64) {
        self.feed(
            InputTopic::Orders,
            &order(&format!("hb-o-{ts}"), "hb", None, ts),
        );
        self.feed(
            InputTopic::Payments,
            &pay(
                &format!("hb-p-{ts}"),
                &format!("hb-o-{ts}"),
                "refund",
                1,
                ts,
            ),
        );
        self.feed(
            InputTopic::Deliveries,
            &deliver(&format!("hb-d-{ts}"), &format!("hb-o-{ts}"), "shipped", ts),
        );
        // The aggregation stage learns the new watermark.
        self.e.commit(&mut self.out);
    }

    fn idle_flush(&mut self) {
        self.now += 1_000_000;
        self.e.on_tick(self.now, &mut self.out);
    }

    fn final_windows(&self, dim: Dim, key: &str, size: i64) -> Vec<(i64, i128, i128, u64)> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Output::Window(w)
                    if w.is_final && w.dim == dim && w.key == key && w.window_size_ms == size =>
                {
                    Some((
                        w.window_start_ms - T0,
                        w.gmv_fen,
                        w.refund_fen,
                        w.paid_orders,
                    ))
                }
                _ => None,
            })
            .collect()
    }

    fn milestones(&self) -> Vec<MilestoneRecord> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Output::Milestone(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    /// Cumulative figures once every partial sum has reached the aggregation stage.
    fn totals(&mut self, dim: Dim, key: &str) -> Option<Totals> {
        self.e.commit(&mut self.out);
        self.e.engine().totals(dim, key)
    }

    fn dead(&self, reason: DeadReason) -> usize {
        self.out
            .iter()
            .filter(|o| matches!(o, Output::DeadLetter(d) if d.reason == reason))
            .count()
    }
}

#[test]
fn join_works_in_both_arrival_orders() {
    for order_first in [true, false] {
        let mut h = Harness::new(EngineConfig::default());
        let (o, p) = (
            order("o1", "b1", Some("c1"), 1_000),
            pay("p1", "o1", "paid", 500, 2_000),
        );
        if order_first {
            h.feed(InputTopic::Orders, &o);
            h.feed(InputTopic::Payments, &p);
        } else {
            h.feed(InputTopic::Payments, &p);
            h.feed(InputTopic::Orders, &o);
        }
        h.idle_flush();
        assert_eq!(
            h.final_windows(Dim::Brand, "b1", 60_000),
            vec![(0, 500, 0, 1)],
            "order first: {order_first}"
        );
        assert_eq!(
            h.final_windows(Dim::Channel, "c1", 60_000),
            vec![(0, 500, 0, 1)]
        );
        assert_eq!(
            h.final_windows(Dim::Country, "CN", 60_000),
            vec![(0, 500, 0, 1)]
        );
        assert_eq!(
            h.final_windows(Dim::Total, "all", 1_000),
            vec![(2_000, 500, 0, 1)]
        );
        assert_eq!(h.totals(Dim::Brand, "b1").unwrap().placed_orders, 1);
        assert_eq!(h.e.engine().stats().join_timeouts, [0, 0, 0]);
    }
}

#[test]
fn payment_without_order_times_out_to_unknown_and_a_later_order_does_not_move_it() {
    let mut h = Harness::new(EngineConfig::default());
    h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 700, 10_000));
    h.heartbeat(10_000);
    // Watermark at 70 s - 5 s: not yet past 10 s + 60 s.
    h.heartbeat(74_999);
    assert_eq!(
        h.e.engine().stats().join_timeouts[InputTopic::Payments.index()],
        0
    );
    h.heartbeat(75_000);
    assert_eq!(
        h.e.engine().stats().join_timeouts[InputTopic::Payments.index()],
        1
    );
    h.feed(InputTopic::Orders, &order("o1", "b1", None, 75_000));
    h.idle_flush();
    assert_eq!(
        h.final_windows(Dim::Brand, "unknown", 60_000),
        vec![(0, 700, 0, 1)]
    );
    assert_eq!(
        h.final_windows(Dim::Country, "unknown", 60_000),
        vec![(0, 700, 0, 1)]
    );
    assert!(
        h.final_windows(Dim::Brand, "b1", 60_000).is_empty(),
        "the late order does not move the payment"
    );
    assert_eq!(
        h.totals(Dim::Brand, "b1").unwrap().placed_orders,
        1,
        "but it counts as placed"
    );
    // The total never waited.
    let total: i128 = h
        .final_windows(Dim::Total, "all", 60_000)
        .iter()
        .map(|w| w.1)
        .sum();
    assert_eq!(total, 700);
}

#[test]
fn late_events_are_dead_lettered_and_counted_nowhere() {
    let mut h = Harness::new(EngineConfig::default());
    h.heartbeat(200_000);
    // Watermark 195 s; late below 135 s.
    h.feed(
        InputTopic::Payments,
        &pay("p-late", "x", "paid", 9, 134_999),
    );
    h.feed(InputTopic::Payments, &pay("p-ok", "x", "paid", 11, 135_000));
    assert_eq!(h.dead(DeadReason::Late), 1);
    assert_eq!(
        h.e.engine().stats().late_events[InputTopic::Payments.index()],
        1
    );
    h.idle_flush();
    assert_eq!(
        h.final_windows(Dim::Total, "all", 60_000)
            .iter()
            .map(|w| w.1)
            .sum::<i128>(),
        11
    );
}

#[test]
fn duplicates_within_ttl_count_once() {
    let mut h = Harness::new(EngineConfig::default());
    h.feed(InputTopic::Orders, &order("o1", "b1", None, 1_000));
    h.feed(InputTopic::Orders, &order("o1", "b1", None, 1_000));
    h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 100, 1_000));
    h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 100, 1_500));
    h.feed(
        InputTopic::Deliveries,
        &deliver("d1", "o1", "shipped", 2_000),
    );
    h.feed(
        InputTopic::Deliveries,
        &deliver("d1", "o1", "shipped", 2_000),
    );
    assert_eq!(h.e.engine().stats().duplicates, [1, 1, 1]);
    let t = h.totals(Dim::Brand, "b1").unwrap();
    assert_eq!(
        (t.placed_orders, t.paid_orders, t.gmv_fen, t.shipped_orders),
        (1, 1, 100, 1)
    );
}

#[test]
fn refund_is_summed_separately_and_never_lowers_gmv() {
    let mut h = Harness::new(EngineConfig::default());
    h.feed(InputTopic::Orders, &order("o1", "b1", None, 1_000));
    h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 100, 1_000));
    h.feed(InputTopic::Payments, &pay("r1", "o1", "refund", 40, 2_000));
    h.idle_flush();
    assert_eq!(
        h.final_windows(Dim::Brand, "b1", 60_000),
        vec![(0, 100, 40, 1)]
    );
}

#[test]
fn milestones_do_not_depend_on_arrival_order_and_fire_once() {
    let mut cfg = EngineConfig::default();
    cfg.milestones[Dim::Brand.index()] = ThresholdRule {
        list_fen: vec![1_000],
        every_fen: None,
    };
    let events = vec![
        (InputTopic::Orders, order("o1", "b1", None, 1_000)),
        (InputTopic::Orders, order("o2", "b1", None, 1_000)),
        (InputTopic::Orders, order("o3", "b1", None, 1_000)),
        (InputTopic::Payments, pay("p3", "o3", "paid", 600, 4_200)),
        (InputTopic::Payments, pay("p1", "o1", "paid", 600, 2_500)),
        (InputTopic::Payments, pay("p2", "o2", "paid", 600, 3_700)),
    ];
    let mut seen = vec![];
    for rev in [false, true] {
        let mut h = Harness::new(cfg.clone());
        let mut ev = events.clone();
        if rev {
            ev.reverse();
        }
        for (t, v) in &ev {
            h.feed(*t, v);
        }
        h.idle_flush();
        h.idle_flush();
        let m = h.milestones();
        assert_eq!(m.len(), 1);
        seen.push(m[0].clone());
    }
    // 600 at 2.5 s, 1200 at 3.7 s: bucket [3 s, 4 s) ends at 4 s.
    assert_eq!(seen[0], seen[1]);
    assert_eq!(
        (
            seen[0].crossed_at_ms - T0,
            seen[0].gmv_fen,
            seen[0].threshold_fen
        ),
        (4_000, 1_200, 1_000)
    );
}

#[test]
fn windows_close_with_the_watermark_plus_lateness_and_updates_have_revisions() {
    let mut h = Harness::new(EngineConfig::default());
    h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 5, 30_000));
    h.heartbeat(30_000);
    h.now += 1;
    h.e.on_tick(h.now, &mut h.out);
    let open: Vec<_> = h
        .out
        .iter()
        .filter_map(|o| match o {
            Output::Window(w) if w.dim == Dim::Total && w.window_size_ms == 60_000 => {
                Some((w.is_final, w.revision, w.gmv_fen))
            }
            _ => None,
        })
        .collect();
    assert_eq!(open, vec![(false, 1, 5)]);
    // Window [0, 60 s) closes when the watermark reaches 120 s: events up to 125 s.
    h.heartbeat(124_999);
    assert!(h.final_windows(Dim::Total, "all", 60_000).is_empty());
    h.heartbeat(125_000);
    assert_eq!(
        h.final_windows(Dim::Total, "all", 60_000),
        vec![(0, 5, 1, 1)]
    );
    let finals: Vec<_> = h
        .out
        .iter()
        .filter_map(|o| match o {
            Output::Window(w)
                if w.is_final
                    && w.dim == Dim::Total
                    && w.window_start_ms == T0
                    && w.window_size_ms == 60_000 =>
            {
                Some(w.revision)
            }
            _ => None,
        })
        .collect();
    assert_eq!(finals, vec![2]);
}

#[test]
fn after_the_sale_everything_closes_and_later_events_are_late() {
    let mut h = Harness::new(EngineConfig::default());
    h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 5, 59_000));
    assert!(h.final_windows(Dim::Total, "all", 60_000).is_empty());
    h.idle_flush();
    assert_eq!(
        h.final_windows(Dim::Total, "all", 60_000),
        vec![(0, 5, 0, 1)]
    );
    assert_eq!(
        h.e.engine().stats().join_timeouts[InputTopic::Payments.index()],
        1
    );
    h.feed(InputTopic::Payments, &pay("p2", "o1", "paid", 5, 59_500));
    assert_eq!(h.dead(DeadReason::Late), 1);
}

#[test]
fn records_keyed_otherwise_or_timed_implausibly_are_invalid() {
    let mut h = Harness::new(EngineConfig::default());
    let p = pay("p1", "o1", "paid", 5, 1_000);
    h.feed_keyed(InputTopic::Payments, None, &p);
    h.feed_keyed(InputTopic::Payments, Some(b"o2"), &p);
    // Seconds instead of milliseconds.
    let seconds = format!(
        r#"{{"payment_id":"p2","order_id":"o1","kind":"paid","currency":"CNY","amount_minor":5,"ts_ms":{}}}"#,
        (T0 + 1_000) / 1000
    );
    h.feed(InputTopic::Payments, &seconds);
    // A broken producer clock: just over time.max_future ahead of the wall clock.
    h.feed(InputTopic::Payments, &pay("p3", "o1", "paid", 5, 3_600_001));
    assert_eq!(h.dead(DeadReason::InvalidField), 4);
    assert_eq!(h.e.engine().stats().paid_fen, 0);
    // Exactly max_future ahead is still plausible.
    h.feed(InputTopic::Payments, &pay("p4", "o1", "paid", 5, 3_600_000));
    assert_eq!(h.dead(DeadReason::InvalidField), 4);
    assert_eq!(h.e.engine().stats().paid_fen, 5);
}

#[test]
fn events_beyond_the_most_waiting_for_one_order_go_to_unknown_at_once() {
    use crate::core::join::MAX_WAITING_PER_ORDER;
    let mut h = Harness::new(EngineConfig::default());
    let n = MAX_WAITING_PER_ORDER + 5;
    for i in 0..n {
        h.feed(
            InputTopic::Payments,
            &pay(&format!("p{i}"), "o1", "paid", 1, 1_000),
        );
    }
    assert_eq!(h.e.engine().stats().join_overflows, [0, 5, 0]);
    h.feed(InputTopic::Orders, &order("o1", "b1", None, 1_000));
    let b1 = h.totals(Dim::Brand, "b1").unwrap();
    let unknown = h.totals(Dim::Brand, "unknown").unwrap();
    let total = h.totals(Dim::Total, "all").unwrap();
    assert_eq!(
        (b1.gmv_fen, unknown.gmv_fen, total.gmv_fen),
        (MAX_WAITING_PER_ORDER as i128, 5, n as i128),
        "every payment counted once: the total, and its order's brand or unknown"
    );
}

#[test]
fn pay_to_delivery_is_observed() {
    let mut h = Harness::new(EngineConfig::default());
    h.feed(
        InputTopic::Deliveries,
        &deliver("d1", "o1", "delivered", 9_000),
    );
    h.feed(InputTopic::Payments, &pay("p1", "o1", "paid", 5, 1_000));
    h.feed(InputTopic::Orders, &order("o1", "b1", None, 500));
    assert!(h.out.contains(&Output::PayToDelivery { millis: 8_000 }));
    assert_eq!(h.totals(Dim::Brand, "b1").unwrap().delivered_orders, 1);
}

/// Sums of one key and bucket from several attribution tasks go out as one
/// entry, on the aggregation partition that owns the key, with every task's
/// progress.
#[test]
fn the_tasks_sums_of_a_key_merge_into_one_entry() {
    let mut e = Engine::new(EngineConfig::default());
    for p in 0..3 {
        e.add_attribution(p, T0);
    }
    let mut out = vec![];
    for p in 0..3 {
        let id = format!("o{p}");
        let v = order(&id, "b1", Some("c1"), 1_000);
        let src = Source {
            topic: InputTopic::Orders,
            partition: p,
            offset: 0,
        };
        e.on_record(src, Some(id.as_bytes()), Some(v.as_bytes()), &mut out);
    }
    let work = e.take_work(4);
    assert_eq!(work.sums.split.len(), 4);
    assert_eq!(
        work.sums
            .progress
            .iter()
            .map(|(p, _)| *p)
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let mut got: Vec<(Dim, String, u64)> = vec![];
    for (r, entries) in work.sums.split.iter().enumerate() {
        for x in entries {
            let owner = crate::core::state::aggregation_partition(x.dim, &x.key, 4);
            assert_eq!(r as i32, owner, "{x:?}");
            got.push((x.dim, x.key.to_string(), x.delta.placed_orders));
        }
    }
    got.sort();
    let want = [
        (Dim::Total, TOTAL_KEY, 3),
        (Dim::Brand, "b1", 3),
        (Dim::Channel, "c1", 3),
        (Dim::Country, "CN", 3),
    ];
    let mut want: Vec<(Dim, String, u64)> = want
        .iter()
        .map(|(d, k, n)| (*d, k.to_string(), *n))
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert!(e.take_work(4).sums.split.iter().all(Vec::is_empty));
}

/// Dropped tasks take their uncounted sums with them: restored, they count
/// their records again from the last commit.
#[test]
fn sums_of_dropped_tasks_are_not_sent() {
    let mut e = Engine::new(EngineConfig::default());
    let mut out = vec![];
    for p in 0..2 {
        e.add_attribution(p, T0);
        let id = format!("o{p}");
        let v = order(&id, "b1", None, 1_000);
        let src = Source {
            topic: InputTopic::Orders,
            partition: p,
            offset: 0,
        };
        e.on_record(src, Some(id.as_bytes()), Some(v.as_bytes()), &mut out);
    }
    e.retain(|_, _| false);
    assert!(e.take_work(1).sums.split.iter().all(Vec::is_empty));
}

/// The tasks by partition: found by number, in partition order, counted,
/// and gone once dropped; a negative number finds nothing.
#[test]
fn tasks_are_found_by_partition_and_iterate_in_order() {
    let mut t = Tasks::default();
    for p in [5, 0, 9, 5] {
        t.insert(p, p * 10);
    }
    assert_eq!(t.len(), 3);
    assert_eq!(t.values().copied().collect::<Vec<_>>(), vec![0, 50, 90]);
    assert_eq!(
        (t.get(&9), t.get(&3), t.get(&-1), t.get(&100)),
        (Some(&90), None, None, None)
    );
    t.retain(|p, _| *p != 5);
    assert_eq!((t.len(), t.get(&5)), (2, None));
    *t.get_mut(&0).unwrap() += 1;
    assert_eq!(t.values().copied().collect::<Vec<_>>(), vec![1, 90]);
    t.retain(|_, _| false);
    assert!(t.is_empty());
}
