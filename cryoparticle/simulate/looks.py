"""What preprocessing does to real micrographs, applied to simulated ones: a "look" per micrograph.

Real inputs are rarely raw: they are denoised (a Gaussian low-pass, a Wiener filter, a learned
denoiser such as Topaz's or CryoSegNet's), contrast-normalised (percentile clipping, histogram
equalisation, CLAHE), stored as 8-bit PNG/JPEG, and binned or not before they reach the picker.
:func:`draw_look` draws one such chain from the ``look`` config (probabilities and ranges) and
:func:`apply_look` applies it, in this order:

1. ``upsample``: the chain runs on a grid ``f`` times finer (Fourier padding) and the result is
   Fourier-binned back, as a micrograph processed at full resolution and binned by the picker;
2. ``denoise``: ``none | gaussian | wiener | learned``. ``wiener`` uses the radially averaged
   power of the known signal and noise (``S / (S + N)``); ``learned`` imitates a trained
   denoiser: the signal slightly blurred plus a faint, low-passed remainder of the noise;
3. ``contrast``: ``none | clip`` (percentiles) ``| equalise`` (histogram) ``| clahe``
   (skimage's ``equalize_adapthist``);
4. ``quantise`` to 8 bits (a mean grey level and a spread in grey levels; the whole range after
   equalisation), then ``jpeg`` compression (PIL, in memory) at a drawn quality.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from cryoparticle.errors import param_error

DENOISERS = ("none", "gaussian", "wiener", "learned")
CONTRASTS = ("none", "clip", "equalise", "clahe")


@dataclass
class Look:
    """One micrograph's preprocessing chain (lengths in Å, levels in 8-bit grey levels)."""

    upsample: int = 1
    denoise: str = "none"
    gaussian_sigma_a: float = 0.0
    learned_signal_sigma_a: float = 0.0
    learned_residual: float = 0.0
    learned_residual_sigma_a: float = 0.0
    contrast: str = "none"
    clip_percentiles: tuple[float, float] = (0.0, 100.0)
    clahe_kernel_fraction: float = 0.125
    clahe_clip_limit: float = 0.01
    quantise: bool = False
    mean_level: float = 128.0
    std_levels: float = 20.0
    jpeg_quality: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["clip_percentiles"] = list(self.clip_percentiles)
        return out


def _choice(rng: np.random.Generator, options: tuple[str, ...], probabilities: Any,
            name: str) -> str:
    p = np.array([float((probabilities or {}).get(o, 0.0)) for o in options])
    unknown = set(probabilities or {}) - set(options)
    if unknown or (p < 0).any() or p.sum() <= 0:
        raise param_error(name, dict(probabilities or {}),
                          f"probabilities of {', '.join(options)} (≥ 0, not all 0)")
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _uniform(rng: np.random.Generator, bounds: Any) -> float:
    return float(rng.uniform(float(bounds[0]), float(bounds[1])))


def draw_look(cfg: Any, rng: np.random.Generator) -> Look:
    """Draw a :class:`Look` from the ``look`` config (see ``conf/simulator/general.yaml``)."""
    factors = [int(f) for f in cfg.upsample_factors]
    weights = np.array([float(w) for w in cfg.upsample_probabilities])
    if len(factors) != len(weights) or min(factors) < 1 or weights.sum() <= 0:
        raise param_error("look.upsample_factors", factors,
                          "needs one probability per factor, factors ≥ 1")
    look = Look(upsample=factors[int(rng.choice(len(factors), p=weights / weights.sum()))])
    d = cfg.denoise
    look.denoise = _choice(rng, DENOISERS, d.probabilities, "look.denoise.probabilities")
    if look.denoise == "gaussian":
        look.gaussian_sigma_a = _uniform(rng, d.gaussian_sigma_a)
    elif look.denoise == "learned":
        look.learned_signal_sigma_a = _uniform(rng, d.learned_signal_sigma_a)
        look.learned_residual = _uniform(rng, d.learned_residual)
        look.learned_residual_sigma_a = _uniform(rng, d.learned_residual_sigma_a)
    c = cfg.contrast
    look.contrast = _choice(rng, CONTRASTS, c.probabilities, "look.contrast.probabilities")
    if look.contrast == "clip":
        look.clip_percentiles = (_uniform(rng, c.clip_low_percentile),
                                 _uniform(rng, c.clip_high_percentile))
    elif look.contrast == "clahe":
        look.clahe_kernel_fraction = _uniform(rng, c.clahe_kernel_fraction)
        look.clahe_clip_limit = _uniform(rng, c.clahe_clip_limit)
    look.quantise = bool(rng.uniform() < float(cfg.quantise.probability))
    if look.quantise:
        look.mean_level = _uniform(rng, cfg.quantise.mean_level)
        lo, hi = (float(v) for v in cfg.quantise.std_levels)
        look.std_levels = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        if rng.uniform() < float(cfg.jpeg.probability):
            look.jpeg_quality = int(round(_uniform(rng, cfg.jpeg.quality)))
    return look


# ----------------------------------------------------------------------------- operations


