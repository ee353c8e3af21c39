//! Per-shard keyed state. `KeyedState::apply(update)` finds or creates the key's record and
//! applies the event in place, synchronously: the hot table first; on a miss, the spill store
//! (if `state.dir` is set); when the hot table is full, the CLOCK victim moves to the spill
//! store to make room, so the shard serves more keys than fit in memory. Keys idle longer than
//! `state.ttl_ms` start over (and are swept from the hot table a few slots per cycle); with
//! `state.dedup`, an event whose seq the key has already applied is refused as a replay.

pub mod checkpoint;
pub mod cold;
mod cold_memory;
mod cold_reads;
mod hot_table;
mod memory;
pub mod partition;
pub(crate) mod record;
pub mod resident;
pub mod snapshot;
mod spill;
pub(crate) mod spill_image;
mod spill_sweep;

pub use cold_reads::ColdJob;
pub use hot_table::HotTable;
pub use record::{image_bytes, Record, RECORD_BYTES};
pub use snapshot::SpillMark;
pub use spill::{Spill, SpillError};

use std::sync::Arc;

use snapshot::SpillJournal;

use crate::features::{FeaturePlan, Obs};
use crate::wire::EventKind;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("hot state is full (state.hot_capacity = {capacity} keys) and spill is off (state.dir unset); new keys are rejected")]
    Full { capacity: usize },
    #[error(transparent)]
    Spill(#[from] SpillError),
}

/// What the state layer did, for the counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateStats {
    pub hot_hits: u64,
    pub hot_misses: u64,
    pub spills: u64,
    pub reloads: u64,
    /// Keys found idle past the TTL (restarted on their next event, or swept).
    pub expired: u64,
    /// Of those, spilled keys the spill sweep deleted (`spill_sweep`).
    pub spill_expired: u64,
    /// Events refused as replays (`state.dedup`).
    pub duplicates: u64,
    /// Events refused because their key's state belongs to another source.
    pub other_source: u64,
    /// Observations applied to some key (restored from a checkpoint at start).
    pub observations_applied: u64,
    /// Feedback events applied.
    pub feedbacks_applied: u64,
    /// Records put in by `import_partition` (a partition moving in: its state changed
    /// without an event, and the next checkpoint must still be taken).
    pub imported: u64,
}

impl StateStats {
    /// Rises with every change to the state (for skipping checkpoints of unchanged state).
    pub fn changes(&self) -> u64 {
        self.observations_applied + self.feedbacks_applied + self.expired + self.imported
    }
}

/// What one event needs to change a record.
#[derive(Debug, Clone, Copy)]
pub struct Update<'a> {
    pub key: u64,
    pub seq: u64,
    /// The event's time as the state sees it (event or processing time, after the lateness
    /// policy).
    pub ts_ns: u64,
    pub kind: EventKind,
    pub amount: f32,
    pub label: f32,
    pub features: &'a [f32],
    /// The key's source (`Record::source`): 0 for UDP, else the Kafka partition's tag.
    pub source: u64,
}

impl Update<'_> {
    pub fn obs(&self) -> Obs<'_> {
        Obs {
            ts_ns: self.ts_ns,
            amount: self.amount,
            features: self.features,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; the record is in this hot slot.
    Applied(usize),
    /// A replay of a seq the key already applied; nothing changed.
    Duplicate,
    /// The key's state belongs to another source (another Kafka partition, or UDP); nothing
    /// changed. Holds the record's source.
    OtherSource(u64),
}

/// A key's state as the admin sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState {
    pub record: Record,
    pub words: Vec<u64>,
    /// "hot" or "spilled".
    pub location: &'static str,
}

pub struct KeyedState {
    hot: HotTable,
    spill: Option<Spill>,
    plan: FeaturePlan,
    ttl_ns: u64,
    dedup: bool,
    /// Words of a record on its way to or from the spill store (one record's worth each).
    victim_words: Vec<u64>,
    cold_words: Vec<u64>,
    /// What changed since the last checkpoint's flip (see `Changes`).
    changes: Changes,
    /// A running snapshot's spill moves (see `snapshot`).
    journal: SpillJournal,
    /// Batched cold reads (see `cold_reads`); off until `batch_cold_reads`.
    cold: cold_reads::ColdReads,
    /// Deletions of spilled keys idle past the TTL (see `spill_sweep`); off until
    /// `sweep_spilled_keys`.
    sweep: spill_sweep::SpillSweep,

