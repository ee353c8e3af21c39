//! Per-event inference cost of each way sluice can score: ONNX Runtime as sluice calls it
//! (`onnx/`), ONNX Runtime with pre-bound inputs and outputs and a reused run options object
//! (`onnx_bound/`, the cheapest ORT call), the native engine (`native/`), each for the builtin
//! LR and 100-tree GBDT and the LightGBM / XGBoost / HistGradientBoosting fixtures, at batch 1,
//! 16 and 64; a 1,000-tree XGBoost ensemble's load + compile time; and the online logistic
//! regression (predict, learn). Each bench first checks its model answers sensibly
//! (probabilities; native = ONNX Runtime), then times.
//! `cargo bench --bench inference` (needs scripts/install-deps for libonnxruntime).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::config::Config;
use sluice::infer::onnx::model_bytes;
use sluice::infer::{FeatureBatch, NativeScorer, OnlineLr, OnnxScorer, Scorer};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// (bench name, model.path)
fn models() -> Vec<(&'static str, String)> {
    vec![
        ("fraud_lr", "builtin:fraud_lr".into()),
        ("fraud_gbdt", "builtin:fraud_gbdt".into()),
        ("lgbm_100", format!("{FIXTURES}/fraud_lgbm.onnx")),
        ("xgb_100", format!("{FIXTURES}/fraud_xgb.onnx")),
        ("hgb_100", format!("{FIXTURES}/fraud_hgb.onnx")),
        // Three classes, 40 rounds (120 trees), softmax; scored for class 1. (A name ending in
        // "3class" has three output columns.)
        ("gbdt_3class", format!("{FIXTURES}/multiclass_gbdt.onnx")),
        ("lgbm_3class", format!("{FIXTURES}/multiclass_lgbm.onnx")),
        // Random forests, 30 trees of depth <= 8 (the node walk): binary, and three classes
        // with every leaf on every class.
        ("rf_30", format!("{FIXTURES}/forest_rf.onnx")),
        ("rf_3class", format!("{FIXTURES}/forest_rf3.onnx")),
    ]
}

fn batch_of(rows: usize) -> FeatureBatch {
    let mut batch = FeatureBatch::new(WIDTH, rows);
    for i in 0..rows {
        batch.next_row().unwrap().copy_from_slice(&row(i));
    }
    batch
}

