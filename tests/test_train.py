"""train.py: config composition, every network, sweeps, DDP on CPU, W&B offline, resume, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cryoparticle.config import CONF_DIR, compose
from cryoparticle.training import run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=tiny", "print_config=false"]


def _train(tmp: Path, *args: str, env: dict | None = None, tiny: bool = True
           ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={tmp}",
           *(TINY if tiny else ["print_config=false"]), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp.parent,
                          env={**os.environ, **(env or {})})


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["data", "model", "crf", "trainer", "logger", "callbacks",
                                   "experiment", "paths", "debug", "hparams_search"])
def test_every_group_option_composes(group):
    for option in _options(group):
        extra = ["data.root=/x"] if option == "folder" else []
        cfg = compose("train", [f"{group}={option}", *extra], return_hydra_config=True)
        if group in ("experiment", "hparams_search", "debug"):  # @package _global_ overrides
            assert cfg.hydra.runtime.choices[group] == option
        else:
            assert group in cfg
    cfg = compose("train", ["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher.nodes == 1


def test_experiments_reproduce_the_method_settings():
    fcn = compose("train", ["experiment=fcn_resnet101"])
    assert dict(fcn.model.network)["name"] == "fcn" and fcn.model.network.backbone == "resnet101"
    dl = compose("train", ["experiment=deeplabv3_resnet50"])
    assert dl.model.network.name == "deeplabv3" and dl.model.network.backbone == "resnet50"
    for c in (fcn, dl):
        assert c.data.crop_size == 512 and c.model.optimizer.lr == 1e-3
        assert c.model.loss.label_smoothing == 0.1
        assert c.model.scheduler._target_.endswith("ReduceLROnPlateau")


@pytest.mark.parametrize("model", ["unet", "unetplusplus", "deeplabv3plus", "fcn", "deeplabv3"])
def test_fast_dev_run_every_network(tmp_path, model):
    cfg = compose("train", [f"model={model}", "debug=fdr", "data.crop_size=64",
                            "data.eval_micrograph_size=80", "data.n_val_micrographs=1",
                            "data.n_test_micrographs=1", "data.batch_size=2", "print_config=false",
                            "model.tile_size=96", "model.tile_overlap=16",
                            f"paths.output_dir={tmp_path}", "logger=csv"])
    metrics, _ = run(cfg)
    for key in ("test/iou", "test/f1", "test/precision", "test/recall", "test/loss"):
        assert key in metrics and metrics[key] == metrics[key]  # present and not NaN


def test_learning_check_loss_falls_iou_rises(tmp_path):
    cfg = compose("train", ["debug=tiny", "print_config=false", f"paths.output_dir={tmp_path}",
                            "data.crop_size=64", "data.train_samples_per_epoch=320",
                            "data.eval_micrograph_size=160", "data.batch_size=8",
                            "trainer.max_epochs=3", "logger=csv"])
    metrics, best = run(cfg)
    import pandas as pd
    log = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    losses = log["train/loss_step"].dropna().to_numpy()
    assert losses[-3:].mean() < losses[:3].mean()
    chance = 0.07  # particles cover ≈7 % of the pixels: predicting all-particle gives IoU ≈ 0.07
    assert metrics["test/iou"] > 4 * chance, metrics
    assert best and Path(best).exists()


def test_ddp_sim_two_cpu_processes(tmp_path):
    r = _train(tmp_path / "run", "trainer=ddp_sim", "trainer.max_epochs=1")
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(next((tmp_path / "run" / "checkpoints").glob("last.ckpt")),
                      map_location="cpu", weights_only=False)
    # 8 samples, global batch 4 = 2 per process: 2 optimiser steps per epoch, not 4
    assert ckpt["global_step"] == 2


def test_sweep_two_runs(tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "model=unet,fcn", *TINY,
           "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}", "test=false"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for job in ("0", "1"):
        assert list((tmp_path / job / "checkpoints").glob("last.ckpt"))
    assert "fcn" in (tmp_path / "1" / ".hydra" / "overrides.yaml").read_text()


def test_wandb_offline_logs_metrics(tmp_path):
    pytest.importorskip("wandb")
    r = _train(tmp_path / "run", "logger=wandb", "trainer.max_epochs=1",
               env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    assert b"val/iou" in data and b"test/iou" in data


def test_resume_and_evaluate_and_errors(tmp_path):
    first = tmp_path / "first"
    r = _train(first, "trainer.max_epochs=1")
    assert r.returncode == 0, r.stderr[-3000:]
    last = first / "checkpoints" / "last.ckpt"
    one = torch.load(last, map_location="cpu", weights_only=False)
    assert one["epoch"] == 0 and one["global_step"] == 2

    second = tmp_path / "second"
    r = _train(second, "trainer.max_epochs=3", f"ckpt_path={last}")
    assert r.returncode == 0, r.stderr[-3000:]
    three = torch.load(second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert three["epoch"] == 2 and three["global_step"] == 6  # continued, not restarted
    adam = three["optimizer_states"][0]["state"]
    assert all(int(s["step"]) == 6 for s in adam.values())  # optimizer state carried over
    assert three["cryoparticle"]["pixel_size_a"] == pytest.approx(7.08)

    r = _train(tmp_path / "eval", "train=false", f"ckpt_path={last}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test/iou" in r.stdout

    def one_line_error(res, *words):
        assert res.returncode == 2, res.stderr[-2000:]
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
        for w in words:
            assert w in lines[0]

    one_line_error(_train(tmp_path / "e1", "model=fcn", f"ckpt_path={last}"), str(last), "network")
    one_line_error(_train(tmp_path / "e2", "model=deeplabv4"), "model=deeplabv4", "deeplabv3")
    one_line_error(_train(tmp_path / "e3", "data=folder", "data.root=/nonexistent/folder",
                          tiny=False),
                   "/nonexistent/folder")
    one_line_error(_train(tmp_path / "e4", "train=false"), "ckpt_path")
    one_line_error(_train(tmp_path / "e5", f"ckpt_path={tmp_path}/none.ckpt"), "none.ckpt")


def test_ema_weights_are_validated_checkpointed_and_resumed(tmp_path):
    """callbacks=ema: the checkpoint's weights are the exponential moving average
    avg_k = d * avg_(k-1) + (1 - d) * w_k of the raw weights w_k (avg_1 = w_1), also across a
    resume; the raw weights travel beside them, and a checkpoint loads with the averaged ones."""
    from cryoparticle.models.segmenter import load_segmenter

    decay = 0.75
    ema = ["callbacks=ema", f"callbacks.weight_averaging.decay={decay}",
           "data.train_samples_per_epoch=4", "test=false"]  # one optimiser step per epoch
    r = _train(tmp_path / "one", *ema, "trainer.max_epochs=1")
    assert r.returncode == 0, r.stderr[-3000:]
    first = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)
    assert first["global_step"] == 1
    r = _train(tmp_path / "two", *ema, "trainer.max_epochs=2",
               f"ckpt_path={tmp_path / 'one' / 'checkpoints' / 'last.ckpt'}")
    assert r.returncode == 0, r.stderr[-3000:]
    second = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", map_location="cpu",
                        weights_only=False)
    assert second["global_step"] == 2

    w1 = first["current_model_state"]
    w2 = second["current_model_state"]
    averaged = second["state_dict"]
    floats = [k for k, v in averaged.items() if v.is_floating_point()]
    assert any(k.endswith("running_mean") for k in floats)       # BatchNorm statistics too
    for k in floats:
        torch.testing.assert_close(first["state_dict"][k], w1[k])  # the first update copies
        torch.testing.assert_close(averaged[k], decay * w1[k] + (1 - decay) * w2[k])
    assert max(float((averaged[k] - w2[k]).abs().max()) for k in floats) > 1e-4

    model = load_segmenter(tmp_path / "two" / "checkpoints" / "last.ckpt")
    loaded = model.state_dict()
    for k in floats:
        torch.testing.assert_close(loaded[k].float(), averaged[k].float())
