//! The shard core without sockets or threads: two cores wired by a real mesh, datagrams fed
//! as bytes, Scores collected from the sink.

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::config::Config;
use crate::infer::{build_primary, ShardModel};
use crate::route::Mesh;
use crate::wire::{EventBatchEncoder, EventIn};

type Sink = Vec<(ReplyTo, PendingScore)>;

fn client() -> SocketAddr {
    "127.0.0.1:9999".parse().unwrap()
}

fn cores(sets: &[&str]) -> (Vec<ShardCore>, Vec<Arc<ShardCounters>>) {
    cores_of(2, sets)
}

fn cores_of(shards: usize, sets: &[&str]) -> (Vec<ShardCore>, Vec<Arc<ShardCounters>>) {
    // The linear model keeps these tests free of ONNX Runtime; tests/inference.rs covers ONNX.
    let sets: Vec<String> = ["model.kind=linear"]
        .iter()
        .chain(sets)
        .map(|s| s.to_string())
        .collect();
    let config = Config::from_layers(None, &sets).unwrap();
    let counters: Vec<_> = (0..shards)
        .map(|_| Arc::new(ShardCounters::default()))
        .collect();
    let cores = Mesh::build(shards, config.route.ring_capacity)
        .into_iter()
        .enumerate()
        .map(|(id, rings)| {
            let model = ShardModel::new(&config, build_primary(&config, None).unwrap(), 1);
            ShardCore::new(
                id,
                shards,
                &config,
                rings,
                model,
                KeyedState::from_config(&config, None).unwrap(),
                0,
                counters[id].clone(),
            )
        })
        .collect();
    (cores, counters)
}

fn keys_owned_by(shard: usize, n: usize) -> Vec<u64> {
    (0u64..)
        .filter(|k| route::owner(*k, 2) == shard)
        .take(n)
        .collect()
}

/// (key, seq, feedback) events in one datagram (also the cold-wait tests').
pub(super) fn datagram(events: &[(u64, u64, bool)]) -> Vec<u8> {
    let mut enc = EventBatchEncoder::new();
    enc.encode(events.iter().map(|&(key, seq, feedback)| EventIn {
        key,
        seq,
        feedback,
        label: if feedback { 1.0 } else { -1.0 },
        amount: 10.0,
        ..EventIn::default()
    }))
    .to_vec()
}

fn feed(core: &mut ShardCore, bytes: &[u8], sink: &mut Sink) {
    let dg = Datagram {
        payload: bytes,
        src: client(),
        recv_ns: 1_000,
        truncated: false,
    };
    core.on_datagram(dg, 2_000, sink);
    core.finish_cycle(0, sink);
}

#[test]
fn events_reach_their_owner_and_every_observation_gets_one_score() {
    let (mut c, counters) = cores(&["route.ring_capacity=64"]);
    let mine = keys_owned_by(0, 3);
    let theirs = keys_owned_by(1, 3);
    let mut events = Vec::new();
    let mut seq = 0;
    for round in 0..3 {
        for &k in mine.iter().chain(&theirs) {
            events.push((k, seq, round == 1 && k == theirs[0]));
            seq += 1;
        }
    }
    let (mut s0, mut s1) = (Sink::new(), Sink::new());
    feed(&mut c[0], &datagram(&events), &mut s0);
    c[1].drain_inbound(1000, &mut s1);
    c[1].finish_cycle(0, &mut s1);

    assert_eq!(s0.len(), 9, "shard 0 scores its own 3 keys x 3");
    assert_eq!(
        s1.len(),
        8,
        "shard 1 scores its 3 keys x 3 minus one Feedback"
    );
    for (dest, p) in s0.iter().chain(&s1) {
        assert_eq!(*dest, ReplyTo::Udp(client()));
        assert!(
            route::owner(p.score.key, 2)
                == usize::from(s1.iter().any(|(_, q)| q.score.seq == p.score.seq))
        );
        assert!((0.0..=1.0).contains(&p.score.score));
        assert_eq!(p.score.model_version, 1);
        assert_eq!((p.recv_ns, p.pickup_ns), (1_000, 2_000));
    }
    // Per-key counts rise 1, 2, 3 in seq order; the Feedback did not count.
    for k in mine.iter().chain(&theirs) {
        let counts: Vec<u64> = s0
            .iter()
            .chain(&s1)
            .filter(|(_, p)| p.score.key == *k)
            .map(|(_, p)| p.score.count)
            .collect();
        let want: Vec<u64> = if *k == theirs[0] {
            vec![1, 2]
        } else {
            vec![1, 2, 3]
        };
        assert_eq!(counts, want, "key {k}");
    }
    assert_eq!(c[1].locate(theirs[0]).unwrap().unwrap().record.feedbacks, 1);
    assert_eq!(counters[0].events_routed_away.get(), 9);
    assert_eq!(counters[1].feedback_applied.get(), 1);
}

