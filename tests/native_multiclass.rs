//! The native engine's multi-column tree ensembles against the real ONNX Runtime and against
//! Python's onnxruntime: three-class models as scikit-learn (GBDT, HistGradientBoosting),
//! LightGBM and XGBoost export them (`scripts/train_multiclass.py`), every column, both walks;
//! every post transform; the same trees as a three-target `TreeEnsembleRegressor` and opset-5
//! `TreeEnsemble`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use sluice::infer::native::onnx_proto::{Attribute, Message, ModelProto, NodeProto};
use sluice::infer::native::Walk;
use sluice::infer::onnx::model_bytes;
use sluice::infer::{NativeScorer, OnnxScorer};

use common::models::{
    assert_python_column, compare, probing_rows, rescaled, score_rows, spec, tree_ensemble_v5,
    with_ml_opset_5, V5, WIDE,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// (name in multiclass_parity.json, walked branch-free under `Walk::Fastest`): the depth-3
/// GBDT and XGBoost are; LightGBM's and HistGradientBoosting's leaf-wise trees are deeper.
const MODELS: [(&str, bool); 4] = [
    ("multiclass_gbdt", true),
    ("multiclass_lgbm", false),
    ("multiclass_xgb", true),
    ("multiclass_hgb", false),
];

fn fixture(name: &str) -> Vec<u8> {
    model_bytes(&format!("{FIXTURES}/{name}.onnx")).unwrap()
}

#[test]
fn three_class_exports_equal_onnx_runtime_and_python_in_every_column() {
    let rows = probing_rows();
    for (name, branch_free) in MODELS {
        let bytes = fixture(name);
        let mut columns = Vec::new();
        for column in 0..3 {
            for walk in [Walk::Fastest, Walk::NodeByNode] {
                let (want, described) = compare(name, &bytes, column, walk, &rows, WIDE);
                assert!(
                    described.contains("3 column(s) (Softmax)"),
                    "{name}: {described}"
                );
                assert_eq!(
                    described.contains("branch-free"),
                    branch_free && walk == Walk::Fastest,
                    "{name} {walk:?}: {described}"
                );
                columns.push(want);
            }
            // Python's onnxruntime on the fixture rows (the exporting side's own reading).
            assert_python_column("multiclass_parity.json", name, &bytes, column);
        }
        // The three columns are a distribution: each row's sum is 1.
        // (`columns` holds each column twice, once per walk.)
        let each = columns[0].iter().zip(&columns[2]).zip(&columns[4]);
        for (i, ((a, b), c)) in each.enumerate() {
            let sum = a + b + c;
            assert!(
                (sum - 1.0).abs() < 1e-4,
                "{name} row {i}: columns sum to {sum}"
            );
        }
    }
}

/// The GBDT fixture's tree operator edited by `edit`.
fn edited_gbdt(edit: impl FnOnce(&mut NodeProto)) -> ModelProto {
    let mut m = ModelProto::parse_from_bytes(&fixture("multiclass_gbdt")).unwrap();
    let core = m
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.domain == "ai.onnx.ml")
        .unwrap();
    edit(core);
    m
}

fn set(n: &mut NodeProto, name: &str, edit: impl FnOnce(&mut Attribute)) {
    match n.attribute.iter_mut().find(|a| a.name == name) {
        Some(a) => edit(a),
        None => {
            let mut a = Attribute {
                name: name.into(),
                ..Default::default()
            };
            edit(&mut a);
            n.attribute.push(a);
        }
    }
}

fn post(n: &mut NodeProto, p: &str) {
    set(n, "post_transform", |a| {
        a.s = p.as_bytes().to_vec();
        a.type_ = protobuf::EnumOrUnknown::from_i32(3); // STRING
    });
}

