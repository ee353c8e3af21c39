#!/usr/bin/env python3
"""Train three-class models on the synthetic stream of scripts/train_models.py and write them
as ONNX, with the probabilities Python's onnxruntime gives them, for the native engine's
multiclass parity tests.

Classes: 0 an ordinary transaction, 1 a fraud burst (train_models.py's label), 2 an ordinary
one well above its card's running average (amount / EWMA > 1.6): a risk tier a team might
score beside fraud. Each model is exported as its converter writes a multiclass model: one
tree per class per round, leaves on one class each, a SOFTMAX post transform.

Writes (committed):
  tests/fixtures/multiclass_gbdt.onnx   scikit-learn GradientBoostingClassifier, 40 rounds (120 trees)
  tests/fixtures/multiclass_lgbm.onnx   LightGBM, 40 rounds (onnxmltools)
  tests/fixtures/multiclass_xgb.onnx    XGBoost multi:softprob, 40 rounds (onnxmltools)
  tests/fixtures/multiclass_hgb.onnx    scikit-learn HistGradientBoostingClassifier, at most 40
                                        rounds (its early stopping keeps 30: 90 trees)
  tests/fixtures/multiclass_parity.json the 64 rows of onnx_parity.json and each model's three
                                        probability columns from Python onnxruntime

Needs the pinned packages `scripts/install-deps --models` installs. Deterministic: seeded,
single-threaded training, and the graphs named after their files (the same bytes every run).
"""
import json
import os
import sys

import lightgbm
import numpy as np
import onnx
import onnxruntime as ort
import xgboost
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_models import export, export_lightgbm, export_xgboost, synthesize  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
ROUNDS = 40
# Column 4 of a row is amount / EWMA (train_models.features).
SPIKE = 1.6


def parity_rows():
    """The 64 fixture rows of tests/fixtures/onnx_parity.json."""
    with open(os.path.join(FIXTURES, "onnx_parity.json")) as f:
        return np.asarray(json.load(f)["rows"], dtype=np.float32)


def write_fixture(name, write, model, rows, x, y):
    """Export `model` with `write` to tests/fixtures/NAME.onnx, its graph named after the file
    (the converters name it with a random UUID: named, the output is the same bytes every
    run); print its training accuracy and return Python onnxruntime's probabilities for
    `rows`."""
    path = os.path.join(FIXTURES, f"{name}.onnx")
    write(model, path)
    exported = onnx.load(path)
    exported.graph.name = name
    onnx.save(exported, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    accuracy = (sess.run(["label"], {"input": x})[0] == y).mean()
    print(f"{name}: train accuracy {accuracy:.4f}, {os.path.getsize(path)} bytes", file=sys.stderr)
    return sess.run(["probabilities"], {"input": rows})[0]


def main():
    x, fraud = synthesize(np.random.default_rng(20261129))
    y = np.where(fraud == 1, 1, np.where(x[:, 4] > SPIKE, 2, 0)).astype(np.int64)
    print(f"{len(y)} rows, classes {np.bincount(y).tolist()}", file=sys.stderr)
    models = {
        "multiclass_gbdt": (
            GradientBoostingClassifier(n_estimators=ROUNDS, max_depth=3, random_state=1).fit(x, y),
            export,
        ),
        "multiclass_lgbm": (
            lightgbm.LGBMClassifier(
                n_estimators=ROUNDS, num_leaves=15, random_state=1, deterministic=True, n_jobs=1, verbose=-1
            ).fit(x, y),
            export_lightgbm,
        ),
        "multiclass_xgb": (
            xgboost.XGBClassifier(
                n_estimators=ROUNDS, max_depth=3, random_state=1, n_jobs=1, tree_method="hist",
                objective="multi:softprob",
            ).fit(x, y),
            export_xgboost,
        ),
        "multiclass_hgb": (HistGradientBoostingClassifier(max_iter=ROUNDS, random_state=1).fit(x, y), export),
    }
    rows = parity_rows()
    parity = {"rows": rows.tolist(), "models": {}, "onnxruntime": ort.__version__}
    for name, (model, write) in models.items():
        probs = write_fixture(name, write, model, rows, x, y)
        assert probs.shape == (len(rows), 3), (name, probs.shape)
        parity["models"][name] = probs.tolist()
    with open(os.path.join(FIXTURES, "multiclass_parity.json"), "w") as f:
        json.dump(parity, f)
    print("wrote multiclass models and fixture", file=sys.stderr)


if __name__ == "__main__":
    main()
