//! The commit protocol of `gmv run`: Kafka Streams' `exactly_once_v2`, with one
//! consumer and one transactional producer per instance.
//!
//! Every `commit_interval` one Kafka transaction carries everything the
//! instance's tasks did since the last one: the repartition batches, the
//! outputs, the changelog records, and the offsets of every partition the
//! instance owns (`send_offsets_to_transaction` with the consumer's group
//! metadata). The broker checks the group generation those offsets carry
//! (KIP-447), so a process that lost its tasks in a rebalance without noticing
//! (a zombie) cannot commit. That is why every transaction carries an offset
//! for every owned partition, read since the last commit or not: a transaction
//! without offsets would skip that check.
//!
//! Readers of the repartition topic and of the changelogs use `read_committed`:
//! what they see committed together with the offsets after the input that made
//! it, so the aggregation stage applies every batch at once. A restore resumes
//! at the group's committed offsets, which the broker hands out only once no
//! transaction holding offsets for them is open (`require_stable`, KIP-447),
//! and then, once every transaction open on each changelog partition has
//! ended (a dead producer's is aborted by the broker), reads it to its last
//! stable offset; a zombie's later transactions fail at their offsets.
//!
//! [`Commits`] is that protocol's state, with no I/O: which tasks this instance
//! owns, where each of their inputs resumes, and what the next transaction
//! carries. The loop in `app.rs` does the I/O each transition asks for.

use std::collections::BTreeMap;

use super::state::{PartialBatch, PartialEntry, Progress, MAX_PROGRESS_BYTES};

/// Which stage a task belongs to (and so which changelog holds its state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Reads partition *p* of the three input topics.
    Attribution,
    /// Reads partition *p* of the repartition topic.
    Aggregation,
}

impl Stage {
    /// How many input partitions a task of this stage reads (its offsets, in order).
    pub fn inputs(self) -> usize {
        match self {
            Stage::Attribution => 3,
            Stage::Aggregation => 1,
        }
    }
}

/// A task: its stage and partition number.
pub type TaskId = (Stage, i32);

/// The attribution tasks' partial sums since the last commit, merged across
/// tasks and split by aggregation partition (index), and where each task's
/// event time stands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sums {
    pub split: Vec<Vec<PartialEntry>>,
    /// (attribution task, its progress), every task the engine runs.
    pub progress: Vec<(i32, Progress)>,
}

/// A changelog record of a task: key, and value (`None`: a tombstone).
pub type Change = (TaskId, Vec<u8>, Option<Vec<u8>>);

/// What the engine's tasks did since the last commit (`Engine::take_work`).
#[derive(Debug, Default)]
pub struct Work {
    pub sums: Sums,
    pub changes: Vec<Change>,
    /// Per task and input: the offset after the last record read since it was
    /// restored (`None`: nothing read).
    pub read: Vec<(TaskId, Vec<Option<i64>>)>,
}

/// What one transaction carries besides the outputs.
#[derive(Debug, Default, PartialEq)]
pub struct Transaction {
    /// Repartition records: (aggregation partition, batch).
    pub batches: Vec<(i32, PartialBatch)>,
    pub changes: Vec<Change>,
    /// Where every input of every owned task resumes once this commits:
    /// (task, input index, offset).
    pub offsets: Vec<(TaskId, usize, i64)>,
}

/// An open transaction's offsets per task, and the progress its batches carry per source.
type Open = (BTreeMap<TaskId, Vec<i64>>, BTreeMap<i32, Progress>);

/// The tasks this instance owns and what they committed.
#[derive(Debug)]
pub struct Commits {
    /// A repartition batch is split so that none encodes to more than this.
    max_batch_bytes: usize,
    /// Per owned task and input: where it resumes after the last commit.
    owned: BTreeMap<TaskId, Vec<i64>>,
    /// Per attribution task: the progress of the last batch it committed.
    sent: BTreeMap<i32, Progress>,
    /// The transaction built and not yet committed or failed: its offsets and
    /// the progress its batches carry.
    open: Option<Open>,
}

