"""benchmarks/real_transfer.py without real data: the edge rule applied to another picker's
picks, and the cache that lets a rerun skip Topaz (a stand-in ``topaz`` script records its
calls; the real Topaz is an optional peer, never a test dependency)."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import real_transfer  # noqa: E402

from cryoparticle.picking.settings import BOX_PER_DIAMETER  # noqa: E402


def test_boxes_inside_keeps_the_picks_whose_box_fits_in_their_micrograph():
    diameter = 20.0  # box 30 px: centres at least 15 px from every edge
    assert BOX_PER_DIAMETER * diameter / 2 == 15.0
    borders = {"a": np.zeros((100, 200), bool), "b": np.zeros((60, 60), bool)}
    rows = [("a", 15.0, 15.0), ("a", 14.9, 50.0), ("a", 184.0, 84.0), ("a", 184.1, 50.0),
            ("a", 100.0, 84.1), ("b", 30.0, 30.0), ("b", 30.0, 44.0), ("b", 45.0, 30.0)]
    picks = pd.DataFrame(rows, columns=["micrograph", "x", "y"]).assign(diameter=diameter,
                                                                          score=1.0)
    kept = real_transfer.boxes_inside(picks, borders, diameter)
    assert list(kept.index) == [0, 2, 5, 6]


def _fake_topaz(path: Path, calls: Path) -> Path:
    """A ``topaz`` that copies inputs on ``preprocess`` and writes one pick per micrograph on
    ``extract``, appending its sub-command to ``calls``."""
    path.write_text(f"""#!{sys.executable}
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
with open({str(calls)!r}, "a") as f:
    f.write(args[0] + "\\n")
out = Path(args[args.index("-o") + 1])
files = [a for a in args if a.endswith(".mrc")]
if args[0] == "preprocess":
    for name in files:
        shutil.copy(name, out / Path(name).name)
else:
    lines = ["image_name\\tx_coord\\ty_coord\\tscore"]
    lines += [f"{{Path(n).stem}}\\t40\\t50\\t1.5" for n in files]
    out.write_text("\\n".join(lines) + "\\n")
