//! Cold reads in batches (larger-than-memory state). An event whose key is not hot does not
//! read the spill store on its own: the shard core makes it wait (`shard::cold_wait`) and
//! serves the cycle's other events, then hands the waiting keys here at once, in three steps:
//! `prepare_cold` names the keys that are not hot in a `ColdJob`; `ColdJob::read` fetches
//! their records with one batched read (RocksDB's MultiGet), on the shard thread or on a
//! reader thread (`shard::cold_reader`); `finish_cold`, on the shard, makes room, brings them
//! into the hot table and writes the victims' puts and the returning keys' deletes in one
//! batch. The waiting events then find their keys hot.
//!
//! Nothing is half-moved on a failure: the read moves nothing; the hot table is changed
//! before the write, and if the write fails every change is undone in reverse (victims back,
//! returning records out), so each record is still in exactly one place. The checkpoint
//! bookkeeping (change lists, counters) is done only once the write has landed; the spill
//! journal is written before it, as for a single move (an entry says what the store held at
//! the flip, which stays true whether or not the write lands).

use std::sync::Arc;

use super::cold::{ColdBatch, ColdStore, FoundFn};
use super::record::image_bytes;
use super::spill_image;
use super::{KeyedState, Record, SpillError, StateError};

/// One step of a batch, for the undo and the bookkeeping.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// `victims[i]` left the hot table for the store.
    Evicted(usize),
    /// `keys[i]` came into the hot table: from the store when `found[i]` is set, else fresh.
    Returned(usize),
}

/// One batched read: the keys asked for and what the store held for them. The read itself
/// (`ColdJob::read`) touches only the store, not the hot table, so it can run on a reader
/// thread while the shard goes on (`shard::cold_reader`); preparing it and moving its
/// records in (`KeyedState::prepare_cold`, `finish_cold`) are the shard's. Sized once for
/// `max` keys: nothing allocated per batch here.
#[derive(Debug, Default)]
pub struct ColdJob {
    max: usize,
    words: usize,
    keys: Vec<u64>,
    /// First event time of each key (a fresh record's times).
    ts: Vec<u64>,
    found: Vec<Option<Record>>,
    found_words: Vec<u64>,
    /// Set by the read when it failed (nothing has moved then).
    failed: Option<SpillError>,
}

impl ColdJob {
    pub fn new(max: usize, words: usize) -> Self {
        Self {
            max,
            words,
            keys: Vec::with_capacity(max),
            ts: Vec::with_capacity(max),
            found: Vec::with_capacity(max),
            found_words: vec![0; max * words],
            failed: None,
        }
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.ts.clear();
        self.found.clear();
        self.failed = None;
    }

    /// Read the keys' records from `store`: the part of a batch that may run off the shard
    /// thread (the store is shared and thread-safe; the shard writes none of these keys while
    /// the read is out, see `shard::cold_reader`).
    ///
    /// A panic inside the store (a bug, in RocksDB's binding or ours) fails this batch like
    /// a read error instead of unwinding: on a reader thread an unwound read would never come
    /// back, and its shard would wait for it forever. The batch's events are then refused and
    /// counted (`state_error`) as for any failed read, and the panic is in the log (the hook).
    pub fn read(&mut self, store: &dyn ColdStore) {
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.fill(|keys, found| store.peek_many(keys, found));
        }));
        if read.is_err() {
            tracing::error!(
                keys = self.keys.len(),
                "a batched cold read panicked: its events are refused (counted as state_error)"
            );
            self.failed = Some(SpillError::Store("a batched cold read panicked"));
        }
    }

    fn fill(&mut self, peek: impl FnOnce(&[u64], &mut FoundFn<'_>) -> Result<(), SpillError>) {
        let words = self.words;
        let ColdJob {
            keys,
            found,
            found_words,
            failed,
            ..
        } = self;
        found.clear();
        let read = peek(keys, &mut |i, image| {
            let rec = match image {
                None => None,
                Some(b) => Some(
                    spill_image::unpack(keys[i], b, &mut found_words[i * words..(i + 1) * words])
                        .ok_or(SpillError::Corrupt(keys[i]))?,
                ),
            };
            found.push(rec);
            Ok(())
        });
        if let Err(e) = read {
            *failed = Some(e);
        } else if found.len() != keys.len() {
            *failed = Some(SpillError::Store(
                "a batched read answered the wrong number of keys",
            ));
        }
    }
}

/// The shard's side of the batched cold reads: the moves' scratch (nothing allocated per
/// cycle here; the RocksDB calls allocate a little per batch, see `spill`). The jobs are the
/// reader's (`shard::cold_reader`).
#[derive(Debug, Default)]
pub(crate) struct ColdReads {
    max: usize,
    words: usize,
    victims: Vec<Record>,
    victim_words: Vec<u64>,
    steps: Vec<Step>,
    batch: ColdBatch,
}

impl ColdReads {
    pub(crate) fn new(max: usize, words: usize) -> Self {
        Self {
            max,
            words,
            victims: Vec::with_capacity(max),
            victim_words: vec![0; max * words],
            steps: Vec::with_capacity(2 * max),
            batch: ColdBatch::with_capacity(2 * max, spill_image::packed_max(words)),
        }
    }

    fn clear(&mut self) {
        self.victims.clear();
        self.steps.clear();
        self.batch.clear();
    }
}

impl KeyedState {
    /// Size the batched cold reads for `max` keys a batch (0: misses read one at a time, in
    /// `apply`).
    pub fn batch_cold_reads(&mut self, max: usize) {
        self.cold = ColdReads::new(max, self.plan.words());
    }

    /// Keys a batched cold read takes (0: batching off).
    pub fn cold_batch_max(&self) -> usize {
        self.cold.max
    }

