"""benchmarks/leave_one_out.py: the held-out dataset is gone from the composed training config
(and only it), and bad arguments stop before anything trains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import leave_one_out  # noqa: E402
import real_transfer  # noqa: E402
from _common import DATASETS  # noqa: E402


def _real(overrides: list[str]):
    with initialize_config_dir(str(ROOT / "cryoparticle" / "conf"), version_base=None):
        return compose("train", overrides=["experiment=general", *overrides]).data.sources.real


@pytest.mark.parametrize("held_out", list(DATASETS))
def test_held_out_dataset_leaves_training_validation_and_test(tmp_path, held_out):
    full = _real([])
    real = _real(leave_one_out.held_out_overrides(held_out, tmp_path))
    folder = DATASETS[held_out][0]
    roots = [Path(str(d.root)) for d in real.datasets]
    assert [r.name for r in roots] == [Path(str(d.root)).name for d in full.datasets
                                       if Path(str(d.root)).name != folder]
    assert all(r.parent == tmp_path.resolve() for r in roots)
    for split in ("val", "test"):
        assert list(real.split[split]) == [n for n in full.split[split]
                                           if not n.startswith(folder + "/")]
        assert len(real.split[split]) == len(full.split[split]) - 1
    # the other datasets keep their own settings (pixel-size convention of the PNGs)
    kept = {Path(str(d.root)).name: d for d in full.datasets}
    for entry in real.datasets:
        ref = kept[Path(str(entry.root)).name]
        assert {k: v for k, v in entry.items() if k != "root"} == \
            {k: v for k, v in ref.items() if k != "root"}


def test_table_has_one_row_per_picker_and_held_out_set():
    rows = [{"held_out": "EMPIAR-10059", "picker": p, "threshold": 0.25, "precision": 0.5,
             "recall": 0.6, "f1": 0.545, "best_f1": 0.6, "best_threshold": 0.2, "ap": 0.4}
            for p in ("full", real_transfer.TOPAZ)]
    lines = leave_one_out.markdown(rows).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| EMPIAR-10059 | full | 0.25 |")
    assert "**0.545**" in lines[3] and "0.600 (0.20)" in lines[3]


@pytest.mark.parametrize("args", [["--held-out", "EMPIAR-0"], ["--variants", "nonsense"], []])
def test_bad_arguments_stop_before_training(tmp_path, args):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "leave_one_out.py"),
                             "--data-dir", str(tmp_path / "missing"),
                             "--work-dir", str(tmp_path / "work"), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert ("invalid choice" in result.stderr) if args else ("give --data-dir" in result.stderr)
    assert not (tmp_path / "work").exists()


def test_unseen_calibration_averages_over_sets_and_scores_each_on_the_others_choice():
    a, b = leave_one_out.setting_key(0.1, 0.2), leave_one_out.setting_key(0.2, 0.1)
    c = leave_one_out.setting_key(0.3, 0.3)
    assert a == "min_size_fraction=0.1 threshold=0.2"
    grids = {"X": {a: 0.9, b: 0.7, c: 0.1},     # a big set that likes a
             "Y": {a: 0.5, b: 0.7, c: 0.1},
             "Z": {a: 0.4, b: 0.7, c: 0.1}}
    out = leave_one_out.unseen_calibration(grids)
    # each set counts once: b (mean 0.70) beats a (mean 0.60)
    assert out["chosen"] == b and out["mean_f1"] == pytest.approx(0.7)
    assert out["f1"] == {"X": 0.7, "Y": 0.7, "Z": 0.7}
    # nested: X is scored at what Y and Z chose (b); Y at X+Z's choice (a: 0.65 vs b: 0.70)
    assert out["nested"]["X"] == {"setting": b, "f1": 0.7}
    assert out["nested"]["Y"] == {"setting": b, "f1": 0.7}
    tie = leave_one_out.unseen_calibration({"X": {a: 0.5, b: 0.5}})
    assert tie["chosen"] == a and tie["nested"] == {}  # ties: grid order; one set: no nesting
    text = leave_one_out.calibration_markdown({"variant": "full", **out})
    assert "`" + b + "`" in text and "**0.700**" in text and "shipped" not in text
    shipped = leave_one_out.unseen_calibration(grids, shipped=a)
    assert shipped["shipped"] == {"setting": a, "f1": {"X": 0.9, "Y": 0.5, "Z": 0.4}}
    assert "shipped" not in leave_one_out.unseen_calibration(grids, "min_size_fraction=9 x")
    text = leave_one_out.calibration_markdown({"variant": "full", **shipped})
    assert "| X | 0.700 | `" + b + "` | **0.700** | 0.900 |" in text
    # the shipped general model picks at a relative threshold: no fixed setting of the grid
    assert leave_one_out.shipped_setting() is None


def test_unseen_calibration_keeps_to_settings_quiet_on_empty_micrographs():
    a, b, c = (leave_one_out.setting_key(0.2, t) for t in (0.1, 0.2, 0.3))
    grids = {"X": {a: 0.9, b: 0.8, c: 0.5}, "Y": {a: 0.8, b: 0.7, c: 0.6},
             "Z": {a: 0.7, b: 0.6, c: 0.6}}
    # false picks per 100 particle areas on empty micrographs, per set's model
    empty = {"X": {a: 30.0, b: 0.5, c: 0.0}, "Y": {a: 20.0, b: 3.0, c: 0.1},
             "Z": {a: 10.0, b: 0.2, c: 0.0}}
    free = leave_one_out.unseen_calibration(grids)
    assert free["chosen"] == a  # the best F1 picks empty ice
    out = leave_one_out.unseen_calibration(grids, shipped=a, empty=empty, empty_limit=1.0)
    # b: mean 10 / 3 > 1 would pick too much, so c (mean 0.03) although its F1 is lower
    assert out["chosen"] == c and out["mean_f1"] == pytest.approx(0.5667, abs=1e-4)
    assert out["empty_picks_per_100_areas"] == {"X": 0.0, "Y": 0.1, "Z": 0.0}
    assert out["shipped"]["empty_picks_per_100_areas"] == {"X": 30.0, "Y": 20.0, "Z": 10.0}
    # nested: Y is held out, so X's and Z's models decide: b (mean 0.35 ≤ 1) is allowed there
    assert out["nested"]["Y"] == {"setting": b, "f1": 0.7, "empty_picks_per_100_areas": 3.0}
    assert out["nested"]["X"]["setting"] == c  # Y's and Z's models: b means 1.6 > 1
    # no setting meets the limit: choose among all rather than none
    assert leave_one_out.unseen_calibration(grids, empty=empty, empty_limit=0.0)["chosen"] == a
    text = leave_one_out.calibration_markdown({"variant": "full", **out})
    assert "at most 1 false picks per 100 particle areas" in text
    assert "| Y | 0.600 | `" + b + "` | **0.700** | 0.800 | 0.10, 3.00, 20.00 |" in text
    assert "| X | 0.500 | `" + c + "` | **0.500** | 0.900 | 0.00, 0.00, 30.00 |" in text


def test_ensemble_members_are_the_same_runs_with_the_other_seeds(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(leave_one_out, "train_run", lambda run, overrides, checkpoint:
                        calls.append((run, overrides)) or (run / "best.ckpt", 60.0))
    args = leave_one_out.argparse.Namespace(ensemble_seeds=[2, 7], work_dir=tmp_path,
                                            checkpoint="best")
    overrides = ["experiment=general", "seed=12345", "trainer.max_epochs=8"]
    members, seconds = leave_one_out.ensemble_members("empiar-10017_full", overrides, args)
    assert members == [tmp_path / "runs" / f"empiar-10017_full_seed{s}" / "best.ckpt"
                       for s in (2, 7)] and seconds == 120.0
    assert [o for _, o in calls] == [["experiment=general", f"seed={s}", "trainer.max_epochs=8"]
                                     for s in (2, 7)]


@pytest.mark.parametrize("seeds", [["12345"], ["2", "2"]])
def test_ensemble_seeds_must_be_new_seeds(tmp_path, seeds):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "leave_one_out.py"),
                             "--work-dir", str(tmp_path / "work"), "--ensemble-seeds", *seeds],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--ensemble-seeds must differ" in result.stderr
    assert not (tmp_path / "work").exists()


def test_held_out_models_are_exported_as_the_shipped_model_is(tmp_path):
    """The leave-one-out models estimate the diameter exactly as the shipped general model
    does (its export's core fraction and diameter threshold), with their own threshold."""
    from cryoparticle.models.packaged import export_facts, packaged_checkpoint
    from cryoparticle.models.segmenter import load_segmenter

    out = leave_one_out.export(packaged_checkpoint(), tmp_path / "held_out.ckpt", 0.3)
    shipped, ours = export_facts(packaged_checkpoint()), export_facts(out)
    for key in ("estimate_diameter", "core_fraction", "diameter_threshold"):
        assert ours[key] == shipped[key], key
    assert shipped["diameter_threshold"] != 0.3
    assert load_segmenter(out).inference_facts()["picking_threshold"] == 0.3


def test_a_finished_training_gives_its_best_or_its_last_checkpoint(tmp_path):
    from _common import train_run

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("epoch_001-f1_0.60.ckpt", "epoch_003-f1_0.70.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"")
    torch.save({"callbacks": {"ModelCheckpoint{'monitor': 'val/pick_f1'}": {  # as Lightning
        "monitor": "val/pick_f1", "best_model_path": "/trained/epoch_003-f1_0.70.ckpt"}}},
        run / "checkpoints" / "last.ckpt")
    (run / "DONE").write_text("12.5\n")  # finished: nothing is trained again
    best = train_run(run, ["experiment=general"])
    assert best == (run / "checkpoints" / "epoch_003-f1_0.70.ckpt", 12.5)
    assert train_run(run, [], checkpoint="last") == (run / "checkpoints" / "last.ckpt", 12.5)
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        train_run(run, [], checkpoint="first")
    (run / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(SystemExit, match="no last checkpoint"):
        train_run(run, [], checkpoint="last")


def test_a_finished_training_with_other_overrides_is_never_reused(tmp_path):
    """A rerun with changed options must not silently score the old training."""
    from _common import train_run

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "epoch_001-f1_0.60.ckpt").write_bytes(b"")
    (run / "DONE").write_text("3.0\n")
    (run / "overrides.txt").write_text("experiment=general\ntrainer.max_epochs=1\n")
    assert train_run(run, ["experiment=general", "trainer.max_epochs=1"])[1] == 3.0
    with pytest.raises(SystemExit, match=f"{run}: a finished training with other overrides"):
        train_run(run, ["experiment=general", "trainer.max_epochs=8"])


def test_an_interrupted_training_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    """A benchmark stopped mid-training (last.ckpt written, no DONE) goes on from its last
    finished epoch when rerun with the same options, and starts afresh with other options."""
    import _common

    calls = []

    def fake_train(cmd, cwd, stdout, stderr):  # stands in for the train.py process
        calls.append(cmd)
        stdout.write("trained\n")
        run_dir = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).partition("=")[2])
        (run_dir / "checkpoints" / "epoch_002-f1_0.70.ckpt").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(_common.subprocess, "run", fake_train)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "overrides.txt").write_text("experiment=general\n")
    (run / "train.log").write_text("epoch 0\n")
    # the interrupted part trained 50 s up to its last epoch, after 100 s of earlier parts
    last_saved = (run / "checkpoints" / "last.ckpt").stat().st_mtime
    (run / "segment.json").write_text(json.dumps({"before_s": 100.0,
                                                  "started": last_saved - 50.0}))
    best, seconds = _common.train_run(run, ["experiment=general"])
    assert best == run / "checkpoints" / "epoch_002-f1_0.70.ckpt"
    assert 150.0 <= seconds < 160.0                    # every part counted, not the last alone
    assert calls[-1][-1] == f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    assert (run / "train.log").read_text() == "epoch 0\ntrained\n"   # the log goes on
    assert (run / "DONE").is_file()

    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "last.ckpt").write_bytes(b"")
    (other / "overrides.txt").write_text("experiment=general\ntrainer.max_epochs=1\n")
    _, seconds = _common.train_run(other, ["experiment=general"])
    assert not any(arg.startswith("ckpt_path=") for arg in calls[-1])
    assert seconds < 10.0                              # afresh: no earlier part counted
    assert (other / "overrides.txt").read_text() == "experiment=general\n"
