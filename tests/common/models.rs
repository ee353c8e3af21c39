//! Model helpers shared by the inference and native-engine tests: the `[model]` spec of a
//! path, the parity fixture `scripts/train_models.py` wrote, scoring rows in batches, and a
//! model with its core operator edited.

use sluice::config::Config;
use sluice::infer::native::onnx_proto::{Message, ModelProto, NodeProto};
use sluice::infer::native::Walk;
use sluice::infer::onnx::model_bytes;
use sluice::infer::{FeatureBatch, NativeScorer, OnnxScorer, OnnxSpec, Scorer};

/// The default `[model]` spec with `model.path = path`.
pub fn spec(path: &str) -> OnnxSpec {
    let mut c = Config::defaults().unwrap();
    c.model.path = path.to_owned();
    c.onnx_spec()
}

/// tests/fixtures/onnx_parity.json: rows and Python onnxruntime's probabilities per model.
pub fn parity_fixture() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/onnx_parity.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The fixture's feature rows.
pub fn parity_rows() -> Vec<Vec<f32>> {
    rows_of(&parity_fixture()["rows"])
}

/// Feature rows from a fixture's JSON array of arrays (`null`, which JSON has for NaN, read
/// back as NaN).
pub fn rows_of(rows: &serde_json::Value) -> Vec<Vec<f32>> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
                .collect()
        })
        .collect()
}

/// The fixture rows, each feature scaled up and down, swapped between rows, zeroed, negated,
/// huge, and NaN (a tree sends NaN where its missing-value flag says): thousands of rows that
/// reach both sides of most branches.
pub fn probing_rows() -> Vec<Vec<f32>> {
    let base = parity_rows();
    let mut rows = base.clone();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..4000 {
        let mut r = base[i % base.len()].clone();
        for f in 0..r.len() {
            match next() % 10 {
                0 => r[f] *= 0.5,
                1 => r[f] *= 2.0,
                2 => r[f] = base[(next() as usize) % base.len()][f],
                3 => r[f] = 0.0,
                4 => r[f] = -r[f],
                5 if i % 7 == 0 => r[f] = f32::NAN,
                6 if i % 11 == 0 => r[f] = 1e30,
                _ => {}
            }
        }
        rows.push(r);
    }
    rows
}

/// Every row's score, `batch` rows a call.
pub fn score_rows(m: &mut dyn Scorer, rows: &[Vec<f32>], batch: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len());
    let mut b = FeatureBatch::new(m.width(), batch);
    let mut o = vec![0.0; batch];
    for chunk in rows.chunks(batch) {
        b.clear();
        for r in chunk {
            b.next_row().unwrap().copy_from_slice(r);
        }
        m.score(&b, &mut o).unwrap();
        out.extend_from_slice(&o[..chunk.len()]);
    }
    out
}

/// The model at `path` with its core operator (the tree ensemble or linear one) edited.
pub fn edited_model(path: &str, edit: impl FnOnce(&mut NodeProto)) -> Vec<u8> {
    let mut m = ModelProto::parse_from_bytes(&model_bytes(path).unwrap()).unwrap();
    let node = m
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.op_type.starts_with("TreeEnsemble") || n.op_type.starts_with("Linear"))
        .unwrap();
    edit(node);
    m.write_to_bytes().unwrap()
}

/// Set a string attribute the node already has.
pub fn set_attr_s(node: &mut NodeProto, name: &str, v: &[u8]) {
    let a = node.attribute.iter_mut().find(|a| a.name == name).unwrap();
    a.s = v.to_vec();
}

/// `compare`'s spread for models with many leaves: over 50 distinct scores, under a tenth of
/// them pinned at 0 or 1.
pub const WIDE: (usize, f32) = (50, 0.1);

/// Column `column` of `bytes` by both engines on `rows`: (native, ONNX Runtime), checked equal
/// within 1e-5 and on the same side of the alert threshold, the scores spread (more than
/// `spread.0` distinct values, at most the fraction `spread.1` pinned at 0 or 1 by the clamp:
/// the rows reach many leaves, not one). The native scorer's description is returned too.
pub fn compare(
    what: &str,
    bytes: &[u8],
    column: usize,
    walk: Walk,
    rows: &[Vec<f32>],
    spread: (usize, f32),
) -> (Vec<f32>, String) {
    let mut s = spec("multiclass.onnx");
    s.probability_column = column;
    let mut native = NativeScorer::compile_with(&s, bytes, walk)
        .unwrap_or_else(|e| panic!("{what} does not compile natively: {e}"));
    let mut ort = OnnxScorer::load(&s, bytes).unwrap();
    let want = score_rows(&mut ort, rows, 64);
    let threshold = Config::defaults().unwrap().model.alert_threshold;
    let mut worst = 0.0f32;
    for batch in [1, 64] {
        let got = score_rows(&mut native, rows, batch);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            worst = worst.max((g - w).abs());
            assert!(
                (g - w).abs() <= 1e-5,
                "{what} column {column} {walk:?} batch {batch} row {i} {:?}: native {g} vs ONNX Runtime {w}",
                rows[i]
            );
            assert_eq!(
                *g >= threshold,
                *w >= threshold,
                "{what} column {column} row {i}: the engines disagree on the alert side"
            );
        }
    }
    eprintln!(
        "{what} column {column} {walk:?}: {} rows, largest difference {worst:e}",
        rows.len()
    );
    let distinct: std::collections::BTreeSet<u32> = want.iter().map(|p| p.to_bits()).collect();
    let pinned = want.iter().filter(|&&p| p == 0.0 || p == 1.0).count();
    assert!(
        distinct.len() > spread.0 && (pinned as f32) < spread.1 * want.len() as f32,
        "{what} column {column}: {} distinct scores, {pinned} of {} at 0 or 1",
        distinct.len(),
        want.len()
    );
    (want, native.describe())
}
