//! When a polled record became available to the shard, bounded from below, so that "record
//! fetched -> Score handed to the producer" can be measured without trusting the cycle.
//!
//! librdkafka's consumer API gives no time a record reached the process (a fetched message
//! carries the broker's timestamp only). What the shard can observe, and what each fact says:
//! 1. The consumer queue's empty -> non-empty callback. librdkafka runs it under the queue's
//!    lock while it appends to the empty queue, so its clock reading comes before any of those
//!    records can be polled; and every record in the queue came with that append or a later
//!    one (the queue has not been empty since). So a record polled after loading the latest
//!    such time was not available before it.
//! 2. The queue's length, read at a cycle's start after a clock reading `t`: the entries
//!    beyond that many were appended after `t`.
//!
//! The queue is FIFO, so availability never decreases along the poll order and a record's
//! bound is the latest fact that covers it: a running maximum. Every shortcut here errs the
//! same way: a fact left out (the list below full), an entry counted in the queue's length
//! that is not a record (an error or a rebalance event), a callback time loaded before the
//! callback ran: each only moves a bound earlier, so a wait measured from it is never
//! understated. (The cycle's own start, used before, understated it: the records that waited
//! in librdkafka's queue while the shard was busy or parked were not counted.)

use std::collections::VecDeque;

/// Queue-length facts kept until the poll order reaches them: enough for a backlog of
/// `PENDING_MAX` cycles; past that a fact is dropped (its records keep an earlier bound).
pub const PENDING_MAX: usize = 64;

pub struct ArrivalBound {
    /// Entries (records and errors) polled so far: the poll-order index of the next one.
    polled: u64,
    /// No entry polled from here on became available before this (ns, the clock the caller
    /// gives: CLOCK_REALTIME in the service).
    floor_ns: u64,
    /// Facts not reached yet, oldest first: entries from index `.0` on became available after
    /// `.1`. Both fields increase along the list; allocated once, never past `PENDING_MAX`.
    pending: VecDeque<(u64, u64)>,
}

impl ArrivalBound {
    /// `start_ns`: when the consumer was made (nothing was in its queue before).
    pub fn new(start_ns: u64) -> Self {
        Self {
            polled: 0,
            floor_ns: start_ns,
            pending: VecDeque::with_capacity(PENDING_MAX),
        }
    }

    /// A cycle's start: the queue held `queued` entries when its length was read, after the
    /// clock read `read_after_ns`.
    pub fn queue_length(&mut self, read_after_ns: u64, queued: u64) {
        let from = self.polled + queued;
        // A reading that counts no more entries than an earlier fact (entries that were not
        // records left the queue meanwhile; or nothing moved) is later and covers as much:
        // it supersedes that fact.
        while self.pending.back().is_some_and(|&(at, _)| at >= from) {
            self.pending.pop_back();
        }
        if self.pending.len() < PENDING_MAX {
            self.pending.push_back((from, read_after_ns));
        }
    }

