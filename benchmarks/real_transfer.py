"""Picking on real micrographs, every picker measured the same way: our checkpoints (the shipped
general model, a simulation-only one, ...) and Topaz's shipped general model, side by side.

    python benchmarks/real_transfer.py [--data-dir DIR] [--ckpt general=general]
        [--ckpt sim-only=PATH] [--micrographs all|test|val] [--topaz PATH_TO_topaz] [--out NAME]
        [--results-dir benchmarks/results]
        [--predict KEY=VALUE ...]      # extra predict.py overrides for ours, e.g. tta=flips

Datasets (``--data-dir``, see ``benchmarks/_common.py``): EMPIAR-10017 (10 denoised 4096²
JPGs, 1.77 Å/px, CryoPPP discs of 108 px, striped border excluded), EMPIAR-10059 and
EMPIAR-10947 (10 raw-looking 1024² PNGs each, crowded CryoPPP discs drawn at 256²). The PNGs
carry no pixel size: they are given the pixel size at which their measured disc diameter (36 and
60 px) is the particle diameter the general model was trained with (191 Å and 212 Å), the same
convention as ``data=general``. Truth = the disc centres recovered from the masks
(:func:`cryoparticle.data.masks.centres_from_mask`); a pick matches a true centre within half
the diameter (Hungarian matching, :mod:`cryoparticle.picking.evaluate`), pooled over the
micrographs of a dataset.

For each picker: precision/recall/F1 at its own threshold (ours: ``predict.py`` as a user runs
it, with the threshold stored in the checkpoint; Topaz: score 0, i.e. p ≥ 0.5), the
best F1 over thresholds with that threshold (ours: extraction re-run on the probability maps
predict wrote, thresholds 0.05–0.95; Topaz: over its scores), and the average precision of the
picks ranked by score (ours: the picks at the stored threshold; Topaz: every candidate).
``predict.py`` drops picks whose box (1.5 diameters) would stick out of the micrograph, and
CryoPPP's expert picks leave those particles out too; Topaz keeps them, so its picks are also
scored with the same edge rule (row "boxes inside"), like for like.
``--micrographs test`` uses only the test micrographs of ``data=general`` (never trained on),
``val`` its validation micrographs (and prints the threshold best pooled over the datasets);
``all`` uses every micrograph (for checkpoints that saw no real pixels). Writes
``<results-dir>/<out>.json`` and ``.md`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _topaz import bin_factor, extract, extract_radius, preprocess  # noqa: E402
from _common import (DATA_DIR_HELP, DATASETS, DEFAULT_DATA_DIR, ROOT, inside,  # noqa: E402
                     mask_truth, write_report)

from cryoparticle.io.coords import read_star  # noqa: E402
from cryoparticle.io.mrc import read_micrograph, write_mrc  # noqa: E402
from cryoparticle.picking.evaluate import (average_precision, best_f1_threshold,  # noqa: E402
                                           precision_recall_f1)



def dataset_inputs(name: str, data_dir: Path, which: str, work: Path) -> dict[str, Any]:
    """MRC copies (pixel size in the header) of a dataset's micrographs, their truth, borders."""
    folder, px, diameter, scale, held_out = DATASETS[name]
    mics = sorted((data_dir / folder / "micrographs").glob("*.*"))
    if which in held_out:
        mics = [m for m in mics if m.stem == held_out[which]]
    out = work / folder
    out.mkdir(parents=True, exist_ok=True)
    paths, truths, borders = [], [], {}
    for mic in mics:
        image, _ = read_micrograph(mic)
        path = out / f"{mic.stem}.mrc"
        if not path.exists():
            write_mrc(path, image.astype(np.float32), px)
        mask_file = next((data_dir / folder / "masks").glob(f"{mic.stem}_mask.*"))
        truth, borders[mic.stem] = mask_truth(image, mask_file, diameter, scale, mic.stem)
        truths.append(truth)
        paths.append(path)
    return {"paths": paths, "truth": pd.concat(truths, ignore_index=True), "borders": borders,
            "pixel_size_a": px, "diameter_px": diameter}


