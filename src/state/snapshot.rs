//! Copy-on-write snapshots of a shard's state, taken without stopping the shard.
//!
//! A checkpoint used to copy every changed hot record and flush the spill store while the
//! shard waited (9-12 ms per incremental checkpoint at 10k changed keys, ~100 ms for a full
//! one at 1M keys). Now the shard's part is a *flip* that costs microseconds: it swaps its
//! change lists and flips two record bits, and from then on the snapshot is "the state as of
//! the flip", built beside the shard's work:
//!
//! - **Hot records.** Each record in the snapshot (every record for a full one; those changed
//!   since the parent for an incremental one) is *pending* until it is copied, exactly once,
//!   into the snapshot buffer: either by the slice the shard copies each cycle
//!   (`checkpoint.copy_slice_records`), or, if the shard is about to change, move or remove it
//!   first, right then (copy-on-write per record, Flink's `CopyOnWriteStateMap` idea on a
//!   fixed-layout table). Pending is a bit test, not a list: for an incremental snapshot the
//!   DIRTY bit of the epoch before the flip (changes mark the other one, so the two alternate),
//!   for a full one the CAPTURED bit, whose "taken" value flips at every full flip.
//! - **Spill store.** The writer thread takes RocksDB's checkpoint (a memtable flush and hard
//!   links) whenever it gets to it. Until it has, every record the shard moves in or out of
//!   the store is journaled with what the store held for that key at the flip (its image, or
//!   nothing); restore applies the journal newest-first, so the first entry per key wins and
//!   the store is put back to the flip whatever the RocksDB checkpoint caught. The journal is
//!   bounded (`checkpoint.spill_journal_records`); when it is full the shard waits for the
//!   writer (counted, and the wait measured) rather than lose consistency.
//!
//! The copies are made by the shard thread itself, a slice at a time: a writer thread reading
//! the table while the shard changes it would need a lock or a locked instruction per event.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use super::record::{image_bytes, CAPTURED, DIRTY_EVEN, DIRTY_ODD};
use super::Record;

/// Journal entry kinds: the key was not in the spill store at the flip / it was, with the
/// image that follows.
pub const JOURNAL_ABSENT: u64 = 0;
pub const JOURNAL_IMAGE: u64 = 1;

/// Bytes of one journal entry: key, kind, then an image's worth (zeros for ABSENT), so every
/// entry has the same size and a journal's length is checked like the records'.
pub fn journal_entry_bytes(words: usize) -> usize {
    16 + image_bytes(words)
}

/// The running snapshot's view of the hot table (owned by `HotTable` while it runs).
#[derive(Debug)]
pub struct Capture {
    pub full: bool,
    /// Incremental: the DIRTY bit of the epoch before the flip (set = pending).
    pub pending_dirty: u64,
    /// Images copied so far, after the header room the checkpointer reserved.
    pub out: Vec<u8>,
    pub written: u64,
    /// Full: the next slot to look at. Incremental: the next index in `keys`.
    pub cursor: usize,
    /// Incremental: the keys changed before the flip (the change list taken at the flip).
    pub keys: Vec<u64>,
    /// An image did not fit the buffer (cannot happen while the buffer is sized for the
    /// table's capacity; the checkpoint then fails rather than reallocate on the shard).
    pub overflowed: bool,
}

impl Capture {
    /// Whether `head` is in this snapshot and not copied yet. `taken` is the CAPTURED value
    /// that means "copied by the newest full snapshot".
    #[inline]
    pub fn is_pending(&self, head: &Record, taken: u64) -> bool {
        if self.full {
            head.flags & CAPTURED != taken
        } else {
            head.flags & self.pending_dirty != 0
        }
    }

    /// Copy the record's image and mark it taken.
    #[inline]
    pub fn take(&mut self, head: &mut Record, words: &[u64], taken: u64) {
        let image = image_bytes(words.len());
        if self.out.len() + image > self.out.capacity() {
            self.overflowed = true;
        } else {
            self.out.extend_from_slice(&head.to_bytes());
            for w in words {
                self.out.extend_from_slice(&w.to_le_bytes());
            }
            self.written += 1;
        }
        head.flags &= !self.pending_dirty;
        if self.full {
            head.flags = (head.flags & !CAPTURED) | taken;
        }
    }
}

/// The other DIRTY bit.
pub fn other_dirty(bit: u64) -> u64 {
    if bit == DIRTY_EVEN {
        DIRTY_ODD
    } else {
        DIRTY_EVEN
    }
}

/// Set by the writer once the spill store's RocksDB checkpoint for the running snapshot is
/// taken (or has failed): the shard stops journaling then.
#[derive(Debug, Default)]
pub struct SpillMark {
    done: AtomicBool,
    failed: AtomicBool,
    /// Shards waiting (a full journal); read by tests that must see the wait happen.
    waiters: AtomicUsize,
    lock: Mutex<()>,
    ready: Condvar,
    /// Why the spill checkpoint failed (failure path only: written before `failed` is set).
    why: Mutex<String>,
}

impl SpillMark {
    /// A new snapshot's spill checkpoint is on its way (called at the flip, while the writer
    /// holds no work for this mark).
    pub fn reset(&self) {
        self.failed.store(false, Ordering::Relaxed);
        self.done.store(false, Ordering::Release);
    }

