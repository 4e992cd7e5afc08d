"""Border artefacts of micrographs: padding made of constant or repeated rows and columns.

CryoSegNet's EMPIAR-10017 JPGs, for example, are padded by edge replication (each of the ~70
outer rows repeats the next one, each outer column likewise) and the denoiser smears the
seam over another ~30 px: a striped frame about 90–100 px wide that holds no particle. These
pixels are labelled ignore (255) in training masks, and picks on them can be dropped at
prediction.

:func:`border_widths` scans each side from the edge inward: a line (row or column) is padding
when it is constant or (almost) equal to the next line inward — mean absolute difference below
``rel_tol`` × the median of the same statistic over the micrograph's interior lines. The
padding is the run of such lines that starts within ``edge_slack_px`` of the edge (JPEG
compression can disturb the outermost lines) and is at least ``min_run_px`` long; ``margin_px``
is added for the smeared seam. :func:`border_mask` turns the widths into a boolean map
(True = artefact); :func:`drop_border_picks` removes picks whose centre lies in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryoparticle.errors import param_error


@dataclass(frozen=True)
class BorderWidths:
    """Artefact widths in pixels from each edge of the micrograph."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    def scaled(self, factor: float) -> "BorderWidths":
        """Widths on a grid binned by ``factor`` (rounded up: never less masked)."""
        return BorderWidths(*(int(math.ceil(w / factor - 1e-9)) for w in
                              (self.top, self.bottom, self.left, self.right)))

    def any(self) -> bool:
        return any((self.top, self.bottom, self.left, self.right))


def _padding_run(lines: np.ndarray, tolerance: float, max_px: int, edge_slack_px: int,
                 min_run_px: int) -> int:
    """Width of the padding at the start of ``lines`` (L, N): lines equal to the next one
    inward or constant."""
    count = min(max_px + 1, lines.shape[0])
    head = lines[:count]
    diff = np.abs(np.diff(head, axis=0)).mean(axis=1)       # line k vs k + 1
    flat = head[:-1].std(axis=1)
    padding = (diff <= tolerance) | (flat <= tolerance)
    start = None
    for k in range(min(edge_slack_px + 1, len(padding))):
        if padding[k]:
            start = k
            break
    if start is None:
        return 0
    end = start
    while end < len(padding) and padding[end]:
        end += 1
    if end - start < min_run_px:
        return 0
    return end  # line `end` is the first real line (the one the padding repeats)


def border_widths(image: np.ndarray, *, max_fraction: float = 0.2, rel_tol: float = 0.1,
                  edge_slack_px: int = 32, min_run_px: int = 4, margin_px: int = 40
                  ) -> BorderWidths:
    """Widths (pixels of ``image``) of the padding on each side; 0 where there is none.

    ``max_fraction`` bounds the scan (a fraction of the side). The tolerance is ``rel_tol``
    times the median line-to-line difference of the interior (rows or columns); a constant
    image has no interior texture and gets no border. ``margin_px`` (pixels of ``image``) is
    added to every non-zero width.
    """
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 2 or min(array.shape) < 8:
        raise param_error("image", f"array of shape {array.shape}",
                          "expected a 2-D micrograph of at least 8×8 pixels")
    if not 0 < max_fraction < 0.5:
        raise param_error("max_fraction", max_fraction, "must be in (0, 0.5)")
    widths = []
    for lines in (array, array[::-1], array.T, array.T[::-1]):  # top, bottom, left, right
        n = lines.shape[0]
        middle = lines[n // 4: 3 * n // 4]
        interior = float(np.median(np.abs(np.diff(middle, axis=0)).mean(axis=1)))
        if interior <= 0:
            widths.append(0)
            continue
        run = _padding_run(lines, rel_tol * interior, int(max_fraction * n), edge_slack_px,
                           min_run_px)
        widths.append(min(n // 2, run + int(margin_px)) if run else 0)
    return BorderWidths(*widths)


def border_mask(shape: tuple[int, int], widths: BorderWidths) -> np.ndarray:
    """Boolean ``shape`` map, True on the border artefact."""
    height, width = int(shape[0]), int(shape[1])
    out = np.zeros((height, width), dtype=bool)
    out[:widths.top] = True
    out[height - widths.bottom:height if widths.bottom else 0] = True
    out[:, :widths.left] = True
    out[:, width - widths.right:width if widths.right else 0] = True
    return out


def detect_border(image: np.ndarray, **options: float) -> np.ndarray:
    """Boolean map of ``image``'s border artefact (see :func:`border_widths` for options)."""
    return border_mask(np.shape(image), border_widths(image, **options))  # type: ignore[arg-type]


def drop_border_picks(picks: pd.DataFrame, shape: tuple[int, int], widths: BorderWidths
                      ) -> pd.DataFrame:
    """``picks`` (``x`` = column, ``y`` = row, pixels of a ``shape`` micrograph) without those
    whose centre lies on the border artefact."""
    height, width = int(shape[0]), int(shape[1])
    x = picks["x"].to_numpy(dtype=float)
    y = picks["y"].to_numpy(dtype=float)
    keep = ((x >= widths.left) & (x < width - widths.right)
            & (y >= widths.top) & (y < height - widths.bottom))
    return picks[keep].reset_index(drop=True)


__all__ = ["BorderWidths", "border_mask", "border_widths", "detect_border", "drop_border_picks"]
