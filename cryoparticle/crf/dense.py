"""The reference dense CRF: pydensecrf (Krähenbühl & Koltun's permutohedral-lattice code).

Energy (pydensecrf's, with its defaults): unary ``U = -log(clip(p, unary_clip))``
(``unary_from_softmax``); a Gaussian kernel on pixel positions (``addPairwiseGaussian``, bandwidth
``spatial_sxy``, Potts weight ``spatial_weight``) and a bilateral kernel on position and
intensity (``addPairwiseBilateral``, ``bilateral_sxy``, ``bilateral_srgb``, Potts weight
``bilateral_weight``), both symmetrically normalised; ``n_iterations`` mean-field steps.

Intensity: pydensecrf's bilateral kernel takes an 8-bit RGB image. A micrograph becomes 8-bit
levels with :func:`~cryoparticle.crf.filtering.intensity_levels` (robust percentiles → 0..255,
shared with the PyTorch CRF) and is passed as **three identical channels**; the squared feature
distance is then ``3 (Δlevel / srgb)²``, i.e. a one-channel bandwidth of ``srgb / √3`` levels,
which is what :class:`~cryoparticle.crf.meanfield.MeanFieldCRF` uses for the same ``srgb``.

Runs on the CPU, one image at a time, without gradients; ``DenseCRF`` returns log-probabilities
on the logits' device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cryoparticle.crf.checks import check_logits_image, check_params, check_probabilities
from cryoparticle.crf.filtering import DEFAULT_PERCENTILES, intensity_levels
from cryoparticle.errors import InputError

#: Log-probabilities returned for probability 0.
_LOG_FLOOR = math.log(1e-30)


def _pydensecrf() -> Any:
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:  # pragma: no cover - a dependency
        raise InputError("crf=dense needs pydensecrf (pip install pydensecrf2)") from exc
    return dcrf


def rgb_levels(image: np.ndarray | Tensor,
               percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 C-contiguous image pydensecrf gets for a micrograph ``(H, W)``."""
    levels = intensity_levels(torch.as_tensor(np.asarray(image, dtype=np.float32)
                                              if not isinstance(image, Tensor) else image),
                              percentiles)
    levels = levels.cpu().numpy()
    return np.ascontiguousarray(np.repeat(levels[..., None], 3, axis=2))


def dense_crf(prob: np.ndarray | Tensor, image: np.ndarray | Tensor, n_iterations: int = 10,
              spatial_sxy: float = 3.0, spatial_weight: float = 3.0,
              bilateral_sxy: float = 20.0, bilateral_srgb: float = 13.0,
              bilateral_weight: float = 0.5, unary_clip: float | None = 1e-5,
              percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """Marginals ``(C, H, W)`` float32 of pydensecrf's dense CRF for class probabilities
    ``prob (C, H, W)`` (summing to one) of a micrograph ``image (H, W)``."""
    check_params(n_iterations, spatial_sxy, spatial_weight, bilateral_sxy, bilateral_srgb,
                 bilateral_weight, unary_clip, percentiles)
    prob, image = check_probabilities(prob, image)
    dcrf = _pydensecrf()
    from pydensecrf.utils import unary_from_softmax

    c, h, w = prob.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    unary = unary_from_softmax(prob, clip=unary_clip if unary_clip else 1e-30)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    if spatial_weight:
        crf.addPairwiseGaussian(sxy=float(spatial_sxy), compat=float(spatial_weight))
    if bilateral_weight:
        crf.addPairwiseBilateral(sxy=float(bilateral_sxy), srgb=float(bilateral_srgb),
                                 rgbim=rgb_levels(image, percentiles),
                                 compat=float(bilateral_weight))
    q = np.asarray(crf.inference(int(n_iterations)), dtype=np.float32)
    return q.reshape(c, h, w)


class DenseCRF(nn.Module):
    """pydensecrf as a CRF module: ``crf(logits (N, C, H, W), image (N, 1, H, W))`` →
    log-marginals ``(N, C, H, W)`` (a valid "logits": their softmax is the marginals).

    Parameters as :func:`dense_crf`. No gradients (pydensecrf is numpy): use it after training
    (predict, evaluation), or ``crf=meanfield``/``crf=rnn`` to train through a CRF.
    """

    def __init__(self, n_iterations: int = 10, spatial_sxy: float = 3.0,
                 spatial_weight: float = 3.0, bilateral_sxy: float = 20.0,
                 bilateral_srgb: float = 13.0, bilateral_weight: float = 0.5,
                 unary_clip: float | None = 1e-5,
                 percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> None:
        super().__init__()
        percentiles = tuple(float(p) for p in percentiles)
        check_params(n_iterations, spatial_sxy, spatial_weight, bilateral_sxy, bilateral_srgb,
                     bilateral_weight, unary_clip, percentiles)
        _pydensecrf()
        self.params = {"n_iterations": int(n_iterations), "spatial_sxy": float(spatial_sxy),
                       "spatial_weight": float(spatial_weight),
                       "bilateral_sxy": float(bilateral_sxy),
                       "bilateral_srgb": float(bilateral_srgb),
                       "bilateral_weight": float(bilateral_weight),
                       "unary_clip": None if unary_clip is None else float(unary_clip),
                       "percentiles": percentiles}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items())

    @torch.no_grad()
    def forward(self, logits: Tensor, image: Tensor) -> Tensor:
        logits, image = check_logits_image(logits, image)
        prob = logits.detach().float().softmax(dim=1).cpu().numpy()
        img = image.detach().float().cpu().numpy()
        out = np.stack([dense_crf(prob[i], img[i, 0], **self.params)
                        for i in range(prob.shape[0])])
        log_q = torch.from_numpy(out).clamp_min(1e-30).log().clamp_min(_LOG_FLOOR)
        return log_q.to(device=logits.device, dtype=logits.dtype)


__all__ = ["DenseCRF", "dense_crf", "rgb_levels"]
