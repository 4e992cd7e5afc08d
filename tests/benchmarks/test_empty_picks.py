"""benchmarks/empty_picks.py: its table (what predict.py picked, the stored threshold in bold,
Topaz's default beside)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import empty_picks  # noqa: E402
import run_all  # noqa: E402


def test_table_marks_the_threshold_used_and_reports_topaz():
    rows = {"white_noise": {"threshold_used": 0.125, "diameters_a": [102.1],
                            "picks_per_micrograph": {"0.1": 20.0, "0.125": 12.0},
                            "picks_per_100_particle_areas": {"0.1": 3.0, "0.125": 1.5},
                            "topaz": {"threshold_used": 0.0, "picks_per_micrograph": {"0": 4.0}}}}
    text = empty_picks.markdown(rows)
    assert "score 0, picks per micrograph: white_noise 4." in text
    assert rows["white_noise"]["topaz"]["picks_per_micrograph"] == {"0": 4.0}  # kept for JSON
    assert "| white_noise | 102.1 | – | 20 (3.0) | **12 (1.5)** |" in text   # no predict record
    assert run_all._empty_picks({"rows": rows}) == \
        "false picks per empty micrograph (ours/Topaz): white_noise 12/4"


def test_table_reports_what_predict_picked_at_each_micrographs_relative_threshold():
    """With a relative threshold predict's picks are at no threshold of the sweep: they are
    reported from its summary, with the thresholds it used."""
    rows = {"ice": {"threshold_used": 0.05, "diameters_a": [102.1],
                    "predict_picks_per_micrograph": 30.0,
                    "predict_picks_per_100_particle_areas": 4.5,
                    "predict_thresholds": [0.0812, 0.0904],
                    "picks_per_micrograph": {"0.05": 2.0, "0.1": 20.0},
                    "picks_per_100_particle_areas": {"0.05": 0.3, "0.1": 3.0}}}
    text = empty_picks.markdown(rows)
    assert "| ice | 102.1 | 30 (4.5; 0.081, 0.09) | **2 (0.3)** | 20 (3.0) |" in text
    assert run_all._empty_picks({"rows": rows}) == \
        "false picks per empty micrograph (ours/Topaz): ice 30"
