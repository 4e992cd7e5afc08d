"""benchmarks/empty_picks.py: its table (the threshold used in bold, Topaz's default beside)."""

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
    assert "| white_noise | 102.1 | 20 (3.0) | **12 (1.5)** |" in text
    assert "score 0, picks per micrograph: white_noise 4." in text
    assert rows["white_noise"]["topaz"]["picks_per_micrograph"] == {"0": 4.0}  # kept for JSON
    assert run_all._empty_picks({"rows": rows}) == \
        "false picks per empty micrograph (ours/Topaz): white_noise 12/4"
