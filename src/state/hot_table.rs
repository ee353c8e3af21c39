//! Open-addressing hash table of `Record`s with linear probing, allocated once at its full
//! size. `hot_capacity` records fit; the slot array is the next power of two at or above
//! 4/3 of that, so probes stay short at the bound. Removal shifts later entries back (no
//! tombstones), and a CLOCK hand picks eviction victims: a record used since the hand last
//! passed gets a second chance.

use crate::route::mix64;
use crate::wire::EventKind;

use super::record::{OCCUPIED, REFERENCED};
use super::Record;

/// What one event needs to change a record.
#[derive(Debug, Clone, Copy)]
pub struct Update {
    pub key: u64,
    pub ts_ns: u64,
    pub kind: EventKind,
    pub amount: f32,
    pub label: f32,
}

pub struct HotTable {
    slots: Vec<Record>,
    mask: usize,
    len: usize,
    capacity: usize,
    ewma_alpha: f64,
    hand: usize,
}

impl HotTable {
    pub fn new(capacity: usize, ewma_alpha: f64) -> Self {
        let slots_len = (capacity + capacity / 3 + 1).next_power_of_two();
        Self {
            slots: vec![Record::default(); slots_len],
            mask: slots_len - 1,
            len: 0,
            capacity,
            ewma_alpha,
            hand: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len >= self.capacity
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by the table (the slot array).
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Record>()
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        // Mixing again (route used the same hash for the owner) is cheap and keeps the table
        // usable on its own; keys of one shard share their top bits, so index by the low ones.
        (mix64(key) as usize) & self.mask
    }

    /// The slot holding `key`.
    #[inline]
    pub fn find(&self, key: u64) -> Option<usize> {
        let mut i = self.home(key);
        loop {
            let r = &self.slots[i];
            if !r.is_occupied() {
                return None;
            }
            if r.key == key {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    pub fn get(&self, key: u64) -> Option<&Record> {
        self.find(key).map(|i| &self.slots[i])
    }

    /// Place a record for a key that is not in the table; None when full.
    pub fn insert(&mut self, mut rec: Record) -> Option<usize> {
        debug_assert!(
            self.find(rec.key).is_none(),
            "insert of a key already present"
        );
        if self.is_full() {
            return None;
        }
        rec.flags = OCCUPIED | REFERENCED;
        let mut i = self.home(rec.key);
        while self.slots[i].is_occupied() {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = rec;
        self.len += 1;
        Some(i)
    }

    /// Apply one event to the record in `slot` and return a copy of the result.
    pub fn update(&mut self, slot: usize, u: &Update) -> Record {
        let alpha = self.ewma_alpha;
        let r = &mut self.slots[slot];
        debug_assert!(r.is_occupied() && r.key == u.key);
        r.flags |= REFERENCED;
        r.prev_event_ns = r.last_event_ns;
        // Out-of-order events never move time backwards (event-time windows arrive with the
        // rest of the state work).
        r.last_event_ns = r.last_event_ns.max(u.ts_ns);
        match u.kind {
            EventKind::Observation => {
                r.observations += 1;
                let a = f64::from(u.amount);
                r.sum_amount += a;
                r.ewma_amount = if r.observations == 1 {
                    a
                } else {
                    alpha * a + (1.0 - alpha) * r.ewma_amount
                };
            }
            EventKind::Feedback => {
                r.feedbacks += 1;
                if u.label == 1.0 {
                    r.positives += 1;
                }
            }
        }
        *r
    }

    /// Apply an event, creating the key's record if needed; None when the key is new and the
    /// table is full (the caller spills or rejects).
    pub fn apply(&mut self, u: &Update) -> Option<Record> {
        let slot = match self.find(u.key) {
            Some(s) => s,
            None => self.insert(Record::fresh(u.key, u.ts_ns, u.amount))?,
        };
        Some(self.update(slot, u))
    }

    /// Take the record out of `slot`, shifting later entries of its probe run back so every
    /// key stays reachable without tombstones.
    pub fn remove_slot(&mut self, slot: usize) -> Record {
        let removed = self.slots[slot];
        debug_assert!(removed.is_occupied());
        self.slots[slot] = Record::default();
        self.len -= 1;
        let mut hole = slot;
        let mut j = (slot + 1) & self.mask;
        while self.slots[j].is_occupied() {
            let home = self.home(self.slots[j].key);
            // The entry at j may fill the hole if its home is not after the hole on the way
            // to j (cyclically): its distance from home is at least the hole's distance.
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                self.slots[hole] = self.slots[j];
                self.slots[j] = Record::default();
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        removed
    }

    /// The CLOCK choice of a record to evict: the first occupied slot from the hand whose
    /// referenced bit is clear, clearing bits as the hand passes. None only if empty.
    pub fn evict_candidate(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        // Two sweeps suffice: the first clears every bit it passes.
        for _ in 0..2 * self.slots.len() {
            let i = self.hand;
            self.hand = (self.hand + 1) & self.mask;
            let r = &mut self.slots[i];
            if r.is_occupied() {
                if r.flags & REFERENCED == 0 {
                    return Some(i);
                }
                r.flags &= !REFERENCED;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn obs(key: u64, ts: u64, amount: f32) -> Update {
        Update {
            key,
            ts_ns: ts,
            kind: EventKind::Observation,
            amount,
            label: -1.0,
        }
    }

    #[test]
    fn counts_sums_and_ewma_per_key() {
        let mut t = HotTable::new(100, 0.5);
        t.apply(&obs(7, 10, 2.0)).unwrap();
        let r = t.apply(&obs(7, 20, 4.0)).unwrap();
        assert_eq!(r.observations, 2);
        assert_eq!(r.sum_amount, 6.0);
        assert_eq!(r.ewma_amount, 3.0);
        assert_eq!(
            (r.prev_event_ns, r.last_event_ns, r.first_event_ns),
            (10, 20, 10)
        );
        let f = t
            .apply(&Update {
                key: 7,
                ts_ns: 30,
                kind: EventKind::Feedback,
                amount: 0.0,
                label: 1.0,
            })
            .unwrap();
        assert_eq!((f.observations, f.feedbacks, f.positives), (2, 1, 1));
        assert_eq!(t.len(), 1);
        assert!(t.get(8).is_none());
    }

    #[test]
    fn key_zero_and_colliding_keys_are_distinct() {
        let mut t = HotTable::new(1000, 0.1);
        for k in 0..1000u64 {
            for _ in 0..=(k % 3) {
                t.apply(&obs(k, 1, 1.0)).unwrap();
            }
        }
        for k in 0..1000u64 {
            assert_eq!(t.get(k).map(|r| r.observations), Some(k % 3 + 1), "key {k}");
        }
    }

    #[test]
    fn full_table_refuses_new_keys_but_serves_known_ones() {
        let mut t = HotTable::new(4, 0.1);
        for k in 0..4 {
            t.apply(&obs(k, 1, 1.0)).unwrap();
        }
        assert!(t.apply(&obs(99, 1, 1.0)).is_none());
        assert_eq!(t.apply(&obs(2, 2, 1.0)).unwrap().observations, 2);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn clock_spares_recently_used_records() {
        let mut t = HotTable::new(3, 0.1);
        for k in [1, 2, 3] {
            t.apply(&obs(k, 1, 1.0)).unwrap();
        }
        // First sweep clears every bit; then key 2 is used again and must survive the next pick.
        let first = t.evict_candidate().unwrap();
        let victim = t.remove_slot(first).key;
        t.apply(&obs(2, 2, 1.0));
        let next = t.evict_candidate().map(|s| t.slots[s].key).unwrap();
        assert_ne!(
            next, 2,
            "the key used since the hand passed gets a second chance"
        );
        assert_ne!(next, victim);
    }

    proptest! {
        /// Inserts, updates and removals in any order keep the table equal to a HashMap.
        #[test]
        fn matches_a_hashmap_under_any_mix_of_operations(ops in proptest::collection::vec((0u8..3, 0u64..64), 1..400)) {
            let mut t = HotTable::new(48, 0.1);
            let mut model: HashMap<u64, u64> = HashMap::new();
            for (op, key) in ops {
                match op {
                    0 | 1 => {
                        if let Some(r) = t.apply(&obs(key, 1, 1.0)) {
                            *model.entry(key).or_insert(0) += 1;
                            prop_assert_eq!(r.observations, model[&key]);
                        } else {
                            prop_assert!(!model.contains_key(&key) && model.len() == 48);
                        }
                    }
                    _ => {
                        if let Some(slot) = t.find(key) {
                            let r = t.remove_slot(slot);
                            prop_assert_eq!(Some(r.observations), model.remove(&key));
                        } else {
                            prop_assert!(!model.contains_key(&key));
                        }
                    }
                }
                prop_assert_eq!(t.len(), model.len());
            }
            for (k, n) in &model {
                prop_assert_eq!(t.get(*k).map(|r| r.observations), Some(*n));
            }
        }
    }
}
