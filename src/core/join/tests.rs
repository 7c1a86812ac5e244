use super::*;

/// `w` for `order_id`, which has no order yet: parked.
fn park(j: &mut JoinState, order_id: &str, w: Waiting) {
    assert_eq!(
        j.attach(order_id, w),
        Attach::Parked,
        "no order yet: parked"
    );
}

/// A sweep of the orders walked to its end at once.
fn sweep_orders_whole(j: &mut JoinState, limit_ms: i64) {
    j.sweep_orders(limit_ms);
    assert!(j.sweep_step(usize::MAX));
}

/// A sweep of the ids walked to its end at once.
fn sweep_whole(d: &mut Dedup, limit_ms: i64) {
    d.sweep(limit_ms);
    assert!(d.sweep_step(usize::MAX));
}

fn attr(b: u32) -> Attribution {
    Attribution {
        brand: b,
        channel: NO_CHANNEL,
        country: 0,
    }
}

fn pay(ts: i64, deadline: i64) -> Waiting {
    Waiting {
        ts_ms: ts,
        deadline_ms: deadline,
        what: Joinable::Payment {
            kind: PaymentKind::Paid,
            amount_fen: 1,
        },
    }
}

#[test]
fn restored_values_replace_earlier_ones_and_none_forgets() {
    let mut j = JoinState::default();
    let order = OrderInfo {
        attribution: attr(1),
        ts_ms: 10,
        first_paid_ms: i64::MAX,
    };
    // As a replay of batches: a payment waits, its order comes, the id is forgotten.
    j.restore(
        j.fingerprint("a"),
        Some((None, vec![pay(5, 100), pay(6, 100)])),
    );
    j.restore(j.fingerprint("b"), Some((Some(order), vec![])));
    assert_eq!((j.order_count(), j.waiting_count()), (1, 2));
    j.restore(j.fingerprint("a"), Some((Some(order), vec![])));
    assert_eq!((j.order_count(), j.waiting_count()), (2, 0));
    assert_eq!(j.order("a"), Some(order));
    j.restore(j.fingerprint("a"), None);
    j.restore(j.fingerprint("c"), None);
    assert_eq!((j.order_count(), j.waiting_count()), (1, 0));
    assert!(j.order("a").is_none());
    // The replaced value's deadline is still in the heap: it releases nothing.
    let mut released = 0;
    j.expire(1_000, |_| released += 1);
    assert_eq!(released, 0);
    let mut d = Dedup::default();
    d.restore(d.fingerprint("p"), Some(1));
    d.restore(d.fingerprint("q"), Some(2));
    d.restore(d.fingerprint("p"), None);
    assert_eq!(d.len(), 1);
    assert!(d.first_copy("p", 1, 10) && !d.first_copy("q", 2, 10));
}

#[test]
fn waiting_events_are_released_by_their_order() {
    let mut j = JoinState::default();
    park(&mut j, "o1", pay(10, 100));
    park(&mut j, "o1", pay(20, 110));
    assert_eq!(j.waiting_count(), 2);
    let info = OrderInfo {
        attribution: attr(3),
        ts_ms: 30,
        first_paid_ms: i64::MAX,
    };
    let paid = OrderInfo {
        first_paid_ms: 10,
        ..info
    };
    assert_eq!(
        j.insert_order("o1", info, 0),
        Ok((paid, vec![pay(10, 100), pay(20, 110)])),
        "released with the first paid payment's time on the order"
    );
    assert_eq!(j.order("o1"), Some(paid));
    assert_eq!(j.waiting_count(), 0);
    let mut expired = vec![];
    j.expire(1_000, |w| expired.push(w));
    assert!(expired.is_empty(), "released events do not time out too");
}

