//! Order ⋈ payment/delivery on `order_id`, either arrival order, bounded by
//! `join_timeout` in event time; and the de-duplication sets.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use compact_str::CompactString;

use super::FastMap;
use crate::model::{DeliveryStatus, InputTopic, PaymentKind};

/// Channel id of an order placed outside any livestream.
pub const NO_CHANNEL: u32 = u32::MAX;

/// The dimension keys a payment or delivery takes from its order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attribution {
    pub brand: u32,
    pub channel: u32,
    pub country: u32,
}

/// What the job keeps of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderInfo {
    pub attribution: Attribution,
    pub ts_ms: i64,
    /// Event time of the first `paid` payment joined to it; `i64::MAX` until then.
    pub first_paid_ms: i64,
}

/// A payment, refund or delivery whose order has not arrived yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Joinable {
    Payment { kind: PaymentKind, amount_fen: i64 },
    Delivery { status: DeliveryStatus },
}

impl Joinable {
    pub fn topic(&self) -> InputTopic {
        match self {
            Joinable::Payment { .. } => InputTopic::Payments,
            Joinable::Delivery { .. } => InputTopic::Deliveries,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Waiting {
    pub ts_ms: i64,
    pub deadline_ms: i64,
    pub what: Joinable,
}

/// What is known of one order id: the order, and events waiting for it.
/// The order's fields are kept flat, not as an `Option<OrderInfo>`, so the
/// flags fill the attribution's padding: with the id, 64 bytes a slot (one
/// cache line), in a slab of millions.
#[derive(Debug, Default)]
struct Slot {
    /// Empty in a free slot.
    id: CompactString,
    /// The order's fields below are meaningful only when `has_order`.
    has_order: bool,
    /// Changed since the last drain: its index is then in the changed list already.
    changed: bool,
    attribution: Attribution,
    ts_ms: i64,
    first_paid_ms: i64,
    /// Boxed: most orders never have anything waiting, and a thin pointer keeps the slots small.
    #[allow(clippy::box_collection)]
    waiting: Option<Box<Vec<Waiting>>>,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

impl Slot {
    fn new(order: Option<OrderInfo>, waiting: Vec<Waiting>) -> Slot {
        let mut slot = Slot {
            waiting: (!waiting.is_empty()).then(|| Box::new(waiting)),
            ..Slot::default()
        };
        slot.set_order(order);
        slot
    }

    fn order(&self) -> Option<OrderInfo> {
        self.has_order.then_some(OrderInfo {
            attribution: self.attribution,
            ts_ms: self.ts_ms,
            first_paid_ms: self.first_paid_ms,
        })
    }

    fn set_order(&mut self, order: Option<OrderInfo>) {
        self.has_order = order.is_some();
        let o = order.unwrap_or(OrderInfo {
            attribution: Attribution::default(),
            ts_ms: 0,
            first_paid_ms: i64::MAX,
        });
        (self.attribution, self.ts_ms, self.first_paid_ms) =
            (o.attribution, o.ts_ms, o.first_paid_ms);
    }

    fn waiting_len(&self) -> usize {
        self.waiting.as_ref().map_or(0, |w| w.len())
    }

    fn waiting(&self) -> &[Waiting] {
        self.waiting.as_deref().map_or(&[][..], |w| &w[..])
    }
}

/// Lists slot `i` as changed (when tracking), unless it is listed already.
fn mark(changed: &mut Option<Vec<u32>>, slot: &mut Slot, i: u32) {
    if let (false, Some(c)) = (slot.changed, changed) {
        c.push(i);
        slot.changed = true;
    }
}

/// Ids changed since the last `drain_each`, recorded only once tracking started
/// (for a changelog). An id may be listed more than once (see each user): the
/// record written for it carries its current value, so a repeat is redundant,
/// never wrong; sorting to drop repeats cost more than the repeats.
#[derive(Debug, Default)]
struct ChangedIds(Option<Vec<CompactString>>);

impl ChangedIds {
    fn track(&mut self) {
        self.0.get_or_insert_with(Vec::new);
    }

    /// Lists the id (a copy) when tracking.
    fn mark(&mut self, id: &str) {
        if let Some(c) = &mut self.0 {
            c.push(id.into());
        }
    }

    /// Each id listed since the last call, in the order listed. The buffer keeps
    /// its capacity: regrowing it every interval faulted in fresh pages each time.
    fn drain_each(&mut self, f: impl FnMut(&CompactString)) {
        if let Some(c) = &mut self.0 {
            c.iter().for_each(f);
            c.clear();
        }
    }
}

/// A repeated order within `dedup_ttl`: dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateOrder;

/// Orders by id, and events waiting for theirs: one lookup per event.
///
/// The slots live in a slab, found through a table of slot indices: the table
/// (5 bytes an entry) stays in cache far more than a map of 64-byte entries,
/// recent orders (those payments look up) sit together at the slab's end, and
/// a commit reaches each changed slot by its index instead of looking its id
/// up again: that look-up, cold, was a fifth of the loop (docs/performance.md).
#[derive(Debug, Default)]
pub struct JoinState {
    slots: Vec<Slot>,
    /// Indices of free slots, reused first.
    free: Vec<u32>,
    /// Slot indices, by the hash of their id.
    index: hashbrown::HashTable<u32>,
    hasher: ahash::RandomState,
    order_count: usize,
    waiting_count: usize,
    deadlines: BinaryHeap<Reverse<(i64, CompactString)>>,
    /// Slots changed since the last drain (`None` until tracking starts). A slot
    /// freed and reused may be listed twice: its `changed` flag has it written once.
    changed: Option<Vec<u32>>,
    /// Ids forgotten since the last drain, when tracking: their tombstones.
    removed: Vec<CompactString>,
}

impl JoinState {
    /// Starts recording changed ids, for a changelog.
    pub fn track_changes(&mut self) {
        self.changed.get_or_insert_with(Vec::new);
    }

    /// Makes room for `n` orders at once; false if the memory was refused.
    pub fn reserve(&mut self, n: usize) -> bool {
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .try_reserve(n, |&i| hasher.hash_one(slots[i as usize].id.as_str()))
            .is_ok()
            && self.slots.try_reserve(n).is_ok()
    }

    fn find(&self, id: &str) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hasher.hash_one(id), |&i| slots[i as usize].id == id)
            .copied()
    }

    /// The slot of `id`, made empty if there is none; true when made.
    fn slot_of(&mut self, id: &str) -> (u32, bool) {
        let (slots, hasher) = (&self.slots, &self.hasher);
        let entry = self.index.entry(
            hasher.hash_one(id),
            |&i| slots[i as usize].id == id,
            |&i| hasher.hash_one(slots[i as usize].id.as_str()),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(e) => (*e.get(), false),
            hashbrown::hash_table::Entry::Vacant(e) => {
                let i = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(Slot::default());
                    u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 order slots")
                });
                self.slots[i as usize].id = id.into();
                e.insert(i);
                (i, true)
            }
        }
    }

