"""Input checks shared by the CRFs: every problem is one-line :class:`InputError`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cryoparticle.errors import InputError, param_error

#: Tolerance on ``Σ_c p_c = 1`` for probability inputs.
SUM_TOLERANCE = 1e-3


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def check_logits_image(logits: Any, image: Any) -> tuple[Tensor, Tensor]:
    """``logits (N, C, H, W)`` and ``image (N, 1, H, W)`` (an ``(N, H, W)`` image gets its channel
    axis) as float tensors, or :class:`InputError` for wrong types, shapes or non-finite values."""
    if not isinstance(logits, Tensor):
        raise param_error("logits", type(logits).__name__, "must be a torch.Tensor")
    if not isinstance(image, Tensor):
        raise param_error("image", type(image).__name__, "must be a torch.Tensor")
    if logits.ndim != 4 or logits.shape[1] < 2:
        raise param_error("logits", _shape(logits), "must have shape (N, C, H, W) with C ≥ 2")
    if image.ndim == 3:
        image = image[:, None]
    n, _, h, w = logits.shape
    if image.ndim != 4 or image.shape[1] != 1 or (image.shape[0], *image.shape[2:]) != (n, h, w):
        raise InputError(f"image shape {_shape(image)} does not match logits {_shape(logits)}: "
                         f"expected ({n}, 1, {h}, {w})")
    if not logits.is_floating_point():
        raise param_error("logits", str(logits.dtype), "must be floating point")
    if not _finite(logits):
        raise InputError("logits: non-finite values (NaN or ±inf)")
    if not _finite(image):
        raise InputError("image: non-finite values (NaN or ±inf)")
    return logits, image


def _finite(x: Tensor) -> bool:
    """All values finite (one reduction; min/max propagate NaN)."""
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x.detach())
    return math.isfinite(float(lo)) and math.isfinite(float(hi))


def check_probabilities(prob: Any, image: Any) -> tuple[np.ndarray, np.ndarray]:
    """``prob (C, H, W)`` (probabilities summing to one over C) and ``image (H, W)`` as float32
    arrays, or :class:`InputError`."""
    prob = _array(prob, "prob")
    image = _array(image, "image")
    if prob.ndim != 3 or prob.shape[0] < 2:
        raise param_error("prob", prob.shape, "must have shape (C, H, W) with C ≥ 2")
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.shape != prob.shape[1:]:
        raise InputError(f"image shape {image.shape} does not match prob {prob.shape}: "
                         f"expected {prob.shape[1:]}")
    if not np.isfinite(prob).all():
        raise InputError("prob: non-finite values (NaN or ±inf)")
    if not np.isfinite(image).all():
        raise InputError("image: non-finite values (NaN or ±inf)")
    if prob.min() < -SUM_TOLERANCE or prob.max() > 1 + SUM_TOLERANCE:
        raise InputError(f"prob: values outside [0, 1] (min {prob.min():.3g}, "
                         f"max {prob.max():.3g}); pass probabilities, not logits")
    worst = float(np.abs(prob.sum(axis=0, dtype=np.float64) - 1.0).max())
    if worst > SUM_TOLERANCE:
        raise InputError(f"prob: probabilities do not sum to one over classes "
                         f"(largest deviation {worst:.3g})")
    return np.ascontiguousarray(prob, dtype=np.float32), np.ascontiguousarray(image,
                                                                              dtype=np.float32)


def _array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    try:
        array = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise param_error(name, type(x).__name__, f"not an array ({exc})") from exc
    if array.dtype.kind not in "fiu":
        raise param_error(name, str(array.dtype), "must be a numeric array")
    return array


def check_params(n_iterations: Any, spatial_sxy: Any, spatial_weight: Any, bilateral_sxy: Any,
                 bilateral_srgb: Any, bilateral_weight: Any, unary_clip: Any,
                 percentiles: Sequence[float]) -> None:
    """CRF parameters shared by every implementation, or :class:`InputError`."""
    if isinstance(n_iterations, bool) or not isinstance(n_iterations, (int, np.integer)) \
            or n_iterations < 0:
        raise param_error("n_iterations", n_iterations, "must be an integer ≥ 0")
    for name, value in (("spatial_sxy", spatial_sxy), ("bilateral_sxy", bilateral_sxy),
                        ("bilateral_srgb", bilateral_srgb)):
        if not _number(value) or not value > 0:
            raise param_error(name, value, "must be a finite number > 0")
    for name, value in (("spatial_weight", spatial_weight),
                        ("bilateral_weight", bilateral_weight)):
        if not _number(value):
            raise param_error(name, value, "must be a finite number")
    if unary_clip is not None and (not _number(unary_clip) or not 0 <= unary_clip < 1):
        raise param_error("unary_clip", unary_clip, "must be null or a number in [0, 1)")
    try:
        lo, hi = (float(p) for p in percentiles)
    except Exception as exc:
        raise param_error("percentiles", percentiles, "must be two numbers [lo, hi]") from exc
    if not 0 <= lo < hi <= 100:
        raise param_error("percentiles", list(percentiles), "must satisfy 0 ≤ lo < hi ≤ 100")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and \
        not isinstance(value, bool) and math.isfinite(float(value))


__all__ = ["SUM_TOLERANCE", "check_logits_image", "check_params", "check_probabilities"]
