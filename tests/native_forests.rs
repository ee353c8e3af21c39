//! The native engine on the averaging tree models (`scripts/train_forests.py`): a random
//! forest, extra trees and a single decision tree on the fraud label, and a three-class random
//! forest whose every leaf holds a probability for every class (each tree then feeds all three
//! columns). Against the in-process ONNX Runtime on the probing rows and Python onnxruntime's
//! probabilities on the fixture rows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use sluice::infer::native::Walk;
use sluice::infer::onnx::model_bytes;

use common::models::{assert_python_column, compare, probing_rows, WIDE};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// (name in forests_parity.json, columns, `compare`'s spread): the single tree has 27 leaves,
/// many of them pure (a score of exactly 0 or 1).
const MODELS: [(&str, usize, (usize, f32)); 4] = [
    ("forest_rf", 2, WIDE),
    ("forest_et", 2, WIDE),
    ("forest_dt", 2, (10, 0.8)),
    ("forest_rf3", 3, WIDE),
];

#[test]
fn forests_and_a_decision_tree_equal_onnx_runtime_and_python_in_every_column() {
    let rows = probing_rows();
    for (name, columns, spread) in MODELS {
        let bytes = model_bytes(&format!("{FIXTURES}/{name}.onnx")).unwrap();
        for column in 0..columns {
            for walk in [Walk::Fastest, Walk::NodeByNode] {
                let (_, described) = compare(name, &bytes, column, walk, &rows, spread);
                // Deeper than the branch-free layout takes (8 and 10 levels).
                assert!(described.contains("node by node"), "{name}: {described}");
                if columns == 3 {
                    // Every leaf holds all three classes: each column walks all 30 trees.
                    assert!(
                        described.contains("3 column(s)") && described.contains("90 trees"),
                        "{name}: {described}"
                    );
                }
            }
            assert_python_column("forests_parity.json", name, &bytes, column);
        }
    }
}
