import numpy as np
import pytest
from scipy import ndimage

from cryoparticle.config import simulator_config
from cryoparticle.errors import InputError
from cryoparticle.simulate.micrograph import MicrographSimulator


def test_micrograph_record(simulator):
    mic = simulator.simulate((0, 0), 256, 192, name="m0")
    assert mic.image.shape == (256, 192) and mic.image.dtype == np.float32
    assert mic.mask.shape == (256, 192) and set(np.unique(mic.mask)) <= {0, 1}
    assert abs(mic.image.mean()) < 1e-4 and abs(mic.image.std() - 1) < 1e-3
    assert mic.pixel_size_a == pytest.approx(7.08)
    p = mic.particles
    assert {"micrograph", "x", "y", "diameter", "score", "angle_rot", "angle_tilt", "angle_psi",
            "defocus_u_a", "defocus_v_a"} <= set(p.columns)
    assert len(p) == mic.metadata["n_particles"] > 0
    assert p["diameter"].iloc[0] == pytest.approx(190 / 7.08)
    assert ((p.x >= 0) & (p.x < 192) & (p.y >= 0) & (p.y < 256)).all()
    assert 10000 <= p.defocus_u_a.iloc[0] <= 31000


def test_labels_sit_on_the_particles(simulator):
    mic = simulator.simulate((0, 1), 256, name="m1")
    p = mic.particles
    xi, yi = p.x.to_numpy(int), p.y.to_numpy(int)
    # every particle centre (x = column, y = row) is inside the mask, labelled with its own id
    assert mic.mask[yi, xi].all()
    inst = mic.instances[yi, xi]
    assert (inst > 0).all()
    own = inst == np.arange(1, len(p) + 1)
    assert own.mean() > 0.8  # a later, overlapping particle may take the centre pixel
    assert ((mic.instances > 0) == (mic.mask == 1)).all()
    # the noiseless particles are dark where the mask is (underfocus contrast) on average
    assert mic.image[mic.mask == 1].mean() < mic.image[mic.mask == 0].mean()


def test_same_seed_same_micrograph_other_seed_differs(simulator):
    a = simulator.simulate((3, 4), 128)
    b = simulator.simulate((3, 4), 128)
    c = simulator.simulate((3, 5), 128)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.particles.equals(b.particles)
    assert not np.array_equal(a.image, c.image)


def test_snr_of_the_simulated_image():
    sim = MicrographSimulator(simulator_config(overrides=[
        "noise.snr=0.05", "noise.ice_gradient=0", "contaminants.ice_blobs.probability=0",
        "contaminants.aggregates.probability=0", "contaminants.carbon_edge.probability=0"]))
    mic = sim.simulate((0, 2), 256)
    # after normalisation the image variance is (signal + noise) / total: signal share = snr/(1+snr)
    meta = mic.metadata
    ratio = meta["signal_variance"] / meta["noise_sigma"] ** 2
    assert ratio == pytest.approx(0.05, rel=1e-6)


def test_contaminants_are_background_and_particles_avoid_them():
    sim = MicrographSimulator(simulator_config(overrides=[
        "contaminants.ice_blobs.probability=1", "contaminants.ice_blobs.count=[3,3]",
        "contaminants.ice_blobs.density=20", "contaminants.carbon_edge.probability=1",
        "contaminants.aggregates.probability=0", "noise.snr=100", "noise.ice_gradient=0"]))
    mic = sim.simulate((0, 3), 384)
    assert mic.metadata["n_contaminant_bodies"] == 3 and mic.metadata["carbon_edge"]
    dark = mic.image < np.percentile(mic.image, 2)
    # the darkest pixels are contaminant, and they are labelled background
    big = ndimage.binary_opening(dark, iterations=2)
    assert big.sum() > 50
    assert mic.mask[big].mean() < 0.05


def test_overlap_when_min_distance_small():
    sim = MicrographSimulator(simulator_config(overrides=[
        "particles.min_distance_a=20", "particles.count=150"]))
    mic = sim.simulate((0, 4), 160)
    d = np.hypot(*(mic.particles[["x", "y"]].to_numpy()[:, None] -
                   mic.particles[["x", "y"]].to_numpy()[None]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert d.min() < 190 / 7.08  # some particles closer than one diameter: they overlap


@pytest.mark.parametrize("override,name", [
    ("noise.snr=0", "snr"), ("noise.snr=-1", "snr"), ("microscope.defocus_um=[-1,2]", "defocus_um"),
    ("pixel_size_a=0", "pixel_size_a"), ("particles.min_distance_a=-5", "min_distance_a"),
    ("volume.source=/nonexistent/map.mrc", "map.mrc")])
def test_bad_parameters_are_input_errors(override, name):
    with pytest.raises(InputError, match=name):
        MicrographSimulator(simulator_config(overrides=[override]))


def test_too_many_particles(simulator):
    with pytest.raises(InputError, match="n_particles"):
        simulator.simulate((0, 0), 64, n_particles=500)


def test_trailing_zero_seeds_are_distinct(simulator):
    # numpy's SeedSequence ignores trailing zeros; our seeds must not
    a = simulator.simulate((0, 0), 64)
    b = simulator.simulate((0, 0, 0), 64)
    assert not np.array_equal(a.image, b.image)
