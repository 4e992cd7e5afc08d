"""Noise calibrated to a signal-to-noise ratio, optional electron shot noise, ice gradients.

SNR definition (as the reference method): ``SNR = var(noiseless micrograph) / var(noise)``,
where the noiseless micrograph is the CTF-modulated image of the particles alone (contaminants
and the ice gradient are not counted as signal). Real data are nearer SNR 0.01–0.05.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from cryoparticle.errors import param_error


def rfft2_variance(spectrum: torch.Tensor, shape: tuple[int, int]) -> float:
    """Variance of the real image whose ``rfft2`` is ``spectrum`` (Parseval; no inverse FFT)."""
    h, w = shape
    power = spectrum.real.square() + spectrum.imag.square()
    weight = torch.full((power.shape[-1],), 2.0, dtype=power.dtype, device=power.device)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    n = h * w
    mean_sq = float((power * weight).sum()) / n**2
    mean = float(spectrum[0, 0].real) / n
    return max(mean_sq - mean * mean, 0.0)


def noise_sigma(signal_variance: float, snr: float) -> float:
    """Standard deviation of the noise that gives ``snr`` for a signal of ``signal_variance``."""
    if not snr > 0:
        raise param_error("snr", snr, "must be > 0")
    return math.sqrt(signal_variance / snr) if signal_variance > 0 else 1.0


def add_noise(image: torch.Tensor, sigma: float, generator: torch.Generator, *,
              shot_noise: bool = False, dose_per_pixel: float = 0.0,
              image_contrast: float = 0.1) -> torch.Tensor:
    """Add noise of total standard deviation ``sigma`` to a noiseless ``image``.

    With ``shot_noise``, the image is read as a fractional intensity modulation of
    ``image_contrast`` (its standard deviation) on a beam of ``dose_per_pixel`` electrons;
    electron counts are drawn from a Poisson law and Gaussian noise makes up the rest of the
    variance (none when shot noise alone exceeds ``sigma``).
    """
    out = image
    gauss_var = sigma * sigma
    if shot_noise:
        if dose_per_pixel <= 0:
            raise param_error("dose_e_per_a2", dose_per_pixel, "must be > 0 with shot_noise")
        scale = float(image.std()) / image_contrast if float(image.std()) > 0 else sigma
        rate = (dose_per_pixel * (1.0 + image / scale)).clamp_min(0.0)
        counts = torch.poisson(rate, generator=generator)
        out = (counts / dose_per_pixel - 1.0) * scale
        gauss_var = max(gauss_var - scale * scale / dose_per_pixel, 0.0)
    noise = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
    return out + math.sqrt(gauss_var) * noise


def ice_gradient(height: int, width: int, rng: np.random.Generator, *, plane_fraction: float = 0.5,
                 smooth_cells: int = 4, grid: int = 64,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """A low-frequency ice-thickness field ``(H, W)`` of zero mean and unit standard deviation.

    A plane in a random direction plus a smooth random field (a ``smooth_cells²`` grid of
    Gaussian values, upsampled bicubically), mixed with weight ``plane_fraction``. The field is
    built on a ``grid²`` lattice and upsampled once: it has no detail finer than that.
    """
    theta = rng.uniform(0, 2 * math.pi)
    t = torch.linspace(-1, 1, grid, device=device)
    plane = math.cos(theta) * t[None, :] + math.sin(theta) * t[:, None]
    cells = torch.as_tensor(rng.standard_normal((1, 1, smooth_cells, smooth_cells)),
                            dtype=torch.float32, device=device)
    smooth = F.interpolate(cells, size=(grid, grid), mode="bicubic", align_corners=True)[0, 0]
    field = plane_fraction * plane / plane.std().clamp_min(1e-6) \
        + (1 - plane_fraction) * smooth / smooth.std().clamp_min(1e-6)
    field = (field - field.mean()) / field.std().clamp_min(1e-6)
    return F.interpolate(field[None, None], size=(height, width), mode="bilinear",
                         align_corners=True)[0, 0]


def radial_frequency(shape: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """|k| on the ``rfft2`` grid of an image ``(H, W)``, in cycles per pixel (Nyquist = 0.5)."""
    h, w = shape
    ky = torch.fft.fftfreq(h, device=device)[:, None]
    kx = torch.fft.rfftfreq(w, device=device)[None, :]
    return torch.sqrt(kx * kx + ky * ky)


def detector_mtf(k: torch.Tensor, mtf_at_nyquist: float) -> torch.Tensor:
    """A detector's modulation transfer ``1 / (1 + (k/k_c)²)`` with ``k_c`` chosen so that it
    equals ``mtf_at_nyquist`` at 0.5 cycles/pixel (1 = a perfect detector)."""
    if not 0 < mtf_at_nyquist <= 1:
        raise param_error("mtf_at_nyquist", mtf_at_nyquist, "must be in (0, 1]")
    if mtf_at_nyquist == 1:
        return torch.ones_like(k)
    kc2 = 0.25 * mtf_at_nyquist / (1.0 - mtf_at_nyquist)
    return 1.0 / (1.0 + k * k / kc2)


def coloured_noise(shape: tuple[int, int], sigma: float, generator: torch.Generator, *,
                   mtf_at_nyquist: float = 1.0, pink_fraction: float = 0.0,
                   pink_exponent: float = 1.0, device: torch.device | str = "cpu"
                   ) -> torch.Tensor:
    """Gaussian noise ``(H, W)`` of standard deviation ``sigma`` with a coloured spectrum.

    Power spectrum ``(1 − p)·MTF(k)²/⟨MTF²⟩ + p·k^(−exponent)/⟨k^(−exponent)⟩`` (``p`` =
    ``pink_fraction``: the share of the variance in the 1/f background, ``k`` in cycles/pixel;
    the DC term is zero). White noise is ``mtf_at_nyquist=1, pink_fraction=0``.
    """
    if not 0 <= pink_fraction <= 1:
        raise param_error("pink_fraction", pink_fraction, "must be in [0, 1]")
    k = radial_frequency(shape, device)
    white = detector_mtf(k, mtf_at_nyquist) ** 2
    white = white / white.mean()
    power = (1.0 - pink_fraction) * white
    if pink_fraction > 0:
        pink = k.clamp_min(1.0 / max(shape)).pow(-float(pink_exponent))
        power = power + pink_fraction * pink / pink.mean()
    power[0, 0] = 0.0
    h, w = shape
    noise = torch.randn(shape, generator=generator, device=device)
    out = torch.fft.irfft2(torch.fft.rfft2(noise) * power.sqrt(), s=(h, w))
    return out * (sigma / out.std().clamp_min(1e-12))