impl Default for Commits {
    fn default() -> Self {
        Commits::new(super::batch_log::CHUNK_BYTES)
    }
}

impl Commits {
    pub fn new(max_batch_bytes: usize) -> Self {
        Commits {
            max_batch_bytes,
            owned: BTreeMap::new(),
            sent: BTreeMap::new(),
            open: None,
        }
    }

    /// Repartition batches are split below `bytes` from the next transaction on.
    pub fn set_max_batch_bytes(&mut self, bytes: usize) {
        self.max_batch_bytes = bytes;
    }

    /// A new assignment (empty: everything revoked). Every task is dropped, and
    /// an open transaction with them (the caller aborts it): the returned tasks,
    /// sorted and each once, are to be restored from their changelogs.
    pub fn assign(&mut self, tasks: impl IntoIterator<Item = TaskId>) -> Vec<TaskId> {
        *self = Commits::new(self.max_batch_bytes);
        let mut tasks: Vec<TaskId> = tasks.into_iter().collect();
        tasks.sort_unstable();
        tasks.dedup();
        tasks
    }

    /// A new assignment in the group generation right after the one this
    /// instance committed everything in as its partitions were revoked: no one
    /// else owned a task in between, so a task it owned and owns again goes on
    /// from memory, resuming where that commit left it. The others are dropped;
    /// returns the new ones, sorted and each once, to restore.
    pub fn keep(&mut self, tasks: impl IntoIterator<Item = TaskId>) -> Vec<TaskId> {
        debug_assert!(self.open.is_none(), "committed before the revocation");
        let mut tasks: Vec<TaskId> = tasks.into_iter().collect();
        tasks.sort_unstable();
        tasks.dedup();
        self.owned.retain(|t, _| tasks.binary_search(t).is_ok());
        let owned = &self.owned;
        self.sent
            .retain(|source, _| owned.contains_key(&(Stage::Attribution, *source)));
        tasks.retain(|t| !self.owned.contains_key(t));
        tasks
    }

    /// `task` was restored; its inputs resume at `offsets` (the group's
    /// committed offsets, or each partition's first offset where none was committed).
    pub fn restored(&mut self, task: TaskId, offsets: Vec<i64>) {
        debug_assert_eq!(offsets.len(), task.0.inputs());
        self.owned.insert(task, offsets);
    }

    /// Where the consumer reads from: every input of every owned task.
    pub fn resume(&self) -> Vec<(TaskId, usize, i64)> {
        self.owned
            .iter()
            .flat_map(|(task, o)| o.iter().enumerate().map(|(i, o)| (*task, i, *o)))
            .collect()
    }

    /// Where input `i` of `task` resumes after the last commit, if it is owned.
    pub fn resumes_at(&self, task: TaskId, i: usize) -> Option<i64> {
        self.owned.get(&task).and_then(|o| o.get(i).copied())
    }

    pub fn owned(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.owned.keys().copied()
    }

    /// Builds the next transaction from the tasks' work. An attribution task
    /// sends a batch to every aggregation partition when it has sums, when its
    /// progress moved since its last committed batch, or as its first since
    /// it was restored (an aggregation task's watermark waits to hear from
    /// every attribution task). Offsets: every input of every owned task, where
    /// reading stopped, or where it resumed if nothing was read.
    pub fn transaction(&mut self, work: Work) -> Transaction {
        debug_assert!(self.open.is_none(), "the last transaction was not resolved");
        // The progress of each owned task that moved since the last commit (or
        // was restored since): every aggregation partition hears of it.
        let sent: BTreeMap<i32, Progress> = work
            .sums
            .progress
            .into_iter()
            .filter(|(p, progress)| {
                self.owned.contains_key(&(Stage::Attribution, *p))
                    && self.sent.get(p) != Some(progress)
            })
            .collect();
        let progress: Vec<(i32, Progress)> = sent.iter().map(|(p, g)| (*p, *g)).collect();
        let mut batches = Vec::new();
        for (r, entries) in work.sums.split.into_iter().enumerate() {
            if entries.is_empty() && progress.is_empty() {
                continue;
            }
            for batch in split_batch(&progress, entries, self.max_batch_bytes) {
                batches.push((r as i32, batch));
            }
        }
        let read: BTreeMap<TaskId, Vec<Option<i64>>> = work.read.into_iter().collect();
        let mut positions = BTreeMap::new();
        let mut offsets = Vec::new();
        for (task, committed) in &self.owned {
            let now: Vec<i64> = (0..committed.len())
                .map(|i| {
                    read.get(task)
                        .and_then(|r| r.get(i).copied().flatten())
                        .unwrap_or(committed[i])
                })
                .collect();
            offsets.extend(now.iter().enumerate().map(|(i, o)| (*task, i, *o)));
            positions.insert(*task, now);
        }
        self.open = Some((positions, sent));
        Transaction {
            batches,
            changes: work.changes,
            offsets,
        }
    }

