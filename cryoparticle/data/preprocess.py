"""Micrograph preprocessing: normalisation and binning (Fourier cropping) to a pixel size.

Every micrograph fed to a network goes through :func:`standardise` (zero mean, unit variance
per micrograph); the scheme's name, :data:`NORMALISATION`, is stored in checkpoints so that
prediction applies the same one. Binning never upsamples: :func:`bin_to_pixel_size` refuses a
target pixel size finer than the source.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import scipy.fft
import scipy.sparse
import torch

from cryoparticle.errors import param_error

NORMALISATION = "per_micrograph_standardise"
"""Name of the normalisation applied by :func:`standardise` (stored in checkpoints)."""

MASK_IGNORE = 255
# Relative tolerance within which two pixel sizes count as equal (no binning).
_PIXEL_SIZE_RTOL = 1e-4

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def standardise(image: ArrayT) -> ArrayT:
    """Zero mean, unit variance over the whole micrograph; float32, same type as the input.

    Statistics are computed in float64. A constant image (std 0) gives zeros.
    """
    if isinstance(image, torch.Tensor):
        x = image.to(torch.float64)
        std = x.std(unbiased=False) if x.numel() else x.new_tensor(0.0)
        if x.numel() == 0 or float(std) == 0.0 or not math.isfinite(float(std)):
            return torch.zeros_like(image, dtype=torch.float32)
        return ((x - x.mean()) / std).to(torch.float32)
    x = np.asarray(image, dtype=np.float64)
    std = float(x.std()) if x.size else 0.0
    if std == 0.0 or not math.isfinite(std):
        return np.zeros(x.shape, dtype=np.float32)
    return ((x - x.mean()) / std).astype(np.float32)


def _check_image_2d(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2 or array.size == 0:
        raise param_error("image", f"array of shape {array.shape}",
                          "expected a non-empty 2-D image")
    return array


def _binned_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    return max(1, round(shape[0] / factor)), max(1, round(shape[1] / factor))


def _check_factor(factor: float) -> float:
    try:
        value = float(factor)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 1.0):
        raise param_error("factor", factor, "binning factor must be a finite number ≥ 1")
    return value


def fourier_bin(image: np.ndarray, factor: float) -> np.ndarray:
    """Downsample a 2-D image by Fourier cropping to ``(round(H/factor), round(W/factor))``.

    The lowest frequencies are kept and the result is rescaled so that values keep their
    scale (the mean is preserved exactly; a sinusoid below the new Nyquist frequency keeps its
    amplitude). Non-square images are fine. ``factor == 1`` returns the image as float32.
    """
    array = _check_image_2d(image)
    factor = _check_factor(factor)
    if factor == 1.0:
        return np.asarray(array, dtype=np.float32)
    height, width = array.shape
    h, w = _binned_shape((height, width), factor)
    if (h, w) == (height, width):
        return np.asarray(array, dtype=np.float32)
    data = np.asarray(array, dtype=np.float32)
    # Columns first (real FFT: keep frequencies 0..w//2), then rows (keep both signs).
    spectrum = scipy.fft.rfft(data, axis=1)[:, : w // 2 + 1]
    spectrum = scipy.fft.fft(spectrum, axis=0)
    rows = np.r_[0:(h + 1) // 2, height - h // 2:height]
    spectrum = spectrum[rows]
    out = scipy.fft.ifft(spectrum, axis=0)
    out = scipy.fft.irfft(out, n=w, axis=1)
    out *= (h * w) / (height * width)
    return np.ascontiguousarray(out, dtype=np.float32)


def _area_matrix(n_in: int, n_out: int) -> scipy.sparse.csr_matrix:
    """Sparse ``(n_out, n_in)``: the share of output pixel ``i``'s area in input pixel ``j``.

    Output pixel ``i`` is centred on input coordinate ``i × n_in / n_out`` (pixel centres at
    whole numbers), the sampling grid of :func:`fourier_bin`, so binned coordinates are
    ``x / factor`` for images and masks alike; rows are normalised to the area inside the image.
    """
    scale = n_in / n_out
    lo = np.arange(n_out) * scale + 0.5 - scale / 2  # input pixel j spans [j, j + 1)
    hi = lo + scale
    first = np.floor(lo).astype(np.int64)
    span = int(math.ceil(scale)) + 2
    j = first[:, None] + np.arange(span)[None, :]
    overlap = np.minimum(hi[:, None], j + 1) - np.maximum(lo[:, None], j)
    keep = (overlap > 1e-12) & (j >= 0) & (j < n_in)
    weights = np.where(keep, overlap, 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    i = np.broadcast_to(np.arange(n_out)[:, None], j.shape)
    return scipy.sparse.csr_matrix((weights[keep], (i[keep], j[keep])), shape=(n_out, n_in))


def bin_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample a ``{0, 1, 255}`` mask to ``shape`` by area majority.

    Each output pixel takes the label covering most of its area (exact fractional overlaps,
    any non-integer factor; output pixel ``i`` centred on input coordinate ``i × H / h`` as in
    :func:`fourier_bin`); ties between particle and background go to particle, and ignore
    (255) wins only with a strict majority over both.
    """
    array = _check_image_2d(mask)
    h, w = int(shape[0]), int(shape[1])
    if (h, w) == array.shape:
        return np.asarray(array, dtype=np.uint8).copy()
    if h <= 0 or w <= 0:
        raise param_error("shape", shape, "must be positive")
    rows = _area_matrix(array.shape[0], h)
    cols = _area_matrix(array.shape[1], w).T.tocsr()  # (W, w)

    def fraction(selected: np.ndarray) -> np.ndarray:
        partial = rows @ selected.astype(np.float32)  # (h, W)
        return np.asarray(cols.T @ partial.T).T  # (h, w)

    particle = fraction(array == 1)
    ignore = fraction(array == MASK_IGNORE)
    background = 1.0 - particle - ignore
    out = np.zeros((h, w), dtype=np.uint8)
    out[particle >= background - 1e-6] = 1
    out[(ignore > particle + 1e-6) & (ignore > background + 1e-6)] = MASK_IGNORE
    return out


