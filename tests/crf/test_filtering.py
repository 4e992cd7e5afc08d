"""Grid filters against the brute-force N×N kernels; intensity levels; bands; separability."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import cryoparticle.crf.filtering as fl
from cryoparticle.crf.filtering import (
    FeatureBilateral,
    IntensityBilateral,
    SpatialGaussian,
    auto_cell,
    exact_filter,
    intensity_levels,
    position_features,
    symmetric_normaliser,
)

H = W = 40


def normalised(filt, v):
    norm = symmetric_normaliser(filt, v)
    return norm * filt(norm * v)


def smooth_image(n=2, h=H, w=W, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, h, w, generator=g)
    return F.avg_pool2d(x, 5, 1, 2)


def test_intensity_levels_maps_percentiles_to_0_and_255_per_image():
    img = torch.stack([torch.linspace(-1, 1, 10000), torch.linspace(0, 100, 10000)]).view(2, 1,
                                                                                        100, 100)
    lev = intensity_levels(img, (0.0, 100.0))
    assert lev.dtype == torch.uint8 and lev.shape == img.shape
    for i in range(2):
        assert int(lev[i].min()) == 0 and int(lev[i].max()) == 255
    # robust percentiles clip outliers; a constant image maps to 0
    spiky = torch.zeros(64, 64)
    spiky[0, 0] = 1e6
    spiky[1:] = torch.linspace(0, 1, 63 * 64).view(63, 64)
    assert int(intensity_levels(spiky)[0, 0]) == 255 and int(intensity_levels(spiky).max()) == 255
    assert int(intensity_levels(torch.full((8, 8), 3.0)).max()) == 0


@pytest.mark.parametrize("sxy,cells_per_sigma", [(1.0, 1.0), (3.0, 1.0), (3.0, 1.5), (6.0, 2.0)])
def test_spatial_gaussian_matches_the_exact_kernel(sxy, cells_per_sigma):
    v = torch.rand(2, 1, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    filt = SpatialGaussian(H, W, sxy, cell=auto_cell(sxy, cells_per_sigma))
    ours = normalised(filt, v)
    exact = exact_filter(v, position_features(2, H, W, sxy), normalise=True)
    # the grid's kernel depends a little on where pixels fall in their cell: a few % at one
    # cell per σ, ≤ 1 % at two; exact (truncated at 4σ) for a one-pixel cell
    bound = 0.003 if filt.cell == 1 else 0.06 / cells_per_sigma
    assert float((ours - exact).abs().max()) < bound
    assert float((ours - exact).abs().mean()) < bound / 4


@pytest.mark.parametrize("sxy,s_level,cells_per_sigma", [(5.0, 7.5, 1.0), (8.0, 7.5, 2.5),
                                                        (20.0, 20.0, 0.8), (20.0, 7.5, 2.5)])
def test_intensity_bilateral_matches_the_exact_kernel(sxy, s_level, cells_per_sigma):
    v = torch.rand(2, 1, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lev = intensity_levels(smooth_image())
    feats = torch.cat([position_features(2, H, W, sxy), lev.double() / s_level], dim=1)
    exact = exact_filter(v, feats, normalise=True)
    cell = auto_cell(sxy, cells_per_sigma)
    for rank in (0, -1):  # exact intensity kernel, low-rank factor
        ours = normalised(IntensityBilateral(lev, sxy, s_level, cell=cell, rank=rank,
                                             dtype=torch.float64), v)
        err = (ours - exact).abs()
        assert float(err.max()) < 0.12 / cells_per_sigma
        assert float(err.mean()) < 0.02 / cells_per_sigma


def test_low_rank_intensity_kernel_is_within_its_tolerance():
    factor = fl._lowrank_factor(13.0 / math.sqrt(3), fl.LEVELS, fl.LOWRANK_TOLERANCE)
    exact = fl.intensity_kernel(13.0 / math.sqrt(3), dtype=torch.float64)
    assert factor.shape[1] < 64
    assert float((factor @ factor.T - exact).abs().max()) <= fl.LOWRANK_TOLERANCE


@pytest.mark.parametrize("nf", [1, 2])
def test_feature_bilateral_matches_the_exact_kernel(nf):
    g = torch.Generator().manual_seed(1)
    v = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    feats = 1.5 * torch.tanh(torch.randn(2, nf, 32, 32, generator=g, dtype=torch.float64))
    feats = F.avg_pool2d(feats, 3, 1, 1)
    sxy = 6.0
    exact = exact_filter(v, torch.cat([position_features(2, 32, 32, sxy), feats], 1),
                         normalise=True)
    ours = normalised(FeatureBilateral(feats, sxy, cell=2, cells_per_sigma=2.0), v)
    assert float((ours - exact).abs().max()) < 0.05
    assert float((ours - exact).abs().mean()) < 0.01


def test_feature_bilateral_gradients_reach_the_features():
    feats = torch.randn(1, 2, 16, 16, dtype=torch.float64, requires_grad=True)
    v = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    out = FeatureBilateral(feats, 4.0, cell=2)(v)
    (out * torch.randn_like(out)).sum().backward()
    assert feats.grad is not None and float(feats.grad.abs().sum()) > 0


def test_bands_equal_one_pass(monkeypatch):
    v = torch.rand(2, 2, 70, 90)
    lev = intensity_levels(smooth_image(2, 70, 90))
    filters = [SpatialGaussian(70, 90, 3.0), IntensityBilateral(lev, 8.0, 7.5, cell=4)]
    whole = [f(v) for f in filters]
    monkeypatch.setattr(fl, "BAND_PIXELS", 2 * 90 * 7)       # bands of a few rows
    assert len(fl.bands(70, 90, 2, 3)) > 5
    for f, ref in zip(filters, whole):
        assert torch.allclose(f(v), ref, atol=1e-5)


def test_separable_normalisers_equal_the_2d_filter():
    v = torch.rand(1, 1, 50, 37, dtype=torch.float64)
    for sxy in (1.0, 3.0, 7.0):
        filt = SpatialGaussian(50, 37, sxy)
        norm, ones = filt.normalisers(v)
        ref_norm = symmetric_normaliser(filt, v)
        assert torch.allclose(norm, ref_norm, atol=1e-12)
        assert torch.allclose(ones, ref_norm * filt(ref_norm), atol=1e-12)


def test_a_batch_filters_each_image_on_its_own():
    v = torch.rand(3, 2, 30, 30)
    lev = intensity_levels(smooth_image(3, 30, 30))
    batch = IntensityBilateral(lev, 6.0, 7.5, cell=3)(v)
    for i in range(3):
        alone = IntensityBilateral(lev[i:i + 1], 6.0, 7.5, cell=3)(v[i:i + 1])
        assert torch.allclose(batch[i:i + 1], alone, atol=1e-5)


@pytest.mark.parametrize("sxy,cells_per_sigma", [(5.0, 1.0), (8.0, 2.5), (20.0, 0.8)])
def test_nearest_slice_matches_the_exact_kernel(sxy, cells_per_sigma):
    """The nearest slice (each pixel reads back its own splat cell) approximates the exact
    bilateral kernel within about twice the bilinear slice's error (measured: max 0.11–0.18,
    mean 0.018–0.023 × cells per σ, bilinear 0.06–0.12 and 0.007–0.014), for one channel and
    for several; that is why it is the default on large images only."""
    v = torch.rand(2, 2, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lev = intensity_levels(smooth_image())
    feats = torch.cat([position_features(2, H, W, sxy), lev.double() / 7.5], dim=1)
    exact = exact_filter(v, feats, normalise=True)
    cell = auto_cell(sxy, cells_per_sigma)
    filt = IntensityBilateral(lev, sxy, 7.5, cell=cell, dtype=torch.float64, slice_mode="nearest")
    assert filt.sample is None                                     # no slice coordinates kept
    for ours in (normalised(filt, v), normalised(filt, v[:, :1])):
        err = (ours - exact[:, :ours.shape[1]]).abs()
        assert float(err.max()) < 0.2 / cells_per_sigma
        assert float(err.mean()) < 0.025 / cells_per_sigma


def test_slice_mode_defaults_to_nearest_on_large_images_at_inference_only(monkeypatch):
    lev = intensity_levels(smooth_image(1, 30, 30))
    assert IntensityBilateral(lev, 6.0, 7.5).slice_mode == "bilinear"
    monkeypatch.setattr(fl, "NEAREST_SLICE_PIXELS", 30 * 30 - 1)
    with torch.no_grad():
        assert IntensityBilateral(lev, 6.0, 7.5).slice_mode == "nearest"
    assert IntensityBilateral(lev, 6.0, 7.5).slice_mode == "bilinear"   # training: as measured
    with pytest.raises(ValueError, match="slice_mode"):
        IntensityBilateral(lev, 6.0, 7.5, slice_mode="cubic")


def test_nearest_slice_in_bands_equals_one_pass(monkeypatch):
    v = torch.rand(2, 2, 70, 90)
    lev = intensity_levels(smooth_image(2, 70, 90))
    filt = IntensityBilateral(lev, 8.0, 7.5, cell=4, slice_mode="nearest")
    whole = [filt(v), filt(v[:, :1])]
    monkeypatch.setattr(fl, "BAND_PIXELS", 2 * 90 * 7)
    assert torch.allclose(filt(v), whole[0], atol=1e-5)
    assert torch.allclose(filt(v[:, :1]), whole[1], atol=1e-5)