#[test]
fn waiting_events_expire_by_deadline_only() {
    let mut j = JoinState::default();
    park(&mut j, "o1", pay(10, 100));
    park(&mut j, "o1", pay(50, 150));
    park(&mut j, "o2", pay(20, 120));
    let mut expired = vec![];
    j.expire(99, |w| expired.push(w.ts_ms));
    assert!(expired.is_empty());
    j.expire(120, |w| expired.push(w.ts_ms));
    expired.sort();
    assert_eq!(expired, vec![10, 20]);
    assert_eq!(j.waiting_count(), 1);
    let released = j.insert_order(
        "o1",
        OrderInfo {
            attribution: attr(1),
            ts_ms: 0,
            first_paid_ms: i64::MAX,
        },
        0,
    );
    assert_eq!(released.map(|r| r.1), Ok(vec![pay(50, 150)]));
    let info = OrderInfo {
        attribution: attr(1),
        ts_ms: 5,
        first_paid_ms: i64::MAX,
    };
    assert_eq!(
        j.insert_order("o1", info, 10),
        Err(DuplicateOrder),
        "within dedup_ttl"
    );
    assert_eq!(j.order_count(), 1);
    sweep_orders_whole(&mut j, 6);
    assert_eq!(j.order_count(), 0);
}

#[test]
fn dedup_within_ttl_and_again_after() {
    let mut d = Dedup::default();
    assert!(d.first_copy("p1", 1_000, 3_600_000));
    assert!(!d.first_copy("p1", 1_000, 3_600_000));
    assert!(
        !d.first_copy("p1", 3_601_000, 3_600_000),
        "exactly ttl apart is still a repeat"
    );
    assert!(
        d.first_copy("p1", 3_601_001, 3_600_000),
        "more than ttl apart counts again"
    );
    sweep_whole(&mut d, 3_601_002);
    assert!(d.is_empty());
}

/// What a drain hands out for an id, the waiting events counted.
#[derive(Debug, PartialEq)]
enum Drained {
    Removed,
    FirstPaid(OrderInfo),
    Slot(Option<OrderInfo>, usize),
}

