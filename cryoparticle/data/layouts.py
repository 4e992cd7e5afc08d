"""Find micrographs and their labels in the folder layouts real datasets come in.

* CryoPPP, as its archive extracts (``python -m cryoparticle.data.cryoppp download``):
  ``micrographs/*.mrc`` (CryoPPP_Lite: ``*.jpg``) with
  ``ground_truth/particle_coordinates/NAME.csv``;
* CryoSegNet: ``images/NAME.jpg`` with ``masks/NAME.jpg`` (or ``NAME_mask.*``);
* ``micrographs/NAME.*`` with ``masks/NAME_mask.*`` and/or ``picks/NAME.csv`` (the shared
  EMPIAR-10017/10059/10947 folders), or everything flat in one folder.

Micrographs and labels pair by file stem. Coordinates are preferred to masks (they are exact).
Two micrographs with one stem is an :class:`InputError` naming both; micrographs without a
label and labels without a micrograph are returned as *unpaired* for the caller to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryoparticle.data.datasets import MICROGRAPH_SUFFIXES
from cryoparticle.errors import file_error

IMAGE_DIRS = ("micrographs", "images", ".")
COORD_DIRS = ("ground_truth/particle_coordinates", "picks", "coordinates", "micrographs", ".")
MASK_DIRS = ("masks", "micrographs", "images", ".")
COORD_SUFFIXES = (".csv", ".star", ".box")
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".mrc")


@dataclass
class Pairing:
    """Micrographs paired with a label, by stem; what could not be paired."""

    pairs: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    unlabelled: list[Path] = field(default_factory=list)
    orphan_labels: list[Path] = field(default_factory=list)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _mask_stem(path: Path) -> str | None:
    """``NAME`` of ``NAME_mask.ext`` (or None)."""
    return path.stem[: -len("_mask")] if path.stem.endswith("_mask") else None


def find_labelled_micrographs(root: str | Path) -> Pairing:
    """Pair the micrographs under ``root`` with their coordinate file or mask (see module)."""
    root = Path(root)
    if not root.is_dir():
        raise file_error(root, "no such dataset folder")
    images: dict[str, Path] = {}
    coords: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for sub in IMAGE_DIRS:
        folder = root / sub
        if not folder.is_dir():
            continue
        for path in _files(folder):
            suffix = path.suffix.lower()
            if suffix not in MICROGRAPH_SUFFIXES or _mask_stem(path) is not None \
                    or path.stem.endswith("_instances"):
                continue
            if path.stem in images and images[path.stem] != path:
                raise file_error(path, f"two micrographs named {path.stem!r} (the other is "
                                       f"{images[path.stem]}); rename one")
            images[path.stem] = path
        if images:
            break  # the first layout folder holding micrographs is the dataset's
    for sub in COORD_DIRS:
        folder = root / sub
        if folder.is_dir():
            for path in _files(folder):
                if path.suffix.lower() in COORD_SUFFIXES:
                    coords.setdefault(path.stem, path)
    for sub in MASK_DIRS:
        folder = root / sub
        if not folder.is_dir():
            continue
        for path in _files(folder):
            if path.suffix.lower() not in MASK_SUFFIXES:
                continue
            stem = _mask_stem(path)
            if stem is None and sub == "masks":
                stem = path.stem  # CryoSegNet: masks/NAME.jpg beside images/NAME.jpg
            if stem is not None:
                masks.setdefault(stem, path)
    if not images:
        raise file_error(root, "contains no micrographs (looked in "
                               f"{', '.join(IMAGE_DIRS)} for {', '.join(MICROGRAPH_SUFFIXES)})")
    out = Pairing()
    for stem in sorted(images):
        label = coords.get(stem) or masks.get(stem)
        if label is None:
            out.unlabelled.append(images[stem])
        else:
            out.pairs[stem] = (images[stem], label)
    used = {label for _, label in out.pairs.values()}
    out.orphan_labels = sorted(p for p in {**coords, **masks}.values()
                               if p not in used and p.stem not in images
                               and _mask_stem(p) not in images)
    if not out.pairs:
        raise file_error(root, f"none of its {len(images)} micrograph(s) has a label file "
                               "(coordinates in ground_truth/particle_coordinates/ or picks/, "
                               "or masks in masks/)")
    return out


__all__ = ["Pairing", "find_labelled_micrographs"]
