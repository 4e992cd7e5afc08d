"""The micrograph simulator: particles + contaminants → CTF → noise, with pixel-exact labels.

Steps for one micrograph (all batched in torch, no loop over particles or pixels):
1. draw the imaging parameters (defocus, astigmatism) and the contaminants;
2. place particle centres (minimum distance, away from contaminants, cut by the border);
3. project the volume in uniformly random orientations (Fourier slice) and paste the
   projections into the projected potential; labels come from the same clean projections;
4. apply the CTF to the whole micrograph in Fourier space; calibrate the noise to the SNR;
   add the ice-thickness gradient and the noise; normalise to zero mean and unit variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from cryoparticle.errors import param_error
from cryoparticle.micrograph import Micrograph
from cryoparticle.simulate.contaminants import draw_contaminants
from cryoparticle.simulate.ctf import CTFParams, ctf_for_image
from cryoparticle.simulate.labels import box_indices, instance_map, paste_sum, particle_masks
from cryoparticle.simulate.noise import add_noise, ice_gradient, noise_sigma, rfft2_variance
from cryoparticle.simulate.placement import place_particles
from cryoparticle.simulate.projection import FourierProjector, euler_to_matrix, random_euler_angles
from cryoparticle.simulate.volume import load_volume

UM2_IN_A2 = 1e8
SEED_TAG = 0x5EED


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


def _check_range(name: str, values: Sequence[float], low: float, strict: bool = False) -> None:
    lo, hi = float(values[0]), float(values[1])
    if (lo <= low if strict else lo < low) or hi < lo:
        op = ">" if strict else "≥"
        raise param_error(name, list(values), f"must be a range [lo, hi] with {op} {low} and lo ≤ hi")


class MicrographSimulator:
    """Simulates micrographs from the ``simulator`` config group (see ``conf/simulator/``)."""

    def __init__(self, cfg: DictConfig | dict[str, Any]) -> None:
        cfg = OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg
        self.cfg = cfg
        self.pixel_size_a = float(cfg.pixel_size_a)
        if self.pixel_size_a <= 0:
            raise param_error("pixel_size_a", self.pixel_size_a, "must be > 0")
        if not cfg.noise.snr > 0:
            raise param_error("snr", cfg.noise.snr, "must be > 0")
        _check_range("defocus_um", cfg.microscope.defocus_um, 0.0)
        _check_range("astigmatism_um", cfg.microscope.astigmatism_um, 0.0)
        _check_range("density_per_um2", cfg.particles.density_per_um2, 0.0)
        if cfg.particles.min_distance_a < 0:
            raise param_error("min_distance_a", cfg.particles.min_distance_a, "must be ≥ 0")
        self.device = torch.device(cfg.device)
        vol = load_volume(cfg.volume.source, self.pixel_size_a,
                          source_pixel_size_a=cfg.volume.source_pixel_size_a)
        self.volume = tight_box(vol)
        self.projector = FourierProjector(self.volume, cfg.volume.projection_pad_factor, self.device)
        # Peak projected density of the particle: the unit of contaminant densities.
        views = self.projector.project(euler_to_matrix(np.array([[0.0, 0.0, 0.0], [0.0, 90.0, 0.0],
                                                                 [90.0, 90.0, 0.0]])))
        self.peak = float(views.flatten(1).amax(1).mean())
        diameter_a = cfg.volume.particle_diameter_a
        if diameter_a is None:
            from cryoparticle.simulate.volume import volume_diameter_a
            diameter_a = volume_diameter_a(self.volume, self.pixel_size_a)
        self.particle_diameter_a = float(diameter_a)
        self.particle_diameter_px = self.particle_diameter_a / self.pixel_size_a

    def draw_count(self, height: int, width: int, rng: np.random.Generator) -> int:
        """Number of particles for a micrograph of this size (fixed count or drawn density)."""
        if self.cfg.particles.count is not None:
            return int(self.cfg.particles.count)
        area_um2 = height * width * self.pixel_size_a**2 / UM2_IN_A2
        return int(rng.poisson(rng.uniform(*self.cfg.particles.density_per_um2) * area_um2))

    def draw_ctf(self, rng: np.random.Generator) -> CTFParams:
        m = self.cfg.microscope
        defocus_a = rng.uniform(*m.defocus_um) * 1e4
        astig_a = rng.uniform(*m.astigmatism_um) * 1e4
        return CTFParams(defocus_u_a=defocus_a + astig_a / 2,
                         defocus_v_a=max(defocus_a - astig_a / 2, 0.0),
                         astigmatism_angle_deg=rng.uniform(0.0, 180.0),
                         voltage_kv=m.voltage_kv, cs_mm=m.cs_mm,
                         amplitude_contrast=m.amplitude_contrast, b_factor_a2=m.b_factor_a2,
                         phase_shift_deg=m.phase_shift_deg)

    def simulate(self, seed: Sequence[int] | int, height: int, width: int | None = None,
                 name: str = "micrograph", n_particles: int | None = None) -> Micrograph:
        """Simulate one micrograph; the same ``seed`` always gives the same micrograph."""
        width = height if width is None else width
        if height <= 0 or width <= 0:
            raise param_error("micrograph_size", (height, width), "must be > 0")
        # A non-zero tag closes the seed: SeedSequence ignores trailing zeros, so without it
        # (s, e, 0) and (s, e) — a training crop and a written micrograph — would coincide.
        ss = np.random.SeedSequence([*np.atleast_1d(seed).tolist(), SEED_TAG])
        rng = np.random.default_rng(ss)
        gen = torch.Generator(device=self.device).manual_seed(int(ss.generate_state(1)[0]))
        cfg, px = self.cfg, self.pixel_size_a

        ctf = self.draw_ctf(rng)
        contaminants = draw_contaminants(cfg.contaminants, height, width, px, rng)
        fixed = n_particles is not None or cfg.particles.count is not None
        n = int(n_particles) if n_particles is not None else self.draw_count(height, width, rng)
        radius = self.particle_diameter_px / 2
        centres = place_particles(
            n, height, width, cfg.particles.min_distance_a / px, rng,
            excluded=None if contaminants.empty else (lambda xy: contaminants.excludes(xy, radius)),
            strict=fixed)
        angles = random_euler_angles(len(centres), rng)

        centres_t = torch.as_tensor(centres, device=self.device)
        projections = self.projector.project(euler_to_matrix(angles))
        indices = box_indices(centres_t, projections.shape[-1], height, width)
        potential = paste_sum(projections, centres_t, height, width, indices)
        masks = particle_masks(projections, cfg.labels.threshold_fraction,
                               cfg.labels.closing_radius_px)
        instances = instance_map(masks, centres_t, height, width, indices)
        del indices

        ctf_grid = ctf_for_image(ctf, (height, width), px, device=self.device)
        spectrum = torch.fft.rfft2(potential) * ctf_grid
        signal_var = rfft2_variance(spectrum, (height, width))
        if not contaminants.empty:
            spectrum += torch.fft.rfft2(contaminants.render(height, width, self.peak,
                                                            self.device)) * ctf_grid
        clean = torch.fft.irfft2(spectrum, s=(height, width))
        sigma = noise_sigma(signal_var, cfg.noise.snr)
        signal_std = math.sqrt(signal_var) if signal_var > 0 else sigma
        if cfg.noise.ice_gradient:
            clean += cfg.noise.ice_gradient * signal_std * ice_gradient(height, width, rng,
                                                                       device=self.device)
        image = add_noise(clean, sigma, gen, shot_noise=cfg.noise.shot_noise,
                          dose_per_pixel=cfg.noise.dose_e_per_a2 * px * px,
                          image_contrast=cfg.noise.image_contrast)
        image = image.sub_(image.mean()).div_(image.std().clamp_min(1e-12))

        particles = pd.DataFrame({
            "micrograph": name,
            "x": centres[:, 0].astype(float), "y": centres[:, 1].astype(float),
            "diameter": self.particle_diameter_px, "score": 1.0,
            "angle_rot": angles[:, 0], "angle_tilt": angles[:, 1], "angle_psi": angles[:, 2],
            "defocus_u_a": ctf.defocus_u_a, "defocus_v_a": ctf.defocus_v_a,
        })
        inst = instances.cpu().numpy()  # int32
        metadata = {"seed": list(np.atleast_1d(seed).tolist()), "ctf": ctf.as_dict(),
                    "snr": float(cfg.noise.snr), "noise_sigma": sigma,
                    "signal_variance": signal_var, "n_particles": int(len(centres)),
                    "n_contaminant_bodies": len(contaminants.ellipsoids),
                    "carbon_edge": contaminants.carbon is not None}
        return Micrograph(name=name, image=image.cpu().numpy().astype(np.float32, copy=False),
                          mask=(inst > 0).view(np.uint8), pixel_size_a=px,
                          particles=particles, instances=inst, metadata=metadata)
