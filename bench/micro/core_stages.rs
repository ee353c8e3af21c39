//! Criterion micro-benchmarks of each core stage, on the real code with no sockets. Each bench
//! first checks that the stage produces the right output, then times it.
//! `cargo bench --bench core_stages`; `cargo test --benches` runs each once as a check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice::config::Config;
use sluice::features::Obs;
use sluice::infer::{FeatureBatch, LinearScorer, Scorer};
use sluice::route::owner;
use sluice::state::{KeyedState, Outcome, Spill, Update};
use sluice::wire::{Decoder, EventBatchEncoder, EventIn, EventKind};

fn config() -> Config {
    Config::defaults().unwrap()
}

fn batch_bytes(events: usize, features: &[f32]) -> Vec<u8> {
    let mut enc = EventBatchEncoder::new();
    enc.encode((0..events as u64).map(|i| EventIn {
        key: i * 7919,
        seq: i,
        amount: 12.5,
        features,
        ..EventIn::default()
    }))
    .to_vec()
}

fn decode(c: &mut Criterion) {
    let decoder = Decoder::new(&config().wire);
    let mut g = c.benchmark_group("decode_verify");
    for (events, features) in [(1usize, 0usize), (16, 0), (16, 8)] {
        let f: Vec<f32> = (0..features).map(|i| i as f32).collect();
        let bytes = batch_bytes(events, &f);
        let got = decoder.decode(&bytes).unwrap();
        assert_eq!(got.len(), events);
        assert_eq!(got.iter().last().unwrap().seq(), events as u64 - 1);
        g.throughput(Throughput::Elements(events as u64));
        g.bench_function(format!("{events}ev_{features}f"), |b| {
            b.iter(|| {
                let ev = decoder.decode(black_box(&bytes)).unwrap();
                ev.iter().map(|e| e.key() ^ e.seq()).fold(0, |a, x| a ^ x)
            })
        });
    }
    g.finish();
}

/// af_xdp: a raw frame to a datagram (headers, lengths, IPv4 and UDP checksums).
fn frame_parse(c: &mut Criterion) {
    use sluice::ingest::xdp::frame;
    let mut g = c.benchmark_group("xdp_frame_parse");
    for events in [1usize, 16] {
        let payload = batch_bytes(events, &[]);
        let f = frame::encode(
            ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]),
            &[],
            "169.254.7.2:40000".parse().unwrap(),
            "169.254.7.1:7600".parse().unwrap(),
            &payload,
        );
        let got = frame::parse(&f, true).unwrap();
        assert_eq!(&f[got.payload.clone()], &payload[..]);
        g.throughput(Throughput::Bytes(f.len() as u64));
        g.bench_function(format!("{}B_checksummed", f.len()), |b| {
            b.iter(|| frame::parse(black_box(&f), true).map(|u| u.payload.len()))
        });
    }
    g.finish();
}

fn route(c: &mut Criterion) {
    let keys: Vec<u64> = (0..1024u64)
        .map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let counts = keys.iter().fold([0usize; 4], |mut acc, k| {
        acc[owner(*k, 4)] += 1;
        acc
    });
    assert!(
        counts.iter().all(|&c| c > 200),
        "owner spreads keys: {counts:?}"
    );
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("owner_4_shards_1024_keys", |b| {
        b.iter(|| keys.iter().map(|k| owner(black_box(*k), 4)).sum::<usize>())
    });
    g.finish();
}

fn config_with(sets: &[&str]) -> Config {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::from_layers(None, &sets).unwrap()
}

fn update(key: u64, ts_ns: u64, amount: f32) -> Update<'static> {
    Update {
        key,
        seq: ts_ns,
        ts_ns,
        kind: EventKind::Observation,
        amount,
        label: -1.0,
        features: &[],
        source: 0,
    }
}

fn applied(s: &mut KeyedState, u: &Update<'_>) -> usize {
    match s.apply(u, u.ts_ns).unwrap() {
        Outcome::Applied(slot) => slot,
        Outcome::Duplicate | Outcome::OtherSource(_) => panic!("dedup is off, one source"),
    }
}

