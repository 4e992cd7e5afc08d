"""The network over whole micrographs, without Lightning: a micrograph in, its probability map out.

:class:`MicrographSegmenter` wraps a trained segmenter (an
:class:`~cryoparticle.models.inference.InferenceSegmenter` or a
:class:`~cryoparticle.models.segmenter.Segmenter`) and an optional post-hoc CRF
(:func:`post_hoc_crf`): one binned, standardised micrograph in, its particle probability map
out — whole when it fits one tile, else in overlapping tiles
(:func:`cryoparticle.data.tiling.predict_tiled`) blended without seams, with optional test-time
augmentation. ``predict.py`` runs it in a plain loop on one device, and through
:class:`~cryoparticle.picking.module.PickingModule` (``Trainer.predict``) on several.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from cryoparticle.errors import param_error
from cryoparticle.io.checks import one_line


def post_hoc_crf(crf_cfg: Any, num_classes: int) -> torch.nn.Module | None:
    """The CRF of predict's ``crf=`` option: ``none`` (an empty group) → ``None``;
    ``dense``/``meanfield`` → the module, built for the checkpoint's ``num_classes``;
    a learnable CRF (``crf=rnn``) is refused: it is trained with its network."""
    from omegaconf import OmegaConf

    from cryoparticle.config import instantiate

    if OmegaConf.is_config(crf_cfg):
        crf_cfg = OmegaConf.to_container(crf_cfg, resolve=False)
    crf_cfg = dict(crf_cfg or {})
    if not crf_cfg.get("_target_"):
        return None
    if crf_cfg.get("learnable") or int(crf_cfg.get("feature_channels") or 0) > 0:
        raise param_error("crf", "rnn", "a learnable CRF is trained with its network: train "
                                        "with crf=rnn and predict with that checkpoint "
                                        "(crf=dense or crf=meanfield here)")
    if "num_classes" in crf_cfg:
        crf_cfg["num_classes"] = num_classes
    module = instantiate(crf_cfg)
    if not isinstance(module, torch.nn.Module):
        raise param_error("crf", crf_cfg.get("_target_"), "must build a torch.nn.Module")
    return module.eval()


def fitted_tile(shape: Sequence[int], tile: int, overlap: int, multiple: int = 32) -> int:
    """The smallest tile side (a multiple of ``multiple``, at most ``tile``) that covers each
    axis of ``shape`` with no more tiles than ``tile`` needs (tiles overlapping by ``overlap``).

    :func:`~cryoparticle.data.tiling.tile_starts` puts the last tile flush with the edge, so a
    1024-px side in 512-px tiles overlapping by 32 takes 3 tiles covering 1536 px; 384-px tiles
    also take 3 and cover 1152 px: the same blending, 44 % less computation.
    """
    need = 1
    for length in shape:
        length = int(length)
        if length <= tile:
            need = max(need, length)
            continue
        n = math.ceil((length - overlap) / (tile - overlap))
        need = max(need, math.ceil((length - overlap) / n + overlap))
    return max(min(int(tile), math.ceil(need / multiple) * multiple), overlap + 1)


#: Tiles per forward pass when ``tile_batch_size`` is null: as many as make this many pixels.
TILE_BATCH_PIXELS = 2**20

#: Contrast polarities a micrograph is segmented in, as the signs its standardised image is
#: multiplied by: ``dark`` as given (particles darker than the ice, as the network learnt them),
#: ``light`` inverted, ``auto`` both (the picking keeps the one the network is surer of).
POLARITY_SIGNS: dict[str, tuple[float, ...]] = {"dark": (1.0,), "light": (-1.0,),
                                                "auto": (1.0, -1.0)}

#: Test-time augmentation: the symmetries of the square a micrograph is segmented under, as
#: ``(quarter turns, mirrored)``; the logits are mapped back and averaged. Particles have no
#: preferred in-plane orientation, so every view is as valid as the original.
TTA_TRANSFORMS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, False), (2, True)),   # identity, x/y mirrors, 180°
    "dihedral": tuple((k, m) for k in range(4) for m in (False, True)),
}


def _view(image: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """``image`` (…, h, w) turned by ``turns`` quarter turns, then mirrored left–right."""
    out = torch.rot90(image, turns, dims=(-2, -1)) if turns else image
    return out.flip(-1) if mirrored else out


def _unview(image: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """The inverse of :func:`_view`."""
    out = image.flip(-1) if mirrored else image
    return torch.rot90(out, -turns, dims=(-2, -1)) if turns else out


class MicrographSegmenter(torch.nn.Module):
    """A trained segmenter over whole micrographs: :meth:`forward` maps one binned,
    standardised micrograph ``(1, h, w)`` to its particle probability ``(h, w)``;
    :meth:`predict_record` maps a record of :class:`~cryoparticle.picking.inputs.
    MicrographFiles` to ``{"prob", "segment_s", "tile"}`` (``{}`` for a record without an
    image, ``{"error": ...}`` when segmentation fails, e.g. out of memory: the run goes on).

    A micrograph no larger than a tile is segmented whole; a larger one tile by tile
    (:func:`~cryoparticle.data.tiling.predict_tiled`, the segmenter's network and CRF on each
    batch of tiles, blended without seams): ``tile_size`` and
    ``tile_overlap`` pixels, tiles shrunk per micrograph by :func:`fitted_tile` when
    ``fit_tiles``; ``tile_batch_size`` tiles per forward pass (None: about
    :data:`TILE_BATCH_PIXELS` pixels per pass, which bounds the memory of a pass).
    ``tta``: test-time augmentation, a key of :data:`TTA_TRANSFORMS` (``none``; ``flips``: 4
    views, 4× the network time; ``dihedral``: 8 views); the views' logits are averaged before
    the post-hoc CRF and the softmax. ``polarity``, a key of :data:`POLARITY_SIGNS`: ``dark``
    segments the micrograph as given, ``light`` inverted, ``auto`` both (twice the network
    time: :meth:`predict_record` returns the inverted one's map as ``prob_light`` too, and the
    picking chooses, :func:`~cryoparticle.picking.extract.choose_polarity`).
    """

    def __init__(self, segmenter: torch.nn.Module, tile_size: int, tile_overlap: int,
                 tile_batch_size: int | None = None, fit_tiles: bool = True,
                 crf: torch.nn.Module | None = None, tta: str = "none",
                 polarity: str = "dark") -> None:
        super().__init__()
        if tta not in TTA_TRANSFORMS:
            raise param_error("tta", tta, f"must be one of {', '.join(TTA_TRANSFORMS)}")
        if polarity not in POLARITY_SIGNS:
            raise param_error("polarity", polarity,
                              f"must be one of {', '.join(POLARITY_SIGNS)}")
        self.tta = tta
        self.polarity = polarity
        self.segmenter = segmenter
        self.crf = crf
        self.tile_size, self.tile_overlap = int(tile_size), int(tile_overlap)
        self.tile_batch_size = None if tile_batch_size is None else int(tile_batch_size)
        self.fit_tiles = bool(fit_tiles)

    @property
    def device(self) -> torch.device:
        """Where the segmenter's weights are."""
        parameter = next(self.segmenter.parameters(), None)
        return torch.device("cpu") if parameter is None else parameter.device

    def tiling(self, shape: Sequence[int]) -> tuple[int, int]:
        """``(tile side, tiles per forward pass)`` for a micrograph of ``shape`` (h, w); a
        micrograph within one tile: ``(its longer side, 1)``, segmented whole."""
        if max(shape) <= self.tile_size:
            return int(max(shape)), 1
        tile = (fitted_tile(shape, self.tile_size, self.tile_overlap) if self.fit_tiles
                else self.tile_size)
        batch = self.tile_batch_size or max(1, TILE_BATCH_PIXELS // (tile * tile))
        return tile, batch

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Particle probability ``(h, w)`` of one binned, standardised micrograph ``(1, h, w)``.

        A micrograph that fits in one tile is segmented whole (no padding to a square tile)."""
        image = image.to(self.device, torch.float32)
        views = TTA_TRANSFORMS[self.tta]
        logits = sum(_unview(self._segment(_view(image, turns, mirrored)), turns, mirrored)
                     for turns, mirrored in views) / len(views)
        if self.crf is not None:  # post-hoc CRF on the whole micrograph
            logits = self.crf(logits[None], image[None])[0]
        return logits.softmax(dim=0)[1]

    def _segment(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, h, w)`` of one micrograph ``(1, h, w)``: whole or tile by tile."""
        from cryoparticle.data.tiling import predict_tiled

        height, width = image.shape[-2:]
        if height <= self.tile_size and width <= self.tile_size:
            return self.segmenter(image[None])[0].float()
        tile, batch = self.tiling(image.shape[-2:])
        return predict_tiled(self.segmenter, image, tile, self.tile_overlap, batch)

    def predict_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """The prediction of one record (see the class docstring); call it in eval mode
        under ``torch.inference_mode()``."""
        if record.get("image") is None:
            return {}
        start = time.perf_counter()
        try:
            probs = [self(sign * record["image"]) for sign in POLARITY_SIGNS[self.polarity]]
            if probs[0].is_cuda:
                torch.cuda.synchronize(probs[0].device)
        except Exception as exc:  # noqa: BLE001 - one micrograph's failure is reported
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return {"error": f"{record['path']}: segmentation failed ({type(exc).__name__}: "
                             f"{one_line(exc)[:300]})"}
        out = {"prob": probs[0], "segment_s": time.perf_counter() - start,
               "tile": self.tiling(record["image"].shape[-2:])[0], "polarity": self.polarity}
        if len(probs) > 1:
            out["prob_light"] = probs[1]
        return out


__all__ = ["POLARITY_SIGNS", "TILE_BATCH_PIXELS", "TTA_TRANSFORMS", "MicrographSegmenter",
           "fitted_tile", "post_hoc_crf"]
