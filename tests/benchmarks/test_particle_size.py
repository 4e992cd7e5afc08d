"""benchmarks/particle_size.py: the diameters and predict options of its three ways to pick."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def particle_size():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import particle_size
        yield particle_size
    finally:
        sys.path.remove(str(SCRIPTS))


def test_true_diameters_are_the_cryoppp_discs_in_angstrom(particle_size):
    assert particle_size.true_diameter_a("EMPIAR-10017") == pytest.approx(108 * 1.77)
    assert particle_size.true_diameter_a("EMPIAR-10059") == pytest.approx(191.0)
    assert particle_size.true_diameter_a("EMPIAR-10947") == pytest.approx(212.0)


def test_each_mode_gives_predict_its_own_options(particle_size):
    assert particle_size.mode_overrides("estimated", 114.6) == []
    assert particle_size.mode_overrides("given", 114.6) == ["particle_diameter_a=114.6",
                                                            "match_diameter=false"]
    assert particle_size.mode_overrides("matched", 114.6) == ["particle_diameter_a=114.6",
                                                              "match_diameter=true"]


def test_a_missing_held_out_model_is_a_one_line_exit(particle_size, tmp_path):
    args = particle_size.argparse.Namespace(ckpt=None, loo_work_dir=tmp_path)
    with pytest.raises(SystemExit, match="no held-out model of EMPIAR-10059"):
        particle_size.checkpoint_for("EMPIAR-10059", args)


def test_the_table_has_a_column_per_mode_and_their_means(particle_size):
    rows = [{"set": "EMPIAR-10059", "scale": 0.6, "apparent_diameter_a": 114.6,
             "modes": {"estimated": {"f1": 0.543, "diameter_a_median": 134.2},
                       "matched": {"f1": 0.747}}},
            {"set": "EMPIAR-10059", "scale": 1.0, "apparent_diameter_a": 191.0,
             "modes": {"estimated": {"f1": 0.757, "diameter_a_median": 165.2},
                       "matched": {"f1": 0.747}}}]
    text = particle_size.markdown(rows, ["estimated", "matched"])
    lines = text.splitlines()
    assert lines[0] == ("| set | s | apparent diameter (Å) | F1 estimated | F1 matched | "
                        "estimated diameter (Å) |")
    assert lines[2] == "| EMPIAR-10059 | 0.6 | 115 | 0.543 | 0.747 | 134 |"
    assert lines[-1] == "| mean | | | **0.650** | **0.747** | |"