""")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_topaz_picks_are_cached_until_the_inputs_change(tmp_path):
    calls = tmp_path / "calls.txt"
    topaz = _fake_topaz(tmp_path / "topaz", calls)
    paths = [tmp_path / "m1.mrc", tmp_path / "m2.mrc"]
    for path in paths:
        path.write_bytes(b"0" * 64)
    data = {"paths": paths, "pixel_size_a": 1.77, "diameter_px": 108.0}
    out = tmp_path / "out"
    picks, speed = real_transfer.run_topaz(topaz, data, out)
    assert calls.read_text().split() == ["preprocess", "extract"]
    assert sorted(picks["micrograph"]) == ["m1", "m2"] and (picks["x"] == 40).all()
    again, speed_again = real_transfer.run_topaz(topaz, data, out)
    assert calls.read_text().split() == ["preprocess", "extract"]  # nothing rerun
    pd.testing.assert_frame_equal(again, picks)
    assert speed_again == speed
    paths[1].write_bytes(b"0" * 65)  # another micrograph under the same name: measured again
    real_transfer.run_topaz(topaz, data, out)
    assert calls.read_text().split() == ["preprocess", "extract"] * 2


def test_the_sweep_extracts_with_predicts_extraction_overrides():
    assert real_transfer.predict_extraction(
        ["threshold=0.25", "extraction.min_size_fraction=0.05", "tta=flips",
         "extraction.split_touching=false", "extraction.border_px=null"]) == \
        {"min_size_fraction": 0.05, "split_touching": False}


def test_the_sweep_takes_the_edge_margin_predict_used_not_a_border_option(tmp_path):
    """A ``--predict extraction.border_px=...`` override reaches the sweep's options; the edge
    margin is the one in predict's summary (it already reflects that override)."""
    import json

    from cryoparticle.io.mrc import write_mrc

    prob = np.zeros((64, 64), np.float32)
    yy, xx = np.mgrid[:64, :64]
    for cy, cx in ((32, 32), (32, 4)):   # one particle in the middle, one at the edge
        prob[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = 0.9
    write_mrc(tmp_path / "m_prob.mrc", prob, 7.08)
    summary = {"micrographs": [{"name": "m", "pixel_size_a": 7.08, "bin_factor": 1.0,
                                "particle_diameter_a": 8 * 7.08, "edge_margin_px": 0.0}]}
    (tmp_path / "predict_summary.json").write_text(json.dumps(summary))
    tables = real_transfer.extraction_sweep(tmp_path, [tmp_path / "m.mrc"],
                                            {"min_size_fraction": 0.2, "border_px": 12.0},
                                            (0.5,))
    assert len(tables[0.5]) == 2   # margin 0 from the summary: the edge particle is kept
    # the grid of minimum sizes × thresholds: each cell as a sweep at that size would give
    grid = real_transfer.extraction_grid(tmp_path, [tmp_path / "m.mrc"], {}, (0.5, 0.95),
                                         (0.2, 3.0))
    assert {s: {t: len(p) for t, p in by_t.items()} for s, by_t in grid.items()} == \
        {0.2: {0.5: 2, 0.95: 0}, 3.0: {0.5: 0, 0.95: 0}}
    assert grid[0.2][0.5].equals(tables[0.5])


def _summary(tmp_path: Path, relative: float, thresholds: list[float]) -> Path:
    from cryoparticle.picking.writers import PredictSummary

    summary = PredictSummary(
        n_micrographs=len(thresholds), n_picked=len(thresholds), n_skipped=0, n_failed=0,
        n_particles=0, n_particles_new=0, particles_per_micrograph=0.0,
        seconds_per_micrograph=1.0, wall_seconds_per_micrograph=1.0, wall_s=1.0,
        threshold=0.05, device="cpu", output_dir=str(tmp_path), combined_star=None,
        micrographs=[{"name": f"m{i}", "status": "picked", "threshold": t}
                     for i, t in enumerate(thresholds)],
        relative_threshold=relative, peak_quantile=0.9)
    (tmp_path / "predict_summary.json").write_text(summary.to_json())
    return tmp_path


def test_a_relative_export_reports_each_micrographs_threshold_not_the_floor(tmp_path):
    facts = real_transfer.picked_thresholds(_summary(tmp_path, 0.25, [0.07, 0.2, 0.11]))
    assert facts["threshold_rule"] == "max(0.05, 0.25 × p90 peak)"
    assert facts["thresholds_per_micrograph"] == [0.07, 0.2, 0.11]
    assert facts["threshold_median"] == 0.11
    assert facts["threshold_text"] == "0.11 (0.07–0.2)"
    result = {"threshold": 0.05, "precision": 0.9, "recall": 0.8, "f1": 0.847, "best_f1": 0.85,
              "best_threshold": 0.1, "ap": 0.8, "n_micrographs": 3, "s_per_micrograph": 2.0,
              **facts}
    text = real_transfer.table({"results": {"EMPIAR-10017": {"ours: general": result}}})
    row = next(line for line in text.splitlines() if "ours: general" in line)
    assert "| 0.11 (0.07–0.2) |" in row and "| 0.05 |" not in row
    assert "ours: general: max(0.05, 0.25 × p90 peak)" in text


def test_a_fixed_threshold_is_reported_as_it_is(tmp_path):
    facts = real_transfer.picked_thresholds(_summary(tmp_path, 0.0, [0.05, 0.05]))
    assert facts["threshold_rule"] is None and facts["threshold_median"] == 0.05
    result = {"threshold": 0.05, "precision": 0.9, "recall": 0.8, "f1": 0.847, "best_f1": 0.85,
              "best_threshold": 0.1, "ap": 0.8, "n_micrographs": 2, "s_per_micrograph": 2.0,
              **facts}
    text = real_transfer.table({"results": {"EMPIAR-10017": {"ours": result}}})
    assert "| 0.05 |" in text and "peak level" not in text
