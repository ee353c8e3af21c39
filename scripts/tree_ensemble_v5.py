#!/usr/bin/env python3
"""Write a small model with the ai.onnx.ml opset-5 `TreeEnsemble` operator, by hand with
onnx.helper (no converter pinned here emits that operator yet), and the scores two
implementations give it on the parity rows: Python onnxruntime and the ONNX reference
evaluator (onnx.reference, the operator's specification in code).

Writes (committed):
  tests/fixtures/tree_ensemble_v5.onnx   three trees of depths 2, 2 and 1 over the default
                                         features, summed, under a Sigmoid; one branch sends
                                         NaN to its true side
  tests/fixtures/tree_ensemble_v5.json   {"onnxruntime": [...], "reference": [...]} for the rows
                                         of tests/fixtures/onnx_parity.json, with a NaN row added

Needs the packages `scripts/install-deps --models` installs (onnx, onnxruntime, numpy).
"""
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def model():
    # Interior nodes (index: feature <= split ? true side : false side):
    #   tree 0: node 0: amount <= 100 ? node 1 : leaf 0
    #           node 1: amount / ewma <= 2 ? leaf 1 : leaf 2
    #   tree 1: node 2: window count <= 3 ? leaf 3 : node 3
    #           node 3: window sum <= 500 ? leaf 4 : leaf 5 (NaN to the true side)
    #   tree 2: node 4: log1p(count) <= 1.5 ? leaf 6 : leaf 7
    node = helper.make_node(
        "TreeEnsemble",
        ["input"],
        ["raw"],
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function=1,
        post_transform=0,
        tree_roots=[0, 2, 4],
        nodes_featureids=[0, 4, 6, 7, 1],
        nodes_modes=helper.make_tensor("nodes_modes", TensorProto.UINT8, [5], [0, 0, 0, 0, 0]),
        nodes_splits=helper.make_tensor("nodes_splits", TensorProto.FLOAT, [5], [100.0, 2.0, 3.0, 500.0, 1.5]),
        nodes_truenodeids=[1, 1, 3, 4, 6],
        nodes_trueleafs=[0, 1, 1, 1, 1],
        nodes_falsenodeids=[0, 2, 3, 5, 7],
        nodes_falseleafs=[1, 1, 0, 1, 1],
        nodes_missing_value_tracks_true=[0, 0, 0, 1, 0],
        leaf_targetids=[0] * 8,
        leaf_weights=helper.make_tensor(
            "leaf_weights", TensorProto.FLOAT, [8], [1.25, -2.0, 0.5, -0.75, 0.25, 1.5, -0.5, 0.125]
        ),
    )
    sigmoid = helper.make_node("Sigmoid", ["raw"], ["probabilities"])
    graph = helper.make_graph(
        [node, sigmoid],
        "tree_ensemble_v5",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 1])],
    )
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)],
        ir_version=10,
    )
    onnx.checker.check_model(m, full_check=True)
    return m


def main():
    m = model()
    path = os.path.join(FIXTURES, "tree_ensemble_v5.onnx")
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    with open(os.path.join(FIXTURES, "onnx_parity.json")) as f:
        rows = json.load(f)["rows"]
    rows.append([float("nan")] * 8)
    x = np.asarray(rows, dtype=np.float32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(["probabilities"], {"input": x})[0][:, 0]
    ref = ReferenceEvaluator(m).run(None, {"input": x})[0][:, 0]
    assert np.allclose(got, ref, atol=1e-6), (got, ref)
    out = {
        "rows": [[None if np.isnan(v) else v for v in r] for r in rows],
        "onnxruntime": got.tolist(),
        "reference": ref.astype(np.float64).tolist(),
        "onnxruntime_version": ort.__version__,
        "onnx_version": onnx.__version__,
    }
    with open(os.path.join(FIXTURES, "tree_ensemble_v5.json"), "w") as f:
        json.dump(out, f)
    print(f"wrote {path}; {len(set(np.round(got, 6)))} distinct scores over {len(rows)} rows")


if __name__ == "__main__":
    main()
