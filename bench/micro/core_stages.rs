//! Criterion micro-benchmarks of each core stage, on the real code with no sockets. Each bench
//! first checks that the stage produces the right output, then times it.
//! `cargo bench --bench core_stages`; `cargo test --benches` runs each once as a check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice::config::Config;
use sluice::features::build_row;
use sluice::infer::{FeatureBatch, LinearScorer, Scorer};
use sluice::route::owner;
use sluice::state::{HotTable, Update};
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

fn state(c: &mut Criterion) {
    let mut g = c.benchmark_group("state_update");
    for (name, capacity, keys) in [
        ("hot_1k_keys", 1usize << 16, 1_000u64),
        ("hot_1m_keys", 1 << 21, 1_000_000),
    ] {
        let mut table = HotTable::new(capacity, 0.1);
        let updates: Vec<Update> = (0..4096u64)
            .map(|i| Update {
                key: (i * 2_654_435_761) % keys,
                ts_ns: i,
                kind: EventKind::Observation,
                amount: 3.0,
                label: -1.0,
            })
            .collect();
        for u in &updates {
            table.apply(u).unwrap();
        }
        let r = table.apply(&updates[0]).unwrap();
        assert_eq!(
            r.observations,
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
                    .map(|u| table.apply(black_box(u)).unwrap().observations)
                    .sum::<u64>()
            })
        });
    }
    g.finish();
}

fn features_and_score(c: &mut Criterion) {
    let config = config();
    let mut scorer = LinearScorer::from_config(&config.model);
    let mut table = HotTable::new(1024, 0.1);
    let record = table
        .apply(&Update {
            key: 1,
            ts_ns: 5,
            kind: EventKind::Observation,
            amount: 40.0,
            label: -1.0,
        })
        .unwrap();
    let mut g = c.benchmark_group("features_score");
    for rows in [1usize, 16, 64] {
        let mut batch = FeatureBatch::new(scorer.width(), rows);
        let mut out = vec![0.0f32; rows];
        let fill = |batch: &mut FeatureBatch| {
            batch.clear();
            for i in 0..rows {
                build_row(
                    &record,
                    10.0 + i as f32,
                    1_000_000_000,
                    &[],
                    batch.next_row().unwrap(),
                );
            }
        };
        fill(&mut batch);
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

criterion_group!(benches, decode, route, state, features_and_score);
criterion_main!(benches);
