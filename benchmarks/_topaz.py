"""Topaz (Bepler et al. 2019, ``pip install topaz-em``; an optional peer, never a test
dependency) as the benchmarks run it: ``topaz preprocess`` to a common scale, ``topaz train``
on given micrographs and coordinates, ``topaz extract`` with the shipped or a trained model,
and the picks read back into our frame (pixels of the original micrographs).

Scale: micrographs are binned by the integer factor that brings them closest to
:data:`TOPAZ_PIXEL_SIZE_A` (the scale of Topaz's pretrained pickers, ≈ 27 px per
β-galactosidase); coordinates go to that frame divided by the factor and come back multiplied
(``topaz extract -x``). Extraction radius: half the particle diameter there (at least 3 px).

``topaz train`` has no seed option; :func:`train_command` runs it through the interpreter of
the ``topaz`` executable with Python's, NumPy's and PyTorch's generators seeded first.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TOPAZ_PIXEL_SIZE_A = 7.08   # Topaz's pickers see micrographs binned to about the model scale

_SEEDED = ("import random, sys, numpy, torch; s = int(sys.argv[1]); random.seed(s); "
           "numpy.random.seed(s); torch.manual_seed(s); from topaz.main import main; "
           "sys.argv = ['topaz', *sys.argv[2:]]; sys.exit(main())")


@dataclass(frozen=True)
class TopazTraining:
    """``topaz train`` settings (Topaz 0.3 defaults, except what a benchmark must shorten).
    ``train_radius_px``: pixels around each labelled centre counted positive (Topaz's ``-r``,
    in the binned frame); ``pretrained``: start from Topaz's shipped weights of the same
    architecture (its default for resnet8/16 with 32 or 64 units)."""

    model: str = "resnet8"
    units: int = 32
    num_epochs: int = 10
    epoch_size: int = 1000
    minibatch_size: int = 256
    train_radius_px: int = 3
    learning_rate: float = 2e-4
    pretrained: bool = True
    threads: int = 0
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("units", "num_epochs", "epoch_size", "minibatch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Topaz training: {name} must be ≥ 1, got {getattr(self, name)}")
        if self.train_radius_px < 0:
            raise ValueError(f"Topaz training: train_radius_px must be ≥ 0, got "
                             f"{self.train_radius_px}")

    def record(self) -> dict[str, Any]:
        return asdict(self)


def bin_factor(pixel_size_a: float) -> int:
    """Integer binning that brings ``pixel_size_a`` closest to :data:`TOPAZ_PIXEL_SIZE_A`."""
    if not pixel_size_a > 0:
        raise ValueError(f"pixel size must be > 0 Å/px, got {pixel_size_a}")
    return max(1, int(round(TOPAZ_PIXEL_SIZE_A / pixel_size_a)))


def extract_radius(diameter_px: float, factor: int) -> int:
    """Topaz's extraction radius: half the diameter in the binned frame, at least 3 px."""
    return max(3, int(round(diameter_px / factor / 2)))


def interpreter(topaz: Path) -> str:
    """The Python of the ``topaz`` console script (its ``#!`` line)."""
    first = Path(topaz).read_text(errors="replace").splitlines()[:1]
    if not first or not first[0].startswith("#!"):
        raise ValueError(f"{topaz}: not a console script with a #! line")
    return first[0][2:].strip().split()[0]


def preprocess_command(topaz: Path, paths: Sequence[Path], factor: int, out_dir: Path,
                       threads: int = 0, workers: int = 0) -> list[str]:
    extra = (["-j", str(threads)] if threads else []) + (["-t", str(workers)] if workers else [])
    return [str(topaz), "preprocess", "-s", str(factor), "-d", "-1", *extra, "-o", str(out_dir),
            *map(str, paths)]


def extract_command(topaz: Path, model: str | Path, radius: int, factor: int,
                    paths: Sequence[Path], out_file: Path, threshold: float = -6,
                    threads: int = 0) -> list[str]:
    """Every candidate down to ``threshold`` (−6: p ≥ 0.0025), coordinates × ``factor``."""
    extra = ["-j", str(threads)] if threads else []
    return [str(topaz), "extract", "-m", str(model), "-r", str(radius), "-x", str(factor),
            "-t", f"{threshold:g}", "-d", "-1", *extra, "-o", str(out_file), *map(str, paths)]


def train_command(topaz: Path, settings: TopazTraining, images_list: Path, targets: Path,
                  num_particles: float, save_prefix: Path, curve: Path) -> list[str]:
    """``topaz train`` on CPU, seeded (see the module docstring)."""
    if not num_particles > 0:
        raise ValueError(f"Topaz training: expected particles per micrograph must be > 0, "
                         f"got {num_particles}")
    s = settings
    return [interpreter(topaz), "-c", _SEEDED, str(s.seed), "train", "-d", "-1",
            "--num-workers", str(s.num_workers), "-j", str(s.threads),
            "--train-images", str(images_list), "--train-targets", str(targets),
            "-n", f"{num_particles:g}", "-r", str(s.train_radius_px), "-m", s.model,
            "--units", str(s.units), "--learning-rate", f"{s.learning_rate:g}",
            "--minibatch-size", str(s.minibatch_size), "--epoch-size", str(s.epoch_size),
            "--num-epochs", str(s.num_epochs),
            "--pretrained" if s.pretrained else "--no-pretrained",
            "--save-prefix", str(save_prefix), "-o", str(curve)]


