//! When a producer has delivery reports (or an error) to serve, so that the shard polls it
//! only then. A poll takes the producer's reply queue lock, which librdkafka's broker thread
//! also takes to append each report: a shard that polled every turn took it thousands of
//! times a second for nothing (bench/README.md, "What the shard waits on"), and waited
//! whenever the lock's holder was off its CPU.
//!
//! The facts used: librdkafka calls the queue's callback, under the queue's lock, whenever it
//! appends to the *empty* queue (as on the consumer's queue, `ingest::kafka::arrival`), and
//! the queue's length says whether anything is left. So once a look left the queue empty (its
//! length read 0 after the flag was cleared), every later entry comes with the callback, and
//! until it does the shard takes no lock. At least every `IDLE_POLL_EVERY_NS` it polls anyway
//! (a safety net, as the consumer does).

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::producer::Producer;

use super::ScoreProducer;

/// The longest a producer goes unpolled while its reply queue is known empty.
const IDLE_POLL_EVERY_NS: u64 = 100_000_000;

/// Events served in one turn at most; the rest the next turn. One event may hold many
/// records' reports (librdkafka reports a produce request's records together).
pub const EVENTS_PER_TURN_MAX: usize = 64;

/// What the shard knows of a reply queue, apart from the queue itself.
#[derive(Default)]
pub struct Watch {
    /// Set by librdkafka's thread when it appends to the empty queue; cleared by the shard
    /// before it looks. Behind a pointer: the callback holds its address.
    appended: Arc<AtomicBool>,
    /// The last look left the queue empty (its length read 0 after `appended` was cleared).
    drained: bool,
    /// Look at least by then (CLOCK_REALTIME ns).
    poll_due_ns: u64,
}

impl Watch {
    /// Nothing to serve: known empty, nothing appended since, and the safety net not due.
    pub fn idle(&self, now_ns: u64) -> bool {
        self.drained && !self.appended.load(Ordering::Acquire) && now_ns < self.poll_due_ns
    }

    /// Unless idle: `poll` (serves one event, if any) until `waiting` (the queue's length)
    /// says the queue is empty, up to `EVENTS_PER_TURN_MAX` polls. Returns the polls made.
    pub fn serve(
        &mut self,
        now_ns: u64,
        mut poll: impl FnMut(),
        waiting: impl Fn() -> u64,
    ) -> usize {
        if self.idle(now_ns) {
            return 0;
        }
        self.poll_due_ns = now_ns.saturating_add(IDLE_POLL_EVERY_NS);
        // Cleared before looking: an entry appended to the empty queue after this sets it
        // again. (The queue's lock, taken by the poll and the length read, orders this store
        // before librdkafka's next callback.)
        self.appended.store(false, Ordering::Relaxed);
        self.drained = false;
        for polls in 1..=EVENTS_PER_TURN_MAX {
            poll();
            if waiting() == 0 {
                self.drained = true;
                return polls;
            }
        }
        EVENTS_PER_TURN_MAX
    }
}

/// A producer's reply queue, watched. Declared before the producers in its owner, so it is
/// dropped (and its callback disabled) while its producer is alive.
pub struct ReportQueue {
    queue: *mut rd::rd_kafka_queue_t,
    watch: Watch,
}

// SAFETY: librdkafka queue handles may be used from any thread (every operation takes the
// queue's own lock), and the flag is an atomic. The shard thread alone uses this one.
unsafe impl Send for ReportQueue {}

unsafe extern "C" fn on_append_to_empty(_: *mut rd::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the address of a `Watch::appended` whose `ReportQueue` is alive:
    // its `Drop` disables this callback (under the queue's lock, which this runs under)
    // before the flag is freed.
    let appended = unsafe { &*(opaque as *const AtomicBool) };
    appended.store(true, Ordering::Release);
}

impl ReportQueue {
    /// Watches `producer`'s main queue, where the crate's `poll` serves delivery reports,
    /// errors and logs. None if librdkafka gives no queue (then the shard polls every turn).
    pub fn of(producer: &ScoreProducer) -> Option<Self> {
        // SAFETY: the client handle is valid while `producer` is borrowed; the call returns a
        // new reference to its main queue (or NULL), which `Drop` releases.
        let queue = unsafe { rd::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        if queue.is_null() {
            return None;
        }
        let watch = Watch::default();
        // SAFETY: `queue` is live; the opaque is the boxed flag's address, valid until `Drop`
        // disables the callback. The crate sets no callback on a producer's main queue (it
        // polls it), so none is replaced.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(
                queue,
                Some(on_append_to_empty),
                &*watch.appended as *const AtomicBool as *mut c_void,
            )
        };
        Some(Self { queue, watch })
    }

    #[cfg(test)]
    pub fn idle(&self, now_ns: u64) -> bool {
        self.watch.idle(now_ns)
    }

    /// Serves `producer`'s waiting events, if any may wait (`Watch::serve`). `producer` must
    /// be the one this queue came from.
    pub fn serve(&mut self, producer: &ScoreProducer, now_ns: u64) -> usize {
        let queue = self.queue;
        self.watch.serve(
            now_ns,
            // With a zero timeout the crate's poll serves at most one event.
            || producer.poll(Duration::ZERO),
            // SAFETY: `queue` is a live queue reference (released only in `Drop`); the call
            // takes the queue's lock and reads its count.
            || unsafe { rd::rd_kafka_queue_length(queue) as u64 },
        )
    }
}

impl Drop for ReportQueue {
    fn drop(&mut self) {
        // SAFETY: `self.queue` came from rd_kafka_queue_get_main and is released once, here,
        // while its producer is alive (its owner drops this first). Disabling the callback
        // takes the queue's lock, so none is running on the flag when it is freed after this.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(self.queue, None, std::ptr::null_mut());
            rd::rd_kafka_queue_destroy(self.queue);
        }
    }
}

#[cfg(test)]
#[path = "reports_tests.rs"]
mod tests;
