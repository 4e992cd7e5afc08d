"""The particle segmenter: network (+ optional CRF) trained and evaluated with Lightning.

:class:`Segmenter` takes plain configs (Hydra ``DictConfig``\\ s are converted) and stores them
with ``save_hyperparameters``, so ``Segmenter.load_from_checkpoint(path)`` (or
:func:`load_segmenter`) rebuilds the network, CRF, loss and the facts a picker needs (pixel size,
particle diameter, normalisation, threshold) without the Hydra config. The same facts are also
written to ``checkpoint["cryoparticle"]`` for readers without Lightning.

Batches
    *training*: ``(image (B, 1, S, S) float, mask (B, S, S) int64)`` random crops, mask 255 = ignore;
    *validation/test/predict*: ``{"image": (1, 1, H, W), "mask": (1, H, W), "name": [str]}``
    whole micrographs of any size, run tile by tile (:func:`cryoparticle.data.tiling.predict_tiled`,
    ``tile_size``/``tile_overlap``) and stitched into logits for the whole micrograph.

Logged
    ``train/loss``; ``val/loss``, ``val/iou``, ``val/f1``, ``val/precision``, ``val/recall``,
    ``val/accuracy`` (the particle class, ignore pixels excluded, torchmetrics so they are exact
    under DDP) and the same under ``test/``; each validation epoch an overlay figure (micrograph,
    truth, prediction) of the first validation micrograph to TensorBoard and W&B loggers.

Picking threshold
    Validation batches may carry ``"particles"``: ``(1, N, 2)`` true centres ``(x, y)`` in
    pixels of the micrograph (``N = 0``: a micrograph known to hold none). For each such
    micrograph the particle probability map is turned into picks by
    :func:`~cryoparticle.picking.extract.extract_particles` at every probability threshold of
    :data:`PICK_THRESHOLDS` (diameter ``particle_diameter_a / pixel_size_a``) and matched to
    the truth (radius: half a diameter), giving TP/FP/FN per threshold. The counts are summed
    over micrographs and, under DDP, over ranks (counts are additive, so the pooled F1 is
    exact); at the end of the epoch the threshold with the best pooled F1 becomes
    ``hparams.picking_threshold`` (so the checkpoint saved for that epoch carries it, in
    ``checkpoint["hyper_parameters"]`` and ``checkpoint["cryoparticle"]``) and
    ``val/pick_f1``, ``val/pick_precision``, ``val/pick_recall`` and ``val/pick_threshold`` are
    logged. Without such batches, or without a pixel size and particle diameter, the
    threshold is left as it is.
"""

from __future__ import annotations

import contextvars
import inspect
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)

from cryoparticle.errors import InputError, file_error, param_error
from cryoparticle.io.checks import one_line
from cryoparticle.models.checkpoints import read_checkpoint, read_state_dict
from cryoparticle.models.inference import build_crf, inference_facts
from cryoparticle.models.losses import build_loss
from cryoparticle.models.networks import build_network

#: Loss when none is configured.
DEFAULT_LOSS: dict[str, Any] = {"name": "ce", "label_smoothing": 0.1}
#: Optimizer when none is configured.
DEFAULT_OPTIMIZER: dict[str, Any] = {"_target_": "torch.optim.Adam", "_partial_": True,
                                     "lr": 1e-3}
#: Keys of a scheduler config that are Lightning's (``lr_scheduler`` dict), not the scheduler's.
_LIGHTNING_SCHEDULER_KEYS = ("interval", "frequency", "strict", "name")
#: Largest side (pixels) of a micrograph drawn in the logged figure (larger ones are subsampled).
FIGURE_MAX_SIDE = 1024
#: Probability thresholds tried when calibrating ``picking_threshold`` on validation data
#: (one particle extraction each per validation micrograph: ≈ 0.1 s for 512² on a CPU core).
PICK_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))

# True while load_from_checkpoint rebuilds a Segmenter: the weights come from the checkpoint,
# so a ``pretrained`` file in the stored network config is not read (it may be gone).
_RESTORING: contextvars.ContextVar[bool] = contextvars.ContextVar("_restoring", default=False)


