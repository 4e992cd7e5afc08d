"""A threshold relative to each micrograph's particle probability, on sets never seen.

    python benchmarks/relative_threshold.py --data-dir DATA --loo-work-dir DIR [DIR ...]
        [--out relative_threshold] [--results-dir benchmarks/results]

A held-out model of ``leave_one_out.py`` is less sure of a set it has never seen, and by how
much depends on the set and on the training's seed: the best fixed threshold on a held-out set
ranged over 0.05–0.5, and the shipped setting (0.125) gave EMPIAR-10947 F1 0.46–0.69 over two
seeds of one recipe. This benchmark asks whether a threshold that follows the network's own
level on each micrograph transfers better: ``max(floor, fraction × level)``, ``level`` the
median height of the particle peaks of the map (:func:`peak_level`), against fixed thresholds.

It reads the probability maps that ``leave_one_out.py`` wrote for the held-out sets in each
``--loo-work-dir`` (several: other seeds or recipes of the held-out models), re-extracts them at
every rule with the diameter and edge margin ``predict.py`` used (minimum region
:data:`MIN_SIZE` particle areas, the shipped model's) and scores them as ``real_transfer.py``
does. Reported: F1 per work dir, held-out set and rule; the rule of each family (fixed,
relative) best on average over sets and work dirs; and, for an honest figure, each set at the
rule of its family chosen on the *other two* sets (nested). Writes ``<results-dir>/<out>.json``
and ``.md``. Nothing is trained; a few minutes per work dir on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DATASETS, DEFAULT_DATA_DIR, DATA_DIR_HELP, add_output_options,  # noqa: E402
                     inside, require_datasets, write_report)

FIXED = (0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3)
"""Fixed thresholds (the shipped model's is 0.125)."""
FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.6)
"""Relative rules: the threshold is this fraction of the micrograph's peak level ..."""
FLOORS = (0.05, 0.075, 0.1)
"""... but never below this floor."""
MIN_SIZE = 0.2
"""Minimum region, in particle disc areas (the shipped model's)."""
PEAK_MIN = 0.05
"""Local maxima below this probability are background, not particle peaks."""


def peak_level(prob: np.ndarray, diameter_px: float) -> float:
    """The median height of the particle peaks of a probability map (binned pixels): what
    ``predict.py`` computes (:func:`~cryoparticle.picking.extract.particle_peak_level`),
    local maxima above :data:`PEAK_MIN`."""
    from cryoparticle.picking.extract import particle_peak_level

    return particle_peak_level(prob, diameter_px, quantile=0.5, min_peak=PEAK_MIN)


def rules() -> dict[str, tuple[str, float, float]]:
    """``{key: (family, value, floor)}`` of every rule measured."""
    out = {f"fixed {t:g}": ("fixed", t, 0.0) for t in FIXED}
    for fraction in FRACTIONS:
        for floor in FLOORS:
            out[f"relative {fraction:g}, floor {floor:g}"] = ("relative", fraction, floor)
    return out


def rule_threshold(rule: tuple[str, float, float], level: float) -> float:
    """The threshold a rule gives a micrograph of peak level ``level``."""
    from cryoparticle.picking.extract import relative_threshold

    family, value, floor = rule
    if family == "fixed":
        return value
    return relative_threshold(level, value, floor)


def nested(f1: dict[str, dict[str, float]], keys: list[str]) -> dict[str, dict[str, Any]]:
    """Each set (of ``f1``: ``{set: {rule: F1}}``) at the rule among ``keys`` with the best
    mean F1 over the other sets: ``{set: {"rule": ..., "f1": ...}}``."""
    out = {}
    for held in f1:
        others = [s for s in f1 if s != held]
        chosen = max(keys, key=lambda k: (np.mean([f1[s][k] for s in others]), -keys.index(k)))
        out[held] = {"rule": chosen, "f1": f1[held][chosen]}
    return out


