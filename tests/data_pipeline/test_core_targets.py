"""Particle-core targets (real and simulated) and the diameter read off a probability map."""

import math

import numpy as np
import pandas as pd
import pytest

from cryoparticle.config import simulator_config
from cryoparticle.data.masks import core_mask, disc_mask, target_mask
from cryoparticle.errors import InputError
from cryoparticle.picking.extract import estimate_diameter_px, extract_particles
from cryoparticle.simulate.micrograph import MicrographSimulator


def _table(xy, diameter):
    return pd.DataFrame({"micrograph": "m", "x": [p[0] for p in xy], "y": [p[1] for p in xy],
                         "diameter": float(diameter), "score": 1.0})


def test_core_target_separates_overlapping_particles():
    """Two discs of 30 px whose centres are 20 px apart merge; their cores (15 px) do not,
    the rims are ignore (255) and the background stays 0."""
    particles = _table([(40, 50), (60, 50)], 30)
    disc = disc_mask((100, 100), particles)
    assert _components(disc == 1) == 1
    mask = target_mask((100, 100), particles, target="core", disc=disc, core_fraction=0.5)
    assert set(np.unique(mask)) == {0, 1, 255}
    assert _components(mask == 1) == 2
    assert (mask == 1).sum() == pytest.approx(2 * math.pi * 7.5 ** 2, rel=0.12)
    assert ((mask == 255) | (mask == 1)).sum() == disc.sum()  # ignore + core = the discs
    assert (mask[disc == 0] == 0).all()
    with pytest.raises(InputError, match="core_fraction"):
        core_mask(disc, particles, 0.0)


def _components(fg):
    from scipy import ndimage

    return ndimage.label(fg)[1]


def test_simulated_core_labels(sim_cfg):
    cfg = simulator_config("general", ["labels.shape=core", "labels.core_fraction=0.5",
                                       "look.quantise.probability=0"])
    mic = MicrographSimulator(cfg).simulate((3, 1), 160, 160, name="m")
    values = set(np.unique(mic.mask))
    assert values <= {0, 1, 255} and 1 in values and 255 in values
    # every core pixel is within half of some particle's radius of its centre
    rows, cols = np.nonzero(mic.mask == 1)
    xy = mic.particles[["x", "y"]].to_numpy()
    d = mic.particles["diameter"].to_numpy()
    dist = np.hypot(cols[:, None] - xy[None, :, 0], rows[:, None] - xy[None, :, 1]) / (d / 2)
    assert dist.min(axis=1).max() <= 0.5 + 2 / d.min()
    with pytest.raises(InputError, match="labels.shape"):
        MicrographSimulator(simulator_config("general", ["labels.shape=square"]))


@pytest.mark.parametrize("diameter", [12.0, 24.0, 40.0])
def test_diameter_read_off_a_map_of_discs(diameter):
    """Sparse or crowded discs (30 % of the area) of a known diameter: estimated within 10 %;
    extraction with the estimate finds each particle once."""
    rng = np.random.default_rng(int(diameter))
    xy = rng.uniform(0, 400, size=(int(0.3 * 400 ** 2 / (math.pi * diameter ** 2 / 4)), 2))
    prob = disc_mask((400, 400), _table(xy, diameter)).astype(np.float64)
    estimate = estimate_diameter_px(prob, 0.5)
    assert estimate == pytest.approx(diameter, rel=0.1)
    sparse = _table([(x, y) for x in range(30, 380, 70) for y in range(30, 380, 70)], diameter)
    picks = extract_particles(disc_mask((400, 400), sparse).astype(float),
                              estimate_diameter_px(disc_mask((400, 400), sparse), 0.5))
    assert len(picks) == len(sparse)
    assert estimate_diameter_px(np.zeros((50, 50))) is None
    assert estimate_diameter_px(prob, 0.5, max_diameter_px=8.0) == 8.0
    with pytest.raises(InputError, match="max_diameter_px"):
        estimate_diameter_px(prob, 0.5, min_diameter_px=10.0, max_diameter_px=5.0)
