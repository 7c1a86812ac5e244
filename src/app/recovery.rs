//! What the processing loop does when its tasks change or a transaction
//! fails: restore the owned tasks from their changelogs and the group's
//! committed offsets (after a rebalance, or to redo a failed transaction from
//! the last commit), replace a producer the broker ended, and cut records
//! smaller when the broker refuses one for its size.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{changelog_topic, task_topic, Loop};
use crate::core::batch_log;
use crate::core::commit::{Stage, TaskId};
use crate::io::changelog;
use crate::io::consumer::{self, Assignment};
use crate::io::lanes::Lanes;
use crate::io::producer::TxnProducer;
use crate::io::topics;
use crate::telemetry::http::now_ms;

/// How long a failed transaction is retried (aborted, tasks restored) before the process gives up.
const RECOVER_FOR: Duration = Duration::from_secs(300);
/// How a restore puts the consumer at the committed offsets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Position {
    /// A new assignment: the partitions are assigned at them.
    Assign,
    /// The same tasks again, after a failed transaction: each partition seeks to
    /// its offset, as Kafka Streams revives a task, and stays assigned. Assigning
    /// the same partitions again stops and restarts every fetcher; a revoke right
    /// after (the group session ending as the broker comes back) then stopped a
    /// fetcher twice, which aborts the process in librdkafka 2.12
    /// (`rd_kafka_assignment_partition_stopped: Assertion 'rktp->rktp_started'`,
    /// librdkafka#5573, fixed after 2.12).
    Seek,
    /// The same tasks again after an input's offset fell out of its log's range
    /// (`consumer::create`): assigned anew, since librdkafka stopped that
    /// partition's fetcher and a stopped fetcher does not seek, and each
    /// committed offset checked against what its log holds now. (So it runs
    /// the risk `Seek` avoids, for a rare event: records deleted unread.)
    PastDeleted,
}

/// The smallest record limit the job shrinks to when the broker refuses its
/// records for their size: a changelog chunk of a quarter of it plus one
/// order id's entry (about 25 KB), or a dead letter (about 30 KB), must fit.
const MIN_RECORD_BYTES: usize = 40 * 1024;

