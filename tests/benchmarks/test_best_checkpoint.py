"""benchmarks/_common.best_checkpoint: the checkpoint Lightning recorded as best, not the last
file name, when a training keeps several (``save_top_k`` > 1)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import best_checkpoint  # noqa: E402

MONITOR = "ModelCheckpoint{'monitor': 'val/pick_f1', 'mode': 'max'}"
LAST = "ModelCheckpoint{'monitor': None, 'mode': 'min'}"


def _run(folder: Path, names: list[str], best: str | None) -> None:
    folder.mkdir()
    for name in names:
        torch.save({"state_dict": {}}, folder / name)
    callbacks = {LAST: {"best_model_path": str(folder / "last.ckpt")}}
    if best is not None:   # recorded where the run was trained (another machine's folder)
        callbacks[MONITOR] = {"monitor": "val/pick_f1", "best_model_path": f"/elsewhere/{best}"}
    torch.save({"callbacks": callbacks}, folder / "last.ckpt")


def test_the_recorded_best_wins_over_the_last_file_name(tmp_path):
    names = ["epoch_004-f1_0.6524.ckpt", "epoch_006-f1_0.6510.ckpt", "epoch_007-f1_0.6400.ckpt"]
    _run(tmp_path / "checkpoints", names, best=names[0])
    assert best_checkpoint(tmp_path / "checkpoints") == tmp_path / "checkpoints" / names[0]


def test_one_checkpoint_without_a_record_is_that_one(tmp_path):
    _run(tmp_path / "checkpoints", ["epoch_003-f1_0.6107.ckpt"], best=None)
    assert best_checkpoint(tmp_path / "checkpoints").name == "epoch_003-f1_0.6107.ckpt"
    (tmp_path / "empty").mkdir()
    assert best_checkpoint(tmp_path / "empty") is None


def test_several_checkpoints_without_a_record_are_an_error_not_a_guess(tmp_path):
    _run(tmp_path / "checkpoints", ["epoch_001-f1_0.5.ckpt", "epoch_002-f1_0.4.ckpt"], best=None)
    with pytest.raises(SystemExit, match="2 epoch_\\*.ckpt and no best_model_path"):
        best_checkpoint(tmp_path / "checkpoints")