def topaz_targets(particles: pd.DataFrame, factor: int) -> pd.DataFrame:
    """Our particle table → Topaz's (``image_name x_coord y_coord``) in the binned frame."""
    return pd.DataFrame({"image_name": particles["micrograph"].astype(str).to_numpy(),
                         "x_coord": np.round(particles["x"].to_numpy() / factor).astype(int),
                         "y_coord": np.round(particles["y"].to_numpy() / factor).astype(int)})


def expected_particles(particles: pd.DataFrame, micrographs: Sequence[str]) -> float:
    """Mean number of labelled particles per micrograph of ``micrographs`` (Topaz's ``-n``)."""
    if not micrographs:
        raise ValueError("Topaz training: no training micrographs")
    counts = particles["micrograph"].astype(str).value_counts()
    return float(sum(int(counts.get(m, 0)) for m in micrographs) / len(micrographs))


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if log is not None:
        log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")


def preprocess(topaz: Path, paths: Sequence[Path], factor: int, out_dir: Path,
               threads: int = 0, workers: int = 0, skip_existing: bool = False) -> list[Path]:
    """``topaz preprocess`` (binning, GMM normalisation; ``workers`` processes) into
    ``out_dir``; its MRC files. ``skip_existing``: only the micrographs without one there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = [out_dir / f"{Path(p).stem}.mrc" for p in paths]
    todo = [p for p, o in zip(paths, out) if not (skip_existing and o.is_file())]
    if todo:
        _run(preprocess_command(topaz, todo, factor, out_dir, threads, workers),
             "topaz preprocess")
    return out


def extract(topaz: Path, model: str | Path, images: Sequence[Path], radius: int, factor: int,
            out_file: Path, diameter_px: float, threads: int = 0) -> pd.DataFrame:
    """``topaz extract`` on preprocessed ``images``: every candidate with its score, in pixels
    of the original micrographs (our particle table, diameter ``diameter_px``)."""
    from cryoparticle.io.coords import read_topaz

    _run(extract_command(topaz, model, radius, factor, images, out_file, threads=threads),
         "topaz extract")
    return read_topaz(out_file, diameter_px)


def train_topaz(topaz: Path, images: Sequence[Path], particles: pd.DataFrame, factor: int,
                work: Path, settings: TopazTraining) -> tuple[Path, float]:
    """Train Topaz on preprocessed ``images`` with ``particles`` (our table, pixels of the
    original micrographs; micrograph = image stem) into ``work``; (model file of the last
    epoch, training seconds). A finished run (``work/DONE``) with the same settings,
    micrographs and number of labels (``work/run.json``) is reused; another is trained anew."""
    import json

    model = work / f"model_epoch{settings.num_epochs}.sav"
    done, facts_file = work / "DONE", work / "run.json"
    names = [Path(p).stem for p in images]
    labels = particles[particles["micrograph"].astype(str).isin(names)]
    facts = {**settings.record(), "factor": int(factor), "micrographs": sorted(names),
             "n_labels": len(labels)}
    if done.is_file() and model.is_file() and facts_file.is_file() \
            and json.loads(facts_file.read_text()) == facts:
        return model, float(done.read_text())
    done.unlink(missing_ok=True)
    for old in work.glob("model_epoch*.sav"):
        old.unlink()
    work.mkdir(parents=True, exist_ok=True)
    facts_file.write_text(json.dumps(facts, indent=1) + "\n")
    listing, targets = work / "images.txt", work / "targets.txt"
    pd.DataFrame({"image_name": names, "path": [str(Path(p).resolve()) for p in images]}
                 ).to_csv(listing, sep="\t", index=False)
    topaz_targets(labels, factor).to_csv(targets, sep="\t", index=False)
    cmd = train_command(topaz, settings, listing, targets, expected_particles(labels, names),
                        work / "model", work / "curve.txt")
    start = time.perf_counter()
    _run(cmd, "topaz train", work / "train.log")
    seconds = time.perf_counter() - start
    if not model.is_file():
        raise RuntimeError(f"topaz train wrote no {model.name} in {work}")
    done.write_text(f"{seconds:.1f}\n")
    return model, seconds


__all__ = ["TOPAZ_PIXEL_SIZE_A", "TopazTraining", "bin_factor", "expected_particles",
           "extract", "extract_command", "extract_radius", "interpreter", "preprocess",
           "preprocess_command", "topaz_targets", "train_command", "train_topaz"]