#[test]
fn every_post_transform_of_a_three_class_ensemble_equals_onnx_runtime() {
    let rows = probing_rows();
    let gbdt = |p: &str, scale_weights: f32, base: Option<[f32; 3]>| {
        edited_gbdt(|n| {
            post(n, p);
            set(n, "class_weights", |a| {
                a.floats.iter_mut().for_each(|w| *w *= scale_weights)
            });
            if let Some(b) = base {
                set(n, "base_values", |a| a.floats = b.to_vec());
            }
        })
        .write_to_bytes()
        .unwrap()
    };
    let cases = [
        // Raw class scores (about -10..10) brought into [0, 1].
        ("NONE", rescaled(&gbdt("NONE", 1.0, None), 0.04, 0.5)),
        ("LOGISTIC", gbdt("LOGISTIC", 1.0, None)),
        ("SOFTMAX_ZERO", gbdt("SOFTMAX_ZERO", 1.0, None)),
        // PROBIT reads a probability: sums kept inside (0, 1), probits (about -1..1) rescaled.
        (
            "PROBIT",
            rescaled(&gbdt("PROBIT", 0.002, Some([0.5, 0.35, 0.65])), 0.4, 0.5),
        ),
    ];
    for (name, bytes) in cases {
        for column in 0..3 {
            let (_, described) = compare(name, &bytes, column, Walk::Fastest, &rows, WIDE);
            assert!(described.contains("branch-free"), "{name}: {described}");
        }
    }
}

/// The GBDT fixture as a `TreeEnsembleRegressor` of three targets: its classes renamed
/// targets, `post` and `aggregate` set.
fn as_regressor(post_transform: &str, aggregate: &str) -> Vec<u8> {
    let mut m = edited_gbdt(|n| {
        n.op_type = "TreeEnsembleRegressor".into();
        n.attribute.retain(|a| !a.name.starts_with("classlabels"));
        for a in &mut n.attribute {
            if let Some(rest) = a.name.strip_prefix("class_") {
                a.name = format!("target_{rest}");
            }
        }
        post(n, post_transform);
        set(n, "n_targets", |a| {
            a.i = 3;
            a.type_ = protobuf::EnumOrUnknown::from_i32(2); // INT
        });
        set(n, "aggregate_function", |a| {
            a.s = aggregate.as_bytes().to_vec();
            a.type_ = protobuf::EnumOrUnknown::from_i32(3);
        });
        n.output = vec!["probabilities".into()];
    });
    let g = m.graph.as_mut().unwrap();
    g.node.retain(|n| n.domain == "ai.onnx.ml");
    g.output.retain(|o| o.name == "probabilities");
    m.write_to_bytes().unwrap()
}

#[test]
fn three_target_regressors_equal_onnx_runtime_and_the_classifier() {
    let rows = probing_rows();
    let classifier = fixture("multiclass_gbdt");
    for column in 0..3 {
        let (same, _) = compare(
            "classifier",
            &classifier,
            column,
            Walk::Fastest,
            &rows,
            WIDE,
        );
        // Summed with a softmax: the classifier's probabilities, computed another way.
        let (got, _) = compare(
            "regressor SUM SOFTMAX",
            &as_regressor("SOFTMAX", "SUM"),
            column,
            Walk::Fastest,
            &rows,
            WIDE,
        );
        for (i, (g, c)) in got.iter().zip(&same).enumerate() {
            assert!(
                (g - c).abs() <= 1e-5,
                "row {i}: {g} vs the classifier's {c}"
            );
        }
        // Averaged over all 120 trees, raw (their sums are about -10..10, so 1/120 of that
        // around the base values: rescaled into [0, 1]).
        let averaged = rescaled(&as_regressor("NONE", "AVERAGE"), 0.1, 0.5);
        for walk in [Walk::Fastest, Walk::NodeByNode] {
            compare("regressor AVERAGE", &averaged, column, walk, &rows, WIDE);
        }
    }
}

/// The GBDT fixture's trees rewritten as the opset-5 `TreeEnsemble` with three targets (a
/// tree's leaves on its class) and post transform `code`: no base values there, so it is the
/// classifier without them.
fn as_tree_ensemble_v5(code: i64) -> Vec<u8> {
    let mut m = edited_gbdt(|_| {});
    let g = m.graph.as_mut().unwrap();
    let old = g.node.iter().find(|n| n.domain == "ai.onnx.ml").unwrap();
    let v5 = tree_ensemble_v5(
        old,
        &V5 {
            targets: 3,
            aggregate: 1,
            post: code,
            flip: |_| false,
            first_tree_twice: false,
            output: "probabilities",
        },
    );
    g.node = vec![v5];
    g.output.retain(|o| o.name == "probabilities");
    with_ml_opset_5(&mut m);
    m.write_to_bytes().unwrap()
}

