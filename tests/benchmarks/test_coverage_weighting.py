"""benchmarks/coverage_weighting.py: the thinning model's F1 against hand-computed values, the
CryoPPP coverages from the packaged table, the choice it makes, and bad arguments stopping
before anything runs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import coverage_weighting as cw  # noqa: E402
import leave_one_out  # noqa: E402


def test_coverages_are_disc_area_over_micrograph_area():
    table = pd.DataFrame({"micrograph_size_px": ["100x200", "50X50"], "n_micrographs": [2, 1],
                          "n_particles": [10, 1], "particle_diameter_px": [10, 20]})
    expected = [5 * math.pi * 25 / 20000, math.pi * 100 / 2500]
    assert np.allclose(cw.cryoppp_coverages(table), expected)
    packaged = cw.cryoppp_coverages()
    assert len(packaged) == 34 and np.all((packaged > 0) & (packaged < 1))
    assert 0.2 < np.median(packaged) < 0.4   # CryoPPP's sets are less crowded than ours


def test_thinned_f1_matches_hand_computed_values():
    tp, fp, fn = 80.0, 20.0, 20.0                        # measured F1 0.8 at coverage 0.6
    assert cw.thinned_f1(tp, fp, fn, 0.5, 0.6, [0.6, 0.9]) == pytest.approx([0.8, 0.8])
    # at coverage 0.2 a third of the particles stay: 100 × 2/3 particle areas freed / (1/3)
    # → 2 × 100 × 0.5 = 100 false picks on 1/3 of the set ≡ 100 extra in the unscaled counts
    assert cw.thinned_f1(tp, fp, fn, 0.5, 0.6, 0.2) == pytest.approx(160 / (160 + 40 + 100))
    assert cw.thinned_f1(tp, fp, fn, 0.0, 0.6, 0.01) == pytest.approx(0.8)  # quiet on ice
    falling = cw.thinned_f1(tp, fp, fn, 0.1, 0.6, [0.5, 0.3, 0.1, 0.05])
    assert np.all(np.diff(falling) < 0)                  # sparser: more empty ice picked
    assert cw.thinned_f1(0, 0, 0, 1.0, 0.5, [0.1, 0.2]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        cw.thinned_f1(tp, fp, fn, 0.1, 0.6, 0.0)
    assert cw.expected_f1({"tp": tp, "fp": fp, "fn": fn}, 0.5, 0.6, np.array([0.2, 0.6])) == \
        pytest.approx((160 / 300 + 0.8) / 2)


def test_a_setting_noisy_on_empty_ice_loses_on_sparse_data_but_wins_on_crowded_data():
    low, high = leave_one_out.setting_key(0.2, 0.1), leave_one_out.setting_key(0.2, 0.3)
    counts = {low: {"tp": 90, "fp": 15, "fn": 10}, high: {"tp": 80, "fp": 5, "fn": 20}}
    empty = {low: 0.3, high: 0.01}
    crowded = cw.expected_grid(counts, empty, 0.7, np.array([0.7]))
    assert crowded[low] > crowded[high]                      # measured: the low threshold
    sparse = cw.expected_grid(counts, empty, 0.7, np.array([0.05, 0.2, 0.3]))
    assert sparse[high] > sparse[low]                        # across CryoPPP: the high one
    sets = {name: {"coverage": 0.7, "counts": counts} for name in ("A", "B")}
    kinds = {name: {"ice": empty, "noise": {low: 0.0, high: 0.0}} for name in sets}
    out = cw.summarise(sets, kinds, np.array([0.05, 0.2, 0.3]), ("ice",), shipped=low)
    assert out["choice"]["chosen"] == high and out["choice"]["shipped"]["setting"] == low
    assert out["best_by_proxy"]["noise"]["setting"] == low   # no empty-ice picks: no penalty
    assert out["best_measured"]["setting"] == low
    assert out["choice"]["measured_f1"]["A"] == pytest.approx(160 / 185)
    assert out["choice"]["nested"]["A"]["setting"] == high
    text = cw.markdown({"summary": out, "coverages": {"n": 3, "median": 0.2, "p25": 0.1,
                                                       "p75": 0.3},
                        "choose_by": ["ice"], "sets": sets})
    assert f"Best on average: `{high}`" in text and "| A (0.70) |" in text


@pytest.mark.parametrize("args", [["--datasets", "EMPIAR-0"], ["--empty-n", "0"],
                                  ["--choose-by", "general", "--empty-kinds", "white_noise"],
                                  []])
def test_bad_arguments_stop_before_anything_runs(tmp_path, args):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "coverage_weighting.py"),
                             "--data-dir", str(tmp_path / "missing"),
                             "--work-dir", str(tmp_path / "work"), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert ("give --data-dir" in result.stderr) if not args else "error" in result.stderr
    assert not (tmp_path / "work").exists()
