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

/// How `tree_ensemble_v5` writes a classifier's trees.
pub struct V5 {
    /// `n_targets`; each leaf's class id becomes its target (a binary classifier's are all 0).
    pub targets: i64,
    /// `aggregate_function`: 0 AVERAGE, 1 SUM.
    pub aggregate: i64,
    /// `post_transform`'s code.
    pub post: i64,
    /// Whether branch `i` (listing order) is written as `x > t` with its sides (and NaN's side)
    /// swapped: the same tree in another comparison mode.
    pub flip: fn(usize) -> bool,
    /// `tree_roots` lists the first tree once more at its end.
    pub first_tree_twice: bool,
    /// The node's output.
    pub output: &'static str,
}

/// A scikit-learn `TreeEnsembleClassifier`'s trees (every branch `BRANCH_LEQ`) as the
/// `ai.onnx.ml` opset-5 `TreeEnsemble` node, which no converter pinned here emits yet: interior
/// nodes and leaves each numbered in listing order, every leaf's one weight on its class.
pub fn tree_ensemble_v5(classifier: &NodeProto, v: &V5) -> NodeProto {
    use sluice::infer::native::onnx_proto::{Attribute, TensorProto};
    use std::collections::HashMap;
    let get = |name: &str| {
        classifier
            .attribute
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let (tree, node) = (get("nodes_treeids").ints, get("nodes_nodeids").ints);
    let modes = get("nodes_modes").strings;
    let (feature, value) = (get("nodes_featureids").ints, get("nodes_values").floats);
    let (yes, no) = (
        get("nodes_truenodeids").ints,
        get("nodes_falsenodeids").ints,
    );
    let tracks = get("nodes_missing_value_tracks_true").ints;
    let leaf: HashMap<(i64, i64), (i64, f32)> = get("class_treeids")
        .ints
        .iter()
        .zip(get("class_nodeids").ints)
        .zip(
            get("class_ids")
                .ints
                .iter()
                .zip(get("class_weights").floats),
        )
        .map(|((&t, n), (&c, w))| ((t, n), (c, w)))
        .collect();
    let (mut branch_at, mut leaf_at) = (HashMap::new(), HashMap::new());
    let (mut targets, mut weights) = (vec![], vec![]);
    for i in 0..tree.len() {
        if modes[i] == b"LEAF" {
            let (c, w) = leaf[&(tree[i], node[i])];
            leaf_at.insert((tree[i], node[i]), weights.len() as i64);
            targets.push(c);
            weights.push(w);
        } else {
            branch_at.insert((tree[i], node[i]), branch_at.len() as i64);
        }
    }
    let side = |t: i64, id: i64| match leaf_at.get(&(t, id)) {
        Some(&j) => (j, 1),
        None => (branch_at[&(t, id)], 0),
    };
    let (mut v5_mode, mut split, mut feat, mut track) = (vec![], vec![], vec![], vec![]);
    let (mut ty, mut tl, mut fy, mut fl) = (vec![], vec![], vec![], vec![]);
    let mut roots = vec![];
    for i in 0..tree.len() {
        if modes[i] == b"LEAF" {
            continue;
        }
        assert_eq!(modes[i], b"BRANCH_LEQ");
        if i == 0 || tree[i] != tree[i - 1] {
            roots.push(branch_at[&(tree[i], node[i])]);
        }
        let (mut t, mut f) = (side(tree[i], yes[i]), side(tree[i], no[i]));
        let (mut code, mut tr) = (0u8, tracks.get(i).copied().unwrap_or(0));
        if (v.flip)(feat.len()) {
            std::mem::swap(&mut t, &mut f);
            (code, tr) = (3, 1 - tr);
        }
        v5_mode.push(i32::from(code));
        split.push(value[i]);
        feat.push(feature[i]);
        track.push(tr);
        ty.push(t.0);
        tl.push(t.1);
        fy.push(f.0);
        fl.push(f.1);
    }
    if v.first_tree_twice {
        roots.push(roots[0]);
    }
    let ints = |name: &str, v: Vec<i64>| Attribute {
        name: name.into(),
        ints: v,
        type_: protobuf::EnumOrUnknown::from_i32(7), // INTS
        ..Default::default()
    };
    let int = |name: &str, i: i64| Attribute {
        name: name.into(),
        i,
        type_: protobuf::EnumOrUnknown::from_i32(2), // INT
        ..Default::default()
    };
    let tensor = |name: &str, t: TensorProto| Attribute {
        name: name.into(),
        t: Some(t).into(),
        type_: protobuf::EnumOrUnknown::from_i32(4), // TENSOR
        ..Default::default()
    };
    let floats_t = |v: Vec<f32>| TensorProto {
        data_type: 1,
        dims: vec![v.len() as i64],
        float_data: v,
        ..Default::default()
    };
    NodeProto {
        op_type: "TreeEnsemble".into(),
        domain: "ai.onnx.ml".into(),
        input: vec!["input".into()],
        output: vec![v.output.into()],
        attribute: vec![
            int("n_targets", v.targets),
            int("aggregate_function", v.aggregate),
            int("post_transform", v.post),
            ints("tree_roots", roots),
            ints("nodes_featureids", feat),
            ints("nodes_truenodeids", ty),
            ints("nodes_trueleafs", tl),
            ints("nodes_falsenodeids", fy),
            ints("nodes_falseleafs", fl),
            ints("nodes_missing_value_tracks_true", track),
            ints("leaf_targetids", targets),
            tensor(
                "nodes_modes",
                TensorProto {
                    data_type: 2, // UINT8
                    dims: vec![v5_mode.len() as i64],
                    int32_data: v5_mode,
                    ..Default::default()
                },
            ),
            tensor("nodes_splits", floats_t(split)),
            tensor("leaf_weights", floats_t(weights)),
        ],
        ..Default::default()
    }
}

/// The model's `ai.onnx.ml` opset raised to 5 (the `TreeEnsemble` operator's).
pub fn with_ml_opset_5(m: &mut ModelProto) {
    for o in &mut m.opset_import {
        if o.domain == "ai.onnx.ml" {
            o.version = 5;
        }
    }
}

/// Column `column` of `bytes`, natively, on a fixture's rows against the probabilities Python
/// onnxruntime gave there (`tests/fixtures/FIXTURE`: `{"rows": [...], "models": {NAME: [[one
/// per column], ...]}}`, written by scripts/train_multiclass.py and train_forests.py), clamped
/// to [0, 1] as sluice clamps scores (ONNX Runtime's `1 - s` can be -1e-7).
pub fn assert_python_column(fixture: &str, name: &str, bytes: &[u8], column: usize) {
    let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut s = spec("python.onnx");
    s.probability_column = column;
    let mut native = NativeScorer::compile(&s, bytes).unwrap();
    let got = score_rows(&mut native, &rows_of(&fx["rows"]), 16);
    let theirs = fx["models"][name].as_array().unwrap();
    assert_eq!(theirs.len(), got.len());
    for (i, (g, row)) in got.iter().zip(theirs).enumerate() {
        let w = row[column].as_f64().unwrap().clamp(0.0, 1.0);
        assert!(
            (f64::from(*g) - w).abs() < 1e-5,
            "{name} column {column} row {i}: native {g} vs python {w}"
        );
    }
}

/// `bytes` with its "probabilities" passed through `x * scale + shift` (a Mul and an Add, which
/// the native engine compiles as steps), so scores outside [0, 1] — raw sums, probits — are
/// compared inside it rather than clamped.
pub fn rescaled(bytes: &[u8], scale: f32, shift: f32) -> Vec<u8> {
    use sluice::infer::native::onnx_proto::TensorProto;
    let mut m = ModelProto::parse_from_bytes(bytes).unwrap();
    let g = m.graph.as_mut().unwrap();
    for o in g.node.iter_mut().flat_map(|n| n.output.iter_mut()) {
        if o == "probabilities" {
            *o = "unscaled".into();
        }
    }
    for (op, a, k, out) in [
        ("Mul", "unscaled", "k_scale", "scaled"),
        ("Add", "scaled", "k_shift", "probabilities"),
    ] {
        g.node.push(NodeProto {
            op_type: op.into(),
            input: vec![a.into(), k.into()],
            output: vec![out.into()],
            ..Default::default()
        });
    }
    for (name, v) in [("k_scale", scale), ("k_shift", shift)] {
        g.initializer.push(TensorProto {
            name: name.into(),
            data_type: 1,
            dims: vec![1],
            float_data: vec![v],
            ..Default::default()
        });
    }
    m.write_to_bytes().unwrap()
}
