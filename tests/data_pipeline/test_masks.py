import numpy as np
import pandas as pd
import pytest

from cryoparticle.data.masks import disc_mask
from cryoparticle.errors import InputError


def _reference(shape, x, y, d):
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    inside = np.hypot(cols[None] - x[:, None, None], rows[None] - y[:, None, None]) \
        <= d[:, None, None] / 2
    return inside.any(0).astype(np.uint8)


def test_disc_mask_matches_brute_force_on_non_square_image():
    rng = np.random.default_rng(0)
    shape, n = (57, 91), 30
    x, y = rng.uniform(-6, 97, n), rng.uniform(-6, 63, n)  # some discs cut by the border
    d = rng.uniform(0.8, 17, n)
    parts = pd.DataFrame({"micrograph": "m", "x": x, "y": y, "diameter": d, "score": 1.0})
    mask = disc_mask(shape, parts)
    assert mask.dtype == np.uint8 and mask.shape == shape
    np.testing.assert_array_equal(mask, _reference(shape, x, y, d))
    # a given diameter overrides the table's
    np.testing.assert_array_equal(disc_mask(shape, parts, diameter_px=6.5),
                                  _reference(shape, x, y, np.full(n, 6.5)))


def test_disc_mask_x_is_column_y_is_row():
    parts = pd.DataFrame({"x": [40.0], "y": [5.0], "diameter": [3.0]})
    mask = disc_mask((20, 50), parts)
    rows, cols = np.nonzero(mask)
    assert set(rows) == {4, 5, 6} and set(cols) == {39, 40, 41}
    assert mask[5, 40] == 1 and mask[40 % 20, 5] == 0


def test_disc_mask_empty_and_missing_diameter():
    empty = pd.DataFrame({"x": [], "y": [], "diameter": []})
    assert not disc_mask((8, 9), empty).any()
    parts = pd.DataFrame({"x": [3.0], "y": [3.0], "diameter": [np.nan]})
    with pytest.raises(InputError, match="diameter"):
        disc_mask((8, 8), parts)
    assert disc_mask((8, 8), parts, diameter_px=2).sum() == 5  # a plus sign
    assert disc_mask((8, 8), parts, diameter_px=3).sum() == 9  # corners at 1.41 ≤ 1.5
