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
from cryoparticle.io.mrc import MASK_IGNORE
from cryoparticle.micrograph import Micrograph
from cryoparticle.simulate.contaminants import draw_contaminants
from cryoparticle.simulate.ctf import CTFParams, ctf_for_image
from cryoparticle.simulate.labels import (box_indices, disc_masks, instance_map, pad_boxes,
                                          paste_sum, particle_masks)
from cryoparticle.simulate.looks import Look, apply_look, draw_look
from cryoparticle.simulate.noise import (add_noise, coloured_noise, detector_mtf, ice_gradient,
                                         noise_sigma, radial_frequency, rfft2_variance)
from cryoparticle.simulate.placement import clustered_sampler, place_particles
from cryoparticle.simulate.projection import euler_to_matrix, random_euler_angles
from cryoparticle.simulate.species import Species, blob_volume, tight_box
from cryoparticle.simulate.volume import load_volume, volume_diameter_a

UM2_IN_A2 = 1e8
SEED_TAG = 0x5EED
#: Spawn key of the stream drawing the per-micrograph variation (general configs): separate
#: from the main stream, so configs without variation keep their micrographs.
VARIATION_KEY = 0x7A41
BLOBS = "blobs"


def _check_range(name: str, values: Sequence[float], low: float, strict: bool = False) -> None:
    lo, hi = float(values[0]), float(values[1])
    if (lo <= low if strict else lo < low) or hi < lo:
        op = ">" if strict else "≥"
        raise param_error(name, list(values), f"must be a range [lo, hi] with {op} {low} and lo ≤ hi")


