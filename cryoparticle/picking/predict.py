"""Pick particles on micrographs of any size with a trained segmenter (``python predict.py``).

The flow, one micrograph at a time (``conf/predict.yaml`` holds every parameter):

1. **list** the input (a file, a folder, a glob or a list of them): :func:`list_micrographs`;
2. **read and bin** in DataLoader workers (:class:`MicrographFiles`): the micrograph is read
   (MRC/MRCS single image, TIFF, PNG, JPEG), Fourier-binned to the checkpoint's pixel size
   (the micrograph's own from ``micrograph_pixel_size_a`` or the MRC header) and standardised
   as in training. A micrograph that cannot be used (corrupt, truncated, a stack, NaN/Inf,
   constant, no pixel size) becomes an *error record*, not an exception, so the rest go on;
3. **segment** (:class:`PickingModule`, through ``Trainer.predict``: CPU or GPUs, several GPUs
   splitting the micrographs under DDP): overlapping tiles in batches, blended without seams
   (:func:`cryoparticle.data.tiling.predict_tiled`), the particle probability map;
4. **extract and write** (:class:`PickWriter`, a ``BasePredictionWriter``):
   :func:`~cryoparticle.picking.extract.extract_particles` on the binned map, coordinates
   scaled back to the original micrograph (binned pixel ``i`` sits at original ``i × factor``,
   the sampling grid of :func:`~cryoparticle.data.preprocess.fourier_bin`), every format
   written atomically, ``NAME.star`` last: it marks the micrograph done, so a rerun skips it;
5. **combine and report**: ``particles.star`` (every finished micrograph, including those
   skipped as already done), ``predict_summary.json`` and a table on stdout; each failure as
   one line on stderr. :func:`run` returns the :class:`PredictSummary`; its ``exit_code`` is 0
   when every micrograph was picked (or already done), 1 when some failed (a configuration or
   checkpoint problem raises :class:`~cryoparticle.errors.InputError`: exit code 2).

Outputs per micrograph ``NAME`` in ``output_dir`` (coordinates in pixels of the original
micrograph, ``x`` = column, ``y`` = row): ``NAME.star`` (RELION ``rlnCoordinateX/Y``,
``rlnAutopickFigureOfMerit``), ``NAME.box`` (EMAN, box corner, ``box_size``), ``NAME.csv``
(CryoPPP ``X-Coordinate,Y-Coordinate,Diameter``), ``NAME.txt`` (Topaz ``image_name x_coord
y_coord score``); optionally ``NAME_prob.mrc``, ``NAME_mask.png`` and ``NAME_overlay.png`` on
the network's (binned) pixel grid.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from cryoparticle.data.preprocess import Normalisation, bin_factor, fourier_bin
from cryoparticle.errors import InputError, file_error, param_error
from cryoparticle.io.atomic import atomic_path, write_text_atomic
from cryoparticle.io.checks import one_line
from cryoparticle.io.coords import (
    empty_particles,
    read_star,
    scale_coordinates,
    write_box,
    write_cryoppp_csv,
    write_star,
    write_topaz,
)
from cryoparticle.io.mrc import MRC_SUFFIXES, read_micrograph, write_mask_png, write_mrc
from cryoparticle.picking.extract import extract_particles

#: Micrograph file extensions read from folders and globs.
MICROGRAPH_SUFFIXES: tuple[str, ...] = (".mrc", ".mrcs", ".tif", ".tiff", ".png", ".jpg",
                                        ".jpeg")
#: Coordinate formats and the file each writes (``NAME`` + suffix).
FORMAT_SUFFIXES: dict[str, str] = {"star": ".star", "box": ".box", "csv": ".csv",
                                   "topaz": ".txt"}
PROBABILITY_SUFFIX = "_prob.mrc"
MASK_SUFFIX = "_mask.png"
OVERLAY_SUFFIX = "_overlay.png"
SUMMARY_NAME = "predict_summary.json"
# Stems of files that are labels or our own outputs, never micrographs (in folders and globs).
_NOT_MICROGRAPH_STEMS = ("_mask", "_instances", "_prob", "_overlay")
_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning")


# --------------------------------------------------------------------------------- settings


def _plain(value: Any) -> Any:
    from omegaconf import Container, OmegaConf

    if isinstance(value, Container):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _positive(name: str, value: Any, *, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and number > 0):
        raise param_error(name, value, "must be a positive number" + (" or null" if optional
                                                                      else ""))
    return number


def _whole(name: str, value: Any, minimum: int, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            int(value) != value or value < minimum:
        raise param_error(name, value, f"must be a whole number ≥ {minimum}"
                          + (" or null" if optional else ""))
    return int(value)


@dataclass(frozen=True)
class Extraction:
    """Options of :func:`~cryoparticle.picking.extract.extract_particles` (``border_px`` in
    pixels of the original micrograph)."""

    min_size_fraction: float = 0.25
    max_size_fraction: float = 3.0
    min_distance_fraction: float = 0.5
    split_touching: bool = True
    border_px: float = 0.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Extraction:
        cfg = dict(_plain(cfg) or {})
        unknown = sorted(set(cfg) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise param_error("extraction", unknown[0], "unknown option; choose from "
                              + ", ".join(cls.__dataclass_fields__))
        out = cls(**cfg)
        for name in ("min_size_fraction", "max_size_fraction", "min_distance_fraction",
                     "border_px"):
            value = getattr(out, name)
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
    value = _plain(value)
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


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise param_error(name, value, "must be true or false")
    return value


def build_settings(cfg: Mapping[str, Any], facts: Mapping[str, Any], ckpt_path: Path
                   ) -> Settings:
    """Check the config against the checkpoint's facts (``Segmenter.inference_facts()``)."""
    model_px = facts.get("pixel_size_a")
    if model_px is None or not math.isfinite(float(model_px)) or float(model_px) <= 0:
        raise file_error(ckpt_path, "checkpoint has no training pixel size (pixel_size_a); "
                                    "it cannot be used for picking")
    try:
        normalisation = Normalisation.from_spec(facts.get("normalisation"))
    except InputError as exc:
        raise file_error(ckpt_path, f"checkpoint's normalisation is unknown ({exc})") from None
    diameter = _positive("particle_diameter_a", cfg.get("particle_diameter_a"))
    if diameter is None:
        diameter = facts.get("particle_diameter_a")
        if diameter is None or not math.isfinite(float(diameter)) or float(diameter) <= 0:
            raise param_error("particle_diameter_a", None, "the checkpoint carries no particle "
                              "diameter: give particle_diameter_a (Å)")
    threshold = cfg.get("threshold")
    if threshold is None:
        threshold = facts.get("picking_threshold", 0.5)
    try:
        threshold_value = float(threshold)
    except (TypeError, ValueError):
        threshold_value = math.nan
    if isinstance(threshold, bool) or not 0.0 <= threshold_value <= 1.0:
        raise param_error("threshold", threshold, "must be a probability in [0, 1] or null")
    combined = str(cfg.get("combined_star") or "particles.star")
    if "/" in combined or "\\" in combined or not combined.endswith(".star"):
        raise param_error("combined_star", combined, "must be a file name ending in .star")
    return Settings(
        output_dir=Path(str(cfg["output_dir"])),
        model_pixel_size_a=float(model_px),
        micrograph_pixel_size_a=_positive("micrograph_pixel_size_a",
                                          cfg.get("micrograph_pixel_size_a")),
        particle_diameter_a=float(diameter),
        threshold=threshold_value,
        box_size=_whole("box_size", cfg.get("box_size"), 1, optional=True),
        formats=_formats(cfg.get("formats", ["star", "box", "csv"])),
        write_probability=_flag("write_probability", cfg.get("write_probability", False)),
        write_mask=_flag("write_mask", cfg.get("write_mask", False)),
        write_overlay=_flag("write_overlay", cfg.get("write_overlay", False)),
        overwrite=_flag("overwrite", cfg.get("overwrite", False)),
        combined_star=combined,
        extraction=Extraction.from_config(cfg.get("extraction")),
        normalisation=normalisation,
    )


