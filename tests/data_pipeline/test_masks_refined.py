"""Ground truth from picks: centres recovered from disc masks, refined maps, ignore labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cryoparticle.data.masks import (centres_from_mask, disc_mask, ignore_far, ignore_ring,
                                     refined_mask, target_mask)
from cryoparticle.data.preprocess import bin_mask
from cryoparticle.errors import InputError
from cryoparticle.io.coords import read_cryoppp_csv
from cryoparticle.io.mrc import read_mask
from cryoparticle.picking.evaluate import precision_recall_f1

DATA = Path(__file__).resolve().parents[1] / "data"
NAME = "Falcon_2012_06_12-14_33_35_0"


def _table(xy, d: float) -> pd.DataFrame:
    xy = np.asarray(xy, dtype=float)
    return pd.DataFrame({"micrograph": "m", "x": xy[:, 0], "y": xy[:, 1], "diameter": d,
                         "score": 1.0})


@pytest.mark.parametrize("factor", [1, 4])
def test_centres_from_real_cryoppp_mask_match_its_csv(factor):
    """The CryoPPP mask of one EMPIAR-10017 micrograph (4096², discs of 108 px), full size or
    binned 4× as the DataModule sees it, gives back the 629 picks of its CSV: ≥ 98 % precision
    and recall within 10 px (of the full-size micrograph)."""
    mask = read_mask(DATA / f"{NAME}_mask.png")
    truth = read_cryoppp_csv(DATA / f"{NAME}.csv").assign(micrograph="m")
    assert mask.shape == (4096, 4096) and len(truth) == 629
    if factor > 1:
        mask = bin_mask(mask, (4096 // factor, 4096 // factor))
    picks = centres_from_mask(mask, 108 / factor, micrograph="m")
    picks = picks.assign(x=picks["x"] * factor, y=picks["y"] * factor)
    scores = precision_recall_f1(picks, truth, radius_px=10.0)
    assert scores["precision"] >= 0.98 and scores["recall"] >= 0.98, scores


def test_centres_of_overlapping_discs_are_exact():
    xy = [(40, 40), (70, 45), (55, 70), (150, 150), (160, 165), (20, 180)]  # overlapping trio
    mask = disc_mask((200, 200), _table(xy, 40.0))
    picks = centres_from_mask(mask, 40.0)
    got = np.sort(picks[["x", "y"]].to_numpy(), axis=0)
    assert len(picks) == len(xy)
    np.testing.assert_allclose(got, np.sort(np.asarray(xy, float), axis=0), atol=1.0)
    # connected components would have found 3 particles here
    assert ndimage.label(mask)[1] < len(xy)


def _blob_micrograph(seed: int = 0):
    """Dark Gaussian-edged blobs of radius 6 px inside picks drawn with diameter 24 px."""
    rng = np.random.default_rng(seed)
    size, blob_r = 160, 6.0
    xy = np.array([(30, 30), (90, 35), (130, 120), (40, 120), (100, 90)], dtype=float)
    rows, cols = np.mgrid[:size, :size]
    image = rng.normal(0, 0.3, (size, size)).astype(np.float32)
    truth = np.zeros((size, size), bool)
    for x, y in xy:
        inside = np.hypot(cols - x - 2, rows - y) <= blob_r   # particle slightly off-centre
        truth |= inside
        image[inside] -= 2.0
    return image, _table(xy, 24.0), truth


def _iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_refined_map_follows_the_particle_not_the_disc():
    image, picks, truth = _blob_micrograph()
    discs = disc_mask(image.shape, picks).astype(bool)
    refined = refined_mask(image, picks).astype(bool)
    assert _iou(refined, truth) >= 0.7 and _iou(discs, truth) < 0.3
    assert not (refined & ~discs).any()                     # never outside the picks' discs
    # bright particles (contrast inverted) give the same map
    inverted = refined_mask(-image, picks, contrast="auto").astype(bool)
    assert _iou(inverted, refined) > 0.95


def test_refined_map_keeps_the_disc_where_no_particle_is_visible():
    rng = np.random.default_rng(1)
    image = rng.normal(0, 1, (120, 120)).astype(np.float32)  # pure noise
    picks = _table([(60, 60)], 30.0)
    refined = refined_mask(image, picks, min_area_fraction=0.95)
    np.testing.assert_array_equal(refined, disc_mask(image.shape, picks))


def test_ignore_ring_width_and_far_ignore():
    picks = _table([(50, 50)], 40.0)                        # radius 20
    mask = disc_mask((101, 101), picks)
    ring = ignore_ring(mask, 6)
    rows, cols = np.mgrid[:101, :101]
    rho = np.hypot(cols - 50, rows - 50)
    assert (ring[rho <= 16.5] == 1).all() and (ring[(rho > 18.5) & (rho < 20)] == 255).all()
    assert (ring[(rho > 20.5) & (rho <= 22.5)] == 255).all() and (ring[rho > 24] == 0).all()
    assert ignore_ring(mask, 0).tolist() == mask.tolist()
    far = ignore_far(mask, 10)
    assert (far[rho > 31] == 255).all() and (far[(rho > 21) & (rho < 29)] == 0).all()
    assert (far[rho <= 19.5] == 1).all()
    assert (ignore_far(np.zeros((5, 5), np.uint8), 3) == 255).all()


def test_target_mask_options_and_errors():
    image, picks, _ = _blob_micrograph()
    disc = target_mask(image.shape, picks)
    assert disc.tolist() == disc_mask(image.shape, picks).tolist()
    combined = target_mask(image.shape, picks, target="refined", image=image, ring_px=2,
                           far_ignore_px=20)
    assert set(np.unique(combined)) == {0, 1, 255}
    with pytest.raises(InputError, match="target='blob'"):
        target_mask(image.shape, picks, target="blob")
    with pytest.raises(InputError, match="needs the micrograph"):
        target_mask(image.shape, picks, target="refined")
    with pytest.raises(InputError, match="ring_px"):
        ignore_ring(disc, -1)