    /// Frees slot `i`, whose id is then forgotten (a tombstone, when tracking).
    fn free(&mut self, i: u32) {
        let hash = self.hasher.hash_one(self.slots[i as usize].id.as_str());
        if let Ok(e) = self.index.find_entry(hash, |&j| j == i) {
            e.remove();
        }
        let slot = std::mem::take(&mut self.slots[i as usize]);
        if self.changed.is_some() {
            self.removed.push(slot.id);
        }
        self.free.push(i);
    }

    /// Each id changed since the last call, once, with what is stored for it
    /// now (its order and the events waiting for it; `None`: forgotten).
    pub fn drain_changes(
        &mut self,
        mut f: impl FnMut(&str, Option<(Option<OrderInfo>, &[Waiting])>),
    ) {
        let mut removed = std::mem::take(&mut self.removed);
        for id in removed.drain(..) {
            // Made anew since: its slot is listed as changed, with its current value.
            if self.find(&id).is_none() {
                f(&id, None);
            }
        }
        self.removed = removed;
        let Some(changed) = self.changed.as_mut() else {
            return;
        };
        for &i in changed.iter() {
            let s = &mut self.slots[i as usize];
            if s.changed {
                s.changed = false;
                f(&s.id, Some((s.order(), s.waiting())));
            }
        }
        changed.clear();
    }