    pub fn set(&self, failed: bool) {
        self.failed.store(failed, Ordering::Relaxed);
        self.done.store(true, Ordering::Release);
        // Under the lock, so a waiter that saw `done` unset is already waiting.
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.ready.notify_all();
    }

    /// A plain load on x86: cheap enough to check on every spill move.
    #[inline]
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// `set(true)` with the reason, for the shard's (and an offline writer's) error.
    pub fn fail(&self, why: String) {
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = why;
        self.set(true);
    }

    /// The reason `fail` gave (empty if none was given).
    pub fn failure(&self) -> String {
        self.why.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn wait(&self) {
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.waiters.fetch_add(1, Ordering::AcqRel);
        while !self.is_done() {
            g = self.ready.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        self.waiters.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn waiters(&self) -> usize {
        self.waiters.load(Ordering::Acquire)
    }
}

/// The spill moves of a running snapshot (see the module doc), in a buffer allocated once.
#[derive(Debug, Default)]
pub struct SpillJournal {
    /// Journaling: between the flip and the writer's RocksDB checkpoint.
    on: bool,
    mark: Option<std::sync::Arc<SpillMark>>,
    pub bytes: Vec<u8>,
    pub entries: u64,
    entries_max: u64,
    /// Times the journal was full and the shard waited for the writer, and the longest wait.
    pub waits: u64,
    pub wait_ns_max: u64,
}

impl SpillJournal {
    pub fn start(&mut self, bytes: Vec<u8>, entries_max: u64, mark: std::sync::Arc<SpillMark>) {
        self.bytes = bytes;
        self.bytes.clear();
        self.entries = 0;
        self.entries_max = entries_max;
        self.mark = Some(mark);
        self.on = true;
    }

    /// No spill moves to journal from now on (the buffer stays).
    pub fn stop(&mut self) {
        self.on = false;
    }

    /// The journal's buffer and entry count, handed to the writer at the snapshot's end.
    pub fn finish(&mut self) -> (Vec<u8>, u64) {
        self.on = false;
        self.mark = None;
        (std::mem::take(&mut self.bytes), self.entries)
    }

    /// Whether a spill move must be journaled now; waits for the writer if the journal is full.
    fn room(&mut self) -> bool {
        if !self.on {
            return false;
        }
        let Some(mark) = &self.mark else {
            return false;
        };
        if mark.is_done() {
            self.on = false;
            return false;
        }
        if self.entries < self.entries_max {
            return true;
        }
        // Full: waiting is the only way that keeps the snapshot consistent. Rare (a spill
        // storm during one RocksDB checkpoint), so the clock read and the wait are allowed.
        let started = std::time::Instant::now();
        mark.wait();
        self.waits += 1;
        self.wait_ns_max = self.wait_ns_max.max(started.elapsed().as_nanos() as u64);
        self.on = false;
        false
    }

    /// `key` is about to enter the spill store (it was not there at the flip, unless an
    /// earlier entry says otherwise: the first entry per key wins).
    pub fn absent(&mut self, key: u64, image: usize) {
        if self.room() {
            self.bytes.extend_from_slice(&key.to_le_bytes());
            self.bytes.extend_from_slice(&JOURNAL_ABSENT.to_le_bytes());
            self.bytes.resize(self.bytes.len() + image, 0);
            self.entries += 1;
        }
    }

    /// `key` is about to leave the spill store, which holds this image of it.
    pub fn image(&mut self, rec: &Record, words: &[u64]) {
        if self.room() {
            self.bytes.extend_from_slice(&rec.key.to_le_bytes());
            self.bytes.extend_from_slice(&JOURNAL_IMAGE.to_le_bytes());
            self.bytes.extend_from_slice(&rec.to_bytes());
            for w in words {
                self.bytes.extend_from_slice(&w.to_le_bytes());
            }
            self.entries += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_journal_waits_for_the_writer_then_stops_journaling() {
        let mark = std::sync::Arc::new(SpillMark::default());
        let mut j = SpillJournal::default();
        j.start(Vec::with_capacity(1024), 2, mark.clone());
        j.absent(1, 8);
        j.absent(2, 8);
        assert_eq!(j.entries, 2);
        // The writer finishes only once the shard is waiting: set before that, the journal
        // would see the checkpoint taken and never wait (a race this test lost once in a full
        // run).
        let writer = {
            let mark = mark.clone();
            std::thread::spawn(move || {
                // Bounded, so a journal that never waits fails the assertion below, not hangs.
                let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while mark.waiters() == 0 && std::time::Instant::now() < give_up {
                    std::thread::yield_now();
                }
                mark.set(false)
            })
        };
        // The third entry does not fit: the shard waits until the writer's checkpoint is
        // taken, after which nothing needs journaling.
        j.absent(3, 8);
        writer.join().unwrap();
        assert_eq!((j.entries, j.waits), (2, 1));
        j.absent(4, 8);
        assert_eq!(j.entries, 2);
        let (bytes, n) = j.finish();
        assert_eq!((bytes.len(), n), (2 * (16 + 8), 2));
    }
}
