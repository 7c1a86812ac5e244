//! Order ⋈ payment/delivery on `order_id`, either arrival order, bounded by
//! `join_timeout` in event time; and the de-duplication sets.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::slab::{Fingerprint, IdSlab, Seeds};
use super::FastMap;
use crate::model::{DeliveryStatus, InputTopic, PaymentKind};
use times::{Code, Times};

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

/// Most events parked for one order id. A real order has a few payments and
/// deliveries; a producer sending 100,000 for one id that never comes would
/// otherwise grow one state entry, and its changelog record, without bound
/// (past the broker's largest record). Beyond it an event is attributed to
/// `unknown` at once, as at its join timeout, and counted
/// (`gmv_join_overflows_total`).
pub const MAX_WAITING_PER_ORDER: usize = 1_000;

/// What became of a payment or delivery given to [`JoinState::attach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// Its order is here (as it is now).
    Joined(OrderInfo),
    /// Parked until its order comes or its deadline passes.
    Parked,
    /// Not parked: [`MAX_WAITING_PER_ORDER`] wait for this order already.
    Full,
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

/// What the slab keeps of one order id: the order, if it came. Events waiting
/// for it are kept apart, by slot ([`JoinState::waiting`]): most orders never
/// have any. The fields are flat, not an `Option<OrderInfo>`, the times coded
/// in four bytes ([`Times`]) and packed to 2-byte alignment, so that with its
/// id's fingerprint an entry is 28 bytes, in a slab of millions.
#[derive(Debug, Default)]
#[repr(C, packed(2))]
struct Slot {
    /// The order's time; "none" while no order has come. The fields below
    /// are meaningful only with an order.
    placed: Code,
    first_paid: Code,
    brand: u32,
    channel: u32,
    /// Country ids are two-letter codes and `unknown`: fewer than 2^16.
    country: u16,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 18);
const _: () = assert!(IdSlab::<Slot>::ENTRY_BYTES == 28);
const _: () = assert!(IdSlab::<Code>::ENTRY_BYTES == 14);

/// The bases and far times of the order slots' two times.
#[derive(Debug, Default)]
struct Clocks {
    placed: Times,
    first_paid: Times,
}

impl Clocks {
    fn forget(&mut self, i: u32) {
        self.placed.forget(i);
        self.first_paid.forget(i);
    }

    fn heap_bytes(&self) -> usize {
        self.placed.heap_bytes() + self.first_paid.heap_bytes()
    }
}

impl Slot {
    fn has_order(&self) -> bool {
        !{ self.placed }.is_none()
    }

    /// The order in slot `i` (this one).
    fn order(&self, c: &Clocks, i: u32) -> Option<OrderInfo> {
        self.has_order().then(|| OrderInfo {
            attribution: Attribution {
                brand: self.brand,
                channel: self.channel,
                country: self.country as u32,
            },
            ts_ms: c.placed.time(i, self.placed),
            first_paid_ms: c.first_paid.time(i, self.first_paid),
        })
    }

    fn set_order(&mut self, c: &mut Clocks, i: u32, order: Option<OrderInfo>) {
        let o = order.unwrap_or(OrderInfo {
            attribution: Attribution::default(),
            ts_ms: i64::MAX,
            first_paid_ms: i64::MAX,
        });
        let a = o.attribution;
        (self.brand, self.channel) = (a.brand, a.channel);
        self.country = u16::try_from(a.country).expect("country ids fit 16 bits");
        self.placed = c.placed.code(i, o.ts_ms);
        self.first_paid = c.first_paid.code(i, o.first_paid_ms);
    }

    /// Records a `paid` payment's time if it is the order's first; says whether it was.
    fn note_paid(&mut self, c: &mut Clocks, i: u32, w: &Waiting) -> bool {
        let paid = matches!(
            w.what,
            Joinable::Payment {
                kind: PaymentKind::Paid,
                ..
            }
        );
        let first = paid && w.ts_ms < c.first_paid.time(i, self.first_paid);
        if first {
            self.first_paid = c.first_paid.code(i, w.ts_ms);
        }
        first
    }
}

/// A repeated order within `dedup_ttl`: dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateOrder;

