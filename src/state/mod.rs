//! Per-shard keyed state. `KeyedState::apply(update)` finds or creates the key's record and
//! applies the event, synchronously: the hot table first; on a miss, the spill store (if
//! `state.dir` is set); when the hot table is full, the CLOCK victim moves to the spill store
//! to make room, so the shard serves more keys than fit in memory.

mod hot_table;
mod record;
mod spill;

pub use hot_table::{HotTable, Update};
pub use record::{Record, RECORD_BYTES};
pub use spill::{Spill, SpillError};

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
}

pub struct KeyedState {
    hot: HotTable,
    spill: Option<Spill>,
    pub stats: StateStats,
}

impl KeyedState {
    pub fn new(hot: HotTable, spill: Option<Spill>) -> Self {
        Self {
            hot,
            spill,
            stats: StateStats::default(),
        }
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

    /// A key's record wherever it is (hot or spilled), without moving it.
    pub fn get(&self, key: u64) -> Result<Option<Record>, StateError> {
        Ok(self.locate(key)?.map(|(r, _)| r))
    }

    /// A key's record and where it lives: "hot" or "spilled".
    pub fn locate(&self, key: u64) -> Result<Option<(Record, &'static str)>, StateError> {
        if let Some(r) = self.hot.get(key) {
            return Ok(Some((*r, "hot")));
        }
        match &self.spill {
            Some(s) => Ok(s.peek(key)?.map(|r| (r, "spilled"))),
            None => Ok(None),
        }
    }

    pub fn apply(&mut self, u: &Update) -> Result<Record, StateError> {
        if let Some(slot) = self.hot.find(u.key) {
            self.stats.hot_hits += 1;
            return Ok(self.hot.update(slot, u));
        }
        self.stats.hot_misses += 1;
        let Some(spill) = &mut self.spill else {
            return self.hot.apply(u).ok_or(StateError::Full {
                capacity: self.hot.capacity(),
            });
        };
        // Make room first: if the victim cannot be written it goes straight back and nothing
        // has moved; only then take the returning record out of the store.
        if self.hot.is_full() {
            if let Some(victim) = self.hot.evict_candidate() {
                let rec = self.hot.remove_slot(victim);
                if let Err(e) = spill.put(&rec) {
                    let _ = self.hot.insert(rec);
                    return Err(e.into());
                }
                self.stats.spills += 1;
            }
        }
        let cold = spill.take(u.key)?;
        let rec = match cold {
            Some(c) => {
                self.stats.reloads += 1;
                c
            }
            None => Record::fresh(u.key, u.ts_ns, u.amount),
        };
        // Room was made above unless hot_capacity is 0, which config validation refuses.
        let slot = self.hot.insert(rec).ok_or(StateError::Full {
            capacity: self.hot.capacity(),
        })?;
        Ok(self.hot.update(slot, u))
    }
}
