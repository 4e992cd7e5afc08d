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


def test_peak_level_is_the_quantile_of_the_particle_peaks_after_the_smoothing():
    diameter = 24.0
    prob = _blobs([0.2, 0.4, 0.6], diameter)
    # a Gaussian of σ = d/4 smoothed by σ = d/8 keeps 0.8 of its height (2-D: σ²/(σ²+σs²))
    assert rt.peak_level(prob, diameter) == pytest.approx(0.02 + 0.8 * 0.4, abs=0.01)
    assert rt.peak_level(prob, diameter, 0.9) == pytest.approx(0.02 + 0.8 * 0.6, abs=0.01)
    assert rt.peak_level(np.full((128, 128), 0.02, np.float32), diameter) == 0.0


def test_rules_give_fixed_or_floored_relative_thresholds():
    levels = {0.5: 0.5, 0.9: 0.8}
    assert rt.rule_threshold(("fixed", 0.0, 0.125, 0.0), levels) == 0.125
    assert rt.rule_threshold(("relative", 0.5, 0.3, 0.05), levels) == pytest.approx(0.15)
    assert rt.rule_threshold(("relative", 0.9, 0.3, 0.05), levels) == pytest.approx(0.24)
    assert rt.rule_threshold(("relative", 0.5, 0.3, 0.05), {0.5: 0.1}) == 0.05   # the floor
    every = rt.rules()
    assert "fixed 0.125" in every and "relative 0.3 × p90, floor 0.05" in every
    assert len(every) == len(rt.FIXED) + sum(map(len, rt.FRACTIONS.values())) * len(rt.FLOORS)


def test_thinning_turns_the_dropped_particles_into_the_empty_map():
    """Two particles 40 px apart; the dropped one's neighbourhood (0.75 diameters, nearer to it
    than to the kept one) takes the empty map's values, tiled; the kept one is untouched."""
    diameter = 20.0
    prob = np.full((64, 100), 0.02, np.float32)
    centres = np.array([[30.0, 32.0], [70.0, 32.0]])          # x, y
    rows, cols = np.mgrid[:64, :100]
    for x, y in centres:
        prob[np.hypot(cols - x, rows - y) <= diameter / 2] = 0.9
    empty = np.full((16, 16), 0.07, np.float32)
    thinned = rt.thin(prob, centres, np.array([True, False]), diameter, empty)
    near_dropped = np.hypot(cols - 70, rows - 32) < 0.75 * diameter
    assert (thinned[near_dropped] == 0.07).all()
    assert (thinned[~near_dropped] == prob[~near_dropped]).all()
    assert rt.thin(prob, centres, np.array([True, True]), diameter, empty) is prob


def test_nested_choice_ignores_the_set_it_scores():
    f1 = {"A": {"r1": 0.9, "r2": 0.1}, "B": {"r1": 0.1, "r2": 0.8}, "C": {"r1": 0.2, "r2": 0.7}}
    chosen = rt.nested(f1, ["r1", "r2"])
    assert chosen["A"] == {"rule": "r2", "f1": 0.1}   # r1 is best on A itself: not chosen
    assert chosen["B"] == {"rule": "r1", "f1": 0.1}   # A and C: r1 0.55, r2 0.40
    assert chosen["C"] == {"rule": "r1", "f1": 0.2}   # A and B: r1 0.50, r2 0.45


def test_a_work_dir_without_held_out_maps_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="expected one leave_one_out.py map folder"):
        rt.held_out_f1(tmp_path, "EMPIAR-10017", tmp_path)


def test_the_score_averages_the_own_and_the_thinned_f1(monkeypatch):
    """Rule "a" wins on crowded maps, "b" on thinned ones; the score weighs both, and a work
    dir without thinned maps counts only in the own F1."""
    monkeypatch.setattr(rt, "rules", lambda: {"fixed a": ("fixed", 0, 0.1, 0),
                                              "fixed b": ("fixed", 0, 0.2, 0),
                                              "relative c": ("relative", 0.5, 0.5, 0.05)})

    def scores(own, thinned=None):
        out = {"own": {k: {"f1": v} for k, v in own.items()}}
        if thinned:
            out["0.3"] = {k: {"f1": v} for k, v in thinned.items()}
        return {"scores": out}

    per_dir = {"d1": {s: scores({"fixed a": 0.8, "fixed b": 0.7, "relative c": 0.75},
                                {"fixed a": 0.3, "fixed b": 0.6, "relative c": 0.5})
                      for s in ("A", "B")},
               "d2": {s: scores({"fixed a": 0.6, "fixed b": 0.5, "relative c": 0.55})
                      for s in ("A", "B")}}
    summary = rt.summarise(per_dir)
    assert summary["mean_f1"]["A"]["fixed a"] == pytest.approx(0.7)
    assert summary["thinned_f1"]["A"]["fixed b"] == pytest.approx(0.6)
    assert summary["score"]["A"]["fixed a"] == pytest.approx((0.7 + 0.3) / 2)
    fixed = summary["families"]["fixed"]
    assert fixed["best_on_average"] == "fixed b"       # 0.6 + 0.6 beats 0.7 + 0.3
    assert fixed["nested"]["A"]["rule"] == "fixed b"
    assert fixed["best_thinned_f1"] == pytest.approx(0.6)
    assert "| fixed b | 0.600 / 0.600" in rt.markdown(per_dir, summary)


def test_one_held_out_set_is_summarised_without_a_nested_choice(monkeypatch):
    """run_all --quick holds out one set: the rules are still ranked on it, and the nested
    choice (on the other sets) is left empty rather than chosen on nothing."""
    monkeypatch.setattr(rt, "rules", lambda: {"fixed a": ("fixed", 0, 0.1, 0),
                                              "fixed b": ("fixed", 0, 0.2, 0),
                                              "relative c": ("relative", 0.5, 0.5, 0.05)})
    per_dir = {"d1": {"A": {"scores": {"own": {"fixed a": {"f1": 0.4}, "fixed b": {"f1": 0.6},
                                               "relative c": {"f1": 0.7}}}}}}
    summary = rt.summarise(per_dir)
    assert summary["families"]["fixed"]["best_on_average"] == "fixed b"
    assert summary["families"]["relative"]["best_score"] == pytest.approx(0.7)
    assert summary["families"]["fixed"]["nested"] == {}
    assert np.isnan(summary["families"]["fixed"]["nested_mean_f1"])
    assert "| relative c | 0.700 / nan" in rt.markdown(per_dir, summary)


def test_the_sizes_table_averages_each_mode_and_a_missing_work_dir_is_one_line(
        monkeypatch, tmp_path):
    monkeypatch.setattr(rt, "rules", lambda: {"fixed a": ("fixed", 0, 0.1, 0),
                                              "relative c": ("relative", 0.9, 0.3, 0.05)})
    sizes = {"empiar-10017_s0.6_matched": {"fixed a": 0.6, "relative c": 0.8},
             "empiar-10017_s1_matched": {"fixed a": 0.8, "relative c": 0.8},
             "empiar-10017_s1_given": {"fixed a": 0.5, "relative c": 0.2}}
    text = rt.sizes_markdown(sizes)
    assert "| rule | given | matched | mean |" in text
    assert "| fixed a | 0.500 | 0.700 | 0.633 |" in text
    assert "| relative c | 0.200 | 0.800 | 0.600 |" in text
    with pytest.raises(SystemExit, match="no particle_size.py map folders"):
        rt.size_f1(tmp_path, tmp_path)