#[test]
fn full_ring_with_drop_policy_counts_each_dropped_event() {
    let (mut c, counters) = cores(&["route.ring_capacity=4", "route.full=drop"]);
    let theirs = keys_owned_by(1, 20);
    let events: Vec<_> = theirs
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, i as u64, false))
        .collect();
    let (mut s0, mut s1) = (Sink::new(), Sink::new());
    feed(&mut c[0], &datagram(&events), &mut s0);
    assert!(!c[0].is_stalled());
    assert_eq!(counters[0].events_dropped_by(DropReason::RingFull), 16);
    c[1].drain_inbound(1000, &mut s1);
    c[1].finish_cycle(0, &mut s1);
    let seqs: Vec<u64> = s1.iter().map(|(_, p)| p.score.seq).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3]);
}

#[test]
fn full_ring_with_backpressure_holds_events_in_order_until_they_fit() {
    let (mut c, counters) = cores(&["route.ring_capacity=4", "route.full=backpressure"]);
    let key = keys_owned_by(1, 1)[0];
    let events: Vec<_> = (0..20u64).map(|seq| (key, seq, false)).collect();
    let (mut s0, mut s1) = (Sink::new(), Sink::new());
    feed(&mut c[0], &datagram(&events), &mut s0);
    assert!(c[0].is_stalled(), "16 events wait for room");
    let mut rounds = 0;
    while c[0].is_stalled() || !c[1].inbound_is_empty() {
        c[1].drain_inbound(3, &mut s1);
        c[1].finish_cycle(0, &mut s1);
        c[0].retry_stalled();
        rounds += 1;
        assert!(rounds < 100);
    }
    assert_eq!(counters[0].events_dropped_by(DropReason::RingFull), 0);
    let got: Vec<(u64, u64)> = s1
        .iter()
        .map(|(_, p)| (p.score.seq, p.score.count))
        .collect();
    let want: Vec<(u64, u64)> = (0..20).map(|s| (s, s + 1)).collect();
    assert_eq!(got, want, "one key's events apply in arrival order");
}

#[test]
fn events_routed_to_a_dead_peer_are_counted_when_given_up_and_live_peers_keep_theirs() {
    let (mut c, counters) = cores_of(3, &["route.ring_capacity=4", "route.full=backpressure"]);
    let owned_by = |shard| (0u64..).find(|k| route::owner(*k, 3) == shard).unwrap();
    let (to_1, to_2) = (owned_by(1), owned_by(2));
    let events: Vec<_> = (0..10u64)
        .map(|seq| (to_1, seq, false))
        .chain((0..6u64).map(|seq| (to_2, seq, false)))
        .collect();
    let mut s0 = Sink::new();
    feed(&mut c[0], &datagram(&events), &mut s0);
    // 4 in each ring, 6 + 2 waiting.
    assert!(c[0].is_stalled());
    assert_eq!(c[0].give_up_on_dead_peers(), 0, "every peer lives");
    let mut cores = c.into_iter();
    let mut c0 = cores.next().unwrap();
    drop(cores.next()); // shard 1's thread died: its ring's consumer is gone
    let mut c2 = cores.next().unwrap();
    assert_eq!(c0.give_up_on_dead_peers(), 4 + 6);
    assert_eq!(counters[0].events_dropped_by(DropReason::ShardPanicked), 10);
    assert_eq!(c0.give_up_on_dead_peers(), 0, "counted once");
    // Shard 2's events still go through, in order.
    let mut s2 = Sink::new();
    while c0.is_stalled() || !c2.inbound_is_empty() {
        c2.drain_inbound(3, &mut s2);
        c2.finish_cycle(0, &mut s2);
        c0.retry_stalled();
    }
    let seqs: Vec<u64> = s2.iter().map(|(_, p)| p.score.seq).collect();
    assert_eq!(seqs, (0..6).collect::<Vec<_>>());
    assert_eq!(counters[0].events_dropped_by(DropReason::RingFull), 0);
}

