import numpy as np
import pytest
import torch

from cryoparticle.errors import InputError
from cryoparticle.simulate.noise import add_noise, ice_gradient, noise_sigma, rfft2_variance


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (63, 45)])
def test_parseval_variance_matches_direct(shape):
    x = torch.randn(shape, dtype=torch.float64) * 3 + 2
    assert rfft2_variance(torch.fft.rfft2(x), shape) == pytest.approx(float(x.var(unbiased=False)),
                                                                      rel=1e-9)


@pytest.mark.parametrize("snr", [0.05, 0.1, 1.0])
def test_gaussian_noise_calibrated_to_snr(snr):
    g = torch.Generator().manual_seed(0)
    signal = torch.sin(torch.linspace(0, 40, 512 * 512)).reshape(512, 512) * 2.0
    sigma = noise_sigma(float(signal.var()), snr)
    noisy = add_noise(signal, sigma, g)
    measured = float(signal.var() / (noisy - signal).var())
    assert measured == pytest.approx(snr, rel=0.02)


def test_shot_noise_total_variance_matches_target():
    g = torch.Generator().manual_seed(1)
    signal = torch.randn(512, 512) * 0.5
    sigma = noise_sigma(float(signal.var()), 0.1)
    noisy = add_noise(signal, sigma, g, shot_noise=True, dose_per_pixel=40.0, image_contrast=0.1)
    assert float((noisy - signal).var()) == pytest.approx(sigma**2, rel=0.05)
    # counts are discrete: the noisy image takes few distinct values per unit of the scale
    assert noisy.unique().numel() < noisy.numel()


def test_snr_must_be_positive():
    with pytest.raises(InputError, match="snr"):
        noise_sigma(1.0, 0.0)


def test_ice_gradient_is_low_frequency_and_normalised():
    f = ice_gradient(256, 320, np.random.default_rng(0))
    assert f.shape == (256, 320)
    assert abs(float(f.mean())) < 0.05 and float(f.std()) == pytest.approx(1.0, rel=0.05)
    power = torch.fft.rfft2(f).abs() ** 2
    low = power[:8, :8].sum() + power[-8:, :8].sum()
    assert low / power.sum() > 0.95
