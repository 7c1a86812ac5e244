//! Stage two, per aggregation partition: combines the partial sums of every
//! attribution task for the dimension keys it owns into windows, cumulative
//! totals and milestones. Its watermark is the minimum over every attribution
//! task's (idle ones left out), so a window closes only once no task can add to it.
//!
//! The repartition topic is read with `read_committed`: every batch seen was
//! committed together with the offsets of the input it came from, so it is
//! applied at once, and exactly once (see `commit.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::attribution::{flush_target, TOTAL_KEY, UNKNOWN_KEY};
use super::engine::{EngineConfig, Stats, Totals};
use super::interner::Interner;
use super::milestone::{Milestones, ThresholdRule, BUCKET_MS};
use super::output::{Dim, MilestoneRecord, Output, TotalRecord, WindowRecord};
use super::state::{self, Delta, PartialBatch, PartialEntry, Progress};
use super::window::{TumblingWindows, WindowState, WindowSums};
use super::FastSet;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TotalSlot {
    sums: Totals,
    revision: u64,
    /// Changed since its last emission. In the changelog too: a commit can carry
    /// new sums before the emission (commits are more frequent than emissions),
    /// and when the transaction with the emission is aborted, the restore must
    /// emit them again (else a key that changes no more keeps its old figures).
    dirty: bool,
}

/// A changelog value of the format with the emitted-yet flag, or else of the
/// one before it (README, "Upgrading"), which `old` reads as not emitted yet.
fn decode_flagged<'a, T: Deserialize<'a>, Old: Deserialize<'a>>(
    value: &'a [u8],
    old: impl FnOnce(Old) -> T,
) -> Result<T, postcard::Error> {
    state::decode(value).or_else(|_| state::decode(value).map(old))
}

/// Aggregates of one dimension.
#[derive(Debug)]
struct DimState {
    dim: Dim,
    names: Interner,
    windows: Vec<TumblingWindows>,
    totals: Vec<TotalSlot>,
    dirty_totals: Vec<u32>,
    milestones: Milestones,
}

/// A piece of aggregation state, for the changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum StateKey {
    Total(Dim, u32),
    /// (dim, window size index, start, key).
    Window(Dim, usize, i64, u32),
    Bucket(Dim, i64, u32),
    Cumulative(Dim, u32),
    Source(i32),
    Clock,
}

/// A changelog key, `{kind}{dim}|{number}|…|{name}`, written into one buffer:
/// a `format!` with a copy of the name for every changed key cost about 8% of
/// the engine's time with its changelog on (docs/performance.md).
fn state_key(kind: u8, dim: Dim, numbers: &[i64], name: &str) -> Vec<u8> {
    let dim = dim.as_str().as_bytes();
    let mut k = Vec::with_capacity(2 + dim.len() + numbers.len() * 21 + name.len());
    k.push(kind);
    k.extend_from_slice(dim);
    let mut digits = itoa::Buffer::new();
    for n in numbers {
        k.push(b'|');
        k.extend_from_slice(digits.format(*n).as_bytes());
    }
    k.push(b'|');
    k.extend_from_slice(name.as_bytes());
    k
}

impl DimState {
    fn new(dim: Dim, sizes: &[i64], rule: ThresholdRule) -> Self {
        DimState {
            dim,
            names: Interner::default(),
            windows: sizes.iter().map(|&s| TumblingWindows::new(s)).collect(),
            totals: Vec::new(),
            dirty_totals: Vec::new(),
            milestones: Milestones::new(rule),
        }
    }

    fn total_slot(&mut self, key: u32) -> &mut TotalSlot {
        let idx = key as usize;
        if idx >= self.totals.len() {
            self.totals.resize_with(idx + 1, TotalSlot::default);
        }
        &mut self.totals[idx]
    }

