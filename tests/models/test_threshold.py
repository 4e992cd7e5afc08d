"""Picking-threshold calibration: the threshold with the best pooled F1 on validation picks is
logged, stored in hparams and carried by the checkpoint; counts pool exactly across ranks."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from cryoparticle.data.datasets import MicrographDataset, particle_centres
from cryoparticle.micrograph import Micrograph
from cryoparticle.models.segmenter import PICK_THRESHOLDS, Segmenter, best_pick_threshold

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*(does not have many workers|LeafSpec|val_dataloader|train_dataloader).*")

H, W, D = 96, 128, 20.0  # micrograph (rows, columns), particle diameter (px; pixel size 1 Å)
TRUTH = [(30.0, 30.0, 0.8), (95.0, 35.0, 0.8), (60.0, 72.0, 0.47)]  # (x, y, probability)
SPURIOUS = (105.0, 78.0, 0.32)  # a blob that is no particle


class ImageIsProbability(nn.Module):
    """A stand-in CRF: logits whose softmax is the input image itself (a probability map), so
    the segmenter's probabilities are exactly the map the test draws."""

    def forward(self, logits, image):
        p = image.clamp(1e-4, 1 - 1e-4)
        # + 0 × logits: the network stays in the graph, so a training step has gradients
        return torch.cat([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1) + 0.0 * logits


def probability_map(discs) -> torch.Tensor:
    rows, cols = np.mgrid[:H, :W]
    prob = np.full((H, W), 0.01, dtype=np.float32)
    for x, y, value in discs:
        prob[(cols - x) ** 2 + (rows - y) ** 2 <= (D / 2) ** 2] = value
    return torch.from_numpy(prob)


def item(discs, centres, name: str) -> dict:
    prob = probability_map(discs)
    out = {"image": prob[None], "mask": (prob > 0.3).long(), "name": name}
    if centres is not None:
        out["particles"] = torch.tensor(centres, dtype=torch.float32).reshape(-1, 2)
    return out


def segmenter(threshold: float = 0.5) -> Segmenter:
    return Segmenter({"name": "fcn", "backbone": "resnet18"},
                     crf={"_target_": f"{__name__}.ImageIsProbability"}, tile_size=64,
                     tile_overlap=16, pixel_size_a=1.0, particle_diameter_a=D,
                     picking_threshold=threshold)


def trainer(**kwargs) -> pl.Trainer:
    args = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False,
            "enable_progress_bar": False, "enable_model_summary": False}
    return pl.Trainer(**{**args, **kwargs})


def val_loader(with_truth: bool = True) -> DataLoader:
    centres = [(x, y) for x, y, _ in TRUTH] if with_truth else None
    items = [item(TRUTH + [SPURIOUS], centres, "m0"),
             item([], [] if with_truth else None, "empty")]  # known to hold no particle
    return DataLoader(items, batch_size=1)


def test_best_pick_threshold_plateau_and_empty_cases():
    t = (0.1, 0.2, 0.3, 0.4, 0.5)
    counts = np.array([[3, 1, 0], [3, 0, 0], [3, 0, 0], [3, 0, 0], [2, 0, 1]])
    assert best_pick_threshold(counts, t) == (0.3, 1.0, 1.0, 1.0)  # middle of the plateau
    assert best_pick_threshold(np.array([[3, 0, 0], [3, 0, 0], [2, 0, 1], [2, 0, 1],
                                         [0, 0, 3]]), t)[0] == 0.1  # plateau 0.1..0.2 → lower
    threshold, f1, precision, recall = best_pick_threshold(np.array([[0, 4, 0]] * 4 + [[0, 0, 0]]),
                                                           t)
    assert (threshold, f1, precision, recall) == (0.5, 1.0, 1.0, 1.0)  # no truth: pick nothing
    assert best_pick_threshold(np.zeros((5, 3)), t)[1] == 1.0
    assert PICK_THRESHOLDS[0] == 0.1 and PICK_THRESHOLDS[-1] == 0.9 and len(PICK_THRESHOLDS) == 9


