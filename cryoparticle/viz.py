"""Overlays and figures for loggers, notebooks and benchmarks (Agg only, no pyplot state).

:func:`overlay_figure` shows a micrograph beside the same micrograph overlaid with its
segmentation mask (translucent red; ignore pixels translucent yellow) and particle centres
(cyan ``+``). Figures are built with :class:`matplotlib.figure.Figure` on an Agg canvas, so
they work headless, in worker processes and in notebooks (``display(fig)``) alike, and are
freed when dropped: nothing is registered with ``pyplot``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cryoparticle.errors import param_error
from cryoparticle.io.atomic import atomic_path

#: RGBA of mask pixels (particle) and ignore pixels (255) in the overlay.
MASK_RGBA = (1.0, 0.0, 0.0, 0.45)
IGNORE_RGBA = (1.0, 0.85, 0.0, 0.35)
CENTRE_COLOUR = "cyan"


def display_range(image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)
                  ) -> tuple[float, float]:
    """Grey-level limits for showing ``image``: its percentiles (robust to outliers)."""
    finite = np.asarray(image, dtype=np.float32)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, percentiles)
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 0.5, float(lo) + 0.5)


def mask_rgba(mask: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` float RGBA overlay: red where ``mask == 1``, yellow where 255, clear else."""
    mask = np.asarray(mask)
    rgba = np.zeros(mask.shape + (4,), dtype=np.float32)
    rgba[mask == 1] = MASK_RGBA
    rgba[mask == 255] = IGNORE_RGBA
    return rgba


def _check_inputs(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 1:  # (1, H, W) tensor-style input
        image = image[0]
    if image.ndim != 2:
        raise param_error("image", image.shape, "must be a 2-D array (H, W)")
    if mask is not None and np.asarray(mask).shape[-2:] != image.shape:
        raise param_error("mask", np.asarray(mask).shape,
                          f"must have the image's shape {image.shape}")
    return image


def overlay_figure(image: np.ndarray, mask: np.ndarray | None = None,
                   particles: pd.DataFrame | None = None, title: str = "", *,
                   figsize: tuple[float, float] | None = None, dpi: int = 100) -> Figure:
    """A figure of ``image`` in grey and, beside it, the same with ``mask`` and ``particles``.

    ``mask``: uint8 ``(H, W)``, 1 = particle (red fill), 255 = ignore (yellow), 0 = clear.
    ``particles``: table with ``x`` (column) and ``y`` (row) in pixels of ``image`` (cyan ``+``).
    With neither, the figure has one axes (the micrograph alone); otherwise two:
    ``fig.axes[0]`` the raw micrograph and ``fig.axes[1]`` the overlay, both in pixel
    coordinates (origin at the first stored pixel, top-left). The size in pixels is
    ``figsize × dpi`` (default figsize: 6.4 in per panel × 6.4 in, plus room for the title).
    """
    image = _check_inputs(image, mask)
    with_overlay = mask is not None or particles is not None
    n_panels = 2 if with_overlay else 1
    h, w = image.shape
    if figsize is None:
        panel = 6.4
        figsize = (panel * n_panels, panel * h / w + (0.5 if title else 0.2))
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    vmin, vmax = display_range(image)
    show = {"cmap": "gray", "vmin": vmin, "vmax": vmax, "interpolation": "antialiased",
            "origin": "upper", "extent": (-0.5, w - 0.5, h - 0.5, -0.5)}
    axes[0].imshow(image, **show)
    axes[0].set_title("micrograph", fontsize=10)
    if with_overlay:
        ax = axes[1]
        ax.imshow(image, **show)
        parts = []
        if mask is not None:
            ax.imshow(mask_rgba(mask), interpolation="nearest", origin="upper",
                      extent=show["extent"])
            parts.append("mask (red)")
        if particles is not None and len(particles):
            ax.scatter(np.asarray(particles["x"], dtype=float),
                       np.asarray(particles["y"], dtype=float), marker="+",
                       s=max(8.0, 6000.0 / max(h, w)), linewidths=0.8, c=CENTRE_COLOUR)
        if particles is not None:
            parts.append(f"{len(particles)} centres (+)")
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title("ground truth: " + ", ".join(parts), fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def save_figure_png(path: str | Path, fig: Figure) -> None:
    """Write ``fig`` as a PNG at its own size (``figsize × dpi`` pixels), atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)


def save_overlay_png(path: str | Path, image: np.ndarray, mask: np.ndarray | None = None,
                     particles: pd.DataFrame | None = None, title: str = "", **kwargs) -> None:
    """:func:`overlay_figure` written to ``path`` as a PNG, atomically (``kwargs``: figsize, dpi)."""
    fig = overlay_figure(image, mask, particles, title, **kwargs)
    save_figure_png(path, fig)
