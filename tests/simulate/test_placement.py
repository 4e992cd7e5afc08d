import numpy as np
import pytest
from scipy.spatial.distance import pdist

from cryoparticle.errors import InputError
from cryoparticle.simulate.placement import max_particles, place_particles


def test_minimum_distance_respected_and_inside():
    rng = np.random.default_rng(0)
    xy = place_particles(200, 300, 500, 20.0, rng)
    assert xy.shape == (200, 2)
    assert pdist(xy).min() >= 20.0
    assert (xy[:, 0] >= 0).all() and (xy[:, 0] < 500).all()
    assert (xy[:, 1] >= 0).all() and (xy[:, 1] < 300).all()
    # centres reach the border: particles are cut by the edge
    assert (xy[:, 0] < 10).any() and (xy[:, 0] > 490).any()


def test_overlap_allowed_when_asked():
    xy = place_particles(400, 200, 200, 0.0, np.random.default_rng(1))
    assert pdist(xy).min() < 5  # dense enough that some centres are close


def test_exclusion_respected():
    excluded = lambda xy: xy[:, 0] < 100  # noqa: E731
    xy = place_particles(50, 200, 200, 10.0, np.random.default_rng(2), excluded=excluded)
    assert (xy[:, 0] >= 100).all()


def test_same_seed_same_positions():
    a = place_particles(30, 100, 100, 8.0, np.random.default_rng(5))
    b = place_particles(30, 100, 100, 8.0, np.random.default_rng(5))
    assert np.array_equal(a, b)


def test_too_many_particles_is_an_input_error():
    n = max_particles(100, 100, 20.0) + 1
    with pytest.raises(InputError, match="n_particles"):
        place_particles(n, 100, 100, 20.0, np.random.default_rng(0))
    with pytest.raises(InputError, match="n_particles"):  # everything excluded
        place_particles(5, 100, 100, 5.0, np.random.default_rng(0),
                        excluded=lambda xy: np.ones(len(xy), bool))
