"""Segmenter: Lightning loops on crops and whole micrographs, learning, checkpoints, figures."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from cryoparticle.errors import InputError
from cryoparticle.models.segmenter import Segmenter, load_segmenter

IGNORE = 255
STAGE_METRICS = ("loss", "iou", "f1", "precision", "recall", "accuracy")

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*(does not have many workers|LeafSpec|val_dataloader).*")


class DoubleCRF(nn.Module):
    """A stand-in CRF: doubles the logits and records the image it was given."""

    def __init__(self, factor: float = 2.0) -> None:
        super().__init__()
        self.factor = factor
        self.seen: list[tuple[int, ...]] = []

    def forward(self, logits, image):
        self.seen.append(tuple(image.shape))
        return logits * self.factor


def blobs(n: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images (N, 1, H, W), standardised, and masks = image > 0.5 (N, H, W)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, h, w, generator=g)
    k = torch.exp(-torch.arange(-6, 7.0) ** 2 / (2 * 2.5**2))
    k = (k[:, None] * k[None, :]) / k.sum() ** 2
    x = F.conv2d(F.pad(x, (6, 6, 6, 6), mode="circular"), k[None, None])
    x = (x - x.mean()) / x.std()
    return x, (x[:, 0] > 0.5).long()


def train_loader(n: int = 4, size: int = 64, seed: int = 0) -> DataLoader:
    x, m = blobs(n, size, size, seed)
    return DataLoader(list(zip(x, m)), batch_size=2)


def micrograph_loader(n: int = 1, h: int = 70, w: int = 90, seed: int = 1,
                      with_ignore: bool = True) -> DataLoader:
    x, m = blobs(n, h, w, seed)
    if with_ignore:
        m[:, :4, :] = IGNORE
    items = [{"image": x[i], "mask": m[i], "name": f"mic{i}"} for i in range(n)]
    return DataLoader(items, batch_size=1)


def trainer(**kwargs) -> pl.Trainer:
    args = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False,
            "enable_progress_bar": False, "enable_model_summary": False}
    args.update(kwargs)
    return pl.Trainer(**args)


def model(name: str = "fcn", **kwargs) -> Segmenter:
    kwargs.setdefault("tile_size", 64)
    kwargs.setdefault("tile_overlap", 16)
    return Segmenter({"name": name, "backbone": "resnet18"}, **kwargs)


@pytest.mark.parametrize("name", ["unet", "fcn", "deeplabv3"])
def test_fast_dev_run_logs_metrics(name):
    torch.manual_seed(0)
    seg = model(name)
    tr = trainer(fast_dev_run=True)
    tr.fit(seg, train_loader(), micrograph_loader())
    metrics = tr.callback_metrics
    assert "train/loss" in metrics
    for key in STAGE_METRICS:
        assert f"val/{key}" in metrics, key
        assert torch.isfinite(metrics[f"val/{key}"])
    assert 0.0 <= float(metrics["val/iou"]) <= 1.0
    if name == "fcn":
        tr.test(seg, micrograph_loader(seed=3))
        for key in STAGE_METRICS:
            assert f"test/{key}" in tr.callback_metrics, key


def test_short_training_learns_and_metrics_are_exact():
    pl.seed_everything(0)
    x, m = blobs(2, 64, 64, seed=5)
    seg = model("unet", loss={"name": "ce"},
                optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3})
    tr = trainer(max_steps=40, num_sanity_val_steps=0, limit_val_batches=0)
    tr.fit(seg, DataLoader(list(zip(x, m)), batch_size=2))
    # validate on the same two images as whole micrographs, a few pixels marked ignore
    masks = m.clone()
    masks[0, :3] = IGNORE
    masks[1, :, :5] = IGNORE
    val = DataLoader([{"image": x[i], "mask": masks[i], "name": f"m{i}"} for i in range(2)],
                     batch_size=1)
    result = trainer().validate(seg, val, verbose=False)[0]
    assert result["val/iou"] > 0.8, result
    # the logged metrics equal an independent count on the stitched predictions
    seg.eval()
    with torch.no_grad():
        pred = torch.stack([seg.predict_logits(x[i]).argmax(0) for i in range(2)])
    keep = masks != IGNORE
    p, t = pred[keep] == 1, masks[keep] == 1
    tp, fp, fn = (p & t).sum().item(), (p & ~t).sum().item(), (~p & t).sum().item()
    assert result["val/iou"] == pytest.approx(tp / (tp + fp + fn), abs=1e-6)
    assert result["val/precision"] == pytest.approx(tp / (tp + fp), abs=1e-6)
    assert result["val/recall"] == pytest.approx(tp / (tp + fn), abs=1e-6)
    assert result["val/accuracy"] == pytest.approx((p == t).float().mean().item(), abs=1e-6)


def test_crf_runs_after_the_network():
    crf_cfg = {"_target_": f"{__name__}.DoubleCRF", "factor": 3.0}
    seg = model("fcn", crf=crf_cfg).eval()
    assert isinstance(seg.crf, DoubleCRF)
    x = torch.randn(2, 1, 40, 52)
    with torch.no_grad():
        torch.testing.assert_close(seg(x), 3.0 * seg.network(x))
    assert seg.crf.seen[-1] == (2, 1, 40, 52)
    assert model("fcn", crf={}).crf is None and model("fcn", crf=None).crf is None


def test_predict_step_returns_probabilities():
    seg = model("fcn")
    out = trainer().predict(seg, micrograph_loader(n=2, h=70, w=90))
    assert len(out) == 2
    for probs in out:
        assert probs.shape == (1, 2, 70, 90)
        assert torch.all((probs >= 0) & (probs <= 1))
        torch.testing.assert_close(probs.sum(1), torch.ones(1, 70, 90))


def test_hydra_configs_are_stored_as_plain_values_and_build_optimizers():
    cfg = OmegaConf.create({
        "network": {"name": "fcn", "backbone": "resnet18"},
        "loss": {"name": "focal", "focal_gamma": 1.0, "class_weights": [1.0, 2.0]},
        "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
        "scheduler": {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                      "_partial_": True, "mode": "min", "factor": 0.5, "patience": 5},
    })
    seg = Segmenter(cfg.network, cfg.loss, cfg.optimizer, cfg.scheduler, pixel_size_a=7.08)
    assert type(seg.hparams.network) is dict and type(seg.hparams.loss["class_weights"]) is list
    assert seg.hparams.network["in_channels"] == 1  # defaults filled in
    conf = seg.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.SGD)
    assert conf["optimizer"].param_groups[0]["lr"] == 0.1
    sched = conf["lr_scheduler"]
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert sched["monitor"] == "val/loss" and sched["scheduler"].factor == 0.5
    assert isinstance(model("fcn").configure_optimizers(), torch.optim.Adam)  # default


def test_checkpoint_roundtrip_figure_and_errors(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    torch.manual_seed(0)
    seg = Segmenter({"name": "fcn", "backbone": "resnet18", "pretrained": str(weights)},
                    tile_size=64, tile_overlap=16, pixel_size_a=7.08, particle_diameter_a=190.0,
                    normalisation="per_micrograph_standardise", picking_threshold=0.4)
    logger = TensorBoardLogger(tmp_path / "tb", name="", version="")
    tr = trainer(max_steps=2, logger=logger, num_sanity_val_steps=0, log_every_n_steps=1)
    tr.fit(seg, train_loader(), micrograph_loader())
    ckpt = tmp_path / "model.ckpt"
    tr.save_checkpoint(ckpt)
    weights.unlink()  # the checkpoint does not need the pretrained file any more

    # the overlay figure and the validation scalars reached TensorBoard
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "val/overlay" in events.Tags()["images"]
    assert "val/iou" in events.Tags()["scalars"]

    loaded = Segmenter.load_from_checkpoint(ckpt)
    assert dict(loaded.hparams) == dict(seg.hparams)
    assert loaded.hparams.pixel_size_a == 7.08 and loaded.hparams.particle_diameter_a == 190.0
    assert loaded.hparams.picking_threshold == 0.4
    x = torch.randn(1, 1, 70, 90)
    seg.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(seg.predict_logits(x), loaded.predict_logits(x))
        assert torch.equal(seg(x), loaded(x))
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    facts = raw["cryoparticle"]
    assert facts["pixel_size_a"] == 7.08 and facts["particle_diameter_a"] == 190.0
    assert facts["normalisation"] == "per_micrograph_standardise"
    assert facts["network"]["name"] == "fcn" and facts["picking_threshold"] == 0.4
    assert load_segmenter(ckpt, expect_network={"name": "fcn"}).hparams.tile_size == 64

    # another network: a clear InputError naming the file and both configurations
    with pytest.raises(InputError, match=r"model\.ckpt.*'fcn'.*'unet'"):
        load_segmenter(ckpt, expect_network={"name": "unet", "backbone": "resnet18"})
    with pytest.raises(InputError, match=r"model\.ckpt.*resnet34"):
        Segmenter.load_from_checkpoint(ckpt, network={"name": "fcn", "backbone": "resnet34"})
    with pytest.raises(InputError, match="missing.ckpt"):
        load_segmenter(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(InputError, match="garbage.ckpt"):
        load_segmenter(garbage)
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(InputError, match="other.ckpt.*not a cryoparticle"):
        load_segmenter(other)
    assert np.isfinite(float(tr.callback_metrics["val/loss"]))
