//! The generator's calendar of scheduled payments, refunds and deliveries.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// A scheduled payment, refund or delivery. Field order matters: the derived
/// ordering is by (release, tie-break key), which is unique per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pending {
    pub(super) release: i64,
    /// `(order_seq << 4) | stage`.
    pub(super) tb: u64,
    pub(super) amount: i64,
    pub(super) jitter: u32,
    pub(super) currency: u8,
}

/// Width of a [`Schedule`] slot.
pub(super) const SLOT_MS: i64 = 100;

/// A calendar queue of pending events: a small heap for the current slot
/// (everything released before `near_end`) and a ring of unsorted slots of
/// [`SLOT_MS`] after it. Follow-ups are scheduled minutes ahead, so one big heap
/// would hold millions of entries and spend its time on cache misses; here a
/// push is O(1) and a slot is heapified once when the clock reaches it.
pub(super) struct Schedule {
    near: BinaryHeap<Reverse<Pending>>,
    /// Every entry of `near` is released before this; every entry of `slots` at or after it.
    near_end: i64,
    /// `slots[i]` holds releases in `[near_end + i·SLOT_MS, near_end + (i+1)·SLOT_MS)`.
    slots: VecDeque<Vec<Reverse<Pending>>>,
}

impl Schedule {
    pub(super) fn new(from_ms: i64) -> Self {
        Schedule {
            near: BinaryHeap::new(),
            near_end: from_ms.div_euclid(SLOT_MS) * SLOT_MS,
            slots: VecDeque::new(),
        }
    }

    pub(super) fn push(&mut self, p: Pending) {
        if p.release < self.near_end {
            self.near.push(Reverse(p));
            return;
        }
        let i = ((p.release - self.near_end) / SLOT_MS) as usize;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, Vec::new);
        }
        self.slots[i].push(Reverse(p));
    }

    /// The earliest entry if it is released before `limit`. Slots are moved into
    /// the heap only up to `limit`, so the heap stays about one slot large.
    pub(super) fn peek_before(&mut self, limit: i64) -> Option<&Pending> {
        while self.near.is_empty() && self.near_end < limit {
            let Some(slot) = self.slots.pop_front() else {
                // Nothing scheduled at all: move the window up to `limit`.
                self.near_end = self.near_end.max(limit.div_euclid(SLOT_MS) * SLOT_MS);
                break;
            };
            self.near_end += SLOT_MS;
            if !slot.is_empty() {
                self.near = BinaryHeap::from(slot);
            }
        }
        self.near
            .peek()
            .map(|Reverse(p)| p)
            .filter(|p| p.release < limit)
    }

    /// Removes the entry last returned by [`Schedule::peek_before`].
    pub(super) fn pop(&mut self) -> Option<Pending> {
        self.near.pop().map(|Reverse(p)| p)
    }
}
