"""benchmarks/pick_speed.py: where a py-spy profile's time goes, the accuracy of picks against
truth with the striped border left out, and the one-device loop timed against Trainer.predict."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import pick_speed  # noqa: E402


def test_pyspy_samples_are_grouped_by_stage(tmp_path):
    """py-spy's raw format: ``process;frame;...;frame COUNT`` per distinct stack."""
    proc = 'process 7:"python predict.py"'
    imp = "_find_and_load (<frozen importlib._bootstrap>:1176)"
    run = "run (/x/cryoparticle/picking/predict.py:150)"
    # an absolute module path (built here, as py-spy prints one outside sys.path)
    scipy = "/".join(["venv", "lib", "site-packages", "scipy", "ndimage", "__init__.py"])
    lines = [
        f"{proc};<module> (/x/predict.py:3);{imp};"
        "<module> (torch/__init__.py:1) 250",
        f"{proc};{run};MicrographSegmenter.predict_record (/x/cryoparticle/picking/segment.py:140);"
        "Conv2d._conv_forward (/y/torch/nn/modules/conv.py:543) 100",
        f"{proc};{run};MicrographSegmenter.predict_record (/x/cryoparticle/picking/segment.py:140);"
        f"{imp};<module> ({scipy}:1) 20",
        f"{proc};{run};PickRecorder._pick (/x/cryoparticle/picking/writers.py:231);"
        "extract_particles (/x/cryoparticle/picking/extract.py:90) 30",
        f"{proc};{run};PickRecorder._pick (/x/cryoparticle/picking/writers.py:231);"
        "write_relion_coordinates (/x/cryoparticle/io/coords.py:290) 5",
        f"{proc};{run};MicrographFiles.__getitem__ (/x/cryoparticle/picking/inputs.py:177) 40",
        f"{proc};{run};load_picker (/x/cryoparticle/picking/predict.py:86);{imp};"
        "<module> (/x/cryoparticle/models/networks.py:1) 60",
        f"{proc};{run};load_picker (/x/cryoparticle/picking/predict.py:86);"
        "load_state_dict (/y/torch/nn/modules/module.py:2500) 10",
        f"{proc};main (/x/hydra/main.py:80) 15",
    ]
    raw = tmp_path / "profile.txt"
    raw.write_text("\n".join(lines) + "\n")
    summary = pick_speed.summarise_pyspy(raw, hz=100)
    assert summary["sampled_s"] == pytest.approx(5.3)
    # imports are start-up wherever they happen (under load_picker, under predict_record)
    assert summary["stages_s"] == {
        "start-up: imports": 3.3, "network (segment)": 1.0, "reading/binning": 0.4,
        "extraction": 0.3, "other (interpreter, Hydra, set-up)": 0.15,
        "checkpoint loading": 0.1, "writing": 0.05}
    assert summary["imports_s_by_package"] == {"torch": 2.5, "cryoparticle": 0.6,
                                               "scipy": 0.2}
    assert next(iter(summary["top_own_s"])) == "<module> (__init__.py)"
    assert summary["top_own_s"]["Conv2d._conv_forward (conv.py)"] == 1.0


def test_accuracy_leaves_the_border_out_and_applies_the_threshold():
    border = np.zeros((100, 100), bool)
    border[:, :10] = True  # a striped left edge
    truth = pd.DataFrame({"micrograph": "m", "x": [5.0, 50.0, 80.0], "y": [50.0, 50.0, 20.0],
                          "diameter": 20.0, "score": np.nan})
    picks = pd.DataFrame({"micrograph": "m", "x": [4.0, 52.0, 30.0, 81.0],
                          "y": [50.0, 49.0, 30.0, 21.0], "diameter": 20.0,
                          "score": [0.9, 0.8, 0.7, -1.0]})
    known = {"truth": pick_speed.inside(truth, {"m": border}), "borders": {"m": border},
             "radius_px": 10.0, "split": {"m": "test"}}
    at_zero = pick_speed.accuracy(picks, known, 0.0)
    # off the border: truth (50, 50), (80, 20); picks ≥ 0: (52, 49) TP, (30, 30) FP
    assert (at_zero["n_truth"], at_zero["n_picks"], at_zero["tp"]) == (2, 2, 1)
    assert at_zero["precision"] == pytest.approx(0.5) and at_zero["recall"] == pytest.approx(0.5)
    every = pick_speed.accuracy(picks, known, None)
    assert (every["n_picks"], every["tp"], every["f1"]) == (3, 2, pytest.approx(0.8))
    assert every["per_micrograph"]["m"]["split"] == "test"
    assert pick_speed.accuracy(picks, None, 0.0) is None


def test_one_device_loop_and_trainer_predict_are_timed_on_the_same_picks(tmp_path):
    """``--lightning``: each micrograph through the default loop and through Trainer.predict
    (one process each, alternating), with the shipped model: identical STAR files, medians of
    both paths recorded."""
    from cryoparticle.io.mrc import write_mrc

    mic = tmp_path / "noise.mrc"
    write_mrc(mic, np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32), 7.08)
    record = pick_speed.compare_lightning(None, [mic], tmp_path / "work", 1)
    assert record["same_picks"] is True
    assert record["lightning_override"] == "+trainer.deterministic=false"
    for path in ("loop", "lightning"):
        assert record[path]["process_s"] > 0 and record[path]["peak_rss_gb"] > 0
        assert len(record["runs"][path]) == 1
    assert record["saved_s_median"] == pytest.approx(
        record["lightning"]["process_s"] - record["loop"]["process_s"])


def test_the_f1_row_names_the_thresholds_predict_picked_at():
    import pick_speed

    fixed = {"threshold": 0.125, "micrograph_thresholds": [0.125, 0.125],
             "polarities": ["dark", "dark"]}
    assert pick_speed.picked_at(fixed) == "threshold 0.125, stored"
    relative = {"threshold": 0.05, "micrograph_thresholds": [0.18, 0.2, 0.19],
                "polarities": ["dark", "light", "dark"]}
    assert pick_speed.picked_at(relative) == "thresholds 0.18–0.2, relative; 1 light"
    assert pick_speed.picked_at({"threshold": 0.3}) == "threshold 0.3, stored"   # older JSON
