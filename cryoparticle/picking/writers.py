"""Picking output: particles from each probability map, every file written, the run summarised.

:class:`PickRecorder` runs :func:`~cryoparticle.picking.extract.extract_particles` on each binned
probability map, scales the coordinates back to the original micrograph (binned pixel ``i``
sits at original ``i × factor``, the sampling grid of
:func:`~cryoparticle.data.preprocess.fourier_bin`) and writes every format atomically,
``NAME.star`` last (it marks the micrograph done, so a rerun skips it); optionally
``NAME_prob.mrc``, ``NAME_mask.png`` and ``NAME_overlay.png``
(:func:`cryoparticle.viz.picks_figure`) on the network's binned grid. At the end it writes the
combined STAR and ``predict_summary.json`` (:class:`PredictSummary`); :func:`print_summary`
shows it as a table. ``predict.py`` calls it from its loop on one device, and through
:class:`~cryoparticle.picking.module.PickWriter` (a Lightning ``BasePredictionWriter``, which
gathers the ranks' results) on several.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryoparticle.data.borders import BorderWidths, border_mask, drop_border_picks
from cryoparticle.errors import InputError, file_error
from cryoparticle.io.atomic import write_text_atomic
from cryoparticle.io.checks import one_line
from cryoparticle.io.coords import (
    COORDINATE_FILES_NAME,
    empty_particles,
    read_star,
    scale_coordinates,
    write_box,
    write_coordinate_files_star,
    write_cryoppp_csv,
    write_relion_coordinates,
    write_star,
    write_topaz,
)
from cryoparticle.io.jsonfile import jsonable
from cryoparticle.io.mrc import write_mask_png, write_mrc
from cryoparticle.picking.extract import (choose_polarity, estimate_diameter_px,
                                          extract_particles, particle_peak_level)
from cryoparticle.picking.settings import (
    MASK_SUFFIX,
    OVERLAY_SUFFIX,
    PROBABILITY_SUFFIX,
    Settings,
)
from cryoparticle.viz import picks_figure, save_figure_png

SUMMARY_NAME = "predict_summary.json"


def picking_diameter_a(prob: np.ndarray, settings: Settings, binned_px: float) -> float:
    """The particle diameter (Å) to pick ``prob`` (binned grid, ``binned_px`` Å/px) with:
    ``settings.particle_diameter_a``, or, when ``settings.estimate_diameter``, the estimate
    of :func:`~cryoparticle.picking.extract.estimate_diameter_px` (the size of the regions the
    network marks, divided by ``settings.core_fraction``: a network trained on particle cores
    marks that share of each diameter) within :meth:`Settings.diameter_bounds_a` (that
    diameter when there is too little foreground), at ``settings.diameter_threshold`` (the
    threshold the core fraction holds at) or else the picking threshold: the fixed one, or a
    relative one's for this micrograph with its peak level measured at the given diameter (not
    its floor, at which the regions of a confident map would merge)."""
    if not settings.estimate_diameter:
        return settings.particle_diameter_a
    low, high = settings.diameter_bounds_a()
    core = settings.core_fraction
    at = settings.diameter_threshold
    if at is None:
        level = None
        if settings.relative_threshold > 0:
            level = particle_peak_level(prob, settings.particle_diameter_a / binned_px,
                                        quantile=settings.peak_quantile)
        at = settings.picking_threshold(level)
    estimate = estimate_diameter_px(prob, at,
                                    min_diameter_px=max(core * low / binned_px, 1.0),
                                    max_diameter_px=max(core * high / binned_px, 1.0))
    return settings.particle_diameter_a if estimate is None else estimate * binned_px / core


def prepare_output_dir(path: Path) -> None:
    """Create ``path`` and check that files can be written there (else :class:`InputError`)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise file_error(path, f"cannot create the output folder ({exc.strerror or exc})") \
            from None
    if not path.is_dir():
        raise file_error(path, "output_dir exists and is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test.", delete=True):
            pass
    except OSError as exc:
        raise file_error(path, f"cannot write to the output folder ({exc.strerror or exc})") \
            from None


