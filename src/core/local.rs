//! The job without Kafka, for tests and benchmarks: the same path as `gmv run`
//! (stage one → commit protocol → repartition → stage two), with the
//! repartition topic in memory and every tick a committed transaction.

use super::batch_log;
use super::commit::{Commits, Stage};
use super::engine::Engine;
use super::output::Output;
use super::EngineConfig;

/// An engine with its tasks, committing through [`Commits`] in memory.
#[derive(Debug)]
pub struct LocalJob {
    engine: Engine,
    commits: Commits,
    /// Next offset of each in-memory repartition partition.
    repartition: Vec<i64>,
    last_emit_ms: Option<i64>,
    /// Bytes of the changelog records committed (keys and values), by stage:
    /// attribution, aggregation.
    changelog_bytes: [u64; 2],
}

impl LocalJob {
    /// One attribution task per input partition number in `partitions`, and
    /// `aggregation_partitions` aggregation tasks.
    pub fn new(
        cfg: EngineConfig,
        partitions: &[i32],
        aggregation_partitions: i32,
        now_ms: i64,
    ) -> Self {
        let mut commits = Commits::new(batch_log::chunk_bytes(cfg.max_record_bytes));
        let mut engine = Engine::new(cfg);
        let attribution = partitions.iter().map(|p| (Stage::Attribution, *p));
        let aggregation = (0..aggregation_partitions).map(|r| (Stage::Aggregation, r));
        let tasks = commits.assign(attribution.chain(aggregation));
        let sources = tasks.iter().filter(|t| t.0 == Stage::Attribution).count();
        for task in tasks {
            match task.0 {
                Stage::Attribution => {
                    engine.add_attribution(task.1, now_ms);
                }
                Stage::Aggregation => {
                    engine.add_aggregation(task.1, sources);
                }
            }
            commits.restored(task, vec![0; task.0.inputs()]);
        }
        LocalJob {
            engine,
            commits,
            repartition: vec![0; aggregation_partitions as usize],
            last_emit_ms: None,
            changelog_bytes: [0; 2],
        }
    }

    /// Makes the changelog records at every commit, as `gmv run` does
    /// (dropped here: nothing restores a `LocalJob`).
    pub fn track_changes(&mut self) {
        self.engine.track_changes();
    }

    /// Bytes of the changelog records committed so far (keys and values):
    /// the attribution stage's, the aggregation stage's.
    pub fn changelog_bytes(&self) -> [u64; 2] {
        self.changelog_bytes
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, to feed it records (`Engine::on_record`).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// One transaction: the attribution tasks' batches reach the aggregation tasks.
    pub fn commit(&mut self, out: &mut Vec<Output>) {
        let work = self.engine.take_work(self.repartition.len() as i32);
        let txn = self.commits.transaction(work);
        for ((stage, _), k, v) in &txn.changes {
            let bytes = k.len() + v.as_ref().map_or(0, Vec::len);
            self.changelog_bytes[(*stage == Stage::Aggregation) as usize] += bytes as u64;
        }
        for (r, batch) in txn.batches {
            let offset = &mut self.repartition[r as usize];
            self.engine.receive(r, *offset, batch, out);
            *offset += 1;
        }
        self.commits.committed();
    }

    /// Wall-clock tick: idleness and flushes, a commit, and the periodic
    /// emission once `emit_interval` has passed. Returns true when it emitted.
    pub fn on_tick(&mut self, now_ms: i64, out: &mut Vec<Output>) -> bool {
        self.engine.on_tick(now_ms);
        self.commit(out);
        let interval = self.engine.config().time.emit_interval_ms;
        if self
            .last_emit_ms
            .is_some_and(|last| now_ms - last < interval)
        {
            return false;
        }
        self.engine.emit(out);
        self.last_emit_ms = Some(now_ms);
        true
    }
}