#[test]
fn bad_datagrams_are_counted_by_reason_and_do_not_disturb_good_ones() {
    let (mut c, counters) = cores(&[]);
    let mut s = Sink::new();
    let key = keys_owned_by(0, 1)[0];
    let good = datagram(&[(key, 1, false)]);
    feed(&mut c[0], b"definitely not a flatbuffer", &mut s);
    let mut wrong = good.clone();
    wrong[4..8].copy_from_slice(b"SLSC");
    feed(&mut c[0], &wrong, &mut s);
    let cut = Datagram {
        payload: &good,
        src: client(),
        recv_ns: 0,
        truncated: true,
    };
    c[0].on_datagram(cut, 5, &mut s);
    feed(&mut c[0], &good, &mut s);
    assert_eq!(s.len(), 1);
    assert_eq!(
        counters[0].datagrams_dropped_by(DecodeError::UnknownSchema),
        2
    );
    assert_eq!(counters[0].datagrams_dropped_by(DecodeError::Oversize), 1);
    assert_eq!(counters[0].datagrams_received.get(), 4);
    assert_eq!(counters[0].events_received.get(), 1);
}

#[test]
fn full_hot_state_rejects_new_keys_with_a_count() {
    let (mut c, counters) = cores(&["state.hot_capacity=2"]);
    let keys = keys_owned_by(0, 3);
    let mut s = Sink::new();
    feed(
        &mut c[0],
        &datagram(&[
            (keys[0], 0, false),
            (keys[1], 1, false),
            (keys[2], 2, false),
            (keys[0], 3, false),
        ]),
        &mut s,
    );
    let seqs: Vec<u64> = s.iter().map(|(_, p)| p.score.seq).collect();
    assert_eq!(seqs, vec![0, 1, 3]);
    assert_eq!(counters[0].events_dropped_by(DropReason::StateFull), 1);
}

