"""Training augmentation: flips, 90° rotations, a look and intensity jitter, driven by a generator.

Geometric transforms move image and mask together (the mask keeps its labels, ignore = 255
included); the look (blur, added noise) and the intensity jitter touch the image only. Every
call draws the same number of scalar random values from the given :class:`torch.Generator`
whatever the options (a noise field, when one is added, is drawn after them), so an item's
augmentation depends only on the generator's seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms.v2.functional import gaussian_blur

from cryoparticle.errors import param_error


def _number(value: Any) -> float:
    """``float(value)``, or NaN where it is not a number (the checks below reject NaN)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _check_fraction(name: str, value: float, upper: float = math.inf) -> float:
    v = _number(value)
    if not (math.isfinite(v) and 0.0 <= v < upper):
        bound = f"in [0, {upper:g})" if math.isfinite(upper) else "≥ 0"
        raise param_error(name, value, f"must be a number {bound}")
    return v


def _check_probability(name: str, value: Any) -> float:
    v = _number(value)
    if not 0.0 <= v <= 1.0:
        raise param_error(name, value, "must be a probability in [0, 1]")
    return v


def _check_range(name: str, value: Any) -> tuple[float, float]:
    try:
        low, high = value
    except (TypeError, ValueError):
        low = high = math.nan
    low, high = _number(low), _number(high)
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
        raise param_error(name, value, "must be [low, high] with 0 ≤ low ≤ high")
    return low, high


def _blur(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Gaussian low-pass of ``sigma_px`` pixels (reflect-padded, kernel ±3σ)."""
    radius = max(1, math.ceil(3.0 * sigma_px))
    radius = min(radius, (min(image.shape[-2:]) - 1) // 2)
    if radius < 1 or sigma_px <= 0:
        return image
    return gaussian_blur(image, [2 * radius + 1] * 2, [sigma_px] * 2)


class Augment:
    """``augment(image (C, H, W), mask (H, W), generator) -> (image, mask)``.

    * ``flips``: horizontal and vertical flips, each with probability ½;
    * ``rot90``: rotation by a uniform multiple of 90° (square images only; skipped otherwise);
    * a *look* that moves a real micrograph between the looks of real sources (raw, denoised):
      with probability ``blur_probability`` a Gaussian low-pass of σ ~ U(``blur_sigma_px``)
      pixels (a denoised look), then with probability ``noise_probability`` added Gaussian
      noise of standard deviation ~ U(``noise_std``) (in units of the image's σ), correlated
      over σ ~ U(``noise_correlation_px``) pixels (0: white; a raw look). Each keeps the
      crop's standard deviation, as the standardisation at prediction would;
    * ``image * (1 + U(−contrast_jitter, contrast_jitter)) + U(−intensity_jitter,
      intensity_jitter)`` (in units of the standardised image's σ).
    """

    def __init__(self, flips: bool = True, rot90: bool = True, intensity_jitter: float = 0.1,
                 contrast_jitter: float = 0.1, blur_probability: float = 0.0,
                 blur_sigma_px: Sequence[float] = (0.0, 0.0), noise_probability: float = 0.0,
                 noise_std: Sequence[float] = (0.0, 0.0),
                 noise_correlation_px: Sequence[float] = (0.0, 0.0)) -> None:
        self.flips = bool(flips)
        self.rot90 = bool(rot90)
        self.intensity_jitter = _check_fraction("intensity_jitter", intensity_jitter)
        self.contrast_jitter = _check_fraction("contrast_jitter", contrast_jitter, 1.0)
        self.blur_probability = _check_probability("blur_probability", blur_probability)
        self.blur_sigma_px = _check_range("blur_sigma_px", blur_sigma_px)
        self.noise_probability = _check_probability("noise_probability", noise_probability)
        self.noise_std = _check_range("noise_std", noise_std)
        self.noise_correlation_px = _check_range("noise_correlation_px", noise_correlation_px)

    def __repr__(self) -> str:
        return (f"Augment(flips={self.flips}, rot90={self.rot90}, "
                f"intensity_jitter={self.intensity_jitter}, "
                f"contrast_jitter={self.contrast_jitter}, "
                f"blur_probability={self.blur_probability}, "
                f"blur_sigma_px={list(self.blur_sigma_px)}, "
                f"noise_probability={self.noise_probability}, "
                f"noise_std={list(self.noise_std)}, "
                f"noise_correlation_px={list(self.noise_correlation_px)})")

    def _look(self, image: torch.Tensor, u: list[float], generator: torch.Generator
              ) -> torch.Tensor:
        """Blur and/or noise from the draws ``u`` (five uniforms); the crop's σ is kept."""
        std = image.std()
        if not torch.isfinite(std) or std <= 0:
            return image
        if u[0] < self.blur_probability:
            low, high = self.blur_sigma_px
            image = _blur(image, low + (high - low) * u[1])
            image = image * (std / image.std().clamp_min(1e-12))
        if u[2] < self.noise_probability:
            low, high = self.noise_std
            amount = low + (high - low) * u[3]
            if amount > 0:
                noise = torch.randn(image.shape, generator=generator, dtype=image.dtype)
                low, high = self.noise_correlation_px
                noise = _blur(noise, low + (high - low) * u[4])
                noise = noise / noise.std().clamp_min(1e-12)
                image = (image + amount * std * noise) / math.sqrt(1.0 + amount ** 2)
        return image

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if image.ndim != 3 or mask.ndim != 2 or tuple(image.shape[-2:]) != tuple(mask.shape):
            raise param_error("image, mask", (tuple(image.shape), tuple(mask.shape)),
                              "expected image (C, H, W) and mask (H, W) of the same size")
        # Always ten draws, in a fixed order: hflip, vflip, rotation, contrast, offset, then the
        # look's (blur?, blur σ, noise?, noise σ, noise correlation); a noise field comes last.
        u = torch.rand(10, generator=generator, dtype=torch.float64).tolist()
        if self.flips and u[0] < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        if self.flips and u[1] < 0.5:
            image, mask = image.flip(-2), mask.flip(-2)
        k = min(int(u[2] * 4), 3)
        if self.rot90 and k and image.shape[-1] == image.shape[-2]:
            image = torch.rot90(image, k, dims=(-2, -1))
            mask = torch.rot90(mask, k, dims=(-2, -1))
        if self.blur_probability > 0 or self.noise_probability > 0:
            image = self._look(image, u[5:], generator)
        scale = 1.0 + self.contrast_jitter * (2.0 * u[3] - 1.0)
        offset = self.intensity_jitter * (2.0 * u[4] - 1.0)
        if scale != 1.0 or offset != 0.0:
            image = image * scale + offset
        return image.contiguous(), mask.contiguous()


__all__ = ["Augment"]
