//! Open-addressing hash table of `Record`s with linear probing, allocated once at its full
//! size. `hot_capacity` records fit in 4/3 as many slots (load factor 0.75 at the bound, so
//! probes stay short); the slot count is not rounded to a power of two, which would double
//! the memory of a table just past one, and a key's home slot comes from a multiply-shift of
//! its hash into that range. Removal shifts later entries back (no
//! tombstones), and a CLOCK hand picks eviction victims: a record used since the hand last
//! passed gets a second chance.

use std::mem::size_of;

use crate::route::mix64;

use super::memory::table_vec;
use super::record::{CAPTURED, DIRTY_EVEN, OCCUPIED, REFERENCED};
use super::snapshot::{other_dirty, Capture};
use super::Record;

/// Record heads in one array and their window words in a parallel one (`stride` words a
/// slot), both allocated once: a record is read and updated in place, never copied out.
pub struct HotTable {
    heads: Vec<Record>,
    words: Vec<u64>,
    stride: usize,
    /// Slots (occupied or not).
    n: usize,
    len: usize,
    capacity: usize,
    hand: usize,
    /// How far the hand moves per step: coprime with the slot count, so it visits every slot
    /// once a round, but in a scattered order. Evicting in slot order would empty the table
    /// behind the hand and pack it ahead of it, and linear probing degrades badly in the
    /// packed part (seen: a 10M-key fill through 1M hot slots stopped progressing).
    hand_step: usize,
    sweep: usize,
    /// The DIRTY bit changes mark now (the other one marks what a running snapshot takes).
    dirty_bit: u64,
    /// The CAPTURED value meaning "copied by the newest full snapshot"; new records get it.
    taken: u64,
    /// The running snapshot, if any (see `snapshot`).
    capture: Option<Capture>,
}

impl HotTable {
    /// Slots for `capacity` records: load factor 0.75 at the bound.
    fn slots_for(capacity: usize) -> usize {
        capacity + capacity / 3 + 1
    }

    /// Bytes a table of `capacity` records with `stride` window words holds (all resident
    /// from start), for checking a configuration against the machine before allocating.
    pub fn bytes_for(capacity: usize, stride: usize) -> usize {
        Self::slots_for(capacity) * (size_of::<Record>() + stride * 8)
    }

    pub fn new(capacity: usize, stride: usize) -> Self {
        let slots_len = Self::slots_for(capacity);
        Self {
            heads: table_vec(slots_len, Record::default()),
            words: table_vec(slots_len * stride, 0),
            stride,
            n: slots_len,
            len: 0,
            capacity,
            hand: 0,
            hand_step: scatter_step(slots_len),
            sweep: 0,
            dirty_bit: DIRTY_EVEN,
            taken: 0,
            capture: None,
        }
    }

    /// The DIRTY bit a change marks now.
    #[inline]
    pub fn dirty_bit(&self) -> u64 {
        self.dirty_bit
    }

    pub fn capturing(&self) -> bool {
        self.capture.is_some()
    }

    /// A snapshot's flip: from now on every record in it (all of them if `full`, else those
    /// marked with the current DIRTY bit, whose keys are `keys`) is pending until copied into
    /// `out`, and changes mark the other DIRTY bit. O(1): no record is touched.
    pub fn begin_capture(&mut self, full: bool, out: Vec<u8>, keys: Vec<u64>) {
        crate::invariant!(self.capture.is_none(), "a snapshot is already running");
        let pending_dirty = self.dirty_bit;
        self.dirty_bit = other_dirty(self.dirty_bit);
        if full {
            self.taken ^= CAPTURED;
        }
        self.capture = Some(Capture {
            full,
            pending_dirty,
            out,
            written: 0,
            cursor: 0,
            keys,
            overflowed: false,
        });
    }

