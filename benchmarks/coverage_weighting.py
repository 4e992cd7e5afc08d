"""Extraction for data of any crowding: expected pick F1 over CryoPPP's range of particle coverage.

    python benchmarks/coverage_weighting.py --data-dir DATA [--loo-work-dir LOO_WORK_DIR]
        [--datasets EMPIAR-10017 ...] [--empty-kinds empiar10017 white_noise general]
        [--choose-by empiar10017 white_noise general] [--empty-n 2]
        [--work-dir benchmarks/work/coverage_weighting] [--out coverage_weighting]

The three shared real sets are crowded: their particle discs cover 0.32, 0.62 and 0.72 of the
micrograph (the CryoPPP table's counts), where CryoPPP's 34 sets have a median of 0.30
(quartiles 0.21–0.38, 0.04–0.85). An extraction (threshold, minimum region size) chosen for the
most F1 on them is chosen where there is little empty ice to pick by mistake. This benchmark
asks what each setting of ``leave_one_out.py``'s grid is worth on data as crowded as each of
CryoPPP's sets, with a *thinning model*:

- the held-out models of ``leave_one_out.py`` (``<loo-work-dir>/runs/<set>_full/exported.ckpt``,
  each never trained on the set it picks) give, on every micrograph of their held-out set, the
  pooled true positives, false positives and misses of each setting (``tp, fp, fn``;
  re-extracted from the probability maps of ``leave_one_out.py``'s scoring run), and the set's
  own coverage ``c_s`` (expert discs inside the borders over the area inside the borders);
- the same models pick micrographs *without* particles (``--empty-kinds``, those of
  ``benchmarks/empty_picks.py``: simulated empty ice of the default and of the general
  simulator, white noise), which give each setting's false picks per particle area on empty
  ice, ``e`` (the particle area of the diameter predict used there);
- the set thinned to a coverage ``c < c_s`` keeps ``k = c / c_s`` of its particles, with their
  picks and misses, and the area they leave is empty ice: ``n (1 − k)`` particle areas (``n`` =
  ``tp + fn`` particles) that add ``e`` false picks each. So
  ``F1(c) = 2 tp / (2 tp + fp + fn + e n (1 − k) / k)``, the measured F1 at ``c ≥ c_s``;
- the expected F1 of a setting on a set is the mean of ``F1(c)`` over the 34 CryoPPP coverages.

It reports, per setting, the expected F1 of each held-out set with the empty-ice rate of each
kind and of their mean (``--choose-by``, default all three kinds: :data:`CHOOSE_BY`), the
setting best on average over the sets, each set at the
setting chosen on the others (nested), and the shipped model's setting. A model, not a
measurement of sparse real data: it assumes that the particles of sparser data are picked as
those of the crowded ones, and that real empty ice is picked as the empty micrographs are.
Cached in ``--work-dir`` (a rerun resumes). Writes ``<results-dir>/<out>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DATASETS, add_held_out_options, add_output_options,  # noqa: E402
                     cached_json, inside, load_average, require_datasets, write_held_out_report)

EMPTY_KINDS = ("empiar10017", "white_noise", "general")
"""Micrographs without particles (``benchmarks/empty_picks.py``'s kinds): simulated empty ice of
the default simulator, white noise, and the general simulator's (with contaminants and looks)."""

CHOOSE_BY = EMPTY_KINDS
"""The empty-ice kinds whose mean rate chooses the setting: all three. What the empty regions of
a user's sparse micrographs look like is not known here, and the kinds disagree: on clean ice
and white noise the false picks fall steeply with the threshold, while the general simulator's
contaminants (ice blobs, aggregates, carbon edges, which Topaz's shipped model picks too) are
picked at almost any threshold, so that proxy favours a low one. Their mean is the hedge."""


def cryoppp_coverages(table: Any = None) -> np.ndarray:
    """The fraction of the micrograph area the expert discs cover, one per CryoPPP set:
    particles per micrograph × π (diameter / 2)² / micrograph area (the packaged table)."""
    from cryoparticle.data.cryoppp import load_table

    table = load_table() if table is None else table
    sizes = table["micrograph_size_px"].astype(str).str.lower().str.split("x", expand=True)
    area = sizes[0].astype(float).to_numpy() * sizes[1].astype(float).to_numpy()
    per_micrograph = table["n_particles"].to_numpy(float) / table["n_micrographs"].to_numpy(float)
    disc = math.pi * (table["particle_diameter_px"].to_numpy(float) / 2) ** 2
    return per_micrograph * disc / area


def thinned_f1(tp: float, fp: float, fn: float, empty_rate: float, own_coverage: float,
               coverage: Any) -> np.ndarray:
    """Pick F1 of a set measured at ``own_coverage`` (``tp``, ``fp``, ``fn``) if it were
    thinned to each ``coverage``: ``k = coverage / own_coverage`` of its particles, picks and
    misses kept, the area freed (``(tp + fn)(1 − k)`` particle areas) empty ice with
    ``empty_rate`` false picks per particle area. At or above ``own_coverage``: the measured F1
    (a set cannot be made more crowded than it is)."""
    coverage = np.asarray(coverage, dtype=float)
    if own_coverage <= 0 or np.any(coverage <= 0):
        raise ValueError("coverages must be > 0")
    if tp + fp + fn == 0:
        return np.zeros_like(coverage)
    k = np.minimum(coverage / own_coverage, 1.0)
    extra = empty_rate * (tp + fn) * (1.0 - k) / k
    return 2.0 * tp / (2.0 * tp + fp + fn + extra)


def expected_f1(counts: dict[str, float], empty_rate: float, own_coverage: float,
                coverages: np.ndarray) -> float:
    """The mean of :func:`thinned_f1` over ``coverages`` (``counts``: ``tp``, ``fp``, ``fn``)."""
    return float(np.mean(thinned_f1(counts["tp"], counts["fp"], counts["fn"], empty_rate,
                                    own_coverage, coverages)))


def expected_grid(counts: dict[str, dict[str, float]], empty: dict[str, float],
                  own_coverage: float, coverages: np.ndarray) -> dict[str, float]:
    """:func:`expected_f1` of every setting of ``counts`` (setting → ``tp, fp, fn``) with its
    empty-ice rate ``empty`` (setting → false picks per particle area)."""
    return {key: expected_f1(c, empty[key], own_coverage, coverages)
            for key, c in counts.items()}


# ------------------------------------------------------------------------------- measuring


def _label(held_out: str) -> str:
    return f"{DATASETS[held_out][0]}_full"


def set_counts(held_out: str, ckpt: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``{"coverage": c_s, "counts": {setting: {tp, fp, fn}}}`` of ``held_out``'s micrographs
    with its held-out model (:func:`leave_one_out.grid_scores` of the maps
    ``leave_one_out.py`` wrote)."""
    import leave_one_out
    import real_transfer

    folder = args.loo_work_dir / "transfer" / "picks" / held_out / f"ours_{_label(held_out)}"
    if not (folder / "predict_summary.json").is_file():
        sys.exit(f"{folder}: no probability maps of the held-out model; run "
                 "benchmarks/leave_one_out.py with this --work-dir first")

    def compute() -> dict[str, Any]:
        data = real_transfer.dataset_inputs(held_out, args.data_dir, "all",
                                            args.loo_work_dir / "transfer" / "inputs")
        n_particles = len(inside(data["truth"], data["borders"]))
        area = float(sum((~border).sum() for border in data["borders"].values()))
        coverage = n_particles * math.pi * (data["diameter_px"] / 2) ** 2 / area
        counts = {key: {k: r[k] for k in ("tp", "fp", "fn")}
                  for key, r in leave_one_out.grid_scores(folder, ckpt, data).items()}
        return {"coverage": coverage, "n_particles": n_particles, "counts": counts}

    return cached_json(args.work_dir / "scores" / f"{_label(held_out)}_counts.json", compute)


def empty_rates(held_out: str, ckpt: Path, kind: str, args: argparse.Namespace
                ) -> dict[str, float]:
    """False picks per particle area of each grid setting on ``--empty-n`` 1024² micrographs of
    ``kind`` without particles, picked by ``held_out``'s held-out model
    (:func:`leave_one_out.empty_kind_grid`, in this benchmark's work dir)."""
    import leave_one_out

    def compute() -> dict[str, float]:
        grid = leave_one_out.empty_kind_grid(_label(held_out), ckpt, kind, args.work_dir,
                                             args.empty_n, args.seed)
        return {key: value / 100.0 for key, value in grid.items()}

    return cached_json(args.work_dir / "scores" / f"{_label(held_out)}_empty_{kind}.json",
                       compute)


# ------------------------------------------------------------------------------- reporting


def summarise(sets: dict[str, dict[str, Any]], empty: dict[str, dict[str, dict[str, float]]],
              coverages: np.ndarray, choose_by: tuple[str, ...], shipped: str | None
              ) -> dict[str, Any]:
    """The expected-F1 grids (per proxy: each empty kind and ``mean``), the choice by the mean
    over ``choose_by`` (best on average, nested, shipped; :func:`leave_one_out.
    unseen_calibration`), and each proxy's own best setting."""
    import leave_one_out

    kinds = list(next(iter(empty.values())))
    proxies: dict[str, dict[str, dict[str, float]]] = {}
    for proxy in [*kinds, "mean"]:
        proxies[proxy] = {}
        for name, record in sets.items():
            chosen_kinds = choose_by if proxy == "mean" else (proxy,)
            rate = {key: float(np.mean([empty[name][k][key] for k in chosen_kinds]))
                    for key in record["counts"]}
            proxies[proxy][name] = expected_grid(record["counts"], rate, record["coverage"],
                                                 coverages)
    measured = {name: {key: 2 * c["tp"] / max(2 * c["tp"] + c["fp"] + c["fn"], 1)
                       for key, c in record["counts"].items()}
                for name, record in sets.items()}
    out = {"choice": leave_one_out.unseen_calibration(proxies["mean"], shipped),
           "best_by_proxy": {p: dict(zip(("setting", "mean_expected_f1"),
                                         leave_one_out.best_setting(grids)))
                             for p, grids in proxies.items()},
           "best_measured": dict(zip(("setting", "mean_f1"),
                                     leave_one_out.best_setting(measured))),
           "expected_f1": proxies, "measured_f1": measured}
    chosen = out["choice"]["chosen"]
    out["choice"]["measured_f1"] = {name: grid[chosen] for name, grid in measured.items()}
    if shipped is not None and "shipped" in out["choice"]:
        out["choice"]["shipped"]["measured_f1"] = {name: grid[shipped]
                                                   for name, grid in measured.items()}
        out["shipped_by_proxy"] = {p: float(np.mean([g[shipped] for g in grids.values()]))
                                   for p, grids in proxies.items()}
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    choice = s["choice"]
    shipped = choice.get("shipped")
    cov = report["coverages"]
    lines = [f"Expected pick F1 over the {cov['n']} CryoPPP coverages (median {cov['median']:.2f}, "
             f"quartiles {cov['p25']:.2f}–{cov['p75']:.2f}); empty-ice rate: mean of "
             f"{', '.join(report['choose_by'])}.", "",
             f"Best on average: `{choice['chosen']}` (mean expected F1 {choice['mean_f1']:.3f})"
             + (f"; shipped `{shipped['setting']}`." if shipped else "."), "",
             "| held out (own coverage) | expected F1 at the chosen | at the shipped | nested "
             "(setting from the others) | measured F1 (own coverage) at the chosen / shipped |",
             "|---|---|---|---|---|"]
    for name, value in choice["f1"].items():
        nested = choice["nested"].get(name)
        own = report["sets"][name]["coverage"]
        lines.append(
            f"| {name} ({own:.2f}) | {value:.3f} | "
            + (f"{shipped['f1'][name]:.3f}" if shipped else "–") + " | "
            + (f"**{nested['f1']:.3f}** (`{nested['setting']}`)" if nested else "–") + " | "
            + f"{choice['measured_f1'][name]:.3f} / "
            + (f"{shipped['measured_f1'][name]:.3f}" if shipped else "–") + " |")
    lines += ["", "| empty-ice proxy | best setting | mean expected F1 | at the shipped |",
              "|---|---|---|---|"]
    for proxy, best in s["best_by_proxy"].items():
        at_shipped = (s.get("shipped_by_proxy") or {}).get(proxy)
        lines.append(f"| {proxy} | `{best['setting']}` | {best['mean_expected_f1']:.3f} | "
                     + ("–" if at_shipped is None else f"{at_shipped:.3f}") + " |")
    measured = s["best_measured"]
    lines += ["", f"Measured at the sets' own coverage (no thinning), best on average: "
              f"`{measured['setting']}` (mean F1 {measured['mean_f1']:.3f})."]
    mean = s["expected_f1"]["mean"]
    size = choice["chosen"].split()[0]
    keys = [k for k in next(iter(mean.values())) if k.startswith(size + " ")]
    lines += ["", f"Expected F1 by threshold at `{size}` (proxy: mean):", "",
              "| threshold | " + " | ".join(mean) + " | mean |",
              "|---|" + "---|" * (len(mean) + 1)]
    for key in keys:
        values = [grid[key] for grid in mean.values()]
        lines.append(f"| {key.split('threshold=')[1]} | "
                     + " | ".join(f"{v:.3f}" for v in values) + f" | {np.mean(values):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_held_out_options(parser, "its held-out models and their maps")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--empty-kinds", nargs="+", default=list(EMPTY_KINDS),
                        choices=EMPTY_KINDS)
    parser.add_argument("--choose-by", nargs="+", default=list(CHOOSE_BY), choices=EMPTY_KINDS,
                        help="the empty kinds whose mean rate chooses the setting")
    parser.add_argument("--empty-n", type=int, default=2,
                        help="micrographs without particles of each kind")
    parser.add_argument("--seed", type=int, default=12345)
    add_output_options(parser, "coverage_weighting")
    args = parser.parse_args(argv)
    if args.empty_n < 1:
        parser.error("--empty-n must be ≥ 1")
    if not set(args.choose_by) <= set(args.empty_kinds):
        parser.error("--choose-by must be among --empty-kinds")
    require_datasets(args.data_dir)
    args.work_dir, args.loo_work_dir = args.work_dir.resolve(), args.loo_work_dir.resolve()
    import leave_one_out

    load_before = load_average()
    coverages = cryoppp_coverages()
    sets, empty = {}, {}
    for name in args.datasets:
        ckpt = args.loo_work_dir / "runs" / _label(name) / "exported.ckpt"
        if not ckpt.is_file():
            sys.exit(f"{ckpt}: no held-out model; run benchmarks/leave_one_out.py with "
                     "--work-dir LOO_WORK_DIR first")
        sets[name] = set_counts(name, ckpt, args)
        empty[name] = {kind: empty_rates(name, ckpt, kind, args) for kind in args.empty_kinds}
        print(f"{name}: coverage {sets[name]['coverage']:.3f}, "
              f"{sets[name]['n_particles']} particles", flush=True)
    shipped = leave_one_out.shipped_setting()
    summary = summarise(sets, empty, coverages, tuple(args.choose_by),
                        shipped if shipped in next(iter(sets.values()))["counts"] else None)
    record = {"benchmark": "coverage_weighting",
              "command": ["python", "benchmarks/coverage_weighting.py",
                          *(argv if argv is not None else sys.argv[1:])],
              "coverages": {"n": len(coverages), "median": float(np.median(coverages)),
                            "p25": float(np.percentile(coverages, 25)),
                            "p75": float(np.percentile(coverages, 75)),
                            "min": float(coverages.min()), "max": float(coverages.max())},
              "choose_by": list(args.choose_by), "empty_n": args.empty_n,
              "sets": {name: {k: v for k, v in r.items() if k != "counts"}
                       for name, r in sets.items()},
              "empty_picks_per_particle_area": empty, "summary": summary,
              "load_before": load_before, "load_after": load_average()}
    text = markdown(record)
    write_held_out_report(args, record, text)
    return record


if __name__ == "__main__":
    main()