    pub stats: StateStats,
}

/// Entries of each change list: each hot key is listed dirty once until a checkpoint takes it,
/// but a key that leaves and comes back between two checkpoints is listed again: room for
/// that churn.
pub(crate) fn changes_bound(hot_capacity: usize) -> usize {
    2 * hot_capacity + 1024
}

/// Bytes of the change lists and their spares (`KeyedState::track_changes`): dirty keys, and
/// gone (key, source) pairs.
pub(crate) fn change_lists_bytes(hot_capacity: usize) -> usize {
    2 * changes_bound(hot_capacity) * (8 + 16)
}

/// Change tracking for incremental checkpoints: keys whose hot record changed (each once,
/// deduplicated by the record's DIRTY bit) and keys that left the hot table (spilled or
/// expired), with the source they belonged to (a changelog's tombstone needs its partition). Both lists are allocated once (2 x `state.hot_capacity` + 1024 entries), with a
/// spare of each that takes their place at a snapshot's flip while the snapshot reads them;
/// past that bound the next checkpoint is a full one instead.
#[derive(Debug, Default)]
pub struct Changes {
    pub on: bool,
    pub dirty: Vec<u64>,
    /// (key, source).
    pub gone: Vec<(u64, u64)>,
    pub overflowed: bool,
    spare_dirty: Vec<u64>,
    spare_gone: Vec<(u64, u64)>,
    /// A full snapshot's change lists, set aside at its flip (empty when they were not
    /// complete): written after its records for the changelog, which then sends only them.
    full_dirty: Vec<u64>,
}

impl Changes {
    fn note<T>(list: &mut Vec<T>, overflowed: &mut bool, item: T) {
        if list.len() < list.capacity() {
            list.push(item);
        } else {
            *overflowed = true;
        }
    }

    fn gone(&mut self, key: u64, source: u64) {
        if self.on {
            Self::note(&mut self.gone, &mut self.overflowed, (key, source));
        }
    }

    /// `bit`: the hot table's current DIRTY bit.
    fn dirty(&mut self, head: &mut Record, bit: u64) {
        if self.on && head.flags & bit == 0 {
            head.flags |= bit;
            Self::note(&mut self.dirty, &mut self.overflowed, head.key);
        }
    }
}

/// What a finished snapshot holds, for the checkpointer to write.
#[derive(Debug)]
pub struct Taken {
    /// The buffer given at the flip: its header room, then `records` images, then `gone`
    /// (key, source) pairs, then (a full snapshot's) `changed` keys.
    pub out: Vec<u8>,
    pub records: u64,
    pub gone: u64,
    /// A full snapshot whose change lists were complete: the keys changed since the previous
    /// flip (with `gone`, its change set). 0 for an incremental one (its records are that).
    pub changed: u64,

    /// Spill moves journaled (see `snapshot`), `journal_entries` entries.
    pub journal: Vec<u8>,
    pub journal_entries: u64,
    /// An image did not fit `out`: the snapshot is incomplete and must not be committed.
    pub overflowed: bool,
}

impl KeyedState {
    /// `ttl_ns` 0 = keys never expire.
    pub fn new(
        hot: HotTable,
        spill: Option<Spill>,
        plan: FeaturePlan,
        ttl_ns: u64,
        dedup: bool,
    ) -> Self {
        crate::invariant_eq!(hot.stride(), plan.words());
        let words = plan.words();
        Self {
            hot,
            spill,
            plan,
            ttl_ns,
            dedup,
            victim_words: vec![0; words],
            cold_words: vec![0; words],
            changes: Changes::default(),
            journal: SpillJournal::default(),
            cold: cold_reads::ColdReads::default(),
            sweep: spill_sweep::SpillSweep::default(),
            stats: StateStats::default(),
        }
    }

    /// Track changes for incremental checkpoints (allocates the bounded lists and spares).
    pub fn track_changes(&mut self) {
        let cap = changes_bound(self.hot.capacity());
        self.changes = Changes {
            on: true,
            dirty: Vec::with_capacity(cap),
            gone: Vec::with_capacity(cap),
            overflowed: false,
            spare_dirty: Vec::with_capacity(cap),
            spare_gone: Vec::with_capacity(cap),
            full_dirty: Vec::new(),
        };
    }