    fn apply(
        &mut self,
        key: u32,
        bucket_ms: i64,
        d: &Delta,
        changed: &mut Option<FastSet<StateKey>>,
    ) {
        let dim = self.dim;
        if d.gmv_fen != 0 || d.refund_fen != 0 || d.paid_orders != 0 {
            for (i, w) in self.windows.iter_mut().enumerate() {
                w.add(bucket_ms, key, |s| {
                    s.gmv_fen += d.gmv_fen;
                    s.refund_fen += d.refund_fen;
                    s.paid_orders += d.paid_orders;
                });
                if let Some(c) = changed {
                    c.insert(StateKey::Window(dim, i, w.start_of(bucket_ms), key));
                }
            }
            if self.milestones.enabled() && d.gmv_fen != 0 {
                self.milestones.add(bucket_ms, key, d.gmv_fen);
                if let Some(c) = changed {
                    c.insert(StateKey::Bucket(dim, bucket_ms, key));
                }
            }
        }
        self.total_slot(key).sums.add(d);
        self.mark_total(key, changed);
    }

    /// `key`'s total (its slot made) is to be emitted, and the changelog is to say so.
    fn mark_total(&mut self, key: u32, changed: &mut Option<FastSet<StateKey>>) {
        let slot = &mut self.totals[key as usize];
        if !slot.dirty {
            slot.dirty = true;
            self.dirty_totals.push(key);
        }
        if let Some(c) = changed {
            c.insert(StateKey::Total(self.dim, key));
        }
    }

    fn window_record(&self, size_ms: i64, s: WindowState, is_final: bool) -> Output {
        Output::Window(WindowRecord {
            dim: self.dim,
            key: self.names.name(s.key).to_string(),
            window_start_ms: s.start_ms,
            window_size_ms: size_ms,
            gmv_fen: s.sums.gmv_fen,
            refund_fen: s.sums.refund_fen,
            paid_orders: s.sums.paid_orders,
            is_final,
            revision: s.revision,
        })
    }

    /// Closes windows and finalizes milestone buckets ending at or before `limit_ms`.
    fn close_through(
        &mut self,
        limit_ms: i64,
        stats: &mut Stats,
        changed: &mut Option<FastSet<StateKey>>,
        out: &mut Vec<Output>,
    ) {
        let dim = self.dim;
        let mut windows = std::mem::take(&mut self.windows);
        for (i, w) in windows.iter_mut().enumerate() {
            let size = w.size_ms();
            w.close_through(limit_ms, |s| {
                if let Some(c) = changed.as_mut() {
                    c.insert(StateKey::Window(dim, i, s.start_ms, s.key));
                }
                out.push(self.window_record(size, s, true))
            });
        }
        self.windows = windows;
        let DimState {
            names, milestones, ..
        } = self;
        let mut done = Vec::new();
        milestones.finalize_through(
            limit_ms,
            |start, key| done.push((start, key)),
            |c| {
                stats.milestones[dim.index()] += 1;
                out.push(Output::Milestone(MilestoneRecord {
                    dim,
                    key: names.name(c.key).to_string(),
                    threshold_fen: c.threshold_fen,
                    crossed_at_ms: c.crossed_at_ms,
                    gmv_fen: c.gmv_fen,
                }))
            },
        );
        if let Some(c) = changed {
            for (start, key) in done {
                c.insert(StateKey::Bucket(dim, start, key));
                c.insert(StateKey::Cumulative(dim, key));
            }
        }
    }

    /// Emits changed open windows and changed totals. Each emitted key is
    /// marked changed: its revision moved, and the changelog must say so even
    /// when its sums were written by an earlier commit (else the next update
    /// after a restore repeats the revision).
    fn emit(
        &mut self,
        watermark_ms: i64,
        changed: &mut Option<FastSet<StateKey>>,
        out: &mut Vec<Output>,
    ) {
        let dim = self.dim;
        let mut windows = std::mem::take(&mut self.windows);
        for (i, w) in windows.iter_mut().enumerate() {
            let size = w.size_ms();
            w.drain_dirty(|s| {
                if let Some(c) = changed.as_mut() {
                    c.insert(StateKey::Window(dim, i, s.start_ms, s.key));
                }
                out.push(self.window_record(size, s, false))
            });
        }
        self.windows = windows;
        for key in std::mem::take(&mut self.dirty_totals) {
            if let Some(c) = changed.as_mut() {
                c.insert(StateKey::Total(dim, key));
            }
            let name = self.names.name(key).to_string();
            let slot = &mut self.totals[key as usize];
            slot.dirty = false;
            slot.revision += 1;
            out.push(Output::Total(TotalRecord {
                dim: self.dim,
                key: name,
                totals: slot.sums,
                watermark_ms,
                revision: slot.revision,
            }));
        }
    }
}

