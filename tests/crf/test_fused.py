"""The fused two-class inference of large images (crf/fused.py), forced onto small images by
lowering the size threshold: against a direct dense mean-field with the same grid filters,
against the brute-force CRF, with a non-Potts compatibility, threads, batches, the binned
intensity axis and extreme logits."""

from __future__ import annotations

import math

import pytest
import torch

import cryoparticle.crf.filtering as fl
from cryoparticle.crf.filtering import (
    IntensityBilateral,
    SpatialGaussian,
    intensity_levels,
    symmetric_normaliser,
)
from cryoparticle.crf.meanfield import MeanFieldCRF, exact_mean_field

from .conftest import disc_scene

PARAMS = {"spatial_sxy": 3.0, "spatial_weight": 3.0, "bilateral_sxy": 8.0,
          "bilateral_srgb": 13.0, "bilateral_weight": 3.0}


@pytest.fixture
def fused(monkeypatch):
    """Every image takes the fused path (and the reference's bilateral slice is nearest)."""
    monkeypatch.setattr(fl, "NEAREST_SLICE_PIXELS", 0)


def reference(crf: MeanFieldCRF, logits: torch.Tensor, image: torch.Tensor,
              compat: torch.Tensor, n_iterations: int = 10) -> torch.Tensor:
    """Dense mean-field on all classes (softmax, messages, compatibility), float64, with the
    filters of crf/filtering.py the fused path stands for: SpatialGaussian (bilinear slice) and
    IntensityBilateral (nearest slice, low-rank intensity kernel), each normalised as
    D^{-1/2} K D^{-1/2}."""
    h, w = logits.shape[-2:]
    spatial_cell, bilateral_cell = crf.grid_cells(h, w)
    levels = intensity_levels(image[:, 0], crf.percentiles)
    s_level = crf._value("bilateral_srgb") / math.sqrt(3)
    kernels = [(float(crf.spatial_weight),
                SpatialGaussian(h, w, crf._value("spatial_sxy"), spatial_cell)),
               (float(crf.bilateral_weight),
                IntensityBilateral(levels, crf._value("bilateral_sxy"), s_level,
                                   cell=bilateral_cell, rank=-1, dtype=torch.float64,
                                   slice_mode="nearest"))]
    x = logits.double()
    log_p = x.log_softmax(1).clamp_min(math.log(crf.unary_clip))
    norms = [symmetric_normaliser(filt, x[:, :1]) for _, filt in kernels]
    scores = log_p
    for _ in range(n_iterations):
        q = scores.softmax(1)
        messages = sum(wk * nk * filt(nk * q) for (wk, filt), nk in zip(kernels, norms))
        scores = log_p - torch.einsum("lm,nmhw->nlhw", compat.double(), messages)
    return scores.log_softmax(1)


@pytest.mark.parametrize("band_pixels,spatial_sxy", [(None, 3.0), (64 * 6, 3.0), (64 * 6, 1.3)])
def test_fused_path_equals_the_direct_mean_field_with_the_same_filters(fused, monkeypatch,
                                                                      band_pixels, spatial_sxy):
    """One band, or bands of 6 rows: those away from the borders take the scalar row weights
    of the spatial kernel; spatial cells of 2 pixels, or of 1 (σ = 1.3: an exact convolution)."""
    if band_pixels:
        monkeypatch.setattr(fl, "BAND_PIXELS", band_pixels)
    logits, image, _ = disc_scene(64, 3, n_discs=6)
    crf = MeanFieldCRF(**{**PARAMS, "spatial_sxy": spatial_sxy},
                       intensity_cells_per_sigma=None).double()             # 256 levels
    assert crf.grid_cells(64, 64)[0] == (2 if spatial_sxy == 3.0 else 1)
    assert crf._fused(logits)
    with torch.no_grad():
        ours = crf(logits.double(), image.double())
    ref = reference(crf, logits, image, 1 - torch.eye(2))
    assert float((ours.exp() - ref.exp()).abs().max()) < 1e-9          # measured 1e-14
    assert torch.allclose(ours.logsumexp(1), torch.zeros(1, 64, 64, dtype=torch.float64),
                          atol=1e-12)
    # a compatibility that is not Potts: the F(1) term of the two-class iteration
    compat = torch.tensor([[0.2, 1.5], [0.7, -0.1]])
    crf.compatibility.data = compat.double()
    with torch.no_grad():
        ours = crf(logits.double(), image.double())
    ref = reference(crf, logits, image, compat)
    assert float((ours.exp() - ref.exp()).abs().max()) < 1e-9          # measured 1e-14


