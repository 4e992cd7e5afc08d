"""benchmarks/real_data_cv.py: folds pooled into one score, and the best shared threshold."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import real_data_cv  # noqa: E402


def _table(name: str, xs: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"micrograph": name, "x": xs, "y": [50.0] * len(xs),
                         "diameter": [10.0] * len(xs), "score": [1.0] * len(xs)})


def _fold(name: str, truth: list[float], stored: list[float],
          shared: dict[float, list[float]]) -> dict:
    return {"picks": _table(name, stored), "low": _table(name, sorted(set(stored + truth))),
            "truth": _table(name, truth), "intersection": 1, "union": 2, "threshold": 0.3,
            "diameter_px": 10.0, "shared": {t: _table(name, v) for t, v in shared.items()}}


def test_folds_pool_their_counts_and_the_best_shared_threshold_is_found():
    truth = [10.0, 30.0, 50.0, 70.0]
    # fold a: the stored threshold finds 2 of 4; threshold 0.1 adds 2 false picks, 0.2 is exact
    a = _fold("a", truth, [10.0, 30.0], {0.1: truth + [200.0, 220.0], 0.2: truth, 0.5: [10.0]})
    b = _fold("b", truth, truth, {0.1: truth, 0.2: truth, 0.5: []})
    m = real_data_cv.pooled([a, b])
    assert m["n_truth"] == 8 and m["n_picks"] == 6
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(6 / 8)
    assert m["pick_f1"] == pytest.approx(2 * 6 / (6 + 8))
    assert m["f1_at_shared_threshold"]["0.2"] == 1.0
    assert m["f1_at_shared_threshold"]["0.1"] == pytest.approx(2 * 8 / (10 + 8))
    assert m["f1_at_shared_threshold"]["0.5"] == pytest.approx(2 * 1 / (1 + 8))
    assert m["best_shared_threshold"] == 0.2 and m["best_shared_f1"] == 1.0
    assert m["pixel_iou"] == 0.5 and m["thresholds"] == [0.3, 0.3]
    row = {"network": "unet", "init": "scratch", "target": "refined", "folds": [0, 1],
           "metrics": m, "fold_f1": [2 * 2 / 6, 1.0], "train_s": [60.0, 120.0]}
    line = real_data_cv.markdown([row]).splitlines()[2]
    assert "| 0.667 / 1.000 | 1.000 (0.2) |" in line and line.endswith("| 1.5 |")