def predict_picks(out: Path, paths: list[Path]) -> pd.DataFrame:
    """The picks ``predict.py`` wrote in ``out`` for ``paths`` (``NAME.star`` each), one
    table, ``micrograph`` the file stem."""
    return pd.concat([read_star(out / f"{p.stem}.star", micrograph=p.stem) for p in paths],
                     ignore_index=True)


def picked_thresholds(out: Path) -> dict[str, Any]:
    """What ``predict.py`` (its ``predict_summary.json`` in ``out``) picked at: the fixed
    threshold, or the rule of a relative one and each micrograph's threshold, with their median
    (``threshold_median``) and range, for the table's threshold column."""
    from cryoparticle.picking.writers import PredictSummary, picking_thresholds

    summary = PredictSummary.from_json((out / "predict_summary.json").read_text())
    text, rule = picking_thresholds(summary)
    values = [float(m["threshold"]) for m in summary.micrographs
              if m.get("status") == "picked" and m.get("threshold") is not None]
    return {"threshold_rule": rule, "threshold_text": text,
            "thresholds_per_micrograph": values,
            "threshold_median": float(np.median(values)) if values else summary.threshold}


def scores(picks: pd.DataFrame, truth: pd.DataFrame, radius: float, threshold: float,
           sweep: dict[float, pd.DataFrame] | None = None) -> dict[str, Any]:
    """At ``threshold``; best F1 over the score thresholds of ``picks`` (Topaz: its scores
    rank candidates) or, with ``sweep``, over the extraction thresholds of ours."""
    at = precision_recall_f1(picks[picks["score"] >= threshold], truth, radius)
    if sweep is None:
        best_threshold, best_f1 = best_f1_threshold(picks, truth, radius)
    else:
        f1 = {t: precision_recall_f1(p, truth, radius)["f1"] for t, p in sweep.items()}
        best_threshold = max(f1, key=lambda t: (f1[t], -abs(t - threshold)))
        best_f1 = f1[best_threshold]
    return {"threshold": threshold, "precision": at["precision"], "recall": at["recall"],
            "f1": at["f1"], "best_f1": best_f1, "best_threshold": best_threshold,
            "ap": average_precision(picks, truth, radius), "n_picks": int((picks["score"]
                                                                           >= threshold).sum()),
            "n_truth": len(truth)}


TOPAZ = "Topaz resnet16_u64 (shipped)"
TOPAZ_BOXES_INSIDE = f"{TOPAZ}, boxes inside"
"""Topaz's picks kept only where a box of 1.5 diameters fits in the micrograph, as ours are."""

THRESHOLDS = (0.02, 0.03, *np.round(np.arange(0.05, 0.96, 0.05), 2))
"""Thresholds of the sweep of our pickers (extraction re-run on the saved probability maps)."""


def predict_extraction(overrides: list[str]) -> dict[str, Any]:
    """The ``extraction.KEY=VALUE`` options among ``predict.py`` overrides, values parsed as
    YAML (as Hydra reads them), so that the threshold sweep extracts as predict did."""
    import yaml

    options = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.startswith("extraction.") and value != "null":
            options[key.removeprefix("extraction.")] = yaml.safe_load(value)
    return options


def run_ours(ckpt: str, data: dict[str, Any], out: Path, overrides: list[str] | None = None,
             thresholds: tuple[float, ...] = THRESHOLDS
             ) -> tuple[pd.DataFrame, float, float, dict[float, pd.DataFrame]]:
    """``predict.py`` as a user runs it (the stored threshold, diameter estimate, borders):
    its picks, the threshold it used, seconds per micrograph; and the picks at every threshold
    of ``thresholds`` (default :data:`THRESHOLDS`) and at that one, extracted from the
    probability maps predict wrote, with the same diameter, extraction options and edge margin
    (coordinates scaled to the original micrograph)."""
    from cryoparticle.models.packaged import resolve_checkpoint
    from cryoparticle.models.segmenter import load_segmenter

    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, str(ROOT / "predict.py"), f"input=[{','.join(map(str, data['paths']))}]",
           f"output_dir={out}", f"ckpt_path={ckpt}", "write_probability=true",
           "progress_bar=false", "num_workers=0", *(overrides or [])]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"predict.py failed ({ckpt}):\n{result.stderr[-2000:]}")
    facts = load_segmenter(resolve_checkpoint(ckpt)).inference_facts()
    picks = predict_picks(out, data["paths"])
    # the threshold predict used (the stored one, or a --predict threshold=...; the floor of a
    # relative threshold, whose picks all lie above it), in the sweep
    used = float(json.loads((out / "predict_summary.json").read_text())["threshold"])
    options = {**(facts.get("extraction") or {}), **predict_extraction(overrides or [])}
    tables = extraction_sweep(out, data["paths"], options, tuple(sorted({*thresholds, used})))
    return picks, used, wall / len(data["paths"]), tables


