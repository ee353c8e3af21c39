//! The native engine against the real ONNX Runtime (libonnxruntime 1.31.1) and against the
//! probabilities Python's onnxruntime wrote for each model (`scripts/train_models.py`): every
//! supported export — scikit-learn LR and GBDT (builtins), HistGradientBoosting, LightGBM,
//! XGBoost — on the fixture rows and on rows made to hit every branch side, NaNs included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use sluice::config::{Config, ModelEngine};
use sluice::infer::native::{compile_for, Walk};
use sluice::infer::onnx::model_bytes;
use sluice::infer::{NativeScorer, OnnxScorer, Scorer};

use common::models::{
    edited_model, parity_fixture, parity_rows, probing_rows, rescaled, rows_of, score_rows,
    set_attr_s, spec, tree_ensemble_v5, with_ml_opset_5, V5,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Every model the native engine must serve: (name in onnx_parity.json, model.path).
fn models() -> Vec<(&'static str, String)> {
    vec![
        ("fraud_lr", "builtin:fraud_lr".into()),
        ("fraud_gbdt", "builtin:fraud_gbdt".into()),
        ("fraud_hgb", format!("{FIXTURES}/fraud_hgb.onnx")),
        ("fraud_lgbm", format!("{FIXTURES}/fraud_lgbm.onnx")),
        ("fraud_xgb", format!("{FIXTURES}/fraud_xgb.onnx")),
    ]
}

fn both(path: &str) -> (NativeScorer, OnnxScorer) {
    both_walked(path, Walk::Fastest)
}

fn both_walked(path: &str, walk: Walk) -> (NativeScorer, OnnxScorer) {
    let s = spec(path);
    let bytes = model_bytes(&s.path).unwrap();
    let native = NativeScorer::compile_with(&s, &bytes, walk)
        .unwrap_or_else(|e| panic!("{path} does not compile natively: {e}"));
    (native, OnnxScorer::load(&s, &bytes).unwrap())
}

/// The graph's outputs cut to "probabilities", declared one column wide (a regressor's).
fn one_probability_column(g: &mut sluice::infer::native::onnx_proto::GraphProto) {
    g.output.retain(|o| o.name == "probabilities");
    let shape = g.output[0]
        .type_
        .mut_or_insert_default()
        .mut_tensor_type()
        .shape
        .mut_or_insert_default();
    shape.dim[1].set_dim_value(1);
}

/// Every walk a tree ensemble can take; each must give ONNX Runtime's scores.
const WALKS: [Walk; 3] = [Walk::Fastest, Walk::BranchFreeScalar, Walk::NodeByNode];

/// The branch-free walk takes AVX2 gathers exactly when asked for the fastest on a CPU that
/// has them (so the parity checks below cover the vector walk on such a CPU).
fn check_vector(describe: &str, walk: Walk, branch_free: bool) {
    let avx2 = cfg!(target_arch = "x86_64") && has_avx2();
    assert_eq!(
        describe.contains("AVX2"),
        branch_free && walk == Walk::Fastest && avx2,
        "{walk:?}: {describe}"
    );
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx2() -> bool {
    false
}

/// Which tree models are shallow enough (and of one comparison mode) to be walked branch-free
/// over perfect trees: the scikit-learn GBDT and XGBoost at depth 3; LightGBM's and
/// HistGradientBoosting's leaf-wise trees are deeper.
const BRANCH_FREE: [&str; 2] = ["fraud_gbdt", "fraud_xgb"];

#[test]
fn native_scores_equal_onnx_runtime_for_every_supported_export() {
    let rows = probing_rows();
    let threshold = Config::defaults().unwrap().model.alert_threshold;
    for ((name, path), walk) in models()
        .into_iter()
        .flat_map(|m| WALKS.map(|w| (m.clone(), w)))
    {
        let (mut native, mut ort) = both_walked(&path, walk);
        assert_eq!(native.width(), 8, "{name}");
        let branch_free = native.describe().contains("branch-free");
        assert_eq!(
            branch_free,
            walk != Walk::NodeByNode && BRANCH_FREE.contains(&name),
            "{name} {walk:?}: {}",
            native.describe()
        );
        check_vector(&native.describe(), walk, branch_free);
        let name = format!("{name} ({walk:?})");
        let want = score_rows(&mut ort, &rows, 64);
        for batch in [1, 7, 64] {
            let got = score_rows(&mut native, &rows, batch);
            let mut worst = 0.0f32;
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let d = (g - w).abs();
                worst = worst.max(d);
                assert!(
                    d <= 1e-5,
                    "{name} batch {batch} row {i} {:?}: native {g} vs ONNX Runtime {w}",
                    rows[i]
                );
                assert_eq!(
                    *g >= threshold,
                    *w >= threshold,
                    "{name} row {i}: the engines disagree on the alert side ({g} vs {w})"
                );
            }
            eprintln!(
                "{name} batch {batch}: {} rows, largest difference {worst:e}",
                rows.len()
            );
        }
        // The rows reach scores across the range, not one constant.
        let distinct: std::collections::BTreeSet<u32> = want.iter().map(|p| p.to_bits()).collect();
        assert!(
            distinct.len() > 50,
            "{name}: only {} distinct scores",
            distinct.len()
        );
    }
}

/// Column 0, and a linear model with a softmax (the path that computes every column before
/// picking one), against ONNX Runtime too.
#[test]
fn the_other_column_and_a_softmax_model_equal_onnx_runtime() {
    let rows = probing_rows();
    let softmax = edited_model("builtin:fraud_lr", |n| {
        set_attr_s(n, "post_transform", b"SOFTMAX")
    });
    let mut cases: Vec<(String, Vec<u8>, usize)> = models()
        .into_iter()
        .map(|(name, path)| (name.to_owned(), model_bytes(&path).unwrap(), 0))
        .collect();
    cases.push(("fraud_lr with SOFTMAX".into(), softmax.clone(), 1));
    cases.push(("fraud_lr with SOFTMAX".into(), softmax, 0));
    for (name, bytes, column) in cases {
        let mut s = spec("edited.onnx");
        s.probability_column = column;
        let mut native = NativeScorer::compile(&s, &bytes).unwrap();
        let mut ort = OnnxScorer::load(&s, &bytes).unwrap();
        let (got, want) = (
            score_rows(&mut native, &rows, 64),
            score_rows(&mut ort, &rows, 64),
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5,
                "{name} column {column} row {i}: native {g} vs ONNX Runtime {w}"
            );
        }
    }
}

