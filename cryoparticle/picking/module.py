"""Picking through Lightning's ``Trainer.predict``: several GPUs split the micrographs (DDP).

``predict.py`` picks on one device in a plain loop (:mod:`cryoparticle.picking.segment`,
:class:`~cryoparticle.picking.writers.PickRecorder`), without importing Lightning; with several
devices, nodes or another strategy it goes through Lightning, with these two adapters:
:class:`PickingModule`, a ``LightningModule`` whose ``predict_step`` is
:meth:`~cryoparticle.picking.segment.MicrographSegmenter.predict_record`, and
:class:`PickWriter`, a ``BasePredictionWriter`` that records each micrograph on the rank that
segmented it and, at the end, gathers the ranks' results for rank zero to write the combined
STAR and summary.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from cryoparticle.picking.segment import (
    TILE_BATCH_PIXELS,
    TTA_TRANSFORMS,
    MicrographSegmenter,
    fitted_tile,
    post_hoc_crf,
)
from cryoparticle.picking.settings import Settings
from cryoparticle.picking.writers import PickRecorder, PredictSummary, Result

_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning")


def quiet_lightning() -> None:
    """Lightning's info logs and the warnings that do not apply to picking, silenced."""
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*predict_dataloader.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


class PickingModule(pl.LightningModule):
    """``Trainer.predict`` wrapper of a :class:`MicrographSegmenter`: ``predict_step`` is its
    ``predict_record``."""

    def __init__(self, picker: MicrographSegmenter) -> None:
        super().__init__()
        self.picker = picker

    def setup(self, stage: str) -> None:
        quiet_lightning()  # again in processes started by the strategy (ddp_spawn)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Particle probability ``(h, w)`` of one micrograph ``(1, h, w)``."""
        return self.picker(image)

    def predict_step(self, batch: dict[str, Any], batch_idx: int,
                     dataloader_idx: int = 0) -> dict[str, Any]:
        return self.picker.predict_record(batch)


class PickWriter(BasePredictionWriter):
    """A :class:`~cryoparticle.picking.writers.PickRecorder` as a Lightning callback: each
    micrograph recorded on the rank that segmented it; at the end the ranks' results are
    gathered, rank zero writes the combined STAR and summary, and :attr:`summary` is set on
    every rank."""

    def __init__(self, settings: Settings, paths: Sequence[Path], names: Sequence[str],
                 device: str = "cpu") -> None:
        super().__init__(write_interval="batch")
        self.recorder = PickRecorder(settings, paths, names, device=device)

    @property
    def results(self) -> list[Result]:
        return self.recorder.results

    @property
    def summary(self) -> PredictSummary | None:
        return self.recorder.summary

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recorder.start()

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           prediction: Any, batch_indices: Sequence[int] | None, batch: Any,
                           batch_idx: int, dataloader_idx: int = 0) -> None:
        self.recorder.record(batch, prediction)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        results = list(self.recorder.results)
        distributed = trainer.world_size > 1 and torch.distributed.is_available() and \
            torch.distributed.is_initialized()
        if distributed:
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, results)
            results = [r for part in gathered for r in (part or [])]
        if trainer.is_global_zero:
            self.recorder.finish(results)
        if distributed:
            box = [self.recorder.summary]
            torch.distributed.broadcast_object_list(box, src=0)
            self.recorder.summary = box[0]


__all__ = ["TILE_BATCH_PIXELS", "TTA_TRANSFORMS", "PickWriter", "PickingModule", "fitted_tile",
           "post_hoc_crf", "quiet_lightning"]