def test_validation_calibrates_the_threshold_and_the_checkpoint_carries_it(tmp_path):
    seg = segmenter(threshold=0.5)
    tr = trainer()
    metrics = tr.validate(seg, val_loader(), verbose=False)[0]
    # only thresholds in (0.32, 0.47] keep the three particles and drop the 0.32 blob: F1 = 1
    assert seg.hparams.picking_threshold == pytest.approx(0.4)
    assert metrics["val/pick_f1"] == pytest.approx(1.0)
    assert metrics["val/pick_threshold"] == pytest.approx(0.4)
    assert metrics["val/pick_precision"] == metrics["val/pick_recall"] == pytest.approx(1.0)

    # during fit, the checkpoint saved after validation (ModelCheckpoint) carries it
    seg = segmenter(threshold=0.5)
    train = DataLoader([(torch.randn(1, 64, 64), torch.zeros(64, 64, dtype=torch.long))],
                       batch_size=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/pick_f1", mode="max",
                                 save_top_k=1, filename="best")
    trainer(max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint],
            num_sanity_val_steps=1).fit(seg, train, val_loader())
    raw = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    assert raw["hyper_parameters"]["picking_threshold"] == pytest.approx(0.4)
    assert raw["cryoparticle"]["picking_threshold"] == pytest.approx(0.4)


def test_without_truth_coordinates_the_threshold_is_kept():
    seg = segmenter(threshold=0.55)
    metrics = trainer().validate(seg, val_loader(with_truth=False), verbose=False)[0]
    assert seg.hparams.picking_threshold == 0.55
    assert "val/pick_f1" not in metrics
    # nor without a pixel size / diameter to turn probabilities into particles
    seg = Segmenter({"name": "fcn", "backbone": "resnet18"},
                    crf={"_target_": f"{__name__}.ImageIsProbability"}, tile_size=64,
                    tile_overlap=16, picking_threshold=0.55)
    metrics = trainer().validate(seg, val_loader(), verbose=False)[0]
    assert seg.hparams.picking_threshold == 0.55 and "val/pick_f1" not in metrics


def test_counts_pool_exactly_across_ranks():
    """Under DDP each rank counts its own micrographs; the sum over ranks (strategy.reduce)
    equals the counts of one process that saw them all."""
    other = item([(40.0, 40.0, 0.6), (100.0, 60.0, 0.25)], [(40.0, 40.0), (70.0, 20.0)], "m1")
    mine = next(iter(val_loader()))

    def count(seg, batch) -> None:  # what a validation step adds for one micrograph
        with torch.no_grad():
            prob = seg.predict_proba(batch["image"][0])[1]
        seg._count_picks(prob, seg._batch_centres(batch, 0))

    def counts_of(*batches) -> np.ndarray:
        seg = segmenter().eval()
        for batch in batches:
            count(seg, batch)
        return seg._pick_counts.numpy().copy()

    batch_other = next(iter(DataLoader([other], batch_size=1)))
    rank1 = torch.cat([torch.from_numpy(counts_of(batch_other)).flatten(),
                       torch.tensor([1.0], dtype=torch.float64)])
    seg = segmenter().eval()
    count(seg, mine)
    seg._trainer = SimpleNamespace(  # rank 0 of two; reduce adds rank 1's counts
        world_size=2, strategy=SimpleNamespace(reduce=lambda t, reduce_op: t + rank1))
    pooled, n = seg._pooled_pick_counts()
    seg._trainer = None
    assert n == 2
    np.testing.assert_array_equal(pooled, counts_of(mine, batch_other))
    assert not seg._pick_counts.any()  # reset for the next epoch
    # per threshold: TP + FN = all true particles (3 + 2)
    np.testing.assert_array_equal(pooled[:, 0] + pooled[:, 2], 5)


def test_dataset_items_carry_true_centres():
    import pandas as pd

    def mic(particles, mask):
        return Micrograph(name="m", image=np.zeros(mask.shape, np.float32), mask=mask,
                          pixel_size_a=1.0, particles=pd.DataFrame(particles))

    table = {"micrograph": ["m", "m"], "x": [3.0, 7.5], "y": [1.0, 2.0], "diameter": [4.0] * 2,
             "score": [math.nan] * 2}
    with_table = mic(table, np.zeros((6, 9), np.uint8))
    torch.testing.assert_close(particle_centres(with_table),
                               torch.tensor([[3.0, 1.0], [7.5, 2.0]]))
    empty = {k: [] for k in table}
    assert particle_centres(mic(empty, np.zeros((6, 9), np.uint8))).shape == (0, 2)
    assert particle_centres(mic(empty, np.ones((6, 9), np.uint8))) is None  # mask-only label
    assert particle_centres(mic(empty, np.full((6, 9), 255, np.uint8))) is None  # unlabelled
    batch = next(iter(DataLoader(MicrographDataset([with_table]), batch_size=1)))
    assert batch["particles"].shape == (1, 2, 2) and batch["image"].shape == (1, 1, 6, 9)
    batch = next(iter(DataLoader(MicrographDataset([mic(empty, np.zeros((6, 9), np.uint8))]),
                                 batch_size=1)))
    assert batch["particles"].shape == (1, 0, 2)
