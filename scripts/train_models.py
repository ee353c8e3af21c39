#!/usr/bin/env python3
"""Train sluice's example fraud models and write them as ONNX, plus a parity fixture.

Synthetic data: per-card streams of transactions. Fraud bursts are large amounts arriving fast
relative to the card's own history. Each row holds exactly the features of sluice's default
`features.list` (src/config/defaults.toml), computed the same way from a running per-key state:
  amount, log1p(count), mean amount, EWMA amount (alpha 0.1), amount / EWMA, secs since previous,
  count and sum of amount over a 5-minute sliding window of 30 s buckets.

Writes (committed; sluice embeds fraud_lr.onnx as its default model):
  src/infer/models/fraud_lr.onnx     logistic regression
  src/infer/models/fraud_gbdt.onnx   gradient-boosted trees, 100 trees
  tests/fixtures/fraud_lgbm.onnx     LightGBM, 100 trees (onnxmltools)
  tests/fixtures/fraud_xgb.onnx      XGBoost, 100 trees (onnxmltools)
  tests/fixtures/fraud_hgb.onnx      scikit-learn HistGradientBoostingClassifier (skl2onnx)
  tests/fixtures/fraud_xgb_1000.onnx XGBoost, 1,000 trees (load and compile time, bench only)
  tests/fixtures/onnx_parity.json    64 rows and Python onnxruntime's probabilities for each
  tests/fixtures/bad_shape.onnx      a valid model whose input width (3) sluice must refuse

Needs the pinned packages `scripts/install-deps --models` installs (numpy, scikit-learn,
skl2onnx, onnxmltools, lightgbm, xgboost, onnxruntime==1.31.1, protobuf 6: protobuf 7 refuses
the bool lists skl2onnx writes for HistGradientBoosting).
Deterministic: seeded, single-threaded training.
"""
import json
import math
import os
import sys

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
import onnxruntime as ort
import lightgbm
import onnxmltools
import xgboost
from onnxmltools.convert.common.data_types import FloatTensorType as MlFloatTensorType
from sklearn.ensemble import HistGradientBoostingClassifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALPHA = 0.1
WIDTH = 8
STEP_NS = 30 * 10**9
SPAN = 10  # buckets in the 5-minute window


def features(state, amount, ts):
    """Mirror of FeaturePlan::update then build_row for one in-order Observation."""
    count, total, ewma, prev, recent = state
    count += 1
    total += amount
    ewma = amount if count == 1 else ALPHA * amount + (1 - ALPHA) * ewma
    prev_ts = ts if prev is None else prev
    epoch = ts // STEP_NS
    recent = [(e, a) for (e, a) in recent if e > epoch - SPAN] + [(epoch, amount)]
    row = [
        amount,
        math.log1p(count),
        total / count,
        ewma,
        amount / ewma if abs(ewma) > 2.220446049250313e-16 else 1.0,
        max(ts - prev_ts, 0) * 1e-9,
        float(len(recent)),
        sum(a for _, a in recent),
    ]
    return row, (count, total, ewma, ts, recent)


def synthesize(rng, cards=4000, events=120_000):
    states = {}
    rows, labels = [], []
    ts = 1_700_000_000 * 10**9
    for _ in range(events):
        card = int(rng.integers(cards))
        fraud_card = card % 50 == 0
        burst = fraud_card and rng.random() < 0.3
        ts += int(rng.exponential(2e7))
        base = 20 + (card % 17) * 5
        amount = float(rng.lognormal(math.log(base), 0.4))
        if burst:
            amount *= float(rng.uniform(4, 12))
        state = states.get(card, (0, 0.0, 0.0, None, []))
        if burst and state[3] is not None:
            ts_event = state[3] + int(rng.exponential(5e8))
        else:
            ts_event = ts
        row, states[card] = features(state, amount, max(ts_event, state[3] or 0))
        rows.append(row)
        labels.append(1 if burst else 0)
    return np.asarray(rows, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def export(model, path):
    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, model.n_features_in_]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())


def export_lightgbm(model, path):
    # onnxmltools takes its own FloatTensorType and at most opset 15.
    onx = onnxmltools.convert_lightgbm(
        model, initial_types=[("input", MlFloatTensorType([None, WIDTH]))], zipmap=False, target_opset=15
    )
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())


def export_xgboost(model, path):
    onx = onnxmltools.convert_xgboost(
        model, initial_types=[("input", MlFloatTensorType([None, WIDTH]))], target_opset=15
    )
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())


def main():
    rng = np.random.default_rng(20261129)
    x, y = synthesize(rng)
    print(f"{len(y)} rows, {y.mean():.3%} fraud", file=sys.stderr)
    models = os.path.join(ROOT, "src", "infer", "models")
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    os.makedirs(models, exist_ok=True)
    os.makedirs(fixtures, exist_ok=True)

    lr = LogisticRegression(max_iter=2000, C=1.0).fit(x, y)
    export(lr, os.path.join(models, "fraud_lr.onnx"))
    gbdt = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=1).fit(x, y)
    export(gbdt, os.path.join(models, "fraud_gbdt.onnx"))
    lgbm = lightgbm.LGBMClassifier(
        n_estimators=100, num_leaves=15, random_state=1, deterministic=True, n_jobs=1, verbose=-1
    ).fit(x, y)
    export_lightgbm(lgbm, os.path.join(fixtures, "fraud_lgbm.onnx"))
    xgb = xgboost.XGBClassifier(n_estimators=100, max_depth=3, random_state=1, n_jobs=1, tree_method="hist").fit(x, y)
    export_xgboost(xgb, os.path.join(fixtures, "fraud_xgb.onnx"))
    xgb_big = xgboost.XGBClassifier(n_estimators=1000, max_depth=3, random_state=1, n_jobs=1, tree_method="hist").fit(x, y)
    export_xgboost(xgb_big, os.path.join(fixtures, "fraud_xgb_1000.onnx"))
    hgb = HistGradientBoostingClassifier(max_iter=100, random_state=1).fit(x, y)
    export(hgb, os.path.join(fixtures, "fraud_hgb.onnx"))
    bad = LogisticRegression(max_iter=500).fit(x[:, :3], y)
    export(bad, os.path.join(fixtures, "bad_shape.onnx"))

    sample = x[rng.choice(len(x), 64, replace=False)]
    parity = {"width": WIDTH, "rows": sample.tolist(), "models": {}}
    for name, folder in [("fraud_lr", models), ("fraud_gbdt", models), ("fraud_lgbm", fixtures),
                         ("fraud_xgb", fixtures), ("fraud_hgb", fixtures)]:
        sess = ort.InferenceSession(os.path.join(folder, f"{name}.onnx"), providers=["CPUExecutionProvider"])
        probs = sess.run(["probabilities"], {"input": sample})[0]
        parity["models"][name] = probs[:, 1].tolist()
        print(f"{name}: train accuracy {((sess.run(['label'], {'input': x})[0]) == y).mean():.4f}", file=sys.stderr)
    parity["onnxruntime"] = ort.__version__
    with open(os.path.join(fixtures, "onnx_parity.json"), "w") as f:
        json.dump(parity, f)
    print("wrote models and fixtures", file=sys.stderr)


if __name__ == "__main__":
    main()
