"""Torch datasets and the loading of labelled micrographs from disk.

* :class:`SyntheticCropDataset`: (crop, mask) pairs simulated on the fly;
* :class:`RandomCropDataset`: random crops of micrographs held in memory (training);
* :class:`MicrographDataset`: whole micrographs as dicts (validation, test, prediction);
* :func:`load_labelled_micrograph` reads a micrograph with its mask or coordinates, bins it to a
  pixel size and standardises it; :func:`find_pairs` pairs micrographs with label files: a
  mask, a per-micrograph coordinate file (RELION ``NAME.star``/``NAME_autopick.star``/
  ``NAME_manualpick.star``, CryoPPP or cryoSPARC ``NAME.csv``, EMAN ``NAME.box``) or one
  particle table for many micrographs (RELION ``particles.star`` or ``coordinate_files.star``,
  a cryoSPARC particle CSV), matched by micrograph name: a lab's existing picks as labels.

Training items are ``(image (1, S, S) float32, mask (S, S) int64)``, mask 1 = particle,
0 = background, 255 = ignore. Item ``i`` of a random dataset is drawn from a generator seeded by
``(seed, epoch, i)`` (:func:`item_generator`), so it does not depend on the worker that draws it.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cryoparticle.data.augment import Augment
from cryoparticle.data.masks import disc_mask
from cryoparticle.data.preprocess import (Normalisation, bin_factor, bin_mask, fourier_bin,
                                          standardise)
from cryoparticle.errors import InputError, check_positive, file_error, param_error
from cryoparticle.io.coords import empty_particles, micrograph_key, read_particles
from cryoparticle.io.mrc import MASK_IGNORE, read_mask, read_micrograph
from cryoparticle.micrograph import Micrograph
from cryoparticle.simulate.micrograph import MicrographSimulator

MICROGRAPH_SUFFIXES = (".mrc", ".mrcs", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
MASK_SUFFIXES = ("_mask.png", "_mask.jpg", "_mask.tif", "_mask.mrc")
COORD_SUFFIXES = (".star", "_autopick.star", "_manualpick.star", ".csv", ".box")
# File stems that are labels, not micrographs (NAME_mask.png, NAME_instances.tif, ...).
_LABEL_STEM_ENDINGS = ("_mask", "_instances")


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch, index)``.

    Its stream is independent of the simulator's for the same tuple (a distinct spawn key).
    """
    key = [int(seed), int(epoch), int(index)]
    if min(key) < 0:
        raise param_error("seed, epoch, index", tuple(key), "must be ≥ 0")
    state = np.random.SeedSequence(key, spawn_key=(1,)).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: seed numpy/random from the worker's torch seed.

    Torch gives every worker a distinct seed (base seed + worker id, the base seed drawn from
    the loader's generator); numpy and ``random`` are seeded from it so augmentations differ
    between workers and are reproducible. One thread per worker avoids oversubscription.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


class SyntheticCropDataset(Dataset):
    """``length`` simulated crops of ``crop_size²`` pixels, each with its segmentation mask.

    Item ``i`` is simulated from the seed ``(seed, epoch, i)``: the same index always gives the
    same pair (whatever worker draws it), and :meth:`set_epoch` gives fresh data per epoch.
    Items are ``(image (1, S, S) float32, mask (S, S) int64)`` with the image normalised
    (``normalisation`` at the simulator's pixel size; None: as simulated, zero mean and unit
    variance) and the mask 1 = particle, 0 = background. ``augment`` is applied with
    :func:`item_generator` ``(seed, epoch, i)``.
    """

    def __init__(self, simulator: MicrographSimulator, length: int, crop_size: int,
                 seed: int = 0, augment: Augment | None = None,
                 normalisation: Normalisation | None = None) -> None:
        if length < 0:
            raise param_error("length", length, "must be ≥ 0")
        if crop_size < 16:
            raise param_error("crop_size", crop_size, "must be ≥ 16 pixels")
        self.simulator = simulator
        self.length = int(length)
        self.crop_size = int(crop_size)
        if int(seed) < 0:
            raise param_error("seed", seed, "must be ≥ 0")
        self.seed = int(seed)
        self.augment = augment
        self.normalisation = normalisation
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw a different set of crops (takes effect in non-persistent workers)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        mic = self.simulator.simulate((self.seed, self.epoch, int(index)), self.crop_size,
                                      name=f"crop_{self.epoch}_{index}")
        if self.normalisation is not None:
            mic.image = self.normalisation(mic.image, self.simulator.pixel_size_a)
        image = torch.from_numpy(mic.image)[None]
        mask = torch.from_numpy(mic.mask.astype(np.int64))
        if self.augment is not None:
            image, mask = self.augment(image, mask, item_generator(self.seed, self.epoch, index))
        return image, mask



# --------------------------------------------------------------------------- loading


@functools.lru_cache(maxsize=8)
def _particle_table(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    """A particle file read once (a table for many micrographs is read once per change)."""
    return read_particles(path)


def _read_particles(label_path: Path, name: str, diameter_px: float | None) -> pd.DataFrame:
    """The particles of micrograph ``name``: every row of its own coordinate file, or the rows
    of a many-micrograph table whose micrograph name matches (:func:`micrograph_key`)."""
    stat = label_path.stat()
    table = _particle_table(str(label_path), stat.st_mtime_ns, stat.st_size)
    key = micrograph_key(name)
    if micrograph_key(label_path.name) != key:  # a table for many micrographs
        keys = table["micrograph"].map(micrograph_key)
        listed = {micrograph_key(m) for m in table.attrs.get("micrographs", [])}
        if key not in listed and not (keys == key).any():
            raise file_error(label_path, f"names no micrograph {name!r} (a micrograph without "
                                         "particles needs its own empty coordinate file)")
        table = table[(keys == key).to_numpy()]
    particles = table.reset_index(drop=True).copy()
    particles.attrs = {}
    particles["micrograph"] = name
    missing = particles["diameter"].isna()
    if missing.any() and diameter_px is not None:
        particles.loc[missing, "diameter"] = diameter_px
    elif missing.any():
        raise file_error(label_path, f"{int(missing.sum())} particle(s) have no diameter; "
                                     "give diameter_px (or the particle diameter in Å)")
    if (particles["diameter"] <= 0).any():
        raise file_error(label_path, "particle diameters must be > 0")
    return particles


def load_labelled_micrograph(image_path: str | Path, label_path: str | Path | None, *,
                             diameter_px: float | None = None,
                             target_pixel_size_a: float | None = None,
                             pixel_size_a: float | None = None,
                             diameter_a: float | None = None,
                             normalisation: Normalisation | None = None) -> Micrograph:
    """Read a micrograph and its ground truth as a :class:`Micrograph`, binned and standardised.

    * ``label_path``: a mask (``.png``/``.jpg``/``.tif``/``.mrc``, read by
      :func:`~cryoparticle.io.mrc.read_mask`), a coordinate file (``.star``, CryoPPP or
      cryoSPARC ``.csv``, ``.box``; the micrograph's own, or a table for many micrographs of
      which the rows naming this one are used) drawn as discs with
      :func:`~cryoparticle.data.masks.disc_mask`, or None
      (unlabelled: every pixel ignore, 255). Coordinate diameters come from the file where it
      has them, else ``diameter_px`` (pixels of the *unbinned* micrograph), else ``diameter_a``
      (Å, converted with the micrograph's pixel size, or the target's when it has none).
    * ``pixel_size_a`` (Å/px of the file; default: the MRC header) and ``target_pixel_size_a``:
      when both are known the image is Fourier-binned to the target (never upsampled: a finer
      target is an :class:`InputError`), a mask by area majority, coordinates divided by the
      factor. When only one is known nothing is binned and that one is the pixel size
      (NaN when neither is).
    * The image is normalised by ``normalisation`` (at the binned pixel size; None:
      standardised, zero mean and unit variance); the result's ``particles`` are in pixels of
      the returned (binned) image; ``metadata`` records the files and ``bin_factor``.
    """
    image_path = Path(image_path)
    diameter_px = check_positive("diameter_px", diameter_px, optional=True)
    target = check_positive("target_pixel_size_a", target_pixel_size_a, optional=True)
    image, header_px = read_micrograph(image_path)
    px = check_positive("pixel_size_a", pixel_size_a, optional=True)
    if px is None:
        px = header_px
    diameter_a = check_positive("diameter_a", diameter_a, optional=True)
    if diameter_px is None and diameter_a is not None:
        source_px = px if px is not None else target
        diameter_px = diameter_a / source_px if source_px is not None else None
    name = image_path.stem
    mask: np.ndarray | None = None
    particles = empty_particles()
    if label_path is None:
        mask = np.full(image.shape, MASK_IGNORE, dtype=np.uint8)
    else:
        label_path = Path(label_path)
        if label_path.suffix.lower() in COORD_SUFFIXES:
            particles = _read_particles(label_path, name, diameter_px)
        else:
            mask = read_mask(label_path)
            if mask.shape != image.shape:
                raise file_error(label_path, f"mask shape {mask.shape} differs from micrograph "
                                             f"{image_path} shape {image.shape}")

    factor = 1.0
    if px is not None and target is not None:
        try:
            shape, factor = bin_factor(image.shape, px, target)
        except InputError as exc:
            raise file_error(image_path, str(exc)) from None
        if factor != 1.0:
            scale_y, scale_x = shape[0] / image.shape[0], shape[1] / image.shape[1]
            image = fourier_bin(image, target / px)
            if mask is not None:
                mask = bin_mask(mask, shape)
            if len(particles):
                particles = particles.copy()
                particles["x"] = particles["x"] * scale_x
                particles["y"] = particles["y"] * scale_y
                particles["diameter"] = particles["diameter"] * scale_y
    if mask is None:
        mask = disc_mask(image.shape, particles)
    out_px = px * factor if px is not None else (target if target is not None else math.nan)
    image = standardise(image) if normalisation is None else normalisation(
        image, out_px if math.isfinite(out_px) else None)
    return Micrograph(name=name, image=image, mask=mask, pixel_size_a=float(out_px),
                      particles=particles.reset_index(drop=True),
                      metadata={"image_path": str(image_path),
                                "label_path": None if label_path is None else str(label_path),
                                "bin_factor": float(factor),
                                "source_pixel_size_a": px})


def _is_micrograph(path: Path, mask_suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    if name.startswith(".") or not path.is_file():
        return False
    if path.suffix.lower() not in MICROGRAPH_SUFFIXES:
        return False
    if any(name.endswith(s.lower()) for s in mask_suffixes):
        return False
    return not path.stem.lower().endswith(_LABEL_STEM_ENDINGS)


def _label_table(folder: Path, labels: str | Path | None) -> Path | None:
    """The many-micrograph label table: ``folder/labels``, else ``labels`` as given."""
    if labels is None or str(labels).strip() == "":
        return None
    for candidate in (folder / labels, Path(labels)):
        if candidate.is_file():
            return candidate
    raise file_error(labels, f"no such particle table (looked in {folder} and as given)")


def find_pairs(folder: str | Path, mask_suffixes: Sequence[str] = MASK_SUFFIXES,
               coord_suffixes: Sequence[str] = COORD_SUFFIXES,
               labels: str | Path | None = None) -> list[tuple[Path, Path]]:
    """Pair every micrograph in ``folder`` with its label file, sorted by file name.

    Micrographs (``.mrc .mrcs .tif .tiff .png .jpg .jpeg``, not ``*_mask.*``/``*_instances.*``)
    are looked for in ``folder`` and ``folder/micrographs``; the label of ``NAME.ext`` is
    ``NAME<mask suffix>`` beside it or in ``folder/masks`` (preferred), else
    ``NAME<coordinate suffix>`` beside it or in ``folder/picks`` (CryoPPP-like layout), else
    ``labels``: one particle table for many micrographs (RELION ``particles.star`` or
    ``coordinate_files.star``, cryoSPARC CSV; in ``folder`` or a path), matched by name.
    A missing folder, a folder without micrographs or a micrograph without a label raises
    :class:`InputError`.
    """
    folder = Path(folder)
    if not folder.exists():
        raise file_error(folder, "no such folder")
    if not folder.is_dir():
        raise file_error(folder, "is not a folder")
    table = _label_table(folder, labels)
    image_dirs = [folder] + ([folder / "micrographs"] if (folder / "micrographs").is_dir() else [])
    images = sorted((p for d in image_dirs for p in d.iterdir()
                     if _is_micrograph(p, mask_suffixes)), key=lambda p: (p.name, str(p)))
    if not images:
        raise file_error(folder, "contains no micrographs (expected "
                                 f"{', '.join(MICROGRAPH_SUFFIXES)} files, in the folder or in "
                                 "micrographs/)")
    pairs: list[tuple[Path, Path]] = []
    for image in images:
        candidates = [d / f"{image.stem}{s}" for s in mask_suffixes
                      for d in (image.parent, folder / "masks")]
        candidates += [d / f"{image.stem}{s}" for s in coord_suffixes
                       for d in (image.parent, folder / "picks")]
        label = next((c for c in candidates if c.is_file()), table)
        if label is None:
            looked = ", ".join(image.stem + s for s in (*mask_suffixes, *coord_suffixes))
            raise file_error(image, f"has no label file (looked for {looked} beside it and in "
                                    "masks/, picks/; or give a particle table: labels=...)")
        pairs.append((image, label))
    return pairs


# --------------------------------------------------------------------------- datasets


def _check_micrographs(micrographs: Sequence[Micrograph]) -> list[Micrograph]:
    micrographs = list(micrographs)
    if not micrographs:
        raise param_error("micrographs", [], "need at least one micrograph")
    for mic in micrographs:
        if mic.image.ndim != 2 or mic.mask.shape != mic.image.shape:
            raise param_error("micrographs", mic.name,
                              f"image {mic.image.shape} and mask {mic.mask.shape} must be "
                              "2-D and of the same shape")
    return micrographs


def particle_centres(mic: Micrograph) -> torch.Tensor | None:
    """True particle centres ``(N, 2)`` float32 ``(x, y)`` in pixels of ``mic.image``, or None
    when the micrograph has no coordinate truth.

    A non-empty particle table gives its centres. An empty table counts as "no particles"
    (``(0, 2)``) only when the mask agrees: no particle pixel and not all ignore; a mask-only
    label (particle pixels, no table) or an unlabelled micrograph (all ignore) gives None.
    """
    particles = mic.particles
    if particles is not None and len(particles):
        xy = particles[["x", "y"]].to_numpy(dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(xy))
    mask = np.asarray(mic.mask)
    if (mask == 1).any() or (mask == MASK_IGNORE).all():
        return None
    return torch.zeros((0, 2), dtype=torch.float32)


class MicrographDataset(Dataset):
    """Whole micrographs: item ``i`` is ``{"image": (1, H, W) float32, "mask": (H, W) int64,
    "name": str}`` (for validation, test and prediction, batch size 1), plus
    ``"particles": (N, 2) float32`` true centres ``(x, y)`` in pixels of the image when the
    micrograph has coordinate truth (see :func:`particle_centres`; ``(0, 2)`` for a
    micrograph known to hold none), so a batch of one carries ``(1, N, 2)``."""

    def __init__(self, micrographs: Sequence[Micrograph]) -> None:
        self.micrographs = _check_micrographs(micrographs)

    def __len__(self) -> int:
        return len(self.micrographs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        mic = self.micrographs[index]
        item: dict[str, torch.Tensor | str] = {
            "image": torch.from_numpy(np.asarray(mic.image, dtype=np.float32))[None],
            "mask": torch.from_numpy(mic.mask.astype(np.int64)),
            "name": mic.name}
        centres = particle_centres(mic)
        if centres is not None:
            item["particles"] = centres
        return item


class RandomCropDataset(Dataset):
    """``length`` random ``crop_size²`` crops of micrographs held in memory.

    Item ``i`` draws, from :func:`item_generator` ``(seed, epoch, i)``, a micrograph (with
    probability proportional to its area) and a uniform position, then applies ``augment``.
    A micrograph smaller than the crop along a side is reflect-padded at a random offset, the
    padding labelled ignore (255). Items are ``(image (1, S, S) float32, mask (S, S) int64)``.

    ``scale_range=(lo, hi)`` zooms each crop by a factor drawn log-uniformly in it (> 1
    enlarges particles): a window of ``S / zoom`` pixels is resampled to ``S`` (bilinear with
    antialiasing for the image, nearest for the mask), so one dataset teaches a range of
    particle sizes in pixels.
    """

    def __init__(self, micrographs: Sequence[Micrograph], length: int, crop_size: int,
                 seed: int = 0, augment: Augment | None = None,
                 scale_range: Sequence[float] | None = None) -> None:
        self.micrographs = _check_micrographs(micrographs)
        self.scale_range = _check_scale_range(scale_range)
        if length < 0:
            raise param_error("length", length, "must be ≥ 0")
        if crop_size < 1:
            raise param_error("crop_size", crop_size, "must be ≥ 1 pixel")
        if int(seed) < 0:
            raise param_error("seed", seed, "must be ≥ 0")
        self.length = int(length)
        self.crop_size = int(crop_size)
        self.seed = int(seed)
        self.augment = augment
        self.epoch = 0
        areas = np.array([m.image.size for m in self.micrographs], dtype=np.float64)
        self._cumulative = np.cumsum(areas) / areas.sum()

    def set_epoch(self, epoch: int) -> None:
        """Draw a different set of crops (takes effect in non-persistent workers)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    @staticmethod
    def _window(size: int, crop: int, u: float) -> tuple[int, int]:
        """(start in the micrograph, offset in the crop) along one axis."""
        if size >= crop:
            return min(int(u * (size - crop + 1)), size - crop), 0
        return 0, min(int(u * (crop - size + 1)), crop - size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        generator = item_generator(self.seed, self.epoch, index)
        u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
        k = min(int(np.searchsorted(self._cumulative, u[0], side="right")),
                len(self.micrographs) - 1)
        mic = self.micrographs[k]
        s = self.crop_size
        if self.scale_range is not None:
            lo, hi = self.scale_range
            v = torch.rand(1, generator=generator, dtype=torch.float64).item()
            s = max(1, int(round(self.crop_size / math.exp(
                math.log(lo) + v * (math.log(hi) - math.log(lo))))))
        (height, width) = mic.image.shape
        y0, top = self._window(height, s, u[1])
        x0, left = self._window(width, s, u[2])
        image = np.array(mic.image[y0:y0 + s, x0:x0 + s], dtype=np.float32)  # a copy
        mask = np.array(mic.mask[y0:y0 + s, x0:x0 + s])
        if image.shape != (s, s):
            pad = ((top, s - image.shape[0] - top), (left, s - image.shape[1] - left))
            image = np.pad(image, pad, mode="reflect")
            mask = np.pad(mask, pad, mode="constant", constant_values=MASK_IGNORE)
        image_t = torch.from_numpy(np.ascontiguousarray(image))[None]
        mask_t = torch.from_numpy(mask.astype(np.int64))
        if s != self.crop_size:
            image_t, mask_t = _resample_crop(image_t, mask_t, self.crop_size)
        if self.augment is not None:
            image_t, mask_t = self.augment(image_t, mask_t, generator)
        return image_t, mask_t


def _check_scale_range(scale_range: Sequence[float] | None) -> tuple[float, float] | None:
    if scale_range is None:
        return None
    values = tuple(float(v) for v in scale_range)
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values) \
            or values[0] > values[1]:
        raise param_error("scale_range", list(scale_range),
                          "must be [low, high] zoom factors with 0 < low ≤ high")
    return None if values == (1.0, 1.0) else values  # type: ignore[return-value]


def _resample_crop(image: torch.Tensor, mask: torch.Tensor, size: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample a square ``(1, s, s)`` crop and its ``(s, s)`` mask to ``size²``."""
    image = torch.nn.functional.interpolate(image[None], size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)[0]
    mask = torch.nn.functional.interpolate(mask[None, None].to(torch.float32),
                                           size=(size, size), mode="nearest-exact")[0, 0]
    return image.contiguous(), mask.to(torch.int64)
