"""Overlays and figures for loggers, notebooks, benchmarks and ``predict.py`` (Agg only, no
pyplot state).

One renderer, :func:`panels_figure`: a micrograph drawn once per :class:`Panel`, each panel
optionally overlaid with a segmentation mask (translucent red; ignore pixels 255 translucent
yellow) and particles — centres as cyan ``+`` or, with ``circles=True``, cyan circles of each
particle's ``diameter``. Every use is a choice of panels:

* :func:`overlay_figure` — ground truth: the micrograph beside the same with mask and centres
  (the simulator notebook, ``benchmarks/overlay_example.py``);
* :func:`prediction_figure` — micrograph, truth, prediction (the overlay logged during training);
* :func:`picks_figure` — the picks drawn as circles on the micrograph (``NAME_overlay.png`` of
  ``predict.py``).

Coordinates are pixels of the drawn image (``x`` = column, ``y`` = row, origin at the first
stored pixel). Images larger than ``max_side`` are subsampled for display only; axes keep the
full image's pixel coordinates. Figures are built with :class:`matplotlib.figure.Figure` on an
Agg canvas, so they work headless, in worker processes and in notebooks (``display(fig)``)
alike, and are freed when dropped: nothing is registered with ``pyplot``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import EllipseCollection
from matplotlib.figure import Figure

from cryoparticle.errors import param_error
from cryoparticle.io.atomic import atomic_path

#: RGBA of mask pixels (particle) and ignore pixels (255) in the overlay.
MASK_RGBA = (1.0, 0.0, 0.0, 0.45)
IGNORE_RGBA = (1.0, 0.85, 0.0, 0.35)
CENTRE_COLOUR = "cyan"


@dataclass(frozen=True)
class Panel:
    """One panel of :func:`panels_figure`: the micrograph with optional overlays.

    ``mask``: ``(H, W)`` uint8, 1 = particle (red fill), 255 = ignore (yellow), 0 = clear.
    ``particles``: table with ``x`` (column), ``y`` (row) in pixels of the image, drawn as
    ``+`` at the centres, or with ``circles`` as circles of the ``diameter`` column (pixels).
    """

    label: str = ""
    mask: np.ndarray | None = None
    particles: pd.DataFrame | None = None
    circles: bool = False


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


def _as_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 1:  # (1, H, W) tensor-style input
        image = image[0]
    if image.ndim != 2:
        raise param_error("image", image.shape, "must be a 2-D array (H, W)")
    return image


def _draw_particles(ax: Any, particles: pd.DataFrame, circles: bool, size: int) -> None:
    xy = np.column_stack([np.asarray(particles["x"], dtype=float),
                          np.asarray(particles["y"], dtype=float)])
    if circles:
        d = np.asarray(particles["diameter"], dtype=float)
        ax.add_collection(EllipseCollection(
            d, d, np.zeros(len(d)), units="xy", facecolors="none", edgecolors=CENTRE_COLOUR,
            linewidths=0.8, offsets=xy, offset_transform=ax.transData))
    else:
        ax.scatter(xy[:, 0], xy[:, 1], marker="+", s=max(8.0, 6000.0 / size), linewidths=0.8,
                   c=CENTRE_COLOUR)


def panels_figure(image: np.ndarray, panels: Sequence[Panel], title: str = "", *,
                  figsize: tuple[float, float] | None = None, dpi: int = 100,
                  panel_inches: float = 6.4, max_side: int | None = None) -> Figure:
    """A figure of ``image`` in grey, once per panel of ``panels``, each with its overlays.

    ``fig.axes[i]`` is panel ``i``, in pixel coordinates of ``image`` (origin at the first
    stored pixel, top-left). Images whose longer side exceeds ``max_side`` are subsampled
    (every k-th pixel, masks alike) for display. The size in pixels is ``figsize × dpi``
    (default: ``panel_inches`` per panel across, the image's aspect ratio, room for titles).
    """
    image = _as_image(image)
    panels = list(panels) or [Panel()]
    h, w = image.shape
    for panel in panels:
        if panel.mask is not None and np.asarray(panel.mask).shape[-2:] != image.shape:
            raise param_error("mask", np.asarray(panel.mask).shape,
                              f"must have the image's shape {image.shape}")
        if panel.circles and panel.particles is not None and \
                "diameter" not in panel.particles:
            raise param_error("particles", list(panel.particles.columns),
                              "circles need a 'diameter' column")
    step = max(1, math.ceil(max(h, w) / max_side)) if max_side else 1
    shown = image[::step, ::step]
    if figsize is None:
        labels = any(p.label for p in panels)
        figsize = (panel_inches * len(panels),
                   panel_inches * h / w + (0.3 if labels else 0.0) + (0.3 if title else 0.1))
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    vmin, vmax = display_range(shown)
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    for ax, panel in zip(axes, panels, strict=True):
        ax.imshow(shown, cmap="gray", vmin=vmin, vmax=vmax, interpolation="antialiased",
                  origin="upper", extent=extent)
        if panel.mask is not None:
            ax.imshow(mask_rgba(np.asarray(panel.mask)[::step, ::step]),
                      interpolation="nearest", origin="upper", extent=extent)
        if panel.particles is not None and len(panel.particles):
            _draw_particles(ax, panel.particles, panel.circles, max(h, w))
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        if panel.label:
            ax.set_title(panel.label, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def overlay_figure(image: np.ndarray, mask: np.ndarray | None = None,
                   particles: pd.DataFrame | None = None, title: str = "", *,
                   figsize: tuple[float, float] | None = None, dpi: int = 100) -> Figure:
    """``image`` in grey and, beside it, the same with ``mask`` and ``particles`` (``+``).

    With neither, the figure has one axes (the micrograph alone); otherwise two:
    ``fig.axes[0]`` the raw micrograph and ``fig.axes[1]`` the overlay (see :class:`Panel`).
    """
    panels = [Panel("micrograph")]
    if mask is not None or particles is not None:
        parts = (["mask (red)"] if mask is not None else []) + \
            ([f"{len(particles)} centres (+)"] if particles is not None else [])
        panels.append(Panel("ground truth: " + ", ".join(parts), mask, particles))
    return panels_figure(image, panels, title, figsize=figsize, dpi=dpi)


def prediction_figure(image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray,
                      title: str = "", max_side: int = 1024) -> Figure:
    """Three panels: the micrograph, the truth mask and the predicted mask overlaid."""
    panels = [Panel("micrograph"), Panel("truth", truth), Panel("prediction", prediction)]
    return panels_figure(image, panels, title, panel_inches=4.0, max_side=max_side)


def picks_figure(image: np.ndarray, picks: pd.DataFrame, title: str = "",
                 max_side: int = 2048) -> Figure:
    """One panel: the micrograph with a circle of each pick's ``diameter`` at its centre."""
    return panels_figure(image, [Panel(particles=picks, circles=True)], title, dpi=128,
                         panel_inches=8.0, max_side=max_side)


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """``(H, W, 3)`` uint8 rendering of a figure on an Agg canvas."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure_png(path: str | Path, fig: Figure) -> None:
    """Write ``fig`` as a PNG at its own size (``figsize × dpi`` pixels), atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)


def save_overlay_png(path: str | Path, image: np.ndarray, mask: np.ndarray | None = None,
                     particles: pd.DataFrame | None = None, title: str = "", **kwargs) -> None:
    """:func:`overlay_figure` written to ``path`` as a PNG, atomically (``kwargs``: figsize, dpi)."""
    save_figure_png(path, overlay_figure(image, mask, particles, title, **kwargs))


__all__ = ["Panel", "display_range", "figure_to_rgb", "mask_rgba", "overlay_figure",
           "panels_figure", "picks_figure", "prediction_figure", "save_figure_png",
           "save_overlay_png"]