/// With SOFTMAX_ZERO (code 3, which ONNX Runtime reads as the specification does). Codes 1
/// and 2 it reads swapped (LOGISTIC for the specification's SOFTMAX and the other way round):
/// checked here, and the native engine leaves both to it.
#[test]
fn a_three_target_opset_5_tree_ensemble_equals_onnx_runtime_and_the_classifier_without_base() {
    let rows = probing_rows();
    let v5 = as_tree_ensemble_v5(3);
    let no_base = edited_gbdt(|n| {
        n.attribute.retain(|a| a.name != "base_values");
        post(n, "SOFTMAX_ZERO");
    })
    .write_to_bytes()
    .unwrap();
    for column in 0..3 {
        let (same, _) = compare(
            "classifier without base",
            &no_base,
            column,
            Walk::Fastest,
            &rows,
            WIDE,
        );
        for walk in [Walk::Fastest, Walk::NodeByNode] {
            let (got, described) = compare("TreeEnsemble", &v5, column, walk, &rows, WIDE);
            assert!(described.contains("120 trees"), "{described}");
            for (i, (g, c)) in got.iter().zip(&same).enumerate() {
                assert!(
                    (g - c).abs() <= 1e-5,
                    "row {i}: {g} vs the classifier's {c}"
                );
            }
        }
    }
}

#[test]
fn multi_column_ensembles_the_engine_cannot_read_are_refused_with_the_reason() {
    let s = spec("refused.onnx");
    let refused = |m: ModelProto| {
        NativeScorer::compile(&s, &m.write_to_bytes().unwrap())
            .err()
            .unwrap()
            .to_string()
    };
    // A leaf with two weights on one class (ONNX Runtime adds them one after the other).
    let twice = edited_gbdt(|n| {
        let mut copy = |name: &str| {
            let a = n.attribute.iter_mut().find(|a| a.name == name).unwrap();
            if a.ints.is_empty() {
                a.floats.push(a.floats[0]);
            } else {
                a.ints.push(a.ints[0]);
            }
        };
        for name in [
            "class_treeids",
            "class_nodeids",
            "class_ids",
            "class_weights",
        ] {
            copy(name);
        }
    });
    assert!(refused(twice).contains("two weights on class/target"));
    // A weight on a class the model does not have.
    let beyond = edited_gbdt(|n| {
        set(n, "class_ids", |a| a.ints[0] = 3);
    });
    assert!(refused(beyond).contains("class/target 3 of 3"));
    // More base values than classes.
    let bases = edited_gbdt(|n| set(n, "base_values", |a| a.floats.push(1.0)));
    assert!(refused(bases).contains("4 base values for 3 classes"));
}

#[test]
fn opset_5_post_transform_codes_onnx_runtime_reads_against_the_specification_are_left_to_it() {
    let rows = probing_rows();
    let mut s = spec("tree_ensemble_v5.onnx");
    s.probability_column = 0;
    for (code, theirs) in [(1, "LOGISTIC"), (2, "SOFTMAX")] {
        let bytes = as_tree_ensemble_v5(code);
        let refused = NativeScorer::compile(&s, &bytes).err().unwrap().to_string();
        assert!(
            refused.contains(&format!("post_transform code {code}")),
            "{refused}"
        );
        // What ONNX Runtime applies (should it ever read the codes as the specification
        // does, this fails and the native engine can take them).
        let ort = |b: &[u8]| score_rows(&mut OnnxScorer::load(&s, b).unwrap(), &rows, 64);
        let as_named = edited_gbdt(|n| {
            n.attribute.retain(|a| a.name != "base_values");
            post(n, theirs);
        })
        .write_to_bytes()
        .unwrap();
        let (got, named) = (ort(&bytes), ort(&as_named));
        for (i, (g, w)) in got.iter().zip(&named).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5,
                "code {code} row {i}: {g} vs {theirs} {w}"
            );
        }
    }
}