#[test]
fn native_scores_equal_python_onnxruntime_on_the_parity_rows() {
    let fx = parity_fixture();
    let rows = parity_rows();
    for (name, path) in models() {
        let s = spec(&path);
        let mut native = NativeScorer::compile(&s, &model_bytes(&path).unwrap()).unwrap();
        let want: Vec<f64> = fx["models"][name]
            .as_array()
            .unwrap_or_else(|| panic!("{name} missing from onnx_parity.json"))
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let got = score_rows(&mut native, &rows, 64);
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() < 1e-5,
                "{name} row {i}: native {g} vs python {w}"
            );
        }
    }
}

#[test]
fn a_graph_the_native_engine_cannot_compile_runs_on_onnx_runtime_under_auto_and_is_refused_under_native(
) {
    // PROBIT is a post transform ONNX Runtime has and the native engine leaves to it.
    let bytes = edited_model("builtin:fraud_lr", |n| {
        set_attr_s(n, "post_transform", b"PROBIT")
    });
    let s = spec("probit.onnx");
    assert!(compile_for(ModelEngine::Ort, &s, &bytes).unwrap().is_none());
    assert!(
        compile_for(ModelEngine::Auto, &s, &bytes)
            .unwrap()
            .is_none(),
        "auto falls back to ONNX Runtime"
    );
    let refused = compile_for(ModelEngine::Native, &s, &bytes)
        .err()
        .unwrap()
        .to_string();
    assert!(
        refused.contains("PROBIT") && refused.contains("model.engine"),
        "{refused}"
    );
    // And ONNX Runtime does run it.
    let mut ort = OnnxScorer::load(&s, &bytes).unwrap();
    assert_eq!(ort.engine(), "onnxruntime");
    let _ = score_rows(&mut ort, &parity_rows(), 8);
    // A model that compiles is served natively under auto.
    let lr = model_bytes("builtin:fraud_lr").unwrap();
    let m = compile_for(ModelEngine::Auto, &spec("builtin:fraud_lr"), &lr)
        .unwrap()
        .unwrap();
    assert_eq!(m.engine(), "native");
}

