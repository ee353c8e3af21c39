//! The length of a consumer's queue (librdkafka's count of fetched records and events waiting
//! to be polled), which the crate does not expose: read at a cycle's start after a poll that
//! left entries (for `ArrivalBound`), and after a poll that found none, to confirm it.

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

/// A reference to a consumer's queue, released on drop. It must be dropped before the
/// consumer (a field declared before the consumer's in its owner).
pub struct ConsumerQueue(*mut rd::rd_kafka_queue_t);

// SAFETY: librdkafka queue handles may be used from any thread (every operation takes the
// queue's own lock); this one is only read and released.
unsafe impl Send for ConsumerQueue {}

impl ConsumerQueue {
    /// None when the consumer has no consumer queue (no `group.id`: sluice always sets one).
    pub fn of<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<Self> {
        // SAFETY: the client handle is valid while `consumer` is borrowed; the call returns a
        // new reference to the queue (or NULL), which `Drop` releases.
        let q = unsafe { rd::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        (!q.is_null()).then_some(Self(q))
    }

    /// Entries waiting (one per fetched record, plus any error or rebalance event).
    pub fn waiting(&self) -> u64 {
        // SAFETY: `self.0` is a live queue reference (released only in `Drop`); the call takes
        // the queue's lock and reads its count.
        unsafe { rd::rd_kafka_queue_length(self.0) as u64 }
    }
}

impl Drop for ConsumerQueue {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from rd_kafka_queue_get_consumer and is released once, here,
        // while its consumer is still alive (its owner drops this first).
        unsafe { rd::rd_kafka_queue_destroy(self.0) }
    }
}
