"""Picking input: the micrographs of ``input`` and their reading, binning and standardising.

:func:`list_micrographs` expands a file, a folder, a glob or a list of them;
:func:`micrograph_names` gives each its output name; :func:`check_pixel_sizes` refuses
header-less formats without ``micrograph_pixel_size_a``. :class:`MicrographFiles` (a
``Dataset`` read in DataLoader workers) reads each micrograph (MRC/MRCS single image, TIFF, PNG,
JPEG), Fourier-bins (or pads) it to the checkpoint's pixel size — or, with a given particle
diameter, to the one where the particles are as many pixels across as the checkpoint's
(:meth:`Settings.resample_pixel_size_a`) — and normalises it as in training (the checkpoint's
normalisation); a micrograph that cannot be used (corrupt, truncated, a stack, NaN/Inf,
constant, no pixel size, smaller than one particle) becomes an *error record*, not an
exception, so the rest go on.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cryoparticle.data.borders import BorderWidths, border_widths
from cryoparticle.data.preprocess import (
    MAX_UPSAMPLING,
    bin_factor,
    fourier_bin,
    fourier_pad,
)
from cryoparticle.errors import InputError, file_error, param_error
from cryoparticle.io.checks import one_line
from cryoparticle.io.mrc import MRC_SUFFIXES, read_micrograph
from cryoparticle.picking.settings import Settings, plain

#: Micrograph file extensions read from folders and globs.
MICROGRAPH_SUFFIXES: tuple[str, ...] = (".mrc", ".mrcs", ".tif", ".tiff", ".png", ".jpg",
                                        ".jpeg")
# Stems of files that are labels or our own outputs, never micrographs (in folders and globs).
_NOT_MICROGRAPH_STEMS = ("_mask", "_instances", "_prob", "_overlay")


def _is_listed_micrograph(path: Path) -> bool:
    name = path.name.lower()
    return (path.is_file() and not name.startswith(".")
            and path.suffix.lower() in MICROGRAPH_SUFFIXES
            and not path.stem.lower().endswith(_NOT_MICROGRAPH_STEMS))


def list_micrographs(spec: Any) -> list[Path]:
    """Micrograph paths from ``input``: a file (taken as given), a folder (its micrograph
    files, not recursive), a glob pattern, or a list of these; sorted within each folder or
    pattern, duplicates dropped. Nothing found raises :class:`InputError`."""
    spec = plain(spec)
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


def pixel_size_reason(settings: Settings) -> str:
    """What to do about an unknown pixel size, and why it matters."""
    return (f"set micrograph_pixel_size_a (Å/px), or particle_diameter_px (the particles' "
            f"diameter in pixels): the network was trained at {settings.model_pixel_size_a:g} "
            "Å/px and micrographs are resampled to it so that particles appear at the size it "
            "learnt")


def check_pixel_sizes(paths: Sequence[Path], settings: Settings) -> None:
    """Header-less micrographs (TIFF/PNG/JPEG) need ``micrograph_pixel_size_a``; a given one
    must be usable with the network (:func:`resample_to_model`'s rule)."""
    if settings.micrograph_pixel_size_a is not None:
        check_resampling(settings.micrograph_pixel_size_a, settings.model_pixel_size_a)
        return
    no_header = [p for p in paths if p.suffix.lower() not in MRC_SUFFIXES]
    if no_header:
        more = f" (and {len(no_header) - 1} more)" if len(no_header) > 1 else ""
        raise file_error(no_header[0], f"{no_header[0].suffix.lstrip('.').upper()} files carry "
                                       f"no pixel size{more}: " + pixel_size_reason(settings))


def check_resampling(pixel_size_a: float, model_pixel_size_a: float) -> None:
    """A micrograph more than :data:`MAX_UPSAMPLING` × coarser than the network's pixel size
    raises :class:`InputError` (its particles are too few pixels across to be upsampled)."""
    ratio = float(pixel_size_a) / float(model_pixel_size_a)
    if ratio > MAX_UPSAMPLING * (1 + 1e-4):
        raise param_error("micrograph_pixel_size_a", float(pixel_size_a),
                          f"is {ratio:.2f}× coarser than the network's {model_pixel_size_a:g} "
                          f"Å/px; at most {MAX_UPSAMPLING:g}× is resampled (Fourier padding): "
                          "give micrographs of finer pixels, or train a model at this pixel size")


def resample_to_model(path: Path, image: np.ndarray, pixel_size_a: float,
                      model_pixel_size_a: float) -> np.ndarray:
    """``image`` at the network's pixel size: Fourier-binned when finer, Fourier-padded
    (:func:`~cryoparticle.data.preprocess.fourier_pad`) when up to :data:`MAX_UPSAMPLING` ×
    coarser, else :class:`InputError` naming ``path``. Either way output pixel ``i`` sits at
    original ``i × H / h``."""
    if pixel_size_a > model_pixel_size_a * (1 + 1e-4):
        try:
            check_resampling(pixel_size_a, model_pixel_size_a)
        except InputError as exc:
            raise file_error(path, str(exc)) from None
        return fourier_pad(image, pixel_size_a / model_pixel_size_a)
    try:
        shape, _ = bin_factor(image.shape, pixel_size_a, model_pixel_size_a)
    except InputError as exc:
        raise file_error(path, str(exc)) from None
    if shape != image.shape:
        image = fourier_bin(image, model_pixel_size_a / pixel_size_a)
    return image


class MicrographFiles(Dataset):
    """Micrographs read, resampled to the network's pixel size and standardised.

    Item ``i`` is a dict: ``index``, ``name``, ``path``; ``image`` ``(1, h, w)`` float32 (or
    None), ``original_shape`` ``(H, W)``, ``factor`` ``(H / h, W / w)``, ``pixel_size_a`` (the
    micrograph's, or None), ``border`` (``(top, bottom, left, right)`` widths in original pixels
    of a padding frame, :func:`~cryoparticle.data.borders.border_widths`, when ``drop_border``;
    else None), ``read_s`` (seconds to read and bin); ``skipped`` (True when the
    outputs exist already and ``overwrite`` is false; nothing is read) and ``error`` (a
    one-line reason when the micrograph cannot be used, else None). Reading never raises.
    """

    def __init__(self, paths: Sequence[Path], names: Sequence[str], settings: Settings) -> None:
        self.paths = list(paths)
        self.names = list(names)
        self.settings = settings
        self._border: BorderWidths | None = None  # of the micrograph _load read last

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, name = self.paths[index], self.names[index]
        record: dict[str, Any] = {"index": int(index), "name": name, "path": str(path),
                                  "image": None, "original_shape": None, "factor": (1.0, 1.0),
                                  "pixel_size_a": None, "read_s": 0.0, "skipped": False,
                                  "error": None, "border": None}
        if not self.settings.overwrite and self.settings.is_done(name):
            record["skipped"] = True
            return record
        start = time.perf_counter()
        self._border = None
        try:
            image, factor, pixel_size_a = self._load(path)
        except InputError as exc:
            record["error"] = one_line(exc)
        except Exception as exc:  # noqa: BLE001 - any failure of one file is reported, not fatal
            record["error"] = f"{path}: {type(exc).__name__}: {one_line(exc)}"
        else:
            record.update(image=torch.from_numpy(image)[None], factor=factor,
                          pixel_size_a=pixel_size_a,
                          border=None if self._border is None else astuple(self._border))
            record["original_shape"] = (round(image.shape[0] * factor[0]),
                                        round(image.shape[1] * factor[1]))
        record["read_s"] = time.perf_counter() - start
        return record

    def _load(self, path: Path) -> tuple[np.ndarray, tuple[float, float], float]:
        image, header_px = read_micrograph(path)
        px = self.settings.micrograph_pixel_size_a or header_px
        if px is None:
            raise file_error(path, "has no pixel size in its header; "
                             + pixel_size_reason(self.settings))
        diameter_px = self.settings.particle_diameter_a / px
        if min(image.shape) < diameter_px:
            raise file_error(path, f"is {image.shape[0]}×{image.shape[1]} px, smaller than one "
                                   f"particle ({diameter_px:.0f} px across at {px:g} Å/px): "
                                   "nothing can be picked")
        target = self.settings.resample_pixel_size_a(px)
        height, width = image.shape
        self._border = (border_widths(image, margin_px=self.settings.border_margin_px)
                        if self.settings.drop_border and min(image.shape) >= 8 else None)
        image = resample_to_model(path, image, px, target)
        factor = (height / image.shape[0], width / image.shape[1])
        # the normalisation's lengths (Å) as at the network's pixel size: the network sees
        # the micrograph as if it were there
        return (self.settings.normalisation(image, self.settings.model_pixel_size_a), factor,
                float(px))


def first_record(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate a batch of one record (micrographs differ in size): the record itself."""
    return batch[0]


def worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)


__all__ = ["MICROGRAPH_SUFFIXES", "MicrographFiles", "check_pixel_sizes", "check_resampling",
           "first_record", "list_micrographs", "micrograph_names", "pixel_size_reason",
           "resample_to_model", "worker_init"]
