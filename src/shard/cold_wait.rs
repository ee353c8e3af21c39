//! Events waiting for their key's cold record (larger-than-memory state). An event on a key
//! that is not hot waits here instead of reading the spill store on arrival, so the events
//! behind it on hot keys are served without that read; at the cycle's end (or when the list
//! is full) the owner hands every waiting key to one batched read (`cold_reader`) and, when
//! it is back, applies the events that waited for it in arrival order. A key with an event
//! waiting is not hot, so every later event on it waits too: per-key order is kept. While a
//! read is out (`state.cold_reader = thread`) its events wait in `out`, and new misses in
//! `events` for the next read; when it lands, the new ones whose keys it brought in go next.
//! Bounded by `state.cold_wait_max` each.

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
    pub events: Vec<Waiting>,
    /// The events of the read that is out, in arrival order.
    pub out: Vec<Waiting>,
    /// (key, arrival index, ts) of each event, sorted into the distinct keys of a read.
    order: Vec<(u64, u32, u64)>,
    /// The read's distinct keys, ascending, each with its first event's time.
    pub keys: Vec<(u64, u64)>,
}

impl ColdWait {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            events: Vec::with_capacity(max),
            out: Vec::with_capacity(max),
            order: Vec::with_capacity(max),
            keys: Vec::with_capacity(max),
        }
    }

    pub fn is_on(&self) -> bool {
        self.max > 0
    }

    pub fn is_full(&self) -> bool {
        self.events.len() >= self.max
    }

    /// Events waiting, for the next read or the one out.
    pub fn len(&self) -> usize {
        self.events.len() + self.out.len()
    }

    pub fn push(&mut self, w: Waiting) {
        crate::invariant!(!self.is_full(), "cold wait list past its bound");
        self.events.push(w);
    }

    /// The distinct waiting keys into `keys`, ascending, each with the time of its first
    /// waiting event (an unstable sort on (key, arrival): no allocation, same result).
    pub fn collect_keys(&mut self) {
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
}
