"""Particle species for the simulator: volumes from files (maps, atomic models, packaged maps)
and procedural smooth blobs of a given diameter, each with its Fourier projector.

A micrograph holds particles of one or a few species; procedural blobs (sums of Gaussians
textured by a low-passed random density) teach a picker "a particle-sized object" rather than
one protein.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from cryoparticle.errors import param_error
from cryoparticle.simulate.projection import FourierProjector, euler_to_matrix

#: Orientations whose projections define a species' peak density (the contaminants' unit).
PEAK_VIEWS_DEG = np.array([[0.0, 0.0, 0.0], [0.0, 90.0, 0.0], [90.0, 90.0, 0.0]])


def tight_box(volume: np.ndarray, fraction: float = 0.01) -> np.ndarray:
    """Crop a centred cubic volume to the smallest even box holding all density > fraction·max."""
    b = volume.shape[0]
    c = np.arange(b) - b // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij", sparse=True)
    r = np.sqrt(x * x + y * y + z * z)
    support = volume > fraction * volume.max()
    radius = float(r[support].max()) if support.any() else b / 2
    new = min(b, 2 * int(math.ceil(radius)) + 4)
    s = b // 2 - new // 2
    return np.ascontiguousarray(volume[s:s + new, s:s + new, s:s + new])


@dataclass
class Species:
    """One kind of particle: its projector, peak projected density and picking diameter (Å)."""

    name: str
    projector: FourierProjector
    peak: float
    diameter_a: float

    @classmethod
    def from_volume(cls, name: str, volume: np.ndarray, diameter_a: float, pad_factor: float,
                    device: torch.device | str = "cpu") -> Species:
        projector = FourierProjector(tight_box(volume), pad_factor, device)
        views = projector.project(euler_to_matrix(PEAK_VIEWS_DEG))
        return cls(name, projector, float(views.flatten(1).amax(1).mean()), float(diameter_a))


def blob_volume(diameter_a: float, pixel_size_a: float, rng: np.random.Generator, *,
                n_gaussians: tuple[int, int] = (3, 12), width_fraction: tuple[float, float] =
                (0.15, 0.4), texture: float = 0.5) -> np.ndarray:
    """A random smooth particle of ``diameter_a`` (Å) as a cubic volume at ``pixel_size_a``.

    ``n_gaussians`` (drawn in the range) Gaussians with standard deviations of
    ``width_fraction`` × the radius, centred within the sphere so that each stays inside it,
    multiplied by ``1 + texture × `` a low-passed random field and cut by a soft sphere of the
    diameter: a compact, protein-like density whose largest extent is at most the diameter.
    """
    if not diameter_a > 0:
        raise param_error("blobs.diameter_a", diameter_a, "must be > 0")
    radius = diameter_a / 2 / pixel_size_a  # voxels
    box = 2 * int(math.ceil(radius)) + 6
    c = np.arange(box, dtype=np.float32) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij", sparse=True)
    k = int(rng.integers(n_gaussians[0], n_gaussians[1] + 1))
    widths = rng.uniform(*width_fraction, size=k) * radius
    # Centres uniform in the ball of radius (radius − 2σ): each Gaussian stays inside.
    direction = rng.normal(size=(k, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    reach = np.maximum(radius - 2 * widths, 0.0) * rng.uniform(size=k) ** (1 / 3)
    centres = direction * reach[:, None]
    weights = rng.uniform(0.5, 1.0, size=k)
    vol = np.zeros((box, box, box), dtype=np.float32)
    for (cx, cy, cz), s, w in zip(centres, widths, weights):
        vol += w * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))
    if texture:
        field = ndimage.gaussian_filter(rng.normal(size=vol.shape).astype(np.float32),
                                        max(radius / 6, 1.0))
        vol *= np.clip(1 + texture * field / max(float(field.std()), 1e-6), 0.0, None)
    r = np.sqrt(x * x + y * y + z * z)
    vol *= np.clip(radius - r + 0.5, 0.0, 1.0)  # soft sphere of the diameter
    return vol / max(float(vol.max()), 1e-12)