def _value(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.key`` (a dotted path), or ``default`` where the config lacks it (older configs)."""
    return OmegaConf.select(cfg, key, default=default)


def _draw(value: Any, rng: np.random.Generator, *, log: bool = False) -> float:
    """A config value that is a number (kept) or a range ``[lo, hi]`` (drawn uniformly, or
    log-uniformly with ``log``)."""
    if isinstance(value, (int, float)):
        return float(value)
    lo, hi = float(value[0]), float(value[1])
    if log:
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return float(rng.uniform(lo, hi))


def _is_range(value: Any) -> bool:
    return not isinstance(value, (int, float, str)) and value is not None


class MicrographSimulator:
    """Simulates micrographs from the ``simulator`` config group (see ``conf/simulator/``).

    A config without the variation keys (``volume.species``, ranges for ``noise.snr``, ``look``,
    ``contrast``, ``pixel_size_scale`` ...) simulates one species at one SNR, as
    ``empiar10017.yaml``; ``general.yaml`` draws all of them per micrograph.
    """

    def __init__(self, cfg: DictConfig | dict[str, Any]) -> None:
        cfg = OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg
        self.cfg = cfg
        self.pixel_size_a = float(cfg.pixel_size_a)
        if self.pixel_size_a <= 0:
            raise param_error("pixel_size_a", self.pixel_size_a, "must be > 0")
        snr = cfg.noise.snr
        if _is_range(snr):
            _check_range("snr", snr, 0.0, strict=True)
        elif not snr > 0:
            raise param_error("snr", snr, "must be > 0")
        _check_range("defocus_um", cfg.microscope.defocus_um, 0.0)
        _check_range("astigmatism_um", cfg.microscope.astigmatism_um, 0.0)
        _check_range("density_per_um2", cfg.particles.density_per_um2, 0.0)
        empty = _value(cfg, "particles.empty_probability", 0.0)
        self.empty_probability = float(empty or 0.0)
        if not 0.0 <= self.empty_probability <= 1.0:
            raise param_error("particles.empty_probability", empty, "must be in [0, 1]")
        min_distance = cfg.particles.min_distance_a
        if min_distance is None and _value(cfg, "particles.min_distance_diameters") is None:
            raise param_error("min_distance_a", None, "give min_distance_a or "
                              "min_distance_diameters")
        if min_distance is not None and min_distance < 0:
            raise param_error("min_distance_a", min_distance, "must be ≥ 0")
        self.labels_shape = str(_value(cfg, "labels.shape", "projection"))
        if self.labels_shape not in ("projection", "disc", "core"):
            raise param_error("labels.shape", self.labels_shape,
                              "choose projection, disc or core")
        self.core_fraction = float(_value(cfg, "labels.core_fraction", 0.5))
        if not 0.0 < self.core_fraction <= 1.0:
            raise param_error("labels.core_fraction", self.core_fraction, "must be in (0, 1]")
        self.device = torch.device(cfg.device)
        pad = cfg.volume.projection_pad_factor
        entries = _value(cfg, "volume.species")
        if not entries:
            entries = [{"source": cfg.volume.source,
                        "particle_diameter_a": cfg.volume.particle_diameter_a, "weight": 1.0}]
        self.species: list[Species | None] = []  # None: procedural blobs, drawn per micrograph
        self.species_weights = np.array([float(e.get("weight", 1.0)) for e in entries])
        if (self.species_weights < 0).any() or self.species_weights.sum() <= 0:
            raise param_error("volume.species", [dict(e) for e in entries],
                              "weights must be ≥ 0, not all 0")
        self.volume: np.ndarray | None = None  # the first file species' (benchmarks)
        self._blob_cache: dict[int, Species] = {}
        for entry in entries:
            source = entry["source"]
            if str(source) == BLOBS:
                _check_range("blobs.diameter_a", cfg.volume.blobs.diameter_a, 0.0, strict=True)
                self.species.append(None)
                continue
            vol = tight_box(load_volume(source, self.pixel_size_a, source_pixel_size_a=entry.get(
                "source_pixel_size_a", cfg.volume.source_pixel_size_a)))
            diameter_a = entry.get("particle_diameter_a")
            if diameter_a is None:
                diameter_a = volume_diameter_a(vol, self.pixel_size_a)
            self.species.append(Species.from_volume(str(source), vol, float(diameter_a), pad,
                                                    self.device))
            if self.volume is None:
                self.volume = vol
        first = next((s for s in self.species if s is not None), None)
        if first is not None:
            self.projector, self.peak = first.projector, first.peak
            self.particle_diameter_a = first.diameter_a
        else:
            self.particle_diameter_a = float(np.mean(cfg.volume.blobs.diameter_a))
        self.particle_diameter_px = self.particle_diameter_a / self.pixel_size_a

    def draw_count(self, height: int, width: int, rng: np.random.Generator,
                   pixel_size_a: float | None = None, diameter_px: float | None = None,
                   variation: np.random.Generator | None = None) -> int:
        """Number of particles for a micrograph of this size (fixed count, drawn density, or
        drawn coverage: the fraction of the area the particles' discs cover); none, with
        probability ``particles.empty_probability``, when the count is not fixed (empty ice)."""
        if self.cfg.particles.count is not None:
            return int(self.cfg.particles.count)
        if (self.empty_probability > 0.0
                and (variation if variation is not None else rng).random()
                < self.empty_probability):
            return 0
        coverage = _value(self.cfg, "particles.coverage")
        if coverage is not None and diameter_px is not None and variation is not None:
            disc = math.pi * diameter_px * diameter_px / 4
            return int(variation.poisson(_draw(coverage, variation) * height * width / disc))
        px = self.pixel_size_a if pixel_size_a is None else pixel_size_a
        area_um2 = height * width * px**2 / UM2_IN_A2
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

    def draw_species(self, rng: np.random.Generator) -> list[Species]:
        """This micrograph's species: one entry of ``volume.species`` by weight; procedural
        blobs give ``blobs.shapes_per_micrograph`` shapes of the pool (:meth:`blob_species`)."""
        w = self.species_weights
        chosen = self.species[int(rng.choice(len(w), p=w / w.sum()))] if len(w) > 1 \
            else self.species[0]
        if chosen is not None:
            return [chosen]
        b = self.cfg.volume.blobs
        count = int(rng.integers(b.shapes_per_micrograph[0], b.shapes_per_micrograph[1] + 1))
        return [self.blob_species(int(k)) for k in rng.integers(0, int(b.pool_size), count)]

    def blob_species(self, index: int) -> Species:
        """Procedural blob ``index`` of the pool (``blobs.pool_size`` shapes, each drawn from
        its own seed). The last ``blobs.cache_size`` are kept (a projector costs ~20 ms to
        build and a few MB to keep)."""
        cached = self._blob_cache.pop(index, None)
        if cached is None:
            b = self.cfg.volume.blobs
            rng = np.random.default_rng(np.random.SeedSequence([index, SEED_TAG],
                                                               spawn_key=(VARIATION_KEY,)))
            diameter_a = _draw(b.diameter_a, rng)
            cached = Species.from_volume(
                BLOBS, blob_volume(diameter_a, self.pixel_size_a, rng,
                                   n_gaussians=tuple(b.n_gaussians),
                                   width_fraction=tuple(b.width_fraction), texture=b.texture),
                diameter_a, self.cfg.volume.projection_pad_factor, self.device)
        self._blob_cache[index] = cached  # most recently used last
        while len(self._blob_cache) > int(self.cfg.volume.blobs.cache_size):
            self._blob_cache.pop(next(iter(self._blob_cache)))
        return cached

    def _project(self, species: list[Species], which: np.ndarray, angles: np.ndarray,
                 scale: float) -> tuple[torch.Tensor, np.ndarray]:
        """Projections ``(N, B, B)`` of particle ``i`` of species ``which[i]``, magnified by
        ``scale`` (pixel-size jitter), in one common box; and their diameters in pixels."""
        rot = euler_to_matrix(angles)
        groups = []
        for k, sp in enumerate(species):
            idx = np.flatnonzero(which == k)
            proj = sp.projector.project(rot[idx]) if len(idx) else None
            if proj is not None and scale != 1.0:
                box = max(2, 2 * round(proj.shape[-1] * scale / 2))
                proj = torch.nn.functional.interpolate(proj[:, None], size=(box, box),
                                                       mode="bilinear", align_corners=False,
                                                       antialias=scale < 1)[:, 0]
            groups.append((idx, proj))
        diameters = np.array([sp.diameter_a for sp in species])[which] * scale \
            / self.pixel_size_a
        box = max([p.shape[-1] for _, p in groups if p is not None] + [2])
        if self.labels_shape == "disc" and len(diameters):
            box = max(box, 2 * math.ceil(float(diameters.max()) / 2) + 2)
        out = torch.zeros((len(which), box, box), device=self.device)
        for idx, proj in groups:
            if proj is not None:
                out[torch.as_tensor(idx, device=self.device)] = pad_boxes(proj, box)
        return out, diameters

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
        vary = np.random.default_rng(np.random.SeedSequence(ss.entropy,
                                                            spawn_key=(VARIATION_KEY,)))
        cfg = self.cfg
        # Pixel-size jitter: the micrograph's true pixel size ``px`` differs from the nominal one
        # it is labelled with (``Micrograph.pixel_size_a``; ``true_pixel_size_a`` in the
        # metadata): particles look larger or smaller than the nominal size, as across datasets.
        scale_range = _value(cfg, "pixel_size_scale")
        pixel_scale = _draw(scale_range, vary) if scale_range is not None else 1.0
        px = self.pixel_size_a * pixel_scale
        magnification = 1.0 / pixel_scale
        species = self.draw_species(vary)
        mean_diameter_px = float(np.mean([sp.diameter_a for sp in species])) / px

        ctf = self.draw_ctf(rng)
        contaminants = draw_contaminants(cfg.contaminants, height, width, px, rng)
        fixed = n_particles is not None or cfg.particles.count is not None
        n = int(n_particles) if n_particles is not None else self.draw_count(
            height, width, rng, px, mean_diameter_px, vary)
        radius = mean_diameter_px / 2
        if cfg.particles.min_distance_a is not None:
            min_distance_px = cfg.particles.min_distance_a / px
        else:
            min_distance_px = _draw(cfg.particles.min_distance_diameters, vary) * mean_diameter_px
        sampler = None
        agg = _value(cfg, "particles.aggregation")
        if agg is not None and vary.uniform() < float(agg.probability) and n > 0:
            per_cluster = _draw(agg.particles_per_cluster, vary)
            fraction = _draw(agg.fraction, vary)
            sampler = clustered_sampler(height, width, vary,
                                        max(1, round(n * fraction / max(per_cluster, 1.0))),
                                        fraction, float(agg.spread_diameters) * mean_diameter_px)
        centres = place_particles(
            n, height, width, min_distance_px, rng,
            excluded=None if contaminants.empty else (lambda xy: contaminants.excludes(xy, radius)),
            strict=fixed, sampler=sampler)
        angles = random_euler_angles(len(centres), rng)
        which = vary.integers(0, len(species), len(centres)) if len(species) > 1 \
            else np.zeros(len(centres), dtype=np.int64)

        centres_t = torch.as_tensor(centres, device=self.device)
        projections, diameters_px = self._project(species, which, angles, magnification)
        indices = box_indices(centres_t, projections.shape[-1], height, width)
        potential = paste_sum(projections, centres_t, height, width, indices)
        cores = None
        if self.labels_shape in ("disc", "core"):
            diameters_t = torch.as_tensor(diameters_px, device=self.device)
            masks = disc_masks(diameters_t, projections.shape[-1])
            if self.labels_shape == "core":  # particle = the core disc, the rest of it ignore
                cores = instance_map(disc_masks(diameters_t * self.core_fraction,
                                                projections.shape[-1]),
                                     centres_t, height, width, indices) > 0
        else:
            masks = particle_masks(projections, cfg.labels.threshold_fraction,
                                   cfg.labels.closing_radius_px)
        instances = instance_map(masks, centres_t, height, width, indices)
        del indices

        ctf_grid = ctf_for_image(ctf, (height, width), px, device=self.device)
        spectrum = torch.fft.rfft2(potential) * ctf_grid
        variation = self._signal_variation(vary, (height, width), mean_diameter_px)
        if "low_frequency_gain" in variation:
            spectrum *= variation.pop("_lowpass_filter")
        if "mtf_at_nyquist" in variation:
            mtf = detector_mtf(radial_frequency((height, width), self.device),
                               variation["mtf_at_nyquist"])
            spectrum *= mtf
        signal_var = rfft2_variance(spectrum, (height, width))
        if not contaminants.empty:
            peak = float(np.mean([sp.peak for sp in species]))
            contaminant = torch.fft.rfft2(contaminants.render(height, width, peak, self.device))
            if "mtf_at_nyquist" in variation:
                contaminant *= mtf
            spectrum += contaminant * ctf_grid
        clean = torch.fft.irfft2(spectrum, s=(height, width))
        snr = _draw(cfg.noise.snr, vary, log=True)
        sigma = noise_sigma(signal_var, snr)
        signal_std = math.sqrt(signal_var) if signal_var > 0 else sigma
        ice = cfg.noise.ice_gradient
        ice = _draw(ice, vary) if _is_range(ice) else ice
        if ice:
            clean += ice * signal_std * ice_gradient(height, width, rng, device=self.device)
        look_cfg = _value(cfg, "look")
        if variation.get("coloured", False):
            gen_vary = torch.Generator(device=self.device).manual_seed(
                int(vary.integers(0, 2**62)))
            noise = coloured_noise((height, width), sigma, gen_vary,
                                   mtf_at_nyquist=variation["mtf_at_nyquist"],
                                   pink_fraction=variation["pink_fraction"],
                                   pink_exponent=variation["pink_exponent"], device=self.device)
            image = clean + noise
        else:
            image = add_noise(clean, sigma, gen, shot_noise=cfg.noise.shot_noise,
                              dose_per_pixel=cfg.noise.dose_e_per_a2 * px * px,
                              image_contrast=cfg.noise.image_contrast)
        flip = vary.uniform() < float(_value(cfg, "contrast.flip_probability", 0.0))
        look: Look | None = draw_look(look_cfg, vary) if look_cfg is not None else None
        if look is not None:
            sign = -1.0 if flip else 1.0
            out = torch.from_numpy(apply_look(sign * clean, sign * (image - clean), look, px))
            image = out.to(self.device)
        elif flip:
            image = -image
        image = image.sub_(image.mean()).div_(image.std().clamp_min(1e-12))

        particles = pd.DataFrame({
            "micrograph": name,
            "x": centres[:, 0].astype(float), "y": centres[:, 1].astype(float),
            "diameter": diameters_px, "score": 1.0,
            "angle_rot": angles[:, 0], "angle_tilt": angles[:, 1], "angle_psi": angles[:, 2],
            "defocus_u_a": ctf.defocus_u_a, "defocus_v_a": ctf.defocus_v_a,
        })
        inst = instances.cpu().numpy()  # int32
        metadata = {"seed": list(np.atleast_1d(seed).tolist()), "ctf": ctf.as_dict(),
                    "snr": float(snr), "noise_sigma": sigma,
                    "signal_variance": signal_var, "n_particles": int(len(centres)),
                    "n_contaminant_bodies": len(contaminants.ellipsoids),
                    "carbon_edge": contaminants.carbon is not None}
        if scale_range is not None or len(self.species) > 1 or look is not None or variation:
            metadata.update({"species": [sp.name for sp in species],
                             "particle_diameter_a": [sp.diameter_a for sp in species],
                             "true_pixel_size_a": px, "contrast_flipped": bool(flip),
                             "ice_gradient": float(ice or 0.0),
                             "look": None if look is None else look.as_dict(),
                             **{k: v for k, v in variation.items() if not k.startswith("_")}})
        mask = (inst > 0).view(np.uint8)
        if cores is not None:
            mask = np.where(cores.cpu().numpy(), np.uint8(1),
                            np.where(inst > 0, np.uint8(MASK_IGNORE), np.uint8(0)))
        return Micrograph(name=name, image=image.cpu().numpy().astype(np.float32, copy=False),
                          mask=mask, pixel_size_a=self.pixel_size_a,
                          particles=particles, instances=inst, metadata=metadata)

    def _signal_variation(self, rng: np.random.Generator, shape: tuple[int, int],
                          diameter_px: float) -> dict[str, Any]:
        """Per-micrograph signal and noise colour: the gain of the particles' low frequencies
        (below ``1 / (cutoff_diameters × diameter)``; negative inverts their mean contrast)
        and the detector MTF / 1/f noise. Empty for configs without these keys."""
        out: dict[str, Any] = {}
        gain = _value(self.cfg, "contrast.low_frequency_gain")
        if gain is not None:
            g = _draw(gain, rng)
            out["low_frequency_gain"] = g
            cutoff = 1.0 / (float(self.cfg.contrast.low_frequency_cutoff_diameters) * diameter_px)
            k = radial_frequency(shape, self.device)
            out["_lowpass_filter"] = 1.0 + (g - 1.0) * torch.exp(-0.5 * (k / cutoff) ** 2)
        mtf = _value(self.cfg, "noise.mtf_at_nyquist")
        if mtf is not None:
            out.update(coloured=True, mtf_at_nyquist=_draw(mtf, rng),
                       pink_fraction=_draw(self.cfg.noise.pink_fraction, rng),
                       pink_exponent=_draw(self.cfg.noise.pink_exponent, rng))
        return out
