"""``data=cryoppp``: real micrographs with expert picks (CryoPPP and similar layouts).

One or several datasets (``datasets``: a list of ``{root, empiar_id, pixel_size_a,
particle_diameter_a, particle_diameter_px, name, target}``), each a folder in one of the layouts
of :mod:`cryoparticle.data.layouts`. For each dataset:

* the **pixel size of the files** is ``pixel_size_a`` (override), else the MRC header, else the
  CryoPPP table (:mod:`cryoparticle.data.cryoppp`); when none is known (the shared 1024² PNGs),
  ``particle_diameter_px`` (pixels of the files) sets it as
  ``particle_diameter_a / particle_diameter_px``, so particles reach the training scale by
  their diameter;
* the **particle diameter** is ``particle_diameter_a`` (override), else the table's, else the
  module's; coordinate files' own ``Diameter`` column wins for drawing;
* micrographs are Fourier-binned to the training ``pixel_size_a`` (never upsampled); masks by
  area majority; a mask coarser by an exact integer factor (the 256² masks of 1024² PNGs) is
  first upsampled by nearest neighbour;
* **border artefacts** (:mod:`cryoparticle.data.borders`) are labelled ignore (255);
* the **target** of training micrographs is ``target.kind`` (``disc``, ``refined`` or
  ``core``: discs of ``target.core_fraction`` × the diameter, the rims ignored), with an
  ignore ring of ``target.ring_px`` and, when ``target.far_ignore_px`` is set, background far
  from every pick ignored (training pixels); a dataset's own ``target`` mapping overrides
  these options for its micrographs (e.g. refined shapes for isolated particles, cores for
  crowded ones, whose refined shapes merge); validation and test keep disc masks (with the
  border ignored) so that metrics compare across targets;
* centres of mask-only labels are recovered with
  :func:`~cryoparticle.data.masks.centres_from_mask` (for the picking threshold and metrics).

The **split** is by micrograph: seeded fractions, or explicit name lists (``split.val``,
``split.test``, ``split.train``; names ``STEM`` or ``DATASET/STEM``), a name in two lists being
an error. It is written as ``split.json`` into the run folder (``split_file``, default the
trainer's ``default_root_dir``) once the first stage's micrographs are read; an existing different
``split.json`` there is an error, so a resumed run cannot mix test micrographs into training.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from cryoparticle.data.augment import Augment
from cryoparticle.data.borders import BorderWidths, border_mask, border_widths
from cryoparticle.data.cryoppp import dataset_info, empiar_number
from cryoparticle.data.datamodules import _CropDataModule
from cryoparticle.data.datasets import _read_particles
from cryoparticle.data.layouts import find_labelled_micrographs
from cryoparticle.data.masks import TARGETS, centres_from_mask, disc_mask, target_mask
from cryoparticle.data.preprocess import bin_factor, bin_mask, fourier_bin, standardise
from cryoparticle.errors import InputError, check_positive, file_error, param_error
from cryoparticle.io.atomic import write_text_atomic
from cryoparticle.io.mrc import MASK_IGNORE, read_mask, read_micrograph
from cryoparticle.micrograph import Micrograph

SPLITS = ("train", "val", "test")
COORD_SUFFIXES = (".csv", ".star", ".box")


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


@dataclass
class DatasetSpec:
    """One dataset folder and what is known of its imaging."""

    root: Path
    label: str
    empiar_id: int | None
    pixel_size_a: float | None          # of the files (override); None: header or table
    particle_diameter_a: float | None
    particle_diameter_px: float | None  # pixels of the files
    table_pixel_size_a: float | None = None
    target: dict[str, Any] | None = None  # this dataset's overrides of the module's ``target``


def _check_target_kind(kind: Any, where: str) -> None:
    """A one-line error naming the option ``where`` unless ``kind`` is one of ``TARGETS``."""
    if kind not in TARGETS:
        raise param_error(where, kind, f"choose one of {', '.join(TARGETS)}")


def _spec(entry: Mapping[str, Any] | str, index: int) -> DatasetSpec:
    if isinstance(entry, (str, Path)):
        entry = {"root": entry}
    entry = dict(_plain(entry))
    unknown = set(entry) - {"root", "empiar_id", "pixel_size_a", "particle_diameter_a",
                            "particle_diameter_px", "name", "target"}
    if unknown:
        raise param_error(f"datasets[{index}]", sorted(unknown), "unknown key(s); use root, "
                          "empiar_id, pixel_size_a, particle_diameter_a, particle_diameter_px, "
                          "name, target")
    target = entry.get("target")
    if target is not None:
        if not isinstance(target, Mapping):
            raise param_error(f"datasets[{index}].target", target,
                              "give a mapping of target options, e.g. {kind: refined}")
        target = dict(target)
        if "kind" in target:
            _check_target_kind(target["kind"], f"datasets[{index}].target.kind")
    if not entry.get("root"):
        raise param_error(f"datasets[{index}].root", entry.get("root"), "give the dataset folder")
    root = Path(entry["root"])
    number = None if entry.get("empiar_id") is None else empiar_number(entry["empiar_id"])
    info = dataset_info(number) if number is not None else {}
    pixel = check_positive(f"datasets[{index}].pixel_size_a", entry.get("pixel_size_a"),
                           optional=True)
    diameter_a = check_positive(f"datasets[{index}].particle_diameter_a",
                                entry.get("particle_diameter_a"), optional=True) \
        or info.get("particle_diameter_a")
    diameter_px = check_positive(f"datasets[{index}].particle_diameter_px",
                                 entry.get("particle_diameter_px"), optional=True)
    label = entry.get("name") or (f"empiar-{number}" if number is not None else root.name)
    return DatasetSpec(root, str(label), number, pixel, diameter_a, diameter_px,
                       info.get("pixel_size_a"), target)


def _upsample_mask(mask: np.ndarray, shape: tuple[int, int], path: Path) -> np.ndarray:
    """``mask`` at ``shape``: as is, or repeated by an exact integer factor; else an error."""
    if mask.shape == tuple(shape):
        return mask
    fy, fx = shape[0] / mask.shape[0], shape[1] / mask.shape[1]
    if fy == fx and fy == int(fy) and fy > 1:
        k = int(fy)
        return np.repeat(np.repeat(mask, k, axis=0), k, axis=1)
    raise file_error(path, f"mask shape {mask.shape} does not match its micrograph {shape} "
                           "(nor an exact integer fraction of it)")


def read_label_mask(path: Path) -> np.ndarray:
    """A mask file as ``{0, 1, 255}``: label images and masks written by this package as
    :func:`~cryoparticle.io.mrc.read_mask` reads them; an 8-bit mask of many grey levels (a
    disc mask resized with interpolation, as the shared 256² PNGs) thresholded at 128."""
    mask = read_mask(path)
    if path.suffix.lower() == ".png":
        grey, _ = read_micrograph(path)
        if np.unique(grey).size > 3:
            return (np.asarray(grey) >= 128).astype(np.uint8)
    return mask


def _check_inside(particles: pd.DataFrame, shape: tuple[int, int], path: Path) -> None:
    if particles.empty:
        raise file_error(path, "has no particle rows")
    height, width = shape
    x, y = particles["x"].to_numpy(), particles["y"].to_numpy()
    outside = (x < 0) | (x > width - 1) | (y < 0) | (y > height - 1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise file_error(path, f"{int(outside.sum())} coordinate(s) outside the {width}×{height} "
                               f"micrograph (first: x={x[i]:g}, y={y[i]:g})")


class CryoPPPDataModule(_CropDataModule):
    """Real micrographs with expert picks from one or several dataset folders (see module)."""

    def __init__(self, datasets: Sequence[Mapping[str, Any] | str], *, pixel_size_a: float = 7.08,
                 particle_diameter_a: float | None = None,
                 split: Mapping[str, Any] | None = None, split_file: str | Path | None = None,
                 target: Mapping[str, Any] | None = None,
                 border: Mapping[str, Any] | None = None, crop_size: int = 256,
                 train_samples_per_epoch: int = 512, batch_size: int = 8, num_workers: int = 0,
                 seed: int = 0, augment: Augment | Mapping[str, Any] | None = None,
                 normalisation: Mapping[str, Any] | str | None = None,
                 scale_range: Sequence[float] | None = None) -> None:
        super().__init__(crop_size=crop_size, train_samples_per_epoch=train_samples_per_epoch,
                         batch_size=batch_size, num_workers=num_workers, seed=seed,
                         augment=augment, normalisation=normalisation,
                         scale_range=scale_range)
        datasets = _plain(datasets)
        if isinstance(datasets, (str, Mapping)) or not datasets:
            raise param_error("datasets", datasets, "give a list of {root, empiar_id, ...}")
        self.specs = [_spec(entry, i) for i, entry in enumerate(datasets)]
        labels = [s.label for s in self.specs]
        if len(set(labels)) != len(labels):
            raise param_error("datasets", labels, "two datasets with one name; set name=")
        self.pixel_size_a = float(
            check_positive("pixel_size_a", pixel_size_a))  # type: ignore[arg-type]
        diameter = check_positive("particle_diameter_a", particle_diameter_a, optional=True)
        if diameter is None:
            diameter = next((s.particle_diameter_a for s in self.specs
                             if s.particle_diameter_a), None)
        if diameter is None:
            raise param_error("particle_diameter_a", None, "unknown for these datasets; give it")
        self.particle_diameter_a = float(diameter)
        self.split_cfg = {"seed": seed, "fractions": [0.8, 0.1, 0.1], "train": None,
                          "val": None, "test": None, **(_plain(split) or {})}
        self.target_cfg = {"kind": "disc", "ring_px": 0.0, "far_ignore_px": None,
                           "core_fraction": 0.5, "refine": {}, **(_plain(target) or {})}
        _check_target_kind(self.target_cfg["kind"], "target.kind")
        self.border_cfg = {"enabled": True, **(_plain(border) or {})}
        self.split_file = None if split_file is None else Path(split_file)
        # Discover every dataset's pairs now: layout errors surface before training starts.
        self.items: dict[str, tuple[DatasetSpec, Path, Path]] = {}
        self.unpaired: dict[str, list[str]] = {}
        for spec in self.specs:
            pairing = find_labelled_micrographs(spec.root)
            for stem, (image, label) in pairing.pairs.items():
                self.items[f"{spec.label}/{stem}"] = (spec, image, label)
            lost = [str(p) for p in (*pairing.unlabelled, *pairing.orphan_labels)]
            if lost:
                self.unpaired[spec.label] = lost
                rank_zero_warn(f"{spec.root}: {len(pairing.unlabelled)} micrograph(s) without a "
                               f"label and {len(pairing.orphan_labels)} label(s) without a "
                               f"micrograph (listed in split.json); e.g. {lost[0]}")
        self.splits = self._make_split()
        self._written = False

    # ------------------------------------------------------------------ split

    def _resolve(self, name: str, where: str) -> str:
        if name in self.items:
            return name
        matches = [key for key in self.items if key.split("/", 1)[1] == name]
        if len(matches) == 1:
            return matches[0]
        reason = "is in no dataset" if not matches else \
            f"is ambiguous ({', '.join(matches)}); write DATASET/NAME"
        raise param_error(f"split.{where}", name, f"micrograph {reason}")

    def _make_split(self) -> dict[str, list[str]]:
        cfg = self.split_cfg
        names = sorted(self.items)
        explicit: dict[str, list[str]] = {}
        for split in SPLITS:
            listed = _plain(cfg.get(split))
            if listed is not None:
                explicit[split] = [self._resolve(str(n), split) for n in listed]
        seen: dict[str, str] = {}
        for split, listed in explicit.items():
            for key in listed:
                if key in seen and seen[key] != split or listed.count(key) > 1:
                    other = seen.get(key, split)
                    raise param_error(f"split.{split}", key, f"micrograph listed in two splits "
                                      f"({other} and {split}); a test micrograph must never "
                                      "train")
                seen[key] = split
        rest = [n for n in names if n not in seen]
        out = {split: list(explicit.get(split, [])) for split in SPLITS}
        if rest:
            fractions = [float(f) for f in _plain(cfg.get("fractions"))]
            if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
                raise param_error("split.fractions", fractions,
                                  "three fractions ≥ 0 (train, val, test)")
            open_splits = [s for s in SPLITS if s not in explicit]
            if open_splits:
                weights = np.array([fractions[SPLITS.index(s)] for s in open_splits])
                order = np.random.default_rng(int(cfg.get("seed") or 0)).permutation(len(rest))
                shuffled = [rest[i] for i in order]
                counts = np.floor(weights / max(weights.sum(), 1e-12) * len(shuffled)).astype(int)
                for i in np.argsort(-weights):  # every split with a fraction gets one if possible
                    if weights[i] > 0 and counts[i] == 0 and counts.sum() < len(shuffled):
                        counts[i] = 1
                counts[int(np.argmax(weights))] += len(shuffled) - counts.sum()
                start = 0
                for split, count in zip(open_splits, counts, strict=True):
                    out[split] += shuffled[start:start + count]
                    start += count
        for split in SPLITS:
            out[split] = sorted(out[split])
        if not out["train"]:
            raise param_error("split", {k: len(v) for k, v in out.items()},
                              "no training micrograph")
        return out

    def split_record(self) -> dict[str, Any]:
        """What ``split.json`` holds: the split, the datasets and what could not be paired."""
        return {"splits": self.splits,
                "seed": self.split_cfg.get("seed"),
                "datasets": [{"name": s.label, "root": str(s.root), "empiar_id": s.empiar_id,
                              "pixel_size_a": s.pixel_size_a,
                              "particle_diameter_a": s.particle_diameter_a,
                              "particle_diameter_px": s.particle_diameter_px}
                             for s in self.specs],
                "unpaired": self.unpaired}

    def _split_path(self) -> Path | None:
        if self.split_file is not None:
            return self.split_file
        root = getattr(self.trainer, "default_root_dir", None) if self.trainer else None
        return None if root is None else Path(root) / "split.json"

    def write_split(self) -> Path | None:
        """Write ``split.json`` (atomically) into the run folder; an existing file there must
        hold the same split."""
        path = self._split_path()
        if path is None or self._written:
            return path
        record = self.split_record()
        if path.is_file():
            try:
                old = json.loads(path.read_text()).get("splits")
            except (OSError, ValueError) as exc:
                raise file_error(path, f"cannot read the run's split ({exc})") from None
            if old != self.splits:
                raise file_error(path, "holds a different split of these micrographs (the run "
                                       "folder belongs to another split; use a new run folder)")
        else:
            write_text_atomic(path, json.dumps(record, indent=2) + "\n")
        self._written = True
        rank_zero_info(f"split: {', '.join(f'{k} {len(v)}' for k, v in self.splits.items())} "
                       f"micrographs ({path})")
        return path

    # ------------------------------------------------------------------ loading

    def _source_pixel_size(self, spec: DatasetSpec, header_px: float | None, key: str) -> float:
        if spec.pixel_size_a is not None:
            return spec.pixel_size_a
        if header_px is not None:
            return float(header_px)
        if spec.table_pixel_size_a is not None:
            return spec.table_pixel_size_a
        if spec.particle_diameter_px is not None:
            diameter_a = spec.particle_diameter_a or self.particle_diameter_a
            return diameter_a / spec.particle_diameter_px
        raise param_error(f"datasets[{spec.label}].pixel_size_a", None,
                          f"the pixel size of {key} is unknown (no override, header or table "
                          "entry): give pixel_size_a, or particle_diameter_px to scale by the "
                          "particle")

    def load(self, key: str, *, train: bool) -> Micrograph:
        """Micrograph ``key`` (``DATASET/STEM``) binned to the training pixel size with its
        target (``train``) or evaluation mask, border ignored, particles in binned pixels."""
        spec, image_path, label_path = self.items[key]
        raw, header_px = read_micrograph(image_path)
        source_px = self._source_pixel_size(spec, header_px, key)
        diameter_a = spec.particle_diameter_a or self.particle_diameter_a
        diameter_px = diameter_a / source_px  # pixels of the file
        particles = None
        mask = None
        if label_path.suffix.lower() in COORD_SUFFIXES:
            particles = _read_particles(label_path, key, diameter_px)
            _check_inside(particles, raw.shape, label_path)
        else:
            coarse = read_label_mask(label_path)
            mask = _upsample_mask(coarse, raw.shape, label_path)
            upsampled = raw.shape[0] / coarse.shape[0]
        try:
            shape, factor = bin_factor(raw.shape, source_px, self.pixel_size_a)
        except InputError as exc:
            raise file_error(image_path, str(exc)) from None
        widths = BorderWidths()
        if self.border_cfg.get("enabled", True):
            options = {k: v for k, v in self.border_cfg.items() if k != "enabled"}
            widths = border_widths(raw, **options).scaled(factor)
        image = fourier_bin(raw, self.pixel_size_a / source_px) if factor != 1.0 \
            else np.asarray(raw, np.float32)
        scale_y, scale_x = shape[0] / raw.shape[0], shape[1] / raw.shape[1]
        if particles is not None:
            particles = particles.assign(x=particles["x"] * scale_x, y=particles["y"] * scale_y,
                                         diameter=particles["diameter"] * scale_y)
        else:
            assert mask is not None
            mask = bin_mask(mask, shape) if factor != 1.0 else mask
            # discs drawn on a coarser grid are smaller by up to a coarse pixel
            tolerance = max(0.75, upsampled * scale_y)
            particles = centres_from_mask(mask, diameter_px * scale_y, tolerance_px=tolerance,
                                          micrograph=key)
        image = standardise(image) if self.normaliser is None else \
            self.normaliser(image, self.pixel_size_a)
        if train:
            t = {**self.target_cfg, **(spec.target or {})}
            label = target_mask(shape, particles, target=t["kind"], image=image, disc=mask,
                                ring_px=t["ring_px"], far_ignore_px=t["far_ignore_px"],
                                refine=t["refine"], core_fraction=t.get("core_fraction", 0.5))
        else:
            label = mask.copy() if mask is not None else disc_mask(shape, particles)
        border = border_mask(shape, widths)
        label[border] = MASK_IGNORE
        particles = particles.assign(micrograph=key).reset_index(drop=True)
        return Micrograph(name=key.replace("/", "__"), image=image, mask=label,
                          pixel_size_a=float(source_px * factor), particles=particles,
                          metadata={"image_path": str(image_path), "label_path": str(label_path),
                                    "bin_factor": float(factor), "source_pixel_size_a": source_px,
                                    "border_px": widths.__dict__, "key": key})

    def _split(self, split: str) -> list[Micrograph]:
        keys = self.splits[split]
        if not keys:
            raise param_error("split", split, f"no {split} micrograph (see split.fractions)")
        micrographs = [self.load(key, train=split == "train") for key in keys]
        self.write_split()  # once every micrograph of the stage could be read
        return micrographs


__all__ = ["CryoPPPDataModule", "DatasetSpec"]
