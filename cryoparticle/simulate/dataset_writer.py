"""Write a simulated dataset to disk: ``out_dir/{train,val,test}/NAME.*`` plus a manifest.

Per micrograph ``NAME``: ``NAME.mrc`` (float32, pixel size in the header), ``NAME_mask.png``
(particle = white), ``NAME_instances.tif`` (uint16 instance labels, optional), ``NAME.star``
(RELION coordinates in pixels of this micrograph, with Euler angles and defocus) and
``NAME.json`` (imaging parameters). Every file is written atomically and ``NAME.json`` last, so
a micrograph whose ``.json`` exists is complete and a rerun skips it. Micrograph ``i`` is
simulated from the seed ``(seed, i)``: the same seed gives byte-identical files, whatever was
skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tifffile
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from cryoparticle.errors import param_error
from cryoparticle.io.atomic import atomic_path, write_text_atomic
from cryoparticle.io.coords import write_relion_coordinates
from cryoparticle.io.mrc import write_mask_png, write_mrc
from cryoparticle.micrograph import Micrograph
from cryoparticle.simulate.micrograph import MicrographSimulator

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Entry:
    index: int
    name: str
    split: str


def plan_splits(n_micrographs: int, fractions: dict[str, float]) -> list[Entry]:
    """Assign micrograph indices to splits in order (train first), by the given fractions."""
    if n_micrographs < 0:
        raise param_error("n_micrographs", n_micrographs, "must be ≥ 0")
    total = sum(float(fractions.get(s, 0.0)) for s in SPLITS)
    if total <= 0 or any(float(fractions.get(s, 0.0)) < 0 for s in SPLITS):
        raise param_error("splits", dict(fractions), "fractions must be ≥ 0 and not all zero")
    counts = [round(n_micrographs * float(fractions.get(s, 0.0)) / total) for s in SPLITS[1:]]
    n_train = n_micrographs - sum(counts)
    if n_train < 0:  # rounding pushed val+test over the total
        counts[-1] += n_train
        n_train = 0
    sizes = [n_train, *counts]
    out, i = [], 0
    for split, size in zip(SPLITS, sizes):
        for _ in range(size):
            out.append(Entry(i, f"sim_{i:05d}", split))
            i += 1
    return out


def micrograph_paths(folder: Path, name: str, with_instances: bool) -> dict[str, Path]:
    paths = {"image": folder / f"{name}.mrc", "mask": folder / f"{name}_mask.png",
             "star": folder / f"{name}.star", "meta": folder / f"{name}.json"}
    if with_instances:
        paths["instances"] = folder / f"{name}_instances.tif"
    return paths


def write_micrograph(mic: Micrograph, paths: dict[str, Path]) -> None:
    """Write one simulated micrograph's files (the ``.json`` sidecar last)."""
    write_mrc(paths["image"], mic.image, mic.pixel_size_a)
    write_mask_png(paths["mask"], mic.mask)
    if "instances" in paths and mic.instances is not None:
        with atomic_path(paths["instances"]) as tmp:
            tifffile.imwrite(tmp, mic.instances.astype("uint16"), compression="zlib")
    write_relion_coordinates(paths["star"], mic.particles, pixel_size_a=mic.pixel_size_a)
    meta = {"name": mic.name, "pixel_size_a": mic.pixel_size_a,
            "shape": list(mic.image.shape), **mic.metadata}
    write_text_atomic(paths["meta"], json.dumps(meta, indent=2, sort_keys=True) + "\n")


def write_dataset(cfg: DictConfig, simulator: MicrographSimulator | None = None) -> dict[str, int]:
    """Simulate and write ``cfg.n_micrographs`` micrographs; returns counts written and skipped."""
    out_dir = Path(cfg.out_dir)
    size = int(cfg.micrograph_size)
    if size <= 0:
        raise param_error("micrograph_size", size, "must be > 0")
    entries = plan_splits(int(cfg.n_micrographs), dict(cfg.splits))
    manifest = {
        "generator": "cryoparticle.simulate",
        "seed": int(cfg.seed), "micrograph_size": size,
        "simulator": OmegaConf.to_container(cfg.simulator, resolve=True),
        "micrographs": [{"name": e.name, "split": e.split, "seed": [int(cfg.seed), e.index]}
                        for e in entries],
    }
    write_text_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    todo = []
    for e in entries:
        paths = micrograph_paths(out_dir / e.split, e.name, bool(cfg.write_instances))
        if cfg.overwrite or not all(p.exists() for p in paths.values()):
            todo.append((e, paths))
    written = 0
    if todo:
        simulator = simulator or MicrographSimulator(cfg.simulator)
        for e, paths in tqdm(todo, desc="simulating", unit="micrograph"):
            mic = simulator.simulate((int(cfg.seed), e.index), size, size, name=e.name)
            write_micrograph(mic, paths)
            written += 1
    return {"written": written, "skipped": len(entries) - written}