/// What the aggregation stage knows of one attribution task.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SourceState {
    progress: Progress,
}

/// Stage two for one aggregation partition.
#[derive(Debug)]
pub struct AggregationTask {
    partition: i32,
    cfg: Arc<EngineConfig>,
    dims: [DimState; 4],
    /// Attribution tasks by input partition number; all of them must report before time moves.
    sources: BTreeMap<i32, SourceState>,
    source_count: usize,
    watermark_ms: i64,
    /// Offset after the last repartition record received (`None`: none yet).
    next_offset: Option<i64>,
    changed: Option<FastSet<StateKey>>,
}

impl AggregationTask {
    /// `source_count`: the number of input partitions (attribution tasks).
    pub fn new(partition: i32, cfg: Arc<EngineConfig>, source_count: usize) -> Self {
        let mut dims = Dim::ALL.map(|d| {
            DimState::new(
                d,
                &cfg.window_sizes_ms[d.index()],
                cfg.milestones[d.index()].clone(),
            )
        });
        dims[Dim::Total.index()].names.intern(TOTAL_KEY);
        dims[Dim::Brand.index()].names.intern(UNKNOWN_KEY);
        dims[Dim::Country.index()].names.intern(UNKNOWN_KEY);
        AggregationTask {
            partition,
            cfg,
            dims,
            sources: BTreeMap::new(),
            source_count,
            watermark_ms: i64::MIN,
            next_offset: None,
            changed: None,
        }
    }