def extraction_sweep(out: Path, paths: list[Path], options: dict[str, Any],
                     thresholds: tuple[float, ...]) -> dict[float, pd.DataFrame]:
    """The picks at every threshold, extracted from the probability maps ``predict.py`` wrote
    in ``out`` (``write_probability=true``) with the diameter and edge margin it used for each
    micrograph and the extraction ``options``; coordinates in original pixels."""
    from cryoparticle.picking.settings import Extraction

    size = options.get("min_size_fraction", Extraction.min_size_fraction)  # predict's default
    rest = {k: v for k, v in options.items() if k != "min_size_fraction"}
    return extraction_grid(out, paths, rest, thresholds, (size,))[size]


def extraction_grid(out: Path, paths: list[Path], options: dict[str, Any],
                    thresholds: tuple[float, ...], min_size_fractions: tuple[float, ...]
                    ) -> dict[float, dict[float, pd.DataFrame]]:
    """As :func:`extraction_sweep` for every minimum region size too: ``{size: {threshold:
    picks}}`` (one watershed per map and threshold, whatever the number of sizes)."""
    from cryoparticle.io.coords import scale_coordinates
    from cryoparticle.io.mrc import read_mrc
    from cryoparticle.picking.extract import extract_particles_by_min_size

    summary = {m["name"]: m for m in json.loads((out / "predict_summary.json").read_text())
               ["micrographs"]}
    options = {k: v for k, v in options.items() if k != "border_px"}  # the summary's margin
    grid: dict[float, dict[float, list[pd.DataFrame]]] = {
        s: {t: [] for t in thresholds} for s in min_size_fractions}
    for path in paths:
        info = summary[path.stem]
        prob, _ = read_mrc(out / f"{path.stem}_prob.mrc", mmap=False)
        binned_px = float(info["pixel_size_a"]) * float(info["bin_factor"])
        diameter = float(info["particle_diameter_a"]) / binned_px
        margin = float(info.get("edge_margin_px") or 0.0) / float(info["bin_factor"])
        for t in thresholds:
            found = extract_particles_by_min_size(
                prob, diameter, min_size_fractions, threshold=float(t), micrograph=path.stem,
                border_px=margin, **options)
            for s, picks in found.items():
                grid[s][t].append(scale_coordinates(picks, float(info["bin_factor"])))
    return {s: {t: pd.concat(v, ignore_index=True) for t, v in by_t.items()}
            for s, by_t in grid.items()}


def run_topaz(topaz: Path, data: dict[str, Any], out: Path) -> tuple[pd.DataFrame, float]:
    """Topaz 0.3's shipped general picker (resnet16_u64) on the micrographs binned to about
    7.08 Å/px (integer factor), radius half the particle diameter there; all picks with scores
    (threshold −6) for the curve. Cached in ``out``: a rerun on the same micrographs (names and
    sizes) with the same Topaz reads the picks and the time back (delete ``out`` to remeasure)."""
    from cryoparticle.io.coords import read_topaz

    factor = bin_factor(data["pixel_size_a"])
    stamp = {"topaz": str(topaz), "factor": factor, "diameter_px": data["diameter_px"],
             "inputs": [[p.name, p.stat().st_size] for p in data["paths"]]}
    done = out / "done.json"
    if done.is_file():
        cached = json.loads(done.read_text())
        if cached.get("stamp") == stamp:
            return read_topaz(out / "picks.txt", data["diameter_px"]), cached["s_per_micrograph"]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.perf_counter()
    try:
        images = preprocess(topaz, data["paths"], factor, out / "pre")
        picks = extract(topaz, "resnet16_u64", sorted(images),
                        extract_radius(data["diameter_px"], factor), factor,
                        out / "picks.txt", data["diameter_px"])
    except RuntimeError as exc:
        sys.exit(str(exc))
    speed = (time.perf_counter() - start) / len(data["paths"])
    done.write_text(json.dumps({"stamp": stamp, "s_per_micrograph": speed}) + "\n")
    return picks, speed


