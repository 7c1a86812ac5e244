//! Changelog records handed to librdkafka on a thread of their own. Each
//! commit collects about one state record per input event; collecting them
//! needs the tasks' state and stays on the loop, but handing each to
//! librdkafka (an allocation, a copy, two locks, a clock read) was as much
//! work again, and the loop is the job's bottleneck (docs/performance.md).
//! The loop encodes a task's records into one buffer and goes on reading
//! while this thread sends them; before anything vouches for them (a commit
//! record, a restore marker) the loop waits until every buffer is sent.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use anyhow::Context;

use super::producer::{Kind, Record, TxnProducer};
use crate::core::state::Tag;

/// One task's changelog records of one commit, encoded back to back.
#[derive(Debug)]
pub struct ChangeBatch {
    topic: String,
    partition: i32,
    tag: Tag,
    bytes: Vec<u8>,
    /// Per record: where its key ends in `bytes` and where its value does
    /// (`None`: a tombstone); each starts where the one before ends.
    ends: Vec<(usize, Option<usize>)>,
}

impl ChangeBatch {
    fn new(topic: &str, partition: i32, tag: Tag) -> Self {
        ChangeBatch {
            topic: topic.to_string(),
            partition,
            tag,
            bytes: Vec::new(),
            ends: Vec::new(),
        }
    }

    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        let value_end = value.map(|v| {
            self.bytes.extend_from_slice(v);
            self.bytes.len()
        });
        self.ends.push((key_end, value_end));
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Each record's key and value, in the order pushed.
    fn records(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(key_end, value_end)| {
            let key = &self.bytes[start..key_end];
            let value = value_end.map(|end| &self.bytes[key_end..end]);
            start = value_end.unwrap_or(key_end);
            (key, value)
        })
    }
}

/// Batches handed over and not sent yet, and the first failure to send one.
#[derive(Default)]
struct Pending {
    batches: usize,
    failure: Option<String>,
    /// Sent batches, emptied, for the next ones: their buffers keep their
    /// capacity (megabytes a commit, regrown and faulted in every time otherwise).
    spare: Vec<ChangeBatch>,
}

/// The sending thread, for as long as this lives.
pub struct ChangeSender {
    queue: Option<mpsc::Sender<ChangeBatch>>,
    pending: Arc<(Mutex<Pending>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl ChangeSender {
    pub fn start(producer: Arc<TxnProducer>) -> anyhow::Result<Self> {
        let (queue, batches) = mpsc::channel::<ChangeBatch>();
        let pending = Arc::new((Mutex::new(Pending::default()), Condvar::new()));
        let done = pending.clone();
        let thread = std::thread::Builder::new()
            .name("gmv-changelog".into())
            .spawn(move || {
                for batch in batches {
                    let result = batch.records().try_for_each(|(key, value)| {
                        producer.send(Record {
                            topic: &batch.topic,
                            partition: Some(batch.partition),
                            key: Some(key),
                            value,
                            tag: Some(batch.tag),
                            kind: Kind::Changelog,
                        })
                    });
                    let mut batch = batch;
                    batch.bytes.clear();
                    batch.ends.clear();
                    let (lock, sent) = &*done;
                    let mut p = lock.lock().expect("pending lock");
                    if let Err(e) = result {
                        p.failure.get_or_insert_with(|| format!("{e:#}"));
                    }
                    p.spare.push(batch);
                    p.batches -= 1;
                    sent.notify_all();
                }
            })
            .context("starting the changelog thread")?;
        Ok(ChangeSender {
            queue: Some(queue),
            pending,
            thread: Some(thread),
        })
    }

    /// An empty batch for a task's records, with the buffers of one already sent.
    pub fn batch(&self, topic: &str, partition: i32, tag: Tag) -> ChangeBatch {
        let spare = self.pending.0.lock().expect("pending lock").spare.pop();
        match spare {
            Some(mut b) => {
                b.topic.clear();
                b.topic.push_str(topic);
                (b.partition, b.tag) = (partition, tag);
                b
            }
            None => ChangeBatch::new(topic, partition, tag),
        }
    }

    /// Hands `batch` to the thread; returns at once.
    pub fn send(&self, batch: ChangeBatch) -> anyhow::Result<()> {
        let (lock, _) = &*self.pending;
        if batch.is_empty() {
            lock.lock().expect("pending lock").spare.push(batch);
            return Ok(());
        }
        lock.lock().expect("pending lock").batches += 1;
        let queue = self
            .queue
            .as_ref()
            .context("the changelog thread stopped")?;
        if queue.send(batch).is_err() {
            lock.lock().expect("pending lock").batches -= 1;
            anyhow::bail!("the changelog thread stopped");
        }
        Ok(())
    }

    /// Waits until every batch handed over is in librdkafka's hands; fails
    /// (once) if one could not be.
    pub fn wait_sent(&self) -> anyhow::Result<()> {
        let (lock, sent) = &*self.pending;
        let mut p = lock.lock().expect("pending lock");
        while p.batches > 0 {
            // A thread that ended (it panicked) sends nothing more: fail, not hang.
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                anyhow::bail!("the changelog thread stopped with records unsent");
            }
            p = sent
                .wait_timeout(p, std::time::Duration::from_secs(1))
                .expect("pending lock")
                .0;
        }
        match p.failure.take() {
            Some(e) => Err(anyhow::anyhow!(e)).context("sending changelog records"),
            None => Ok(()),
        }
    }
}

impl Drop for ChangeSender {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has sent what it holds.
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_gives_back_its_records_in_order_tombstones_included() {
        let mut b = ChangeBatch::new("t", 3, Tag { inc: 1, n: 2 });
        b.push(b"o|1", Some(b"{\"a\":1}"));
        b.push(b"p|9", None);
        b.push(b"", Some(b""));
        b.push(b"o|2", Some(b"x"));
        let got: Vec<(&[u8], Option<&[u8]>)> = b.records().collect();
        assert_eq!(
            got,
            [
                (&b"o|1"[..], Some(&b"{\"a\":1}"[..])),
                (&b"p|9"[..], None),
                (&b""[..], Some(&b""[..])),
                (&b"o|2"[..], Some(&b"x"[..])),
            ]
        );
    }
}