    /// Whether the next snapshot can be incremental (changes tracked, none lost since the
    /// last flip).
    pub fn changes_complete(&self) -> bool {
        self.changes.on && !self.changes.overflowed
    }

    pub fn snapshot_running(&self) -> bool {
        self.hot.capturing()
    }

    /// A snapshot's flip (see `snapshot`): O(1), no record is copied here. `out` is the
    /// snapshot buffer with the header room already in it; `journal` the spill journal's
    /// buffer (`entries_max` entries) and `mark` what the writer sets once it has the spill
    /// store's checkpoint. Without a spill store nothing is journaled.
    pub fn begin_snapshot(
        &mut self,
        full: bool,
        out: Vec<u8>,
        journal: Vec<u8>,
        entries_max: u64,
        mark: Arc<SpillMark>,
    ) {
        let c = &mut self.changes;
        let complete = c.on && !c.overflowed;
        let keys = std::mem::replace(&mut c.dirty, std::mem::take(&mut c.spare_dirty));
        let mut gone = std::mem::replace(&mut c.gone, std::mem::take(&mut c.spare_gone));
        c.overflowed = false;
        let keys = if full {
            // A full snapshot scans slots, not keys; its change lists are kept aside for the
            // changelog when they hold every change since the previous flip.
            let mut keys = keys;
            if !complete {
                keys.clear();
                gone.clear();
            }
            c.full_dirty = keys;
            Vec::new()
        } else {
            keys
        };
        // The spare gone list holds the flip's gone keys until the snapshot ends.
        c.spare_gone = gone;
        self.hot.begin_capture(full, out, keys);
        self.journal.start(journal, entries_max, mark);
        if self.spill.is_none() {
            // Nothing to journal; the buffer stays for `end_snapshot` to hand back.
            self.journal.stop();
        }
    }

    /// Copy up to `budget` more records into the running snapshot; true when it has them all.
    pub fn snapshot_step(&mut self, budget: usize) -> bool {
        self.hot.capture_step(budget)
    }

    /// End the snapshot (after `snapshot_step` returned true): its buffer with the gone keys
    /// appended (an incremental one's), and the journal. None if none was running.
    pub fn end_snapshot(&mut self) -> Option<Taken> {
        let mut c = self.hot.end_capture()?;
        let (journal, journal_entries) = self.journal.finish();
        let changes = &mut self.changes;
        let mut gone = std::mem::take(&mut changes.spare_gone);
        let mut changed = std::mem::take(&mut changes.full_dirty);
        let mut overflowed = c.overflowed;
        if c.out.len() + gone.len() * 16 + changed.len() * 8 > c.out.capacity() {
            overflowed = true;
        } else {
            for (key, source) in &gone {
                c.out.extend_from_slice(&key.to_le_bytes());
                c.out.extend_from_slice(&source.to_le_bytes());
            }
            for key in &changed {
                c.out.extend_from_slice(&key.to_le_bytes());
            }
        }
        let (gone_n, changed_n) = (gone.len() as u64, changed.len() as u64);
        gone.clear();
        changes.spare_gone = gone;
        // The dirty list's spare: the incremental capture's key list, or the full one's.
        let mut keys = std::mem::take(&mut c.keys);
        if keys.capacity() < changed.capacity() {
            std::mem::swap(&mut keys, &mut changed);
        }
        keys.clear();
        changes.spare_dirty = keys;
        Some(Taken {
            out: c.out,
            records: c.written,
            gone: gone_n,
            changed: changed_n,
            journal,
            journal_entries,
            overflowed,
        })
    }

    /// Journal waits so far (the journal was full) and the longest wait.
    pub fn journal_waits(&self) -> (u64, u64) {
        (self.journal.waits, self.journal.wait_ns_max)
    }

    /// A shard's state as `config` describes it, on `spill` (None: no spill store).
    pub fn from_config(
        config: &crate::config::Config,
        spill: Option<Spill>,
    ) -> Result<Self, crate::config::ConfigError> {
        Ok(Self::with_plan(config, config.feature_plan()?, spill))
    }

