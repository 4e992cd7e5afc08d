import numpy as np
import pytest
import torch

from cryoparticle.data.preprocess import (NORMALISATION, bin_mask, bin_to_pixel_size,
                                          fourier_bin, standardise)
from cryoparticle.errors import InputError


def test_standardise_numpy_and_torch():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, (40, 30))
    out = standardise(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-5
    t = standardise(torch.as_tensor(x))
    assert t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), out, atol=1e-6)
    assert not standardise(np.full((4, 4), 7.0)).any()
    assert not standardise(torch.full((4, 4), 7.0)).any()
    assert NORMALISATION == "per_micrograph_standardise"


def test_fourier_bin_keeps_low_frequency_sinusoid_and_mean_on_non_square():
    height, width = 120, 90
    rows, cols = np.mgrid[:height, :width]
    # 3 periods along x and 2 along y: far below the binned Nyquist frequency.
    image = 4.0 + 2.0 * np.cos(2 * np.pi * 3 * cols / width) * np.cos(2 * np.pi * 2 * rows / height)
    binned = fourier_bin(image, 3.0)
    assert binned.shape == (40, 30) and binned.dtype == np.float32
    r, c = np.mgrid[:40, :30]
    expected = 4.0 + 2.0 * np.cos(2 * np.pi * 3 * c / 30) * np.cos(2 * np.pi * 2 * r / 40)
    np.testing.assert_allclose(binned, expected, atol=1e-4)
    noise = np.random.default_rng(1).normal(size=(101, 77))
    out = fourier_bin(noise, 2.5)
    assert out.shape == (round(101 / 2.5), round(77 / 2.5))
    assert out.mean() == pytest.approx(noise.mean(), abs=1e-6)
    # factor 1 returns the input as float32
    same = fourier_bin(noise, 1)
    assert same.dtype == np.float32 and np.array_equal(same, noise.astype(np.float32))
    with pytest.raises(InputError, match="factor"):
        fourier_bin(noise, 0.5)


def test_fourier_bin_is_a_lowpass_not_a_decimation():
    # A checkerboard is pure Nyquist: decimation would keep it, Fourier cropping removes it.
    rows, cols = np.mgrid[:64, :64]
    board = ((rows + cols) % 2).astype(np.float32)
    out = fourier_bin(board, 2)
    np.testing.assert_allclose(out, 0.5, atol=1e-5)


def test_bin_to_pixel_size_factor_and_refuses_upsampling():
    image = np.random.default_rng(2).normal(size=(100, 60)).astype(np.float32)
    binned, factor = bin_to_pixel_size(image, 1.77, 7.08)
    assert binned.shape == (25, 15) and factor == 4.0
    binned, factor = bin_to_pixel_size(image, 1.0, 3.0)
    assert binned.shape == (33, 20) and factor == pytest.approx(100 / 33)
    same, factor = bin_to_pixel_size(image, 2.0, 2.0)
    assert factor == 1.0 and np.array_equal(same, image)
    with pytest.raises(InputError, match="target_pixel_size_a.*finer"):
        bin_to_pixel_size(image, 2.0, 1.0)


def test_bin_mask_area_majority_keeps_ignore_and_geometry():
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[10:20, 30:50] = 1
    mask[:4, :4] = 255
    out = bin_mask(mask, (20, 30))
    assert out.shape == (20, 30) and set(np.unique(out)) == {0, 1, 255}
    # the particle rectangle lands at half the coordinates (binned pixel i ≙ input 2i)
    rows, cols = np.nonzero(out == 1)
    assert rows.min() == 5 and rows.max() == 9 and cols.min() == 15 and cols.max() == 24
    assert (out[:2, :2] == 255).all()


@pytest.mark.parametrize("shape,factor", [((40, 30), 1.6), ((41, 33), 2.0), ((32, 48), 1.25)])
def test_fourier_pad_resamples_a_band_limited_image_exactly(shape, factor):
    """A sum of sinusoids below the Nyquist frequency, evaluated analytically on the finer grid
    (output pixel i at input coordinate i × H / h), is the reference; binning the result back
    returns the original."""
    from cryoparticle.data.preprocess import fourier_pad

    height, width = shape

    def signal(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return (1.3 + np.cos(2 * np.pi * (3 * y / height + 0.4))
                + 0.5 * np.sin(2 * np.pi * (5 * x / width + 7 * y / height))
                + 0.3 * np.cos(2 * np.pi * ((width - 1) // 2) * x / width + 0.7))

    rows, cols = np.mgrid[:height, :width].astype(float)
    image = signal(rows, cols)
    out = fourier_pad(image, factor)
    h, w = out.shape
    assert (h, w) == (round(height * factor), round(width * factor)) and out.dtype == np.float32
    fine_rows, fine_cols = np.mgrid[:h, :w].astype(float)
    np.testing.assert_allclose(out, signal(fine_rows * height / h, fine_cols * width / w),
                               atol=1e-5)
    np.testing.assert_allclose(fourier_bin(out, h / height), image, atol=1e-5)
    assert fourier_pad(image, 1.0).shape == shape
    with pytest.raises(InputError):
        fourier_pad(image, 0.5)