    /// The poll just made returned an entry. `appended_ns` is the empty -> non-empty callback's
    /// time as loaded *before* that poll (0 when no callback is set): the entry was in the
    /// queue's current run of appends then, or came later. Returns the entry's bound: it was
    /// not available to the shard before it.
    pub fn polled(&mut self, appended_ns: u64) -> u64 {
        self.floor_ns = self.floor_ns.max(appended_ns);
        while let Some(&(_, t)) = self.pending.front().filter(|&&(at, _)| at <= self.polled) {
            self.floor_ns = self.floor_ns.max(t);
            self.pending.pop_front();
        }
        self.polled += 1;
        self.floor_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_fetch_into_an_empty_queue_is_bounded_by_its_append() {
        let mut b = ArrivalBound::new(100);
        b.queue_length(150, 0);
        // Three records appended at 200 (the callback's time); the shard wakes at 260.
        b.queue_length(260, 3);
        assert_eq!([b.polled(200), b.polled(200), b.polled(200)], [200; 3]);
        // The next fetch at 300, polled with the callback's time loaded before it ran: the
        // bound falls back on the length read at 260 (three, all polled since).
        b.queue_length(320, 1);
        assert_eq!(b.polled(200), 260);
    }

    #[test]
    fn a_backlog_is_bounded_by_the_cycle_that_first_saw_each_record() {
        let mut b = ArrivalBound::new(0);
        // Cycle 1 at t=10 sees 4 entries (appended at 5) and takes 2.
        b.queue_length(10, 4);
        assert_eq!([b.polled(5), b.polled(5)], [5, 5]);
        // Cycle 2 at t=20 sees 5: 2 left from before, 3 appended after t=10.
        b.queue_length(20, 5);
        assert_eq!([b.polled(5), b.polled(5)], [5, 5]);
        assert_eq!([b.polled(5), b.polled(5), b.polled(5)], [10, 10, 10]);
    }

    #[test]
    fn a_later_length_that_counts_fewer_entries_supersedes() {
        let mut b = ArrivalBound::new(0);
        // At 10: five entries, one of them an event the shard never sees.
        b.queue_length(10, 5);
        b.polled(0);
        // At 20, after that event left unseen: three, the records 1..=3 still waiting.
        b.queue_length(20, 3);
        assert_eq!([b.polled(0), b.polled(0), b.polled(0)], [0; 3]);
        assert_eq!(b.polled(0), 20);
    }

    #[test]
    fn an_empty_queue_bounds_what_comes_next() {
        let mut b = ArrivalBound::new(0);
        b.queue_length(10, 2);
        b.queue_length(30, 0);
        assert_eq!(b.polled(0), 30);
    }

    /// What the simulated queue and shard do, one step at a time.
    #[derive(Debug, Clone)]
    enum Step {
        /// librdkafka appends this many records (after an entry the shard never sees, when
        /// `hidden`: one BaseConsumer::poll serves itself, counted in the queue's length).
        Append(u8, bool),
        /// A cycle: read the clock, then the queue's length, then poll up to this many.
        Cycle(u8),
        /// The next cycle is preempted and an append lands: between its clock reading and
        /// its length reading (`true`), or between loading the callback's time and polling.
        AppendMidCycle(u8, bool),
        Tick(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u8..8, any::<bool>()).prop_map(|(n, hidden)| Step::Append(n, hidden)),
            (1u8..6).prop_map(Step::Cycle),
            (1u8..4, any::<bool>()).prop_map(|(n, at)| Step::AppendMidCycle(n, at)),
            (1u8..20).prop_map(Step::Tick),
        ]
    }

    /// The queue: Some(append time) per record, None for an entry the shard never sees. The
    /// callback's time is set when an append finds it empty.
    fn append(queue: &mut VecDeque<Option<u64>>, n: u8, hidden: bool, now: u64, cb: &mut u64) {
        if queue.is_empty() {
            *cb = now;
        }
        if hidden {
            queue.push_back(None);
        }
        queue.extend(std::iter::repeat_n(Some(now), usize::from(n)));
    }

    proptest! {
        /// Whatever the interleaving, no record's bound is later than the time it became
        /// pollable; and the first record after the queue was found empty, polled with the
        /// callback time of the append that brought it, is bounded exactly.
        #[test]
        fn never_later_than_the_append(steps in proptest::collection::vec(step(), 1..200)) {
            let mut now = 1u64;
            let mut queue = VecDeque::new();
            let mut callback_ns = 0u64;
            let mut b = ArrivalBound::new(0);
            let mut mid_cycle = None;
            let mut saw_empty = false;
            for s in steps {
                now += 1;
                match s {
                    Step::Append(n, hidden) => append(&mut queue, n, hidden, now, &mut callback_ns),
                    Step::AppendMidCycle(n, at_length) => mid_cycle = Some((n, at_length)),
                    Step::Tick(t) => now += u64::from(t),
                    Step::Cycle(max) => {
                        let read_at = now;
                        now += 1;
                        if let Some((n, true)) = mid_cycle {
                            append(&mut queue, n, false, now, &mut callback_ns);
                            mid_cycle = None;
                        }
                        b.queue_length(read_at, queue.len() as u64);
                        for i in 0..max {
                            now += 1;
                            let loaded = callback_ns;
                            if let (1, Some((n, false))) = (i, mid_cycle) {
                                now += 1;
                                append(&mut queue, n, false, now, &mut callback_ns);
                                mid_cycle = None;
                            }
                            while queue.front() == Some(&None) {
                                queue.pop_front();
                            }
                            let Some(Some(at)) = queue.pop_front() else {
                                saw_empty = true;
                                break;
                            };
                            let bound = b.polled(loaded);
                            prop_assert!(bound <= at, "bound {} after the append at {}", bound, at);
                            if saw_empty && loaded == at {
                                prop_assert_eq!(bound, at);
                            }
                            saw_empty = false;
                        }
                    }
                }
            }
        }
    }
}