# ---------------------------------------------------------------------------------- inputs


def _is_listed_micrograph(path: Path) -> bool:
    name = path.name.lower()
    return (path.is_file() and not name.startswith(".")
            and path.suffix.lower() in MICROGRAPH_SUFFIXES
            and not path.stem.lower().endswith(_NOT_MICROGRAPH_STEMS))


def list_micrographs(spec: Any) -> list[Path]:
    """Micrograph paths from ``input``: a file (taken as given), a folder (its micrograph
    files, not recursive), a glob pattern, or a list of these; sorted within each folder or
    pattern, duplicates dropped. Nothing found raises :class:`InputError`."""
    spec = _plain(spec)
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items or any(item is None or str(item).strip() == "" for item in items):
        raise param_error("input", spec, "give a micrograph file, a folder or a glob pattern")
    paths: list[Path] = []
    for item in map(str, items):
        if glob.has_magic(item):
            matches = [Path(m) for m in sorted(glob.glob(item))]
            found = [m for m in matches if _is_listed_micrograph(m)]
            if not found:
                raise file_error(item, "no micrograph matches this pattern (expected "
                                       f"{', '.join(MICROGRAPH_SUFFIXES)} files)")
            paths += found
        elif Path(item).is_dir():
            found = sorted((p for p in Path(item).iterdir() if _is_listed_micrograph(p)),
                           key=lambda p: p.name)
            if not found:
                raise file_error(item, "folder contains no micrographs (expected "
                                       f"{', '.join(MICROGRAPH_SUFFIXES)} files)")
            paths += found
        elif Path(item).exists():
            if not Path(item).is_file():
                raise file_error(item, "is not a regular file or folder")
            if Path(item).suffix.lower() not in MICROGRAPH_SUFFIXES:
                raise file_error(item, f"unsupported micrograph format "
                                       f"{Path(item).suffix or '(no extension)'!r} (expected "
                                       f"one of {', '.join(MICROGRAPH_SUFFIXES)})")
            paths.append(Path(item))
        else:
            raise file_error(item, "no such file or folder")
    return list(dict.fromkeys(paths))


