"""The general simulator (conf/simulator/general.yaml): each ingredient has its claimed effect."""

import math

import numpy as np
import pytest
import torch

from cryoparticle.config import simulator_config
from cryoparticle.simulate.looks import Look, apply_look, draw_look, gaussian_lowpass, wiener
from cryoparticle.simulate.micrograph import MicrographSimulator
from cryoparticle.simulate.noise import coloured_noise
from cryoparticle.simulate.species import blob_volume
from cryoparticle.simulate.volume import volume_diameter_a

QUIET = ["contaminants.ice_blobs.probability=0", "contaminants.aggregates.probability=0",
         "contaminants.carbon_edge.probability=0", "noise.ice_gradient=0",
         "look=null", "particles.empty_probability=0", "++contrast.flip_probability=0"]


@pytest.fixture(scope="module")
def general():
    # a small pool of blob shapes: each costs a projector (tens of ms) the first time
    return MicrographSimulator(simulator_config("general", ["volume.blobs.pool_size=8",
                                                            "particles.empty_probability=0"]))


def _radial(power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radial average of a centred 2-D power spectrum: (frequency in cycles/px, power)."""
    n = power.shape[0]
    c = np.arange(n) - n // 2
    r = np.hypot(c[:, None], c[None, :]).round().astype(int)
    total = np.bincount(r.ravel(), power.ravel())
    count = np.bincount(r.ravel())
    k = np.arange(len(total)) / n
    return k[1:n // 2], (total / np.maximum(count, 1))[1:n // 2]


def _spectrum(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = np.fft.fftshift(np.fft.fft2(x.numpy().astype(np.float64)))
    return _radial(np.abs(f) ** 2)


def test_same_seed_same_micrograph_every_look(general):
    a, b = general.simulate((5, 1), 128), general.simulate((5, 1), 128)
    c = general.simulate((5, 2), 128)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.metadata == b.metadata
    assert not np.array_equal(a.image, c.image)


def test_measured_snr_matches_the_drawn_snr():
    """Same seed, noise scaled to nothing: the noiseless image; the residual is the noise."""
    # drawn in the upper decade, where one 512² micrograph measures the SNR to a few %
    noisy = MicrographSimulator(simulator_config("general", QUIET + ["noise.snr=[0.05,0.5]"]))
    clean = MicrographSimulator(simulator_config("general", QUIET + ["noise.snr=[1e9,1e9]"]))
    ratios = []
    for seed in range(4):
        a, b = noisy.simulate((9, seed), 512), clean.simulate((9, seed), 512)
        assert np.array_equal(a.mask, b.mask)
        x, s = a.image.astype(np.float64), b.image.astype(np.float64)
        alpha = (x * s).mean() / (s * s).mean()
        measured = alpha**2 * s.var() / (x - alpha * s).var()
        assert 0.05 <= a.metadata["snr"] <= 0.5
        ratios.append(measured / a.metadata["snr"])
    # one micrograph's estimate scatters by several % (1/f noise and large smooth particles
    # have few independent low-frequency samples); a wrong SNR definition is a bias
    assert all(0.88 <= r <= 1.12 for r in ratios), ratios
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.04), ratios


def test_snr_is_log_uniform_over_the_range(general):
    snrs = np.array([general.simulate((11, i), 32).metadata["snr"] for i in range(150)])
    assert snrs.min() >= 0.005 and snrs.max() <= 0.5
    # log-uniform: the geometric midpoint 0.05 splits the draws in half (±2.7 σ)
    assert 0.39 < (snrs < 0.05).mean() < 0.61


def test_pink_noise_spectrum_slope_and_detector_mtf():
    gen = torch.Generator().manual_seed(0)
    pink = coloured_noise((256, 256), 2.0, gen, pink_fraction=1.0, pink_exponent=1.5)
    assert float(pink.std()) == pytest.approx(2.0, rel=1e-4)
    k, p = _spectrum(pink)
    sel = (k > 0.02) & (k < 0.4)
    slope = np.polyfit(np.log(k[sel]), np.log(p[sel]), 1)[0]
    assert slope == pytest.approx(-1.5, abs=0.1)
    blurred = coloured_noise((256, 256), 1.0, gen, mtf_at_nyquist=0.3)
    k, p = _spectrum(blurred)
    low, nyquist = p[(k > 0.01) & (k < 0.05)].mean(), p[k > 0.47].mean()
    assert nyquist / low == pytest.approx(0.3**2, rel=0.2)  # power ∝ MTF²


def test_quantised_and_jpeg_looks_are_8_bit_levels():
    rng = np.random.default_rng(0)
    signal = torch.from_numpy(rng.normal(size=(128, 128)).astype(np.float32))
    noise = torch.from_numpy(rng.normal(size=(128, 128)).astype(np.float32))
    png = apply_look(signal, noise, Look(quantise=True, std_levels=10.0), 7.08)
    jpg = apply_look(signal, noise, Look(quantise=True, std_levels=10.0, jpeg_quality=70), 7.08)
    for out in (png, jpg):
        assert np.array_equal(out, np.round(out)) and out.min() >= 0 and out.max() <= 255
    assert png.std() == pytest.approx(10.0, rel=0.02) and png.mean() == pytest.approx(128, abs=1)
    assert not np.array_equal(png, jpg)  # compressed: blocks differ from the plain 8-bit image
    few = apply_look(signal, noise, Look(quantise=True, std_levels=1.8), 7.08)
    assert len(np.unique(few)) < 20  # like the EMPIAR-10947 PNGs (19 grey levels)


def test_simulated_8_bit_look_keeps_at_most_256_levels():
    sim = MicrographSimulator(simulator_config("general", [
        "look.upsample_factors=[1]", "look.upsample_probabilities=[1]",
        "look.quantise.probability=1", "look.jpeg.probability=1"]))
    mic = sim.simulate((1, 1), 128)
    assert mic.metadata["look"]["jpeg_quality"] is not None
    assert len(np.unique(mic.image)) <= 256


def test_wiener_and_learned_denoising_remove_noise():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:128, :128]
    signal = torch.from_numpy(np.exp(-((xx - 64) ** 2 + (yy - 64) ** 2) / 200.0).astype(
        np.float32))
    noise = torch.from_numpy(0.3 * rng.normal(size=(128, 128)).astype(np.float32))
    error = float((wiener(signal, noise) - signal).square().mean())
    assert error < 0.2 * float(noise.square().mean())
    learned = apply_look(signal, noise, Look(denoise="learned", learned_signal_sigma_a=7.08,
                                             learned_residual=0.1,
                                             learned_residual_sigma_a=70.8), 7.08)
    assert (learned - signal.numpy()).std() < 0.25 * float(noise.std())


def test_upsampled_look_returns_the_micrograph_size():
    rng = np.random.default_rng(2)
    s = gaussian_lowpass(torch.from_numpy(rng.normal(size=(64, 96)).astype(np.float32)), 2.0)
    out = apply_look(s, torch.zeros_like(s), Look(upsample=4), 7.08)
    assert out.shape == (64, 96)
    assert np.allclose(out, s.numpy(), atol=1e-5)  # no processing: the round trip is exact
    fine = apply_look(s, torch.zeros_like(s), Look(upsample=4, quantise=True, std_levels=5.0),
                      7.08)
    coarse = apply_look(s, torch.zeros_like(s), Look(quantise=True, std_levels=5.0), 7.08)
    # 8 bits at 4× finer pixels, then binned: finer than 8 bits at the micrograph's pixels
    assert len(np.unique(fine)) > 10 * len(np.unique(coarse))


def test_looks_are_drawn_with_the_configured_probabilities():
    cfg = simulator_config("general").look
    rng = np.random.default_rng(3)
    looks = [draw_look(cfg, rng) for _ in range(2000)]
    quantised = np.mean([lk.quantise for lk in looks])
    assert quantised == pytest.approx(cfg.quantise.probability, abs=0.04)
    learned = np.mean([lk.denoise == "learned" for lk in looks])
    p = cfg.denoise.probabilities
    assert learned == pytest.approx(p.learned / sum(p.values()), abs=0.04)
    jpeg = [lk.jpeg_quality for lk in looks if lk.jpeg_quality is not None]
    assert min(jpeg) >= 60 and max(jpeg) <= 95


def test_disc_labels_have_the_area_of_the_particle_disc():
    sim = MicrographSimulator(simulator_config("general", QUIET + [
        "pixel_size_scale=null", "particles.count=1",
        "volume.species=[{source: default, particle_diameter_a: 190.0, weight: 1.0}]"]))
    mic = sim.simulate((0, 0), 256, n_particles=1)
    x, y = mic.particles[["x", "y"]].to_numpy()[0]
    r = 190 / 7.08 / 2
    if r <= x < 256 - r and r <= y < 256 - r:  # wholly inside
        assert mic.mask.sum() == pytest.approx(math.pi * r * r, rel=0.03)
    yy, xx = np.mgrid[:256, :256]
    assert np.array_equal(mic.mask.astype(bool), np.hypot(xx - x, yy - y) <= r)


def test_contrast_flip_inverts_the_micrograph():
    flip = MicrographSimulator(simulator_config("general", QUIET[:-1] + [
        "++contrast.flip_probability=1"]))
    keep = MicrographSimulator(simulator_config("general", QUIET))
    a, b = flip.simulate((4, 4), 128), keep.simulate((4, 4), 128)
    assert a.metadata["contrast_flipped"] and not b.metadata["contrast_flipped"]
    assert np.allclose(a.image, -b.image, atol=1e-5)


def test_low_frequency_gain_sets_the_mean_particle_contrast():
    def disc_contrast(gain: float) -> float:
        sim = MicrographSimulator(simulator_config("general", QUIET + [
            f"++contrast.low_frequency_gain={gain}",
            "++contrast.low_frequency_cutoff_diameters=0.5", "noise.snr=1.0"]))
        values = []
        for i in range(4):
            mic = sim.simulate((6, i), 256)
            m = mic.mask.astype(bool)
            values.append(mic.image[m].mean() - mic.image[~m].mean())
        return float(np.mean(values))

    strong, none, inverted = disc_contrast(1.0), disc_contrast(0.0), disc_contrast(-1.0)
    assert strong < -0.5 and abs(none) < 0.2 and inverted > 0.5  # dark, faint, bright


def test_blob_diameters_within_the_configured_range():
    rng = np.random.default_rng(0)
    for d in (80.0, 150.0, 320.0):
        for _ in range(3):
            vol = blob_volume(d, 7.08, rng)
            measured = volume_diameter_a(vol, 7.08)
            assert 0.6 * d <= measured <= d + 2 * 7.08


def test_blob_species_come_from_the_configured_diameter_range(general):
    lo, hi = general.cfg.volume.blobs.diameter_a
    diameters = [general.blob_species(i).diameter_a for i in range(8)]
    assert all(lo <= d <= hi for d in diameters) and len(set(diameters)) == 8
    assert general.blob_species(3) is general.blob_species(3)  # kept while recently used
    assert len(general._blob_cache) <= general.cfg.volume.blobs.cache_size


def test_pixel_size_jitter_changes_particle_size_in_pixels(general):
    ratios = []
    for i in range(40):
        mic = general.simulate((8, i), 64)
        scale = mic.metadata["true_pixel_size_a"] / general.pixel_size_a
        assert 0.77 <= scale <= 1.3 and mic.pixel_size_a == 7.08  # labelled nominal
        if len(mic.particles):
            d_a = np.array(mic.metadata["particle_diameter_a"])
            true_px = mic.metadata["true_pixel_size_a"]
            assert set(np.round(mic.particles.diameter * true_px, 6)) <= set(np.round(d_a, 6))
        ratios.append(scale)
    assert max(ratios) / min(ratios) > 1.4  # particle sizes in pixels vary by ±30 %


def test_crowded_micrographs_cover_most_of_the_area():
    sim = MicrographSimulator(simulator_config("general", QUIET + [
        "particles.coverage=[0.6,0.6]", "particles.min_distance_diameters=[0.6,0.6]",
        "volume.species=[{source: apoferritin, particle_diameter_a: 130.0, weight: 1.0}]"]))
    fractions = [sim.simulate((2, i), 256).mask.mean() for i in range(3)]
    assert min(fractions) > 0.4  # CryoPPP's crowded sets: 54–63 % particle pixels


def test_empty_probability_gives_micrographs_of_empty_ice():
    def counts(probability: float) -> list[int]:
        quiet = [q for q in QUIET if not q.startswith("particles.empty_probability")]
        sim = MicrographSimulator(simulator_config("general", quiet + [
            f"particles.empty_probability={probability}", "particles.coverage=[0.3,0.3]"]))
        micrographs = [sim.simulate((4, i), 128) for i in range(40)]
        if probability == 1.0:  # no particle, no label, but still a noisy micrograph
            assert all(m.mask.max() == 0 and float(m.image.std()) > 0 for m in micrographs)
        return [len(m.particles) for m in micrographs]

    assert min(counts(0.0)) > 0
    assert max(counts(1.0)) == 0
    n_empty = sum(c == 0 for c in counts(0.5))
    assert 10 <= n_empty <= 30  # Binomial(40, 0.5): outside [10, 30] with p < 0.002
    with pytest.raises(ValueError, match="empty_probability"):
        MicrographSimulator(simulator_config("general", ["particles.empty_probability=1.5"]))


def test_aggregation_clusters_particles():
    def nearest(probability: float) -> float:
        sim = MicrographSimulator(simulator_config("general", QUIET + [
            f"particles.aggregation.probability={probability}",
            "particles.aggregation.fraction=[0.9,0.9]", "particles.coverage=[0.1,0.1]"]))
        d = []
        for i in range(4):
            xy = sim.simulate((3, i), 256).particles[["x", "y"]].to_numpy()
            dist = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
            np.fill_diagonal(dist, np.inf)
            d.append(np.median(dist.min(1)))
        return float(np.mean(d))

    assert nearest(1.0) < 0.8 * nearest(0.0)


def test_species_are_drawn_by_weight(general):
    names = [tuple(general.simulate((12, i), 32).metadata["species"])[0] for i in range(60)]
    assert {"default", "apoferritin", "blobs"} == set(names)