@dataclass
class Result:
    """What happened to one micrograph."""

    index: int
    name: str
    path: str
    status: str  # "picked" | "skipped" | "failed"
    n_particles: int = 0
    error: str | None = None
    original_shape: tuple[int, int] | None = None
    bin_factor: float | None = None
    pixel_size_a: float | None = None
    tile_size: int | None = None
    particle_diameter_a: float | None = None   # the diameter picked with (Å)
    diameter_estimated: bool = False           # estimated from the probability map
    edge_margin_px: float | None = None        # picks closer to the edge dropped (original px)
    threshold: float | None = None             # the probability threshold picked at
    peak_level: float | None = None            # the particle peak level (relative threshold)
    polarity: str | None = None                # dark (as given) | light (picked inverted)
    polarity_levels: tuple[float, float] | None = None   # polarity=auto: dark, light levels
    read_s: float = 0.0
    segment_s: float = 0.0
    extract_s: float = 0.0
    write_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.read_s + self.segment_s + self.extract_s + self.write_s


@dataclass
class PredictSummary:
    """The outcome of a run (also ``output_dir/predict_summary.json``)."""

    n_micrographs: int
    n_picked: int
    n_skipped: int
    n_failed: int
    n_particles: int           # in the combined STAR (this run's and earlier runs' micrographs)
    n_particles_new: int       # picked in this run
    particles_per_micrograph: float
    seconds_per_micrograph: float        # read + bin + segment + extract + write, mean
    wall_seconds_per_micrograph: float   # wall time of the run / micrographs picked
    wall_s: float
    threshold: float           # the fixed threshold, or the floor of the relative one
    device: str
    output_dir: str
    combined_star: str | None
    failures: list[str] = field(default_factory=list)
    micrographs: list[dict[str, Any]] = field(default_factory=list)
    relative_threshold: float = 0.0   # > 0: max(threshold, this × each peak level)
    peak_quantile: float = 0.5        # the peak level: this quantile of the peak heights
    polarity: str = "dark"            # dark | light | auto (each micrograph's: micrographs)

    @property
    def exit_code(self) -> int:
        return 1 if self.n_failed else 0

    def to_json(self) -> str:
        return json.dumps(jsonable(asdict(self)), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PredictSummary:
        data = json.loads(text)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key in ("particles_per_micrograph", "seconds_per_micrograph",
                    "wall_seconds_per_micrograph"):
            if known.get(key) is None:
                known[key] = math.nan
        return cls(**known)


class PickRecorder:
    """Extracts particles from each micrograph's probability map and writes every output.

    :meth:`record`, per micrograph: picks on the binned map, scaled to the original
    micrograph, written in every format atomically with ``NAME.star`` last; the outcome kept
    in :attr:`results`. :meth:`finish`, at the end of the run (on one process: every
    micrograph's results): the combined STAR and ``predict_summary.json``, the
    :class:`PredictSummary` returned and kept in :attr:`summary`.
    """

    def __init__(self, settings: Settings, paths: Sequence[Path], names: Sequence[str],
                 device: str = "cpu") -> None:
        self.settings = settings
        self.paths = list(paths)
        self.names = list(names)
        self.device_name = device
        self.results: list[Result] = []
        self.summary: PredictSummary | None = None
        self._start = time.perf_counter()

    def start(self) -> None:
        """Forget earlier results; the run's wall time counts from now."""
        self.results = []
        self.summary = None
        self._start = time.perf_counter()

    # ------------------------------------------------------------------ per micrograph

    def record(self, record: dict[str, Any], prediction: dict[str, Any] | None) -> Result:
        """Pick and write one micrograph: ``record`` of
        :class:`~cryoparticle.picking.inputs.MicrographFiles`, ``prediction`` of
        :meth:`~cryoparticle.picking.segment.MicrographSegmenter.predict_record`."""
        result = Result(index=int(record["index"]), name=record["name"], path=record["path"],
                        status="failed", read_s=float(record["read_s"]),
                        pixel_size_a=record["pixel_size_a"])
        if record["original_shape"] is not None:
            result.original_shape = tuple(int(v) for v in record["original_shape"])
            result.bin_factor = float(record["factor"][0])
        if record["skipped"]:
            result.status = "skipped"
        elif record["error"] is not None:
            result.error = record["error"]
        elif not prediction or "prob" not in prediction:
            result.error = (prediction or {}).get("error") or f"{record['path']}: no prediction"
        else:
            result.segment_s = float(prediction["segment_s"])
            result.tile_size = int(prediction["tile"])
            try:
                self._pick(record, prediction, result)
                result.status = "picked"
            except InputError as exc:
                result.error = one_line(exc)
            except Exception as exc:  # noqa: BLE001 - reported; the other micrographs go on
                result.error = f"{record['path']}: {type(exc).__name__}: {one_line(exc)}"
        self.results.append(result)
        return result

    def _pick(self, record: dict[str, Any], prediction: dict[str, Any], result: Result
              ) -> None:
        s = self.settings
        name = record["name"]
        factor_y, factor_x = (float(f) for f in record["factor"])
        pixel_size_a = float(record["pixel_size_a"])
        binned_px = pixel_size_a * factor_y
        start = time.perf_counter()
        border = BorderWidths(*record["border"]) if record.get("border") else None

        def probability(prob_t: torch.Tensor) -> np.ndarray:
            prob = prob_t.detach().to("cpu", torch.float32).numpy()
            if s.drop_border and border is not None and border.any():
                # No particle in the padding: its probability is zeroed on the binned grid
                # (widths rounded up) before extraction, so a pick there can neither be made
                # nor suppress a real neighbour.
                prob = np.where(border_mask(prob.shape, border.scaled(factor_y)), 0.0, prob
                                ).astype(np.float32)
            return prob

        prob = probability(prediction["prob"])
        result.polarity = "light" if prediction.get("polarity") == "light" else "dark"
        if prediction.get("prob_light") is not None:   # polarity=auto: the surer of the two
            light = probability(prediction["prob_light"])
            result.polarity, *levels = choose_polarity(
                prob, light, s.particle_diameter_a / binned_px, quantile=s.polarity_quantile,
                margin=s.polarity_margin)
            result.polarity_levels = (float(levels[0]), float(levels[1]))
            if result.polarity == "light":
                prob = light
        diameter_a = picking_diameter_a(prob, s, binned_px)
        result.particle_diameter_a = diameter_a
        result.diameter_estimated = s.estimate_diameter
        diameter_orig = diameter_a / pixel_size_a
        result.edge_margin_px = s.edge_margin_px(diameter_orig)
        diameter_px = diameter_a / binned_px
        if s.relative_threshold > 0:
            result.peak_level = particle_peak_level(prob, diameter_px, quantile=s.peak_quantile)
        threshold = result.threshold = s.picking_threshold(result.peak_level)
        ex = s.extraction
        picks = extract_particles(prob, diameter_px, threshold=threshold,
                                  min_size_fraction=ex.min_size_fraction,
                                  max_size_fraction=ex.max_size_fraction,
                                  min_distance_fraction=ex.min_distance_fraction,
                                  border_px=result.edge_margin_px / factor_y,
                                  split_touching=ex.split_touching, micrograph=record["path"])
        # Binned pixel i sits at original i × factor (fourier_bin's grid), per axis.
        picks_orig = scale_coordinates(picks, factor_y)
        if factor_x != factor_y:
            picks_orig["x"] = picks["x"].to_numpy() * factor_x
        if s.drop_border and border is not None and border.any():
            keep = drop_border_picks(picks_orig.assign(row=np.arange(len(picks_orig))),
                                     tuple(record["original_shape"]), border)["row"].to_numpy()
            picks, picks_orig = (t.iloc[keep].reset_index(drop=True) for t in (picks, picks_orig))
        result.extract_s = time.perf_counter() - start
        result.n_particles = len(picks_orig)

        start = time.perf_counter()
        out = s.output_dir
        title = (f"{name}: {len(picks)} particles, threshold {threshold:.3g}, "
                 f"{binned_px:.3g} Å/px, diameter {diameter_a:.0f} Å"
                 + (" (estimated)" if s.estimate_diameter else "")
                 + (", light particles (inverted)" if result.polarity == "light" else ""))
        if s.write_probability:
            write_mrc(out / f"{name}{PROBABILITY_SUFFIX}", prob, binned_px)
        if s.write_mask:
            write_mask_png(out / f"{name}{MASK_SUFFIX}", (prob >= threshold).astype(np.uint8))
        if s.write_overlay:
            save_figure_png(out / f"{name}{OVERLAY_SUFFIX}",
                            picks_figure(record["image"][0].cpu().numpy(), picks, title))
        if "box" in s.formats:
            write_box(out / f"{name}.box", picks_orig, s.box_px(diameter_orig))
        if "csv" in s.formats:
            write_cryoppp_csv(out / f"{name}.csv", picks_orig)
        if "topaz" in s.formats:
            write_topaz(out / f"{name}.txt", picks_orig.assign(micrograph=name))
        write_relion_coordinates(out / f"{name}.star", picks_orig,  # last: marks it done
                                 pixel_size_a=pixel_size_a)
        result.write_s = time.perf_counter() - start

    # ------------------------------------------------------------------ end of the run

    def finish(self, results: list[Result] | None = None) -> PredictSummary:
        """Write the combined STAR and ``predict_summary.json`` of ``results`` (default: this
        recorder's; one per micrograph index) and return the summary."""
        # a micrograph appears once per rank split (DDP pads the last batches): one kept
        by_index = {r.index: r for r in (self.results if results is None else results)}
        self.summary = self._finish([by_index[i] for i in sorted(by_index)],
                                    time.perf_counter() - self._start)
        return self.summary

    def _finish(self, results: list[Result], wall: float) -> PredictSummary:
        s = self.settings
        done = {r.index for r in results if r.status in ("picked", "skipped")}
        tables = []
        for index in sorted(done):
            star = s.output_dir / f"{self.names[index]}.star"
            try:
                tables.append(read_star(star, micrograph=str(self.paths[index])))
            except InputError as exc:  # a skipped micrograph whose STAR is unusable
                result = next(r for r in results if r.index == index)
                result.status, result.error = "failed", one_line(exc)
        combined_path = s.output_dir / s.combined_star
        combined = (pd.concat(tables, ignore_index=True) if tables else empty_particles())
        pixel_sizes = {round(float(t.attrs["pixel_size_a"]), 6) for t in tables
                       if "pixel_size_a" in t.attrs}
        one_size = next(iter(pixel_sizes)) if len(pixel_sizes) == 1 and all(
            "pixel_size_a" in t.attrs for t in tables) else None
        write_star(combined_path, combined, pixel_size_a=one_size)
        write_coordinate_files_star(s.output_dir / COORDINATE_FILES_NAME, [
            (self.paths[r.index], s.output_dir / f"{r.name}.star") for r in results
            if r.status in ("picked", "skipped")])

        picked = [r for r in results if r.status == "picked"]
        failed = [r for r in results if r.status == "failed"]
        n_done = len([r for r in results if r.status in ("picked", "skipped")])
        summary = PredictSummary(
            n_micrographs=len(self.paths), n_picked=len(picked),
            n_skipped=len([r for r in results if r.status == "skipped"]),
            n_failed=len(failed), n_particles=len(combined),
            n_particles_new=int(sum(r.n_particles for r in picked)),
            particles_per_micrograph=(len(combined) / n_done if n_done else math.nan),
            seconds_per_micrograph=(float(np.mean([r.total_s for r in picked]))
                                    if picked else math.nan),
            wall_seconds_per_micrograph=(wall / len(picked) if picked else math.nan),
            wall_s=wall, threshold=s.threshold, relative_threshold=s.relative_threshold,
            peak_quantile=s.peak_quantile, polarity=s.polarity, device=self.device_name,
            output_dir=str(s.output_dir), combined_star=str(combined_path),
            failures=[r.error or r.name for r in failed],
            micrographs=[{**asdict(r), "total_s": r.total_s} for r in results])
        write_text_atomic(s.output_dir / SUMMARY_NAME, summary.to_json())
        return summary


def picking_diameters(summary: PredictSummary) -> tuple[str, bool]:
    """The particle diameters the picked micrographs were picked with, for the summary
    table: ``("190", False)`` when given, ``("168 (estimated; 153–181)", True)`` (median;
    range over the micrographs) when estimated per micrograph, ``("–", False)`` when none."""
    picked = [m for m in summary.micrographs
              if m.get("status") == "picked" and m.get("particle_diameter_a") is not None]
    if not picked:
        return "–", False
    values = np.array([float(m["particle_diameter_a"]) for m in picked])
    if not any(m.get("diameter_estimated") for m in picked):
        return f"{np.median(values):.0f}", False
    spread = f"; {values.min():.0f}–{values.max():.0f}" if len(values) > 1 else ""
    return f"{np.median(values):.0f} (estimated{spread})", True


def picking_thresholds(summary: PredictSummary) -> tuple[str, str | None]:
    """The threshold(s) the micrographs were picked at and the rule, for the summary table:
    ``("0.125", None)`` when fixed; ``("0.17 (0.13–0.21)", "max(0.125, 0.5 × p90 peak)")``
    (median; range over the picked micrographs; the level's quantile of the peak heights) when
    relative to each micrograph's particle peak level."""
    if summary.relative_threshold <= 0:
        return f"{summary.threshold:g}", None
    quantile = summary.peak_quantile
    level = "median" if quantile == 0.5 else f"p{100 * quantile:g}"
    rule = f"max({summary.threshold:g}, {summary.relative_threshold:g} × {level} peak)"
    values = np.array([float(m["threshold"]) for m in summary.micrographs
                       if m.get("status") == "picked" and m.get("threshold") is not None])
    if not len(values):
        return "–", rule
    spread = f" ({values.min():.3g}–{values.max():.3g})" if len(values) > 1 else ""
    return f"{np.median(values):.3g}{spread}", rule


def picking_polarities(summary: PredictSummary) -> tuple[str, bool]:
    """The contrast polarity the micrographs were picked in, for the summary table, and whether
    ``auto`` chose both in one run: ``("dark", False)``; ``("auto: dark 9, light 1", True)``."""
    if summary.polarity != "auto":
        return summary.polarity, False
    chosen = [m.get("polarity") for m in summary.micrographs
              if m.get("status") == "picked" and m.get("polarity")]
    counts = {p: chosen.count(p) for p in ("dark", "light") if p in chosen}
    return "auto: " + (", ".join(f"{p} {n}" for p, n in counts.items()) or "–"), \
        len(counts) > 1


MIXED_POLARITY_NOTE = (
    "note: polarity=auto picked some micrographs as dark particles and some as light ones; a data "
    "set has one polarity: look at the overlays (write_overlay=true) and give polarity=dark or "
    "polarity=light")

ESTIMATED_DIAMETER_NOTE = (
    "note: the particle diameter was estimated from the network's particle cores, which have "
    "about the same size whatever the particle's size (benchmarks/diameter_cues.py): if you know "
    "the diameter, give it (particle_diameter_a, Å)")


def print_summary(summary: PredictSummary) -> None:
    """The summary as a table on stdout (with the particle diameter picked with, and a note
    when it was estimated); each failure as one line on stderr."""
    from rich.console import Console
    from rich.table import Table

    def number(value: float, fmt: str) -> str:
        return "–" if value is None or not math.isfinite(value) else format(value, fmt)

    diameter, estimated = picking_diameters(summary)
    threshold, rule = picking_thresholds(summary)
    polarity, mixed = picking_polarities(summary)
    table = Table(title="picking summary", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [("micrographs", str(summary.n_micrographs)),
            ("picked now", str(summary.n_picked)),
            ("skipped (already done)", str(summary.n_skipped)),
            ("failed", str(summary.n_failed)),
            ("particles (all micrographs)", str(summary.n_particles)),
            ("particles picked now", str(summary.n_particles_new)),
            ("particles per micrograph", number(summary.particles_per_micrograph, ".1f")),
            ("time per micrograph (s)", number(summary.seconds_per_micrograph, ".2f")),
            ("wall time per micrograph (s)", number(summary.wall_seconds_per_micrograph,
                                                    ".2f")),
            ("threshold", threshold),
            *([("threshold rule", rule)] if rule else []),
            ("particle diameter (Å)", diameter),
            ("contrast polarity", polarity),
            ("device", summary.device),
            ("combined STAR", str(summary.combined_star))]
    for key, value in rows:
        table.add_row(key, value)
    Console(file=sys.stdout, soft_wrap=True).print(table)
    if estimated:
        print(ESTIMATED_DIAMETER_NOTE)
    if mixed:
        print(MIXED_POLARITY_NOTE)
    for failure in summary.failures:
        print(f"failed: {one_line(Exception(failure))}", file=sys.stderr)


__all__ = ["ESTIMATED_DIAMETER_NOTE", "MIXED_POLARITY_NOTE", "SUMMARY_NAME", "PickRecorder",
           "PredictSummary", "Result", "picking_diameter_a", "picking_diameters",
           "picking_polarities", "picking_thresholds", "prepare_output_dir", "print_summary"]
