"""benchmarks/relative_threshold.py: the peak level of a probability map, the rules' thresholds,
and the nested choice that never looks at the set it scores."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import relative_threshold as rt  # noqa: E402


def _blobs(heights: list[float], diameter: float, size: int = 256) -> np.ndarray:
    """Gaussian particles of σ = diameter/4 and the given peak heights on a 0.02 background,
    on a grid 2 diameters apart."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    prob = np.full((size, size), 0.02, np.float32)
    step = int(2 * diameter)
    centres = [(y, x) for y in range(step // 2, size - step // 2, step)
               for x in range(step // 2, size - step // 2, step)]
    for (y, x), h in zip(centres, heights * len(centres), strict=False):
        prob += h * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * (diameter / 4) ** 2))
    return prob


def test_peak_level_is_the_median_particle_peak_after_the_smoothing():
    diameter = 24.0
    prob = _blobs([0.2, 0.4, 0.6], diameter)
    # a Gaussian of σ = d/4 smoothed by σ = d/8 keeps 0.8 of its height (2-D: σ²/(σ²+σs²))
    assert rt.peak_level(prob, diameter) == pytest.approx(0.02 + 0.8 * 0.4, abs=0.01)
    assert rt.peak_level(np.full((128, 128), 0.02, np.float32), diameter) == 0.0


def test_rules_give_fixed_or_floored_relative_thresholds():
    assert rt.rule_threshold(("fixed", 0.125, 0.0), 0.9) == 0.125
    assert rt.rule_threshold(("relative", 0.3, 0.05), 0.5) == pytest.approx(0.15)
    assert rt.rule_threshold(("relative", 0.3, 0.05), 0.1) == 0.05   # the floor
    every = rt.rules()
    assert "fixed 0.125" in every and len(every) == len(rt.FIXED) + len(rt.FRACTIONS) * len(
        rt.FLOORS)


def test_nested_choice_ignores_the_set_it_scores():
    f1 = {"A": {"r1": 0.9, "r2": 0.1}, "B": {"r1": 0.1, "r2": 0.8}, "C": {"r1": 0.2, "r2": 0.7}}
    chosen = rt.nested(f1, ["r1", "r2"])
    assert chosen["A"] == {"rule": "r2", "f1": 0.1}   # r1 is best on A itself: not chosen
    assert chosen["B"] == {"rule": "r1", "f1": 0.1}   # A and C: r1 0.55, r2 0.40
    assert chosen["C"] == {"rule": "r1", "f1": 0.2}   # A and B: r1 0.50, r2 0.45


def test_a_work_dir_without_held_out_maps_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="expected one leave_one_out.py map folder"):
        rt.held_out_f1(tmp_path, "EMPIAR-10017", tmp_path)