    /// The same, with the feature plan already compiled from `config`.
    pub fn with_plan(
        config: &crate::config::Config,
        plan: FeaturePlan,
        spill: Option<Spill>,
    ) -> Self {
        let mut state = Self::new(
            HotTable::new(config.state.hot_capacity, plan.words()),
            spill,
            plan,
            config.state.ttl_ms.saturating_mul(1_000_000),
            config.state.dedup,
        );
        if state.spill.is_some() {
            state.batch_cold_reads(config.state.cold_wait_max);
            if config.state.ttl_ms > 0 && config.state.spill_sweep_keys_per_s > 0 {
                state.sweep_spilled_keys(config.state.spill_sweep_keys_per_cycle);
            }
        }
        state
    }

    pub fn plan(&self) -> &FeaturePlan {
        &self.plan
    }

    pub fn hot_len(&self) -> usize {
        self.hot.len()
    }

    pub fn spilled_len(&self) -> u64 {
        self.spill.as_ref().map_or(0, Spill::len)
    }

    pub fn memory_bytes(&self) -> usize {
        self.hot.memory_bytes()
    }

    pub fn hot(&self) -> &HotTable {
        &self.hot
    }

    pub fn spill(&self) -> Option<&Spill> {
        self.spill.as_ref()
    }

    /// The head and words in a hot slot returned by `apply`.
    #[inline]
    pub fn slot(&self, slot: usize) -> (&Record, &[u64]) {
        self.hot.slot(slot)
    }

    /// A key's state wherever it is (hot or spilled), without moving it.
    pub fn locate(&self, key: u64) -> Result<Option<KeyState>, StateError> {
        if let Some((r, w)) = self.hot.get(key) {
            return Ok(Some(KeyState {
                record: *r,
                words: w.to_vec(),
                location: "hot",
            }));
        }
        let Some(s) = &self.spill else {
            return Ok(None);
        };
        let mut words = vec![0; self.plan.words()];
        Ok(s.peek(key, &mut words)?.map(|record| KeyState {
            record,
            words,
            location: "spilled",
        }))
    }

    /// Hint that `key` is about to be applied (see `HotTable::prefetch`).
    #[inline]
    pub fn prefetch(&self, key: u64) {
        self.hot.prefetch(key);
    }

    /// Apply one event at reference time `now_ns` (for the TTL: processing time, or the
    /// shard's newest event time in event-time mode).
    pub fn apply(&mut self, u: &Update<'_>, now_ns: u64) -> Result<Outcome, StateError> {
        let (slot, existed) = match self.hot.find(u.key) {
            Some(s) => {
                self.stats.hot_hits += 1;
                (s, true)
            }
            None => {
                self.stats.hot_misses += 1;
                self.bring_in(u)?
            }
        };
        // A running snapshot copies the record first if it still needs it.
        self.hot.before_change(slot);
        let dirty_bit = self.hot.dirty_bit();
        let (head, words) = self.hot.slot_mut(slot);
        if existed && head.idle_past(now_ns, self.ttl_ns) {
            // Idle past the TTL: the key starts over, as if it had been swept already (its
            // slot bits stay: they say what the snapshots have of it).
            let flags = head.flags;
            *head = Record::fresh(u.key, u.ts_ns);
            head.flags = flags;
            words.fill(0);
            self.stats.expired += 1;
        }
        head.flags |= record::REFERENCED;
        if head.observations == 0 && head.feedbacks == 0 {
            head.source = u.source;
        } else if head.source != u.source {
            self.stats.other_source += 1;
            return Ok(Outcome::OtherSource(head.source));
        }
        if self.dedup && u.seq < head.seq_end {
            self.stats.duplicates += 1;
            return Ok(Outcome::Duplicate);
        }
        self.changes.dirty(head, dirty_bit);
        head.seq_end = head.seq_end.max(u.seq.saturating_add(1));
        head.prev_event_ns = head.last_event_ns;
        head.last_event_ns = head.last_event_ns.max(u.ts_ns);
        match u.kind {
            EventKind::Observation => {
                head.observations += 1;
                self.stats.observations_applied += 1;
                self.plan.update(words, &u.obs());
            }
            EventKind::Feedback => {
                head.feedbacks += 1;
                self.stats.feedbacks_applied += 1;
                if u.label == 1.0 {
                    head.positives += 1;
                }
            }
        }
        Ok(Outcome::Applied(slot))
    }