#[test]
fn micro_batches_are_capped_and_give_the_same_scores() {
    let key = keys_owned_by(0, 1)[0];
    let events: Vec<_> = (0..10u64).map(|seq| (key, seq, false)).collect();
    let mut results = Vec::new();
    for cap in [
        "infer.batch_max=1",
        "infer.batch_max=3",
        "infer.batch_max=64",
    ] {
        let (mut c, _) = cores(&[cap]);
        let mut s = Sink::new();
        feed(&mut c[0], &datagram(&events), &mut s);
        results.push(
            s.iter()
                .map(|(_, p)| (p.score.seq, p.score.score.to_bits()))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(results[0].len(), 10);
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}

#[test]
fn a_stalled_receive_pass_stays_within_the_preallocated_stall_queue() {
    let (mut c, _) = cores(&[
        "route.ring_capacity=1",
        "route.full=backpressure",
        "ingest.udp.batch_datagrams_max=4",
        "wire.batch_events_max=8",
        "wire.tables_max=9",
    ]);
    let theirs = keys_owned_by(1, 8);
    let capacity = c[0].stalled.capacity();
    let mut s0 = Sink::new();
    // A whole receive pass of full datagrams arrives after the first stall.
    for d in 0..4u64 {
        let events: Vec<_> = theirs
            .iter()
            .enumerate()
            .map(|(i, &k)| (k, d * 8 + i as u64, false))
            .collect();
        feed(&mut c[0], &datagram(&events), &mut s0);
    }
    assert_eq!(
        c[0].stalled.len(),
        31,
        "one event fit the ring, the rest wait"
    );
    assert_eq!(
        c[0].stalled.capacity(),
        capacity,
        "the stall queue never reallocates"
    );
}

fn at(key: u64, seq: u64, ts_ns: u64) -> Vec<u8> {
    stamped(&[(key, seq, ts_ns)])
}

/// (key, seq, event time) Observations in one batch.
fn stamped(events: &[(u64, u64, u64)]) -> Vec<u8> {
    let mut enc = EventBatchEncoder::new();
    enc.encode(events.iter().map(|&(key, seq, ts_ns)| EventIn {
        key,
        seq,
        ts_ns,
        amount: 10.0,
        ..EventIn::default()
    }))
    .to_vec()
}

#[test]
fn events_older_than_the_watermark_follow_the_late_policy() {
    const SEC: u64 = 1_000_000_000;
    let k = keys_owned_by(0, 2);
    for (policy, scored, dropped, applied_late) in [("drop", 3, 1, 0), ("apply", 4, 0, 1)] {
        let (mut c, counters) = cores(&[
            "time.mode=event",
            "time.allowed_lateness_ms=2000",
            &format!("time.late={policy}"),
        ]);
        let mut s = Sink::new();
        feed(&mut c[0], &at(k[0], 0, 100 * SEC), &mut s);
        // 1.5 s out of order: within the lateness, counted in its own window.
        feed(&mut c[0], &at(k[1], 0, 98_500_000_000), &mut s);
        // 3 s behind the newest event: past the watermark (100 s - 2 s).
        feed(&mut c[0], &at(k[1], 1, 97 * SEC), &mut s);
        feed(&mut c[0], &at(k[0], 1, 101 * SEC), &mut s);
        assert_eq!(s.len(), scored, "{policy}");
        assert_eq!(
            counters[0].events_dropped_by(DropReason::Late),
            dropped,
            "{policy}"
        );
        assert_eq!(counters[0].late_applied.get(), applied_late, "{policy}");
        let late_key = c[0].locate(k[1]).unwrap().unwrap().record;
        if policy == "apply" {
            // Applied at the watermark, not at its own (older) time.
            assert_eq!(
                (late_key.observations, late_key.last_event_ns),
                (2, 98_500_000_000)
            );
        } else {
            assert_eq!(late_key.observations, 1);
        }
    }
}

#[test]
fn processing_time_ignores_the_producers_clock() {
    let (mut c, _) = cores(&["time.mode=processing"]);
    let k = keys_owned_by(0, 1)[0];
    let mut s = Sink::new();
    // A producer timestamp far in the past is not late in processing time: the receive time
    // (1000 ns in `feed`) is what the state sees.
    feed(&mut c[0], &at(k, 0, 5), &mut s);
    feed(&mut c[0], &at(k, 1, 3), &mut s);
    let r = c[0].locate(k).unwrap().unwrap().record;
    assert_eq!((s.len(), r.observations, r.last_event_ns), (2, 2, 1_000));
}

#[test]
fn replays_are_dropped_and_counted_with_dedup_on() {
    let (mut c, counters) = cores(&["state.dedup=true"]);
    let k = keys_owned_by(0, 1)[0];
    let mut s = Sink::new();
    for seq in [0, 1, 1, 0, 2] {
        feed(&mut c[0], &at(k, seq, 0), &mut s);
    }
    let counts: Vec<u64> = s.iter().map(|(_, p)| p.score.count).collect();
    assert_eq!(counts, vec![1, 2, 3]);
    assert_eq!(counters[0].events_dropped_by(DropReason::Duplicate), 2);
}

fn record(value: &[u8], source: u64, reply: u32) -> KafkaRecord<'_> {
    KafkaRecord {
        value,
        source,
        timestamp_ns: 5_000_000_000,
        fetched_ns: 5_000_000_100,
        reply,
    }
}

#[test]
fn a_kafka_record_is_applied_by_the_shard_that_owns_its_partition_with_no_ring_hop() {
    let (mut c, counters) = cores(&[]);
    // Keys of both hash owners: all applied here, none routed.
    let keys = [keys_owned_by(0, 2), keys_owned_by(1, 2)].concat();
    let events: Vec<_> = keys.iter().map(|&k| (k, 1, false)).collect();
    let mut s = Sink::new();
    assert!(c[0]
        .on_record(&record(&datagram(&events), 9, 3), &mut s)
        .is_ok());
    c[0].finish_cycle(0, &mut s);
    assert_eq!(s.len(), 4);
    assert!(s.iter().all(|(to, _)| *to == ReplyTo::Kafka(3)));
    assert!(s.iter().all(|(_, p)| p.score.count == 1));
    // The record's timestamp stands for the receive time; the fetch for the pickup.
    assert!(s
        .iter()
        .all(|(_, p)| p.recv_ns == 5_000_000_000 && p.pickup_ns == 5_000_000_100));
    assert_eq!(counters[0].events_routed_away.get(), 0);
    assert_eq!(counters[0].kafka_records.get(), 1);
    assert!(c[1].inbound_is_empty());
}

#[test]
fn a_bad_kafka_record_is_skipped_and_counted_and_a_key_stays_with_its_partition() {
    let (mut c, counters) = cores(&[]);
    let mut s = Sink::new();
    assert!(c[0]
        .on_record(&record(b"not an EventBatch", 9, 0), &mut s)
        .is_err());
    assert_eq!(
        c[0].on_record(&record(&[], 9, 1), &mut s),
        Err(crate::wire::DecodeError::TooShort)
    );
    let skipped: u64 = crate::wire::DecodeError::ALL
        .iter()
        .map(|e| counters[0].records_skipped_by(*e))
        .sum();
    assert_eq!(skipped, 2);
    assert_eq!(counters[0].kafka_records.get(), 0);
    // Key 42 first arrives from partition tag 9; the same key from tag 10 is refused.
    assert!(c[0]
        .on_record(&record(&datagram(&[(42, 1, false)]), 9, 2), &mut s)
        .is_ok());
    assert!(c[0]
        .on_record(&record(&datagram(&[(42, 2, false)]), 10, 3), &mut s)
        .is_ok());
    assert!(c[0]
        .on_record(&record(&datagram(&[(42, 3, false)]), 9, 4), &mut s)
        .is_ok());
    c[0].finish_cycle(0, &mut s);
    let counts: Vec<(ReplyTo, u64)> = s.iter().map(|(to, p)| (*to, p.score.count)).collect();
    assert_eq!(counts, [(ReplyTo::Kafka(2), 1), (ReplyTo::Kafka(4), 2)]);
    assert_eq!(
        counters[0].events_dropped_by(DropReason::KeyOnTwoPartitions),
        1
    );
}

/// Scores and refusals as the core hands them to its sink.
#[derive(Default)]
struct Refusals {
    scores: Sink,
    refused: Vec<(ReplyTo, u64, u64, DropReason)>,
}

impl ScoreSink for Refusals {
    fn emit(&mut self, reply_to: ReplyTo, s: PendingScore) {
        self.scores.push((reply_to, s));
    }
    fn refused(&mut self, reply_to: ReplyTo, ev: &RoutedEvent, reason: DropReason) {
        self.refused.push((reply_to, ev.key, ev.seq, reason));
    }
}

#[test]
fn refused_events_reach_the_sink_with_their_record_and_reason_and_replays_do_not() {
    const SEC: u64 = 1_000_000_000;
    let (mut c, counters) = cores(&[
        "time.mode=event",
        "time.allowed_lateness_ms=2000",
        "time.late=drop",
        "state.hot_capacity=2",
        "state.dedup=true",
    ]);
    let [k1, k2, k3] = [1u64, 2, 3];
    let batch = stamped;
    let mut s = Refusals::default();
    let records: [(Vec<u8>, u64); 4] = [
        // Two keys fill the hot state.
        (batch(&[(k1, 1, 100 * SEC), (k2, 1, 100 * SEC)]), 9),
        // A third key finds no room; k1's seq 1 again is a replay (applied before: no refusal).
        (batch(&[(k3, 1, 100 * SEC), (k1, 1, 100 * SEC)]), 9),
        // k1 lives with partition tag 9.
        (batch(&[(k1, 2, 100 * SEC)]), 10),
        // 3 s behind the newest event: past the watermark.
        (batch(&[(k2, 2, 97 * SEC)]), 9),
    ];
    for (reply, (value, tag)) in records.iter().enumerate() {
        assert!(c[0]
            .on_record(&record(value, *tag, reply as u32), &mut s)
            .is_ok());
    }
    c[0].finish_cycle(0, &mut s);
    assert_eq!(
        s.refused,
        [
            (ReplyTo::Kafka(1), k3, 1, DropReason::StateFull),
            (ReplyTo::Kafka(2), k1, 2, DropReason::KeyOnTwoPartitions),
            (ReplyTo::Kafka(3), k2, 2, DropReason::Late),
        ]
    );
    assert_eq!(counters[0].events_dropped_by(DropReason::Duplicate), 1);
    for (_, _, _, reason) in &s.refused {
        assert_eq!(counters[0].events_dropped_by(*reason), 1, "{reason:?}");
    }
    let scored: Vec<(u64, u64)> = s
        .scores
        .iter()
        .map(|(_, p)| (p.score.key, p.score.seq))
        .collect();
    assert_eq!(scored, [(k1, 1), (k2, 1)]);
}

#[test]
fn a_datagram_that_waited_past_shed_after_is_dropped_unread_and_counted() {
    let (mut c, counters) = cores(&["ingest.udp.shed_after_ms=5"]);
    let k = keys_owned_by(0, 1)[0];
    let mut sink = Sink::new();
    let at = |recv_ns: u64, seq: u64, pickup_ns: u64, core: &mut ShardCore, sink: &mut Sink| {
        let bytes = datagram(&[(k, seq, false)]);
        let dg = Datagram {
            payload: &bytes,
            src: client(),
            recv_ns,
            truncated: false,
        };
        core.on_datagram(dg, pickup_ns, sink);
        core.finish_cycle(pickup_ns, sink);
    };
    let ms = 1_000_000;
    at(100 * ms, 0, 105 * ms, &mut c[0], &mut sink); // waited exactly 5 ms: served
    at(100 * ms, 1, 106 * ms, &mut c[0], &mut sink); // 6 ms: shed
    at(0, 2, 900 * ms, &mut c[0], &mut sink); // no kernel timestamp: never shed
    at(200 * ms, 3, 190 * ms, &mut c[0], &mut sink); // stamped after pickup: fresh
    let seqs: Vec<u64> = sink.iter().map(|(_, p)| p.score.seq).collect();
    assert_eq!(seqs, [0, 2, 3]);
    assert_eq!(counters[0].datagrams_shed.get(), 1);
    assert_eq!(counters[0].datagrams_received.get(), 4);
    assert_eq!(
        counters[0].events_received.get(),
        3,
        "the shed one was not decoded"
    );
    // State saw three observations of the key: the shed event was never applied.
    assert_eq!(sink.last().map(|(_, p)| p.score.count), Some(3));

    let (mut off, counters) = cores(&["ingest.udp.shed_after_ms=0"]);
    at(0, 0, u64::MAX / 2, &mut off[0], &mut Sink::new());
    at(1, 1, u64::MAX / 2, &mut off[0], &mut Sink::new());
    assert_eq!(counters[0].datagrams_shed.get(), 0, "0 = never shed");
}
