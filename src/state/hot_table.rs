//! Open-addressing hash table of `Record`s with linear probing, allocated once at its full
//! size. `hot_capacity` records fit; the slot array is the next power of two at or above
//! 4/3 of that, so probes stay short at the bound.

use crate::route::mix64;
use crate::wire::EventKind;

use super::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("hot state is full (state.hot_capacity = {capacity} keys); new keys are rejected until spill lands")]
    Full { capacity: usize },
}

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
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by the table (the slot array).
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Record>()
    }

    pub fn get(&self, key: u64) -> Option<&Record> {
        let mut i = (mix64(key) as usize) & self.mask;
        loop {
            let r = &self.slots[i];
            if r.used == 0 {
                return None;
            }
            if r.key == key {
                return Some(r);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Apply one event to its key's record (creating it) and return the updated record.
    pub fn apply(&mut self, u: &Update) -> Result<Record, StateError> {
        // Mixing again (route used the same hash for the owner) is cheap and keeps the table
        // usable on its own; keys of one shard share their top bits, so index by the low ones.
        let mut i = (mix64(u.key) as usize) & self.mask;
        loop {
            let used = self.slots[i].used;
            if used == 0 {
                if self.len >= self.capacity {
                    return Err(StateError::Full {
                        capacity: self.capacity,
                    });
                }
                self.len += 1;
                self.slots[i] = Record {
                    key: u.key,
                    used: 1,
                    first_event_ns: u.ts_ns,
                    last_event_ns: u.ts_ns,
                    prev_event_ns: u.ts_ns,
                    ewma_amount: f64::from(u.amount),
                    ..Record::default()
                };
                break;
            }
            if self.slots[i].key == u.key {
                break;
            }
            i = (i + 1) & self.mask;
        }
        let alpha = self.ewma_alpha;
        let r = &mut self.slots[i];
        r.prev_event_ns = r.last_event_ns;
        // Out-of-order events never move time backwards (event-time windows arrive with the
        // state issue).
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
        Ok(*r)
    }
}

#[cfg(test)]
mod tests {
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
    fn full_table_rejects_new_keys_but_serves_known_ones() {
        let mut t = HotTable::new(4, 0.1);
        for k in 0..4 {
            t.apply(&obs(k, 1, 1.0)).unwrap();
        }
        assert_eq!(
            t.apply(&obs(99, 1, 1.0)),
            Err(StateError::Full { capacity: 4 })
        );
        assert_eq!(t.apply(&obs(2, 2, 1.0)).unwrap().observations, 2);
        assert_eq!(t.len(), 4);
    }
}