def fourier_resize(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Resample ``(H, W)`` to ``shape`` by cropping or zero-padding its spectrum (values kept).

    The frequencies both grids hold are kept, Nyquist terms (ambiguous between the grids)
    dropped: a band-limited image survives a round trip unchanged.
    """
    h, w = image.shape
    h2, w2 = shape
    if (h, w) == (h2, w2):
        return image
    spec = torch.fft.rfft2(image)
    out = torch.zeros((h2, w2 // 2 + 1), dtype=spec.dtype, device=spec.device)
    rows = (min(h, h2) - 1) // 2  # positive (and negative) row frequencies below Nyquist
    cols = (min(w, w2) - 1) // 2 + 1  # column frequencies 0 .. below Nyquist
    out[:rows + 1, :cols] = spec[:rows + 1, :cols]
    if rows:
        out[-rows:, :cols] = spec[-rows:, :cols]
    return torch.fft.irfft2(out, s=(h2, w2)) * (h2 * w2 / (h * w))


def _k2(shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    ky = torch.fft.fftfreq(shape[0], device=device)[:, None]
    kx = torch.fft.rfftfreq(shape[1], device=device)[None, :]
    return kx * kx + ky * ky


def gaussian_lowpass(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Periodic Gaussian blur of ``(H, W)`` with standard deviation ``sigma_px`` (Fourier space)."""
    if sigma_px <= 0:
        return image
    gain = torch.exp(-2 * math.pi**2 * sigma_px**2 * _k2(tuple(image.shape), image.device))
    return torch.fft.irfft2(torch.fft.rfft2(image) * gain, s=image.shape)


def radial_power(image: torch.Tensor, n_bins: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectrum: ``(bin of every rfft2 frequency, power per bin)``."""
    k = _k2(tuple(image.shape), image.device).sqrt()
    bins = (k / k.max() * (n_bins - 1)).round().long()
    power = torch.fft.rfft2(image).abs().square()
    total = torch.zeros(n_bins, dtype=power.dtype, device=power.device).index_add_(
        0, bins.flatten(), power.flatten())
    count = torch.bincount(bins.flatten(), minlength=n_bins).clamp_min(1)
    return bins, total / count


def wiener(signal: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Wiener filter ``S / (S + N)`` of ``signal + noise`` from their radial power spectra."""
    bins, s = radial_power(signal)
    _, n = radial_power(noise)
    gain = (s / (s + n).clamp_min(1e-20))[bins]
    return torch.fft.irfft2(torch.fft.rfft2(signal + noise) * gain, s=signal.shape)


def to_unit_range(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to the ``low``/``high`` percentiles and map to [0, 1]."""
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def jpeg_roundtrip(image_u8: np.ndarray, quality: int) -> np.ndarray:
    """Encode an 8-bit image as JPEG at ``quality`` and decode it (PIL, in memory)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image_u8).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return np.asarray(Image.open(buffer), dtype=np.uint8)


def apply_look(signal: torch.Tensor, noise: torch.Tensor, look: Look, pixel_size_a: float
               ) -> np.ndarray:
    """The micrograph ``signal + noise`` ``(H, W)`` as it looks after ``look``: float32 ``(H, W)``.

    ``signal`` is the noiseless image (particles, contaminants, ice), ``noise`` the noise;
    both are needed by the Wiener and learned denoisers. With ``look.quantise`` the output
    (before binning back from ``look.upsample``) holds whole grey levels in [0, 255].
    """
    shape = tuple(signal.shape)
    f = look.upsample
    if f > 1:
        fine = (shape[0] * f, shape[1] * f)
        signal, noise = fourier_resize(signal, fine), fourier_resize(noise, fine)
    px = pixel_size_a / f
    if look.denoise == "gaussian":
        image = gaussian_lowpass(signal + noise, look.gaussian_sigma_a / px)
    elif look.denoise == "wiener":
        image = wiener(signal, noise)
    elif look.denoise == "learned":
        remainder = gaussian_lowpass(noise, look.learned_residual_sigma_a / px)
        remainder *= look.learned_residual * float(noise.std()) / max(float(remainder.std()), 1e-12)
        image = gaussian_lowpass(signal, look.learned_signal_sigma_a / px) + remainder
    else:
        image = signal + noise
    out = image.cpu().numpy().astype(np.float64)
    unit = None
    if look.contrast == "clip":
        unit = to_unit_range(out, *look.clip_percentiles)
    elif look.contrast in ("equalise", "clahe"):
        from skimage import exposure

        unit = to_unit_range(out, 0.1, 99.9)
        if look.contrast == "equalise":
            unit = exposure.equalize_hist(unit, nbins=256)
        else:
            kernel = max(8, int(look.clahe_kernel_fraction * min(unit.shape)))
            unit = exposure.equalize_adapthist(unit, kernel_size=kernel,
                                               clip_limit=look.clahe_clip_limit)
    if look.quantise:
        if unit is not None:
            levels = unit * 255.0
        else:
            std = out.std()
            levels = look.mean_level + (out - out.mean()) * (look.std_levels / max(std, 1e-12))
        out8 = np.clip(np.round(levels), 0, 255).astype(np.uint8)
        if look.jpeg_quality is not None:
            out8 = jpeg_roundtrip(out8, look.jpeg_quality)
        out = out8.astype(np.float64)
    elif unit is not None:
        out = unit
    result = torch.from_numpy(out.astype(np.float32))
    if f > 1:
        result = fourier_resize(result, shape)
    return result.numpy()