    /// Copy up to `budget` pending records (looking at up to twice as many slots or keys);
    /// true when none is left.
    pub fn capture_step(&mut self, budget: usize) -> bool {
        let Some(mut c) = self.capture.take() else {
            return true;
        };
        let mut copied = 0;
        let mut looked = 0;
        let limit = budget.saturating_mul(2);
        let done = if c.full {
            while c.cursor < self.n && copied < budget && looked < limit {
                let i = c.cursor;
                c.cursor += 1;
                looked += 1;
                let range = self.words_at(i);
                let head = &mut self.heads[i];
                if head.is_occupied() && c.is_pending(head, self.taken) {
                    c.take(head, &self.words[range], self.taken);
                    copied += 1;
                }
            }
            c.cursor >= self.n
        } else {
            while c.cursor < c.keys.len() && copied < budget && looked < limit {
                let key = c.keys[c.cursor];
                // The keys are scattered over the table: start loading a few ahead so their
                // cache misses overlap instead of queueing (measured: ~4x per slice).
                if let Some(&ahead) = c.keys.get(c.cursor + PREFETCH_AHEAD) {
                    self.prefetch(ahead);
                }
                c.cursor += 1;
                looked += 1;
                if let Some(i) = self.find(key) {
                    let range = self.words_at(i);
                    let head = &mut self.heads[i];
                    if c.is_pending(head, self.taken) {
                        c.take(head, &self.words[range], self.taken);
                        copied += 1;
                    }
                }
            }
            c.cursor >= c.keys.len()
        };
        self.capture = Some(c);
        done
    }

    /// The finished snapshot (call once `capture_step` returned true).
    pub fn end_capture(&mut self) -> Option<Capture> {
        self.capture.take()
    }

