"""Particles of another size: picking when the protein is smaller or larger than the training ones.

    python benchmarks/particle_size.py --data-dir DATA [--loo-work-dir LOO_WORK_DIR]
        [--scales 0.6 1.0 1.6] [--modes estimated given matched]
        [--predict threshold=0.125 extraction.min_size_fraction=0.2]
        [--work-dir benchmarks/work/particle_size] [--out particle_size]

A picker meets proteins of every size; the three real sets here are all 190–212 Å. To see other
sizes, each set's micrographs are given to ``predict.py`` with a pixel size ``s`` × their true
one (``micrograph_pixel_size_a``): the network then sees particles ``s`` × as large as they are,
as it would a protein of ``s`` × the diameter. Three ways to pick them (``--modes``):
``estimated`` (no diameter given: the checkpoint's, estimated per micrograph when it was exported
with ``--estimate-diameter``), ``given`` (``particle_diameter_a`` = ``s`` × the true diameter,
``match_diameter=false``: resampled to the checkpoint's pixel size) and ``matched`` (the same
diameter, ``match_diameter=true``, predict's default: resampled so that the particles are as
many pixels across as the checkpoint's diameter). The checkpoints are the held-out models of
``leave_one_out.py`` (``<loo-work-dir>/runs/<set>_full/exported.ckpt``: each never saw the set
it picks) or, with ``--ckpt``, one checkpoint for every set. Pick F1 against the CryoPPP picks
(Hungarian matching within half the true diameter, borders excluded, as ``real_transfer.py``).
Each run is cached in the work dir (a rerun resumes). Writes ``<results-dir>/<out>.json`` and
``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_transfer  # noqa: E402
from _common import (DATASETS, add_held_out_options, add_output_options,  # noqa: E402
                     inside, load_average, require_datasets, write_held_out_report)

from cryoparticle.io.jsonfile import write_json  # noqa: E402
from cryoparticle.picking.evaluate import precision_recall_f1  # noqa: E402

MODES = ("estimated", "given", "matched")


def true_diameter_a(name: str) -> float:
    """The set's CryoPPP particle diameter in Å (its disc diameter × its pixel size)."""
    _, px, diameter, _, _ = DATASETS[name]
    return float(px) * float(diameter)


def run_key(name: str, scale: float, mode: str) -> str:
    """The name of one run's folder (``<work-dir>/picks/KEY``) and cache
    (``<work-dir>/scores/KEY.json``)."""
    return f"{DATASETS[name][0]}_s{scale:g}_{mode}"


def mode_overrides(mode: str, diameter_a: float) -> list[str]:
    """``predict.py`` overrides of one way of picking particles of ``diameter_a`` Å."""
    if mode == "estimated":
        return []
    return [f"particle_diameter_a={diameter_a:.6g}",
            f"match_diameter={'true' if mode == 'matched' else 'false'}"]


def checkpoint_for(name: str, args: argparse.Namespace) -> str:
    if args.ckpt:
        return args.ckpt
    path = args.loo_work_dir / "runs" / f"{DATASETS[name][0]}_full" / "exported.ckpt"
    if not path.is_file():
        sys.exit(f"{path}: no held-out model of {name}; run benchmarks/leave_one_out.py first "
                 "(or give --ckpt)")
    return str(path)


def measure(name: str, scale: float, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One set picked at one apparent scale in one mode (cached in the work dir)."""
    key = run_key(name, scale, mode)
    cache = args.work_dir / "scores" / f"{key}.json"
    ckpt = checkpoint_for(name, args)
    data = real_transfer.dataset_inputs(name, args.data_dir, "all", args.work_dir / "inputs")
    overrides = [f"micrograph_pixel_size_a={data['pixel_size_a'] * scale:.6g}",
                 *mode_overrides(mode, true_diameter_a(name) * scale), *args.predict]
    stamp = {"ckpt": ckpt, "overrides": overrides}
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp:
            return cached["result"]
    out = args.work_dir / "picks" / key
    picks, used, seconds, _ = real_transfer.run_ours(ckpt, data, out, overrides,
                                                     thresholds=())
    truth = inside(data["truth"], data["borders"])
    scores = precision_recall_f1(inside(picks, data["borders"]), truth, data["diameter_px"] / 2)
    summary = json.loads((out / "predict_summary.json").read_text())["micrographs"]
    result = {"precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"],
              "threshold": used, "s_per_micrograph": seconds,
              "diameter_a_median": float(np.median([m["particle_diameter_a"] for m in summary])),
              "network_pixel_size_a": float(np.median([m["pixel_size_a"] * m["bin_factor"]
                                                       for m in summary]))}
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_json(cache, {"stamp": stamp, "result": result})
    return result


def markdown(rows: list[dict[str, Any]], modes: list[str]) -> str:
    head = ["set", "s", "apparent diameter (Å)", *(f"F1 {m}" for m in modes),
            "estimated diameter (Å)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        est = row["modes"].get("estimated", {}).get("diameter_a_median")
        lines.append("| " + " | ".join([
            row["set"], f"{row['scale']:g}", f"{row['apparent_diameter_a']:.0f}",
            *(f"{row['modes'][m]['f1']:.3f}" for m in modes),
            "–" if est is None else f"{est:.0f}"]) + " |")
    means = {m: float(np.mean([r["modes"][m]["f1"] for r in rows])) for m in modes}
    lines.append("| mean | | | " + " | ".join(f"**{means[m]:.3f}**" for m in modes) + " | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_held_out_options(parser, "its held-out models")
    parser.add_argument("--ckpt", default=None,
                        help="one checkpoint for every set instead (PATH or general)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--scales", nargs="+", type=float, default=[0.6, 1.0, 1.6])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--predict", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra predict.py overrides, e.g. threshold=0.125")
    add_output_options(parser, "particle_size")
    args = parser.parse_args(argv)
    if any(s <= 0 for s in args.scales):
        parser.error("--scales must be > 0")
    require_datasets(args.data_dir)
    args.work_dir = args.work_dir.resolve()
    load_before = load_average()
    rows = []
    for name in args.datasets:
        for scale in args.scales:
            row = {"set": name, "scale": scale,
                   "apparent_diameter_a": true_diameter_a(name) * scale,
                   "modes": {m: measure(name, scale, m, args) for m in args.modes}}
            rows.append(row)
            print(name, f"s={scale:g}", {m: round(r["f1"], 3) for m, r in row["modes"].items()},
                  flush=True)
    text = markdown(rows, args.modes)
    record = {"benchmark": "particle_size", "command": ["python", "benchmarks/particle_size.py",
                                                        *(argv if argv is not None
                                                          else sys.argv[1:])],
              "checkpoints": args.ckpt or "leave_one_out held-out models",
              "predict_overrides": args.predict, "load_before": load_before,
              "load_after": load_average(), "rows": rows}
    write_held_out_report(args, record, text)
    return record


if __name__ == "__main__":
    main()