@pytest.mark.parametrize("cells_per_sigma", [None, 1.0])
def test_fused_path_matches_the_brute_force_dense_mean_field(fused, cells_per_sigma):
    """Binned intensity axis (1 bin per bandwidth: 7-level bins) or 256 levels, against the
    explicit N×N kernels: labels ≥ 99 %, marginals as the unfused path's test."""
    params = {"bilateral_sxy": 8.0, "bilateral_weight": 5.0}
    for seed in range(2):
        logits, image, _ = disc_scene(48, seed)
        exact = exact_mean_field(logits, image, **params)
        with torch.no_grad():
            ours = MeanFieldCRF(**params, intensity_cells_per_sigma=cells_per_sigma)(logits,
                                                                                    image)
        assert float((ours.argmax(1) == exact.argmax(1)).double().mean()) >= 0.99
        dq = (ours.double().exp() - exact.exp()).abs()
        assert float(dq.mean()) <= 0.005 and float(dq.max()) <= 0.3


def test_binned_intensity_axis_is_close_to_the_256_levels(fused):
    logits, image, _ = disc_scene(96, 1, n_discs=8)
    with torch.no_grad():
        full = MeanFieldCRF(**PARAMS, intensity_cells_per_sigma=None)(logits, image)
        binned = MeanFieldCRF(**PARAMS, intensity_cells_per_sigma=1.0)(logits, image)
    assert float((full.exp() - binned.exp()).abs().mean()) < 2e-3
    assert float((full.argmax(1) == binned.argmax(1)).double().mean()) >= 0.995


def test_fused_workers_batches_and_bands(fused, monkeypatch):
    scenes = [disc_scene(40, s) for s in range(2)]
    logits = torch.cat([s[0] for s in scenes])
    image = torch.cat([s[1] for s in scenes])
    with torch.no_grad():
        one = MeanFieldCRF(**PARAMS)(logits, image)
        alone = torch.cat([MeanFieldCRF(**PARAMS)(logits[i:i + 1], image[i:i + 1])
                           for i in range(2)])
        monkeypatch.setattr(fl, "BAND_PIXELS", 2 * 40 * 4)          # many bands of 3 rows
        banded = MeanFieldCRF(**PARAMS)(logits, image)
        two = MeanFieldCRF(**PARAMS, workers=2)(logits, image)
    assert torch.allclose(one, alone, atol=1e-5)
    assert torch.allclose(one, banded, atol=1e-5)
    assert torch.allclose(one, two, atol=1e-5)


def test_extreme_logits_without_clipping_keep_exact_log_probabilities(fused):
    logits, image, _ = disc_scene(32, 0)
    logits = logits * 60.0                                   # |s₁ − s₀| up to hundreds
    crf = MeanFieldCRF(**PARAMS, unary_clip=None, n_iterations=2)
    with torch.no_grad():
        out = crf(logits, image)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.logsumexp(1), torch.zeros(1, 32, 32), atol=1e-5)
    z = out[:, 1] - out[:, 0]                               # the final logit difference
    assert float(z.abs().max()) > 100
    assert torch.allclose(out[:, 1], -torch.nn.functional.softplus(-z), atol=1e-4)


def test_intensity_cells_per_sigma_is_checked():
    from cryoparticle.errors import InputError

    for value in (0.1, "two", True):
        with pytest.raises(InputError):
            MeanFieldCRF(intensity_cells_per_sigma=value)


@pytest.mark.parametrize("level_bin", [1, 3, 7, 16])
def test_bilateral_grid_cell_of_every_pixel(level_bin):
    """The int32 grid cell, computed in floating point, equals the integer formula: (image, cell
    row, cell column, floor(level / bin)), row-major."""
    from cryoparticle.crf.fused import BilateralTerm

    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 256, (2, 50, 70), generator=g, dtype=torch.uint8)
    levels[0, 0, :4] = torch.tensor([0, 255, level_bin, level_bin - 1], dtype=torch.uint8)
    term = BilateralTerm(levels, 8.0, 7.5, cell=8, level_bin=level_bin, scale=1.0,
                         dtype=torch.float32)
    gy, gx, bins = 7, 9, -(-256 // level_bin)
    assert (term.gy, term.gx, term.bins) == (gy, gx, bins)
    image = torch.arange(2).view(2, 1, 1)
    row = (torch.arange(50) // 8).view(1, 50, 1)
    col = (torch.arange(70) // 8).view(1, 1, 70)
    expected = ((image * gy + row) * gx + col) * bins + levels.long() // level_bin
    assert torch.equal(term.index.long(), expected)
    counts = torch.bincount(expected.view(-1), minlength=term.size).float()
    assert torch.allclose(term.start, -0.5 * counts * term.norm)


def test_fused_path_computes_in_float32_under_bf16_autocast(fused):
    """Mixed-precision validation (trainer.precision=bf16-mixed) calls the CRF under autocast:
    the fused path keeps its dtype (its grid products would be bf16) and its result."""
    logits, image, _ = disc_scene(48, 2)
    crf = MeanFieldCRF(**PARAMS)
    with torch.no_grad():
        plain = crf(logits, image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = crf(logits, image)
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, plain)