/// Orders by id, and events waiting for theirs: one look-up per event.
#[derive(Debug, Default)]
pub struct JoinState {
    slots: IdSlab<Slot>,
    clocks: Clocks,
    /// Events waiting for their order, by the order id's slot. A list is never
    /// empty: it is removed with its last event. A slot is freed only once its
    /// list has gone, so a list never outlives its slot. Each
    /// order placed looks here once (a map of the few orders with events
    /// waiting, in cache): cheaper than 6 bytes in each of millions of slots
    /// (no change measurable in the core bench, docs/performance.md).
    waiting: FastMap<u32, Vec<Waiting>>,
    order_count: usize,
    waiting_count: usize,
    deadlines: BinaryHeap<Reverse<(i64, Fingerprint)>>,
    /// Orders whose first payment's time is all that changed since they were
    /// last handed out (while changes are tracked, and the slot not listed as
    /// changed): the changelog writes that time alone, not the order again,
    /// which was a quarter of its bytes (docs/performance.md). An order paid
    /// twice within one drain, the second time earlier, is listed twice.
    paid: Vec<(u32, Fingerprint)>,
}

/// What the changelog needs of an order id changed since the last drain.
#[derive(Debug)]
pub enum SlotChange<'a> {
    /// Forgotten.
    Removed,
    /// Its order (handed out before) now has its first payment, at `first_paid_ms`.
    FirstPaid(OrderInfo),
    /// Its order and the events waiting for it, now.
    Slot(Option<OrderInfo>, &'a [Waiting]),
}

impl JoinState {
    /// Starts recording changed ids, for a changelog.
    pub fn track_changes(&mut self) {
        self.slots.track_changes();
    }

    /// Makes room for `n` orders at once; false if the memory was refused.
    pub fn reserve(&mut self, n: usize) -> bool {
        self.slots.reserve(n)
    }

    /// Asks the CPU for where `order_id` is looked up, a few records ahead.
    pub fn prefetch(&self, order_id: &[u8]) {
        self.slots.prefetch(order_id);
    }

    /// Asks the CPU for `order_id`'s entry, a record or two before it is looked up.
    pub fn prefetch_entry(&self, order_id: &[u8]) {
        self.slots.prefetch_entry(order_id);
    }

    /// Bytes held by the order store (its waiting lists' events not counted).
    pub fn heap_bytes(&self) -> usize {
        self.slots.heap_bytes() + self.waiting.allocation_size() + self.clocks.heap_bytes()
    }

    /// Takes slot `i`'s waiting events out, removing their list.
    fn take_waiting(&mut self, i: u32) -> Vec<Waiting> {
        self.waiting.remove(&i).unwrap_or_default()
    }

    /// Frees slot `i`, which has no list.
    fn remove_slot(&mut self, i: u32) {
        debug_assert!(!self.waiting.contains_key(&i), "a list outliving its slot");
        self.slots.remove(i);
        self.clocks.forget(i);
    }

    /// `order_id`'s fingerprint, as the changelog writes it.
    pub fn fingerprint(&self, order_id: &str) -> Fingerprint {
        self.slots.fingerprint(order_id)
    }

    /// The keys of the fingerprints, for the changelog.
    pub fn seeds(&self) -> Seeds {
        self.slots.seeds()
    }

    /// Takes the keys of a changelog's fingerprints, before any order is restored.
    pub fn set_seeds(&mut self, seeds: Seeds) -> bool {
        self.slots.set_seeds(seeds)
    }

