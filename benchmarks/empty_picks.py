"""False picks on micrographs without particles: what a picker does on empty ice.

    python benchmarks/empty_picks.py [--ckpt general] [--n 2] [--size 1024]
        [--simulators empiar10017 general] [--topaz TOPAZ]
        [--work-dir benchmarks/work/empty_picks]
        [--out empty_picks] [--results-dir benchmarks/results]

The real sets the general model's extraction was chosen on are crowded (270–650 particles per
micrograph), so they cannot tell how many picks a threshold makes where there is nothing to
pick. This simulates ``--n`` micrographs of ``--size``² pixels with **no particle** (the
simulators' ice, noise, CTF, contaminants and, for ``general``, preprocessing looks; at their
pixel size) per ``--simulators`` entry, plus ``--n`` of pure white noise, runs ``predict.py`` on
them as a user does (the checkpoint's threshold, extraction and diameter handling, every pick
kept: ``extraction.border_px=0``) and counts the picks, then re-extracts the probability maps it
wrote at other thresholds (same diameters, as ``real_transfer.py`` sweeps). Reported per
micrograph and per 100 particle areas (disc areas of the diameter predict used), so that sizes
compare. Every pick here is a false one. ``--topaz`` runs Topaz's shipped general picker
(``resnet16_u64``) on the same micrographs in the same run (``topaz preprocess``, then
``extract`` at its default score 0, radius half of 190 Å: Topaz's picks per micrograph).
Writes ``<results-dir>/<out>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_transfer  # noqa: E402
from _common import add_output_options, load_average, write_report  # noqa: E402
from _topaz import extract_command, extract_radius, preprocess_command  # noqa: E402

#: Thresholds of the sweep (the threshold predict used is added)
THRESHOLDS = (0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)


def write_empty(work: Path, simulator: str, n: int, size: int, seed: int) -> list[Path]:
    """``n`` micrographs without particles (``simulator``'s config; ``white_noise``: Gaussian
    noise at the simulators' default pixel size), MRC with the pixel size in the header."""
    import mrcfile

    from cryoparticle.config import simulator_config
    from cryoparticle.simulate.micrograph import MicrographSimulator

    paths = []
    pixel_size = float(simulator_config("empiar10017").pixel_size_a)
    sim = None
    if simulator != "white_noise":
        cfg = simulator_config(simulator)
        sim, pixel_size = MicrographSimulator(cfg), float(cfg.pixel_size_a)
    for i in range(n):
        path = work / "micrographs" / f"{simulator}_{i}.mrc"
        if not path.is_file():
            if sim is None:
                image = np.random.default_rng([seed, i]).normal(size=(size, size))
            else:
                image = sim.simulate([seed, i], size, n_particles=0).image
            path.parent.mkdir(parents=True, exist_ok=True)
            with mrcfile.new(path, overwrite=True) as mrc:
                mrc.set_data(np.asarray(image, np.float32))
                mrc.voxel_size = pixel_size
        paths.append(path)
    return paths


def count_picks(out: Path, paths: list[Path], tables: dict[float, Any], used: float
                ) -> dict[str, Any]:
    """Picks per micrograph and per 100 particle areas at each threshold of ``tables`` (the
    sweep of :func:`real_transfer.run_ours` on predict's output in ``out``)."""
    summary = {m["name"]: m for m in json.loads((out / "predict_summary.json").read_text())
               ["micrographs"]}
    areas = 0.0
    for path in paths:
        info = summary[path.stem]
        height, width = info["original_shape"][-2:]
        diameter_px = float(info["particle_diameter_a"]) / float(info["pixel_size_a"])
        areas += height * width / (math.pi * diameter_px ** 2 / 4)
    picked = [summary[path.stem] for path in paths]
    return {"threshold_used": used,
            # what predict.py picked, at each micrograph's own threshold (relative_threshold)
            "predict_picks_per_micrograph": sum(m["n_particles"] for m in picked) / len(paths),
            "predict_picks_per_100_particle_areas": 100 * sum(m["n_particles"]
                                                              for m in picked) / areas,
            "predict_thresholds": [m.get("threshold") for m in picked],
            "pixel_size_a": float(summary[paths[0].stem]["pixel_size_a"]),
            "diameters_a": sorted({round(float(summary[p.stem]["particle_diameter_a"]), 1)
                                   for p in paths}),
            "picks_per_micrograph": {f"{t:g}": len(v) / len(paths) for t, v in tables.items()},
            "picks_per_100_particle_areas": {f"{t:g}": 100 * len(v) / areas
                                             for t, v in tables.items()}}


def run_topaz(topaz: Path, paths: list[Path], out: Path, pixel_size_a: float
              ) -> dict[str, Any]:
    """Topaz's shipped picker on ``paths`` (already at about its 7 Å/px: no binning): picks
    per micrograph at score ≥ 0 (p ≥ 0.5), its default."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    for cmd in (preprocess_command(topaz, paths, 1, out / "preprocessed"),
                extract_command(topaz, "resnet16_u64", extract_radius(190.0 / pixel_size_a, 1),
                                1, [out / "preprocessed" / p.name for p in paths],
                                out / "picks.txt", threshold=0.0)):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"topaz failed: {' '.join(cmd[:2])}\n{done.stderr[-2000:]}")
    picks = pd.read_csv(out / "picks.txt", sep="\t")
    return {"threshold_used": 0.0,
            "picks_per_micrograph": {"0": float((picks["score"] >= 0).sum()) / len(paths)}}


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    thresholds = sorted({float(t) for r in rows.values() for t in r["picks_per_micrograph"]})
    topaz = {name: r.pop("topaz") for name, r in rows.items() if "topaz" in r}
    lines = ["| empty micrographs | diameter (Å) | predict.py (its thresholds) | " + " | ".join(
        f"picks at {t:g}" for t in thresholds) + " |",
             "|---|---|---|" + "---|" * len(thresholds)]
    for name, r in rows.items():
        used = sorted({round(float(t), 3) for t in r.get("predict_thresholds") or []
                       if t is not None})
        cells = [f"{r['predict_picks_per_micrograph']:.0f} "
                 f"({r['predict_picks_per_100_particle_areas']:.1f}; "
                 f"{', '.join(f'{t:g}' for t in used) or '–'})"
                 if "predict_picks_per_micrograph" in r else "–"]
        for t in thresholds:
            count = r["picks_per_micrograph"][f"{t:g}"]
            text = f"{count:.0f} ({r['picks_per_100_particle_areas'][f'{t:g}']:.1f})"
            cells.append(f"**{text}**" if t == r["threshold_used"] else text)
        lines.append(f"| {name} | {', '.join(f'{d:g}' for d in r['diameters_a'])} | "
                     + " | ".join(cells) + " |")
    text = ("\n".join(lines) + "\n\nPicks per micrograph (per 100 particle disc areas); "
            "predict.py: what it picked as a user runs it (with a relative threshold, each "
            "micrograph at its own, listed); the sweep re-extracts its maps at fixed thresholds, "
            "bold: the checkpoint's stored one. Every pick is false: there are no "
            "particles.\n")
    if topaz:
        text += ("\nTopaz `resnet16_u64` (shipped) at its default score 0, picks per "
                 "micrograph: " + ", ".join(f"{name} {t['picks_per_micrograph']['0']:.0f}"
                                            for name, t in topaz.items()) + ".\n")
    for name, t in topaz.items():
        rows[name]["topaz"] = t
    return text


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default="general",
                        help="checkpoint (default: the shipped general model)")
    parser.add_argument("--n", type=int, default=2, help="micrographs per kind")
    parser.add_argument("--size", type=int, default=1024, help="micrograph side (pixels)")
    parser.add_argument("--simulators", nargs="+", default=["empiar10017", "general"])
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--topaz", type=Path, default=None,
                        help="the topaz executable (pip install topaz-em); omitted: not run")
    add_output_options(parser, "empty_picks")
    args = parser.parse_args(argv)
    if args.n < 1 or args.size < 64:
        parser.error("--n must be ≥ 1 and --size ≥ 64")
    load_before = load_average()
    rows = {}
    for kind in [*args.simulators, "white_noise"]:
        paths = write_empty(args.work_dir, kind, args.n, args.size, args.seed)
        out = args.work_dir / "picks" / kind
        _, used, _, tables = real_transfer.run_ours(args.ckpt, {"paths": paths}, out,
                                                    ["extraction.border_px=0"], THRESHOLDS)
        rows[kind] = count_picks(out, paths, tables, used)
        if args.topaz is not None:
            rows[kind]["topaz"] = run_topaz(args.topaz, paths, args.work_dir / "topaz" / kind,
                                            rows[kind]["pixel_size_a"])
        print(f"{kind}: {rows[kind]}", flush=True)
    record = {"benchmark": "empty_picks", "checkpoint": args.ckpt, "n": args.n,
              "size": args.size, "seed": args.seed, "load_before": load_before,
              "load_after": load_average(), "rows": rows}
    text = markdown(rows)
    write_report(args.results_dir, args.out, record, text, {"WORK_DIR": args.work_dir})
    print(text)
    return record


if __name__ == "__main__":
    main()