fn native(c: &mut Criterion) {
    let config = Config::defaults().unwrap();
    let mut g = c.benchmark_group("native");
    for (name, path) in models() {
        let mut spec = config.onnx_spec();
        spec.path = path;
        let bytes = model_bytes(&spec.path).unwrap();
        let mut m = NativeScorer::compile(&spec, &bytes).unwrap();
        let mut reference = OnnxScorer::load(&spec, &bytes).unwrap();
        for rows in [1usize, 16, 64] {
            let batch = batch_of(rows);
            let (mut out, mut want) = (vec![0.0f32; rows], vec![0.0f32; rows]);
            m.score(&batch, &mut out).unwrap();
            reference.score(&batch, &mut want).unwrap();
            for (o, w) in out.iter().zip(&want) {
                assert!(
                    (o - w).abs() <= 1e-5,
                    "{name}: native {o} vs ONNX Runtime {w}"
                );
            }
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
    native_fresh(c);
    // Load + compile of a 1,000-tree ensemble (what a reload costs the control thread).
    let mut spec = config.onnx_spec();
    spec.path = format!("{FIXTURES}/fraud_xgb_1000.onnx");
    let bytes = model_bytes(&spec.path).unwrap();
    let m = NativeScorer::compile(&spec, &bytes).unwrap();
    eprintln!(
        "xgb_1000: {} ({} bytes of model file)",
        m.describe(),
        bytes.len()
    );
    // Memory per loaded model: resident set before and after 4 more of each (a shard holds one
    // ORT session of its own; native scorers share one compiled copy, so 4 compiles are 4 copies
    // here: the per-copy figure is what one version costs).
    let rss = || -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(0)
            * 4096
    };
    for (name, path) in [
        ("fraud_gbdt", "builtin:fraud_gbdt".to_owned()),
        ("xgb_1000", format!("{FIXTURES}/fraud_xgb_1000.onnx")),
    ] {
        let mut spec = config.onnx_spec();
        spec.path = path;
        let bytes = model_bytes(&spec.path).unwrap();
        let before = rss();
        let natives: Vec<_> = (0..4)
            .map(|_| NativeScorer::compile(&spec, &bytes).unwrap())
            .collect();
        let mid = rss();
        let sessions: Vec<_> = (0..4)
            .map(|_| OnnxScorer::load(&spec, &bytes).unwrap())
            .collect();
        let after = rss();
        eprintln!(
            "memory per loaded model, {name}: native {} KiB, ONNX Runtime session {} KiB (resident set growth / 4)",
            (mid.saturating_sub(before)) / 4 / 1024,
            (after.saturating_sub(mid)) / 4 / 1024
        );
        drop((natives, sessions));
    }
    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    g.bench_function("native/xgb_1000", |b| {
        b.iter(|| NativeScorer::compile(&spec, black_box(&bytes)).unwrap())
    });
    g.bench_function("onnxruntime/xgb_1000", |b| {
        b.iter(|| OnnxScorer::load(&spec, black_box(&bytes)).unwrap())
    });
    g.finish();
}

/// ONNX Runtime at its cheapest: input and output bound once (`IoBinding`; the input is
/// re-bound per call, which copies it, as a new batch would be), a reused `RunOptions`, only
/// the probability output fetched.
fn onnx_bound(c: &mut Criterion) {
    use ort::memory::Allocator;
    use ort::session::{RunOptions, Session};
    use ort::value::Tensor;
    let env = sluice::infer::runtime::environment("").unwrap();
    let mut g = c.benchmark_group("onnx_bound");
    for (name, path) in models() {
        let bytes = model_bytes(&path).unwrap();
        let mut session = Session::builder(&env)
            .unwrap()
            .with_intra_threads(1)
            .unwrap()
            .with_inter_threads(1)
            .unwrap()
            .with_intra_op_spinning(false)
            .unwrap()
            .with_inter_op_spinning(false)
            .unwrap()
            .commit_from_memory(&bytes)
            .unwrap();
        let options = RunOptions::new().unwrap();
        for rows in [1usize, 16, 64] {
            let data: Vec<f32> = (0..rows).flat_map(row).collect();
            let input = Tensor::from_array(([rows, WIDTH], data)).unwrap();
            let mut binding = session.create_binding().unwrap();
            let columns = if name.ends_with("3class") { 3 } else { 2 };
            let out = Tensor::<f32>::new(&Allocator::default(), [rows, columns]).unwrap();
            binding.bind_output("probabilities", out).unwrap();
            binding.bind_input("input", &input).unwrap();
            {
                let o = session
                    .run_binding_with_options(&binding, &options)
                    .unwrap();
                let (_, p) = o["probabilities"].try_extract_tensor::<f32>().unwrap();
                assert!(p.iter().all(|p| (0.0..=1.0).contains(p)));
            }
            g.throughput(Throughput::Elements(rows as u64));
            g.bench_function(format!("{name}/batch_{rows}"), |b| {
                b.iter(|| {
                    binding.bind_input("input", black_box(&input)).unwrap();
                    let o = session
                        .run_binding_with_options(&binding, &options)
                        .unwrap();
                    o.len()
                })
            });
        }
    }
    g.finish();
}

/// The tree ensembles on a new row every call, as traffic brings them: `native/` scores one
/// batch over and over, and a branch predictor learns its rows' paths through the trees,
/// which no live stream allows. Here each call takes the next batch of 8,192 distinct rows,
/// walked node by node (`nodes`) and branch-free over perfect trees where the model allows
/// (`fastest`; the same as `nodes` where it does not).
fn native_fresh(c: &mut Criterion) {
    use sluice::infer::native::Walk;
    const POOL: usize = 8192;
    let config = Config::defaults().unwrap();
    let mut g = c.benchmark_group("native_fresh");
    for (name, path) in models().into_iter().skip(1) {
        let mut spec = config.onnx_spec();
        spec.path = path;
        let bytes = model_bytes(&spec.path).unwrap();
        for (walk_name, walk) in [
            ("nodes", Walk::NodeByNode),
            ("scalar", Walk::BranchFreeScalar),
            ("fastest", Walk::Fastest),
        ] {
            let mut m = NativeScorer::compile_with(&spec, &bytes, walk).unwrap();
            if walk == Walk::Fastest {
                eprintln!("{name}: {}", m.describe());
            }
            for rows in [1usize, 16] {
                let batches: Vec<FeatureBatch> = (0..POOL / rows)
                    .map(|b| {
                        let mut batch = FeatureBatch::new(WIDTH, rows);
                        for i in 0..rows {
                            batch
                                .next_row()
                                .unwrap()
                                .copy_from_slice(&row(b * rows + i));
                        }
                        batch
                    })
                    .collect();
                let mut out = vec![0.0f32; rows];
                let mut k = 0usize;
                g.throughput(Throughput::Elements(rows as u64));
                g.bench_function(format!("{name}/{walk_name}/batch_{rows}"), |b| {
                    b.iter(|| {
                        k = (k + 1) % batches.len();
                        m.score(black_box(&batches[k]), &mut out).unwrap();
                        out[0]
                    })
                });
            }
        }
    }
    g.finish();
}

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
    for (name, path) in models() {
        let mut spec = config.onnx_spec();
        spec.path = path;
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

criterion_group!(benches, native, onnx_bound, onnx, online);
criterion_main!(benches);