    /// Whether an event on `key` should wait for the cycle's batched cold read: batching is on,
    /// a spill store is open and the key is not hot. Counts the miss.
    pub fn park_miss(&mut self, key: u64) -> bool {
        if self.cold.max == 0 || self.spill.is_none() || self.hot.find(key).is_some() {
            return false;
        }
        self.stats.hot_misses += 1;
        true
    }

    /// A job sized for this state's batches, for a reader that holds its own.
    pub fn cold_job(&self) -> ColdJob {
        ColdJob::new(self.cold.max, self.cold.words)
    }

    /// The spill store, for a reader thread (None: no `state.dir`).
    pub fn cold_store(&self) -> Option<Arc<dyn ColdStore>> {
        self.spill.as_ref().map(|s| s.shared())
    }

    /// Fill `job` with the keys of `keys` (ascending, distinct, at most `cold_batch_max`;
    /// each with its first event's time, a fresh record's times) that are not hot and not in
    /// `skip` (ascending). Until the job is finished, none of them may become hot or be
    /// written by anything but `finish_cold`: the owner keeps every event on them waiting.
    pub fn prepare_cold(&mut self, keys: &[(u64, u64)], skip: &[u64], job: &mut ColdJob) {
        crate::invariant!(keys.len() <= self.cold.max, "cold batch past its bound");
        crate::invariant!(keys.len() <= job.max, "cold batch past its job's bound");
        crate::invariant!(keys.windows(2).all(|w| w[0].0 < w[1].0));
        job.clear();
        if self.spill.is_none() {
            return;
        }
        for &(k, ts) in keys {
            if self.hot.find(k).is_none() && skip.binary_search(&k).is_err() {
                job.keys.push(k);
                job.ts.push(ts);
            }
        }
    }

    /// Make `job`'s read on this thread (an empty store answers without a lookup).
    pub fn read_cold_here(&self, job: &mut ColdJob) {
        match &self.spill {
            Some(spill) => job.fill(|keys, found| spill.peek_many(keys, found)),
            None => job.found.clear(),
        }
    }

    /// Move a read job's records into the hot table (victims out, in one write). On an error
    /// (the read's or the write's) nothing has moved.
    pub fn finish_cold(&mut self, job: &mut ColdJob) -> Result<(), StateError> {
        let Some(spill) = &mut self.spill else {
            return Ok(());
        };
        if let Some(e) = job.failed.take() {
            return Err(e.into());
        }
        crate::invariant_eq!(job.found.len(), job.keys.len());
        let c = &mut self.cold;
        c.clear();
        let words = c.words;

        // Move in the hot table and build the write; the journal first, as for one move.
        let (mut puts, mut deletes) = (0u64, 0u64);
        for i in 0..job.keys.len() {
            // Made hot since the job was prepared: only by this job's own moves (a key is
            // once in a batch), so never; the hot copy would be the newer one.
            let hot = self.hot.find(job.keys[i]).is_some();
            crate::invariant!(!hot, "a key read cold became hot while its read was out");
            if hot {
                continue;
            }
            if self.hot.is_full() {
                if let Some(slot) = self.hot.evict_candidate() {
                    let j = c.victims.len();
                    let w = &mut c.victim_words[j * words..(j + 1) * words];
                    let rec = self.hot.remove_slot(slot, w);
                    self.journal.absent(rec.key, image_bytes(words));
                    c.batch.put(rec.key, |out| spill_image::pack(&rec, w, out));
                    c.victims.push(rec);
                    c.steps.push(Step::Evicted(j));
                    puts += 1;
                }
            }
            let w = &job.found_words[i * words..(i + 1) * words];
            let inserted = match job.found[i] {
                Some(rec) => {
                    self.journal.image(&rec, w);
                    c.batch.delete(rec.key);
                    deletes += 1;
                    self.hot.insert(rec, Some(w))
                }
                None => self.hot.insert(Record::fresh(job.keys[i], job.ts[i]), None),
            };
            // Room was made above unless hot_capacity is 0, which config validation refuses;
            // a key left out is read again by `apply` on its own.
            if inserted.is_some() {
                c.steps.push(Step::Returned(i));
            }
        }

        if let Err(e) = spill.write(&c.batch, puts, deletes) {
            // Undo in reverse: the hot table as it was, the records still in the store.
            for step in c.steps.iter().rev() {
                match *step {
                    Step::Returned(i) => {
                        if let Some(slot) = self.hot.find(job.keys[i]) {
                            self.hot.remove_slot(slot, &mut self.victim_words);
                        }
                    }
                    Step::Evicted(j) => {
                        let w = &c.victim_words[j * words..(j + 1) * words];
                        let back = self.hot.reinsert(c.victims[j], w);
                        crate::invariant!(back.is_some(), "an undone victim found no room");
                    }
                }
            }
            return Err(e.into());
        }

        let dirty_bit = self.hot.dirty_bit();
        for step in &c.steps {
            match *step {
                Step::Evicted(j) => {
                    self.stats.spills += 1;
                    self.changes.gone(c.victims[j].key, c.victims[j].source);
                }
                Step::Returned(i) => {
                    if job.found[i].is_none() {
                        continue;
                    }
                    self.stats.reloads += 1;
                    // It left the spill store: the next checkpoint must have it among the hot
                    // records even if its events turn out to be replays (as in `bring_in`).
                    // Gone again already when a later key of this batch evicted it.
                    if let Some(slot) = self.hot.find(job.keys[i]) {
                        self.changes.dirty(self.hot.slot_mut(slot).0, dirty_bit);
                    }
                }
            }
        }
        Ok(())
    }
}
