"""What could tell a micrograph's particle size: the network's regions, or the image itself?

    python benchmarks/diameter_cues.py --data-dir DATA
        [--particle-size-work-dir benchmarks/work/particle_size] [--datasets EMPIAR-10017 ...]
        [--scales 0.6 1.0 1.6] [--work-dir benchmarks/work/diameter_cues]
        [--out diameter_cues] [--results-dir benchmarks/results]

Run after ``benchmarks/particle_size.py``: it reads the probability maps that script's
``estimated`` runs wrote (``<particle-size-work-dir>/picks/<set>_s<scale>_estimated``: each
held-out set shown at ``s`` × its particle size to the model that never saw it). Per set and
scale, the median over the micrographs of:

- **the map's region sizes** (Å, on the network's grid): twice the median and the upper
  quartile of the distance-transform peaks of ``p ≥ t`` (what ``predict.py``'s estimate
  uses, before its ``core_fraction``), the equivalent diameter and the inscribed diameter of
  the *confident* regions (peak probability ≥ 0.5), each at ``t`` = 0.125, 0.25 and 0.5;
- **the image's blob scale** σ* (Å): the Gaussian scale of the strongest scale-normalised
  Laplacian-of-Gaussian response at the CryoPPP centres (mean over the centres minus the
  mean over the micrograph), on the micrograph resampled to the network's grid as
  ``predict.py`` did, standardised; and the CryoPPP radius in units of σ*.

A cue that follows the particle size grows in proportion to ``s``: the table's last rows give
each cue's *size exponent*, the slope of log(cue) against log(s) (1: follows the size, 0:
flat), per set and averaged. Cached per set and scale in ``--work-dir``. Writes
``<results-dir>/<out>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DATA_DIR_HELP, DATASETS, DEFAULT_DATA_DIR, ROOT,  # noqa: E402
                     add_output_options, cached_json, inside, load_average, require_datasets,
                     write_report)

LEVELS = (0.125, 0.25, 0.5)
"""Probability levels of the region cues."""
CONFIDENT = 0.5
"""A region is confident when its peak probability is at least this."""
SIGMAS_A = tuple(float(v) for v in np.geomspace(5.0, 120.0, 29))
"""Gaussian scales (Å) of the Laplacian-of-Gaussian search."""


def region_cues(prob: np.ndarray, pixel_size_a: float) -> dict[str, float]:
    """Size measures (Å) of the regions of one probability map (see the module); NaN where a
    level has no (confident) region."""
    from scipy import ndimage
    from skimage.feature import peak_local_max

    cues: dict[str, float] = {}
    for level in LEVELS:
        fg = prob >= level
        distance = ndimage.distance_transform_edt(fg)
        peaks = peak_local_max(distance, min_distance=1, threshold_abs=1.0,
                               exclude_border=False)
        heights = distance[peaks[:, 0], peaks[:, 1]] if len(peaks) else np.zeros(0)
        cues[f"edt_median@{level:g}"] = 2 * float(np.median(heights)) if len(heights) else math.nan
        cues[f"edt_p75@{level:g}"] = (2 * float(np.percentile(heights, 75)) if len(heights)
                                      else math.nan)
        labels, n = ndimage.label(fg)
        index = np.arange(1, n + 1)
        if n:
            area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            confident = np.asarray(ndimage.maximum(prob, labels, index)) >= CONFIDENT
            inscribed = 2 * np.asarray(ndimage.maximum(distance, labels, index))
        else:
            area = inscribed = np.zeros(0)
            confident = np.zeros(0, bool)
        cues[f"equivalent@{level:g}"] = (2 * math.sqrt(float(np.median(area[confident])) / math.pi)
                                         if confident.any() else math.nan)
        cues[f"inscribed@{level:g}"] = (float(np.median(inscribed[confident]))
                                        if confident.any() else math.nan)
    return {key: value * pixel_size_a for key, value in cues.items()}


def log_responses(image: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  sigmas_px: np.ndarray) -> np.ndarray:
    """Scale-normalised Laplacian-of-Gaussian (σ² ∇²G * image) at the centres ``(rows, cols)``
    minus its mean over the image, one value per scale of ``sigmas_px``."""
    from scipy.ndimage import gaussian_laplace

    standard = (image - image.mean()) / max(float(image.std()), 1e-12)
    out = np.empty(len(sigmas_px))
    for k, sigma in enumerate(sigmas_px):
        response = sigma ** 2 * gaussian_laplace(standard, float(sigma))
        out[k] = float(response[rows, cols].mean() - response.mean())
    return out


def blob_scale(responses: np.ndarray, sigmas: np.ndarray) -> float:
    """The scale of the strongest response (either sign: particles darker or brighter)."""
    return float(sigmas[int(np.argmax(np.abs(responses)))])


def measure(name: str, scale: float, args: argparse.Namespace) -> dict[str, Any] | None:
    """The cues of one set at one apparent scale (None without particle_size.py's maps)."""
    import particle_size
    import real_transfer

    from cryoparticle.io.mrc import read_mrc
    from cryoparticle.picking.inputs import resample_to_model

    folder = (args.particle_size_work_dir / "picks"
              / particle_size.run_key(name, scale, "estimated"))
    if not (folder / "predict_summary.json").is_file():
        print(f"{folder}: no maps (run benchmarks/particle_size.py with --modes estimated and "
              "this --scales first); skipped", flush=True)
        return None

    def compute() -> dict[str, Any]:
        data = real_transfer.dataset_inputs(name, args.data_dir, "all",
                                            args.particle_size_work_dir / "inputs")
        summary = {m["name"]: m for m in json.loads(
            (folder / "predict_summary.json").read_text())["micrographs"]}
        truth = inside(data["truth"], data["borders"])
        per_map, responses, estimates = [], [], []
        for path in data["paths"]:
            info = summary[path.stem]
            factor = float(info["bin_factor"])
            grid_a = float(info["pixel_size_a"]) * factor
            prob, _ = read_mrc(folder / f"{path.stem}_prob.mrc", mmap=False)
            per_map.append(region_cues(np.asarray(prob, np.float32).squeeze(), grid_a))
            estimates.append(float(info["particle_diameter_a"]))
            image, _ = read_mrc(path, mmap=False)
            # as predict.py resampled it (pixel size given: s × the true one)
            grid = resample_to_model(path, np.asarray(image, np.float64).squeeze(),
                                     float(info["pixel_size_a"]), grid_a)
            here = truth[truth["micrograph"] == path.stem]
            rows = np.clip(np.round(here["y"].to_numpy() / factor).astype(int), 0,
                           grid.shape[0] - 1)
            cols = np.clip(np.round(here["x"].to_numpy() / factor).astype(int), 0,
                           grid.shape[1] - 1)
            if len(rows):
                responses.append(log_responses(grid, rows, cols, np.array(SIGMAS_A) / grid_a))
        cues = {key: float(np.nanmedian([c[key] for c in per_map])) for key in per_map[0]}
        sigma = blob_scale(np.mean(responses, axis=0), np.array(SIGMAS_A))
        apparent = scale * particle_size.true_diameter_a(name)
        return {"set": name, "scale": scale, "apparent_diameter_a": apparent,
                "estimate_a": float(np.median(estimates)), "regions_a": cues,
                "log_sigma_a": sigma, "radius_over_sigma": apparent / 2 / sigma}

    return cached_json(args.work_dir / f"{DATASETS[name][0]}_s{scale:g}.json", compute)


def size_exponents(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per cue, the slope of log(cue) against log(scale) for each set (≥ 2 scales) and their
    mean (``"mean"``)."""
    def cue_values(row: dict[str, Any]) -> dict[str, float]:
        return {"estimate": row["estimate_a"], **row["regions_a"], "log_sigma": row["log_sigma_a"]}

    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == name]
        if len({r["scale"] for r in mine}) < 2:
            continue
        for cue in cue_values(mine[0]):
            x = np.log([r["scale"] for r in mine])
            y = np.log([cue_values(r)[cue] for r in mine])
            if np.all(np.isfinite(y)):
                out.setdefault(cue, {})[name] = float(np.polyfit(x, y, 1)[0])
    for values in out.values():
        values["mean"] = float(np.mean(list(values.values())))
    return out


SHOWN = ("edt_median@0.25", "edt_p75@0.25", "equivalent@0.25", "inscribed@0.125")
"""The region cues of the Markdown table (every cue is in the JSON)."""


def markdown(rows: list[dict[str, Any]], exponents: dict[str, dict[str, float]]) -> str:
    head = ["set", "s", "CryoPPP diameter (Å)", "predict's estimate (Å)",
            *(f"{cue} (Å)" for cue in SHOWN), "image σ* (Å)", "CryoPPP radius / σ*"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["set"], f"{r['scale']:g}", f"{r['apparent_diameter_a']:.0f}",
            f"{r['estimate_a']:.0f}", *(f"{r['regions_a'][c]:.0f}" for c in SHOWN),
            f"{r['log_sigma_a']:.1f}", f"{r['radius_over_sigma']:.2f}"]) + " |")
    if exponents:
        lines += ["", "Size exponent (slope of log cue against log s; 1 follows the size):", "",
                  "| cue | " + " | ".join(next(iter(exponents.values()))) + " |",
                  "|---|" + "---|" * len(next(iter(exponents.values())))]
        for cue, values in exponents.items():   # (+ 0.0: no "-0.00")
            lines.append(f"| {cue} | "
                         + " | ".join(f"{round(v, 2) + 0.0:.2f}" for v in values.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=DATA_DIR_HELP)
    parser.add_argument("--particle-size-work-dir", type=Path,
                        default=ROOT / "benchmarks" / "work" / "particle_size",
                        help="particle_size.py's work dir: its estimated runs' maps")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--scales", nargs="+", type=float, default=[0.6, 1.0, 1.6])
    add_output_options(parser, "diameter_cues")
    args = parser.parse_args(argv)
    require_datasets(args.data_dir)
    load_before = load_average()
    rows = [row for name in args.datasets for scale in args.scales
            if (row := measure(name, scale, args)) is not None]
    if not rows:
        sys.exit("no maps of particle_size.py's estimated runs: nothing to measure")
    exponents = size_exponents(rows)
    text = markdown(rows, exponents)
    record = {"benchmark": "diameter_cues",
              "command": ["python", "benchmarks/diameter_cues.py",
                          *(argv if argv is not None else sys.argv[1:])],
              "levels": list(LEVELS), "confident": CONFIDENT, "sigmas_a": list(SIGMAS_A),
              "load_before": load_before, "load_after": load_average(), "rows": rows,
              "size_exponents": exponents}
    write_report(args.results_dir, args.out, record, text,
                 {"DATA_DIR": args.data_dir, "WORK_DIR": args.work_dir,
                  "PARTICLE_SIZE_WORK_DIR": args.particle_size_work_dir})
    print(text)
    return record


if __name__ == "__main__":
    main()
