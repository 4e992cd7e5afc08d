"""Particle picks → segmentation masks, and back.

* :func:`disc_mask`: a filled disc per particle (the baseline ground truth);
* :func:`refined_mask`: inside each disc only the particle's own density (low-pass, local
  threshold, morphology), as the simulator's particle-shaped truth;
* :func:`ignore_ring`, :func:`ignore_far`: label uncertain pixels ignore (255) — a ring at the
  edges of the particle regions, or background far from every pick (expert picks miss
  particles); :func:`target_mask` combines them as a data config asks;
* :func:`centres_from_mask`: particle centres recovered from a disc mask (distance transform
  and a greedy disc cover), e.g. for masks published without their coordinate files.

A pixel ``(row, column)`` belongs to a particle centred at ``(x, y)`` (x = column, y = row, in
pixels with the first stored pixel at 0) with diameter ``d`` when
``hypot(column − x, row − y) ≤ d / 2``. Discs are drawn as horizontal runs: for every
particle and every row it touches, the exact column interval of the disc on that row is
marked in a difference array, and one cumulative sum fills them all — no loop over pixels
or particles, and memory proportional to ``particles × diameter``, not ``× diameter²``.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from cryoparticle.errors import param_error
from cryoparticle.io.mrc import MASK_IGNORE

TARGETS = ("disc", "refined", "core")


def _diameters(particles: pd.DataFrame, diameter_px: float | None) -> np.ndarray:
    n = len(particles)
    if diameter_px is not None:
        try:
            value = float(diameter_px)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise param_error("diameter_px", diameter_px, "must be a positive number of pixels")
        return np.full(n, value)
    if "diameter" not in particles.columns:
        raise param_error("diameter_px", None, "particles have no 'diameter' column; give one")
    d = pd.to_numeric(particles["diameter"], errors="coerce").to_numpy(dtype=np.float64)
    if n and not (np.isfinite(d).all() and (d > 0).all()):
        raise param_error("diameter_px", None, "some particles have no positive diameter; "
                                               "give diameter_px")
    return d


def disc_mask(shape: tuple[int, int], particles: pd.DataFrame,
              diameter_px: float | None = None) -> np.ndarray:
    """uint8 ``{0, 1}`` mask of ``shape`` with a filled disc per particle.

    ``particles`` needs columns ``x`` (column) and ``y`` (row) in pixels of this image and, unless
    ``diameter_px`` is given for all, ``diameter`` (pixels). Discs may be cut by the border.
    """
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1:
        raise param_error("shape", tuple(shape), "must be positive")
    mask = np.zeros((height, width), dtype=np.uint8)
    if len(particles) == 0:
        return mask
    for column in ("x", "y"):
        if column not in particles.columns:
            raise param_error("particles", list(particles.columns), f"missing column {column!r}")
    x = pd.to_numeric(particles["x"], errors="coerce").to_numpy(dtype=np.float64)
    y = pd.to_numeric(particles["y"], errors="coerce").to_numpy(dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise param_error("particles", "table", "x and y must be finite numbers")
    radius = _diameters(particles, diameter_px) / 2.0

    # Rows each disc may touch: floor(y - r) .. floor(y - r) + span - 1.
    span = int(math.floor(2 * radius.max())) + 2
    first = np.floor(y - radius).astype(np.int64)
    rows = first[:, None] + np.arange(span)[None, :]  # (N, span)
    dy = rows - y[:, None]
    r2 = (radius * radius)[:, None]
    half = np.sqrt(np.maximum(r2 - dy * dy, 0.0))
    c0 = np.ceil(x[:, None] - half).astype(np.int64)
    c1 = np.floor(x[:, None] + half).astype(np.int64)
    # Floating-point guard: keep exactly the columns with dx² + dy² ≤ r².
    def inside(col: np.ndarray) -> np.ndarray:
        return (col - x[:, None]) ** 2 + dy * dy <= r2

    c0 -= inside(c0 - 1)
    c0 += ~inside(c0)
    c1 += inside(c1 + 1)
    c1 -= ~inside(c1)
    c0 = np.maximum(c0, 0)
    c1 = np.minimum(c1, width - 1)
    keep = (dy * dy <= r2) & (rows >= 0) & (rows < height) & (c0 <= c1)
    rows, c0, c1 = rows[keep], c0[keep], c1[keep]
    stride = width + 1
    diff = np.bincount(rows * stride + c0, minlength=height * stride).astype(np.int32)
    diff -= np.bincount(rows * stride + c1 + 1, minlength=height * stride).astype(np.int32)
    covered = np.cumsum(diff.reshape(height, stride), axis=1)[:, :width]
    mask[covered > 0] = 1
    return mask


# --------------------------------------------------------------------------- refined maps


def _particle_table(particles: pd.DataFrame, diameter_px: float | None) -> pd.DataFrame:
    table = particles.copy()
    table["diameter"] = _diameters(particles, diameter_px)
    return table


def refined_mask(image: np.ndarray, particles: pd.DataFrame, diameter_px: float | None = None, *,
                 lowpass_fraction: float = 0.08, contrast: str = "auto",
                 opening_fraction: float = 0.05, min_area_fraction: float = 0.1) -> np.ndarray:
    """uint8 ``{0, 1}`` particle-shaped map: inside each pick's disc, the pixels of the
    particle's own density.

    The micrograph is low-passed (Gaussian σ = ``lowpass_fraction × diameter``); for each
    particle the threshold is halfway between the median of its inner disc (radius d/4) and the
    median background of its annulus (r..1.5 r, outside every disc; the whole micrograph's
    background when the annulus is covered); pixels of the disc on the particle's side of it
    (``contrast``: ``dark`` particles below, ``bright`` above, ``auto`` from the median sign of
    inner − annulus over all particles) are kept, opened by a disc of
    ``opening_fraction × diameter``, holes filled, and only the region at the centre is kept.
    A particle whose region covers less than ``min_area_fraction`` of its disc (no contrast)
    keeps its whole disc.
    """
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 2:
        raise param_error("image", f"array of shape {array.shape}", "expected a 2-D image")
    if contrast not in ("auto", "dark", "bright"):
        raise param_error("contrast", contrast, "choose auto, dark or bright")
    discs = disc_mask(array.shape, particles, diameter_px)
    if len(particles) == 0:
        return discs
    table = _particle_table(particles, diameter_px)
    height, width = array.shape
    out = np.zeros_like(discs)
    background = ~discs.astype(bool)
    global_bg = float(np.median(array[background])) if background.any() else float(array.mean())
    windows, stats = [], []
    for x, y, d in table[["x", "y", "diameter"]].to_numpy(dtype=np.float64):
        r = d / 2
        half = int(math.ceil(1.5 * r)) + 1
        y0, y1 = max(0, int(y) - half), min(height, int(y) + half + 1)
        x0, x1 = max(0, int(x) - half), min(width, int(x) + half + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        rows, cols = np.mgrid[y0:y1, x0:x1]
        rho = np.hypot(cols - x, rows - y)
        sigma = max(0.5, lowpass_fraction * d)
        pad = int(math.ceil(3 * sigma))
        py0, py1 = max(0, y0 - pad), min(height, y1 + pad)
        px0, px1 = max(0, x0 - pad), min(width, x1 + pad)
        smooth = ndimage.gaussian_filter(array[py0:py1, px0:px1], sigma)[
            y0 - py0:y1 - py0, x0 - px0:x1 - px0]
        inner = smooth[rho <= r / 2]
        ring = smooth[(rho > r) & (rho <= 1.5 * r) & background[y0:y1, x0:x1]]
        if inner.size == 0:
            continue
        bg = float(np.median(ring)) if ring.size >= 8 else global_bg
        windows.append((y0, y1, x0, x1, rho, smooth, r))
        stats.append((float(np.median(inner)), bg))
    if not windows:
        return discs
    signs = np.sign([core - bg for core, bg in stats])
    sign = {"dark": -1.0, "bright": 1.0}.get(contrast, -1.0 if np.median(signs) <= 0 else 1.0)
    for (y0, y1, x0, x1, rho, smooth, r), (core, bg) in zip(windows, stats, strict=True):
        disc = rho <= r
        threshold = (core + bg) / 2
        keep = disc & (sign * (smooth - threshold) > 0)
        radius = max(1, int(round(opening_fraction * 2 * r)))
        struct = _disc_footprint(radius)
        keep = ndimage.binary_opening(keep, struct) if radius > 0 else keep
        keep = ndimage.binary_fill_holes(keep)
        labels, n = ndimage.label(keep)
        if n:
            centre_label = labels[rho <= max(1.0, r / 4)]
            centre_label = centre_label[centre_label > 0]
            chosen = (np.bincount(centre_label).argmax() if centre_label.size
                      else np.bincount(labels[labels > 0]).argmax())
            keep = labels == chosen
        if keep.sum() < min_area_fraction * disc.sum():
            keep = disc
        out[y0:y1, x0:x1] |= keep.astype(np.uint8)
    return out


def _disc_footprint(radius: int) -> np.ndarray:
    rows, cols = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return rows * rows + cols * cols <= radius * radius


# --------------------------------------------------------------------------- ignore labels


def ignore_ring(mask: np.ndarray, width_px: float) -> np.ndarray:
    """``mask`` with a ring of ``width_px`` pixels centred on the edges of its particle
    regions labelled ignore (255): particle pixels within ``width_px / 2`` of the background
    and background pixels within ``width_px / 2`` of a particle. ``width_px = 0`` changes
    nothing."""
    width = float(width_px)
    if not (math.isfinite(width) and width >= 0):
        raise param_error("ring_px", width_px, "must be a number of pixels ≥ 0")
    out = np.array(mask, dtype=np.uint8)
    particle = out == 1
    if width == 0 or not particle.any():
        return out
    half = width / 2
    inside = particle & (ndimage.distance_transform_edt(particle) <= half)
    outside = (out == 0) & (ndimage.distance_transform_edt(~particle) <= half)
    out[inside | outside] = MASK_IGNORE
    return out


def ignore_far(mask: np.ndarray, distance_px: float) -> np.ndarray:
    """``mask`` with background pixels farther than ``distance_px`` from every particle pixel
    labelled ignore (255): expert picks miss particles, so only background near picks is
    trusted. A mask without particles becomes all ignore."""
    distance = float(distance_px)
    if not (math.isfinite(distance) and distance >= 0):
        raise param_error("far_ignore_px", distance_px, "must be a number of pixels ≥ 0")
    out = np.array(mask, dtype=np.uint8)
    particle = out == 1
    if not particle.any():
        out[out == 0] = MASK_IGNORE
        return out
    far = (out == 0) & (ndimage.distance_transform_edt(~particle) > distance)
    out[far] = MASK_IGNORE
    return out


def target_mask(shape: tuple[int, int], particles: pd.DataFrame, *, target: str = "disc",
                diameter_px: float | None = None, image: np.ndarray | None = None,
                disc: np.ndarray | None = None, ring_px: float = 0.0,
                far_ignore_px: float | None = None,
                refine: dict[str, Any] | None = None, core_fraction: float = 0.5) -> np.ndarray:
    """The training target for picks: ``disc`` (``disc``, a disc mask already drawn, else drawn
    from ``particles``), ``refined`` (needs ``image``) or ``core`` (:func:`core_mask`), then an
    :func:`ignore_ring` of ``ring_px`` and, when ``far_ignore_px`` is given, :func:`ignore_far`.
    """
    if target == "core":
        full = np.array(disc, dtype=np.uint8) if disc is not None \
            else disc_mask(shape, particles, diameter_px)
        mask = core_mask(full, particles, core_fraction, diameter_px)
    elif target == "disc":
        mask = np.array(disc, dtype=np.uint8) if disc is not None \
            else disc_mask(shape, particles, diameter_px)
    elif target == "refined":
        if image is None:
            raise param_error("target", target, "a refined map needs the micrograph")
        mask = refined_mask(image, particles, diameter_px, **(refine or {}))
    else:
        raise param_error("target", target, f"choose one of {', '.join(TARGETS)}")
    if ring_px:
        mask = ignore_ring(mask, ring_px)
    if far_ignore_px is not None:
        mask = ignore_far(mask, far_ignore_px)
    return mask


def core_mask(disc: np.ndarray, particles: pd.DataFrame, core_fraction: float,
              diameter_px: float | None = None) -> np.ndarray:
    """Particle cores as the target: a disc of ``core_fraction`` × each particle's diameter
    is particle (1), the rest of the particle discs ``disc`` is ignore (255), the background
    stays 0. Crowded particles whose discs overlap keep separate cores, so the picks of a
    network trained on them separate too; the uncertain rims do not count in the loss."""
    fraction = float(core_fraction)
    if not (0.0 < fraction <= 1.0):
        raise param_error("core_fraction", core_fraction, "must be in (0, 1]")
    diameters = _diameters(particles, diameter_px) * fraction
    core = disc_mask(disc.shape, particles.assign(diameter=diameters))
    out = np.where(np.asarray(disc) == 1, MASK_IGNORE, np.asarray(disc)).astype(np.uint8)
    out[core == 1] = 1
    return out


# --------------------------------------------------------------------------- mask → picks


def centres_from_mask(mask: np.ndarray, diameter_px: float, *, tolerance_px: float = 0.75,
                      min_new_fraction: float = 0.2, micrograph: str = "") -> pd.DataFrame:
    """Particle centres of a mask drawn as filled discs of ``diameter_px`` (pixels).

    Candidates are the pixels where a whole disc fits in the particle region (Euclidean
    distance transform ≥ r − ``tolerance_px``). A lazy greedy cover then picks the candidate
    whose disc covers the most particle pixels not yet explained, preferring a distance
    closest to r (a true centre's disc touches the background; points between crowded discs
    are deeper), until no candidate explains ``min_new_fraction`` of a disc. Overlapping
    discs, which connected components and plain distance peaks merge or shift, are
    separated. Returns the particle table (``x`` = column, ``y`` = row, pixels of ``mask``,
    score 1).
    """
    fg = np.asarray(mask) == 1
    diameter = float(diameter_px)
    if not (math.isfinite(diameter) and diameter > 0):
        raise param_error("diameter_px", diameter_px, "must be a positive number of pixels")
    r = diameter / 2
    distance = ndimage.distance_transform_edt(fg)
    candidates = np.flatnonzero(distance.ravel() >= r - tolerance_px)
    height, width = fg.shape
    reach = int(math.ceil(r))
    dy, dx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    inside = dy * dy + dx * dx <= r * r
    dy, dx = dy[inside], dx[inside]
    area = int(inside.sum())
    unexplained = fg.ravel().copy()
    penalty = np.abs(distance.ravel()[candidates] - r) / r

    def cover(k: int) -> np.ndarray:
        y, x = divmod(int(candidates[k]), width)
        rows, cols = y + dy, x + dx
        ok = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        return rows[ok] * width + cols[ok]

    heap = list(zip((penalty - 1.0).tolist(), range(len(candidates)), strict=True))
    heapq.heapify(heap)
    chosen: list[int] = []
    while heap:
        _, k = heapq.heappop(heap)
        pixels = cover(k)
        new = int(unexplained[pixels].sum())
        key = penalty[k] - new / area
        if heap and key > heap[0][0] + 1e-12:  # no longer the best: re-queue (lazy greedy)
            heapq.heappush(heap, (key, k))
            continue
        if new < min_new_fraction * area:
            break
        chosen.append(k)
        unexplained[pixels] = False
    # Drop redundant picks (a point between crowded discs, taken before its neighbours): most
    # of its disc is covered by the others. Deepest (least boundary-like) first.
    count = np.zeros(fg.size, dtype=np.int32)
    for k in chosen:
        count[cover(k)] += 1
    kept = []
    for k in sorted(chosen, key=lambda k: -penalty[k]):
        pixels = cover(k)
        pixels = pixels[fg.ravel()[pixels]]
        if pixels.size and (count[pixels] > 1).mean() >= 1.0 - min_new_fraction / 2:
            count[pixels] -= 1
        else:
            kept.append(k)
    index = np.sort(candidates[np.array(kept, dtype=np.int64)])
    n = len(index)
    return pd.DataFrame({"micrograph": pd.Series([str(micrograph)] * n, dtype=object),
                         "x": (index % width).astype(np.float64),
                         "y": (index // width).astype(np.float64),
                         "diameter": np.full(n, diameter), "score": np.ones(n)})


__all__ = ["MASK_IGNORE", "TARGETS", "centres_from_mask", "disc_mask", "ignore_far",
           "ignore_ring", "refined_mask", "target_mask"]
