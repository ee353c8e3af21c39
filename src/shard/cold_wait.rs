//! Events waiting for their key's cold record (larger-than-memory state). An event on a key
//! that is not hot waits here instead of reading the spill store on arrival, so the events
//! behind it on hot keys are served without that read; at the cycle's end (or when the list
//! is full) the owner hands every waiting key to one batched read (`cold_reader`) and, when
//! it is back, applies the events that waited for it in arrival order. A key with an event
//! waiting is not hot, so every later event on it waits too: per-key order is kept. While a
//! read is out (`state.cold_reader = thread`) its events wait in `out`, and new misses in
//! `events` for the next read; when it lands, the new ones whose keys it brought in go next.
//! Bounded by `state.cold_wait_max` each.

use super::cold_reader::OUT_MAX;
use crate::egress::ReplyTo;
use crate::route::RoutedEvent;

/// One waiting event, with what its owner had worked out for it on arrival.
#[derive(Debug, Clone, Copy)]
pub(super) struct Waiting {
    pub ev: RoutedEvent,
    pub reply_to: ReplyTo,
    pub source: u64,
    /// The event's time as the state takes it, and the TTL's reference time.
    pub ts_ns: u64,
    pub now_ns: u64,
}

#[derive(Debug, Default)]
pub(super) struct ColdWait {
    /// `state.cold_wait_max` (0: off, misses read on arrival).
    max: usize,
    /// Events waiting for the next read, in arrival order.
    pub events: Vec<Waiting>,
    /// The events of each read out, oldest read first: `out[(front + i) % OUT_MAX]` for
    /// i < `n_out`; the others empty. Their buffers are reused.
    out: [Vec<Waiting>; OUT_MAX],
    front: usize,
    n_out: usize,
    /// (key, arrival index, ts) of each event, sorted into the distinct keys of a read.
    order: Vec<(u64, u32, u64)>,
    /// The read's distinct keys, ascending, each with its first event's time.
    keys: Vec<(u64, u64)>,
    /// Keys with events in a read out, ascending: a new read leaves them out (see `skip`).
    skip: Vec<u64>,
    /// Keys with any event waiting or out, ascending (`busy_keys`).
    busy: Vec<u64>,
}

impl ColdWait {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            events: Vec::with_capacity(max),
            out: std::array::from_fn(|_| Vec::with_capacity(max)),
            front: 0,
            n_out: 0,
            order: Vec::with_capacity(max),
            keys: Vec::with_capacity(max),
            skip: Vec::with_capacity(OUT_MAX * max),
            busy: Vec::with_capacity((OUT_MAX + 1) * max),
        }
    }

    pub fn is_on(&self) -> bool {
        self.max > 0
    }

    pub fn is_full(&self) -> bool {
        self.events.len() >= self.max
    }

    pub fn half_full(&self) -> bool {
        2 * self.events.len() >= self.max
    }

    /// Events waiting, for the next read or one out.
    pub fn len(&self) -> usize {
        self.events.len() + self.out.iter().map(Vec::len).sum::<usize>()
    }

    /// Reads out.
    pub fn reads_out(&self) -> usize {
        self.n_out
    }

    pub fn push(&mut self, w: Waiting) {
        crate::invariant!(!self.is_full(), "cold wait list past its bound");
        self.events.push(w);
    }

    /// The distinct waiting keys into `keys`, ascending, each with the time of its first
    /// waiting event (an unstable sort on (key, arrival): no allocation, same result).
    fn collect_keys(&mut self) {
        self.order.clear();
        self.order.extend(
            self.events
                .iter()
                .enumerate()
                .map(|(i, w)| (w.ev.key, i as u32, w.ts_ns)),
        );
        self.order.sort_unstable();
        self.keys.clear();
        for &(key, _, ts) in &self.order {
            if self.keys.last().is_none_or(|&(k, _)| k != key) {
                self.keys.push((key, ts));
            }
        }
    }

    /// The keys a new read must leave out, ascending: those with events in a read out. Such
    /// a key's events wait in that read's batch; when it lands they are applied (reading the
    /// key on its own if the landing left it cold), and only then may another read take the
    /// key. So no key is in two reads out, and nothing the shard writes while a read is out
    /// touches that read's keys.
    fn fill_skip(&mut self) {
        self.skip.clear();
        for i in 0..self.n_out {
            let batch = &self.out[(self.front + i) % OUT_MAX];
            self.skip.extend(batch.iter().map(|w| w.ev.key));
        }
        self.skip.sort_unstable();
        self.skip.dedup();
    }

    /// Every key with an event waiting for a read or in a read out, ascending: the spill
    /// sweep leaves them alone (their events were timed before the sweep's reference, and a
    /// read out must find what it was asked for). No work when nothing waits.
    pub fn busy_keys(&mut self) -> &[u64] {
        self.busy.clear();
        if self.len() == 0 {
            return &self.busy;
        }
        self.busy.extend(self.events.iter().map(|w| w.ev.key));
        for batch in &self.out {
            self.busy.extend(batch.iter().map(|w| w.ev.key));
        }
        self.busy.sort_unstable();
        self.busy.dedup();
        &self.busy
    }

    /// The next read's keys (`collect_keys`) and the keys it must leave out (`fill_skip`).
    pub fn plan_read(&mut self) -> (&[(u64, u64)], &[u64]) {
        self.collect_keys();
        self.fill_skip();
        (&self.keys, &self.skip)
    }

    /// The waiting events become the next read's batch (the list is empty after).
    pub fn hand_over(&mut self) {
        crate::invariant!(self.n_out < OUT_MAX, "more cold reads out than OUT_MAX");
        let slot = (self.front + self.n_out) % OUT_MAX;
        crate::invariant!(self.out[slot].is_empty(), "a free batch slot holds events");
        std::mem::swap(&mut self.events, &mut self.out[slot]);
        self.n_out += 1;
    }

    /// The oldest read's batch, taken out to be applied (`put_back_landed` returns its buffer).
    pub fn take_landed(&mut self) -> Vec<Waiting> {
        crate::invariant!(self.n_out > 0, "a cold read landed with none out");
        std::mem::take(&mut self.out[self.front])
    }

    pub fn put_back_landed(&mut self, mut batch: Vec<Waiting>) {
        batch.clear();
        self.out[self.front] = batch;
        self.front = (self.front + 1) % OUT_MAX;
        self.n_out -= 1;
    }

    /// The slot of the `i`th batch still out, oldest first (`i < reads_out()`).
    pub fn out_slot(&self, i: usize) -> usize {
        (self.front + i) % OUT_MAX
    }

    /// A batch still out, or the waiting list (`None`), taken out to sweep.
    pub fn take_list(&mut self, slot: Option<usize>) -> Vec<Waiting> {
        match slot {
            Some(i) => std::mem::take(&mut self.out[i]),
            None => std::mem::take(&mut self.events),
        }
    }

    pub fn put_list(&mut self, slot: Option<usize>, list: Vec<Waiting>) {
        match slot {
            Some(i) => self.out[i] = list,
            None => self.events = list,
        }
    }
}