#[test]
fn malformed_tree_ensembles_are_refused_with_the_reason() {
    let gbdt = "builtin:fraud_gbdt";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a child pointing back at its root (a loop ONNX Runtime would walk forever)",
            edited_model(gbdt, |n| {
                let a = n
                    .attribute
                    .iter_mut()
                    .find(|a| a.name == "nodes_truenodeids")
                    .unwrap();
                a.ints[1] = 0;
            }),
            "reached twice",
        ),
        (
            "a feature beyond the row",
            edited_model(gbdt, |n| {
                let a = n
                    .attribute
                    .iter_mut()
                    .find(|a| a.name == "nodes_featureids")
                    .unwrap();
                a.ints[0] = 8;
            }),
            "feature 8",
        ),
        (
            "a child that does not exist",
            edited_model(gbdt, |n| {
                let a = n
                    .attribute
                    .iter_mut()
                    .find(|a| a.name == "nodes_falsenodeids")
                    .unwrap();
                a.ints[0] = 10_000;
            }),
            "not listed",
        ),
        (
            "lists of different lengths",
            edited_model(gbdt, |n| {
                let a = n
                    .attribute
                    .iter_mut()
                    .find(|a| a.name == "nodes_values")
                    .unwrap();
                a.floats.pop();
            }),
            "different lengths",
        ),
        (
            "an unknown node mode",
            edited_model(gbdt, |n| {
                let a = n
                    .attribute
                    .iter_mut()
                    .find(|a| a.name == "nodes_modes")
                    .unwrap();
                a.strings[0] = b"BRANCH_SOMETIMES".to_vec();
            }),
            "BRANCH_SOMETIMES",
        ),
        (
            "bytes that are not protobuf",
            b"\x08\x07not an onnx model".to_vec(),
            "not an ONNX model",
        ),
    ];
    for (what, bytes, says) in cases {
        let e = NativeScorer::compile(&spec(gbdt), &bytes)
            .err()
            .unwrap_or_else(|| panic!("{what}: compiled"));
        assert!(e.to_string().contains(says), "{what}: {e}");
    }
}

/// The regressors, which no converter above emits for a classifier: the builtin GBDT's trees
/// as a `TreeEnsembleRegressor` and the LR's positive class as a `LinearRegressor`, each under
/// a `Sigmoid` (so the output is the same probability as the classifier's), against ONNX
/// Runtime on the probing rows.
#[test]
fn regressors_under_a_sigmoid_equal_onnx_runtime() {
    use sluice::infer::native::onnx_proto::{Message, ModelProto, NodeProto};
    fn as_regressor(path: &str, rewrite: impl FnOnce(&mut NodeProto)) -> Vec<u8> {
        let mut m = ModelProto::parse_from_bytes(&model_bytes(path).unwrap()).unwrap();
        let g = m.graph.as_mut().unwrap();
        let core = g
            .node
            .iter_mut()
            .find(|n| n.domain == "ai.onnx.ml")
            .unwrap();
        rewrite(core);
        core.output = vec!["raw".into()];
        // The regressor's one output through a Sigmoid to the graph's output, one column.
        g.node.retain(|n| n.domain == "ai.onnx.ml");
        g.node.push(NodeProto {
            op_type: "Sigmoid".into(),
            input: vec!["raw".into()],
            output: vec!["probabilities".into()],
            ..Default::default()
        });
        one_probability_column(g);
        m.write_to_bytes().unwrap()
    }
    let rename = |n: &mut NodeProto, op: &str| {
        n.op_type = op.into();
        n.attribute.retain(|a| !a.name.starts_with("classlabels"));
        for a in &mut n.attribute {
            if let Some(rest) = a.name.strip_prefix("class_") {
                a.name = format!("target_{rest}");
            }
            if a.name == "post_transform" {
                a.s = b"NONE".to_vec();
            }
        }
    };
    let trees = as_regressor("builtin:fraud_gbdt", |n| {
        rename(n, "TreeEnsembleRegressor");
        n.attribute
            .push(sluice::infer::native::onnx_proto::Attribute {
                name: "n_targets".into(),
                i: 1,
                // AttributeProto.AttributeType.INT
                type_: protobuf::EnumOrUnknown::from_i32(2),
                ..Default::default()
            });
    });
    let linear = as_regressor("builtin:fraud_lr", |n| {
        rename(n, "LinearRegressor");
        // The positive class's row and intercept.
        for a in &mut n.attribute {
            match a.name.as_str() {
                "coefficients" => a.floats = a.floats[8..].to_vec(),
                "intercepts" => a.floats = a.floats[1..].to_vec(),
                _ => {}
            }
        }
        n.attribute.retain(|a| a.name != "multi_class");
    });
    let rows = probing_rows();
    for (name, bytes, classifier) in [
        ("TreeEnsembleRegressor", trees, "builtin:fraud_gbdt"),
        ("LinearRegressor", linear, "builtin:fraud_lr"),
    ] {
        let mut s = spec("regressor.onnx");
        s.probability_column = 0;
        let mut native = NativeScorer::compile(&s, &bytes)
            .unwrap_or_else(|e| panic!("{name} does not compile: {e}"));
        let mut ort = OnnxScorer::load(&s, &bytes).unwrap();
        let (got, want) = (
            score_rows(&mut native, &rows, 64),
            score_rows(&mut ort, &rows, 64),
        );
        // And it is the classifier's probability, computed another way.
        let (mut cls, _) = both(classifier);
        let same = score_rows(&mut cls, &rows, 64);
        for (i, ((g, w), c)) in got.iter().zip(&want).zip(&same).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5,
                "{name} row {i}: native {g} vs ONNX Runtime {w}"
            );
            assert!(
                (g - c).abs() <= 1e-5,
                "{name} row {i}: {g} vs the classifier's {c}"
            );
        }
    }
}

