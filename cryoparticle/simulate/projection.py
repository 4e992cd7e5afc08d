"""Orientations on SO(3) and projections of a volume by the Fourier-slice theorem.

Euler angles follow RELION (ZYZ, degrees: ``rot``, ``tilt``, ``psi``). The matrix ``A`` of
:func:`euler_to_matrix` maps a volume coordinate to the projection frame, so a projection is
``P(x, y) = ∫ V(Aᵀ (x, y, z)) dz``. Volumes are indexed ``[z, y, x]`` with the rotation centre at
index ``box // 2``; coordinate vectors are ``(x, y, z)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def random_euler_angles(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` orientations drawn uniformly on SO(3) (Haar measure), as RELION Euler angles in degrees.

    ``rot`` and ``psi`` are uniform on [0, 360); ``cos(tilt)`` is uniform on [−1, 1].
    """
    rot = rng.uniform(0.0, 360.0, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1.0, 1.0, n)))
    psi = rng.uniform(0.0, 360.0, n)
    return np.stack([rot, tilt, psi], axis=1)


def euler_to_matrix(angles_deg: torch.Tensor | np.ndarray) -> torch.Tensor:
    """RELION rotation matrices ``(N, 3, 3)`` from Euler angles ``(N, 3)`` (rot, tilt, psi; degrees)."""
    ang = torch.as_tensor(angles_deg, dtype=torch.float64)
    a, b, g = torch.deg2rad(ang).unbind(-1)
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        torch.stack([sc, ss, cb], -1),
    ]
    return torch.stack(rows, -2)


def _centred_fft3(volume: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(volume)))


class FourierProjector:
    """Batched projections of one cubic volume by central slices of its 3-D Fourier transform.

    The volume is zero-padded ``pad_factor`` times before the transform so that trilinear
    interpolation in Fourier space is accurate. Each slice is sampled only at the ``box``
    frequencies of a ``box²`` image (spacing ``P/box`` on the padded spectrum), which is exact
    for density inside the sphere inscribed in the box (its projections fit in the box; see
    :func:`cryoparticle.simulate.species.tight_box`), and only on the half-plane
    ``kx ≥ 0`` (Hermitian symmetry, ``irfft2``): ``box·(box/2+1)`` interpolations per projection.
    """

    def __init__(self, volume: np.ndarray | torch.Tensor, pad_factor: float = 2.0,
                 device: torch.device | str = "cpu") -> None:
        vol = torch.as_tensor(np.asarray(volume, dtype=np.float32), device=device)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise ValueError(f"volume must be cubic, got shape {tuple(vol.shape)}")
        self.box = int(vol.shape[0])
        self.padded = int(2 * math.ceil(pad_factor * self.box / 2))
        self.device = torch.device(device)
        p, b = self.padded, self.box
        start = p // 2 - b // 2
        padded = torch.zeros((p, p, p), dtype=torch.float32, device=device)
        padded[start:start + b, start:start + b, start:start + b] = vol
        # Gridding correction: trilinear interpolation in Fourier space multiplies real space by
        # sinc²(x/P) per axis; dividing by it beforehand keeps projected densities unbiased.
        x = (torch.arange(p, dtype=torch.float32, device=device) - p // 2) / p
        s = torch.sinc(x) ** 2
        padded = padded / (s[:, None, None] * s[None, :, None] * s[None, None, :])
        spectrum = _centred_fft3(padded)
        # (1, 2, P, P, P): real and imaginary parts as channels for grid_sample.
        self._spectrum = torch.stack([spectrum.real, spectrum.imag])[None].contiguous()
        step = p / b  # padded-spectrum samples per frequency of a box-sized image
        kx = torch.arange(b // 2 + 1, dtype=torch.float32, device=device) * step
        ky = torch.fft.ifftshift(torch.arange(b, dtype=torch.float32, device=device) - b // 2) * step
        self._plane = torch.stack(
            [kx[None, :].expand(b, -1), ky[:, None].expand(-1, kx.numel())], -1)  # (B, B/2+1, 2)
        # Centring the output (a shift by B/2 on both axes, B even) is a sign (−1)^(i+j) on the
        # spectrum's integer frequencies (i, j): cheaper than an fftshift of every projection.
        i = torch.arange(b // 2 + 1, device=device)
        j = torch.fft.ifftshift(torch.arange(b, device=device) - b // 2)
        self._centre_sign = (1 - 2 * ((i[None, :] + j[:, None]) % 2)).to(torch.float32) \
            if b % 2 == 0 else None

    def project(self, rotations: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Projections ``(N, box, box)`` along z of the volume rotated by ``rotations (N, 3, 3)``."""
        rot = torch.as_tensor(rotations, dtype=torch.float32, device=self.device)
        out = [self._project_chunk(rot[i:i + chunk]) for i in range(0, rot.shape[0], chunk)]
        if not out:
            return torch.zeros((0, self.box, self.box), device=self.device)
        return torch.cat(out)

    def _project_chunk(self, rot: torch.Tensor) -> torch.Tensor:
        p, b = self.padded, self.box
        # Volume-frame frequency of the in-plane frequency (kx, ky, 0): q = Aᵀ k.
        q = torch.einsum("pqj,nji->npqi", self._plane, rot[:, :2, :])  # (N, B, B/2+1, 3)
        grid = (q + p // 2) * (2.0 / (p - 1)) - 1.0
        sampled = F.grid_sample(self._spectrum, grid[None], mode="bilinear",
                                padding_mode="zeros", align_corners=True)[0]  # (2, N, B, B/2+1)
        half = torch.complex(sampled[0], sampled[1])
        # The slice is the transform of the projection about its centre: re-centre and invert.
        if self._centre_sign is None:  # odd box: shift in real space
            return torch.fft.fftshift(torch.fft.irfft2(half, s=(b, b)), dim=(-2, -1))
        return torch.fft.irfft2(half * self._centre_sign, s=(b, b))


def project_real_space(volume: np.ndarray | torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Reference projector: rotate the volume by trilinear resampling, then sum along z.

    Slow (``box³`` samples per projection) and used only to validate :class:`FourierProjector`.
    """
    vol = torch.as_tensor(np.asarray(volume, dtype=np.float32))
    b = vol.shape[0]
    c = torch.arange(b, dtype=torch.float32) - b // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    coords = torch.stack([x, y, z], -1)  # projection-frame (x, y, z) at [z, y, x]
    out = []
    for a in torch.as_tensor(rotations, dtype=torch.float32):
        src = coords @ a  # row vector r·A = (Aᵀ r)ᵀ: volume-frame coordinates
        grid = (src + b // 2) * (2.0 / (b - 1)) - 1.0
        rotated = F.grid_sample(vol[None, None], grid[None], mode="bilinear",
                                padding_mode="zeros", align_corners=True)[0, 0]
        out.append(rotated.sum(0))
    return torch.stack(out)
