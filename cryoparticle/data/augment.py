"""Training augmentation: flips, 90° rotations and intensity jitter, driven by a generator.

Geometric transforms move image and mask together (the mask keeps its labels, ignore = 255
included); intensity jitter touches the image only. Every call draws the same number of
random values from the given :class:`torch.Generator` whatever the options, so an item's
augmentation depends only on the generator's seed.
"""

from __future__ import annotations

import math

import torch

from cryoparticle.errors import param_error


def _check_fraction(name: str, value: float, upper: float = math.inf) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and 0.0 <= v < upper):
        bound = f"in [0, {upper:g})" if math.isfinite(upper) else "≥ 0"
        raise param_error(name, value, f"must be a number {bound}")
    return v


class Augment:
    """``augment(image (C, H, W), mask (H, W), generator) -> (image, mask)``.

    * ``flips``: horizontal and vertical flips, each with probability ½;
    * ``rot90``: rotation by a uniform multiple of 90° (square images only; skipped otherwise);
    * ``image * (1 + U(−contrast_jitter, contrast_jitter)) + U(−intensity_jitter,
      intensity_jitter)`` (in units of the standardised image's σ).
    """

    def __init__(self, flips: bool = True, rot90: bool = True, intensity_jitter: float = 0.1,
                 contrast_jitter: float = 0.1) -> None:
        self.flips = bool(flips)
        self.rot90 = bool(rot90)
        self.intensity_jitter = _check_fraction("intensity_jitter", intensity_jitter)
        self.contrast_jitter = _check_fraction("contrast_jitter", contrast_jitter, 1.0)

    def __repr__(self) -> str:
        return (f"Augment(flips={self.flips}, rot90={self.rot90}, "
                f"intensity_jitter={self.intensity_jitter}, "
                f"contrast_jitter={self.contrast_jitter})")

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if image.ndim != 3 or mask.ndim != 2 or tuple(image.shape[-2:]) != tuple(mask.shape):
            raise param_error("image, mask", (tuple(image.shape), tuple(mask.shape)),
                              "expected image (C, H, W) and mask (H, W) of the same size")
        # Always five draws, in a fixed order: hflip, vflip, rotation, contrast, offset.
        u = torch.rand(5, generator=generator, dtype=torch.float64).tolist()
        if self.flips and u[0] < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        if self.flips and u[1] < 0.5:
            image, mask = image.flip(-2), mask.flip(-2)
        k = min(int(u[2] * 4), 3)
        if self.rot90 and k and image.shape[-1] == image.shape[-2]:
            image = torch.rot90(image, k, dims=(-2, -1))
            mask = torch.rot90(mask, k, dims=(-2, -1))
        scale = 1.0 + self.contrast_jitter * (2.0 * u[3] - 1.0)
        offset = self.intensity_jitter * (2.0 * u[4] - 1.0)
        if scale != 1.0 or offset != 0.0:
            image = image * scale + offset
        return image.contiguous(), mask.contiguous()


__all__ = ["Augment"]