/// The builtin GBDT's trees rewritten as the `ai.onnx.ml` opset-5 `TreeEnsemble` (which no
/// converter pinned here emits yet: skl2onnx 1.20 and onnxmltools 1.16 write the opset-3
/// operators) under `Add(base)` and `Sigmoid`, so the output is the classifier's probability.
/// `variant` edits the opset-5 lists before they are written.
fn gbdt_as_tree_ensemble_v5(variant: &str) -> Vec<u8> {
    use sluice::infer::native::onnx_proto::{Message, ModelProto, NodeProto, TensorProto};
    let mut m = ModelProto::parse_from_bytes(&model_bytes("builtin:fraud_gbdt").unwrap()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let old = g
        .node
        .iter()
        .find(|n| n.op_type == "TreeEnsembleClassifier")
        .unwrap()
        .clone();
    let base = old
        .attribute
        .iter()
        .find(|a| a.name == "base_values")
        .unwrap()
        .floats[0];
    let mut v5 = tree_ensemble_v5(
        &old,
        &V5 {
            targets: 1,
            aggregate: if variant == "average" { 0 } else { 1 },
            // PROBIT, the one post transform ONNX Runtime applies to a single target.
            post: if variant == "probit" { 4 } else { 0 },
            // "modes": every other branch as x > t with its sides (and NaN's side) swapped;
            // "gt": every branch so (one mode, NaN to the true side everywhere).
            flip: match variant {
                "modes" => |i| i % 2 == 1,
                "gt" => |_| true,
                _ => |_| false,
            },
            first_tree_twice: variant == "tree twice",
            output: if variant == "probit" {
                "probabilities"
            } else {
                "raw"
            },
        },
    );
    if variant == "probit" {
        // PROBIT reads a probability: leaves w * 0.01 + 0.005, so 100 trees sum to 0.5 plus a
        // hundredth of the GBDT's raw score (about -10..10). Its output then goes through
        // `x * 0.4 + 0.5` (exact in both engines) rather than base and Sigmoid (whose last
        // bits differ between them), so the probits are compared to the bit.
        let leaves = v5
            .attribute
            .iter_mut()
            .find(|a| a.name == "leaf_weights")
            .unwrap();
        let t = leaves.t.as_mut().unwrap();
        t.float_data.iter_mut().for_each(|w| *w = *w * 0.01 + 0.005);
        g.node = vec![v5];
        one_probability_column(g);
        with_ml_opset_5(&mut m);
        return rescaled(&m.write_to_bytes().unwrap(), 0.4, 0.5);
    }
    g.node = vec![
        v5,
        NodeProto {
            op_type: "Add".into(),
            input: vec!["raw".into(), "base".into()],
            output: vec!["z".into()],
            ..Default::default()
        },
        NodeProto {
            op_type: "Sigmoid".into(),
            input: vec!["z".into()],
            output: vec!["probabilities".into()],
            ..Default::default()
        },
    ];
    g.initializer.push(TensorProto {
        name: "base".into(),
        data_type: 1,
        dims: vec![1],
        float_data: vec![base],
        ..Default::default()
    });
    one_probability_column(g);
    with_ml_opset_5(&mut m);
    m.write_to_bytes().unwrap()
}

/// The opset-5 `TreeEnsemble`: compiled natively and equal to ONNX Runtime's own reading of it
/// on the probing rows — as the GBDT's trees (then also equal to the classifier's probability),
/// with mixed modes and NaN sides (walked node by node), one other mode with every NaN to the
/// true side (walked branch-free too), averaged, with a tree listed twice in `tree_roots`, and
/// under PROBIT (leaf weights shrunk so the sums are probabilities).
#[test]
fn the_opset_5_tree_ensemble_equals_onnx_runtime() {
    let rows = probing_rows();
    let (mut classifier, _) = both("builtin:fraud_gbdt");
    let same = score_rows(&mut classifier, &rows, 64);
    for (variant, walk) in ["gbdt", "modes", "gt", "average", "tree twice", "probit"]
        .into_iter()
        .flat_map(|v| WALKS.map(|w| (v, w)))
    {
        let bytes = gbdt_as_tree_ensemble_v5(variant);
        let mut s = spec("tree_ensemble_v5.onnx");
        s.probability_column = 0;
        let mut native = NativeScorer::compile_with(&s, &bytes, walk)
            .unwrap_or_else(|e| panic!("{variant} does not compile: {e}"));
        assert!(
            native.describe().contains("100 trees") || variant == "tree twice",
            "{}",
            native.describe()
        );
        assert_eq!(
            native.describe().contains("branch-free"),
            walk != Walk::NodeByNode && variant != "modes",
            "{variant} {walk:?}: {}",
            native.describe()
        );
        check_vector(
            &native.describe(),
            walk,
            native.describe().contains("branch-free"),
        );
        let variant = format!("{variant} ({walk:?})");
        let variant = variant.as_str();
        let mut ort = OnnxScorer::load(&s, &bytes).unwrap();
        let (got, want) = (
            score_rows(&mut native, &rows, 64),
            score_rows(&mut ort, &rows, 64),
        );
        let distinct: std::collections::BTreeSet<u32> = want.iter().map(|p| p.to_bits()).collect();
        assert!(
            distinct.len() > 50,
            "{variant}: only {} distinct scores",
            distinct.len()
        );
        for (i, ((g, w), c)) in got.iter().zip(&want).zip(&same).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5,
                "{variant} row {i} {:?}: native {g} vs ONNX Runtime {w}",
                rows[i]
            );
            // To the bit, as every tree sum is (a probit off by 4e-5 near 0 is not).
            if variant.starts_with("probit") {
                assert_eq!(g.to_bits(), w.to_bits(), "probit row {i}: {g} vs {w}");
            }
            if !["average", "tree twice", "probit"]
                .iter()
                .any(|v| variant.starts_with(v))
            {
                assert!(
                    (g - c).abs() <= 1e-5,
                    "{variant} row {i}: {g} vs the classifier's {c}"
                );
            }
        }
    }
}

