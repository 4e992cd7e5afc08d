"""Micrograph preprocessing: normalisation and binning (Fourier cropping) to a pixel size.

Every micrograph fed to a network goes through a :class:`Normalisation`: the original
:func:`standardise` (zero mean, unit variance per micrograph, named :data:`NORMALISATION`) or
the robust :func:`normalise` (flat regions ignored, percentile clipping, optional removal of a
smooth background, sigma-clipped centre and scale). Its :attr:`Normalisation.spec` string is
stored in checkpoints so that prediction applies exactly the same one
(:meth:`Normalisation.from_spec`; checkpoints from before the robust scheme hold
:data:`NORMALISATION` and keep the standardisation). Binning never upsamples:
:func:`bin_to_pixel_size` refuses a target pixel size finer than the source; upsampling is
:func:`fourier_pad`'s (prediction resamples micrographs up to :data:`MAX_UPSAMPLING` × coarser
than the network's pixel size).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import scipy.fft
import scipy.sparse
import torch
from scipy import ndimage

from cryoparticle.errors import check_positive, param_error

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


# ----------------------------------------------------------------------------- robust normalisation

NORMALISATION_METHODS = ("standardise", "robust")
# Sigma clipping of the centre and scale: half-width in robust sigmas, and iterations.
_SIGMA_CLIP = 3.0
_SIGMA_CLIP_ITERATIONS = 3
# Background estimation works on a grid this many times coarser than its sigma (in pixels).
_BACKGROUND_CELLS_PER_SIGMA = 4.0


def flat_regions(image: np.ndarray) -> np.ndarray:
    """Boolean ``(H, W)``: pixels in or next to a 3×3 window of one constant value.

    A padding border, a saturated band or a constant fill is flat; noise never is (nine
    equal values in a row). The one-pixel dilation drops the flat region's own rim too.
    """
    x = np.asarray(image, dtype=np.float32)
    constant = ndimage.maximum_filter(x, 3, mode="nearest") == ndimage.minimum_filter(
        x, 3, mode="nearest")
    return ndimage.binary_dilation(constant, iterations=1)


def smooth_background(image: np.ndarray, sigma_px: float, valid: np.ndarray | None = None
                      ) -> np.ndarray:
    """A Gaussian-filtered background of ``image`` (``sigma_px``), ignoring invalid pixels.

    Computed on a grid ``sigma_px / 4`` times coarser (block means, normalised convolution
    over ``valid`` pixels) and interpolated back bilinearly: O(pixels) for any sigma.
    """
    x = np.asarray(image, dtype=np.float32)
    w = np.ones_like(x) if valid is None else valid.astype(np.float32)
    step = max(1, int(sigma_px / _BACKGROUND_CELLS_PER_SIGMA))
    h, wd = x.shape
    hp, wp = -(-h // step) * step, -(-wd // step) * step
    pad = ((0, hp - h), (0, wp - wd))
    xs = np.pad(x * w, pad, mode="edge").reshape(hp // step, step, wp // step, step).sum((1, 3))
    ws = np.pad(w, pad, mode="edge").reshape(hp // step, step, wp // step, step).sum((1, 3))
    sigma = sigma_px / step
    xs = ndimage.gaussian_filter(xs, sigma, mode="reflect")
    ws = ndimage.gaussian_filter(ws, sigma, mode="reflect")
    coarse = xs / np.maximum(ws, 1e-6)
    # Coarse cell i is centred on fine coordinate (i + 0.5)·step − 0.5.
    rows = (np.arange(h) + 0.5) / step - 0.5
    cols = (np.arange(wd) + 0.5) / step - 0.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(coarse, grid, order=1, mode="nearest").astype(np.float32)


def fit_plane(image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The least-squares plane ``a + b·row + c·column`` through the (valid) pixels, ``(H, W)``.

    Removed before the Gaussian background, which cannot follow a gradient up to the edges.
    """
    x = np.asarray(image, dtype=np.float64)
    h, w = x.shape
    rows, cols = np.mgrid[:h, :w]
    sel = np.ones(x.shape, bool) if valid is None else valid
    # Subsample: a plane needs few pixels, and this keeps 4096² micrographs cheap.
    step = max(1, int(math.sqrt(sel.sum() / 65536)))
    r, c, v = rows[::step, ::step], cols[::step, ::step], x[::step, ::step]
    m = sel[::step, ::step]
    design = np.stack([np.ones(m.sum()), r[m] / h, c[m] / w], axis=1)
    coef = np.linalg.lstsq(design, v[m], rcond=None)[0]
    return (coef[0] + coef[1] * rows / h + coef[2] * cols / w).astype(np.float32)