    /// Before the record in `slot` changes, moves or leaves: if the running snapshot still
    /// needs it, copy it now (copy-on-write). A branch when no snapshot runs.
    #[inline]
    pub fn before_change(&mut self, slot: usize) {
        if self.capture.is_none() {
            return;
        }
        let range = self.words_at(slot);
        if let Some(c) = &mut self.capture {
            let head = &mut self.heads[slot];
            if head.is_occupied() && c.is_pending(head, self.taken) {
                c.take(head, &self.words[range], self.taken);
            }
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

    /// Window words per record.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Slots in the table (occupied or not).
    pub fn slots(&self) -> usize {
        self.heads.len()
    }

    /// Bytes held by the table (both arrays).
    pub fn memory_bytes(&self) -> usize {
        self.heads.len() * std::mem::size_of::<Record>() + self.words.len() * 8
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        // Route picks a key's owner from the high bits of mix64(key), so the keys of one shard
        // share them: hash again with another input, then multiply-shift onto 0..n (no
        // division).
        let h = mix64(key ^ 0xD6E8_FEB8_6659_FD93);
        ((u128::from(h) * self.n as u128) >> 64) as usize
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.n {
            0
        } else {
            i + 1
        }
    }

    /// Steps from `from` forward to `to`, wrapping.
    #[inline]
    fn dist(&self, from: usize, to: usize) -> usize {
        if to >= from {
            to - from
        } else {
            to + self.n - from
        }
    }

    #[inline]
    fn words_at(&self, slot: usize) -> std::ops::Range<usize> {
        slot * self.stride..(slot + 1) * self.stride
    }

    /// Start loading the cache lines `key`'s record most likely sits in (its home slot's head
    /// and words), so that `find` and the update after it do not each wait on memory. Called
    /// for a whole datagram's or ring chunk's keys before applying the first: the loads then
    /// overlap instead of queueing one after another. A hint only; never faults.
    #[inline]
    pub fn prefetch(&self, key: u64) {
        let i = self.home(key);
        prefetch_lines(
            self.heads.as_ptr().wrapping_add(i).cast(),
            size_of::<Record>(),
        );
        prefetch_lines(
            self.words.as_ptr().wrapping_add(i * self.stride).cast(),
            self.stride * 8,
        );
    }

    /// The slot holding `key`.
    #[inline]
    pub fn find(&self, key: u64) -> Option<usize> {
        let mut i = self.home(key);
        // Slots outnumber records, so every probe run ends at an empty slot.
        let mut probes = 0usize;
        loop {
            let r = &self.heads[i];
            if !r.is_occupied() {
                return None;
            }
            if r.key == key {
                return Some(i);
            }
            probes += 1;
            crate::invariant!(probes < self.n, "a probe ran around the whole table");
            i = self.next(i);
        }
    }

    /// The head and words in `slot` (an occupied slot from `find` or `insert`; an empty one
    /// reads as a default head).
    #[inline]
    pub fn slot(&self, slot: usize) -> (&Record, &[u64]) {
        (&self.heads[slot], &self.words[self.words_at(slot)])
    }

    #[inline]
    pub fn slot_mut(&mut self, slot: usize) -> (&mut Record, &mut [u64]) {
        let range = self.words_at(slot);
        (&mut self.heads[slot], &mut self.words[range])
    }

    pub fn get(&self, key: u64) -> Option<(&Record, &[u64])> {
        self.find(key).map(|i| self.slot(i))
    }

    /// Place a record for a key that is not in the table, with `words` (zeroed when None);
    /// None when full. The record starts referenced.
    pub fn insert(&mut self, mut rec: Record, words: Option<&[u64]>) -> Option<usize> {
        crate::invariant!(
            self.find(rec.key).is_none(),
            "insert of a key already present"
        );
        if self.is_full() {
            return None;
        }
        // Not pending for a running snapshot (it did not exist at the flip), pending for the
        // next full one.
        rec.flags = OCCUPIED | REFERENCED | self.taken;
        crate::invariant!(self.len < self.capacity && self.capacity < self.n);
        let mut i = self.home(rec.key);
        while self.heads[i].is_occupied() {
            i = self.next(i);
        }
        self.heads[i] = rec;
        let range = self.words_at(i);
        match words {
            Some(w) => self.words[range].copy_from_slice(w),
            None => self.words[range].fill(0),
        }
        self.len += 1;
        Some(i)
    }

    /// Put back a record `remove_slot` just took (a move that failed): as `insert`, but it
    /// keeps the current DIRTY bit, since its change is still listed for the next checkpoint,
    /// which copies only records whose bit says so. (The other bits need no care:
    /// `remove_slot` copied it into a running snapshot first if it was pending there.)
    pub fn reinsert(&mut self, rec: Record, words: &[u64]) -> Option<usize> {
        let dirty = rec.flags & self.dirty_bit;
        let slot = self.insert(rec, Some(words))?;
        self.heads[slot].flags |= dirty;
        Some(slot)
    }

    /// Take the record out of `slot` (its words into `words_out`), shifting later entries of
    /// its probe run back so every key stays reachable without tombstones.
    pub fn remove_slot(&mut self, slot: usize, words_out: &mut [u64]) -> Record {
        let range = self.words_at(slot);
        words_out.copy_from_slice(&self.words[range]);
        self.remove_inner(slot)
    }

    fn remove_inner(&mut self, slot: usize) -> Record {
        self.before_change(slot);
        let removed = self.heads[slot];
        crate::invariant!(removed.is_occupied());
        self.heads[slot] = Record::default();
        self.len -= 1;
        let mut hole = slot;
        let mut j = self.next(slot);
        while self.heads[j].is_occupied() {
            let home = self.home(self.heads[j].key);
            // The entry at j may fill the hole if its home is not after the hole on the way
            // to j (cyclically): its distance from home is at least the hole's distance.
            if self.dist(home, j) >= self.dist(hole, j) {
                // A record that moves may jump over the snapshot's scan: copy it first.
                self.before_change(j);
                self.heads[hole] = self.heads[j];
                self.heads[j] = Record::default();
                let from = self.words_at(j);
                self.words.copy_within(from, hole * self.stride);
                hole = j;
            }
            j = self.next(j);
        }
        crate::invariant!(
            !self.heads[hole].is_occupied(),
            "the shift leaves its last hole empty"
        );
        crate::invariant!(
            self.find(removed.key).is_none(),
            "a removed key is not reachable"
        );
        removed
    }

    /// The CLOCK choice of a record to evict: the first occupied slot from the hand whose
    /// referenced bit is clear, clearing bits as the hand passes. None only if empty.
    pub fn evict_candidate(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        // Two sweeps suffice: the first clears every bit it passes.
        for _ in 0..2 * self.heads.len() {
            let i = self.hand;
            self.hand = (self.hand + self.hand_step) % self.n;
            let r = &mut self.heads[i];
            if r.is_occupied() {
                if r.flags & REFERENCED == 0 {
                    return Some(i);
                }
                r.flags &= !REFERENCED;
            }
        }
        None
    }

    /// Look at the next `slots` slots from the TTL cursor and remove every record for which
    /// `expired(head)` holds; returns how many were removed. Bounded work per call, so the
    /// shard can run it every cycle.
    /// `gone` hears each removed key.
    pub fn sweep(
        &mut self,
        slots: usize,
        mut expired: impl FnMut(&Record) -> bool,
        mut gone: impl FnMut(&Record),
    ) -> u64 {
        let mut removed = 0;
        for _ in 0..slots.min(self.heads.len()) {
            let i = self.sweep;
            let h = &self.heads[i];
            if h.is_occupied() && expired(h) {
                gone(&self.remove_inner(i));
                removed += 1;
                // The backward shift may have moved an unseen record into slot i: look again.
                continue;
            }
            self.sweep = self.next(self.sweep);
        }
        removed
    }
}

/// How far ahead an incremental snapshot's copy prefetches the keys it will look up.
const PREFETCH_AHEAD: usize = 8;

/// Prefetch every cache line of `[p, p + bytes)` into all cache levels.
#[inline]
fn prefetch_lines(p: *const i8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        const LINE: usize = 64;
        let mut off = 0;
        while off < bytes {
            // SAFETY: SSE is part of the x86_64 baseline, and a prefetch never dereferences
            // its address for the program (a bad one only wastes a load slot), so any
            // pointer value is sound here.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
            off += LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// A step near n / golden ratio that is coprime with n (1 for tiny tables).
fn scatter_step(n: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let mut step = ((n as f64) * 0.618_033_988_749) as usize;
    while step > 1 && gcd(step, n) != 1 {
        step -= 1;
    }
    step.max(1)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// Find or insert `key` and count one event in its head and its first word.
    fn bump(t: &mut HotTable, key: u64) -> Option<u64> {
        let slot = match t.find(key) {
            Some(s) => s,
            None => t.insert(Record::fresh(key, 1), None)?,
        };
        let (head, words) = t.slot_mut(slot);
        head.observations += 1;
        head.flags |= REFERENCED;
        words[0] += 10;
        Some(head.observations)
    }

    #[test]
    fn key_zero_and_colliding_keys_are_distinct() {
        let mut t = HotTable::new(1000, 2);
        for k in 0..1000u64 {
            for _ in 0..=(k % 3) {
                bump(&mut t, k).unwrap();
            }
        }
        for k in 0..1000u64 {
            let (h, w) = t.get(k).unwrap();
            assert_eq!(
                (h.observations, w[0], w[1]),
                (k % 3 + 1, 10 * (k % 3 + 1), 0),
                "key {k}"
            );
        }
    }

    #[test]
    fn one_shards_keys_spread_over_the_whole_table() {
        let t = HotTable::new(3_000, 0);
        let mine: Vec<u64> = (0..100_000u64)
            .filter(|&k| crate::route::owner(k, 4) == 0)
            .take(3_000)
            .collect();
        let mut quarters = [0usize; 4];
        for k in &mine {
            quarters[t.home(*k) * 4 / t.slots()] += 1;
        }
        assert!(quarters.iter().all(|&q| q > 600), "{quarters:?}");
    }

    #[test]
    fn the_clock_hand_visits_every_slot_once_a_round() {
        for cap in [1usize, 3, 7, 100, 1000, 4096] {
            let t = HotTable::new(cap, 0);
            let n = t.slots();
            let mut seen = vec![false; n];
            let mut h = 0;
            for _ in 0..n {
                assert!(!seen[h], "cap {cap}: slot {h} twice");
                seen[h] = true;
                h = (h + t.hand_step) % n;
            }
            assert!(seen.iter().all(|&v| v), "cap {cap}");
        }
    }

    /// Evicting at full capacity for many rounds keeps probe runs short (a hand moving in
    /// slot order packs the table ahead of it).
    #[test]
    fn churn_through_a_full_table_keeps_probe_runs_short() {
        let mut t = HotTable::new(10_000, 1);
        for key in 0..200_000u64 {
            if t.is_full() {
                let victim = t.evict_candidate().unwrap();
                t.remove_slot(victim, &mut [0]);
            }
            bump(&mut t, key).unwrap();
        }
        let mut longest = 0;
        let mut run = 0;
        for i in 0..2 * t.slots() {
            if t.heads[i % t.slots()].is_occupied() {
                run += 1;
                longest = longest.max(run);
            } else {
                run = 0;
            }
        }
        assert!(longest < 200, "longest occupied run {longest}");
    }

    #[test]
    fn full_table_refuses_new_keys_but_serves_known_ones() {
        let mut t = HotTable::new(4, 1);
        for k in 0..4 {
            bump(&mut t, k).unwrap();
        }
        assert!(bump(&mut t, 99).is_none());
        assert_eq!(bump(&mut t, 2), Some(2));
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn clock_spares_recently_used_records() {
        let mut t = HotTable::new(3, 1);
        for k in [1, 2, 3] {
            bump(&mut t, k).unwrap();
        }
        // First sweep clears every bit; then key 2 is used again and must survive the next pick.
        let first = t.evict_candidate().unwrap();
        let victim = t.remove_slot(first, &mut [0]).key;
        bump(&mut t, 2);
        let next = t.evict_candidate().map(|s| t.heads[s].key).unwrap();
        assert_ne!(
            next, 2,
            "the key used since the hand passed gets a second chance"
        );
        assert_ne!(next, victim);
    }

    #[test]
    fn sweep_removes_only_what_the_predicate_picks_and_keeps_the_rest_reachable() {
        let mut t = HotTable::new(500, 1);
        for k in 0..500u64 {
            bump(&mut t, k).unwrap();
        }
        // A removal re-examines its slot (the shift may have moved an unseen record there)
        // and spends budget doing so: a budget of one table's worth, twice, covers it all.
        let first = t.sweep(t.slots(), |h| h.key % 2 == 0, |_| ());
        assert!(first > 0 && first <= 250);
        let removed = first + t.sweep(t.slots(), |h| h.key % 2 == 0, |_| ());
        assert_eq!(removed, 250);
        assert_eq!(t.len(), 250);
        for k in 0..500u64 {
            assert_eq!(
                t.get(k).map(|(_, w)| w[0]),
                (k % 2 == 1).then_some(10),
                "key {k}"
            );
        }
    }

    /// `bump` as `KeyedState::apply` does it: the running snapshot copies the record first.
    fn bump_cow(t: &mut HotTable, key: u64) -> Option<u64> {
        let slot = match t.find(key) {
            Some(s) => s,
            None => t.insert(Record::fresh(key, 1), None)?,
        };
        t.before_change(slot);
        let bit = t.dirty_bit();
        let (head, words) = t.slot_mut(slot);
        head.flags |= REFERENCED | bit;
        head.observations += 1;
        words[0] += 10;
        Some(head.observations)
    }

    /// Keys with their (observations, first word), as the table holds them now.
    fn contents(t: &HotTable) -> HashMap<u64, (u64, u64)> {
        (0..t.slots())
            .filter(|&i| t.heads[i].is_occupied())
            .map(|i| {
                let (h, w) = t.slot(i);
                (h.key, (h.observations, w[0]))
            })
            .collect()
    }

    /// The images a finished capture holds; a key copied twice fails.
    fn captured(c: &Capture, stride: usize) -> HashMap<u64, (u64, u64)> {
        let image = crate::state::image_bytes(stride);
        let mut out = HashMap::new();
        let mut words = vec![0u64; stride];
        for img in c.out.chunks_exact(image) {
            let r = Record::read_image(img, &mut words).unwrap();
            assert!(
                out.insert(r.key, (r.observations, words[0])).is_none(),
                "key {} copied twice",
                r.key
            );
        }
        out
    }

    proptest! {
        /// Inserts, updates and removals in any order keep the table equal to a HashMap, words
        /// included (the backward shift moves them with their heads).
        #[test]
        fn matches_a_hashmap_under_any_mix_of_operations(ops in proptest::collection::vec((0u8..3, 0u64..64), 1..400)) {
            let mut t = HotTable::new(48, 2);
            let mut model: HashMap<u64, u64> = HashMap::new();
            for (op, key) in ops {
                match op {
                    0 | 1 => {
                        if let Some(n) = bump(&mut t, key) {
                            *model.entry(key).or_insert(0) += 1;
                            prop_assert_eq!(n, model[&key]);
                        } else {
                            prop_assert!(!model.contains_key(&key) && model.len() == 48);
                        }
                    }
                    _ => {
                        if let Some(slot) = t.find(key) {
                            let mut w = [0u64; 2];
                            let r = t.remove_slot(slot, &mut w);
                            prop_assert_eq!(w[0], 10 * r.observations);
                            prop_assert_eq!(Some(r.observations), model.remove(&key));
                        } else {
                            prop_assert!(!model.contains_key(&key));
                        }
                    }
                }
                prop_assert_eq!(t.len(), model.len());
            }
            for (k, n) in &model {
                let (h, w) = t.get(*k).unwrap();
                prop_assert_eq!((h.observations, w[0]), (*n, 10 * n));
            }
        }

        /// A snapshot racing updates, inserts and removals (whose backward shifts move
        /// records across the scan) copies exactly the records as they were at the flip, each
        /// once: every one of them for a full snapshot, the ones changed since the last flip
        /// for an incremental one.
        #[test]
        fn a_capture_holds_the_table_as_of_its_flip(
            before in proptest::collection::vec(0u64..40, 0..60),
            full in any::<bool>(),
            during in proptest::collection::vec((0u8..4, 0u64..40), 1..200),
        ) {
            let mut t = HotTable::new(24, 1);
            // A first (full) snapshot, so an incremental one has a flip to count changes from.
            t.begin_capture(true, Vec::with_capacity(1 << 16), Vec::new());
            while !t.capture_step(7) {}
            t.end_capture();
            let mut changed = Vec::new();
            for key in &before {
                let was = t.find(*key).map(|s| t.heads[s].flags & t.dirty_bit() != 0);
                if bump_cow(&mut t, *key).is_some() && was != Some(true) {
                    changed.push(*key);
                }
            }
            let all = contents(&t);
            let want: HashMap<u64, (u64, u64)> = if full {
                all
            } else {
                all.into_iter().filter(|(k, _)| changed.contains(k)).collect()
            };
            t.begin_capture(full, Vec::with_capacity(1 << 16), changed);
            let mut done = false;
            for (op, key) in during {
                match op {
                    0 => {
                        bump_cow(&mut t, key);
                    }
                    1 => {
                        if let Some(slot) = t.find(key) {
                            t.remove_slot(slot, &mut [0]);
                        }
                    }
                    _ => done = t.capture_step(1 + key as usize % 3),
                }
            }
            while !done {
                done = t.capture_step(5);
            }
            let c = t.end_capture().unwrap();
            prop_assert!(!c.overflowed);
            prop_assert_eq!(captured(&c, 1), want);
        }
    }
}