def held_out_f1(work_dir: Path, held_out: str, data_dir: Path) -> dict[str, Any]:
    """F1 (P, R) of every rule on all micrographs of ``held_out``, from the maps its held-out
    model wrote in ``work_dir``, and the micrographs' peak levels."""
    import json

    import pandas as pd
    import real_transfer

    from cryoparticle.io.coords import scale_coordinates
    from cryoparticle.io.mrc import read_mrc
    from cryoparticle.models.segmenter import load_segmenter
    from cryoparticle.picking.evaluate import precision_recall_f1
    from cryoparticle.picking.extract import extract_particles_by_min_size

    found = sorted((work_dir / "transfer" / "picks" / held_out).glob(
        f"ours_{DATASETS[held_out][0]}_full*"))
    if len(found) != 1:
        sys.exit(f"{work_dir}: expected one leave_one_out.py map folder of {held_out}, found "
                 f"{len(found)} (run leave_one_out.py --work-dir {work_dir} first)")
    folder = found[0]
    label = folder.name.removeprefix("ours_")
    options = dict(load_segmenter(work_dir / "runs" / label / "exported.ckpt")
                   .inference_facts().get("extraction") or {})
    for key in ("min_size_fraction", "border_px"):
        options.pop(key, None)
    data = real_transfer.dataset_inputs(held_out, data_dir, "all",
                                        work_dir / "transfer" / "inputs")
    summary = {m["name"]: m for m in json.loads((folder / "predict_summary.json").read_text())
               ["micrographs"]}
    every = rules()
    picks: dict[str, list[Any]] = {k: [] for k in every}
    levels = []
    for path in data["paths"]:
        info = summary[path.stem]
        prob, _ = read_mrc(folder / f"{path.stem}_prob.mrc", mmap=False)
        prob = np.asarray(prob, np.float32)
        factor = float(info["bin_factor"])
        diameter = float(info["particle_diameter_a"]) / (float(info["pixel_size_a"]) * factor)
        margin = float(info.get("edge_margin_px") or 0.0) / factor
        level = peak_level(prob, diameter)
        levels.append(level)
        by_threshold: dict[float, Any] = {}
        for key, rule in every.items():
            t = round(rule_threshold(rule, level), 6)
            if t not in by_threshold:
                by_threshold[t] = scale_coordinates(extract_particles_by_min_size(
                    prob, diameter, [MIN_SIZE], threshold=t, micrograph=path.stem,
                    border_px=margin, **options)[MIN_SIZE], factor)
            picks[key].append(by_threshold[t])
    truth = inside(data["truth"], data["borders"])
    scores = {}
    for key, frames in picks.items():
        r = precision_recall_f1(inside(pd.concat(frames, ignore_index=True), data["borders"]),
                                truth, data["diameter_px"] / 2)
        scores[key] = {k: float(r[k]) for k in ("precision", "recall", "f1")}
    return {"folder": label, "peak_levels": levels, "scores": scores}


def summarise(per_dir: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Mean F1 over work dirs per set and rule; best rule of each family on average over the
    sets; nested choice per family."""
    every = rules()
    sets = list(next(iter(per_dir.values())))
    mean = {s: {k: float(np.mean([per_dir[d][s]["scores"][k]["f1"] for d in per_dir]))
                for k in every} for s in sets}
    out: dict[str, Any] = {"mean_f1": mean, "families": {}}
    for family in ("fixed", "relative"):
        keys = [k for k, r in every.items() if r[0] == family]
        best = max(keys, key=lambda k: np.mean([mean[s][k] for s in sets]))
        chosen = nested(mean, keys)
        out["families"][family] = {
            "best_on_average": best, "best_mean_f1": float(np.mean([mean[s][best] for s in sets])),
            "nested": chosen, "nested_mean_f1": float(np.mean([c["f1"] for c in chosen.values()])),
            "nested_per_dir": {d: {s: per_dir[d][s]["scores"][chosen[s]["rule"]]["f1"]
                                   for s in sets} for d in per_dir}}
    return out


def markdown(per_dir: dict[str, Any], summary: dict[str, Any]) -> str:
    sets = list(summary["mean_f1"])
    lines = ["| rule | " + " | ".join(f"{s} (mean over {len(per_dir)})" for s in sets)
             + " | mean |", "|---|" + "---|" * (len(sets) + 1)]
    for key in rules():
        values = [summary["mean_f1"][s][key] for s in sets]
        lines.append(f"| {key} | " + " | ".join(f"{v:.3f}" for v in values)
                     + f" | {np.mean(values):.3f} |")
    lines += ["", "| family | best on average (mean F1) | nested: rule chosen on the other "
              "sets → F1, per held-out set | nested mean | nested, per work dir |",
              "|---|---|---|---|---|"]
    for family, f in summary["families"].items():
        chosen = "; ".join(f"{s}: `{c['rule']}` → {c['f1']:.3f}" for s, c in f["nested"].items())
        per = "; ".join(f"{d}: " + " / ".join(f"{v:.3f}" for v in row.values())
                        for d, row in f["nested_per_dir"].items())
        lines.append(f"| {family} | `{f['best_on_average']}` ({f['best_mean_f1']:.3f}) | "
                     f"{chosen} | **{f['nested_mean_f1']:.3f}** | {per} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=DATA_DIR_HELP)
    parser.add_argument("--loo-work-dir", type=Path, nargs="+", required=True,
                        help="leave_one_out.py work dirs (their held-out maps)")
    add_output_options(parser, "relative_threshold")
    args = parser.parse_args(argv)
    require_datasets(args.data_dir)
    names = [d.name for d in args.loo_work_dir]
    if len(set(names)) < len(names):
        parser.error("--loo-work-dir folders must have different names")
    per_dir = {d.name: {s: held_out_f1(d.resolve(), s, args.data_dir) for s in DATASETS}
               for d in args.loo_work_dir}
    summary = summarise(per_dir)
    report = {"rules": {"fixed": list(FIXED), "fractions": list(FRACTIONS),
                        "floors": list(FLOORS), "min_size_fraction": MIN_SIZE,
                        "peak_level": "median of local maxima (window diameter/2) of the map "
                                      f"smoothed by σ = diameter/8, above {PEAK_MIN}"},
              "work_dirs": per_dir, **summary}
    text = markdown(per_dir, summary)
    write_report(args.results_dir, args.out, report, text, {"DATA_DIR": args.data_dir})
    print(text)
    return report


if __name__ == "__main__":
    main()