    /// Puts back what [`JoinState::drain_changes`] handed out (restore from the changelog).
    pub fn restore(&mut self, order_id: &str, order: Option<OrderInfo>, waiting: Vec<Waiting>) {
        if order.is_none() && waiting.is_empty() {
            return;
        }
        self.order_count += order.is_some() as usize;
        self.waiting_count += waiting.len();
        if let Some(d) = waiting.iter().map(|w| w.deadline_ms).min() {
            self.deadlines.push(Reverse((d, order_id.into())));
        }
        let (i, _) = self.slot_of(order_id);
        let slot = &mut self.slots[i as usize];
        let id = std::mem::take(&mut slot.id);
        *slot = Slot {
            id,
            ..Slot::new(order, waiting)
        };
    }

    pub fn order(&self, order_id: &str) -> Option<OrderInfo> {
        self.find(order_id)
            .and_then(|i| self.slots[i as usize].order())
    }

    /// A payment or delivery meets its order: the order as it is now (a `paid`
    /// payment's time recorded on it first, for pay-to-delivery); or, with no
    /// order yet, the event is parked until it arrives or the watermark passes
    /// its deadline (`None`). One look-up either way.
    pub fn attach(&mut self, order_id: &str, w: Waiting) -> Option<OrderInfo> {
        let (i, _) = self.slot_of(order_id);
        let slot = &mut self.slots[i as usize];
        if slot.has_order {
            let paid = matches!(
                w.what,
                Joinable::Payment {
                    kind: PaymentKind::Paid,
                    ..
                }
            );
            if paid && w.ts_ms < slot.first_paid_ms {
                slot.first_paid_ms = w.ts_ms;
                mark(&mut self.changed, slot, i);
            }
            return slot.order();
        }
        let list = slot.waiting.get_or_insert_with(Default::default);
        if list.is_empty() {
            self.deadlines
                .push(Reverse((w.deadline_ms, order_id.into())));
        }
        list.push(w);
        self.waiting_count += 1;
        mark(&mut self.changed, slot, i);
        None
    }

    /// Stores an order and returns the events that were waiting for it, or
    /// `DuplicateOrder` when the same id was placed within `dedup_ttl_ms`.
    pub fn insert_order(
        &mut self,
        order_id: &str,
        info: OrderInfo,
        dedup_ttl_ms: i64,
    ) -> Result<Vec<Waiting>, DuplicateOrder> {
        let (i, made) = self.slot_of(order_id);
        let slot = &mut self.slots[i as usize];
        match slot.order() {
            Some(existing) if (info.ts_ms - existing.ts_ms).abs() <= dedup_ttl_ms => {
                return Err(DuplicateOrder)
            }
            Some(existing) => slot.set_order(Some(OrderInfo {
                first_paid_ms: existing.first_paid_ms,
                ..info
            })),
            None => {
                self.order_count += 1;
                slot.set_order(Some(info));
            }
        }
        mark(&mut self.changed, slot, i);
        if made {
            return Ok(Vec::new());
        }
        let released = slot.waiting.take().map_or_else(Vec::new, |w| *w);
        self.waiting_count -= released.len();
        Ok(released)
    }

