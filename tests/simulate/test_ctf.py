import math

import numpy as np
import pytest
import torch

from cryoparticle.errors import InputError
from cryoparticle.simulate.ctf import CTFParams, apply_ctf, ctf_2d, electron_wavelength_a


def test_wavelength_300kv():
    assert electron_wavelength_a(300) == pytest.approx(0.019687, abs=1e-5)
    assert electron_wavelength_a(200) == pytest.approx(0.025079, abs=1e-5)


def test_zeros_at_known_frequencies():
    # A = 0, Cs = 0, no phase shift: CTF = -sin(pi λ Δf k²), zero at k_n = sqrt(n / (λ Δf)).
    p = CTFParams(defocus_u_a=15000, defocus_v_a=15000, cs_mm=0.0, amplitude_contrast=0.0)
    lam = electron_wavelength_a(300)
    kn = torch.tensor([math.sqrt(n / (lam * 15000)) for n in range(1, 6)], dtype=torch.float64)
    vals = ctf_2d(p, kn, torch.zeros_like(kn))
    assert torch.all(vals.abs() < 1e-9)
    # and extrema of magnitude 1 half-way (in k²) between zeros
    km = torch.sqrt((torch.arange(1, 5, dtype=torch.float64) - 0.5) / (lam * 15000))
    assert torch.allclose(ctf_2d(p, km, torch.zeros_like(km)).abs(), torch.ones(4, dtype=torch.float64))


def test_formula_with_cs_amplitude_contrast_and_bfactor():
    p = CTFParams(defocus_u_a=20000, defocus_v_a=20000, cs_mm=2.7, amplitude_contrast=0.1,
                  b_factor_a2=40, phase_shift_deg=30)
    k = torch.linspace(0, 0.3, 50, dtype=torch.float64)
    lam = electron_wavelength_a(300)
    chi = math.pi * lam * 20000 * k**2 - 0.5 * math.pi * 2.7e7 * lam**3 * k**4 + math.radians(30)
    ref = -(math.sqrt(1 - 0.01) * torch.sin(chi) + 0.1 * torch.cos(chi)) * torch.exp(-40 * k**2 / 4)
    assert torch.allclose(ctf_2d(p, k, torch.zeros_like(k)), ref, atol=1e-10)
    assert ctf_2d(p, torch.zeros(1), torch.zeros(1)).item() == pytest.approx(
        -(math.sqrt(0.99) * math.sin(math.radians(30)) + 0.1 * math.cos(math.radians(30))), abs=1e-6)


def test_astigmatism_direction():
    # defocus U along the astigmatism angle, V perpendicular: zeros move accordingly
    p = CTFParams(defocus_u_a=20000, defocus_v_a=10000, astigmatism_angle_deg=30, cs_mm=0,
                  amplitude_contrast=0)
    lam = electron_wavelength_a(300)
    for df, ang in ((20000, 30), (10000, 120)):
        k = math.sqrt(1 / (lam * df))
        kx = torch.tensor([k * math.cos(math.radians(ang))], dtype=torch.float64)
        ky = torch.tensor([k * math.sin(math.radians(ang))], dtype=torch.float64)
        assert abs(ctf_2d(p, kx, ky).item()) < 1e-9


def test_apply_ctf_flips_contrast_of_positive_density():
    img = torch.zeros(128, 128)
    img[60:68, 60:68] = 1.0
    out = apply_ctf(img, CTFParams(15000, 15000), pixel_size_a=4.0)
    assert out.shape == img.shape
    assert out[62:66, 62:66].mean() < 0  # positive density appears dark in underfocus


@pytest.mark.parametrize("kw", [dict(defocus_u_a=-1, defocus_v_a=1), dict(defocus_u_a=1, defocus_v_a=1, voltage_kv=0),
                                dict(defocus_u_a=1, defocus_v_a=1, amplitude_contrast=1.5)])
def test_bad_parameters(kw):
    with pytest.raises(InputError):
        CTFParams(**kw)