def micrograph_names(paths: Sequence[Path], combined_star: str) -> list[str]:
    """Output names (file stems); two micrographs with one name raise :class:`InputError`."""
    names = [p.stem for p in paths]
    seen: dict[str, Path] = {}
    reserved = Path(combined_star).stem
    for name, path in zip(names, paths, strict=True):
        if name in seen:
            raise file_error(path, f"has the same name {name!r} as {seen[name]}: their "
                                   "outputs would overwrite each other (rename one)")
        if name == reserved:
            raise file_error(path, f"is named like the combined STAR file {combined_star}; "
                                   "set combined_star to another name")
        seen[name] = path
    return names


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


# ------------------------------------------------------------------------- reading/binning


class MicrographFiles(Dataset):
    """Micrographs read, binned to the network's pixel size and standardised.

    Item ``i`` is a dict: ``index``, ``name``, ``path``; ``image`` ``(1, h, w)`` float32 (or
    None), ``original_shape`` ``(H, W)``, ``factor`` ``(H / h, W / w)``, ``pixel_size_a`` (the
    micrograph's, or None), ``read_s`` (seconds to read and bin); ``skipped`` (True when the
    outputs exist already and ``overwrite`` is false; nothing is read) and ``error`` (a
    one-line reason when the micrograph cannot be used, else None). Reading never raises.
    """

    def __init__(self, paths: Sequence[Path], names: Sequence[str], settings: Settings) -> None:
        self.paths = list(paths)
        self.names = list(names)
        self.settings = settings

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, name = self.paths[index], self.names[index]
        record: dict[str, Any] = {"index": int(index), "name": name, "path": str(path),
                                  "image": None, "original_shape": None, "factor": (1.0, 1.0),
                                  "pixel_size_a": None, "read_s": 0.0, "skipped": False,
                                  "error": None}
        if not self.settings.overwrite and self.settings.is_done(name):
            record["skipped"] = True
            return record
        start = time.perf_counter()
        try:
            image, factor, pixel_size_a = self._load(path)
        except InputError as exc:
            record["error"] = one_line(exc)
        except Exception as exc:  # noqa: BLE001 - any failure of one file is reported, not fatal
            record["error"] = f"{path}: {type(exc).__name__}: {one_line(exc)}"
        else:
            record.update(image=torch.from_numpy(image)[None], factor=factor,
                          pixel_size_a=pixel_size_a)
            record["original_shape"] = (round(image.shape[0] * factor[0]),
                                        round(image.shape[1] * factor[1]))
        record["read_s"] = time.perf_counter() - start
        return record

    def _load(self, path: Path) -> tuple[np.ndarray, tuple[float, float], float]:
        image, header_px = read_micrograph(path)
        px = self.settings.micrograph_pixel_size_a or header_px
        if px is None:
            raise file_error(path, "has no pixel size in its header; set "
                                   "micrograph_pixel_size_a (Å/px)")
        target = self.settings.model_pixel_size_a
        try:
            shape, _ = bin_factor(image.shape, px, target)
        except InputError as exc:
            raise file_error(path, str(exc)) from None
        height, width = image.shape
        if shape != image.shape:
            image = fourier_bin(image, target / px)
        factor = (height / image.shape[0], width / image.shape[1])
        return self.settings.normalisation(image, target), factor, float(px)


