"""Probability map → particle table: threshold, split touching particles, centre, score, NMS.

:func:`extract_particles` turns a per-pixel particle probability map ``(H, W)`` into the
standard particle table (``micrograph, x, y, diameter, score``; see
:mod:`cryoparticle.io.coords`), with ``x`` = column and ``y`` = row in pixels *of the given map*
(scale binned maps back with :func:`cryoparticle.io.coords.scale_coordinates`).

The steps, all vectorised (``scipy.ndimage`` / ``np.bincount`` over label arrays; the only
Python loop runs over *conflicting* pick pairs in the non-maximum suppression):

1. **foreground** = ``prob >= threshold``; connected components (4-connected);
2. **split** touching particles by a watershed of the negated Euclidean distance transform,
   one marker per distance peak at least ``min_distance_fraction × diameter`` apart (every
   component gets at least one marker, at its deepest pixel), restricted to the foreground.
   With ``split_touching=False`` only components larger than ``max_size_fraction`` disc areas
   are split (they cannot be one particle); the others stay whole;
3. **area filter** on the final regions against the disc area ``π (d/2)²``: a region smaller
   than ``min_size_fraction`` disc areas is dropped (specks, slivers). A region still larger
   than ``max_size_fraction`` disc areas after the watershed (nothing left to split) is *kept*
   as one pick; rejecting contaminants is the network's (and the CRF's) job;
4. **centre** = probability-weighted centroid of the region; **score** = *mean* probability in
   the region (in ``[threshold, 1]``; the mean rather than the max, which saturates at 1 for
   every confident blob and so cannot rank them);
5. **border**: centres closer than ``border_px`` to the edge are dropped, i.e. kept when
   ``border_px <= x <= W - 1 - border_px`` (same for ``y``; pixel centres at ``0 … W-1``).
   This is done *before* the suppression, so a pick that is about to be discarded cannot
   suppress a valid neighbour;
6. **non-maximum suppression**: no two picks closer than ``min_distance_fraction × diameter``
   (strictly; a pair exactly at that distance is kept). Greedy in descending score (ties: the
   pick with the smaller ``y``, then smaller ``x``, wins), over the conflicting pairs found by
   a KD-tree.

The table is sorted by descending score.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from cryoparticle.errors import param_error
from cryoparticle.io.coords import empty_particles

_PROB_TOLERANCE = 1e-4


def _as_probability_map(prob: Any) -> np.ndarray:
    """``prob`` (ndarray or torch tensor, (H, W) or with leading singleton axes) as float64."""
    try:
        import torch

        if isinstance(prob, torch.Tensor):
            prob = prob.detach().to("cpu", torch.float64).numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        array = np.asarray(prob, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise param_error("prob", type(prob).__name__, "must be a numeric (H, W) array") from exc
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise param_error("prob.shape", tuple(np.shape(prob)), "must be (H, W)")
    if array.size and not np.isfinite(array).all():
        raise param_error("prob", "non-finite values", "must be finite probabilities")
    if array.size and (array.min() < -_PROB_TOLERANCE or array.max() > 1 + _PROB_TOLERANCE):
        raise param_error("prob", f"range [{array.min():.4g}, {array.max():.4g}]",
                          "must be probabilities in [0, 1] (apply a sigmoid/softmax to logits)")
    return np.clip(array, 0.0, 1.0)


def _check_fraction(name: str, value: float, *, allow_zero: bool = True) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise param_error(name, value, "must be a " + ("non-negative" if allow_zero
                                                       else "positive") + " finite number")
    return number


def _split_regions(fg: np.ndarray, components: np.ndarray, n_components: int,
                   min_distance_px: int, split: np.ndarray) -> np.ndarray:
    """Watershed of −EDT inside the foreground; components with ``split[k]`` False stay whole.

    ``split`` is a boolean array over component labels ``0..n`` (index 0 unused).
    Returns a label image (0 = background) whose regions are the pieces.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    distance = ndimage.distance_transform_edt(fg)
    # Peaks of the distance map anywhere (one pass, no per-region loop), kept only in the
    # components that are to be split; then one marker at the deepest pixel of every component
    # that has none (whole components, and any whose peak lost to a neighbour's).
    peaks = peak_local_max(distance, min_distance=max(1, min_distance_px), exclude_border=False)
    peak_labels = components[peaks[:, 0], peaks[:, 1]] if len(peaks) else np.zeros(0, int)
    keep = (peak_labels > 0) & split[peak_labels]
    peaks, peak_labels = peaks[keep], peak_labels[keep]
    has_marker = np.bincount(peak_labels, minlength=n_components + 1).astype(bool)
    missing = np.flatnonzero(~has_marker[1:]) + 1
    if len(missing):
        extra = np.asarray(ndimage.maximum_position(distance, components, missing),
                           dtype=np.intp).reshape(-1, 2)
        peaks = np.concatenate([peaks, extra])
    markers = np.zeros(fg.shape, dtype=np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    return watershed(-distance, markers, mask=fg)


def _suppress(xy: np.ndarray, order: np.ndarray, min_distance_px: float) -> np.ndarray:
    """Greedy NMS: boolean keep-mask over ``xy``; ``order`` ranks the picks (best first).

    Only the picks involved in a conflict (a pair closer than ``min_distance_px``) are visited
    by the loop; all others are kept without looking at them.
    """
    keep = np.ones(len(xy), dtype=bool)
    if len(xy) < 2 or min_distance_px <= 0:
        return keep
    pairs = cKDTree(xy).query_pairs(r=min_distance_px, output_type="ndarray")
    if len(pairs):
        gaps = np.hypot(*(xy[pairs[:, 0]] - xy[pairs[:, 1]]).T)
        pairs = pairs[gaps < min_distance_px]
    if not len(pairs):
        return keep
    rank = np.empty(len(xy), dtype=np.int64)
    rank[order] = np.arange(len(xy))
    # Orient each pair (better, worse) and group by the better pick.
    better = np.where(rank[pairs[:, 0]] < rank[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
    worse = pairs[:, 0] + pairs[:, 1] - better
    by_better = np.argsort(rank[better], kind="stable")
    better, worse = better[by_better], worse[by_better]
    starts = np.flatnonzero(np.r_[True, better[1:] != better[:-1]])
    ends = np.r_[starts[1:], len(better)]
    for start, end in zip(starts, ends, strict=True):  # conflicts only, best pick first
        if keep[better[start]]:
            keep[worse[start:end]] = False
    return keep


def extract_particles(prob: Any, particle_diameter_px: float, *, threshold: float = 0.5,
                      min_size_fraction: float = 0.25, max_size_fraction: float = 3.0,
                      min_distance_fraction: float = 0.5, border_px: int = 0,
                      split_touching: bool = True, micrograph: str = "") -> pd.DataFrame:
    """Particles from a probability map ``prob`` ``(H, W)`` in ``[0, 1]`` (ndarray or tensor).

    Args:
        prob: per-pixel particle probability (leading singleton axes are dropped).
        particle_diameter_px: expected particle diameter in pixels of ``prob``; written to the
            ``diameter`` column and the scale of every other length below.
        threshold: foreground is ``prob >= threshold``.
        min_size_fraction: regions smaller than this many disc areas ``π (d/2)²`` are dropped.
        max_size_fraction: components larger than this many disc areas are always split by
            the watershed, even with ``split_touching=False``; regions that stay larger are
            kept as one pick.
        min_distance_fraction: minimum distance between picks (and between watershed
            markers), in diameters.
        border_px: centres closer than this to the map's edge are dropped.
        split_touching: split touching particles by the distance-transform watershed.
        micrograph: name written to the ``micrograph`` column.

    Returns:
        The particle table (see :mod:`cryoparticle.io.coords`), ``x`` = column, ``y`` = row,
        pixels of ``prob``, ``score`` = mean probability of the region, sorted by descending
        score. No particle → an empty table with the standard columns.
    """
    return extract_particles_by_min_size(
        prob, particle_diameter_px, (min_size_fraction,), threshold=threshold,
        max_size_fraction=max_size_fraction, min_distance_fraction=min_distance_fraction,
        border_px=border_px, split_touching=split_touching,
        micrograph=micrograph)[min_size_fraction]


def extract_particles_by_min_size(prob: Any, particle_diameter_px: float,
                                  min_size_fractions: Iterable[float], *,
                                  threshold: float = 0.5,
                                  max_size_fraction: float = 3.0,
                                  min_distance_fraction: float = 0.5, border_px: int = 0,
                                  split_touching: bool = True, micrograph: str = ""
                                  ) -> dict[float, pd.DataFrame]:
    """:func:`extract_particles` at several ``min_size_fractions`` at once: ``{fraction:
    table}``, each equal to ``extract_particles(..., min_size_fraction=fraction)``. The regions
    (threshold, components, watershed, centres and scores) do not depend on the minimum size, so
    they are found once; only the area filter and the suppression run per fraction (a sweep
    of extraction settings costs one watershed per threshold)."""
    array = _as_probability_map(prob)
    diameter = _check_fraction("particle_diameter_px", particle_diameter_px, allow_zero=False)
    threshold = _check_fraction("threshold", threshold)
    if threshold > 1:
        raise param_error("threshold", threshold, "must be in [0, 1]")
    fractions = tuple(min_size_fractions)   # any iterable, read once
    min_sizes = [_check_fraction("min_size_fraction", f) for f in fractions]
    max_size = _check_fraction("max_size_fraction", max_size_fraction)
    min_distance = _check_fraction("min_distance_fraction", min_distance_fraction) * diameter
    border = _check_fraction("border_px", border_px)
    disc_area = math.pi * (diameter / 2) ** 2
    regions = _region_statistics(array, threshold, max_size * disc_area, round(min_distance),
                                 split_touching)
    if regions is None:
        return {given: empty_particles() for given in fractions}
    x, y, score, area, mass = regions
    height, width = array.shape
    kept = (area > 0) & (mass > 0) & (x >= border) & (x <= width - 1 - border) \
        & (y >= border) & (y <= height - 1 - border)   # whatever the minimum size
    out = {}
    for given, min_size in zip(fractions, min_sizes, strict=True):
        valid = kept & (area >= min_size * disc_area)
        out[given] = _suppressed_table(x[valid], y[valid], score[valid], diameter,
                                       min_distance, micrograph)
    return out


def _region_statistics(array: np.ndarray, threshold: float, max_area_px: float,
                       min_distance_px: int, split_touching: bool
                       ) -> tuple[np.ndarray, ...] | None:
    """Steps 1, 2 and 4 of the module: ``(x, y, score, area, mass)`` per region of the
    thresholded, split map (probability-weighted centre, mean probability, pixel count,
    probability sum), or None when nothing passes the threshold."""
    if not array.size:
        return None
    fg = array >= threshold
    components, n_components = ndimage.label(fg)
    if n_components == 0:
        return None
    if split_touching:
        split = np.ones(n_components + 1, dtype=bool)
    else:
        split = np.bincount(components.ravel(), minlength=n_components + 1) > max_area_px
    split[0] = False
    if split.any():
        regions = _split_regions(fg, components, n_components, min_distance_px, split)
    else:
        regions = components
    n_regions = int(regions.max())

    # Per-region sums over the foreground pixels only (labels as bincount indices).
    pixels = np.flatnonzero(regions)
    flat = regions.ravel()[pixels]
    weights = array.ravel()[pixels]
    rows, cols = np.divmod(pixels, array.shape[1])
    area = np.bincount(flat, minlength=n_regions + 1)[1:]
    mass = np.bincount(flat, weights=weights, minlength=n_regions + 1)[1:]
    safe_mass = np.where(mass > 0, mass, 1.0)
    y = np.bincount(flat, weights=weights * rows, minlength=n_regions + 1)[1:] / safe_mass
    x = np.bincount(flat, weights=weights * cols, minlength=n_regions + 1)[1:] / safe_mass
    score = mass / np.maximum(area, 1)
    return x, y, score, area, mass


def _suppressed_table(x: np.ndarray, y: np.ndarray, score: np.ndarray, diameter: float,
                      min_distance: float, micrograph: str) -> pd.DataFrame:
    """Step 6 and the table: the picks that survive the suppression, best first."""
    if not len(x):
        return empty_particles()
    # Best first: higher score; ties by smaller y, then smaller x (deterministic).
    order = np.lexsort((x, y, -score))
    keep = _suppress(np.column_stack([x, y]), order, min_distance)
    order = order[keep[order]]
    n = len(order)
    return pd.DataFrame({
        "micrograph": pd.Series([str(micrograph)] * n, dtype=object).astype(str),
        "x": x[order],
        "y": y[order],
        "diameter": np.full(n, diameter),
        "score": np.clip(score[order], 0.0, 1.0),
    })


def estimate_diameter_px(prob: Any, threshold: float = 0.5, *, min_diameter_px: float = 4.0,
                         max_diameter_px: float | None = None) -> float | None:
    """The typical particle diameter in a probability map, in its pixels, or None.

    A particle-shaped (or disc) region of radius ``r`` has a Euclidean distance transform that
    peaks at ``r`` at its centre; touching particles keep a peak near each centre. The estimate
    is twice the median height of the distance-transform peaks of the foreground
    (``prob >= threshold``), peaks at least ``min_diameter_px / 2`` apart and at least
    ``min_diameter_px / 2`` high, clipped to ``[min_diameter_px, max_diameter_px]``. None when
    the map has fewer than 5 such peaks (too little foreground to say).
    """
    from skimage.feature import peak_local_max

    array = _as_probability_map(prob)
    low = _check_fraction("min_diameter_px", min_diameter_px, allow_zero=False)
    high = math.inf if max_diameter_px is None else _check_fraction(
        "max_diameter_px", max_diameter_px, allow_zero=False)
    if high < low:
        raise param_error("max_diameter_px", max_diameter_px, f"must be ≥ {low}")
    fg = array >= _check_fraction("threshold", threshold)
    if not fg.any():
        return None
    distance = ndimage.distance_transform_edt(fg)
    peaks = peak_local_max(distance, min_distance=max(1, round(low / 2)),
                           threshold_abs=low / 2, exclude_border=False)
    if len(peaks) < 5:
        return None
    radius = float(np.median(distance[peaks[:, 0], peaks[:, 1]]))
    return float(min(max(2.0 * radius, low), high))


def particle_peak_level(prob: Any, particle_diameter_px: float, *, quantile: float = 0.5,
                        min_peak: float = 0.05) -> float:
    """How sure the network is of the particles of one micrograph: a quantile (``quantile``;
    0.5, the median) of the heights of its particle peaks, 0 when there is none.

    The peaks are the local maxima, in windows of half a diameter, of ``prob`` smoothed by a
    Gaussian of σ = ``particle_diameter_px`` / 8 (one peak per particle, not per noisy pixel;
    a plateau of equal maxima is one peak), above ``min_peak`` (lower maxima are background).
    A network is less sure of data unlike its training data, by an amount that depends on the
    data and on the training's seed; a threshold that is a fraction of this level
    (:func:`relative_threshold`) follows it.
    """
    array = _as_probability_map(prob)
    diameter = _check_fraction("particle_diameter_px", particle_diameter_px, allow_zero=False)
    q = _check_fraction("quantile", quantile)
    if q > 1:
        raise param_error("quantile", quantile, "must be in [0, 1]")
    floor = _check_fraction("min_peak", min_peak)
    if not array.size:
        return 0.0
    smooth = ndimage.gaussian_filter(array.astype(np.float32), max(1.0, diameter / 8))
    window = max(3, int(diameter / 2)) | 1
    at_peak = (smooth == ndimage.maximum_filter(smooth, size=window)) & (smooth > floor)
    # a flat maximum (a plateau of equal values, e.g. a constant background) is one peak
    labels, n_peaks = ndimage.label(at_peak, structure=np.ones((3, 3), bool))
    if not n_peaks:
        return 0.0
    peaks = ndimage.maximum(smooth, labels, index=np.arange(1, n_peaks + 1))
    return float(np.quantile(peaks, q))


def relative_threshold(peak_level: float, fraction: float, floor: float) -> float:
    """The threshold of a micrograph whose particle peak level is ``peak_level``
    (:func:`particle_peak_level`): ``max(floor, fraction × peak_level)``, a probability.
    ``fraction`` 0 gives the fixed threshold ``floor``."""
    level = _check_fraction("peak_level", peak_level)
    share = _check_fraction("fraction", fraction)
    lowest = _check_fraction("floor", floor)
    if level > 1 or share > 1 or lowest > 1:
        raise param_error("relative_threshold", (peak_level, fraction, floor),
                          "peak level, fraction and floor must be in [0, 1]")
    return max(lowest, share * level)


def choose_polarity(dark: Any, light: Any, particle_diameter_px: float, *,
                    quantile: float = 0.98, margin: float = 1.03
                    ) -> tuple[str, float, float]:
    """Which contrast polarity a micrograph has, from the probability maps of the network on it
    as given (``dark``) and inverted (``light``): ``(polarity, dark level, light level)``.

    A network that learnt dark particles is surer of them (:func:`particle_peak_level`, the
    ``quantile`` of the particle peak heights) on the micrograph's true polarity than on its
    negative, where it can only mark the gaps between particles. ``light`` is chosen when its
    level exceeds ``margin`` (≥ 1) × the dark one: a tie goes to the polarity the network learnt.
    """
    if not (math.isfinite(float(margin)) and float(margin) >= 1.0):
        raise param_error("polarity_margin", margin, "must be a number ≥ 1")
    dark_level = particle_peak_level(dark, particle_diameter_px, quantile=quantile)
    light_level = particle_peak_level(light, particle_diameter_px, quantile=quantile)
    polarity = "light" if light_level > float(margin) * dark_level else "dark"
    return polarity, dark_level, light_level


#: Options of :func:`extract_particles` that a checkpoint may carry (``Segmenter(extraction=)``)
EXTRACTION_OPTIONS = ("min_size_fraction", "max_size_fraction", "min_distance_fraction",
                      "split_touching")


def check_extraction_options(options: dict[str, Any]) -> dict[str, Any]:
    """Checked extraction options (the subset in :data:`EXTRACTION_OPTIONS`) as a plain dict."""
    unknown = sorted(set(options) - set(EXTRACTION_OPTIONS))
    if unknown:
        raise param_error("extraction", unknown[0],
                          f"unknown option; choose from {', '.join(EXTRACTION_OPTIONS)}")
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name == "split_touching":
            if not isinstance(value, bool):
                raise param_error(f"extraction.{name}", value, "must be true or false")
            out[name] = value
        else:
            out[name] = _check_fraction(f"extraction.{name}", value)
    return out


__all__ = ["EXTRACTION_OPTIONS", "check_extraction_options", "choose_polarity",
           "estimate_diameter_px", "extract_particles", "particle_peak_level",
           "relative_threshold"]
