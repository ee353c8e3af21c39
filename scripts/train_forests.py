#!/usr/bin/env python3
"""Train the averaging tree models fraud teams also run — a random forest, extra trees, a single
decision tree — on the synthetic stream of scripts/train_models.py, write them as ONNX
(skl2onnx), and write the probabilities Python's onnxruntime gives them, for the native
engine's parity tests. Unlike the boosted models, their leaves hold class probabilities over
the trees (a binary one on one class; a three-class one on every class at every leaf) and
their trees are deep, so they take the node-by-node walk.

Writes (committed):
  tests/fixtures/forest_rf.onnx        RandomForestClassifier, 30 trees, depth <= 8, binary
  tests/fixtures/forest_et.onnx        ExtraTreesClassifier, 30 trees, depth <= 8, binary
  tests/fixtures/forest_dt.onnx        DecisionTreeClassifier, depth <= 10, binary
  tests/fixtures/forest_rf3.onnx       RandomForestClassifier, 30 trees, depth <= 8, the three
                                       classes of scripts/train_multiclass.py
  tests/fixtures/forests_parity.json   the 64 rows of onnx_parity.json and each model's
                                       probability columns from Python onnxruntime

Needs the pinned packages `scripts/install-deps --models` installs. Deterministic: seeded,
single-threaded training, graphs named after their files (the same bytes every run).
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_models import export, synthesize  # noqa: E402
from train_multiclass import SPIKE, parity_rows, write_fixture  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def main():
    x, fraud = synthesize(np.random.default_rng(20261129))
    three = np.where(fraud == 1, 1, np.where(x[:, 4] > SPIKE, 2, 0)).astype(np.int64)
    forest = dict(n_estimators=30, max_depth=8, min_samples_leaf=20, random_state=1, n_jobs=1)
    models = {
        "forest_rf": (RandomForestClassifier(**forest), fraud),
        "forest_et": (ExtraTreesClassifier(**forest), fraud),
        "forest_dt": (DecisionTreeClassifier(max_depth=10, min_samples_leaf=20, random_state=1), fraud),
        "forest_rf3": (RandomForestClassifier(**forest), three),
    }
    rows = parity_rows()
    parity = {"rows": rows.tolist(), "models": {}, "onnxruntime": ort.__version__}
    for name, (model, y) in models.items():
        model.fit(x, y)
        parity["models"][name] = write_fixture(name, export, model, rows, x, y).tolist()
    with open(os.path.join(FIXTURES, "forests_parity.json"), "w") as f:
        json.dump(parity, f)
    print("wrote forest models and fixture", file=sys.stderr)


if __name__ == "__main__":
    main()