def _first(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate a batch of one record (micrographs differ in size): the record itself."""
    return batch[0]


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------- segmentation


def fitted_tile(shape: Sequence[int], tile: int, overlap: int, multiple: int = 32) -> int:
    """The smallest tile side (a multiple of ``multiple``, at most ``tile``) that covers each
    axis of ``shape`` with no more tiles than ``tile`` needs (tiles overlapping by ``overlap``).

    :func:`~cryoparticle.data.tiling.tile_starts` puts the last tile flush with the edge, so a
    1024-px side in 512-px tiles overlapping by 32 takes 3 tiles covering 1536 px; 384-px tiles
    also take 3 and cover 1152 px: the same blending, 44 % less computation.
    """
    need = 1
    for length in shape:
        length = int(length)
        if length <= tile:
            need = max(need, length)
            continue
        n = math.ceil((length - overlap) / (tile - overlap))
        need = max(need, math.ceil((length - overlap) / n + overlap))
    return max(min(int(tile), math.ceil(need / multiple) * multiple), overlap + 1)


#: Tiles per forward pass when ``tile_batch_size`` is null: as many as make this many pixels.
TILE_BATCH_PIXELS = 2**20


class PickingModule(pl.LightningModule):
    """``Trainer.predict`` wrapper of a :class:`~cryoparticle.models.segmenter.Segmenter`:
    a record with an image → ``{"prob": (h, w) particle probability, "segment_s", "tile"}``;
    a record without one (skipped, unreadable) → ``{}``. A micrograph whose segmentation fails
    (e.g. out of memory) gives ``{"error": ...}``; the run goes on.

    A micrograph no larger than a tile is segmented whole; a larger one tile by tile
    (:func:`~cryoparticle.data.tiling.predict_tiled`, the segmenter's network and CRF on each
    batch of tiles, blended without seams): ``tile_size`` and
    ``tile_overlap`` pixels, tiles shrunk per micrograph by :func:`fitted_tile` when
    ``fit_tiles``; ``tile_batch_size`` tiles per forward pass (None: about
    :data:`TILE_BATCH_PIXELS` pixels per pass, which bounds the memory of a pass).
    """

    def __init__(self, segmenter: pl.LightningModule, tile_size: int, tile_overlap: int,
                 tile_batch_size: int | None = None, fit_tiles: bool = True,
                 crf: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.crf = crf
        self.tile_size, self.tile_overlap = int(tile_size), int(tile_overlap)
        self.tile_batch_size = None if tile_batch_size is None else int(tile_batch_size)
        self.fit_tiles = bool(fit_tiles)

    def setup(self, stage: str) -> None:
        _quiet_lightning()  # again in processes started by the strategy (ddp_spawn)

    def tiling(self, shape: Sequence[int]) -> tuple[int, int]:
        """``(tile side, tiles per forward pass)`` for a micrograph of ``shape`` (h, w); a
        micrograph within one tile: ``(its longer side, 1)``, segmented whole."""
        if max(shape) <= self.tile_size:
            return int(max(shape)), 1
        tile = (fitted_tile(shape, self.tile_size, self.tile_overlap) if self.fit_tiles
                else self.tile_size)
        batch = self.tile_batch_size or max(1, TILE_BATCH_PIXELS // (tile * tile))
        return tile, batch

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Particle probability ``(h, w)`` of one binned, standardised micrograph ``(1, h, w)``.

        A micrograph that fits in one tile is segmented whole (no padding to a square tile)."""
        from cryoparticle.data.tiling import predict_tiled

        image = image.to(self.device, torch.float32)
        height, width = image.shape[-2:]
        if height <= self.tile_size and width <= self.tile_size:
            logits = self.segmenter(image[None])[0].float()
        else:
            tile, batch = self.tiling(image.shape[-2:])
            logits = predict_tiled(self.segmenter, image, tile, self.tile_overlap, batch)
        if self.crf is not None:  # post-hoc CRF on the whole micrograph
            logits = self.crf(logits[None], image[None])[0]
        return logits.softmax(dim=0)[1]

    def predict_step(self, batch: dict[str, Any], batch_idx: int,
                     dataloader_idx: int = 0) -> dict[str, Any]:
        if batch.get("image") is None:
            return {}
        start = time.perf_counter()
        try:
            prob = self(batch["image"])
            if prob.is_cuda:
                torch.cuda.synchronize(prob.device)
        except Exception as exc:  # noqa: BLE001 - one micrograph's failure is reported
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return {"error": f"{batch['path']}: segmentation failed ({type(exc).__name__}: "
                             f"{one_line(exc)[:300]})"}
        return {"prob": prob, "segment_s": time.perf_counter() - start,
                "tile": self.tiling(batch["image"].shape[-2:])[0]}


# ---------------------------------------------------------------------------------- writer


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
    threshold: float
    device: str
    output_dir: str
    combined_star: str | None
    failures: list[str] = field(default_factory=list)
    micrographs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.n_failed else 0

    def to_json(self) -> str:
        return json.dumps(_jsonable(asdict(self)), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PredictSummary:
        data = json.loads(text)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key in ("particles_per_micrograph", "seconds_per_micrograph",
                    "wall_seconds_per_micrograph"):
            if known.get(key) is None:
                known[key] = math.nan
        return cls(**known)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _overlay_png(path: Path, image: np.ndarray, picks: pd.DataFrame, title: str) -> None:
    """The micrograph in grey with a circle of the particle diameter at every pick."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import EllipseCollection
    from matplotlib.figure import Figure

    from cryoparticle.viz import display_range

    height, width = image.shape
    step = max(1, math.ceil(max(height, width) / 2048))
    shown = image[::step, ::step]
    inches = 8.0
    fig = Figure(figsize=(inches * min(1.0, width / height) + 0.1,
                          inches * min(1.0, height / width) + 0.4), dpi=128,
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    vmin, vmax = display_range(shown)
    ax.imshow(shown, cmap="gray", vmin=vmin, vmax=vmax, origin="upper",
              extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="antialiased")
    if len(picks):
        d = picks["diameter"].to_numpy(dtype=float)
        ax.add_collection(EllipseCollection(
            d, d, np.zeros(len(d)), units="xy", facecolors="none", edgecolors="cyan",
            linewidths=0.8, offsets=picks[["x", "y"]].to_numpy(dtype=float),
            offset_transform=ax.transData))
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)


class PickWriter(BasePredictionWriter):
    """Extracts particles from each micrograph's probability map and writes every output.

    Per micrograph (on the rank that segmented it): picks on the binned map, scaled to the
    original micrograph, written in every format atomically with ``NAME.star`` last. At the
    end of the run the ranks' results are gathered; rank zero writes the combined STAR and
    ``predict_summary.json``. :attr:`summary` is then set on every rank.
    """

    def __init__(self, settings: Settings, paths: Sequence[Path], names: Sequence[str],
                 device: str = "cpu") -> None:
        super().__init__(write_interval="batch")
        self.settings = settings
        self.paths = list(paths)
        self.names = list(names)
        self.device_name = device
        self.results: list[Result] = []
        self.summary: PredictSummary | None = None
        self._start = time.perf_counter()

    # ------------------------------------------------------------------ per micrograph

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.results = []
        self.summary = None
        self._start = time.perf_counter()

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           prediction: Any, batch_indices: Sequence[int] | None, batch: Any,
                           batch_idx: int, dataloader_idx: int = 0) -> None:
        record = batch
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
                self._pick(record, prediction["prob"], result)
                result.status = "picked"
            except InputError as exc:
                result.error = one_line(exc)
            except Exception as exc:  # noqa: BLE001 - reported; the other micrographs go on
                result.error = f"{record['path']}: {type(exc).__name__}: {one_line(exc)}"
        self.results.append(result)

    def _pick(self, record: dict[str, Any], prob_t: torch.Tensor, result: Result) -> None:
        s = self.settings
        name = record["name"]
        factor_y, factor_x = (float(f) for f in record["factor"])
        pixel_size_a = float(record["pixel_size_a"])
        binned_px = pixel_size_a * factor_y
        diameter_binned = s.particle_diameter_a / binned_px
        start = time.perf_counter()
        prob = prob_t.detach().to("cpu", torch.float32).numpy()
        ex = s.extraction
        picks = extract_particles(prob, diameter_binned, threshold=s.threshold,
                                  min_size_fraction=ex.min_size_fraction,
                                  max_size_fraction=ex.max_size_fraction,
                                  min_distance_fraction=ex.min_distance_fraction,
                                  border_px=ex.border_px / factor_y,
                                  split_touching=ex.split_touching, micrograph=record["path"])
        # Binned pixel i sits at original i × factor (fourier_bin's grid), per axis.
        picks_orig = scale_coordinates(picks, factor_y)
        if factor_x != factor_y:
            picks_orig["x"] = picks["x"].to_numpy() * factor_x
        result.extract_s = time.perf_counter() - start
        result.n_particles = len(picks_orig)

        start = time.perf_counter()
        out = s.output_dir
        diameter_orig = s.particle_diameter_a / pixel_size_a
        title = (f"{name}: {len(picks)} particles, threshold {s.threshold:g}, "
                 f"{binned_px:.3g} Å/px")
        if s.write_probability:
            write_mrc(out / f"{name}{PROBABILITY_SUFFIX}", prob, binned_px)
        if s.write_mask:
            write_mask_png(out / f"{name}{MASK_SUFFIX}", (prob >= s.threshold).astype(np.uint8))
        if s.write_overlay:
            _overlay_png(out / f"{name}{OVERLAY_SUFFIX}", record["image"][0].cpu().numpy(),
                         picks, title)
        if "box" in s.formats:
            box = s.box_size if s.box_size is not None else max(1, round(1.5 * diameter_orig))
            write_box(out / f"{name}.box", picks_orig, box)
        if "csv" in s.formats:
            write_cryoppp_csv(out / f"{name}.csv", picks_orig)
        if "topaz" in s.formats:
            write_topaz(out / f"{name}.txt", picks_orig.assign(micrograph=name))
        write_star(out / f"{name}.star", picks_orig, pixel_size_a=pixel_size_a)  # last: done
        result.write_s = time.perf_counter() - start

    # ------------------------------------------------------------------ end of the run

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        results = list(self.results)
        if trainer.world_size > 1 and torch.distributed.is_available() and \
                torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, results)
            results = [r for part in gathered for r in (part or [])]
        by_index = {r.index: r for r in results}  # a micrograph appears once per rank split
        results = [by_index[i] for i in sorted(by_index)]
        wall = time.perf_counter() - self._start
        if trainer.is_global_zero:
            self.summary = self._finish(results, wall)
        if trainer.world_size > 1 and torch.distributed.is_available() and \
                torch.distributed.is_initialized():
            box = [self.summary]
            torch.distributed.broadcast_object_list(box, src=0)
            self.summary = box[0]

    def _finish(self, results: list[Result], wall: float) -> PredictSummary:
        s = self.settings
        done = {r.index for r in results if r.status in ("picked", "skipped")}
        tables = []
        for index in sorted(done):
            star = s.output_dir / f"{self.names[index]}.star"
            try:
                tables.append(read_star(star))
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
            wall_s=wall, threshold=s.threshold, device=self.device_name,
            output_dir=str(s.output_dir), combined_star=str(combined_path),
            failures=[r.error or r.name for r in failed],
            micrographs=[{**asdict(r), "total_s": r.total_s} for r in results])
        write_text_atomic(s.output_dir / SUMMARY_NAME, summary.to_json())
        return summary


# ------------------------------------------------------------------------------------- run


def print_summary(summary: PredictSummary) -> None:
    """The summary as a table on stdout; each failure as one line on stderr."""
    from rich.console import Console
    from rich.table import Table

    def number(value: float, fmt: str) -> str:
        return "–" if value is None or not math.isfinite(value) else format(value, fmt)

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
            ("threshold", f"{summary.threshold:g}"),
            ("device", summary.device),
            ("combined STAR", str(summary.combined_star))]
    for key, value in rows:
        table.add_row(key, value)
    Console(file=sys.stdout, soft_wrap=True).print(table)
    for failure in summary.failures:
        print(f"failed: {one_line(Exception(failure))}", file=sys.stderr)


def _check_pixel_sizes(paths: Sequence[Path], settings: Settings) -> None:
    if settings.micrograph_pixel_size_a is not None:
        return
    no_header = [p for p in paths if p.suffix.lower() not in MRC_SUFFIXES]
    if no_header:
        more = f" (and {len(no_header) - 1} more)" if len(no_header) > 1 else ""
        raise file_error(no_header[0], f"{no_header[0].suffix.lstrip('.').upper()} files carry "
                                       f"no pixel size{more}: set micrograph_pixel_size_a (Å/px)")


def _quiet_lightning() -> None:
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*predict_dataloader.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def post_hoc_crf(crf_cfg: Any, num_classes: int) -> torch.nn.Module | None:
    """The CRF of predict's ``crf=`` option: ``none`` (an empty group) → ``None``;
    ``dense``/``meanfield`` → the module, built for the checkpoint's ``num_classes``;
    a learnable CRF (``crf=rnn``) is refused: it is trained with its network."""
    from omegaconf import OmegaConf

    from cryoparticle.config import instantiate

    if OmegaConf.is_config(crf_cfg):
        crf_cfg = OmegaConf.to_container(crf_cfg, resolve=False)
    crf_cfg = dict(crf_cfg or {})
    if not crf_cfg.get("_target_"):
        return None
    if crf_cfg.get("learnable") or int(crf_cfg.get("feature_channels") or 0) > 0:
        raise param_error("crf", "rnn", "a learnable CRF is trained with its network: train "
                                        "with crf=rnn and predict with that checkpoint "
                                        "(crf=dense or crf=meanfield here)")
    if "num_classes" in crf_cfg:
        crf_cfg["num_classes"] = num_classes
    module = instantiate(crf_cfg)
    if not isinstance(module, torch.nn.Module):
        raise param_error("crf", crf_cfg.get("_target_"), "must build a torch.nn.Module")
    return module.eval()


def run(cfg: Mapping[str, Any]) -> PredictSummary:
    """Pick particles as ``cfg`` (``conf/predict.yaml``) says; returns the summary (printed).

    Configuration and checkpoint problems, an empty input and an unwritable ``output_dir``
    raise :class:`InputError` before anything is written; problems with single micrographs
    are reported in the summary (``exit_code`` 1) and the others are picked.
    """
    from hydra.utils import instantiate

    from cryoparticle.models.segmenter import load_segmenter

    _quiet_lightning()
    for key in ("ckpt_path", "input", "output_dir"):
        try:
            value = cfg.get(key)
        except Exception:  # noqa: BLE001 - omegaconf MissingMandatoryValue: the value is ???
            value = None
        if value is None or str(value).strip() == "":
            raise param_error(key, value, "is required: python predict.py ckpt_path=CKPT "
                                          "input=PATH output_dir=DIR")
    ckpt_path = Path(str(cfg["ckpt_path"]))
    paths = list_micrographs(cfg["input"])
    segmenter = load_segmenter(ckpt_path)
    crf_cfg = cfg.get("crf")
    crf = None
    facts = dict(segmenter.inference_facts())
    if crf_cfg is not None:  # crf=...: replaces the checkpoint's own CRF (loaded as trained)
        crf = post_hoc_crf(crf_cfg, int(segmenter.hparams.network.get("num_classes", 2)))
        segmenter.crf = None
        facts["picking_threshold"] = 0.5   # the calibrated one is for the checkpoint's output
    settings = build_settings(cfg, facts, ckpt_path)
    names = micrograph_names(paths, settings.combined_star)
    _check_pixel_sizes(paths, settings)
    overrides = {"tile_size": _whole("tile_size", cfg.get("tile_size"), 1, optional=True),
                 "tile_overlap": _whole("tile_overlap", cfg.get("tile_overlap"), 0,
                                        optional=True)}
    tile = overrides["tile_size"] or segmenter.hparams.tile_size
    overlap = overrides["tile_overlap"] if overrides["tile_overlap"] is not None else \
        min(segmenter.hparams.tile_overlap, tile - 1)
    if not 0 <= overlap < tile:
        raise param_error("tile_overlap", overlap, f"must be in [0, tile_size={tile})")
    tile_batch = _whole("tile_batch_size", cfg.get("tile_batch_size"), 1, optional=True)
    fit_tiles = _flag("fit_tiles", cfg.get("fit_tiles", True))
    num_workers = _whole("num_workers", cfg.get("num_workers", 0), 0)
    threads = _whole("num_threads", cfg.get("num_threads"), 1, optional=True)
    if threads is not None:
        torch.set_num_threads(threads)
    prepare_output_dir(settings.output_dir)

    trainer_cfg = dict(_plain(cfg.get("trainer")) or {"_target_": "pytorch_lightning.Trainer"})
    try:
        trainer: pl.Trainer = instantiate(
            trainer_cfg, logger=False, enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=_flag("progress_bar", cfg.get("progress_bar", True)),
            callbacks=[], inference_mode=True)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - Lightning's many configuration errors
        raise param_error("trainer", {k: v for k, v in trainer_cfg.items() if k != "_target_"},
                          f"cannot build the Trainer ({one_line(exc)})") from None
    device = f"{type(trainer.accelerator).__name__.replace('Accelerator', '').lower()}" \
             f" × {trainer.num_devices * trainer.num_nodes}"
    writer = PickWriter(settings, paths, names, device=device)
    trainer.callbacks.append(writer)
    dataset = MicrographFiles(paths, names, settings)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers,
                        collate_fn=_first, worker_init_fn=_worker_init,
                        persistent_workers=False)
    module = PickingModule(segmenter, tile, overlap, tile_batch, fit_tiles, crf=crf)
    trainer.predict(module, dataloaders=loader, return_predictions=False)

    summary = writer.summary
    if summary is None:  # spawned ranks (ddp_spawn): rank zero wrote it to disk
        summary_path = settings.output_dir / SUMMARY_NAME
        try:
            summary = PredictSummary.from_json(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError) as exc:
            raise file_error(summary_path, f"the run left no readable summary "
                                           f"({one_line(exc)})") from None
    if trainer.is_global_zero:
        print_summary(summary)
    return summary


__all__ = [
    "Extraction", "MicrographFiles", "PickWriter", "PickingModule", "PredictSummary",
    "Result", "Settings", "build_settings", "list_micrographs", "micrograph_names",
    "post_hoc_crf", "prepare_output_dir", "print_summary", "run",
]