    /// The open transaction committed: its offsets are where the inputs resume.
    pub fn committed(&mut self) {
        if let Some((positions, sent)) = self.open.take() {
            self.owned.extend(positions);
            self.sent.extend(sent);
        }
    }

    /// The open transaction failed (the caller aborts it): the tasks' memory is
    /// ahead of what committed, so every task is dropped; the returned ones are
    /// to be restored from their last commit.
    pub fn failed(&mut self) -> Vec<TaskId> {
        let tasks: Vec<TaskId> = self.owned().collect();
        self.assign(tasks)
    }
}

/// The batch for one aggregation partition, as records of at most
/// `max_bytes` each (a million changed keys must not make one record past the
/// broker's limit). The last carries the progress.
fn split_batch(
    progress: &[(i32, Progress)],
    entries: Vec<PartialEntry>,
    max_bytes: usize,
) -> Vec<PartialBatch> {
    // The progress is not cut: at 40 bytes a task, it alone would pass a
    // quarter of the smallest record limit (40 KB) only past 250 tasks on one
    // instance, and the broker's limit past 25,000.
    let room = max_bytes.saturating_sub(8 + progress.len() * MAX_PROGRESS_BYTES);
    let mut batches = Vec::new();
    let mut entries = entries.into_iter().peekable();
    loop {
        let mut chunk = Vec::new();
        let mut size = 0;
        while let Some(e) =
            entries.next_if(|e| chunk.is_empty() || size + e.max_encoded_len() <= room)
        {
            size += e.max_encoded_len();
            chunk.push(e);
        }
        let last = entries.peek().is_none();
        batches.push(PartialBatch {
            progress: if last { progress.to_vec() } else { Vec::new() },
            entries: chunk,
        });
        if last {
            return batches;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::output::Dim;

    const A0: TaskId = (Stage::Attribution, 0);
    const A1: TaskId = (Stage::Attribution, 1);
    const G0: TaskId = (Stage::Aggregation, 0);

    fn progress(watermark_ms: i64) -> Progress {
        Progress {
            watermark_ms,
            ..Progress::default()
        }
    }

    /// Sums with `gmv` for each aggregation partition (none where 0), from
    /// tasks at (task, watermark).
    fn sums(progress_of: &[(i32, i64)], gmv: &[i128]) -> Sums {
        Sums {
            progress: progress_of
                .iter()
                .map(|(p, wm)| (*p, progress(*wm)))
                .collect(),
            split: gmv
                .iter()
                .map(|g| {
                    (*g > 0)
                        .then(|| PartialEntry {
                            dim: Dim::Total,
                            key: "total".into(),
                            bucket_ms: 0,
                            delta: crate::core::state::Delta {
                                gmv_fen: *g,
                                ..Default::default()
                            },
                        })
                        .into_iter()
                        .collect()
                })
                .collect(),
        }
    }

    fn owning(tasks: &[(TaskId, Vec<i64>)]) -> Commits {
        let mut c = Commits::default();
        let wanted = c.assign(tasks.iter().map(|t| t.0));
        for (task, offsets) in tasks {
            assert!(wanted.contains(task));
            c.restored(*task, offsets.clone());
        }
        c
    }

    #[test]
    fn an_assignment_names_each_task_to_restore_once_and_drops_the_old_ones() {
        let mut c = owning(&[(A0, vec![1, 2, 3])]);
        let wanted = c.assign([G0, A1, A1, (Stage::Attribution, 1)]);
        assert_eq!(wanted, vec![A1, G0]);
        assert_eq!(c.owned().count(), 0, "owned once restored");
        assert!(c.resume().is_empty());
        assert_eq!(c.transaction(Work::default()), Transaction::default());
    }

    #[test]
    fn tasks_kept_across_a_rebalance_resume_where_they_committed_and_only_new_ones_restore() {
        let mut c = owning(&[(A0, vec![1, 2, 3]), (A1, vec![4, 5, 6]), (G0, vec![7])]);
        c.transaction(Work {
            sums: sums(&[(0, 10), (1, 10)], &[5]),
            read: vec![(A0, vec![Some(8), None, None]), (G0, vec![Some(9)])],
            ..Work::default()
        });
        c.committed();
        let g1 = (Stage::Aggregation, 1);
        assert_eq!(c.keep([g1, A0, G0, g1]), vec![g1]);
        assert_eq!(
            c.resume(),
            vec![(A0, 0, 8), (A0, 1, 2), (A0, 2, 3), (G0, 0, 9)],
            "A1 dropped; the kept ones where the commit left them"
        );
        c.restored(g1, vec![0]);
        // A0's progress counts as sent (its batch committed); A1's is forgotten.
        let t = c.transaction(Work {
            sums: sums(&[(0, 10), (1, 10)], &[0, 0]),
            ..Work::default()
        });
        assert!(t.batches.is_empty(), "{:?}", t.batches);
        assert_eq!(t.offsets.len(), 5);
    }

    #[test]
    fn a_restored_task_resumes_at_its_committed_offsets() {
        let c = owning(&[(A0, vec![5, 6, 7]), (G0, vec![9])]);
        assert_eq!(
            c.resume(),
            vec![(A0, 0, 5), (A0, 1, 6), (A0, 2, 7), (G0, 0, 9)]
        );
    }

    #[test]
    fn every_transaction_carries_an_offset_for_every_owned_input() {
        // KIP-447: the group generation is checked only on offsets, so a
        // transaction of a task that read nothing still carries its offsets.
        let mut c = owning(&[(A0, vec![5, 6, 7]), (G0, vec![9])]);
        let t = c.transaction(Work {
            read: vec![(A0, vec![Some(8), None, None])],
            ..Work::default()
        });
        assert_eq!(
            t.offsets,
            vec![(A0, 0, 8), (A0, 1, 6), (A0, 2, 7), (G0, 0, 9)]
        );
    }

    #[test]
    fn a_commit_moves_where_inputs_resume_and_a_failure_does_not() {
        let mut c = owning(&[(A0, vec![0, 0, 0])]);
        let read = |o| Work {
            read: vec![(A0, vec![Some(o), None, Some(o)])],
            ..Work::default()
        };
        c.transaction(read(10));
        c.committed();
        assert_eq!(c.resume(), vec![(A0, 0, 10), (A0, 1, 0), (A0, 2, 10)]);
        let t = c.transaction(Work::default());
        assert_eq!(
            t.offsets[0],
            (A0, 0, 10),
            "nothing read since: as committed"
        );
        c.committed();
        c.transaction(read(20));
        let restore = c.failed();
        assert_eq!(restore, vec![A0], "restored from the last commit");
        assert_eq!(c.owned().count(), 0);
        c.committed();
        assert!(c.resume().is_empty(), "a failed transaction never commits");
    }

    #[test]
    fn a_batch_goes_first_then_with_sums_or_moved_progress() {
        let mut c = owning(&[(A0, vec![0; 3]), (A1, vec![0; 3])]);
        let round = |c: &mut Commits, s: Sums| {
            let t = c.transaction(Work {
                sums: s,
                ..Work::default()
            });
            c.committed();
            t.batches
                .iter()
                .map(|(r, b)| {
                    let sources: Vec<i32> = b.progress.iter().map(|(p, _)| *p).collect();
                    (*r, b.entries.len(), sources)
                })
                .collect::<Vec<_>>()
        };
        // The first after a restore, though empty: to every aggregation partition.
        assert_eq!(
            round(&mut c, sums(&[(0, 5), (1, 5)], &[0, 0])),
            vec![(0, 0, vec![0, 1]), (1, 0, vec![0, 1])]
        );
        // No progress moved; sums for partition 1 only.
        assert_eq!(
            round(&mut c, sums(&[(0, 5), (1, 5)], &[0, 3])),
            vec![(1, 1, vec![])]
        );
        // Progress of 0 moved: to every partition.
        assert_eq!(
            round(&mut c, sums(&[(0, 6), (1, 5)], &[0, 0])),
            vec![(0, 0, vec![0]), (1, 0, vec![0])]
        );
    }

    #[test]
    fn progress_counts_as_sent_only_once_committed() {
        let mut c = owning(&[(A0, vec![0; 3])]);
        let work = || Work {
            sums: sums(&[(0, 5)], &[0]),
            ..Work::default()
        };
        assert_eq!(c.transaction(work()).batches.len(), 1);
        // Failed and restored: the restored task sends its first batch again.
        let tasks = c.failed();
        assert_eq!(tasks, vec![A0]);
        c.restored(A0, vec![0; 3]);
        assert_eq!(c.transaction(work()).batches.len(), 1);
        c.committed();
        assert_eq!(c.transaction(work()).batches.len(), 0);
    }

    #[test]
    fn the_progress_of_a_task_not_owned_is_not_sent() {
        let mut c = owning(&[(A0, vec![0; 3])]);
        let t = c.transaction(Work {
            sums: sums(&[(1, 5)], &[0]),
            read: vec![(A1, vec![Some(4), None, None])],
            ..Work::default()
        });
        assert!(t.batches.is_empty());
        assert!(t.offsets.iter().all(|(task, _, _)| *task == A0));
    }

    #[test]
    fn a_large_batch_goes_as_records_under_the_limit_and_only_the_last_carries_the_progress() {
        let max = 64 * 1024;
        let mut c = Commits::new(max);
        c.assign([A0]);
        c.restored(A0, vec![0, 0, 0]);
        let entries: Vec<PartialEntry> = (0..20_000)
            .map(|i| PartialEntry {
                dim: Dim::Brand,
                key: format!("{i:064}").into(),
                bucket_ms: i64::MIN,
                delta: crate::core::state::Delta {
                    gmv_fen: i128::MAX,
                    refund_fen: i128::MIN,
                    paid_orders: u64::MAX,
                    placed_orders: u64::MAX,
                    shipped_orders: u64::MAX,
                    delivered_orders: u64::MAX,
                },
            })
            .collect();
        let t = c.transaction(Work {
            sums: Sums {
                progress: vec![(0, progress(i64::MAX))],
                split: vec![entries.clone()],
            },
            ..Work::default()
        });
        assert!(t.batches.len() > 20, "{} batches", t.batches.len());
        for (i, (r, b)) in t.batches.iter().enumerate() {
            assert_eq!(*r, 0);
            let size = crate::core::state::encode(b).len();
            assert!(size <= max, "batch {i}: {size} bytes");
            let last = i + 1 == t.batches.len();
            let want = if last {
                vec![(0, progress(i64::MAX))]
            } else {
                vec![]
            };
            assert_eq!(b.progress, want, "batch {i}");
        }
        let sent: Vec<PartialEntry> = t.batches.into_iter().flat_map(|(_, b)| b.entries).collect();
        assert_eq!(sent, entries, "every entry once, in order");
    }
}
