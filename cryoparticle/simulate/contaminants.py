"""Things that are *not* particles: ice blobs, protein aggregates and a carbon edge.

They are added to the projected potential before the CTF (so they get realistic Fresnel
fringes), are labelled background, and particles are never centred on them. Densities are in
units of ``peak``: the maximum projected density of one particle, so they scale with the volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Ellipsoid:
    """A dense ellipsoid seen from above: centre (px), semi-axes (px), angle (rad), peak density."""

    x: float
    y: float
    a: float
    b: float
    angle: float
    density: float


@dataclass
class CarbonEdge:
    """Carbon support beyond a gently curved edge: ``u > curvature · v² / size`` in the edge frame."""

    x0: float
    y0: float
    normal: float
    curvature: float
    size: float
    density: float

    def signed_distance(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor):
        """Approximate distance into the carbon (positive inside), in pixels."""
        c, s = math.cos(self.normal), math.sin(self.normal)
        u = (x - self.x0) * c + (y - self.y0) * s
        v = -(x - self.x0) * s + (y - self.y0) * c
        return u - self.curvature * v * v / self.size


@dataclass
class Contaminants:
    """The contaminants of one micrograph."""

    ellipsoids: list[Ellipsoid]
    carbon: CarbonEdge | None

    def excludes(self, xy: np.ndarray, margin_px: float) -> np.ndarray:
        """True for centres ``(n, 2)`` closer than ``margin_px`` to any contaminant."""
        out = np.zeros(len(xy), dtype=bool)
        if self.ellipsoids:
            e = np.array([[q.x, q.y, max(q.a, q.b)] for q in self.ellipsoids])
            d = np.hypot(xy[:, None, 0] - e[None, :, 0], xy[:, None, 1] - e[None, :, 1])
            out |= (d < e[None, :, 2] + margin_px).any(1)
        if self.carbon is not None:
            out |= self.carbon.signed_distance(xy[:, 0].astype(float),
                                               xy[:, 1].astype(float)) > -margin_px
        return out

    @property
    def empty(self) -> bool:
        return not self.ellipsoids and self.carbon is None

    def render(self, height: int, width: int, peak: float,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """Projected density ``(H, W)`` of all contaminants."""
        img = torch.zeros((height, width), dtype=torch.float32, device=device)
        for q in self.ellipsoids:
            r = max(q.a, q.b)
            x0, x1 = max(int(q.x - r) - 1, 0), min(int(q.x + r) + 2, width)
            y0, y1 = max(int(q.y - r) - 1, 0), min(int(q.y + r) + 2, height)
            if x0 >= x1 or y0 >= y1:
                continue
            yy = torch.arange(y0, y1, device=device, dtype=torch.float32)[:, None] - q.y
            xx = torch.arange(x0, x1, device=device, dtype=torch.float32)[None, :] - q.x
            c, s = math.cos(q.angle), math.sin(q.angle)
            u, v = (xx * c + yy * s) / q.a, (-xx * s + yy * c) / q.b
            img[y0:y1, x0:x1] += q.density * peak * (1 - u * u - v * v).clamp_min(0).sqrt()
        if self.carbon is not None:
            yy = torch.arange(height, device=device, dtype=torch.float32)[:, None]
            xx = torch.arange(width, device=device, dtype=torch.float32)[None, :]
            inside = torch.sigmoid(self.carbon.signed_distance(xx, yy) / 1.5)
            img += self.carbon.density * peak * inside
        return img


def draw_contaminants(cfg, height: int, width: int, pixel_size_a: float,
                      rng: np.random.Generator) -> Contaminants:
    """Draw this micrograph's contaminants from the ``contaminants`` config (see conf/simulator)."""
    ellipsoids: list[Ellipsoid] = []
    blobs = cfg.ice_blobs
    if rng.uniform() < blobs.probability:
        n = int(rng.integers(blobs.count[0], blobs.count[1] + 1))
        d = rng.uniform(*blobs.diameter_a, size=(n, 2)) / pixel_size_a
        for (da, db), x, y, ang in zip(d, rng.uniform(0, width, n), rng.uniform(0, height, n),
                                       rng.uniform(0, math.pi, n)):
            ellipsoids.append(Ellipsoid(x, y, da / 2, db / 2, ang, blobs.density))
    agg = cfg.aggregates
    if rng.uniform() < agg.probability:
        for _ in range(int(rng.integers(agg.count[0], agg.count[1] + 1))):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            k = int(rng.integers(agg.n_spheres[0], agg.n_spheres[1] + 1))
            spread = agg.spread_a / pixel_size_a
            radii = rng.uniform(*agg.sphere_diameter_a, size=k) / pixel_size_a / 2
            offs = rng.normal(0, spread / 2, size=(k, 2))
            ellipsoids += [Ellipsoid(cx + ox, cy + oy, r, r, 0.0, agg.density)
                           for (ox, oy), r in zip(offs, radii)]
    carbon = None
    cc = cfg.carbon_edge
    if rng.uniform() < cc.probability:
        normal = rng.uniform(0, 2 * math.pi)
        coverage = rng.uniform(*cc.coverage)
        size = float(max(height, width))
        # Edge through the point at distance (0.5 - coverage)·size from the centre along the normal.
        dist = (0.5 - coverage) * size
        x0 = width / 2 + dist * math.cos(normal)
        y0 = height / 2 + dist * math.sin(normal)
        carbon = CarbonEdge(x0, y0, normal, rng.uniform(-cc.curvature, cc.curvature), size,
                            cc.density)
    return Contaminants(ellipsoids, carbon)
