"""Picking settings: ``cryoparticle/conf/predict.yaml`` checked against the checkpoint's facts.

:func:`build_settings` turns the config and ``Segmenter.inference_facts()`` into a frozen
:class:`Settings` (what the reader, the network module and the writer need), raising one-line
:class:`~cryoparticle.errors.InputError` for anything unusable; :class:`Settings` also knows the
output files of a micrograph (:meth:`Settings.outputs`, the STAR file last: the done marker).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryoparticle.data.preprocess import MAX_UPSAMPLING, Normalisation
from cryoparticle.errors import InputError, check_positive, file_error, param_error
from cryoparticle.models.packaged import check_export_facts
from cryoparticle.picking.extract import extract_particles, relative_threshold

#: The default box side (``box_size: null``) in particle diameters. It also sets the default edge
#: margin (``extraction.border_px: null``): half of it, so every pick's box lies inside the
#: micrograph.
BOX_PER_DIAMETER = 1.5

#: Coordinate formats and the file each writes (``NAME`` + suffix).
FORMAT_SUFFIXES: dict[str, str] = {"star": ".star", "box": ".box", "csv": ".csv",
                                   "topaz": ".txt"}
PROBABILITY_SUFFIX = "_prob.mrc"
MASK_SUFFIX = "_mask.png"
#: Appended to the error of a checkpoint that cannot be used: what the user can do about it.
CHECKPOINT_ADVICE = ("use a checkpoint trained by this version (python train.py), or omit "
                     "ckpt_path to pick with the packaged general model")
OVERLAY_SUFFIX = "_overlay.png"


def plain(value: Any) -> Any:
    from omegaconf import Container, OmegaConf

    if isinstance(value, Container):
        return OmegaConf.to_container(value, resolve=True)
    return value


def whole(name: str, value: Any, minimum: int, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            int(value) != value or value < minimum:
        raise param_error(name, value, f"must be a whole number ≥ {minimum}"
                          + (" or null" if optional else ""))
    return int(value)


#: The keyword defaults of :func:`~cryoparticle.picking.extract.extract_particles`: the
#: extraction a checkpoint without stored options is picked with.
_EXTRACT_DEFAULTS = {name: p.default for name, p in
                     inspect.signature(extract_particles).parameters.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY}


@dataclass(frozen=True)
class Extraction:
    """Options of :func:`~cryoparticle.picking.extract.extract_particles`, with its defaults
    (``border_px`` in pixels of the original micrograph; None: half the box,
    :meth:`Settings.edge_margin_px`)."""

    min_size_fraction: float = _EXTRACT_DEFAULTS["min_size_fraction"]
    max_size_fraction: float = _EXTRACT_DEFAULTS["max_size_fraction"]
    min_distance_fraction: float = _EXTRACT_DEFAULTS["min_distance_fraction"]
    split_touching: bool = _EXTRACT_DEFAULTS["split_touching"]
    border_px: float | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Extraction:
        cfg = dict(plain(cfg) or {})
        unknown = sorted(set(cfg) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise param_error("extraction", unknown[0], "unknown option; choose from "
                              + ", ".join(cls.__dataclass_fields__))
        out = cls(**cfg)
        for name in ("min_size_fraction", "max_size_fraction", "min_distance_fraction",
                     "border_px"):
            value = getattr(out, name)
            if value is None and name == "border_px":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value < 0:
                raise param_error(f"extraction.{name}", value, "must be a number ≥ 0")
        if not isinstance(out.split_touching, bool):
            raise param_error("extraction.split_touching", out.split_touching,
                              "must be true or false")
        return out


@dataclass(frozen=True)
class Settings:
    """Everything the workers and the writer need, checked (built by :func:`build_settings`)."""

    output_dir: Path
    model_pixel_size_a: float
    micrograph_pixel_size_a: float | None
    particle_diameter_a: float
    threshold: float
    box_size: int | None
    formats: tuple[str, ...]
    write_probability: bool
    write_mask: bool
    write_overlay: bool
    overwrite: bool
    combined_star: str
    extraction: Extraction
    normalisation: Normalisation = Normalisation("standardise")
    estimate_diameter: bool = False
    #: the share of a particle's diameter the network marks (its training target's core
    #: fraction; 1 for whole-disc or particle-shaped targets): estimates are divided by it
    core_fraction: float = 1.0
    #: the probability threshold the diameter is estimated at (the export's
    #: ``diameter_threshold``; None: :attr:`threshold`)
    diameter_threshold: float | None = None
    diameter_range: tuple[float, float] = (0.4, 2.5)
    drop_border: bool = True
    border_margin_px: int = 40
    #: the particle diameter (Å) the network learnt (the checkpoint's); with
    #: ``match_diameter`` and a given diameter, micrographs are resampled so that their
    #: particles are as many pixels across as these were (:meth:`resample_pixel_size_a`)
    checkpoint_diameter_a: float | None = None
    match_diameter: bool = True
    #: > 0: each micrograph's threshold is ``max(threshold, relative_threshold × its particle
    #: peak level)`` (:func:`~cryoparticle.picking.extract.relative_threshold`); 0: fixed
    relative_threshold: float = 0.0
    #: the quantile of the particle peak heights that is the level
    #: (:func:`~cryoparticle.picking.extract.particle_peak_level`)
    peak_quantile: float = 0.5
    #: ``dark`` (the micrograph as given), ``light`` (inverted) or ``auto`` (each micrograph in
    #: the polarity whose particle peak level, at ``polarity_quantile``, is higher; light only
    #: above ``polarity_margin`` × dark: :func:`~cryoparticle.picking.extract.choose_polarity`)
    polarity: str = "dark"
    polarity_margin: float = 1.03
    polarity_quantile: float = 0.98

    def picking_threshold(self, peak_level: float | None) -> float:
        """The threshold of a micrograph whose particle peak level is ``peak_level`` (None
        when the threshold is fixed): :attr:`threshold`, or, when :attr:`relative_threshold`
        > 0, ``max(threshold, relative_threshold × peak_level)``."""
        if self.relative_threshold <= 0 or peak_level is None:
            return self.threshold
        return relative_threshold(peak_level, self.relative_threshold, self.threshold)

    def resample_pixel_size_a(self, micrograph_pixel_size_a: float) -> float:
        """The pixel size (Å/px) a micrograph of ``micrograph_pixel_size_a`` is resampled to
        before segmentation: the network's, or, when ``match_diameter`` and the particle
        diameter was given (not the checkpoint's, not estimated), the network's × given
        diameter / checkpoint's diameter, so that the particles appear at the size the network
        learnt (a picker segments particles well near the size it was trained on, less well far
        from it) — never finer than the micrograph's / ``MAX_UPSAMPLING``."""
        if (self.match_diameter and self.checkpoint_diameter_a and not self.estimate_diameter
                and abs(self.particle_diameter_a - self.checkpoint_diameter_a)
                > 1e-6 * self.checkpoint_diameter_a):
            matched = self.model_pixel_size_a * self.particle_diameter_a / \
                self.checkpoint_diameter_a
            return max(matched, micrograph_pixel_size_a / MAX_UPSAMPLING)
        return self.model_pixel_size_a

    def diameter_bounds_a(self) -> tuple[float, float]:
        """``(min, max)`` particle diameter (Å) an estimate may take: ``diameter_range``
        times :attr:`particle_diameter_a`."""
        return (self.diameter_range[0] * self.particle_diameter_a,
                self.diameter_range[1] * self.particle_diameter_a)

    def box_px(self, diameter_px: float) -> int:
        """The box side (pixels of the original micrograph) for particles of ``diameter_px``
        (same pixels): ``box_size``, else :data:`BOX_PER_DIAMETER` diameters."""
        if self.box_size is not None:
            return self.box_size
        return max(1, round(BOX_PER_DIAMETER * diameter_px))

    def edge_margin_px(self, diameter_px: float) -> float:
        """Picks whose centre is closer than this to the micrograph's edge (original pixels)
        are dropped: ``extraction.border_px``, else half the box (:meth:`box_px`), so that
        every pick can be extracted whole (RELION's extraction discards cut-off boxes, and
        expert picks such as CryoPPP's leave such particles out)."""
        if self.extraction.border_px is not None:
            return float(self.extraction.border_px)
        return self.box_px(diameter_px) / 2

    def outputs(self, name: str) -> list[Path]:
        """Every file written for micrograph ``name``; the STAR file (the done marker) last."""
        paths = [self.output_dir / f"{name}{suffix}" for suffix in
                 ((PROBABILITY_SUFFIX,) if self.write_probability else ())
                 + ((MASK_SUFFIX,) if self.write_mask else ())
                 + ((OVERLAY_SUFFIX,) if self.write_overlay else ())]
        paths += [self.output_dir / f"{name}{FORMAT_SUFFIXES[f]}" for f in self.formats
                  if f != "star"]
        return paths + [self.output_dir / f"{name}.star"]

    def is_done(self, name: str) -> bool:
        """Whether every output of ``name`` exists (written atomically, the STAR file last)."""
        return all(path.is_file() for path in self.outputs(name))


def _formats(value: Any) -> tuple[str, ...]:
    value = plain(value)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise param_error("formats", value, "must be a list, e.g. [star, box, csv, topaz]")
    formats = [str(v).lower() for v in value]
    unknown = [f for f in formats if f not in FORMAT_SUFFIXES]
    if unknown:
        raise param_error("formats", unknown[0], "unknown format; choose from "
                          + ", ".join(FORMAT_SUFFIXES))
    # STAR is always written: it marks a finished micrograph and feeds the combined STAR.
    return tuple(dict.fromkeys(["star", *formats]))


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise param_error(name, value, "must be true or false")
    return value


def _diameter_range(value: Any) -> tuple[float, float]:
    value = plain(value)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise param_error("diameter_range", value, "must be [min, max] fractions of the "
                                                   "checkpoint's particle diameter")
    low, high = (check_positive("diameter_range", v) for v in value)
    if not low <= 1.0 <= high:  # type: ignore[operator]
        raise param_error("diameter_range", value, "must be [min, max] with min ≤ 1 ≤ max")
    return float(low), float(high)  # type: ignore[arg-type]


def build_settings(cfg: Mapping[str, Any], facts: Mapping[str, Any], ckpt_path: Path
                   ) -> Settings:
    """Check the config against the checkpoint's facts (``Segmenter.inference_facts()``, plus
    ``export``: what :func:`~cryoparticle.models.packaged.export_checkpoint` stored under
    ``checkpoint["cryoparticle"]["export"]``, e.g. ``estimate_diameter``).

    The particle diameter: an explicit ``particle_diameter_a`` always wins (never estimated);
    else the checkpoint's, estimated per micrograph when ``estimate_diameter`` is true, or
    when it is null and the checkpoint's ``export.estimate_diameter`` is true.
    ``particle_diameter_px`` (pixels of the input micrographs): with ``micrograph_pixel_size_a``
    it gives the diameter in Å (as an explicit one); without, it gives the pixel size — the
    diameter (given or the checkpoint's) over it — for micrographs whose pixel size is unknown.
    """
    model_px = facts.get("pixel_size_a")
    if model_px is None or not math.isfinite(float(model_px)) or float(model_px) <= 0:
        raise file_error(ckpt_path, "checkpoint has no training pixel size (pixel_size_a); "
                                    f"it cannot be used for picking: {CHECKPOINT_ADVICE}")
    try:
        normalisation = Normalisation.from_spec(facts.get("normalisation"))
    except InputError as exc:
        raise file_error(ckpt_path, f"checkpoint's normalisation is unknown ({exc}): "
                                    f"{CHECKPOINT_ADVICE}") from None
    diameter = check_positive("particle_diameter_a", cfg.get("particle_diameter_a"),
                              optional=True)
    estimate = cfg.get("estimate_diameter")
    if estimate is None:
        estimate = bool((facts.get("export") or {}).get("estimate_diameter", False))
    estimate = flag("estimate_diameter", estimate) and diameter is None
    export = dict(facts.get("export") or {})
    try:
        check_export_facts(export)  # the exporter's own check
    except InputError as exc:
        raise file_error(ckpt_path, str(exc)) from None
    core_fraction = export.get("core_fraction")
    diameter_threshold = export.get("diameter_threshold")
    pixel_size_a = check_positive("micrograph_pixel_size_a", cfg.get("micrograph_pixel_size_a"),
                                  optional=True)
    diameter_px = check_positive("particle_diameter_px", cfg.get("particle_diameter_px"),
                                 optional=True)
    if diameter_px is not None and pixel_size_a is not None:  # both known: the diameter in Å
        from_px = diameter_px * pixel_size_a
        if diameter is not None and abs(diameter - from_px) > 0.01 * from_px:
            raise param_error("particle_diameter_px", diameter_px,
                              f"× micrograph_pixel_size_a={pixel_size_a:g} Å/px is {from_px:g} Å, "
                              f"not particle_diameter_a={diameter:g} Å: give two of the three")
        diameter, estimate = from_px, False
    learnt = facts.get("particle_diameter_a")
    learnt = (float(learnt) if learnt is not None and math.isfinite(float(learnt))
              and float(learnt) > 0 else None)
    if diameter is None:
        diameter = learnt
        if diameter is None:
            raise param_error("particle_diameter_a", None, "the checkpoint carries no particle "
                              "diameter: give particle_diameter_a (Å)")
    if diameter_px is not None and pixel_size_a is None:
        # no pixel size: the one at which the particles are as large as the network expects
        pixel_size_a = float(diameter) / diameter_px
    threshold = cfg.get("threshold")
    relative, quantile = _relative_threshold(cfg, export, fixed=threshold is not None)
    if threshold is None:
        threshold = facts.get("picking_threshold", 0.5)
    threshold_value = _number(threshold)
    if not 0.0 <= threshold_value <= 1.0:
        raise param_error("threshold", threshold, "must be a probability in [0, 1] or null")
    combined = str(cfg.get("combined_star") or "particles.star")
    if "/" in combined or "\\" in combined or not combined.endswith(".star"):
        raise param_error("combined_star", combined, "must be a file name ending in .star")
    return Settings(
        output_dir=Path(str(cfg["output_dir"])),
        model_pixel_size_a=float(model_px),
        micrograph_pixel_size_a=pixel_size_a,
        particle_diameter_a=float(diameter),
        threshold=threshold_value,
        box_size=whole("box_size", cfg.get("box_size"), 1, optional=True),
        formats=_formats(cfg.get("formats", ["star", "box", "csv"])),
        write_probability=flag("write_probability", cfg.get("write_probability", False)),
        write_mask=flag("write_mask", cfg.get("write_mask", False)),
        write_overlay=flag("write_overlay", cfg.get("write_overlay", False)),
        overwrite=flag("overwrite", cfg.get("overwrite", False)),
        combined_star=combined,
        extraction=Extraction.from_config({
            **(facts.get("extraction") or {}),
            **{k: v for k, v in (plain(cfg.get("extraction")) or {}).items() if v is not None}}),
        normalisation=normalisation,
        estimate_diameter=estimate,
        core_fraction=1.0 if core_fraction is None else float(core_fraction),
        diameter_threshold=None if diameter_threshold is None else float(diameter_threshold),
        diameter_range=_diameter_range(cfg.get("diameter_range", [0.4, 2.5])),
        drop_border=flag("drop_border", cfg.get("drop_border", True)),
        border_margin_px=whole("border_margin_px", cfg.get("border_margin_px", 40), 0),
        checkpoint_diameter_a=learnt,
        match_diameter=flag("match_diameter", cfg.get("match_diameter", True)),
        relative_threshold=relative,
        peak_quantile=quantile,
        **_polarity(cfg),
    )


def _number(value: Any) -> float:
    """``value`` as a float; NaN for anything else (a bool, text, a list), so that a range
    check refuses it."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _polarity(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``polarity``, ``polarity_margin`` and ``polarity_quantile`` of the config, checked."""
    from cryoparticle.picking.segment import POLARITY_SIGNS

    polarity = str(cfg.get("polarity") or "auto")
    if polarity not in POLARITY_SIGNS:
        raise param_error("polarity", cfg.get("polarity"),
                          f"must be one of {', '.join(POLARITY_SIGNS)}")
    margin = cfg.get("polarity_margin", Settings.polarity_margin)
    margin_value = _number(margin)
    if not (math.isfinite(margin_value) and margin_value >= 1.0):
        raise param_error("polarity_margin", margin, "must be a number ≥ 1")
    quantile = cfg.get("polarity_quantile", Settings.polarity_quantile)
    quantile_value = _number(quantile)
    if not 0.0 <= quantile_value <= 1.0:
        raise param_error("polarity_quantile", quantile, "must be in [0, 1]")
    return {"polarity": polarity, "polarity_margin": margin_value,
            "polarity_quantile": quantile_value}


def _relative_threshold(cfg: Mapping[str, Any], export: Mapping[str, Any], *, fixed: bool
                        ) -> tuple[float, float]:
    """``(relative_threshold, peak_quantile)``: the config's, else the export's. A threshold
    given in the config without ``relative_threshold`` (``fixed``) is used as it is: the
    export's relative threshold was chosen with the export's own threshold as its floor."""
    values = []
    for key, default in (("relative_threshold", 0.0), ("peak_quantile", 0.5)):
        value = cfg.get(key)
        if value is None:
            value = default if fixed and key == "relative_threshold" else \
                export.get(key, default)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not 0.0 <= number <= 1.0:
            raise param_error(key, value, "must be in [0, 1] or null")
        values.append(number)
    return values[0], values[1]


__all__ = ["CHECKPOINT_ADVICE", "FORMAT_SUFFIXES", "MASK_SUFFIX", "OVERLAY_SUFFIX",
           "PROBABILITY_SUFFIX", "Extraction", "Settings", "build_settings", "flag", "plain",
           "whole"]
