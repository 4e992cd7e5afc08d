"""A threshold relative to each micrograph's particle probability, on sets never seen.

    python benchmarks/relative_threshold.py --data-dir DATA --loo-work-dir DIR [DIR ...]
        [--datasets EMPIAR-10017 ...] [--coverages 0.3 0.15] [--seed 0] [--out relative_threshold]
        [--results-dir benchmarks/results]
    python benchmarks/relative_threshold.py --data-dir DATA --size-work-dir PARTICLE_SIZE_WORK
        --out relative_threshold_sizes

A held-out model of ``leave_one_out.py`` is less sure of a set it has never seen, and by how
much depends on the set and on the training's seed: the best fixed threshold on a held-out set
ranged over 0.05–0.5, and the shipped setting (0.125) gave EMPIAR-10947 F1 0.46–0.69 over two
seeds of one recipe. This benchmark asks whether a threshold that follows the network's own
level on each micrograph transfers better: ``max(floor, fraction × level)`` (what
``predict.py relative_threshold=`` does), ``level`` a quantile of the heights of the particle
peaks of the map (:func:`~cryoparticle.picking.extract.particle_peak_level`; the median, the
75th, 90th or 98th percentile), against fixed thresholds.

It reads the probability maps that ``leave_one_out.py`` wrote for the held-out sets in each
``--loo-work-dir`` (several: other seeds or recipes of the held-out models), re-extracts them at
every rule with the diameter and edge margin ``predict.py`` used (minimum region
:data:`MIN_SIZE` particle areas, the shipped model's) and scores them as ``real_transfer.py``
does, at the sets' own (crowded) coverage. The three sets are crowded, where many data sets are
not, and a level taken over all peaks falls where empty ice adds peaks of its own. So, where a
work dir also has ``leave_one_out.py --empty-n`` maps of micrographs without particles
(``empty/picks/<set>_full/<kind>/*_prob.mrc``, the same held-out models), each held-out map is
also *thinned* to each ``--coverages`` value: a seeded random share of its expert particles is
kept, and the probability around every other one (within 0.75 diameters, nearer to it than to
a kept one) is replaced by an empty map's, so that those particles become empty ice in the
network's own output; only the kept particles count as truth.

Reported: F1 per work dir, held-out set, coverage and rule; per rule the mean F1 at the own
coverage (over sets and work dirs), thinned (over sets, coverages and the work dirs that have
empty maps) and their mean, the *score*; the rule of each family (fixed, relative) with the best
score; and, for an honest figure, each set at the rule of its family chosen on the *other two*
sets (nested). With ``--size-work-dir`` (the work dir of ``particle_size.py``, whose maps show
the sets' particles at 0.6×, 1× and 1.6× their size, picked with an estimated, a given or a
matched diameter) every rule is also scored on those maps: a threshold rule must not depend on
the particles being the size the network learnt. Writes ``<results-dir>/<out>.json`` and
``.md``. Nothing is trained; about ten minutes per work dir on a 2-core CPU.
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
"""Fixed thresholds (the shipped model's was 0.125)."""
FRACTIONS = {0.5: (0.4, 0.5), 0.75: (0.3, 0.4, 0.5), 0.9: (0.2, 0.25, 0.3, 0.4),
             0.98: (0.2, 0.25, 0.3)}
"""Relative rules: the threshold is one of these fractions of the micrograph's peak level, the
level being the key's quantile of its particle peak heights (the 98th percentile: still a
particle's on a sparse micrograph, where most peaks are background) ..."""
FLOORS = (0.05, 0.075, 0.1, 0.125)
"""... but never below this floor."""
COVERAGES = (0.3, 0.15)
"""Coverages (expert particle discs over the area) the held-out maps are thinned to."""
MIN_SIZE = 0.2
"""Minimum region, in particle disc areas (the shipped model's)."""
PEAK_MIN = 0.05
"""Local maxima below this probability are background, not particle peaks."""
REPLACED_DIAMETERS = 0.75
"""Thinning: the probability within this many diameters of a dropped particle is replaced."""


def peak_level(prob: np.ndarray, diameter_px: float, quantile: float = 0.5) -> float:
    """A quantile of the heights of the particle peaks of a probability map (binned pixels):
    what ``predict.py`` computes (:func:`~cryoparticle.picking.extract.particle_peak_level`),
    local maxima above :data:`PEAK_MIN`."""
    from cryoparticle.picking.extract import particle_peak_level

    return particle_peak_level(prob, diameter_px, quantile=quantile, min_peak=PEAK_MIN)


Rule = tuple[str, float, float, float]
"""``(family, quantile, value, floor)``: fixed ``value``, or ``max(floor, value × level)``."""


def rules() -> dict[str, Rule]:
    """``{key: rule}`` of every rule measured."""
    out = {f"fixed {t:g}": ("fixed", 0.0, t, 0.0) for t in FIXED}
    for quantile, fractions in FRACTIONS.items():
        name = "median" if quantile == 0.5 else f"p{round(100 * quantile)}"
        for fraction in fractions:
            for floor in FLOORS:
                out[f"relative {fraction:g} × {name}, floor {floor:g}"] = (
                    "relative", quantile, fraction, floor)
    return out


def rule_threshold(rule: Rule, levels: dict[float, float]) -> float:
    """The threshold a rule gives a micrograph whose peak levels are ``levels``
    (``{quantile: level}``)."""
    from cryoparticle.picking.extract import relative_threshold

    family, quantile, value, floor = rule
    if family == "fixed":
        return value
    return relative_threshold(levels[quantile], value, floor)


def thin(prob: np.ndarray, centres: np.ndarray, kept: np.ndarray, diameter_px: float,
         empty: np.ndarray) -> np.ndarray:
    """``prob`` with the particles not ``kept`` turned into empty ice: every pixel within
    :data:`REPLACED_DIAMETERS` diameters of a dropped centre (``centres``: x, y in pixels of
    ``prob``), and nearer to it than to any other centre, takes the value of ``empty`` (a map
    without particles, tiled to the shape)."""
    from scipy.spatial import cKDTree

    if kept.all() or not len(centres):
        return prob
    height, width = prob.shape
    reps = (-(-height // empty.shape[0]), -(-width // empty.shape[1]))
    filler = np.tile(empty, reps)[:height, :width]
    rows, cols = np.mgrid[:height, :width]
    distance, nearest = cKDTree(centres).query(np.column_stack([cols.ravel(), rows.ravel()]))
    replace = (~kept[nearest] & (distance < REPLACED_DIAMETERS * diameter_px)).reshape(
        height, width)
    return np.where(replace, filler, prob).astype(np.float32)


def nested(f1: dict[str, dict[str, float]], keys: list[str]) -> dict[str, dict[str, Any]]:
    """Each set (of ``f1``: ``{set: {rule: F1}}``) at the rule among ``keys`` with the best
    mean F1 over the other sets: ``{set: {"rule": ..., "f1": ...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for held in f1:
        others = [s for s in f1 if s != held]
        if not others:   # one set: nothing to choose on
            continue
        chosen = max(keys, key=lambda k: (np.mean([f1[s][k] for s in others]), -keys.index(k)))
        out[held] = {"rule": chosen, "f1": f1[held][chosen]}
    return out


def rule_picks(prob: np.ndarray, diameter: float, margin: float, factor: float, name: str,
               options: dict[str, Any], keys: list[str] | None = None
               ) -> tuple[dict[float, float], dict[str, Any]]:
    """The peak levels of one probability map (binned grid; ``diameter`` and ``margin`` in its
    pixels) and its picks at every rule (or those named in ``keys``), in pixels of the original
    micrograph (``factor`` × the map's); each distinct threshold is extracted once."""
    from cryoparticle.io.coords import scale_coordinates
    from cryoparticle.picking.extract import extract_particles_by_min_size

    level = {q: peak_level(prob, diameter, q) for q in FRACTIONS}
    by_threshold: dict[float, Any] = {}
    tables = {}
    every = rules()
    for key in every if keys is None else keys:
        t = round(rule_threshold(every[key], level), 6)
        if t not in by_threshold:
            by_threshold[t] = scale_coordinates(extract_particles_by_min_size(
                prob, diameter, [MIN_SIZE], threshold=t, micrograph=name, border_px=margin,
                **options)[MIN_SIZE], factor)
        tables[key] = by_threshold[t]
    return level, tables


def size_f1(work_dir: Path, data_dir: Path, keys: list[str] | None = None
            ) -> dict[str, dict[str, float]]:
    """F1 of every rule on the probability maps of a ``particle_size.py`` work dir (its
    ``picks/<set>_s<scale>_<mode>/`` folders; it picks through ``real_transfer.run_ours``,
    which writes the maps):
    the sets shown at other apparent particle sizes, picked with an estimated, a given or a
    matched diameter. The maps do not depend on the threshold, so any rule can be scored on
    them. ``{folder: {rule: F1}}`` for every rule, or those named in ``keys``."""
    import json

    import pandas as pd
    import real_transfer

    from cryoparticle.io.mrc import read_mrc
    from cryoparticle.picking.evaluate import precision_recall_f1

    out: dict[str, dict[str, float]] = {}
    for held_out, (folder_name, *_rest) in DATASETS.items():
        folders = sorted((work_dir / "picks").glob(f"{folder_name}_s*"))
        if not folders:
            continue
        data = real_transfer.dataset_inputs(held_out, data_dir, "all", work_dir / "inputs")
        truth = inside(data["truth"], data["borders"])
        for folder in folders:
            summary = {m["name"]: m for m in json.loads(
                (folder / "predict_summary.json").read_text())["micrographs"]}
            picks: dict[str, list[Any]] = {k: [] for k in keys or rules()}
            for path in data["paths"]:
                info = summary[path.stem]
                maps = folder / f"{path.stem}_prob.mrc"
                if not maps.is_file():
                    sys.exit(f"{maps}: no probability map (run benchmarks/particle_size.py "
                             "first)")
                prob = np.asarray(read_mrc(maps, mmap=False)[0], np.float32)
                factor = float(info["bin_factor"])
                diameter = float(info["particle_diameter_a"]) / (
                    float(info["pixel_size_a"]) * factor)
                margin = float(info.get("edge_margin_px") or 0.0) / factor
                for key, table in rule_picks(prob, diameter, margin, factor, path.stem,
                                             {}, keys)[1].items():
                    picks[key].append(table)
            out[folder.name] = {key: float(precision_recall_f1(
                inside(pd.concat(frames, ignore_index=True), data["borders"]), truth,
                data["diameter_px"] / 2)["f1"]) for key, frames in picks.items()}
            print(f"{folder.name}: done", flush=True)
    if not out:
        sys.exit(f"{work_dir}: no particle_size.py map folders (picks/<set>_s<scale>_<mode>)")
    return out


def sizes_markdown(sizes: dict[str, dict[str, float]]) -> str:
    """Mean F1 of every rule over the particle_size.py runs, per mode and overall."""
    modes = sorted({name.rsplit("_", 1)[1] for name in sizes})
    lines = [f"Particles at other apparent sizes (particle_size.py maps, {len(sizes)} runs): "
             "mean F1 per mode.", "", "| rule | " + " | ".join(modes) + " | mean |",
             "|---|" + "---|" * (len(modes) + 1)]
    for key in next(iter(sizes.values())):
        cells = [np.mean([v[key] for n, v in sizes.items() if n.endswith("_" + m)])
                 for m in modes]
        lines.append(f"| {key} | " + " | ".join(f"{c:.3f}" for c in cells)
                     + f" | {np.mean([v[key] for v in sizes.values()]):.3f} |")
    return "\n".join(lines) + "\n"


def empty_maps(work_dir: Path, held_out: str) -> list[np.ndarray]:
    """The probability maps the held-out model of ``held_out`` wrote for micrographs without
    particles (``leave_one_out.py --empty-n``), every kind, sorted; [] when there are none."""
    from cryoparticle.io.mrc import read_mrc

    folder = work_dir / "empty" / "picks" / f"{DATASETS[held_out][0]}_full"
    return [np.asarray(read_mrc(path, mmap=False)[0], np.float32)
            for path in sorted(folder.glob("*/*_prob.mrc"))]


def held_out_f1(work_dir: Path, held_out: str, data_dir: Path,
                coverages: tuple[float, ...] = COVERAGES, seed: int = 0) -> dict[str, Any]:
    """F1 (P, R) of every rule on all micrographs of ``held_out``, from the maps its held-out
    model wrote in ``work_dir``: at the set's own coverage (``"own"``) and, when the work dir
    has empty maps, thinned to each of ``coverages``; and the micrographs' peak levels."""
    import json

    import pandas as pd
    import real_transfer

    from cryoparticle.io.mrc import read_mrc
    from cryoparticle.models.segmenter import load_segmenter
    from cryoparticle.picking.evaluate import precision_recall_f1

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
    empties = empty_maps(work_dir, held_out)
    every = rules()
    truth_all = inside(data["truth"], data["borders"])
    rng = np.random.default_rng(seed)
    scores: dict[str, dict[str, Any]] = {}
    levels: dict[str, dict[str, list[float]]] = {}
    for coverage in [None, *(coverages if empties else ())]:
        tag = "own" if coverage is None else f"{coverage:g}"
        picks: dict[str, list[Any]] = {k: [] for k in every}
        truths = []
        levels[tag] = {f"{q:g}": [] for q in FRACTIONS}
        for index, path in enumerate(data["paths"]):
            info = summary[path.stem]
            prob = np.asarray(read_mrc(folder / f"{path.stem}_prob.mrc", mmap=False)[0],
                              np.float32)
            factor = float(info["bin_factor"])
            diameter = float(info["particle_diameter_a"]) / (float(info["pixel_size_a"]) * factor)
            margin = float(info.get("edge_margin_px") or 0.0) / factor
            truth = truth_all[truth_all["micrograph"] == path.stem]
            if coverage is not None:
                border = data["borders"][path.stem]
                own = len(truth) * np.pi * (data["diameter_px"] / 2) ** 2 / max(
                    1, int((~border).sum()))
                kept = rng.random(len(truth)) < min(1.0, coverage / max(own, 1e-9))
                centres = truth[["x", "y"]].to_numpy(float) / factor
                prob = thin(prob, centres, kept, data["diameter_px"] / factor,
                            empties[index % len(empties)])
                truth = truth[kept]
            truths.append(truth)
            level, tables = rule_picks(prob, diameter, margin, factor, path.stem, options)
            for q, value in level.items():
                levels[tag][f"{q:g}"].append(value)
            for key, table in tables.items():
                picks[key].append(table)
        truth = pd.concat(truths, ignore_index=True)
        scores[tag] = {}
        for key, frames in picks.items():
            r = precision_recall_f1(inside(pd.concat(frames, ignore_index=True),
                                           data["borders"]), truth, data["diameter_px"] / 2)
            scores[tag][key] = {k: float(r[k]) for k in ("precision", "recall", "f1")}
    return {"folder": label, "n_empty_maps": len(empties), "peak_levels": levels,
            "scores": scores}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarise(per_dir: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per set and rule: mean F1 at the own coverage (over work dirs), thinned (over the
    coverages and work dirs that have them) and the score (their mean, or the own F1 alone
    when nothing was thinned); the best rule of each family by mean score over the sets; the
    nested choice per family."""
    every = rules()
    sets = list(next(iter(per_dir.values())))
    own = {s: {k: _mean([per_dir[d][s]["scores"]["own"][k]["f1"] for d in per_dir])
               for k in every} for s in sets}
    thinned = {s: {k: _mean([v[k]["f1"] for d in per_dir
                             for tag, v in per_dir[d][s]["scores"].items() if tag != "own"])
                   for k in every} for s in sets}
    score = {s: {k: own[s][k] if np.isnan(thinned[s][k]) else (own[s][k] + thinned[s][k]) / 2
                 for k in every} for s in sets}
    out: dict[str, Any] = {"mean_f1": own, "thinned_f1": thinned, "score": score,
                           "families": {}}
    for family in ("fixed", "relative"):
        keys = [k for k, r in every.items() if r[0] == family]
        best = max(keys, key=lambda k: (np.mean([score[s][k] for s in sets]), -keys.index(k)))
        chosen = nested(score, keys)
        out["families"][family] = {
            "best_on_average": best,
            "best_score": float(np.mean([score[s][best] for s in sets])),
            "best_mean_f1": float(np.mean([own[s][best] for s in sets])),
            "best_thinned_f1": _mean([thinned[s][best] for s in sets
                                      if not np.isnan(thinned[s][best])]),
            "nested": {s: {**c, "f1": own[s][c["rule"]], "thinned_f1": thinned[s][c["rule"]]}
                       for s, c in chosen.items()},
            "nested_mean_f1": _mean([own[s][c["rule"]] for s, c in chosen.items()]),
            "nested_thinned_f1": _mean([thinned[s][c["rule"]] for s, c in chosen.items()
                                        if not np.isnan(thinned[s][c["rule"]])]),
            "nested_per_dir": {d: {s: per_dir[d][s]["scores"]["own"][chosen[s]["rule"]]["f1"]
                                   for s in chosen} for d in per_dir}}
    return out


def markdown(per_dir: dict[str, Any], summary: dict[str, Any]) -> str:
    sets = list(summary["mean_f1"])
    lines = ["F1 at the sets' own coverage (mean over the work dirs) / thinned (mean over the "
             "coverages and the work dirs with empty maps); score = the mean of the two.", "",
             "| rule | " + " | ".join(sets) + " | own | thinned | score |",
             "|---|" + "---|" * (len(sets) + 3)]
    for key in rules():
        own = [summary["mean_f1"][s][key] for s in sets]
        thinned = [summary["thinned_f1"][s][key] for s in sets]
        cells = [f"{o:.3f} / {t:.3f}" for o, t in zip(own, thinned, strict=True)]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {np.mean(own):.3f} | "
                     f"{_mean([t for t in thinned if not np.isnan(t)]):.3f} | "
                     f"{np.mean([summary['score'][s][key] for s in sets]):.3f} |")
    lines += ["", "| family | best score (own / thinned F1) | nested: rule chosen on the other "
              "sets → own / thinned F1 | nested mean own / thinned | nested own, per work dir |",
              "|---|---|---|---|---|"]
    for family, f in summary["families"].items():
        chosen = "; ".join(f"{s}: `{c['rule']}` → {c['f1']:.3f} / {c['thinned_f1']:.3f}"
                           for s, c in f["nested"].items())
        per = "; ".join(f"{d}: " + " / ".join(f"{v:.3f}" for v in row.values())
                        for d, row in f["nested_per_dir"].items())
        lines.append(f"| {family} | `{f['best_on_average']}` {f['best_score']:.3f} "
                     f"({f['best_mean_f1']:.3f} / {f['best_thinned_f1']:.3f}) | {chosen} | "
                     f"**{f['nested_mean_f1']:.3f} / {f['nested_thinned_f1']:.3f}** | {per} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=DATA_DIR_HELP)
    parser.add_argument("--loo-work-dir", type=Path, nargs="+", default=[],
                        help="leave_one_out.py work dirs (their held-out maps)")
    parser.add_argument("--size-work-dir", type=Path, default=None,
                        help="a particle_size.py work dir (its maps): the rules on particles "
                             "shown at other sizes")
    parser.add_argument("--size-rules", nargs="+", default=None, metavar="RULE",
                        help="with --size-work-dir: only these rules (keys as in the table, "
                             "e.g. 'fixed 0.125' 'relative 0.25 × p90, floor 0.05'); default all")
    parser.add_argument("--coverages", type=float, nargs="*", default=list(COVERAGES),
                        help="coverages the held-out maps are thinned to (where a work dir "
                             "has empty maps); none: no thinning")
    parser.add_argument("--seed", type=int, default=0, help="which particles thinning keeps")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS),
                        help="the held-out sets of --loo-work-dir (default all three; the "
                             "nested choice needs two or more)")
    add_output_options(parser, "relative_threshold")
    args = parser.parse_args(argv)
    require_datasets(args.data_dir)
    names = [d.name for d in args.loo_work_dir]
    if len(set(names)) < len(names):
        parser.error("--loo-work-dir folders must have different names")
    if any(not 0 < c < 1 for c in args.coverages):
        parser.error("--coverages must be in (0, 1)")
    if not args.loo_work_dir and args.size_work_dir is None:
        parser.error("give --loo-work-dir and/or --size-work-dir")
    unknown = sorted(set(args.size_rules or []) - set(rules()))
    if unknown:
        parser.error(f"--size-rules: unknown rule {unknown[0]!r}")
    sizes = None if args.size_work_dir is None else size_f1(args.size_work_dir.resolve(),
                                                             args.data_dir, args.size_rules)
    per_dir = {d.name: {s: held_out_f1(d.resolve(), s, args.data_dir, tuple(args.coverages),
                                       args.seed) for s in args.datasets}
               for d in args.loo_work_dir}
    summary = summarise(per_dir) if per_dir else {}
    report = {"rules": {"fixed": list(FIXED),
                        "fractions": {f"{q:g}": list(v) for q, v in FRACTIONS.items()},
                        "floors": list(FLOORS), "min_size_fraction": MIN_SIZE,
                        "coverages": list(args.coverages), "seed": args.seed,
                        "replaced_diameters": REPLACED_DIAMETERS,
                        "peak_level": "quantile of local maxima (window diameter/2) of the map "
                                      f"smoothed by σ = diameter/8, above {PEAK_MIN}"},
              "work_dirs": per_dir, **summary, **({} if sizes is None else {"sizes": sizes})}
    text = (markdown(per_dir, summary) if per_dir else "") + \
        ("" if sizes is None else ("\n" if per_dir else "") + sizes_markdown(sizes))
    write_report(args.results_dir, args.out, report, text, {"DATA_DIR": args.data_dir})
    print(text)
    return report


if __name__ == "__main__":
    main()