def _plain(value: Any) -> Any:
    """``DictConfig``/``ListConfig`` (resolved) → dict/list, ``Path`` → str, recursively."""
    try:
        from omegaconf import Container, OmegaConf

        if isinstance(value, Container):
            value = OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def normalise_network_config(network: Mapping[str, Any]) -> dict[str, Any]:
    """``network`` with :func:`build_network`'s defaults filled in (name required)."""
    network = _plain(network)
    if not isinstance(network, dict) or "name" not in network:
        raise param_error("network", network, "must be a dict of build_network arguments "
                                              "with at least 'name'")
    defaults = {k: p.default for k, p in inspect.signature(build_network).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {"name": network["name"], **defaults, **network}


def same_network(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two network configs build the same architecture (``pretrained`` aside)."""
    na, nb = normalise_network_config(a), normalise_network_config(b)
    na.pop("pretrained", None)
    nb.pop("pretrained", None)
    return na == nb


class Segmenter(pl.LightningModule):
    """Semantic segmentation of micrographs into particle (1) / background (0).

    ``network``: keyword arguments of :func:`~cryoparticle.models.networks.build_network`;
    ``loss``: of :func:`~cryoparticle.models.losses.build_loss` (default: ``ce``, label
    smoothing 0.1); ``optimizer``/``scheduler``: Hydra configs with ``_target_`` (and
    ``_partial_: true``; the scheduler may add Lightning's ``interval``/``frequency``);
    ``crf``: a Hydra config of a module called ``crf(logits, image) -> logits`` after the network
    (``None`` or no ``_target_``: no CRF). ``pixel_size_a``, ``particle_diameter_a``,
    ``normalisation`` and ``picking_threshold`` are stored for inference.
    ``finetune_from``: a checkpoint (or network ``state_dict``) whose network weights start the
    training, e.g. to fine-tune a CRF-as-RNN on a trained network; ``freeze_network``: train only
    the CRF (the network gets no gradient step and stays in eval mode).
    """

    def __init__(self, network: dict, loss: dict | None = None, optimizer: dict | None = None,
                 scheduler: dict | None = None, crf: dict | None = None, tile_size: int = 256,
                 tile_overlap: int = 32, pixel_size_a: float | None = None,
                 particle_diameter_a: float | None = None,
                 normalisation: str = "per_micrograph_standardise",
                 scheduler_monitor: str = "val/loss", picking_threshold: float = 0.5,
                 freeze_network: bool = False, finetune_from: str | None = None,
                 extraction: dict | None = None) -> None:
        super().__init__()
        network = normalise_network_config(network)
        loss = _plain(loss) if loss is not None else dict(DEFAULT_LOSS)
        optimizer = _plain(optimizer)
        scheduler = _plain(scheduler)
        crf = _plain(crf)
        if not crf or not (isinstance(crf, dict) and crf.get("_target_")):
            crf = None
        tile_size, tile_overlap = int(tile_size), int(tile_overlap)
        if tile_size < 1 or not 0 <= tile_overlap < tile_size:
            raise param_error("tile_overlap", tile_overlap,
                              f"must be in [0, tile_size={tile_size})")
        pixel_size_a = None if pixel_size_a is None else float(pixel_size_a)
        particle_diameter_a = None if particle_diameter_a is None else float(particle_diameter_a)
        normalisation = str(normalisation)
        picking_threshold = float(picking_threshold)
        freeze_network = bool(freeze_network)
        finetune_from = None if finetune_from in (None, "") else str(finetune_from)
        extraction = _plain(extraction) or None
        if extraction is not None:
            from cryoparticle.picking.extract import check_extraction_options

            extraction = check_extraction_options(extraction)
        self.save_hyperparameters()  # the (converted) arguments above, stored in checkpoints

        build_args = dict(network)
        if _RESTORING.get():
            build_args["pretrained"] = False  # the checkpoint's weights replace them anyway
        self.network = build_network(**build_args)
        if finetune_from is not None and not _RESTORING.get():
            load_network_weights(self.network, finetune_from)
        self.crf = self._build_crf(crf)
        # Fine-tuning a CRF on a trained network: the network's weights stay as they are and
        # its batch-norm statistics too (kept in eval mode, see train()).
        self._freeze_network = freeze_network
        if freeze_network:
            self.network.requires_grad_(False)
            self.network.eval()
            if self.crf is None or not any(p.requires_grad for p in self.crf.parameters()):
                raise param_error("freeze_network", True, "nothing left to train: the network "
                                                          "is frozen and the CRF has no "
                                                          "learnable parameters (crf=rnn has)")
        self.criterion = build_loss(**loss)
        self.ignore_index = int(loss.get("ignore_index", 255))
        #: Tiles per forward pass in whole-micrograph inference (not a hyperparameter).
        self.tile_batch_size = 8

        metrics = MetricCollection({
            "accuracy": BinaryAccuracy(ignore_index=self.ignore_index),
            "precision": BinaryPrecision(ignore_index=self.ignore_index),
            "recall": BinaryRecall(ignore_index=self.ignore_index),
            "f1": BinaryF1Score(ignore_index=self.ignore_index),
            "iou": BinaryJaccardIndex(ignore_index=self.ignore_index),
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        #: Per validation epoch: TP/FP/FN of picks per threshold of PICK_THRESHOLDS (summed).
        self._pick_counts = torch.zeros(len(PICK_THRESHOLDS), 3, dtype=torch.float64)
        self._pick_micrographs = 0

    @staticmethod
    def _build_crf(crf: dict | None) -> nn.Module | None:
        return build_crf(crf)

    def train(self, mode: bool = True) -> Segmenter:
        """As ``nn.Module.train``; a frozen network (``freeze_network``) stays in eval mode."""
        super().train(mode)
        if getattr(self, "_freeze_network", False):
            self.network.eval()
        return self

    # ---------------------------------------------------------------------------------- forward

    def forward(self, image: Tensor) -> Tensor:
        """Logits ``(N, 2, H, W)`` of an image batch ``(N, 1, H, W)``: network, then CRF."""
        logits = self.network(image)
        if self.crf is not None:
            logits = self.crf(logits, image)
        return logits

    def predict_logits(self, image: Tensor) -> Tensor:
        """Logits ``(K, H, W)`` of one whole micrograph ``(C, H, W)`` (or ``(1, C, H, W)``),
        tile by tile. Call it in eval mode under ``torch.no_grad()``/``inference_mode()``."""
        from cryoparticle.data.tiling import predict_tiled

        if image.ndim == 4:
            if image.shape[0] != 1:
                raise param_error("image", tuple(image.shape), "expected one micrograph")
            image = image[0]
        if image.ndim == 2:
            image = image[None]
        return predict_tiled(self, image.to(self.device, torch.float32), self.hparams.tile_size,
                             self.hparams.tile_overlap, self.tile_batch_size)

    def predict_proba(self, image: Tensor) -> Tensor:
        """Probabilities ``(K, H, W)`` (softmax over classes) of one whole micrograph."""
        return self.predict_logits(image).softmax(dim=0)

    # --------------------------------------------------------------------------------- batches

    @staticmethod
    def _unpack(batch: Any) -> tuple[Tensor, Tensor | None, list[str] | None]:
        if isinstance(batch, Mapping):
            names = batch.get("name")
            if isinstance(names, str):
                names = [names]
            return batch["image"], batch.get("mask"), names
        if isinstance(batch, Tensor):
            return batch, None, None
        if isinstance(batch, (list, tuple)):
            return batch[0], (batch[1] if len(batch) > 1 else None), None
        raise param_error("batch", type(batch).__name__,
                          "expected (image, mask) or a dict with 'image' and 'mask'")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        image, mask, _ = self._unpack(batch)
        if mask is None:
            raise param_error("batch", "no mask", "training batches need (image, mask)")
        logits = self(image)
        loss = self.criterion(logits, mask.long())
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=image.shape[0])
        return loss

    def _evaluate(self, batch: Any, batch_idx: int, stage: str, dataloader_idx: int) -> Tensor:
        image, mask, names = self._unpack(batch)
        if mask is None:
            raise param_error("batch", "no mask", f"{stage} batches need a mask")
        if image.ndim == 3:
            image = image[:, None]
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        losses = []
        for i in range(image.shape[0]):
            logits = self.predict_logits(image[i])[None]  # (1, K, H, W)
            target = mask[i:i + 1].long()
            losses.append(self.criterion(logits, target))
            prediction = logits.argmax(dim=1)
            metrics.update(prediction, target)
            if stage == "val":
                centres = self._batch_centres(batch, i)
                if centres is not None:
                    self._count_picks(logits[0].softmax(dim=0)[1], centres)
            if stage == "val" and batch_idx == 0 and dataloader_idx == 0 and i == 0:
                name = names[0] if names else "micrograph 0"
                self._log_overlay(image[i, 0], target[0], prediction[0], name)
        loss = torch.stack(losses).mean()
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage == "val",
                 batch_size=image.shape[0], sync_dist=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self._evaluate(batch, batch_idx, "val", dataloader_idx)

    # ---------------------------------------------------------------------- picking threshold

    def _picking_diameter_px(self) -> float | None:
        """Particle diameter in pixels of the network's input, or None when unknown."""
        px, diameter = self.hparams.pixel_size_a, self.hparams.particle_diameter_a
        if px is None or diameter is None:
            return None
        value = float(diameter) / float(px)
        return value if math.isfinite(value) and value > 0 else None

    @staticmethod
    def _batch_centres(batch: Any, index: int) -> np.ndarray | None:
        """True centres ``(N, 2)`` (x, y) of micrograph ``index`` of a dict batch, or None."""
        if not isinstance(batch, Mapping) or batch.get("particles") is None:
            return None
        centres = batch["particles"]
        centres = centres[index] if isinstance(centres, (list, tuple)) or \
            (isinstance(centres, Tensor) and centres.ndim == 3) else centres
        array = (centres.detach().to("cpu", torch.float64).numpy()
                 if isinstance(centres, Tensor) else np.asarray(centres, dtype=np.float64))
        return array.reshape(-1, 2)

    def _count_picks(self, prob: Tensor, centres: np.ndarray) -> None:
        """Add this micrograph's TP/FP/FN at every threshold of :data:`PICK_THRESHOLDS`."""
        diameter = self._picking_diameter_px()
        if diameter is None:
            return
        import pandas as pd

        from cryoparticle.picking.evaluate import precision_recall_f1
        from cryoparticle.picking.extract import extract_particles

        prob_np = prob.detach().to("cpu", torch.float32).numpy()
        truth = pd.DataFrame({"micrograph": ["m"] * len(centres), "x": centres[:, 0],
                              "y": centres[:, 1], "diameter": diameter, "score": np.nan})
        counts = torch.zeros_like(self._pick_counts)
        for k, threshold in enumerate(PICK_THRESHOLDS):
            picks = extract_particles(prob_np, diameter, threshold=threshold, micrograph="m",
                                      **(self.hparams.get("extraction") or {}))
            result = precision_recall_f1(picks, truth, diameter / 2)
            counts[k] = torch.tensor([result["tp"], result["fp"], result["fn"]],
                                     dtype=torch.float64)
        self._pick_counts += counts
        self._pick_micrographs += 1

    def on_validation_epoch_start(self) -> None:
        self._pick_counts.zero_()
        self._pick_micrographs = 0

    def _pooled_pick_counts(self) -> tuple[np.ndarray, int]:
        """This epoch's ``(T, 3)`` TP/FP/FN per threshold and number of micrographs, summed
        over ranks (every rank must call it: under DDP it is a collective), then reset."""
        counts = torch.cat([self._pick_counts.flatten(),
                            torch.tensor([float(self._pick_micrographs)], dtype=torch.float64)])
        self._pick_counts.zero_()
        self._pick_micrographs = 0
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            # Counts are additive: their sum over ranks is the pooled count, exactly.
            counts = trainer.strategy.reduce(counts.to(self.device), reduce_op="sum")
            counts = counts.detach().to("cpu", torch.float64)
        return counts[:-1].reshape(len(PICK_THRESHOLDS), 3).numpy(), round(float(counts[-1]))

    def on_validation_epoch_end(self) -> None:
        counts, n_micrographs = self._pooled_pick_counts()
        if n_micrographs < 1 or (self._trainer is not None and self.trainer.sanity_checking):
            return
        threshold, f1, precision, recall = best_pick_threshold(counts)
        self.hparams.picking_threshold = threshold
        for name, value in (("pick_f1", f1), ("pick_precision", precision),
                            ("pick_recall", recall), ("pick_threshold", threshold)):
            self.log(f"val/{name}", float(value), on_step=False, on_epoch=True,
                     prog_bar=name == "pick_f1", sync_dist=False)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self._evaluate(batch, batch_idx, "test", dataloader_idx)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Probabilities ``(B, 2, H, W)`` (softmax) of the whole micrographs of the batch."""
        image, _, _ = self._unpack(batch)
        if image.ndim == 3:
            image = image[:, None]
        return torch.stack([self.predict_proba(image[i]) for i in range(image.shape[0])])

    # ------------------------------------------------------------------------------ optimizers

    def configure_optimizers(self) -> Any:
        from hydra.utils import instantiate

        opt_cfg = dict(self.hparams.optimizer or DEFAULT_OPTIMIZER)
        opt_cfg.setdefault("_partial_", True)
        params = [p for p in self.parameters() if p.requires_grad]
        try:
            optimizer = instantiate(opt_cfg)(params)
        except Exception as exc:
            raise param_error("optimizer", opt_cfg, f"cannot instantiate: {exc}") from exc
        if not self.hparams.scheduler:
            return optimizer
        sched_cfg = dict(self.hparams.scheduler)
        sched_cfg.setdefault("_partial_", True)
        extra = {k: sched_cfg.pop(k) for k in _LIGHTNING_SCHEDULER_KEYS if k in sched_cfg}
        try:
            scheduler = instantiate(sched_cfg)(optimizer)
        except Exception as exc:
            raise param_error("scheduler", sched_cfg, f"cannot instantiate: {exc}") from exc
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler,
                                 "monitor": self.hparams.scheduler_monitor,
                                 "interval": "epoch", "frequency": 1, **extra}}

    # ------------------------------------------------------------------------------- figures

    def _image_loggers(self) -> list[Any]:
        if self._trainer is None or self.trainer.sanity_checking:
            return []
        from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

        return [lg for lg in self.loggers if isinstance(lg, (TensorBoardLogger, WandbLogger))]

    def _log_overlay(self, image: Tensor, truth: Tensor, prediction: Tensor, name: str) -> None:
        loggers = self._image_loggers()
        if not loggers or not self.trainer.is_global_zero:
            return
        from pytorch_lightning.loggers import TensorBoardLogger

        from cryoparticle.viz import figure_to_rgb, prediction_figure

        fig = prediction_figure(image.detach().cpu().float().numpy(),
                                truth.detach().cpu().numpy(),
                                prediction.detach().cpu().numpy(),
                                title=f"{name} — epoch {self.current_epoch}",
                                max_side=FIGURE_MAX_SIDE)
        tag = "val/overlay"
        for lg in loggers:
            if isinstance(lg, TensorBoardLogger):
                lg.experiment.add_figure(tag, fig, global_step=self.global_step, close=False)
            else:  # WandbLogger
                lg.log_image(key=tag, images=[figure_to_rgb(fig)], step=self.global_step,
                             caption=[name])
        del fig

    # ----------------------------------------------------------------------------- checkpoints

    def inference_facts(self) -> dict[str, Any]:
        """What a picker needs besides the weights (also ``checkpoint["cryoparticle"]``)."""
        return inference_facts(self.hparams)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cryoparticle"] = self.inference_facts()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoint["cryoparticle"] is as saved; load_from_checkpoint(..., network=...) has
        # already replaced the network in checkpoint["hyper_parameters"] by the override.
        stored = (checkpoint.get("cryoparticle") or {}).get("network") or \
            (checkpoint.get("hyper_parameters") or {}).get("network")
        if stored is not None and not same_network(stored, self.hparams.network):
            raise InputError(
                "checkpoint holds another network: trained with "
                f"{normalise_network_config(stored)}, but this model is "
                f"{normalise_network_config(self.hparams.network)}")

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None,
                             hparams_file: Any = None, strict: bool | None = None,
                             weights_only: bool | None = None, **kwargs: Any) -> Segmenter:
        """Lightning's ``load_from_checkpoint``; the network is rebuilt without reading its
        ``pretrained`` file, and problems raise :class:`InputError` naming the file."""
        token = _RESTORING.set(True)
        try:
            return super().load_from_checkpoint(checkpoint_path, map_location=map_location,
                                                hparams_file=hparams_file, strict=strict,
                                                weights_only=weights_only, **kwargs)
        except InputError as exc:
            if isinstance(checkpoint_path, (str, Path)) and str(checkpoint_path) in str(exc):
                raise
            raise file_error(checkpoint_path, str(exc)) from exc
        except FileNotFoundError as exc:
            raise file_error(checkpoint_path, "checkpoint not found") from exc
        except (RuntimeError, KeyError, TypeError, EOFError) as exc:
            raise file_error(checkpoint_path, "cannot load it into a Segmenter "
                                              f"({type(exc).__name__}: "
                                              f"{str(exc).splitlines()[0][:300]})") from exc
        finally:
            _RESTORING.reset(token)


def load_network_weights(network: nn.Module, path: str | Path) -> None:
    """Load a trained network's weights into ``network`` (``finetune_from``): a Segmenter
    checkpoint (its ``network.*`` entries), ``general`` (the packaged general model) or a
    ``state_dict`` of the network itself. A missing
    file, another architecture or an unreadable file raise :class:`InputError` naming it."""
    from cryoparticle.models.packaged import resolve_checkpoint

    path = resolve_checkpoint(path)   # a packaged name (general) → its file
    stored = read_state_dict(path, "finetune_from")
    prefix = "network."
    state = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)} or stored
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise file_error(path, "finetune_from: holds another network ("
                               f"{str(exc).splitlines()[0][:200]})") from exc


def best_pick_threshold(counts: np.ndarray, thresholds: tuple[float, ...] = PICK_THRESHOLDS
                        ) -> tuple[float, float, float, float]:
    """``(threshold, f1, precision, recall)`` with the best pooled F1, from ``counts``
    ``(T, 3)`` = TP, FP, FN per threshold. Empty cases as in
    :mod:`cryoparticle.picking.evaluate` (precision 1 without picks, recall 1 without truth).
    Several thresholds sharing the best F1 (a plateau): the middle one of them (the median
    index), the choice least sensitive to a shift between validation and new data."""
    counts = np.asarray(counts, dtype=np.float64).reshape(len(thresholds), 3)
    tp, fp, fn = counts.T
    picks, truth = tp + fp, tp + fn
    precision = np.where(picks > 0, tp / np.maximum(picks, 1), 1.0)
    recall = np.where(truth > 0, tp / np.maximum(truth, 1), 1.0)
    total = precision + recall
    f1 = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    k = int(best[(len(best) - 1) // 2])
    return float(thresholds[k]), float(f1[k]), float(precision[k]), float(recall[k])


def load_segmenter(path: str | Path, expect_network: Mapping[str, Any] | None = None,
                   map_location: Any = "cpu", weights_only: bool = True,
                   **overrides: Any) -> Segmenter:
    """A :class:`Segmenter` from a Lightning checkpoint, as trained (``eval()`` not applied).

    ``expect_network``: the network config the caller needs (``pretrained`` is not compared);
    a checkpoint holding another one raises :class:`InputError` listing both. A missing file,
    a file that is not a checkpoint, or one that is not a Segmenter's also raise
    :class:`InputError` naming the file. ``weights_only``: unpickle tensors and plain values
    only (what Segmenter checkpoints hold); ``False`` for trusted files with other objects.
    ``overrides``: hyperparameters to replace (e.g. ``tile_size``, ``crf``). An ensemble export
    gives its first member (picking with all of them:
    :func:`~cryoparticle.models.inference.load_inference_segmenter`).
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, "checkpoint", weights_only=weights_only)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or \
            not isinstance(hparams, Mapping) or "network" not in hparams:
        raise file_error(path, "not a cryoparticle Segmenter checkpoint (no state_dict and "
                               "hyper_parameters.network)")
    if expect_network is not None and not same_network(hparams["network"], expect_network):
        raise file_error(path, "holds another network: trained with "
                               f"{normalise_network_config(hparams['network'])}, expected "
                               f"{normalise_network_config(expect_network)}")
    source: Any = path
    if "ensemble" in checkpoint or ((checkpoint.get("cryoparticle") or {}).get("export")
                                    or {}).get("int8"):
        # a compact export (int8 weights, ensemble): Lightning reads its decoded first member
        source = io.BytesIO()
        torch.save({k: v for k, v in checkpoint.items() if k != "ensemble"}, source)
        source.seek(0)
    try:
        return Segmenter.load_from_checkpoint(source, map_location=map_location,
                                              weights_only=weights_only, **overrides)
    except InputError as exc:
        if source is path:
            raise
        raise file_error(path, one_line(exc).split(": ", 1)[-1]) from None


__all__ = [
    "PICK_THRESHOLDS",
    "Segmenter",
    "best_pick_threshold",
    "load_network_weights",
    "load_segmenter",
    "normalise_network_config",
    "same_network",
]