/// What a drain hands out, by id (the order across ids is not kept): the
/// fingerprints it names named back, among the ids these tests use.
fn drained(j: &mut JoinState) -> Vec<(String, Drained)> {
    let ids: Vec<String> = std::iter::once("untracked".to_string())
        .chain((0..10).map(|n| format!("o{n}")))
        .collect();
    let named: std::collections::HashMap<Fingerprint, String> =
        ids.into_iter().map(|id| (j.fingerprint(&id), id)).collect();
    let mut out = vec![];
    j.drain_changes(|fp, change| {
        let change = match change {
            SlotChange::Removed => Drained::Removed,
            SlotChange::FirstPaid(o) => Drained::FirstPaid(o),
            SlotChange::Slot(o, w) => Drained::Slot(o, w.len()),
        };
        out.push((named[&fp].clone(), change))
    });
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn changes_drain_once_per_id_with_the_current_value() {
    let mut j = JoinState::default();
    let info = |ts| OrderInfo {
        attribution: attr(1),
        ts_ms: ts,
        first_paid_ms: i64::MAX,
    };
    j.insert_order("untracked", info(1), 0).unwrap();
    j.track_changes();
    assert!(
        drained(&mut j).is_empty(),
        "changes before tracking are not listed"
    );
    park(&mut j, "o1", pay(10, 100));
    // The parked payment is released, and its time recorded as the first paid.
    j.insert_order("o1", info(5), 0).unwrap();
    park(&mut j, "o2", pay(20, 50));
    let paid = OrderInfo {
        first_paid_ms: 10,
        ..info(5)
    };
    assert_eq!(
        drained(&mut j),
        vec![
            ("o1".into(), Drained::Slot(Some(paid), 0)),
            ("o2".into(), Drained::Slot(None, 1))
        ]
    );
    assert!(drained(&mut j).is_empty(), "each change is drained once");
    // o2 expires (removed), then is made anew in the same interval.
    j.expire(60, |_| {});
    assert_eq!(drained(&mut j), vec![("o2".into(), Drained::Removed)]);
    park(&mut j, "o3", pay(20, 50));
    j.expire(60, |_| {});
    j.insert_order("o3", info(7), 0).unwrap();
    assert!(matches!(j.attach("o1", pay(8, 100)), Attach::Joined(_)));
    assert_eq!(
        drained(&mut j),
        vec![
            (
                "o1".into(),
                Drained::FirstPaid(OrderInfo {
                    first_paid_ms: 8,
                    ..info(5)
                })
            ),
            ("o3".into(), Drained::Slot(Some(info(7)), 0)),
        ],
        "an order handed out before, then paid earlier, is handed out as its \
         first payment alone; a slot removed and made anew is written once, \
         with its current value"
    );
    sweep_orders_whole(&mut j, 6);
    assert!(
        drained(&mut j).is_empty(),
        "swept orders are not written (a restore sweeps again)"
    );
    assert!(j.order("o1").is_none() && j.order("untracked").is_none());
    assert_eq!(j.order("o3"), Some(info(7)));
    // A slot freed and taken by another id in the same interval: the first
    // id's removal and the second's value, each once.
    park(&mut j, "o5", pay(30, 40));
    j.expire(60, |_| {});
    j.insert_order("o6", info(9), 0).unwrap();
    assert_eq!(
        drained(&mut j),
        vec![
            ("o5".into(), Drained::Removed),
            ("o6".into(), Drained::Slot(Some(info(9)), 0))
        ]
    );
    assert_eq!((j.order_count(), j.waiting_count()), (2, 0));
    // Paid after it was handed out, then placed again (past the dedup TTL)
    // in the same interval: handed out whole, once, its payment kept.
    j.insert_order("o7", info(11), 0).unwrap();
    drained(&mut j);
    assert!(matches!(j.attach("o7", pay(12, 100)), Attach::Joined(_)));
    j.insert_order("o7", info(13), 0).unwrap();
    let whole = OrderInfo {
        first_paid_ms: 12,
        ..info(13)
    };
    assert_eq!(
        drained(&mut j),
        vec![("o7".into(), Drained::Slot(Some(whole), 0))]
    );
}

const DAY: i64 = 86_400_000;
const T0: i64 = 1_762_790_400_000; // 2025-11-10

/// Ids' times far apart (200 days behind the newest, 60 ahead) stay exact in
/// their four bytes through sweeps that move the base: a copy at exactly the
/// TTL is dropped, the changelog gets each time whole, and a sweep forgets
/// exactly the ids before its limit.
#[test]
fn id_times_stay_exact_across_sweeps_that_move_the_base() {
    let ttl = 3_600_000;
    let mut d = Dedup::default();
    d.track_changes();
    let mut held: Vec<(String, i64)> = [T0, T0 - 200 * DAY, T0 + 60 * DAY, T0 + 1, T0 - 25 * DAY]
        .iter()
        .enumerate()
        .map(|(n, &ts)| (format!("p{n}"), ts))
        .collect();
    for (id, ts) in &held {
        assert!(d.first_copy(id, *ts, ttl));
    }
    let check = |d: &mut Dedup, held: &[(String, i64)]| {
        assert_eq!(d.len(), held.len());
        for (id, ts) in held {
            assert!(!d.first_copy(id, ts - ttl, ttl), "{id} at {ts} - ttl");
            assert!(!d.first_copy(id, ts + ttl, ttl), "{id} at {ts} + ttl");
            d.touch(d.fingerprint(id));
        }
        let mut out = Vec::new();
        d.drain_changes(|fp, ts| out.push((fp, ts.expect("held"))));
        out.sort();
        let mut want: Vec<_> = held
            .iter()
            .map(|(id, ts)| (d.fingerprint(id), *ts))
            .collect();
        want.sort();
        assert_eq!(out, want);
    };
    check(&mut d, &held);
    // Below every time: nothing goes.
    sweep_whole(&mut d, T0 - 300 * DAY);
    check(&mut d, &held);
    // Forgets p1; the base moves up to the limit, p2 (60 days on) kept whole.
    sweep_whole(&mut d, T0 - 30 * DAY);
    held.retain(|(_, ts)| *ts >= T0 - 30 * DAY);
    check(&mut d, &held);
    assert_eq!(
        d.times.far_len(),
        1,
        "only p2, beyond the 49 days above the base"
    );
    sweep_whole(&mut d, T0 + 59 * DAY);
    held.retain(|(_, ts)| *ts >= T0 + 59 * DAY);
    assert_eq!(held.len(), 1);
    check(&mut d, &held);
    assert_eq!(d.times.far_len(), 0);
    // A copy one millisecond past the TTL counts again.
    assert!(d.first_copy("p2", T0 + 60 * DAY + ttl + 1, ttl));
}

/// An order's two times, far from each other and from other orders', stay
/// exact through sweeps that move the base; a sweep forgets exactly the
/// orders placed before its limit.
#[test]
fn order_times_stay_exact_across_sweeps_that_move_the_base() {
    let mut j = JoinState::default();
    let orders: Vec<(String, OrderInfo)> = [
        (T0, T0 + 1),
        (T0 - 100 * DAY, T0 + 40 * DAY),
        (T0 + 50 * DAY, T0 - 3 * DAY),
        (T0 + 2, i64::MAX),
    ]
    .iter()
    .enumerate()
    .map(|(n, &(ts, paid))| {
        let info = OrderInfo {
            attribution: attr(n as u32),
            ts_ms: ts,
            first_paid_ms: paid,
        };
        (format!("o{n}"), info)
    })
    .collect();
    for (id, info) in &orders {
        let (got, _) = j.insert_order(id, *info, 1_000).expect("new");
        assert_eq!(got, *info);
    }
    for (limit, kept) in [(T0 - 200 * DAY, 4), (T0 - 10 * DAY, 3), (T0 + 10 * DAY, 1)] {
        sweep_orders_whole(&mut j, limit);
        assert_eq!(j.order_count(), kept, "after a sweep at {limit}");
        for (id, info) in &orders {
            let want = (info.ts_ms >= limit).then_some(*info);
            assert_eq!(j.order(id), want, "{id}");
        }
    }
}

/// De-duplication against a plain map of whole times, over random ids,
/// times spread over a year (most far from any base), copies at and around
/// the TTL, restores and sweeps: the same answer for every event, and the
/// same ids and times handed to the changelog.
#[test]
fn dedup_matches_a_map_of_whole_times() {
    dedup_against_a_map(19, false);
}

/// The same with each sweep walked in steps of 1 to 40 slots among the
/// events, as the attribution task walks it a step per tick. While a sweep
/// is under way, an id seen before its limit may or may not be forgotten
/// yet; the task sees no copy of it that could tell (a copy within the TTL
/// of it would be late), and neither do these events.
#[test]
fn dedup_matches_a_map_of_whole_times_with_sweeps_in_steps() {
    dedup_against_a_map(23, true);
}

fn dedup_against_a_map(seed: u64, in_steps: bool) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let ttl = 3_600_000;
    let mut d = Dedup::default();
    d.track_changes();
    let mut model: std::collections::HashMap<String, i64> = Default::default();
    let mut clock = T0;
    // The limit of the sweep under way, in steps.
    let mut under_way: Option<i64> = None;
    let mut steps = 0;
    for step in 0..200_000 {
        clock += rng.gen_range(0..50_000);
        let id = format!("p{}", rng.gen_range(0..5_000));
        if under_way.is_some() && rng.gen_range(0..4) == 0 {
            steps += 1;
            if d.sweep_step(rng.gen_range(1..=40)) {
                under_way = None;
            }
        }
        match rng.gen_range(0..100) {
            0 => {
                let limit = clock - rng.gen_range(0..400 * DAY);
                if in_steps {
                    d.sweep(limit);
                    under_way = Some(limit);
                } else {
                    sweep_whole(&mut d, limit);
                }
                model.retain(|_, ts| *ts >= limit);
            }
            1 => {
                d.restore(d.fingerprint(&id), None);
                model.remove(&id);
            }
            n => {
                let mut ts = match (n, model.get(&id)) {
                    (2..=40, Some(&seen)) => {
                        seen + rng.gen_range(-1..=1) + ttl * rng.gen_range(-1..=1)
                    }
                    (41..=60, _) => clock - rng.gen_range(0..365 * DAY),
                    _ => clock + rng.gen_range(-ttl..ttl),
                };
                if let Some(limit) = under_way {
                    ts = ts.max(limit + ttl + 1);
                }
                let first = match model.get(&id) {
                    Some(&seen) if (ts - seen).abs() <= ttl => false,
                    _ => {
                        model.insert(id.clone(), ts);
                        true
                    }
                };
                assert_eq!(
                    d.first_copy(&id, ts, ttl),
                    first,
                    "step {step}: {id} at {ts}"
                );
            }
        }
    }
    if in_steps {
        assert!(steps > 1_000, "{steps} steps walked");
    }
    d.sweep_step(usize::MAX);
    assert_eq!(d.len(), model.len());
    for id in model.keys() {
        d.touch(d.fingerprint(id));
    }
    let mut out = std::collections::HashMap::new();
    d.drain_changes(|fp, ts| {
        out.insert(fp, ts);
    });
    for (id, ts) in &model {
        assert_eq!(out.get(&d.fingerprint(id)), Some(&Some(*ts)), "{id}");
    }
}