def boxes_inside(picks: pd.DataFrame, borders: dict[str, Any], diameter_px: float
                 ) -> pd.DataFrame:
    """The picks whose box (:data:`~cryoparticle.picking.settings.BOX_PER_DIAMETER` diameters)
    lies inside their micrograph (shape from ``borders``): ``predict.py``'s default edge rule,
    applied to another picker's picks for a like-for-like row."""
    from cryoparticle.picking.settings import BOX_PER_DIAMETER

    margin = BOX_PER_DIAMETER * diameter_px / 2
    keep = np.zeros(len(picks), bool)
    for name, rows in picks.groupby("micrograph").indices.items():
        height, width = np.shape(borders[name])
        x, y = picks["x"].to_numpy()[rows], picks["y"].to_numpy()[rows]
        keep[rows] = ((x >= margin) & (x <= width - 1 - margin) & (y >= margin)
                      & (y <= height - 1 - margin))
    return picks[keep]


def _in_radii(table: pd.DataFrame, radius: float, dataset: str) -> pd.DataFrame:
    """Coordinates divided by the matching radius, micrographs prefixed by the dataset."""
    return table.assign(x=table["x"] / radius, y=table["y"] / radius,
                        micrograph=dataset + "/" + table["micrograph"].astype(str))


def table(record: dict[str, Any]) -> str:
    lines = ["| dataset | picker | micrographs | threshold | P | R | F1 | best F1 (at) | AP |"
             " s / micrograph |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, pickers in record["results"].items():
        for picker, r in pickers.items():
            at = r.get("threshold_text") if r.get("threshold_rule") else f"{r['threshold']:.2f}"
            lines.append(f"| {name} | {picker} | {r['n_micrographs']} | {at} | "
                         f"{r['precision']:.3f} | {r['recall']:.3f} | **{r['f1']:.3f}** | "
                         f"{r['best_f1']:.3f} ({r['best_threshold']:.2f}) | {r['ap']:.3f} | "
                         f"{r['s_per_micrograph']:.1f} |")
    rules = sorted({f"{picker}: {r['threshold_rule']}" for pickers in record["results"].values()
                    for picker, r in pickers.items() if r.get("threshold_rule")})
    if rules:  # a relative threshold: each micrograph's own (median, range over micrographs)
        lines.append("\nThreshold relative to each micrograph's particle peak level ("
                     + "; ".join(rules) + "): the median (range) of the micrographs' thresholds.")
    return "\n".join(lines)


def cached_main(results_dir: Path, out: str, argv: list[str]) -> dict[str, Any]:
    """The record of ``main(argv)`` written as ``results_dir/out.json``; read back when that
    file exists (a rerun of a benchmark built on this one resumes)."""
    cache = results_dir / f"{out}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    return main([*argv, "--out", out, "--results-dir", str(results_dir)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=DATA_DIR_HELP)
    parser.add_argument("--ckpt", action="append", default=None, metavar="NAME=PATH",
                        help="a checkpoint to measure (repeatable; PATH 'general' = the "
                             "shipped model; default: general=general)")
    parser.add_argument("--micrographs", choices=["all", "test", "val"], default="all",
                        help="all; or data=general's test (never trained on) or validation "
                             "micrographs (with val: the threshold that maximises F1 pooled "
                             "over the datasets, to store with export --threshold)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--topaz", type=Path, default=None,
                        help="the topaz executable (pip install topaz-em); omitted: not run")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "transfer")
    parser.add_argument("--out", default="real_transfer",
                        help="results file name: RESULTS_DIR/OUT.json and OUT.md")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--predict", nargs="+", default=[], metavar="KEY=VALUE",
                        help="extra predict.py overrides for our pickers, e.g. tta=flips")
    args = parser.parse_args(argv)
    if not (args.data_dir / "empiar-10017").is_dir():
        sys.exit(f"{args.data_dir}: no empiar-10017/ here; give --data-dir")
    ckpts = dict(item.split("=", 1) for item in (args.ckpt or ["general=general"]))
    record: dict[str, Any] = {"micrographs": args.micrographs, "results": {},
                              "checkpoints": ckpts, "predict_overrides": args.predict,
                              "matching": "Hungarian, radius d/2, pooled"}
    pooled: dict[str, dict[str, pd.DataFrame]] = {}
    truths: dict[str, pd.DataFrame] = {}
    for name in args.datasets:
        data = dataset_inputs(name, args.data_dir, args.micrographs, args.work / "inputs")
        truth = inside(data["truth"], data["borders"])
        radius = data["diameter_px"] / 2
        record["results"][name] = {}
        runs = {f"ours: {label}": ("ours", ckpt) for label, ckpt in ckpts.items()}
        if args.topaz is not None:
            runs[TOPAZ] = ("topaz", str(args.topaz))
            runs[TOPAZ_BOXES_INSIDE] = ("topaz-boxes-inside", str(args.topaz))
        for picker, (kind, where) in runs.items():
            out = args.work / "picks" / name / picker.replace(" ", "_").replace(":", "")
            sweep = None
            if kind == "ours":
                picks, threshold, speed, sweep = run_ours(where, data, out, args.predict)
                sweep = {t: inside(p, data["borders"]) for t, p in sweep.items()}
            else:  # Topaz's picks (cached: both rows share one run), as is or with our edge rule
                picks, speed = run_topaz(Path(where), data, args.work / "picks" / name /
                                         TOPAZ.replace(" ", "_"))
                if kind == "topaz-boxes-inside":
                    picks = boxes_inside(picks, data["borders"], data["diameter_px"])
                threshold = 0.0
            picks = inside(picks, data["borders"])
            result = scores(picks, truth, radius, threshold, sweep)
            if kind == "ours":
                result.update(picked_thresholds(out))
            # in units of each dataset's radius, for the threshold pooled over datasets
            pooled.setdefault(name, {})[picker] = (
                {t: _in_radii(p, radius, name) for t, p in sweep.items()} if sweep
                else _in_radii(picks, radius, name))
            truths[name] = _in_radii(truth, radius, name)
            result.update({"n_micrographs": len(data["paths"]), "s_per_micrograph": speed})
            record["results"][name][picker] = result
            print(f"{name:14s} {picker:32s} F1 {result['f1']:.3f} (P {result['precision']:.3f}"
                  f" R {result['recall']:.3f}) best {result['best_f1']:.3f} AP "
                  f"{result['ap']:.3f}", flush=True)
    if args.micrographs == "val":  # the pooled best threshold of every picker
        record["pooled_best_threshold"] = {}
        for picker in next(iter(pooled.values())):
            truth = pd.concat([truths[n] for n in pooled], ignore_index=True)
            if isinstance(pooled[next(iter(pooled))][picker], dict):  # ours: the sweep
                f1s = {t: precision_recall_f1(pd.concat([pooled[n][picker][t] for n in pooled],
                                                        ignore_index=True), truth, 1.0)["f1"]
                       for t in THRESHOLDS}
                threshold = max(f1s, key=f1s.get)
                f1 = f1s[threshold]
            else:
                picks = pd.concat([pooled[n][picker] for n in pooled], ignore_index=True)
                threshold, f1 = best_f1_threshold(picks, truth, 1.0)
            record["pooled_best_threshold"][picker] = {"threshold": threshold, "f1": f1}
            print(f"{picker}: pooled best threshold {threshold:.3f} (F1 {f1:.3f})")
    markdown = table(record)
    print(markdown)
    write_report(args.results_dir, args.out, record, markdown + "\n",
                 {"DATA_DIR": args.data_dir, "WORK_DIR": args.work})
    return record


if __name__ == "__main__":
    main()