    /// Removes the waiting events whose deadline the watermark has reached.
    pub fn expire(&mut self, watermark_ms: i64, mut f: impl FnMut(Waiting)) {
        while let Some(Reverse((deadline, _))) = self.deadlines.peek() {
            if *deadline > watermark_ms {
                break;
            }
            let Reverse((_, order_id)) = self.deadlines.pop().expect("peeked");
            let Some(i) = self.find(&order_id) else {
                continue;
            };
            let slot = &mut self.slots[i as usize];
            let Some(list) = slot.waiting.as_mut() else {
                continue;
            };
            let before = list.len();
            list.retain(|w| {
                let due = w.deadline_ms <= watermark_ms;
                if due {
                    f(*w);
                }
                !due
            });
            self.waiting_count -= before - list.len();
            let next = list.iter().map(|w| w.deadline_ms).min();
            mark(&mut self.changed, slot, i);
            if next.is_none() {
                slot.waiting = None;
            }
            match next {
                Some(next) => self.deadlines.push(Reverse((next, order_id))),
                None if !slot.has_order => self.free(i),
                None => {}
            }
        }
    }

    /// Forgets orders placed before `limit_ms` (their `order_ttl` has passed).
    pub fn sweep_orders(&mut self, limit_ms: i64) {
        let mut forgotten = 0;
        let (slots, changed, removed, free) = (
            &mut self.slots,
            &mut self.changed,
            &mut self.removed,
            &mut self.free,
        );
        self.index.retain(|&mut i| {
            let s = &mut slots[i as usize];
            if s.has_order && s.ts_ms < limit_ms {
                s.set_order(None);
                forgotten += 1;
                mark(changed, s, i);
            }
            let keep = s.has_order || s.waiting_len() > 0;
            if !keep {
                let s = std::mem::take(s);
                if changed.is_some() {
                    removed.push(s.id);
                }
                free.push(i);
            }
            keep
        });
        self.order_count -= forgotten;
    }

    pub fn order_count(&self) -> usize {
        self.order_count
    }

    pub fn waiting_count(&self) -> usize {
        self.waiting_count
    }
}

/// Ids seen, with their event time, to drop repeats within `dedup_ttl`.
#[derive(Debug, Default)]
pub struct Dedup {
    seen: FastMap<CompactString, i64>,
    changed: ChangedIds,
}

impl Dedup {
    /// Starts recording changed ids, for a changelog.
    pub fn track_changes(&mut self) {
        self.changed.track();
    }

    /// Makes room for `n` ids at once; false if the memory was refused.
    pub fn reserve(&mut self, n: usize) -> bool {
        self.seen.try_reserve(n).is_ok()
    }

    /// Each id changed since the last call, once, with the event time it was
    /// seen at (`None`: forgotten).
    pub fn drain_changes(&mut self, mut f: impl FnMut(&str, Option<i64>)) {
        let seen = &self.seen;
        self.changed.drain_each(|id| f(id, seen.get(id).copied()));
    }

    /// Puts back a seen id (restore).
    pub fn restore(&mut self, id: &str, ts_ms: i64) {
        self.seen.insert(id.into(), ts_ms);
    }

    /// True for the first copy of `id`; a copy more than `ttl_ms` of event time apart counts again.
    pub fn first_copy(&mut self, id: &str, ts_ms: i64, ttl_ms: i64) -> bool {
        match self.seen.get_mut(id) {
            Some(seen) if (ts_ms - *seen).abs() <= ttl_ms => false,
            Some(seen) => {
                *seen = ts_ms;
                self.changed.mark(id);
                true
            }
            None => {
                self.seen.insert(CompactString::from(id), ts_ms);
                self.changed.mark(id);
                true
            }
        }
    }

