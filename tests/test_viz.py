"""cryoparticle.viz: overlay figures and PNGs (Agg, atomic)."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cryoparticle.errors import InputError
from cryoparticle.viz import overlay_figure, save_overlay_png


@pytest.fixture()
def scene():
    """A grey 96×128 image with one square particle (rows 20–51, cols 30–61) and its centre."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(96, 128)).astype(np.float32)
    mask = np.zeros((96, 128), np.uint8)
    mask[20:52, 30:62] = 1
    particles = pd.DataFrame({"micrograph": "m", "x": [45.5], "y": [35.5], "diameter": [32.0],
                              "score": [1.0]})
    return image, mask, particles


def _is_red(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (r > g + 60) & (r > b + 60)


def test_axes_count(scene):
    image, mask, particles = scene
    assert len(overlay_figure(image).axes) == 1
    assert len(overlay_figure(image, mask, particles, "t").axes) == 2
    assert len(overlay_figure(image, particles=particles).axes) == 2
    fig = overlay_figure(image, mask=mask)
    assert fig.axes[1].get_title().startswith("ground truth")


def test_png_size_and_red_at_mask(tmp_path, scene):
    image, mask, particles = scene
    path = tmp_path / "sub" / "overlay.png"
    save_overlay_png(path, image, mask, particles, "a title", figsize=(8.0, 3.5), dpi=80)
    assert [p.name for p in path.parent.iterdir()] == ["overlay.png"]  # no temporary left
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape == (round(3.5 * 80), round(8.0 * 80), 3)

    # Where a pixel of the mask lands on the PNG (same layout as the saved figure).
    fig = overlay_figure(image, mask, particles, "a title", figsize=(8.0, 3.5), dpi=80)
    fig.canvas.draw()
    height = png.shape[0]

    def png_pixel(ax, col, row):
        x, y = ax.transData.transform((col, row))
        return round(height - y), round(x)

    red = _is_red(png)
    r, c = png_pixel(fig.axes[1], 38, 26)           # inside the mask, away from the centre mark
    assert red[r - 1:r + 2, c - 1:c + 2].all()
    r, c = png_pixel(fig.axes[1], 100, 80)          # background of the overlay: not red
    assert not red[r, c]
    r, c = png_pixel(fig.axes[0], 38, 26)           # raw micrograph panel: no overlay
    assert not red[r - 1:r + 2, c - 1:c + 2].any()
    # The red area is about the mask's area as drawn (32 × 32 data pixels).
    x0, y0 = fig.axes[1].transData.transform((0, 0))
    x1, y1 = fig.axes[1].transData.transform((1, 1))
    px_per_data = abs(x1 - x0) * abs(y1 - y0)
    assert red.sum() == pytest.approx(32 * 32 * px_per_data, rel=0.2)


def test_ignore_pixels_are_not_red(scene):
    image, _, _ = scene
    mask = np.full(image.shape, 255, np.uint8)
    fig = overlay_figure(image, mask)
    fig.canvas.draw()
    png = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    assert not _is_red(png).any()


def test_bad_shapes_raise(scene):
    image, mask, _ = scene
    with pytest.raises(InputError):
        overlay_figure(image, mask[:10])
    with pytest.raises(InputError):
        overlay_figure(np.zeros((2, 3, 4, 5)))
