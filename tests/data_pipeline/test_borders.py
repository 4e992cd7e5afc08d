"""Border artefacts: padding of repeated or constant rows/columns found, mapped and used."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cryoparticle.data.borders import (BorderWidths, border_mask, border_widths, detect_border,
                                       drop_border_picks)
from cryoparticle.errors import InputError


def _texture(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 2).astype(np.float32)


def test_edge_replicated_and_constant_padding_widths():
    inner = _texture((200, 180))
    padded = np.pad(inner, ((30, 0), (12, 40)), mode="edge")   # top 30, left 12, right 40
    got = border_widths(padded, margin_px=0)
    assert got == BorderWidths(top=30, bottom=0, left=12, right=40)
    constant = np.pad(inner, ((0, 20), (0, 0)), mode="constant", constant_values=3.0)
    assert border_widths(constant, margin_px=0) == BorderWidths(bottom=20)
    assert border_widths(inner) == BorderWidths()               # no padding, nothing masked
    assert border_widths(padded, margin_px=7) == BorderWidths(37, 0, 19, 47)


def test_smeared_outer_lines_and_short_runs():
    inner = _texture((240, 240), 1)
    padded = np.pad(inner, ((40, 0), (0, 0)), mode="edge")
    padded[:10] += _texture((10, 240), 2)                      # the outermost lines smeared
    assert border_widths(padded, margin_px=0).top == 40
    assert border_widths(padded, margin_px=0, edge_slack_px=5).top == 0
    short = np.pad(inner, ((2, 0), (0, 0)), mode="edge")        # 2 repeated rows: no artefact
    assert border_widths(short, margin_px=0).top == 0


def test_border_mask_scaled_and_picks_dropped():
    widths = BorderWidths(top=8, bottom=4, left=0, right=10)
    mask = border_mask((40, 50), widths)
    assert mask[:8].all() and mask[36:].all() and mask[:, 40:].all()
    assert not mask[8:36, :40].any()
    assert widths.scaled(4) == BorderWidths(2, 1, 0, 3)
    picks = pd.DataFrame({"x": [5.0, 45.0, 20.0, 20.0], "y": [20.0, 20.0, 2.0, 30.0]})
    kept = drop_border_picks(picks, (40, 50), widths)
    assert kept[["x", "y"]].values.tolist() == [[5.0, 20.0], [20.0, 30.0]]
    image = np.pad(_texture((64, 64)), ((16, 0), (0, 0)), mode="edge")
    assert detect_border(image, margin_px=0).sum() == 16 * 64


def test_bad_image_is_an_input_error():
    with pytest.raises(InputError, match="2-D micrograph"):
        border_widths(np.zeros((4, 4)))