    /// Records every state change from now on, for [`AggregationTask::take_changes`].
    pub fn track_changes(&mut self) {
        self.changed.get_or_insert_with(FastSet::default);
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn watermark_ms(&self) -> i64 {
        self.watermark_ms
    }

    /// A committed batch read from the repartition topic at `offset`.
    pub fn receive(
        &mut self,
        offset: i64,
        batch: PartialBatch,
        stats: &mut Stats,
        out: &mut Vec<Output>,
    ) {
        self.next_offset = Some(offset + 1);
        self.apply(&batch.progress, &batch.entries, stats, out);
    }

    /// Applies a committed batch: its sums, then the progress it carries.
    fn apply(
        &mut self,
        progress: &[(i32, Progress)],
        entries: &[PartialEntry],
        stats: &mut Stats,
        out: &mut Vec<Output>,
    ) {
        let limit = self.close_limit();
        let mut late = 0;
        for e in entries {
            if e.bucket_ms.saturating_add(BUCKET_MS) <= limit {
                // Its task judged it on time, but its bucket closed meanwhile: only
                // possible when that task came back from idleness behind the others.
                late += 1;
                continue;
            }
            let d = &mut self.dims[e.dim.index()];
            let key = d.names.intern(&e.key);
            d.apply(key, e.bucket_ms, &e.delta, &mut self.changed);
        }
        if late > 0 {
            stats.late_partials += late;
            tracing::warn!(
                partition = self.partition,
                late,
                close_limit_ms = limit,
                "partial sums reached closed buckets and are not counted (a source was idle, then came back behind the others)"
            );
        }
        if progress.is_empty() {
            return;
        }
        for (source, progress) in progress {
            let src = self.sources.entry(*source).or_default();
            if src.progress != *progress {
                src.progress = *progress;
                if let Some(c) = &mut self.changed {
                    c.insert(StateKey::Source(*source));
                }
            }
        }
        self.advance(stats, out);
    }

    fn close_limit(&self) -> i64 {
        self.watermark_ms
            .saturating_sub(self.cfg.time.allowed_lateness_ms)
    }

    /// Recomputes the watermark over every attribution task; when all are idle,
    /// the after-the-sale flush closes everything they could have added to.
    fn advance(&mut self, stats: &mut Stats, out: &mut Vec<Output>) {
        let known = self.sources.len() >= self.source_count;
        let active = self.sources.values().filter(|s| !s.progress.idle);
        let target = match active.map(|s| s.progress.watermark_ms).min() {
            Some(w) if known => w,
            Some(_) => return,
            None if known => {
                let max_ts = self
                    .sources
                    .values()
                    .map(|s| s.progress.max_event_ms)
                    .max()
                    .unwrap_or(i64::MIN);
                if max_ts == i64::MIN {
                    return;
                }
                let t = &self.cfg.time;
                flush_target(max_ts, &self.cfg.window_sizes_ms)
                    .saturating_add(t.allowed_lateness_ms.max(t.join_timeout_ms))
            }
            None => return,
        };
        if target <= self.watermark_ms {
            return;
        }
        self.watermark_ms = target;
        if let Some(c) = &mut self.changed {
            c.insert(StateKey::Clock);
        }
        // The big screen's headline key carries the watermark: it is emitted
        // when only that moved (on the task that has it).
        let total = &mut self.dims[Dim::Total.index()];
        if !total.totals.is_empty() {
            total.mark_total(0, &mut self.changed);
        }
        let limit = self.close_limit();
        for d in &mut self.dims {
            d.close_through(limit, stats, &mut self.changed, out);
        }
    }

    /// Emits every changed open window and total.
    pub fn emit(&mut self, out: &mut Vec<Output>) {
        let w = self.watermark_ms.max(0);
        for d in &mut self.dims {
            d.emit(w, &mut self.changed, out);
        }
    }

    /// The offset to commit on this repartition partition: after the last batch
    /// read (`None`: none read since the task was restored).
    pub fn committable_offset(&self) -> Option<i64> {
        self.next_offset
    }

    /// (open windows, open milestone buckets).
    /// (open windows, open milestone buckets, keys with cumulative totals).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.dims
                .iter()
                .map(|d| d.windows.iter().map(|w| w.open_slots()).sum::<usize>())
                .sum(),
            self.dims.iter().map(|d| d.milestones.open_buckets()).sum(),
            self.dims.iter().map(|d| d.totals.len()).sum(),
        )
    }

    /// Current cumulative figures of one key, if this task owns it.
    pub fn totals(&self, dim: Dim, key: &str) -> Option<Totals> {
        let d = &self.dims[dim.index()];
        d.names
            .id(key)
            .and_then(|id| d.totals.get(id as usize))
            .map(|s| s.sums)
    }

    /// Every key of `dim` with GMV, for the top-N metrics.
    pub fn gmv_by_key(&self, dim: Dim) -> impl Iterator<Item = (&str, i128)> + '_ {
        let d = &self.dims[dim.index()];
        d.totals
            .iter()
            .enumerate()
            .filter(|(_, s)| s.sums.gmv_fen > 0)
            .map(|(k, s)| (d.names.name(k as u32), s.sums.gmv_fen))
    }

    /// Changelog records for everything changed since the last call (after `emit`, so revisions are current).
    pub fn take_changes(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let Some(changed) = self.changed.as_mut() else {
            return Vec::new();
        };
        let keys: Vec<StateKey> = changed.drain().collect();
        keys.into_iter().map(|k| self.change(k)).collect()
    }

    fn change(&self, k: StateKey) -> (Vec<u8>, Option<Vec<u8>>) {
        let name = |dim: Dim, id: u32| self.dims[dim.index()].names.name(id);
        match k {
            StateKey::Total(dim, id) => {
                let slot = &self.dims[dim.index()].totals[id as usize];
                (
                    state_key(b't', dim, &[], name(dim, id)),
                    Some(state::encode(slot)),
                )
            }
            StateKey::Window(dim, i, start, id) => {
                let w = &self.dims[dim.index()].windows[i];
                (
                    state_key(b'w', dim, &[w.size_ms(), start], name(dim, id)),
                    w.get(start, id).map(|(s, rev, dirty)| {
                        state::encode(&(s.gmv_fen, s.refund_fen, s.paid_orders, rev, dirty))
                    }),
                )
            }
            StateKey::Bucket(dim, start, id) => {
                let m = &self.dims[dim.index()].milestones;
                (
                    state_key(b'b', dim, &[start], name(dim, id)),
                    m.bucket(start, id).map(|g| state::encode(&g)),
                )
            }
            StateKey::Cumulative(dim, id) => {
                let m = &self.dims[dim.index()].milestones;
                (
                    state_key(b'm', dim, &[], name(dim, id)),
                    m.final_gmv(id).map(|g| state::encode(&g)),
                )
            }
            StateKey::Source(p) => (
                format!("s{p}").into_bytes(),
                self.sources.get(&p).map(state::encode),
            ),
            StateKey::Clock => (b"~clock".to_vec(), Some(state::encode(&self.watermark_ms))),
        }
    }

    /// Puts back one changelog record (the latest committed value of its key).
    pub fn restore(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(key).map_err(|e| format!("changelog key: {e}"))?;
        let bad = |e: postcard::Error| format!("changelog record {text:?}: {e}");
        let dim_of = |s: &str| {
            Dim::ALL
                .into_iter()
                .find(|d| d.as_str() == s)
                .ok_or_else(|| format!("changelog key {text:?}: unknown dimension"))
        };
        let num = |s: &str| {
            s.parse::<i64>()
                .map_err(|e| format!("changelog key {text:?}: {e}"))
        };
        if text == "~clock" {
            self.watermark_ms = self.watermark_ms.max(state::decode(value).map_err(bad)?);
            return Ok(());
        }
        let (kind, rest) = text.split_at(1);
        match kind {
            "t" => {
                let (dim, name) = rest.split_once('|').ok_or("bad total key")?;
                let d = &mut self.dims[dim_of(dim)?.index()];
                let id = d.names.intern(name);
                let slot: TotalSlot =
                    decode_flagged(value, |(sums, revision): (Totals, u64)| TotalSlot {
                        sums,
                        revision,
                        dirty: true,
                    })
                    .map_err(bad)?;
                if slot.dirty {
                    d.dirty_totals.push(id);
                }
                *d.total_slot(id) = slot;
            }
            "w" => {
                let mut it = rest.splitn(4, '|');
                let (Some(dim), Some(size), Some(start), Some(name)) =
                    (it.next(), it.next(), it.next(), it.next())
                else {
                    return Err(format!("bad window key {text:?}"));
                };
                let (size, start) = (num(size)?, num(start)?);
                let d = &mut self.dims[dim_of(dim)?.index()];
                let id = d.names.intern(name);
                let (gmv_fen, refund_fen, paid_orders, rev, dirty): (i128, i128, u64, u64, bool) =
                    decode_flagged(value, |(g, r, p, rev): (i128, i128, u64, u64)| {
                        (g, r, p, rev, true)
                    })
                    .map_err(bad)?;
                if let Some(w) = d.windows.iter_mut().find(|w| w.size_ms() == size) {
                    w.restore(
                        start,
                        id,
                        WindowSums {
                            gmv_fen,
                            refund_fen,
                            paid_orders,
                        },
                        rev,
                        dirty,
                    );
                }
            }
            "b" => {
                let mut it = rest.splitn(3, '|');
                let (Some(dim), Some(start), Some(name)) = (it.next(), it.next(), it.next()) else {
                    return Err(format!("bad bucket key {text:?}"));
                };
                let start = num(start)?;
                let d = &mut self.dims[dim_of(dim)?.index()];
                let id = d.names.intern(name);
                d.milestones
                    .restore_bucket(start, id, state::decode(value).map_err(bad)?);
            }
            "m" => {
                let (dim, name) = rest.split_once('|').ok_or("bad milestone key")?;
                let d = &mut self.dims[dim_of(dim)?.index()];
                let id = d.names.intern(name);
                d.milestones
                    .restore_final(id, state::decode(value).map_err(bad)?);
            }
            "s" => {
                let p = num(rest)? as i32;
                self.sources.insert(p, state::decode(value).map_err(bad)?);
            }
            _ => return Err(format!("unknown changelog key {text:?}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