/// A sweep of the orders walked in steps of 5 slots, with orders coming
/// between the steps (into slots the sweep has passed, freed by it, and not
/// passed yet) and payments for old and new ones: throughout, every order at
/// or after the limit reads exactly as put, and every one before it is
/// forgotten, as by a sweep walked at once (a payment for one waits).
#[test]
fn orders_stay_exact_through_a_sweep_in_steps() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut j = JoinState::default();
    let limit = T0 - DAY;
    let mut put: Vec<(String, OrderInfo)> = Vec::new();
    let order = |rng: &mut rand_chacha::ChaCha8Rng, n: usize, old: bool| {
        let ts = if old {
            limit - rng.gen_range(1..40 * DAY)
        } else {
            limit + rng.gen_range(0..60 * DAY)
        };
        let info = OrderInfo {
            attribution: attr(n as u32),
            ts_ms: ts,
            first_paid_ms: if rng.gen_bool(0.5) {
                i64::MAX
            } else {
                ts + rng.gen_range(0..DAY)
            },
        };
        (format!("o{n}"), info)
    };
    for n in 0..600 {
        let (id, info) = order(&mut rng, n, n % 2 == 0);
        j.insert_order(&id, info, 1_000).expect("new");
        put.push((id, info));
    }
    j.sweep_orders(limit);
    let mut steps = 0;
    while !j.sweep_step(5) {
        steps += 1;
        // Three a step, where the sweep frees about two and a half: most
        // take a freed slot, some one at the slab's end, not passed yet.
        for _ in 0..3 {
            let n = put.len();
            let (id, info) = order(&mut rng, n, false);
            j.insert_order(&id, info, 1_000).expect("new");
            put.push((id, info));
        }
        // A first payment, earlier than any: the order's time of it moves.
        let k = rng.gen_range(0..put.len());
        let ts = put[k].1.ts_ms;
        let got = j.attach(&put[k].0, pay(ts, ts + 1));
        if ts >= limit {
            put[k].1.first_paid_ms = put[k].1.first_paid_ms.min(ts);
            assert_eq!(got, Attach::Joined(put[k].1));
        } else {
            assert_eq!(got, Attach::Parked, "{}'s order is forgotten", put[k].0);
        }
        for (id, info) in &put {
            let want = (info.ts_ms >= limit).then_some(*info);
            assert_eq!(j.order(id), want, "{id} after {steps} steps");
        }
    }
    assert!(
        steps > 600 / 5,
        "{steps} steps: the slab grew as it was walked"
    );
    for (id, info) in &put {
        assert_eq!(j.order(id), (info.ts_ms >= limit).then_some(*info), "{id}");
    }
    assert_eq!(
        j.order_count(),
        put.iter().filter(|(_, o)| o.ts_ms >= limit).count()
    );
    assert!(j.waiting_count() > 0, "payments for forgotten orders wait");
}