    /// A missed key into the hot table: reloaded from the spill store, or fresh. Returns the
    /// slot and whether the key existed.
    fn bring_in(&mut self, u: &Update<'_>) -> Result<(usize, bool), StateError> {
        let full = StateError::Full {
            capacity: self.hot.capacity(),
        };
        let Some(spill) = &mut self.spill else {
            let slot = self
                .hot
                .insert(Record::fresh(u.key, u.ts_ns), None)
                .ok_or(full)?;
            return Ok((slot, false));
        };
        // Make room first: if the victim cannot be written it goes straight back and nothing
        // has moved; only then take the returning record out of the store.
        if self.hot.is_full() {
            if let Some(victim) = self.hot.evict_candidate() {
                let rec = self.hot.remove_slot(victim, &mut self.victim_words);
                self.journal
                    .absent(rec.key, image_bytes(self.victim_words.len()));
                if let Err(e) = spill.put(&rec, &self.victim_words) {
                    // Back with its DIRTY bits: a change the next checkpoint must still take.
                    let _ = self.hot.reinsert(rec, &self.victim_words);
                    return Err(e.into());
                }
                self.stats.spills += 1;
                self.changes.gone(rec.key, rec.source);
            }
        }
        // Room was made above unless hot_capacity is 0, which config validation refuses.
        match spill.peek(u.key, &mut self.cold_words)? {
            Some(rec) => {
                self.journal.image(&rec, &self.cold_words);
                spill.remove(u.key)?;
                self.stats.reloads += 1;
                let slot = self.hot.insert(rec, Some(&self.cold_words)).ok_or(full)?;
                // It left the spill store: the next checkpoint must have it among the hot
                // records even if this event turns out to be a replay.
                let bit = self.hot.dirty_bit();
                self.changes.dirty(self.hot.slot_mut(slot).0, bit);
                Ok((slot, true))
            }
            None => {
                let slot = self
                    .hot
                    .insert(Record::fresh(u.key, u.ts_ns), None)
                    .ok_or(full)?;
                Ok((slot, false))
            }
        }
    }

    /// TTL sweep of the next `slots` hot slots; returns the keys expired.
    pub fn expire_idle(&mut self, now_ns: u64, slots: usize) -> u64 {
        if self.ttl_ns == 0 {
            return 0;
        }
        let ttl = self.ttl_ns;
        let changes = &mut self.changes;
        let n = self.hot.sweep(
            slots,
            |h| h.idle_past(now_ns, ttl),
            |rec| changes.gone(rec.key, rec.source),
        );
        self.stats.expired += n;
        n
    }

    /// Every record with its words, hot then spilled: bulk work (re-dealing a state over
    /// another shard count), never per event.
    pub fn for_each_record(&self, mut f: impl FnMut(&Record, &[u64])) -> Result<(), StateError> {
        for slot in 0..self.hot.slots() {
            let (rec, words) = self.hot.slot(slot);
            if rec.is_occupied() {
                f(rec, words);
            }
        }
        if let Some(spill) = &self.spill {
            let mut words = vec![0u64; self.plan.words()];
            let mut unreadable = None;
            spill.for_each_image(|rec, image| match Record::read_image(image, &mut words) {
                Some(_) => f(rec, &words),
                None => unreadable = unreadable.or(Some(rec.key)),
            })?;
            if let Some(key) = unreadable {
                return Err(SpillError::Corrupt(key).into());
            }
        }
        Ok(())
    }

    /// Put a restored record back: into the hot table, or the spill store once it is full.
    pub fn restore(&mut self, rec: Record, words: &[u64]) -> Result<(), StateError> {
        if self.hot.insert(rec, Some(words)).is_some() {
            return Ok(());
        }
        match &mut self.spill {
            Some(s) => Ok(s.put(&rec, words)?),
            None => Err(StateError::Full {
                capacity: self.hot.capacity(),
            }),
        }
    }
}

#[cfg(test)]
#[path = "keyed_tests.rs"]
mod tests;
