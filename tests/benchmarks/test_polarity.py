"""benchmarks/polarity.py without real data: the inverted copies, the closest call of
``polarity=auto`` and the table (the runs themselves need the shared micrographs)."""

from __future__ import annotations

import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import polarity  # noqa: E402

from cryoparticle.io.mrc import write_mrc  # noqa: E402


def test_inverted_copies_negate_every_pixel_and_keep_the_pixel_size(tmp_path):
    image = np.random.default_rng(0).normal(size=(24, 32)).astype(np.float32)
    write_mrc(tmp_path / "a.mrc", image, 3.54)
    (copy,) = polarity.inverted_copies([tmp_path / "a.mrc"], tmp_path / "inv")
    assert copy == tmp_path / "inv" / "a.mrc"
    with mrcfile.open(copy) as mrc:
        np.testing.assert_array_equal(mrc.data, -image)
        assert float(mrc.voxel_size.x) == pytest.approx(3.54)


def test_the_level_ratio_is_the_closest_call_of_the_right_polarity():
    records = {"a": {"polarity_levels": [0.6, 0.5]}, "b": {"polarity_levels": [0.33, 0.3]},
               "c": {"polarity_levels": None}}
    assert polarity.level_ratio(records, "dark") == pytest.approx(1.1)     # b: 0.33 / 0.3
    assert polarity.level_ratio(records, "light") == pytest.approx(0.5 / 0.6)
    assert polarity.level_ratio({"c": {}}, "dark") is None


def test_the_table_has_the_four_runs_and_the_light_counts():
    def run(f1, light, ratio=None):
        return {"precision": f1, "recall": f1, "f1": f1, "n_light": light,
                "min_level_ratio": ratio}

    results = {"EMPIAR-10059": {"n_micrographs": 10, "runs": {
        "given dark": run(0.765, 0), "given auto": run(0.765, 0, 1.097),
        "inverted dark": run(0.508, 0), "inverted auto": run(0.765, 10, 1.097)}}}
    text = polarity.markdown(results)
    row = next(line for line in text.splitlines() if line.startswith("| EMPIAR-10059"))
    assert row.startswith("| EMPIAR-10059 (10) | 0.765 (0.765 / 0.765) | 0.765")
    assert "| 0.508 (0.508 / 0.508) |" in row and "| 0 / 10 | 1.097 / 1.097 |" in row
