//! The replay against the shard's own core: the same records through `ShardCore::on_record`
//! and through `Replay` leave the same partition state.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::egress::{PendingScore, ReplyTo};
use crate::infer::{build_primary, ShardModel};
use crate::metrics::ShardCounters;
use crate::route::Mesh;
use crate::shard::{KafkaRecord, ShardCore};
use crate::state::{KeyedState, Record};
use crate::wire::{EventBatchEncoder, EventIn};

const TAG: u64 = 1 + 7;

fn config(sets: &[&str]) -> Config {
    let sets: Vec<String> = ["model.kind=linear"]
        .iter()
        .chain(sets)
        .map(|s| s.to_string())
        .collect();
    Config::from_layers(None, &sets).unwrap()
}

/// One shard of one, so every key of the records is applied here.
fn core(config: &Config) -> ShardCore {
    let rings = Mesh::build(1, config.route.ring_capacity).pop().unwrap();
    let model = ShardModel::new(config, build_primary(config, None).unwrap(), 1);
    ShardCore::new(
        0,
        1,
        config,
        rings,
        model,
        KeyedState::from_config(config, None).unwrap(),
        0,
        Arc::new(ShardCounters::default()),
    )
}

/// A partition's input: records of 1-4 events over 40 keys, seqs that sometimes repeat,
/// Feedback now and then, event times that mostly rise but jump back by up to 3 s (some past
/// a 1 s lateness), gaps up to 40 s (past a TTL of 30 s), and a malformed record
/// every 50th. (value, timestamp ns) pairs.
fn input(records: usize, mut x: u64) -> Vec<(Vec<u8>, u64)> {
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut enc = EventBatchEncoder::new();
    let mut seqs = [0u64; 40];
    let mut t = 1_000_000_000_000u64;
    let mut out = Vec::with_capacity(records);
    for i in 0..records {
        t += next() % 4_000_000_000;
        if next() % 30 == 0 {
            t += 40_000_000_000;
        }
        if i % 50 == 49 {
            out.push((b"not an EventBatch".to_vec(), t));
            continue;
        }
        let n = 1 + next() % 4;
        let events: Vec<EventIn> = (0..n)
            .map(|_| {
                let key = next() % 40;
                let s = &mut seqs[key as usize];
                if next() % 8 != 0 {
                    *s += 1;
                }
                EventIn {
                    key,
                    seq: *s,
                    ts_ns: t.saturating_sub(next() % 3_000_000_000),
                    feedback: next() % 5 == 0,
                    amount: (next() % 1000) as f32 / 10.0,
                    label: if next() % 2 == 0 { 1.0 } else { 0.0 },
                    features: &[],
                }
            })
            .collect();
        out.push((enc.encode(events.into_iter()).to_vec(), t));
    }
    out
}

/// key -> (head without its flags, window words): what two states must agree on.
fn records(image: &[u8], words: usize) -> BTreeMap<u64, (Record, Vec<u64>)> {
    let size = crate::state::image_bytes(words);
    assert_eq!(image.len() % size, 0);
    image
        .chunks_exact(size)
        .map(|img| {
            let mut w = vec![0u64; words];
            let mut rec = Record::read_image(img, &mut w).unwrap();
            rec.flags = 0;
            (rec.key, (rec, w))
        })
        .collect()
}

fn check(sets: &[&str], seed: u64) {
    let config = config(sets);
    let records_in = input(600, seed);
    let mut shard = core(&config);
    let mut sink: Vec<(ReplyTo, PendingScore)> = Vec::new();
    for (i, (value, ts)) in records_in.iter().enumerate() {
        let record = KafkaRecord {
            value,
            source: TAG,
            timestamp_ns: *ts,
            fetched_ns: *ts,
            reply: 0,
        };
        let _ = shard.on_record(&record, &mut sink);
        if i % 16 == 15 {
            shard.finish_cycle(*ts, &mut sink);
        }
    }
    // The replay ends at its newest record's time (processing time included): so does the
    // shard here, swept whole.
    let newest = shard.max_event_ns();
    shard.finish_cycle(newest, &mut sink);
    let slots = shard.state().hot().slots();
    shard.state_mut().expire_idle(newest, slots);
    let words = shard.state().plan().words();
    let want = records(&shard.state().export_partition(TAG).unwrap().bytes, words);

    let mut replay = Replay::new(&config, TAG).unwrap();
    for (value, ts) in &records_in {
        replay.record(value, *ts).unwrap();
    }
    let replayed = replay.replayed;
    let (image, max_event_ns) = replay.finish().unwrap();
    let got = records(&image.bytes, words);
    assert!(want.len() > 20, "{sets:?}: only {} keys", want.len());
    assert_eq!(got, want, "{sets:?} seed {seed}");
    assert_eq!(max_event_ns, shard.max_event_ns(), "{sets:?}");
    assert_eq!(replayed.records, 600);
    assert_eq!(replayed.skipped, 12);
    // The input reaches the rules the configuration turns on.
    assert_eq!(
        replayed.late_dropped > 0,
        sets.contains(&"time.late=drop"),
        "{replayed:?}"
    );
    assert_eq!(
        replayed.duplicates > 0,
        sets.contains(&"state.dedup=true"),
        "{replayed:?}"
    );
}

#[test]
fn a_replay_rebuilds_what_the_shard_applied() {
    for seed in [3, 17, 99] {
        // Events up to 3 s behind: past a 1 s lateness some are late (applied, then dropped).
        check(&["time.allowed_lateness_ms=1000"], seed);
        check(
            &[
                "time.allowed_lateness_ms=1000",
                "time.late=drop",
                "state.dedup=true",
            ],
            seed,
        );
        check(&["state.ttl_ms=30000", "state.dedup=true"], seed);
        check(&["time.mode=processing", "state.ttl_ms=30000"], seed);
    }
}

#[test]
fn a_replay_grows_past_its_first_table() {
    let config = config(&[]);
    let mut replay = Replay::new(&config, TAG).unwrap();
    let mut enc = EventBatchEncoder::new();
    let keys = (FIRST_CAPACITY * 3) as u64;
    for k in 0..keys {
        let value = enc
            .encode(std::iter::once(EventIn {
                key: k,
                seq: 1,
                ts_ns: 1_000 + k,
                ..EventIn::default()
            }))
            .to_vec();
        replay.record(&value, 1_000 + k).unwrap();
    }
    let (image, _) = replay.finish().unwrap();
    assert_eq!(image.records, keys);
}
