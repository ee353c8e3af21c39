use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::BaseRecord;
use rdkafka::ClientConfig;

use super::*;
use crate::egress::kafka::DeliveryCounter;
use crate::metrics::ShardCounters;

/// A queue of `len` entries: each poll serves one.
fn looked(w: &mut Watch, now_ns: u64, len: &Cell<u64>) -> usize {
    w.serve(
        now_ns,
        || len.set(len.get().saturating_sub(1)),
        || len.get(),
    )
}

#[test]
fn a_queue_known_empty_is_not_polled_until_an_append_or_the_safety_net() {
    let mut w = Watch::default();
    let len = Cell::new(0);
    // The first look polls once and finds it empty.
    assert_eq!(looked(&mut w, 10, &len), 1);
    assert!(w.idle(11));
    assert_eq!(looked(&mut w, 11, &len), 0);
    // An entry appended to the empty queue sets the flag: the next turn serves it.
    len.set(1);
    w.appended.store(true, Ordering::Release);
    assert!(!w.idle(12));
    assert_eq!(looked(&mut w, 12, &len), 1);
    assert_eq!(len.get(), 0);
    assert!(w.idle(13));
    // Nothing appended: polled again only when the safety net is due.
    assert!(w.idle(12 + IDLE_POLL_EVERY_NS - 1));
    assert_eq!(looked(&mut w, 12 + IDLE_POLL_EVERY_NS, &len), 1);
}

#[test]
fn entries_left_by_a_turn_are_served_the_next_without_a_callback() {
    let mut w = Watch::default();
    let len = Cell::new(EVENTS_PER_TURN_MAX as u64 + 5);
    assert_eq!(looked(&mut w, 1, &len), EVENTS_PER_TURN_MAX);
    assert_eq!(len.get(), 5);
    // No append to an empty queue happened (it never was): no flag, yet not idle.
    assert!(!w.idle(2));
    assert_eq!(looked(&mut w, 2, &len), 5);
    assert!(w.idle(3));
}

#[test]
fn an_entry_appended_while_the_shard_looks_keeps_the_queue_watched() {
    let mut w = Watch::default();
    let len = Cell::new(1);
    // The poll serves the one entry; librdkafka appends another (to the now empty queue,
    // callback included) before the length is read.
    let appended = w.appended.clone();
    let polls = w.serve(
        1,
        || {
            len.set(1);
            appended.store(true, Ordering::Release);
        },
        || len.get(),
    );
    // The length said 1: not drained; the turn polled until its cap.
    assert_eq!(polls, EVENTS_PER_TURN_MAX);
    assert!(!w.idle(2));
}

/// A real producer whose broker does not answer: its record's delivery report (a failure, at
/// `message.timeout.ms`) lands in the watched queue, which the shard learns of through
/// librdkafka's callback alone (the clock given never makes the safety net due).
#[test]
fn a_delivery_report_is_served_when_librdkafka_appends_it_and_not_polled_for_before() {
    let counters = Arc::new(ShardCounters::default());
    let producer: ScoreProducer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:1")
        .set("message.timeout.ms", "300")
        .set("reconnect.backoff.max.ms", "100")
        .create_with_context(DeliveryCounter::new(counters))
        .expect("a producer needs no broker to be made");
    let mut q = ReportQueue::of(&producer).expect("a producer has a main queue");
    // The first look finds nothing (or a connection error already) and leaves it drained.
    assert!(q.serve(&producer, 0) >= 1);
    let slot = 0;
    producer.context().handing(slot, 3);
    producer
        .send(
            BaseRecord::with_opaque_to("t", slot)
                .payload(&b"abc"[..])
                .key(&b"k"[..]),
        )
        .map_err(|(e, _)| e)
        .expect("queued");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut served = 0;
    while producer.context().undelivered() == 0 {
        assert!(
            Instant::now() < deadline,
            "no delivery report came through the watch"
        );
        if q.idle(1) {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        // Only after librdkafka appended something (a report, or an error or log event).
        assert!(q.serve(&producer, 1) >= 1);
        served += 1;
    }
    assert!(served >= 1);
    assert_eq!(producer.context().bytes_in_flight(), 0);
    assert_eq!(producer.in_flight_count(), 0);
    drop(q);
}