    /// Forgets ids seen before `limit_ms`: any copy close enough to match them would be late.
    pub fn sweep(&mut self, limit_ms: i64) {
        let changed = &mut self.changed;
        self.seen.retain(|id, ts| {
            let keep = *ts >= limit_ms;
            if !keep {
                changed.mark(id);
            }
            keep
        });
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn waiting_events_are_released_by_their_order() {
        let mut j = JoinState::default();
        assert_eq!(j.attach("o1", pay(10, 100)), None, "no order yet: parked");
        assert_eq!(j.attach("o1", pay(20, 110)), None, "no order yet: parked");
        assert_eq!(j.waiting_count(), 2);
        let released = j.insert_order(
            "o1",
            OrderInfo {
                attribution: attr(3),
                ts_ms: 30,
                first_paid_ms: i64::MAX,
            },
            0,
        );
        assert_eq!(released, Ok(vec![pay(10, 100), pay(20, 110)]));
        assert_eq!(j.waiting_count(), 0);
        let mut expired = vec![];
        j.expire(1_000, |w| expired.push(w));
        assert!(expired.is_empty(), "released events do not time out too");
    }

    #[test]
    fn waiting_events_expire_by_deadline_only() {
        let mut j = JoinState::default();
        assert_eq!(j.attach("o1", pay(10, 100)), None, "no order yet: parked");
        assert_eq!(j.attach("o1", pay(50, 150)), None, "no order yet: parked");
        assert_eq!(j.attach("o2", pay(20, 120)), None, "no order yet: parked");
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
        assert_eq!(released, Ok(vec![pay(50, 150)]));
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
        j.sweep_orders(6);
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
        d.sweep(3_601_002);
        assert!(d.is_empty());
    }

    /// What a drain hands out, by id (the order across ids is not kept).
    fn drained(j: &mut JoinState) -> Vec<(String, Option<Option<OrderInfo>>, usize)> {
        let mut out = vec![];
        j.drain_changes(|id, slot| {
            out.push((
                id.to_string(),
                slot.map(|s| s.0),
                slot.map_or(0, |s| s.1.len()),
            ))
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
        assert_eq!(j.attach("o1", pay(10, 100)), None, "no order yet: parked");
        j.insert_order("o1", info(5), 0).unwrap();
        assert!(j.attach("o1", pay(10, 100)).is_some());
        assert_eq!(j.attach("o2", pay(20, 50)), None, "no order yet: parked");
        let paid = OrderInfo {
            first_paid_ms: 10,
            ..info(5)
        };
        assert_eq!(
            drained(&mut j),
            vec![
                ("o1".into(), Some(Some(paid)), 0),
                ("o2".into(), Some(None), 1)
            ]
        );
        assert!(drained(&mut j).is_empty(), "each change is drained once");
        // o2 expires (removed: a tombstone), then is made anew in the same interval.
        j.expire(60, |_| {});
        assert_eq!(drained(&mut j), vec![("o2".into(), None, 0)]);
        assert_eq!(j.attach("o3", pay(20, 50)), None, "no order yet: parked");
        j.expire(60, |_| {});
        j.insert_order("o3", info(7), 0).unwrap();
        assert!(j.attach("o1", pay(8, 100)).is_some());
        assert_eq!(
            drained(&mut j),
            vec![
                (
                    "o1".into(),
                    Some(Some(OrderInfo {
                        first_paid_ms: 8,
                        ..info(5)
                    })),
                    0
                ),
                ("o3".into(), Some(Some(info(7))), 0),
            ],
            "a slot removed and made anew is written once, with its current value"
        );
        j.sweep_orders(6);
        assert_eq!(
            drained(&mut j),
            vec![("o1".into(), None, 0), ("untracked".into(), None, 0)]
        );
        // A slot freed and taken by another id in the same interval: the first
        // id's tombstone and the second's value, each once.
        assert_eq!(j.attach("o5", pay(30, 40)), None, "no order yet: parked");
        j.expire(60, |_| {});
        j.insert_order("o6", info(9), 0).unwrap();
        assert_eq!(
            drained(&mut j),
            vec![
                ("o5".into(), None, 0),
                ("o6".into(), Some(Some(info(9))), 0)
            ]
        );
        assert_eq!((j.order_count(), j.waiting_count()), (2, 0));
    }
}