impl Loop<'_> {
    /// After a commit failed: unless this producer was fenced (a newer instance
    /// with the same id took over: exiting is the only safe move), abort the
    /// transaction (or replace a producer the broker has ended) and restore the
    /// owned tasks from their last commit, as after a rebalance, so a broker that
    /// was away for longer than the message timeout costs a restore, not the
    /// process. Tries for `RECOVER_FOR` while the broker is still away, then gives up.
    pub(super) fn recover(&mut self, failure: anyhow::Error) -> anyhow::Result<()> {
        self.recover_as(failure, Position::Seek)
    }

    /// An input partition stopped: the log no longer holds its offset
    /// (retention deleted records before the job read them). Every owned task
    /// restores from its last commit, as after a failed transaction, and each
    /// input whose committed offset is gone resumes at its log's start, the
    /// offsets skipped counted in `gmv_input_offsets_skipped_total`.
    pub(super) fn skip_deleted(&mut self) -> anyhow::Result<()> {
        let failure = anyhow::anyhow!("an input's offset is no longer in its log");
        self.recover_as(failure, Position::PastDeleted)
    }

    fn recover_as(&mut self, failure: anyhow::Error, how: Position) -> anyhow::Result<()> {
        let started = Instant::now();
        let tasks = self.commits.failed();
        if self.producer.take_too_large() {
            self.shrink_records();
        }
        let mut last = failure;
        loop {
            if let Some((code, why)) = self.producer.fatal_error() {
                // A producer that raised a fatal error can do nothing more. Fenced on
                // purpose by a second process with this instance's id (it is in the
                // group): this one is the zombie and stops. Otherwise the broker ended
                // the transaction itself (it outlived transaction.timeout.ms while the
                // broker was away, or its coordinator lost it): a new producer with the
                // same id goes on.
                match consumer::another_process_is(&self.consumer, self.cfg) {
                    Ok(true) => {
                        return Err(last.context(format!(
                            "fenced ({why}): another instance with kafka.instance_id `{}` has taken over; this one stops. Give each instance its own id",
                            self.cfg.kafka.instance_id
                        )));
                    }
                    Ok(false) => {
                        tracing::warn!(?code, "the producer failed ({why}); making a new one");
                        if let Err(e) = self.new_producer() {
                            last = e;
                        }
                    }
                    Err(e) => last = e,
                }
                if self.producer.fatal_error().is_some() {
                    if started.elapsed() >= RECOVER_FOR {
                        return Err(last.context(format!(
                            "could not make a new producer within {RECOVER_FOR:?}"
                        )));
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
            tracing::warn!(
                instance = %self.cfg.kafka.instance_id,
                "{} ({last:#}); aborting the transaction and restoring the tasks from their last commit",
                match how {
                    Position::PastDeleted => "an input partition stopped",
                    _ => "the transaction failed",
                }
            );
            match self.restore(&tasks, how) {
                Ok(()) => return Ok(()),
                // Nothing is owned now: the loop ends, with nothing to commit.
                Err(e) if e.is::<changelog::Stopped>() => return Ok(()),
                Err(e) if started.elapsed() < RECOVER_FOR => {
                    last = e;
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "could not restore the tasks after a failed transaction within {RECOVER_FOR:?}; a restart resumes from the last commit"
                    )))
                }
            }
        }
    }

    /// The broker refused a record for its size, though every topic accepted
    /// `kafka.max_record_bytes` at start (a limit lowered since): from the
    /// redo of the failed transaction on, changelog chunks and repartition
    /// batches are cut at half the size, so the job goes on by itself.
    fn shrink_records(&mut self) {
        let was = self.engine.config().max_record_bytes;
        let limit = (was / 2).max(MIN_RECORD_BYTES);
        tracing::error!(
            from = was,
            to = limit,
            "the broker refused a record for its size: a topic's max.message.bytes is below kafka.max_record_bytes; cutting records smaller (raise the topic's limit, or lower kafka.max_record_bytes)"
        );
        self.handles
            .metrics
            .lock()
            .expect("metrics lock")
            .set_record_limit(limit);
        self.engine.set_max_record_bytes(limit);
        self.commits
            .set_max_batch_bytes(batch_log::chunk_bytes(limit));
        // The broker checks the limit on whole batches of records: the
        // producer's batches shrink too (a new producer with the same id
        // fences the old one, aborting its transaction).
        if let Err(e) = self.new_producer() {
            tracing::warn!("making a producer with smaller batches: {e:#}; the recovery retries");
        }
    }

    /// Replaces the producer by a new one with the same `transactional.id`,
    /// its batches no larger than the records the engine makes.
    fn new_producer(&mut self) -> anyhow::Result<()> {
        let p = TxnProducer::create(
            self.cfg,
            Some(self.handles.output_counters()),
            self.engine.config().max_record_bytes,
        )?;
        self.producer = Arc::new(p);
        Ok(())
    }

    /// A rebalance. On a revoke, what is done is committed first, so the tasks
    /// this instance gets back go on from memory (a restore of everything on
    /// every rebalance grew the pause with the state). On an assignment, the
    /// tasks it owned and gets back in the next generation are kept, and only
    /// the new ones restored; otherwise every task is.
    pub(super) fn rebalanced(&mut self, event: Assignment) -> anyhow::Result<()> {
        let t = &self.cfg.topics;
        let wanted = match event {
            Assignment::Revoke { lost } => {
                // (Already parked: nothing was assigned since, so nothing new to commit.)
                let owned = self.commits.owned().next().is_some() && self.parked.is_none();
                let committed = owned.then(|| self.commit_before_revoke(lost)).flatten();
                self.local("unassign", |c| c.unassign())
                    .context("giving the revoked partitions up")?;
                self.lanes = Lanes::default();
                self.parked = committed;
                if committed.is_some() {
                    return Ok(());
                }
                // Not committed (failed, or nothing owned): every task is dropped,
                // and restores from its last commit when it comes back.
                self.commits.assign([])
            }
            Assignment::Assign(list) => {
                topics::check_assigned(&list, t, self.partitions, self.aggregation_partitions)?;
                let tasks = list.iter().filter_map(|(topic, p)| {
                    if *topic == t.repartition {
                        Some((Stage::Aggregation, *p))
                    } else {
                        t.input_topic(topic).map(|_| (Stage::Attribution, *p))
                    }
                });
                // Kept only in the generation right after the commit: in a later
                // one, another member may have owned a task in between.
                let next = self.parked.take().and_then(|g| g.checked_add(1));
                if next.is_some()
                    && next == self.local("consumer_group_metadata", consumer::generation)
                {
                    self.commits.keep(tasks)
                } else {
                    self.commits.assign(tasks)
                }
            }
        };
        self.restore(&wanted, Position::Assign)
    }

    /// Commits what the owned tasks did, before their partitions are given up;
    /// the group generation it committed in, if it did. A `lost` assignment
    /// has no generation to commit in: the broker would refuse the offsets
    /// (unknown member), and with the broker just back librdkafka 2.12 can wait
    /// forever for that answer (librdkafka#5456), the loop with it, never
    /// giving the partitions up, so never rejoining. Kafka Streams closes lost
    /// tasks without a commit too.
    fn commit_before_revoke(&mut self, lost: bool) -> Option<i32> {
        if lost {
            tracing::info!("the group moved on without this instance (its session ended): every task restores from its last commit");
            return None;
        }
        let generation = self.local("consumer_group_metadata", consumer::generation)?;
        match self.commit().and_then(|()| self.finish_commit()) {
            Ok(()) => Some(generation),
            Err(e) => {
                tracing::info!("the commit before the rebalance failed ({e:#}); every task restores from its last commit");
                None
            }
        }
    }

    /// Restores `wanted` (the protocol's list) and drops every task the
    /// protocol no longer owns: the open transaction is aborted, each input
    /// resumes at the group's committed offset, and each task's state is its
    /// changelog partition read to the end (see `core/commit.rs` for why the
    /// two agree).
    fn restore(&mut self, wanted: &[TaskId], how: Position) -> anyhow::Result<()> {
        let started = Instant::now();
        // A commit still running ends first. Its result does not matter: the
        // restore starts from whatever committed.
        if let Some((pending, _)) = self.in_flight.take() {
            if let Err(e) = pending.wait() {
                tracing::info!("the commit in flight failed: {e:#}");
            }
        }
        // One that did not end is stuck in librdkafka, its producer with it (a
        // transactional call waits for the last one to end): a new producer
        // with the same id fences it, so whatever it still does is refused. Its
        // thread holds it until the call returns, if ever.
        if self.producer.is_committing() {
            tracing::warn!("giving up a producer stuck in a commit; making a new one");
            self.new_producer()
                .context("replacing the producer stuck in a commit")?;
        }
        self.producer.abort()?;
        if how != Position::Seek {
            // The old assignment's lanes go; the new ones are split below, before `assign`.
            self.lanes = Lanes::default();
        }
        let commits = &self.commits;
        self.engine
            .retain(|stage, p| commits.owned().any(|t| t == (stage, p)));
        let kept = commits.owned().count();
        self.out.clear();
        self.handles
            .metrics
            .lock()
            .expect("metrics lock")
            .rebalances
            .inc();
        if wanted.is_empty() && kept == 0 {
            tracing::info!(instance = %self.cfg.kafka.instance_id, "no partitions assigned");
            return self
                .local("unassign", |c| c.unassign())
                .context("taking an empty assignment");
        }
        let cfg = self.cfg;
        // 1. Where every input resumes; returns once no transaction holding
        //    offsets for them is open (the previous owner's last one has ended).
        let inputs: Vec<(&str, i32)> = wanted
            .iter()
            .flat_map(|(stage, p)| {
                (0..stage.inputs()).map(move |i| (task_topic(cfg, *stage, i), *p))
            })
            .collect();
        let check = (how == Position::PastDeleted).then_some(&mut self.skipped_to);
        let mut offsets = if inputs.is_empty() {
            Vec::new()
        } else {
            consumer::committed_offsets(&self.consumer, &inputs, check)?
        };
        {
            let m = self.handles.metrics.lock().expect("metrics lock");
            for (r, (topic, _)) in offsets.iter().zip(&inputs) {
                if r.skipped > 0 {
                    m.offsets_skipped
                        .with_label_values(&[topic])
                        .inc_by(r.skipped as u64);
                }
            }
        }
        let mut offsets = offsets.drain(..).map(|r| r.at);
        // 2. Each changelog partition to its last stable offset.
        let partitions: BTreeMap<TaskId, (String, i32)> = wanted
            .iter()
            .map(|t| (*t, (changelog_topic(cfg, t.0).to_string(), t.1)))
            .collect();
        let (heartbeat, shutdown) = (&self.handles.heartbeat_ms, &self.handles.shutdown);
        let alive = || {
            heartbeat.store(now_ms(), Ordering::Relaxed);
            !shutdown.load(Ordering::Relaxed)
        };
        let states = changelog::read(cfg, &partitions, &alive)?;
        let now = now_ms();
        let mut keys = 0;
        for (task, entries) in states {
            keys += entries.len();
            let (stage, p) = task;
            let result: Result<(), String> = match stage {
                Stage::Attribution => {
                    let t = self.engine.add_attribution(p, now);
                    let per_task =
                        cfg.state.expected_orders as usize / self.partitions.max(1) as usize;
                    if per_task > 0 && !t.reserve(per_task) {
                        tracing::warn!(
                            partition = p,
                            orders = per_task,
                            "no memory to size the state for state.expected_orders; it grows as needed"
                        );
                    }
                    let restored = entries.iter().try_for_each(|(k, v)| t.restore(k, v));
                    // From here on: what the restore itself changed is in the changelog already.
                    t.track_changes();
                    restored
                }
                Stage::Aggregation => {
                    let t = self.engine.add_aggregation(p, self.partitions as usize);
                    t.track_changes();
                    entries.iter().try_for_each(|(k, v)| t.restore(k, v))
                }
            };
            result
                .map_err(|e| anyhow::anyhow!(e))
                .with_context(|| format!("restoring {stage:?} task {p}"))?;
            let resume: Vec<i64> = offsets.by_ref().take(stage.inputs()).collect();
            tracing::debug!(instance = %cfg.kafka.instance_id, ?stage, p, ?resume, keys = entries.len(), "task restored");
            self.commits.restored(task, resume);
        }
        let mut tpl = TopicPartitionList::new();
        for ((stage, p), i, o) in self.commits.resume() {
            tpl.add_partition_offset(task_topic(cfg, stage, i), p, Offset::Offset(o))?;
        }
        // 3. The consumer at those offsets.
        let rewound = how == Position::Seek
            && match consumer::seek(&self.consumer, tpl.clone()) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("{e:#}; assigning the partitions again instead");
                    false
                }
            };
        if rewound {
            self.lanes.rewound();
        } else {
            // The input partitions' lanes before `assign`: every record of theirs then
            // reaches its lane. (Split after, the first fetches could land in the
            // consumer's queue, and be read after later records of the same partition.)
            let elements = tpl.elements();
            let lanes: Vec<_> = elements
                .iter()
                .filter_map(|e| {
                    let input = cfg.topics.input_topic(e.topic())?;
                    Some((input, e.topic(), e.partition()))
                })
                .collect();
            self.lanes = Lanes::split(&self.consumer, &lanes)?;
            self.local("assign", |c| c.assign(&tpl))
                .context("positioning the consumer at the committed offsets")?;
        }
        tracing::info!(
            instance = %cfg.kafka.instance_id,
            tasks = wanted.len(),
            kept,
            keys,
            seconds = started.elapsed().as_secs_f64(),
            rewound,
            "state restored"
        );
        Ok(())
    }
}