/// Find/insert + the default feature list's aggregates (lifetime, EWMA, a 5-minute sliding
/// window of 30 s buckets).
fn state(c: &mut Criterion) {
    let mut g = c.benchmark_group("state_update");
    for (name, capacity, keys) in [
        ("hot_1k_keys", 1usize << 16, 1_000u64),
        ("hot_1m_keys", 1 << 21, 1_000_000),
    ] {
        let config = config_with(&[&format!("state.hot_capacity={capacity}")]);
        let mut table = KeyedState::from_config(&config, None).unwrap();
        let updates: Vec<Update> = (0..4096u64)
            .map(|i| update((i * 2_654_435_761) % keys, 1_000_000_000 * i, 3.0))
            .collect();
        for u in &updates {
            applied(&mut table, u);
        }
        let slot = applied(&mut table, &updates[0]);
        assert_eq!(
            table.slot(slot).0.observations,
            2 + updates[1..]
                .iter()
                .filter(|u| u.key == updates[0].key)
                .count() as u64
        );
        g.throughput(Throughput::Elements(updates.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                updates
                    .iter()
                    .map(|u| applied(&mut table, black_box(u)))
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

/// The spill sweep's two halves on a real RocksDB store of 100k spilled keys: the shard's
/// cycle at the default batch (`expire_spilled`: one batched read of
/// `state.spill_sweep_keys_per_cycle` names, and the write that deletes those still idle) and
/// the scanner's slice (1024 records read in key order).
fn spill_sweep(c: &mut Criterion) {
    const SEC: u64 = 1_000_000_000;
    let dir = std::env::temp_dir().join(format!("sluice-bench-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = config_with(&["state.hot_capacity=1024", "state.ttl_ms=10000"]);
    let plan = config.feature_plan().unwrap();
    let words = plan.words();
    let spill = Spill::open(&dir, 64 << 20, words, None).unwrap();
    let mut table = KeyedState::with_plan(&config, plan, Some(spill));
    let keys: Vec<u64> = (0..100_000u64).map(|i| i * 2_654_435_761).collect();
    for &k in &keys {
        applied(&mut table, &update(k, SEC, 3.0));
    }
    let spilled: Vec<u64> = keys
        .iter()
        .copied()
        .filter(|&k| table.hot().get(k).is_none())
        .collect();
    assert!(spilled.len() >= 98_000, "{}", spilled.len());
    let per_cycle = table.spilled_sweep_max();
    assert!(per_cycle > 0);
    let mut names: Vec<u64> = spilled[..per_cycle].to_vec();
    names.sort_unstable();
    // Within the TTL at 5 s: nothing deleted, every name read.
    assert_eq!(table.expire_spilled(&names, &[], 5 * SEC).unwrap(), 0);
    let mut g = c.benchmark_group("spill_sweep");
    g.throughput(Throughput::Elements(per_cycle as u64));
    let mut at = 0;
    g.bench_function(format!("shard_check_{per_cycle}_live"), |b| {
        b.iter(|| {
            at = (at + per_cycle) % (spilled.len() - per_cycle);
            let mut n = spilled[at..at + per_cycle].to_vec();
            n.sort_unstable();
            table.expire_spilled(black_box(&n), &[], 5 * SEC).unwrap()
        })
    });
    // Deleting: each round puts the idle records back first (untimed).
    let mut image = table.locate(names[0]).unwrap().unwrap();
    image.record.observations = 1;
    g.bench_function(format!("shard_delete_{per_cycle}_idle"), |b| {
        b.iter_custom(|iters| {
            let mut took = std::time::Duration::ZERO;
            for _ in 0..iters {
                for &k in &names {
                    let mut r = image.record;
                    r.key = k;
                    if table.locate(k).unwrap().is_none() {
                        table.restore(r, &image.words).unwrap();
                    }
                }
                let t = std::time::Instant::now();
                let n = table.expire_spilled(&names, &[], 100 * SEC).unwrap();
                took += t.elapsed();
                assert_eq!(n, per_cycle as u64);
            }
            took
        })
    });
    g.throughput(Throughput::Elements(1024));
    let store = table.cold_store().unwrap();
    let mut from = Some(0u64);
    g.bench_function("scanner_slice_1024", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            from = store
                .scan_from(from.unwrap_or(0), 1024, &mut |_, image| {
                    bytes += image.len();
                    Ok(())
                })
                .unwrap();
            bytes
        })
    });
    g.finish();
    drop(store);
    drop(table);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The scanner's whole pass over a store the sweep has mostly emptied: 200k records, 95% of
/// them deleted, the deletions flushed and RocksDB's background work done (the deletion-heavy
/// file compacted away, `spill.rs`; without that the pass costs what it did with every record).
fn spill_sweep_after_deletions(c: &mut Criterion) {
    use sluice::state::cold::{ColdBatch, ColdStore};
    let base = std::env::temp_dir().join(format!("sluice-bench-dels-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let mut spill = Spill::open(&base.join("s"), 64 << 20, 8, None).unwrap();
    let key = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let n = 200_000u64;
    for i in 0..n {
        let mut rec = sluice::state::Record::fresh(key(i), 1);
        rec.observations = 1;
        spill.put(&rec, &[i, 1, 0, 0, 0, 0, 0, 0]).unwrap();
    }
    let store = spill.shared();
    store.checkpoint(&base.join("c1")).unwrap();
    let mut batch = ColdBatch::with_capacity(1024, 0);
    for i in (0..n).filter(|i| i % 20 != 0) {
        batch.delete(key(i));
        if batch.bytes_hint() > 16_000 {
            store.write(&batch).unwrap();
            batch.clear();
        }
    }
    store.write(&batch).unwrap();
    store.checkpoint(&base.join("c2")).unwrap();
    while store.background_busy() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pass = |store: &dyn ColdStore| {
        let mut live = 0u64;
        let mut from = Some(0u64);
        while let Some(at) = from {
            from = store
                .scan_from(at, 1024, &mut |_, _| {
                    live += 1;
                    Ok(())
                })
                .unwrap();
        }
        live
    };
    assert_eq!(pass(&*store), n / 20);
    let mut g = c.benchmark_group("spill_sweep");
    g.throughput(Throughput::Elements(n / 20));
    g.bench_function("scanner_pass_200k_95pct_deleted", |b| {
        b.iter(|| pass(&*store))
    });
    g.finish();
    drop(store);
    drop(spill);
    let _ = std::fs::remove_dir_all(&base);
}

/// Rows of the default feature list from a key's state, then the linear model over them.
fn features_and_score(c: &mut Criterion) {
    let config = config_with(&["model.kind=linear"]);
    let mut scorer = LinearScorer::from_config(&config.model);
    let mut table = KeyedState::from_config(&config, None).unwrap();
    for i in 0..5 {
        applied(&mut table, &update(1, 1_000_000_000 * i, 40.0));
    }
    let slot = applied(&mut table, &update(1, 5_000_000_000, 40.0));
    let mut g = c.benchmark_group("features_score");
    for rows in [1usize, 16, 64] {
        let mut batch = FeatureBatch::new(scorer.width(), rows);
        let mut out = vec![0.0f32; rows];
        let (head, words) = table.slot(slot);
        let plan = table.plan();
        let fill = |batch: &mut FeatureBatch| {
            batch.clear();
            for i in 0..rows {
                let obs = Obs {
                    ts_ns: 5_000_000_000,
                    amount: 10.0 + i as f32,
                    features: &[],
                };
                plan.build_row(words, head.prev_event_ns, &obs, batch.next_row().unwrap());
            }
        };
        fill(&mut batch);
        assert_eq!(batch.row(0)[6], 6.0, "six events in the 5-minute window");
        scorer.score(&batch, &mut out).unwrap();
        assert!(out.iter().all(|s| (0.0..=1.0).contains(s)));
        assert!(
            rows == 1 || out[0] != out[rows - 1],
            "rows with different amounts score differently"
        );
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_function(format!("batch_{rows}"), |b| {
            b.iter_batched_ref(
                || (),
                |_| {
                    fill(&mut batch);
                    scorer.score(&batch, &mut out).unwrap();
                    out[0]
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// One Observation into a key's session windows: one session kept (no lateness), or three
/// (10 s of lateness over a 5 s gap) for late events to merge, over streams that stay in one
/// session, start a new one every event (slots full: the oldest goes), or bridge two with
/// every third event.
fn session_update(c: &mut Criterion) {
    use sluice::features::FeaturePlan;
    const SEC: u64 = 1_000_000_000;
    let list: Vec<String> = [
        "count(session 5s)",
        "sum(amount, session 5s)",
        "max(amount, session 5s)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let streams: [(&str, Vec<u64>); 3] = [
        ("same_session", (0..1024).map(|i| i * SEC).collect()),
        ("new_session_each", (0..1024).map(|i| i * 6 * SEC).collect()),
        (
            "bridge_every_3rd",
            (0..1024)
                .map(|i| (i / 3) * 20 * SEC + [0, 10, 5][i as usize % 3] * SEC)
                .collect(),
        ),
    ];
    let mut g = c.benchmark_group("session_update");
    g.throughput(Throughput::Elements(1024));
    for (lateness_s, kept) in [(0u64, "1_kept"), (10, "3_kept")] {
        let plan = FeaturePlan::compile(&list, lateness_s * SEC).unwrap();
        for (name, stream) in &streams {
            let mut words = vec![0u64; plan.words()];
            g.bench_function(format!("{kept}/{name}"), |b| {
                b.iter(|| {
                    words.fill(0);
                    for &ts_ns in stream {
                        let obs = Obs {
                            ts_ns,
                            amount: 3.0,
                            features: &[],
                        };
                        plan.update(&mut words, &obs);
                    }
                    black_box(words[2])
                })
            });
        }
    }
    g.finish();
}

/// A Kafka record through the whole core: decode, apply (no ring hop), features, score.
fn kafka_record(c: &mut Criterion) {
    use sluice::egress::{PendingScore, ReplyTo};
    use sluice::infer::{build_primary, ShardModel};
    use sluice::metrics::ShardCounters;
    use sluice::route::Mesh;
    use sluice::shard::{KafkaRecord, ShardCore};

    let config = config_with(&["model.kind=linear", "state.hot_capacity=65536"]);
    let mut g = c.benchmark_group("kafka_record");
    for events in [1usize, 16] {
        let rings = Mesh::build(1, 64).into_iter().next().unwrap();
        let model = ShardModel::new(&config, build_primary(&config, None).unwrap(), 1);
        let state = KeyedState::from_config(&config, None).unwrap();
        let counters = std::sync::Arc::new(ShardCounters::default());
        let mut core = ShardCore::new(0, 1, &config, rings, model, state, 0, counters);
        let bytes = batch_bytes(events, &[]);
        let record = KafkaRecord {
            value: &bytes,
            source: 1,
            timestamp_ns: 1_000_000_000,
            fetched_ns: 1_000_000_100,
            reply: 0,
        };
        let mut sink: Vec<(ReplyTo, PendingScore)> = Vec::with_capacity(events);
        assert!(core.on_record(&record, &mut sink).is_ok());
        core.finish_cycle(0, &mut sink);
        assert_eq!(sink.len(), events);
        assert!(sink
            .iter()
            .all(|(to, p)| *to == ReplyTo::Kafka(0) && p.score.count == 1));
        g.throughput(Throughput::Elements(events as u64));
        g.bench_function(format!("{events}ev"), |b| {
            b.iter(|| {
                sink.clear();
                let _ = core.on_record(black_box(&record), &mut sink);
                core.finish_cycle(0, &mut sink);
                sink.len()
            })
        });
    }
    g.finish();
}

/// What the live metrics add per event: one record into a fixed-bucket histogram (the shard
/// does two per scored event, receive->emit and in-shard).
fn live_histogram(c: &mut Criterion) {
    let h = sluice::metrics::catalog::LiveHistogram::default();
    let values: Vec<u64> = (0..1024u64)
        .map(|i| 2_000 + i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 2_000_000)
        .collect();
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(values.len() as u64));
    // A filter that leaves this bench out must not fail the check below.
    let mut ran = false;
    g.bench_function("live_histogram_record_1024", |b| {
        ran = true;
        b.iter(|| {
            for v in &values {
                h.record(black_box(*v));
            }
        })
    });
    g.finish();
    let (buckets, _) = h.snapshot();
    assert!(
        !ran || buckets.iter().sum::<u64>() > 0,
        "the bench recorded"
    );
}

criterion_group!(
    benches,
    decode,
    frame_parse,
    route,
    state,
    spill_sweep,
    spill_sweep_after_deletions,
    features_and_score,
    session_update,
    kafka_record,
    live_histogram
);
criterion_main!(benches);
