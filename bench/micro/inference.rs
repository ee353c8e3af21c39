//! Per-event inference cost: ONNX Runtime (builtin LR and 100-tree GBDT) at batch 1, 16 and
//! 64, and the native online logistic regression (predict, learn). Each bench first checks
//! its model answers sensibly (probabilities, batch = one-at-a-time), then times.
//! `cargo bench --bench inference` (needs scripts/install-deps for libonnxruntime).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::config::Config;
use sluice::infer::onnx::model_bytes;
use sluice::infer::{FeatureBatch, OnlineLr, OnnxScorer, Scorer};

/// A row of the default `features.list` (the built-in models' input).
fn row(i: usize) -> [f32; WIDTH] {
    let amount = 20.0 + (i % 37) as f32 * 9.0;
    [
        amount,
        ((i % 50) as f32).ln_1p(),
        60.0,
        55.0,
        amount / 55.0,
        (i % 13) as f32 * 0.7,
        (i % 5) as f32 + 1.0,
        amount * ((i % 5) as f32 + 1.0),
    ]
}

const WIDTH: usize = 8;

fn onnx(c: &mut Criterion) {
    let config = Config::defaults().unwrap();
    let mut g = c.benchmark_group("onnx");
    for name in ["fraud_lr", "fraud_gbdt"] {
        let mut spec = config.onnx_spec();
        spec.path = format!("builtin:{name}");
        let mut m = OnnxScorer::load(&spec, &model_bytes(&spec.path).unwrap()).unwrap();
        for rows in [1usize, 16, 64] {
            let mut batch = FeatureBatch::new(WIDTH, rows);
            for i in 0..rows {
                batch.next_row().unwrap().copy_from_slice(&row(i));
            }
            let mut out = vec![0.0f32; rows];
            m.score(&batch, &mut out).unwrap();
            assert!(out.iter().all(|p| (0.0..=1.0).contains(p)));
            let mut single = FeatureBatch::new(WIDTH, 1);
            single.next_row().unwrap().copy_from_slice(&row(rows - 1));
            let mut one = [0.0f32];
            m.score(&single, &mut one).unwrap();
            assert!(
                (one[0] - out[rows - 1]).abs() <= 1e-6,
                "batched and single scores agree"
            );
            g.throughput(Throughput::Elements(rows as u64));
            g.bench_function(format!("{name}/batch_{rows}"), |b| {
                b.iter(|| {
                    m.score(black_box(&batch), &mut out).unwrap();
                    out[0]
                })
            });
        }
    }
    g.finish();
}

fn online(c: &mut Criterion) {
    let spec = Config::defaults().unwrap().model.online;
    let mut m = OnlineLr::new(WIDTH, &spec);
    let rows: Vec<[f32; WIDTH]> = (0..1024).map(row).collect();
    for (i, r) in rows.iter().enumerate() {
        m.learn(
            r,
            if r[0] > 200.0 {
                1.0
            } else {
                (i % 2) as f32 * 0.0
            },
        );
    }
    let (hi, lo) = (m.predict(&rows[20]), m.predict(&rows[0]));
    assert!(
        hi > lo,
        "learned that large amounts are positive: {hi} vs {lo}"
    );
    let mut g = c.benchmark_group("online_lr");
    g.throughput(Throughput::Elements(rows.len() as u64));
    g.bench_function("predict", |b| {
        b.iter(|| rows.iter().map(|r| m.predict(black_box(r))).sum::<f32>())
    });
    g.bench_function("learn", |b| {
        b.iter(|| {
            for r in &rows {
                m.learn(black_box(r), 1.0);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, onnx, online);
criterion_main!(benches);