    /// Each id changed since the last call, once, with what changed: first
    /// the orders whose first payment is all that changed, then the others.
    pub fn drain_changes(&mut self, mut f: impl FnMut(Fingerprint, SlotChange<'_>)) {
        let paid = std::mem::take(&mut self.paid);
        self.slots.visit_listed(&paid, |i, fp| {
            // Listed since (written whole below), or no longer this order.
            if self.slots.listed(i) != Some(false) || self.slots.fingerprint_at(i) != fp {
                return;
            }
            if let Some(order) = self.slots.get(i).order(&self.clocks, i) {
                f(fp, SlotChange::FirstPaid(order));
            }
        });
        self.paid = paid;
        self.paid.clear();
        let (lists, clocks) = (&self.waiting, &self.clocks);
        self.slots.drain_changes(|id, slot| {
            f(
                id,
                slot.map_or(SlotChange::Removed, |(i, s)| {
                    let waiting = lists.get(&i).map_or(&[][..], |l| &l[..]);
                    SlotChange::Slot(s.order(clocks, i), waiting)
                }),
            )
        });
    }

    /// Puts back an order's first payment time that [`JoinState::drain_changes`]
    /// handed out; the order as it is then, `None` if it has gone (swept).
    pub fn restore_first_paid(&mut self, fp: Fingerprint, first_paid_ms: i64) -> Option<OrderInfo> {
        let i = self.slots.find_fp(fp)?;
        let slot = self.slots.get_mut(i);
        if !slot.has_order() {
            return None;
        }
        slot.first_paid = self.clocks.first_paid.code(i, first_paid_ms);
        slot.order(&self.clocks, i)
    }

    /// Puts back what [`JoinState::drain_changes`] handed out (restore from the
    /// changelog, oldest first): a later value of an id replaces the one before,
    /// `None` forgets it.
    pub fn restore(&mut self, fp: Fingerprint, value: Option<(Option<OrderInfo>, Vec<Waiting>)>) {
        let found = self.slots.find_fp(fp);
        if let Some(i) = found {
            self.order_count -= self.slots.get(i).has_order() as usize;
            self.waiting_count -= self.take_waiting(i).len();
        }
        let Some((order, waiting)) = value.filter(|(o, w)| o.is_some() || !w.is_empty()) else {
            if let Some(i) = found {
                self.remove_slot(i);
            }
            return;
        };
        let i = found.unwrap_or_else(|| self.slots.slot_of_fp(fp).0);
        self.order_count += order.is_some() as usize;
        self.waiting_count += waiting.len();
        // A replaced value may leave its deadline in the heap: `expire` skips it.
        if let Some(d) = waiting.iter().map(|w| w.deadline_ms).min() {
            self.deadlines.push(Reverse((d, fp)));
        }
        if !waiting.is_empty() {
            self.waiting.insert(i, waiting);
        }
        let slot = self.slots.get_mut(i);
        *slot = Slot::default();
        slot.set_order(&mut self.clocks, i, order);
    }

    /// Lists the order id of `fp` as changed, so the next drain hands it out again.
    pub fn touch(&mut self, fp: Fingerprint) {
        self.slots.touch(fp);
    }

    pub fn order(&self, order_id: &str) -> Option<OrderInfo> {
        self.slots
            .find(order_id)
            .filter(|&i| !self.swept(i))
            .and_then(|i| self.slots.get(i).order(&self.clocks, i))
    }

    /// Whether slot `i` holds an order the sweep under way forgets but has
    /// not reached yet. Every event sees the state as if the sweep had
    /// walked it all at once when it began, so the joins do not depend on
    /// how far the ticks have walked it (nor on a restore, which sweeps at once).
    fn swept(&self, i: u32) -> bool {
        self.clocks
            .placed
            .under_way()
            .is_some_and(|(limit_ms, from)| {
                let s = self.slots.get(i);
                i >= from && s.has_order() && self.clocks.placed.time(i, s.placed) < limit_ms
            })
    }

    /// Forgets slot `i`'s order now if the sweep under way forgets it
    /// ([`JoinState::swept`]), before an event changes the slot. Its slot stays:
    /// the event is about to fill it, or the walk frees it.
    fn sweep_slot(&mut self, i: u32) {
        if self.swept(i) {
            self.slots.get_mut(i).set_order(&mut self.clocks, i, None);
            self.order_count -= 1;
        }
    }

    /// A payment or delivery meets its order: the order as it is now (a `paid`
    /// payment's time recorded on it first, for pay-to-delivery); or, with no
    /// order yet, the event is parked until it arrives or the watermark passes
    /// its deadline; or, with [`MAX_WAITING_PER_ORDER`] parked already, not. One
    /// look-up either way.
    pub fn attach(&mut self, order_id: &str, w: Waiting) -> Attach {
        let (i, _) = self.slots.slot_of(order_id);
        self.sweep_slot(i);
        let slot = self.slots.get_mut(i);
        if slot.has_order() {
            let first = slot.note_paid(&mut self.clocks, i, &w);
            let order = slot.order(&self.clocks, i).expect("has an order");
            // Listed already (written whole), or not tracked: nothing to add.
            if first && self.slots.listed(i) == Some(false) {
                self.paid.push((i, self.slots.fingerprint_at(i)));
            }
            return Attach::Joined(order);
        }
        let list = self.waiting.entry(i).or_default();
        if list.len() >= MAX_WAITING_PER_ORDER {
            return Attach::Full;
        }
        if list.is_empty() {
            let fp = self.slots.fingerprint_at(i);
            self.deadlines.push(Reverse((w.deadline_ms, fp)));
        }
        list.push(w);
        self.waiting_count += 1;
        self.slots.mark(i);
        Attach::Parked
    }

    /// Stores an order and returns it with the events that were waiting for it
    /// (their `paid` payments' times recorded on it already), or `DuplicateOrder`
    /// when the same id was placed within `dedup_ttl_ms`.
    pub fn insert_order(
        &mut self,
        order_id: &str,
        info: OrderInfo,
        dedup_ttl_ms: i64,
    ) -> Result<(OrderInfo, Vec<Waiting>), DuplicateOrder> {
        let (i, made) = self.slots.slot_of(order_id);
        self.sweep_slot(i);
        let (slot, clocks) = (self.slots.get_mut(i), &mut self.clocks);
        match slot.order(clocks, i) {
            Some(existing) if (info.ts_ms - existing.ts_ms).abs() <= dedup_ttl_ms => {
                return Err(DuplicateOrder)
            }
            Some(existing) => slot.set_order(
                clocks,
                i,
                Some(OrderInfo {
                    first_paid_ms: existing.first_paid_ms,
                    ..info
                }),
            ),
            None => {
                self.order_count += 1;
                slot.set_order(clocks, i, Some(info));
            }
        }
        // A slot just made has no list (none outlives its slot): most orders
        // come before their payments, and the look-up in `waiting` cost 2% of
        // the engine's time (docs/performance.md).
        let released = if made {
            Vec::new()
        } else {
            self.take_waiting(i)
        };
        let (slot, clocks) = (self.slots.get_mut(i), &mut self.clocks);
        for w in &released {
            slot.note_paid(clocks, i, w);
        }
        let order = slot.order(clocks, i).expect("set above");
        self.waiting_count -= released.len();
        self.slots.mark(i);
        Ok((order, released))
    }

    /// Removes the waiting events whose deadline the watermark has reached.
    pub fn expire(&mut self, watermark_ms: i64, mut f: impl FnMut(Waiting)) {
        while let Some(Reverse((deadline, _))) = self.deadlines.peek() {
            if *deadline > watermark_ms {
                break;
            }
            let Reverse((_, fp)) = self.deadlines.pop().expect("peeked");
            let Some(i) = self.slots.find_fp(fp) else {
                continue;
            };
            self.sweep_slot(i);
            let has_order = self.slots.get(i).has_order();
            let Some(list) = self.waiting.get_mut(&i) else {
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
            if next.is_none() {
                self.take_waiting(i);
            }
            self.slots.mark(i);
            match next {
                Some(next) => self.deadlines.push(Reverse((next, fp))),
                None if !has_order => self.remove_slot(i),
                None => {}
            }
        }
    }

    /// Starts forgetting orders placed before `limit_ms` (their `order_ttl`
    /// has passed), slot by slot in [`JoinState::sweep_step`]s; a sweep still
    /// under way is finished first. An order dropped whole is not written to
    /// the changelog as removed: a restore sweeps again
    /// ([`JoinState::restore`]'s caller). One with events still waiting is
    /// written, its id kept with them. Every slot kept is recoded from the
    /// limit ([`Times`]).
    pub fn sweep_orders(&mut self, limit_ms: i64) {
        self.sweep_step(usize::MAX);
        self.clocks.placed.rebase(limit_ms);
        self.clocks.first_paid.rebase(limit_ms);
    }

    /// Walks up to `count` more slots of the sweep under way; true once none is.
    pub fn sweep_step(&mut self, count: usize) -> bool {
        let Some((limit_ms, from)) = self.clocks.placed.under_way() else {
            return true;
        };
        let mut forgotten = 0;
        let mut changed = Vec::new();
        let (waiting, c) = (&self.waiting, &mut self.clocks);
        let next = self.slots.retain(from, count, |i, s| {
            if s.has_order() && c.placed.time(i, s.placed) < limit_ms {
                s.set_order(c, i, None);
                forgotten += 1;
                return match waiting.get(&i) {
                    None => false,
                    Some(_) => {
                        changed.push(i);
                        true
                    }
                };
            }
            s.placed = c.placed.recode(i, s.placed);
            s.first_paid = c.first_paid.recode(i, s.first_paid);
            true
        });
        for i in changed {
            self.slots.mark(i);
        }
        self.order_count -= forgotten;
        let c = &mut self.clocks;
        match next {
            Some(n) => {
                c.placed.passed(n);
                c.first_paid.passed(n);
            }
            None => {
                c.placed.rebased();
                c.first_paid.rebased();
            }
        }
        next.is_none()
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
    seen: IdSlab<Code>,
    times: Times,
}

impl Dedup {
    /// Starts recording changed ids, for a changelog.
    pub fn track_changes(&mut self) {
        self.seen.track_changes();
    }

    /// Makes room for `n` ids at once; false if the memory was refused.
    pub fn reserve(&mut self, n: usize) -> bool {
        self.seen.reserve(n)
    }

    /// Each id changed since the last call, once, with the event time it was
    /// seen at (`None`: forgotten).
    pub fn drain_changes(&mut self, mut f: impl FnMut(Fingerprint, Option<i64>)) {
        let times = &self.times;
        self.seen
            .drain_changes(|fp, ts| f(fp, ts.map(|(i, c)| times.time(i, *c))));
    }

    /// `id`'s fingerprint, as the changelog writes it.
    pub fn fingerprint(&self, id: &str) -> Fingerprint {
        self.seen.fingerprint(id)
    }

    /// The keys of the fingerprints, for the changelog.
    pub fn seeds(&self) -> Seeds {
        self.seen.seeds()
    }

    /// Takes the keys of a changelog's fingerprints, before any id is restored.
    pub fn set_seeds(&mut self, seeds: Seeds) -> bool {
        self.seen.set_seeds(seeds)
    }

    /// Puts back a seen id, or forgets it (`None`; restore, oldest first).
    pub fn restore(&mut self, fp: Fingerprint, ts_ms: Option<i64>) {
        match ts_ms {
            Some(ts) => {
                let (i, _) = self.seen.slot_of_fp(fp);
                *self.seen.get_mut(i) = self.times.code(i, ts);
            }
            None => {
                if let Some(i) = self.seen.find_fp(fp) {
                    self.seen.remove(i);
                    self.times.forget(i);
                }
            }
        }
    }

    /// Lists the id of `fp` as changed, so the next drain hands it out again.
    pub fn touch(&mut self, fp: Fingerprint) {
        self.seen.touch(fp);
    }

    /// Asks the CPU for where `id` is looked up, a few records ahead.
    pub fn prefetch(&self, id: &[u8]) {
        self.seen.prefetch(id);
    }

    /// True for the first copy of `id`; a copy more than `ttl_ms` of event time apart counts again.
    pub fn first_copy(&mut self, id: &str, ts_ms: i64, ttl_ms: i64) -> bool {
        let (i, made) = self.seen.slot_of(id);
        let seen = self.seen.get_mut(i);
        if !made && (ts_ms - self.times.time(i, *seen)).abs() <= ttl_ms {
            return false;
        }
        *seen = self.times.code(i, ts_ms);
        self.seen.mark(i);
        true
    }

    /// Starts forgetting ids seen before `limit_ms` (any copy close enough to
    /// match them would be late), slot by slot in [`Dedup::sweep_step`]s; a
    /// sweep still under way is finished first. Not written to the changelog:
    /// a restore sweeps again. Every id kept is
    /// recoded from the limit ([`Times`]). An id not forgotten yet still
    /// matches only copies within `ttl_ms` ([`Dedup::first_copy`]).
    pub fn sweep(&mut self, limit_ms: i64) {
        self.sweep_step(usize::MAX);
        self.times.rebase(limit_ms);
    }

    /// Walks up to `count` more slots of the sweep under way; true once none is.
    pub fn sweep_step(&mut self, count: usize) -> bool {
        let Some((limit_ms, from)) = self.times.under_way() else {
            return true;
        };
        let t = &mut self.times;
        let next = self.seen.retain(from, count, |i, c| {
            if t.time(i, *c) < limit_ms {
                return false;
            }
            *c = t.recode(i, *c);
            true
        });
        match next {
            Some(n) => t.passed(n),
            None => t.rebased(),
        }
        next.is_none()
    }

    /// Bytes held (see [`IdSlab::heap_bytes`]).
    pub fn heap_bytes(&self) -> usize {
        self.seen.heap_bytes() + self.times.heap_bytes()
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

mod times;

#[cfg(test)]
mod tests;
