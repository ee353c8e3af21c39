//! Expiry of spilled keys that get no event. With `state.ttl_ms` a hot key idle past the TTL is
//! swept from the hot table a few slots a cycle, and any key starts over on its next event; but
//! a spilled key whose events stopped stayed in the spill store for good, so a store fed by an
//! unbounded key space (devices, sessions, transaction ids) only grew. A scanner off the shard
//! thread (`shard::spill_sweeper`) walks the store at a paced rate and names the keys whose
//! stored record is idle past the TTL; the shard deletes them here, a bounded batch a cycle.
//!
//! The scanner's view may be stale by the time the shard gets to a key (the key may have come
//! back hot, been spilled again with a newer record, or have events waiting for a cold read),
//! so the shard decides alone, in its own cycle, on the store only it writes: a key is
//! deleted only if it is not hot, has no event waiting or read out (`busy`), and the record the
//! store holds *now* (one batched read of the named keys) is idle past the TTL at the shard's
//! reference time — the rule `Record::idle_past` that an event on the key would apply. So the
//! deletion changes nothing an event could see: the key's next event starts it over either way.
//!
//! Each deletion is a state change like the hot sweep's: counted in `expired`, listed gone for
//! the next incremental checkpoint (a changelog sends its tombstone), journaled first when a
//! snapshot's spill checkpoint is still to be taken, and written in one batch per cycle.

use super::cold::ColdBatch;
use super::{spill_image, KeyedState, SpillError, StateError};

/// The shard's scratch for one cycle's deletions, sized once (`sweep_spilled_keys`).
#[derive(Debug, Default)]
pub(crate) struct SpillSweep {
    max: usize,
    keys: Vec<u64>,
    words: Vec<u64>,
    batch: ColdBatch,
    /// (key, source) of each deletion, for the bookkeeping once the batch has landed.
    gone: Vec<(u64, u64)>,
}

impl KeyedState {
    /// Size the deletions of spilled keys for `max` named keys a cycle (0: off).
    pub fn sweep_spilled_keys(&mut self, max: usize) {
        self.sweep = SpillSweep {
            max,
            keys: Vec::with_capacity(max),
            words: vec![0; self.plan.words()],
            // A delete carries no image.
            batch: ColdBatch::with_capacity(max, 0),
            gone: Vec::with_capacity(max),
        };
    }

    /// Keys a cycle's `expire_spilled` takes at most (0: off).
    pub fn spilled_sweep_max(&self) -> usize {
        self.sweep.max
    }

    /// Delete from the spill store each of `keys` (named by the scanner; at most
    /// `spilled_sweep_max` are looked at) that is not hot, not in `busy` (ascending: keys with
    /// events waiting for a cold read or in a read out), and whose stored record is idle past
    /// the TTL at `now_ns`. Returns how many were deleted. On an error (the read's or the
    /// write's) nothing was deleted.
    pub fn expire_spilled(
        &mut self,
        keys: &[u64],
        busy: &[u64],
        now_ns: u64,
    ) -> Result<u64, StateError> {
        let ttl = self.ttl_ns;
        let Some(spill) = &mut self.spill else {
            return Ok(0);
        };
        if ttl == 0 {
            return Ok(0);
        }
        let SpillSweep {
            max,
            keys: asked,
            words,
            batch,
            gone,
        } = &mut self.sweep;
        asked.clear();
        batch.clear();
        gone.clear();
        for &k in keys.iter().take(*max) {
            if self.hot.find(k).is_none() && busy.binary_search(&k).is_err() {
                asked.push(k);
            }
        }
        if asked.is_empty() {
            return Ok(0);
        }
        // The store's read wants ascending keys (and a key once).
        asked.sort_unstable();
        asked.dedup();
        let journal = &mut self.journal;
        spill.peek_many(asked, &mut |i, image| {
            let (Some(b), Some(&key)) = (image, asked.get(i)) else {
                return Ok(());
            };
            let rec = spill_image::unpack(key, b, words).ok_or(SpillError::Corrupt(key))?;
            if rec.idle_past(now_ns, ttl) {
                // What the store holds for the key at a running snapshot's flip, unless an
                // earlier entry says otherwise (the first entry per key wins).
                journal.image(&rec, words);
                batch.delete(key);
                gone.push((key, rec.source));
            }
            Ok(())
        })?;
        if gone.is_empty() {
            return Ok(0);
        }
        let n = gone.len() as u64;
        spill.write(batch, 0, n)?;
        for &(key, source) in gone.iter() {
            self.changes.gone(key, source);
        }
        self.stats.expired += n;
        self.stats.spill_expired += n;
        Ok(n)
    }
}

#[cfg(test)]
#[path = "spill_sweep_tests.rs"]
mod tests;