/// A small opset-5 `TreeEnsemble` written by onnx.helper (`scripts/tree_ensemble_v5.py`: three
/// trees of depths 2, 2 and 1, a NaN sent to the true side): every walk equals the scores Python
/// onnxruntime and the ONNX reference evaluator gave (a writer and a reading independent of
/// this crate's), and the in-process ONNX Runtime on the probing rows.
#[test]
fn a_tree_ensemble_written_by_onnx_helper_scores_as_python_onnxruntime_and_the_reference() {
    let path = format!("{FIXTURES}/tree_ensemble_v5.onnx");
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{FIXTURES}/tree_ensemble_v5.json")).unwrap(),
    )
    .unwrap();
    let rows = rows_of(&fx["rows"]);
    assert!(rows.iter().any(|r| r.iter().all(|v| v.is_nan())));
    let mut s = spec(&path);
    s.probability_column = 0;
    let bytes = model_bytes(&path).unwrap();
    let mut ort = OnnxScorer::load(&s, &bytes).unwrap();
    let probing = probing_rows();
    let want = score_rows(&mut ort, &probing, 64);
    for walk in WALKS {
        let mut native = NativeScorer::compile_with(&s, &bytes, walk)
            .unwrap_or_else(|e| panic!("{walk:?}: {e}"));
        assert!(
            native.describe().contains("3 trees")
                && native.describe().contains("branch-free") == (walk != Walk::NodeByNode),
            "{}",
            native.describe()
        );
        let got = score_rows(&mut native, &rows, 16);
        for key in ["onnxruntime", "reference"] {
            let theirs = fx[key].as_array().unwrap();
            assert_eq!(theirs.len(), rows.len());
            for (i, (g, w)) in got.iter().zip(theirs).enumerate() {
                let w = w.as_f64().unwrap();
                assert!(
                    (f64::from(*g) - w).abs() < 1e-6,
                    "{walk:?} row {i} {:?}: native {g} vs {key} {w}",
                    rows[i]
                );
            }
        }
        let got = score_rows(&mut native, &probing, 64);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5,
                "{walk:?} probing row {i}: native {g} vs ONNX Runtime {w}"
            );
        }
    }
}
