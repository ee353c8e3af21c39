//! Cold reads in batches (larger-than-memory state). An event whose key is not hot does not
//! read the spill store on its own: the shard core parks it (`shard::parked`) and serves the
//! cycle's other events, then hands the parked keys here at once. `KeyedState::read_cold`
//! fetches their records with one batched read (RocksDB's MultiGet), makes room for them and
//! brings them into the hot table, and writes the victims' puts and the returning keys'
//! deletes in one batch. The parked events then find their keys hot.
//!
//! Nothing is half-moved on a failure: the read moves nothing; the hot table is changed
//! before the write, and if the write fails every change is undone in reverse (victims back,
//! returning records out), so each record is still in exactly one place. The checkpoint
//! bookkeeping (change lists, counters) is done only once the write has landed; the spill
//! journal is written before it, as for a single move (an entry says what the store held at
//! the flip, which stays true whether or not the write lands).

use super::cold::ColdBatch;
use super::record::image_bytes;
use super::spill_image;
use super::{KeyedState, Record, StateError};

/// One step of a batch, for the undo and the bookkeeping.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// `victims[i]` left the hot table for the store.
    Evicted(usize),
    /// `keys[i]` came into the hot table: from the store when `found[i]` is set, else fresh.
    Returned(usize),
}

/// Scratch of `read_cold`, sized once for `max` keys a batch (nothing allocated per cycle
/// here; the RocksDB calls allocate a little per batch, see `spill`).
#[derive(Debug, Default)]
pub(crate) struct ColdReads {
    max: usize,
    words: usize,
    keys: Vec<u64>,
    /// First event time of each key (a fresh record's times).
    ts: Vec<u64>,
    found: Vec<Option<Record>>,
    found_words: Vec<u64>,
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
            keys: Vec::with_capacity(max),
            ts: Vec::with_capacity(max),
            found: Vec::with_capacity(max),
            found_words: vec![0; max * words],
            victims: Vec::with_capacity(max),
            victim_words: vec![0; max * words],
            steps: Vec::with_capacity(2 * max),
            batch: ColdBatch::with_capacity(2 * max, spill_image::packed_max(words)),
        }
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.ts.clear();
        self.found.clear();
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

    /// Keys a batch of `read_cold` takes (0: batching off).
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

    /// Bring `keys` (ascending, distinct, at most `cold_batch_max`; each with its first
    /// event's time) into the hot table: one batched read of the spill store, one write of
    /// the moves. A key not stored starts fresh. Keys already hot are skipped. On an error
    /// nothing has moved.
    pub fn read_cold(&mut self, keys: &[(u64, u64)]) -> Result<(), StateError> {
        let Some(spill) = &mut self.spill else {
            return Ok(());
        };
        crate::invariant!(keys.len() <= self.cold.max, "cold batch past its bound");
        crate::invariant!(keys.windows(2).all(|w| w[0].0 < w[1].0));
        let c = &mut self.cold;
        c.clear();
        for &(k, ts) in keys {
            if self.hot.find(k).is_none() {
                c.keys.push(k);
                c.ts.push(ts);
            }
        }
        let words = c.words;
        {
            let ColdReads {
                keys,
                found,
                found_words,
                ..
            } = c;
            spill.peek_many(keys, &mut |i, image| {
                let rec = match image {
                    None => None,
                    Some(b) => Some(
                        spill_image::unpack(
                            keys[i],
                            b,
                            &mut found_words[i * words..(i + 1) * words],
                        )
                        .ok_or(super::SpillError::Corrupt(keys[i]))?,
                    ),
                };
                found.push(rec);
                Ok(())
            })?;
        }
        crate::invariant_eq!(c.found.len(), c.keys.len());

        // Move in the hot table and build the write; the journal first, as for one move.
        let (mut puts, mut deletes) = (0u64, 0u64);
        for i in 0..c.keys.len() {
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
            let w = &c.found_words[i * words..(i + 1) * words];
            let inserted = match c.found[i] {
                Some(rec) => {
                    self.journal.image(&rec, w);
                    c.batch.delete(rec.key);
                    deletes += 1;
                    self.hot.insert(rec, Some(w))
                }
                None => self.hot.insert(Record::fresh(c.keys[i], c.ts[i]), None),
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
                        if let Some(slot) = self.hot.find(c.keys[i]) {
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
                    if c.found[i].is_none() {
                        continue;
                    }
                    self.stats.reloads += 1;
                    // It left the spill store: the next checkpoint must have it among the hot
                    // records even if its events turn out to be replays (as in `bring_in`).
                    // Gone again already when a later key of this batch evicted it.
                    if let Some(slot) = self.hot.find(c.keys[i]) {
                        self.changes.dirty(self.hot.slot_mut(slot).0, dirty_bit);
                    }
                }
            }
        }
        Ok(())
    }
}