def bin_factor(shape: tuple[int, int], pixel_size_a: float, target_pixel_size_a: float
               ) -> tuple[tuple[int, int], float]:
    """The binned shape for a target pixel size and the exact factor ``H_in / H_out``."""
    for name, value in (("pixel_size_a", pixel_size_a),
                        ("target_pixel_size_a", target_pixel_size_a)):
        try:
            ok = math.isfinite(float(value)) and float(value) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise param_error(name, value, "must be a positive number of Å")
    ratio = float(target_pixel_size_a) / float(pixel_size_a)
    if ratio < 1.0 - _PIXEL_SIZE_RTOL:
        raise param_error("target_pixel_size_a", target_pixel_size_a,
                          f"is finer than the micrograph's {pixel_size_a} Å/px "
                          "(micrographs are binned, never upsampled)")
    if ratio < 1.0 + _PIXEL_SIZE_RTOL:
        return (int(shape[0]), int(shape[1])), 1.0
    out = _binned_shape(shape, ratio)
    return out, shape[0] / out[0]


def bin_to_pixel_size(image: np.ndarray, pixel_size_a: float, target_pixel_size_a: float
                      ) -> tuple[np.ndarray, float]:
    """Fourier-bin ``image`` from ``pixel_size_a`` to about ``target_pixel_size_a`` (Å/px).

    Returns ``(binned float32 image, factor)`` with ``factor = H_in / H_out`` exactly (the
    binned pixel size is ``pixel_size_a × factor``). A target finer than the source raises
    :class:`~cryoparticle.errors.InputError`; equal sizes (to 1e-4) return the image unbinned.
    """
    array = _check_image_2d(image)
    shape, factor = bin_factor(array.shape, pixel_size_a, target_pixel_size_a)
    if factor == 1.0:
        return np.asarray(array, dtype=np.float32), 1.0
    ratio = float(target_pixel_size_a) / float(pixel_size_a)
    return fourier_bin(array, ratio), factor


__all__ = ["NORMALISATION", "bin_factor", "bin_mask", "bin_to_pixel_size", "fourier_bin",
           "standardise"]
