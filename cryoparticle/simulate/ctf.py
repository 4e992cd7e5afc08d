"""Contrast transfer function of the microscope (weak-phase approximation).

Conventions (as in CTFFIND4 and RELION): underfocus is positive ``defocus_u_a >= 0``; the
defocus along an azimuth ``theta`` of the spatial frequency is
``Δf(θ) = ½[Δf_U + Δf_V + (Δf_U − Δf_V)·cos 2(θ − θ_ast)]``; the phase aberration is
``χ(k) = π λ Δf k² − ½ π C_s λ³ k⁴ + φ`` with ``φ`` the phase-plate shift; and

``CTF(k) = −[√(1 − A²)·sin χ + A·cos χ] · exp(−B k² / 4)``

with amplitude contrast ``A`` and B-factor ``B`` (Å²). With this sign, positive projected
density appears dark at low frequency in underfocus, as in real micrographs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch

from cryoparticle.errors import param_error


def electron_wavelength_a(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    volts = voltage_kv * 1e3
    return 12.2642598 / math.sqrt(volts * (1.0 + 0.978475e-6 * volts))


@dataclass(frozen=True)
class CTFParams:
    """Imaging parameters of one micrograph (units in the names)."""

    defocus_u_a: float
    defocus_v_a: float
    astigmatism_angle_deg: float = 0.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    b_factor_a2: float = 0.0
    phase_shift_deg: float = 0.0

    def __post_init__(self) -> None:
        for name in ("defocus_u_a", "defocus_v_a"):
            if getattr(self, name) < 0:
                raise param_error(name, getattr(self, name), "defocus must be ≥ 0 (underfocus)")
        if self.voltage_kv <= 0:
            raise param_error("voltage_kv", self.voltage_kv, "must be > 0")
        if not 0.0 <= self.amplitude_contrast < 1.0:
            raise param_error("amplitude_contrast", self.amplitude_contrast, "must be in [0, 1)")
        if self.cs_mm < 0:
            raise param_error("cs_mm", self.cs_mm, "must be ≥ 0")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def frequency_grid(shape: tuple[int, int], pixel_size_a: float, *, rfft: bool = True,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial frequencies (kx, ky) in 1/Å of an ``rfft2`` (or ``fft2``) of an image ``(H, W)``."""
    h, w = shape
    ky = torch.fft.fftfreq(h, d=pixel_size_a, device=device)
    kx = (torch.fft.rfftfreq if rfft else torch.fft.fftfreq)(w, d=pixel_size_a, device=device)
    return kx[None, :].expand(h, -1), ky[:, None].expand(-1, kx.numel())


def ctf_2d(params: CTFParams, kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    """Evaluate the CTF at frequencies ``kx, ky`` (1/Å, any broadcastable shape)."""
    return _ctf_from_terms(params, *_frequency_terms(kx, ky))


def _frequency_terms(kx: torch.Tensor, ky: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``k²``, ``kx² − ky²`` and ``2·kx·ky``: what the CTF needs of the frequency grid."""
    kx2, ky2 = kx * kx, ky * ky
    return kx2 + ky2, kx2 - ky2, 2.0 * kx * ky


def _ctf_from_terms(params: CTFParams, k2: torch.Tensor, cos_term: torch.Tensor,
                    sin_term: torch.Tensor, k4: torch.Tensor | None = None) -> torch.Tensor:
    """The CTF from the frequency terms of :func:`_frequency_terms` (``k4 = k2²`` if cached).

    Uses ``√(1−A²)·sin χ + A·cos χ = sin(χ + arcsin A)`` and
    ``k²·cos 2(θ − θ_ast) = (kx² − ky²)·cos 2θ_ast + 2·kx·ky·sin 2θ_ast``: one
    transcendental per frequency (two with a B-factor), no division by ``k²``, and in-place
    arithmetic (this runs once per simulated micrograph on 4096×2049 grids).
    """
    lam = electron_wavelength_a(params.voltage_kv)
    cs_a = params.cs_mm * 1e7
    ast = 2.0 * math.radians(params.astigmatism_angle_deg)
    mean_df = 0.5 * (params.defocus_u_a + params.defocus_v_a)
    half_diff = 0.5 * (params.defocus_u_a - params.defocus_v_a)
    phase = math.radians(params.phase_shift_deg) + math.asin(params.amplitude_contrast)
    chi = k2 * (math.pi * lam * mean_df)
    if half_diff:
        chi.add_(cos_term, alpha=math.pi * lam * half_diff * math.cos(ast))
        chi.add_(sin_term, alpha=math.pi * lam * half_diff * math.sin(ast))
    chi.add_(k2 * k2 if k4 is None else k4, alpha=-0.5 * math.pi * cs_a * lam**3)
    chi.add_(phase)
    ctf = chi.sin_().neg_()
    if params.b_factor_a2:
        ctf.mul_(torch.exp(k2 * (-params.b_factor_a2 / 4.0)))
    return ctf


@functools.lru_cache(maxsize=2)
def _image_terms(shape: tuple[int, int], pixel_size_a: float, device: str
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    kx, ky = frequency_grid(shape, pixel_size_a, rfft=True, device=device)
    k2, cos_term, sin_term = _frequency_terms(kx, ky)
    return k2, cos_term, sin_term, k2 * k2


def ctf_for_image(params: CTFParams, shape: tuple[int, int], pixel_size_a: float,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The CTF on the ``rfft2`` grid of an image of ``shape`` at ``pixel_size_a``.

    The frequency terms of the last two grids are cached: a simulator evaluates the CTF of
    many micrographs of one size.
    """
    return _ctf_from_terms(params, *_image_terms(tuple(shape), float(pixel_size_a), str(device)))


def apply_ctf(image: torch.Tensor, params: CTFParams, pixel_size_a: float) -> torch.Tensor:
    """Convolve an image ``(..., H, W)`` with the point-spread function of the CTF."""
    shape = image.shape[-2:]
    ctf = ctf_for_image(params, shape, pixel_size_a, device=image.device)
    return torch.fft.irfft2(torch.fft.rfft2(image) * ctf, s=shape)