def robust_centre_scale(values: np.ndarray) -> tuple[float, float]:
    """Centre and scale of the main population of ``values``: median and MAD, then a few
    rounds of the mean and standard deviation within ±3 of those sigmas."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return 0.0, 0.0
    centre = float(np.median(v))
    scale = 1.4826 * float(np.median(np.abs(v - centre)))
    if scale == 0.0:
        scale = float(v.std())
    for _ in range(_SIGMA_CLIP_ITERATIONS):
        if scale == 0.0:
            break
        sel = v[np.abs(v - centre) <= _SIGMA_CLIP * scale]
        if sel.size < 2:
            break
        centre, scale = float(sel.mean()), float(sel.std())
    return centre, scale


def normalise(image: np.ndarray, method: str = "robust",
              clip_percentiles: Sequence[float] = (0.5, 99.5),
              background_sigma_a: float | None = None, pixel_size_a: float | None = None
              ) -> np.ndarray:
    """Normalise a micrograph for a network; float32 ``(H, W)``.

    * ``method="standardise"``: :func:`standardise` (zero mean, unit variance);
    * ``method="robust"``: statistics come only from pixels outside flat regions
      (:func:`flat_regions`: padding, constant bands); optionally the background is
      subtracted: a least-squares plane (:func:`fit_plane`), then a Gaussian filter of
      ``background_sigma_a`` Å at ``pixel_size_a`` Å/px over those pixels; values are
      clipped to the ``clip_percentiles`` (%) of those pixels; the result is centred and scaled by :func:`robust_centre_scale`, so a carbon edge, an ice
      blob or a border shifts neither the centre nor the scale. Flat pixels get 0.
    A constant image gives zeros.
    """
    if method == "standardise":
        return standardise(np.asarray(image))
    if method != "robust":
        raise param_error("normalisation.method", method,
                          f"choose from {', '.join(NORMALISATION_METHODS)}")
    x = np.asarray(image, dtype=np.float32)
    lo_p, hi_p = _check_percentiles(clip_percentiles)
    valid = ~flat_regions(x) if x.size else np.zeros(x.shape, bool)
    if not valid.any():
        return np.zeros(x.shape, dtype=np.float32)
    if background_sigma_a is not None:
        px = check_positive("pixel_size_a", pixel_size_a)
        sigma_a = check_positive("background_sigma_a", background_sigma_a)
        x = x - fit_plane(x, valid)
        x = x - smooth_background(x, sigma_a / px, valid)
    lo, hi = np.percentile(x[valid], [lo_p, hi_p])
    x = np.clip(x, lo, hi)
    centre, scale = robust_centre_scale(x[valid])
    if scale == 0.0 or not math.isfinite(scale):
        return np.zeros(x.shape, dtype=np.float32)
    out = (x - centre) / scale
    out[~valid] = 0.0
    return out.astype(np.float32)


def _check_percentiles(value: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (0.0 <= lo < hi <= 100.0):
        raise param_error("clip_percentiles", value, "must be [lo, hi] with 0 ≤ lo < hi ≤ 100")
    return lo, hi


@dataclass(frozen=True)
class Normalisation:
    """The normalisation of network inputs: the arguments of :func:`normalise`.

    :attr:`spec` is the string stored in checkpoints; :meth:`from_spec` reads it back (and
    :data:`NORMALISATION`, the name older checkpoints hold, as ``method="standardise"``).
    """

    method: str = "robust"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    background_sigma_a: float | None = None

    def __post_init__(self) -> None:
        if self.method not in NORMALISATION_METHODS:
            raise param_error("normalisation.method", self.method,
                              f"choose from {', '.join(NORMALISATION_METHODS)}")
        object.__setattr__(self, "clip_percentiles", _check_percentiles(self.clip_percentiles))
        if self.background_sigma_a is not None:
            object.__setattr__(self, "background_sigma_a",
                               check_positive("background_sigma_a", self.background_sigma_a))

    @classmethod
    def from_spec(cls, spec: str | Mapping[str, Any] | Normalisation | None) -> Normalisation:
        """From a stored spec string, a config mapping, or None (the old standardisation)."""
        if isinstance(spec, Normalisation):
            return spec
        if spec is None or spec == NORMALISATION:
            return cls(method="standardise")
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError:
                raise param_error("normalisation", spec, "unknown normalisation (expected "
                                  f"{NORMALISATION!r} or a JSON spec)") from None
        if not isinstance(spec, Mapping):
            raise param_error("normalisation", spec, "expected a mapping or a spec string")
        try:
            return cls(**{str(k): (tuple(v) if k == "clip_percentiles" else v)
                          for k, v in spec.items() if k != "_target_"})
        except TypeError as exc:
            raise param_error("normalisation", dict(spec), str(exc)) from None

    @property
    def spec(self) -> str:
        """The string stored in checkpoints (:data:`NORMALISATION` for the standardisation)."""
        if self.method == "standardise":
            return NORMALISATION
        return json.dumps({"method": self.method, "clip_percentiles": list(self.clip_percentiles),
                           "background_sigma_a": self.background_sigma_a}, sort_keys=True)

    def __str__(self) -> str:
        return self.spec

    def __call__(self, image: np.ndarray, pixel_size_a: float | None = None) -> np.ndarray:
        """Normalise ``image`` (at ``pixel_size_a`` Å/px, needed for background removal)."""
        return normalise(image, self.method, self.clip_percentiles, self.background_sigma_a,
                         pixel_size_a)


__all__ = ["NORMALISATION", "Normalisation", "bin_factor", "bin_mask", "bin_to_pixel_size",
           "fit_plane", "flat_regions", "fourier_bin", "normalise", "robust_centre_scale",
           "smooth_background", "standardise"]


#: Largest upsampling :func:`fourier_pad` is used for at prediction (a micrograph at most this
#: many times coarser than the network's pixel size).
MAX_UPSAMPLING = 2.0


def fourier_pad(image: np.ndarray, factor: float) -> np.ndarray:
    """Upsample a 2-D image by Fourier padding to ``(round(H·factor), round(W·factor))``.

    The inverse of :func:`fourier_bin`: the spectrum is zero-padded (an even size's Nyquist
    term split between ±Nyquist), so a band-limited image is resampled exactly; output pixel
    ``i`` sits at input coordinate ``i × H / h`` (the grid of :func:`fourier_bin`) and values
    keep their scale (the mean exactly). ``factor`` ≥ 1; 1 returns the image as float32.
    """
    array = _check_image_2d(image)
    factor = _check_factor(factor)
    height, width = array.shape
    h, w = round(height * factor), round(width * factor)
    data = np.asarray(array, dtype=np.float64)
    if (h, w) == (height, width):
        return np.asarray(array, dtype=np.float32)
    # Columns (real FFT): pad frequencies 0..W//2 with zeros up to w//2; halve W's Nyquist term.
    spectrum = scipy.fft.rfft(data, axis=1)
    if width % 2 == 0 and w > width:
        spectrum[:, -1] *= 0.5
    spectrum = np.pad(spectrum, ((0, 0), (0, w // 2 + 1 - spectrum.shape[1])))
    # Rows (full FFT): insert zeros between the positive and negative frequencies.
    spectrum = scipy.fft.fft(spectrum, axis=0)
    padded = np.zeros((h, spectrum.shape[1]), dtype=spectrum.dtype)
    positive = (height + 1) // 2
    padded[:positive] = spectrum[:positive]
    negative = height - positive
    if negative:
        padded[h - negative:] = spectrum[positive:]
    if height % 2 == 0:  # split the Nyquist row between +H/2 and −H/2
        padded[h - negative] *= 0.5
        padded[height // 2] = padded[h - negative]
    out = scipy.fft.ifft(padded, axis=0)
    out = scipy.fft.irfft(out, n=w, axis=1)
    out *= (h * w) / (height * width)
    return np.ascontiguousarray(out, dtype=np.float32)


__all__ += ["MAX_UPSAMPLING", "fourier_pad"]
