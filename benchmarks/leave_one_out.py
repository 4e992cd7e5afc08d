"""Picking a dataset never seen in training: the general recipe, leave one dataset out.

    python benchmarks/leave_one_out.py [--data-dir DIR] [--held-out EMPIAR-10017 ...]
        [--variants full calibrated_contrast] [--epochs 8] [--seed 12345]
        [--checkpoint best] [--empty-n 0] [--empty-limit 1.0] [--ensemble-seeds 2 ...]
        [--topaz PATH_TO_topaz] [--work-dir benchmarks/work/leave_one_out]
        [--out leave_one_out] [--results-dir benchmarks/results] [-- OVERRIDE ...]

The shipped general model has seen micrographs of all three shared real sets, so its scores on
their test micrographs say little about a protein and a look it has never met, which is what a
user brings. For each held-out dataset this trains the general recipe (``experiment=general``:
simulation + the real micrographs of the *other* datasets; their validation micrographs and the
simulated ones choose the checkpoint, and the threshold is the one best on the other datasets'
real validation micrographs, as for the shipped model) and scores it on *every* micrograph of
the held-out dataset exactly as ``benchmarks/real_transfer.py`` does (Hungarian matching within
half a diameter, striped borders excluded, the exported model run through ``predict.py``): F1
at the stored threshold, best F1, AP. ``--topaz`` adds Topaz's shipped general model on the
same micrographs in the same run. ``--variants`` trains each held-out split once per simulation
variant of ``benchmarks/sim_ablation.py`` (e.g. ``full`` against ``calibrated_contrast``).

The threshold a model calibrates on the sets it has seen does not suit a set it has not (the
network is less sure of unfamiliar micrographs). So the probability maps of the held-out sets
are also re-extracted over a grid of thresholds × minimum region sizes, and the setting best on
average over the held-out sets is reported: the extraction to store in a model meant for new
data (the shipped one: ``export --threshold T --extraction min_size_fraction=S``). What that
choice is worth on a set that took no part in it is each set's F1 at the setting chosen on the
*other* held-out sets (nested), also reported.

The real sets are crowded, so they cannot say what a setting picks where there is nothing to
pick, which is most of a sparse data set. Each held-out model therefore also picks ``--empty-n``
micrographs without particles of two kinds of ``benchmarks/empty_picks.py`` (simulated empty
ice, white noise), and the setting is chosen only among those with at most
``--empty-limit`` false picks per 100 particle areas there (all settings if none is; without
``--empty-n``, the default, every setting is allowed). The
measured checkpoint is the best by the training's validation pick F1 (default, as for the
shipped model) or the last epoch's (``--checkpoint last``). ``--ensemble-seeds`` also trains
each held-out split with these seeds and measures the ensemble of the ``--seed`` model and
those (``export --member``, as a shipped ensemble is exported).

Runs are cached in ``--work-dir`` (a finished training has ``DONE``, a scored run its JSON): a
rerun resumes. Writes ``<results-dir>/<out>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DATASETS, ROOT, add_training_options, cached_json,  # noqa: E402
                     inside, load_average, require_datasets, train_run, write_report)
from sim_ablation import CHOICES, variant_overrides  # noqa: E402


def _quote(value: Any) -> str:
    """A config value as a Hydra override value (strings single-quoted; mappings and lists
    written out, e.g. a dataset's own ``target``)."""
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_quote(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_quote(v) for v in value) + "]"
    return str(value)


def held_out_overrides(held_out: str, data_dir: Path) -> list[str]:
    """``train.py`` overrides of the general recipe without dataset ``held_out`` (a key of
    ``DATASETS``): its entry removed from ``data.sources.real.datasets`` and its micrographs
    from the explicit validation and test lists; the others' roots under ``data_dir``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    folder = DATASETS[held_out][0]
    with initialize_config_dir(str(ROOT / "cryoparticle" / "conf"), version_base=None):
        cfg = compose("train", overrides=["experiment=general"])
    real = cfg.data.sources.real
    entries = []
    for entry in OmegaConf.to_container(real.datasets, resolve=False):
        name = Path(str(entry["root"])).name
        if name == folder:
            continue
        entry["root"] = str(Path(data_dir).resolve() / name)
        entries.append(_quote(entry))
    if len(entries) == len(real.datasets):
        raise SystemExit(f"{held_out}: not a dataset of data=general ({folder}/ not listed)")
    overrides = ["data.sources.real.datasets=[" + ", ".join(entries) + "]"]
    for split in ("val", "test"):
        names = [n for n in OmegaConf.to_container(real.split[split])
                 if not str(n).startswith(folder + "/")]
        overrides.append(f"data.sources.real.split.{split}=[" + ", ".join(map(_quote, names))
                         + "]")
    return overrides


def shipped_export_flags() -> list[str]:
    """The diameter estimation of the shipped general model's export (its ``core_fraction``
    and ``diameter_threshold``, read from the packaged checkpoint), as ``export`` flags. Not
    its relative threshold: held-out models are scored over a grid of fixed thresholds here,
    and ``relative_threshold.py`` measures the relative rule on the maps they write."""
    from cryoparticle.models.packaged import export_facts, packaged_checkpoint

    facts = export_facts(packaged_checkpoint())
    flags = ["--estimate-diameter"] if facts.get("estimate_diameter") else []
    if facts.get("int8"):
        flags.append("--int8")
    for key in ("core_fraction", "diameter_threshold"):
        if facts.get(key) is not None:
            flags += [f"--{key.replace('_', '-')}", str(facts[key])]
    return flags


def export(ckpt: Path, target: Path, threshold: float | None = None,
           members: list[Path] | None = None) -> Path:
    """The best checkpoint exported as the shipped model is (``python -m
    cryoparticle.models.packaged export`` with :func:`shipped_export_flags`: the diameter
    estimated per micrograph, at the shipped diameter threshold); ``threshold`` stored (None:
    the training validation's); ``members``: the other trainings of an ensemble."""
    from cryoparticle.models import packaged

    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        packaged.main(["export", str(ckpt), str(target), *shipped_export_flags(),
                       *([] if threshold is None else ["--threshold", str(threshold)]),
                       *(f"--member={m}" for m in members or [])])
    return target


def ensemble_members(label: str, overrides: list[str], args: argparse.Namespace
                     ) -> tuple[list[Path], float]:
    """The best checkpoints of ``overrides`` trained with each of ``--ensemble-seeds`` (runs
    ``<label>_seed<S>``), and their training seconds."""
    members, seconds = [], 0.0
    for seed in args.ensemble_seeds:
        again = [f"seed={seed}" if o.startswith("seed=") else o for o in overrides]
        best, train_s = train_run(args.work_dir / "runs" / f"{label}_seed{seed}", again,
                                  checkpoint=args.checkpoint)
        members.append(best)
        seconds += train_s
    return members, seconds


def calibrate(label: str, held_out: str, ckpt: Path, args: argparse.Namespace) -> float:
    """The threshold with the best F1 pooled over the validation micrographs of the *other*
    real datasets, as the shipped model's is chosen (cached as JSON)."""
    import real_transfer

    others = [d for d in DATASETS if d != held_out]
    record = real_transfer.cached_main(
        args.work_dir / "scores", f"{label}_val",
        ["--data-dir", str(args.data_dir), "--ckpt", f"{label}={ckpt}", "--micrographs", "val",
         "--datasets", *others, "--work", str(args.work_dir / "transfer_val")])
    return float(record["pooled_best_threshold"][f"ours: {label}"]["threshold"])


def score(label: str, held_out: str, ckpt: Path, topaz: Path | None,
          args: argparse.Namespace) -> dict[str, Any]:
    """Scores on every micrograph of ``held_out`` (cached as JSON)."""
    import real_transfer

    argv = ["--data-dir", str(args.data_dir), "--ckpt", f"{label}={ckpt}", "--micrographs",
            "all", "--datasets", held_out, "--work", str(args.work_dir / "transfer")]
    if topaz is not None:
        argv += ["--topaz", str(topaz)]
    return real_transfer.cached_main(args.work_dir / "scores", label, argv)["results"][held_out]


#: The extraction settings the calibration for unseen sets tries on the saved probability maps
GRID_MIN_SIZES = (0.05, 0.1, 0.2, 0.3)
GRID_THRESHOLDS = (0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6)


def setting_key(min_size_fraction: float, threshold: float) -> str:
    return f"min_size_fraction={min_size_fraction:g} threshold={threshold:g}"


def grid_tables(folder: Path, paths: list[Path], ckpt: Path
                ) -> dict[float, dict[float, Any]]:
    """The picks of each minimum size of :data:`GRID_MIN_SIZES` and threshold of
    :data:`GRID_THRESHOLDS` (``{size: {threshold: picks}}``), re-extracted from the probability
    maps ``predict.py`` wrote in ``folder`` with ``ckpt``'s other extraction options."""
    import real_transfer

    from cryoparticle.models.segmenter import load_segmenter

    options = dict(load_segmenter(ckpt).inference_facts().get("extraction") or {})
    options.pop("min_size_fraction", None)
    return real_transfer.extraction_grid(folder, paths, options, GRID_THRESHOLDS,
                                         GRID_MIN_SIZES)


def grid_scores(folder: Path, ckpt: Path, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``precision_recall_f1`` (``tp, fp, fn``, P, R, F1) on the micrographs of ``data``
    (:func:`real_transfer.dataset_inputs`) for each setting of :data:`GRID_MIN_SIZES` ×
    :data:`GRID_THRESHOLDS`, re-extracted from the probability maps ``predict.py`` wrote in
    ``folder`` with ``ckpt`` (same diameters and edge margins), borders excluded."""
    from cryoparticle.picking.evaluate import precision_recall_f1

    truth = inside(data["truth"], data["borders"])
    return {setting_key(size, t): precision_recall_f1(inside(picks, data["borders"]), truth,
                                                      data["diameter_px"] / 2)
            for size, tables in grid_tables(folder, data["paths"], ckpt).items()
            for t, picks in tables.items()}


def grid_f1(label: str, held_out: str, ckpt: Path, args: argparse.Namespace) -> dict[str, float]:
    """F1 on every micrograph of ``held_out`` for each setting of the grid
    (:func:`grid_scores` of its scoring run's maps; cached as JSON)."""
    import real_transfer

    def compute() -> dict[str, float]:
        data = real_transfer.dataset_inputs(held_out, args.data_dir, "all",
                                            args.work_dir / "transfer" / "inputs")
        folder = args.work_dir / "transfer" / "picks" / held_out / f"ours_{label}"
        return {key: r["f1"] for key, r in grid_scores(folder, ckpt, data).items()}

    return cached_json(args.work_dir / "scores" / f"{label}_grid.json", compute)


EMPTY_KINDS = ("empiar10017", "white_noise")
"""Micrographs without particles each held-out model picks (``benchmarks/empty_picks.py``'s):
empty ice and white noise. Not the general simulator's, whose contaminants (ice blobs,
aggregates, carbon edges) every picker picks (Topaz's shipped model too)."""


def empty_kind_grid(label: str, ckpt: Path, kind: str, work_dir: Path, n: int, seed: int
                    ) -> dict[str, float]:
    """False picks per 100 particle disc areas for each setting of the grid on ``n`` 1024²
    micrographs of ``kind`` (``benchmarks/empty_picks.py``'s) *without* particles, run through
    ``predict.py`` with ``ckpt`` (every pick kept up to the edge) in ``work_dir/empty`` and
    re-extracted as :func:`grid_f1` does."""
    import empty_picks
    import real_transfer

    paths = empty_picks.write_empty(work_dir / "empty", kind, n, 1024, seed)
    out = work_dir / "empty" / "picks" / label / kind
    _, used, _, _ = real_transfer.run_ours(str(ckpt), {"paths": paths}, out,
                                           ["extraction.border_px=0"], thresholds=())
    grid = {}
    for size, tables in grid_tables(out, paths, ckpt).items():
        counts = empty_picks.count_picks(out, paths, tables, used)
        for t in GRID_THRESHOLDS:
            grid[setting_key(size, t)] = counts["picks_per_100_particle_areas"][f"{t:g}"]
    return grid


def empty_grid(label: str, ckpt: Path, args: argparse.Namespace) -> dict[str, float]:
    """False picks per 100 particle disc areas on micrographs *without* particles, for each
    setting of the grid: :func:`empty_kind_grid` of ``--empty-n`` micrographs of each of
    :data:`EMPTY_KINDS`, averaged over the kinds (cached as JSON). The crowded real sets cannot
    say what a setting picks on empty ice, which a sparse data set is mostly made of."""
    def compute() -> dict[str, float]:
        per_kind = [empty_kind_grid(label, ckpt, kind, args.work_dir, args.empty_n, args.seed)
                    for kind in EMPTY_KINDS]
        return {key: float(np.mean([grid[key] for grid in per_kind])) for key in per_kind[0]}

    return cached_json(args.work_dir / "scores" / f"{label}_empty.json", compute)


def allowed_settings(grids: dict[str, dict[str, float]],
                     empty: dict[str, dict[str, float]] | None, limit: float | None
                     ) -> list[str]:
    """The settings of the grids whose false picks on empty micrographs, averaged over the
    models of ``grids``' sets, are at most ``limit`` per 100 particle areas (all settings
    without ``empty``/``limit``, or when none meets it)."""
    keys = list(next(iter(grids.values())))
    if empty is None or limit is None:
        return keys
    quiet = [k for k in keys if np.mean([empty[name][k] for name in grids]) <= limit]
    return quiet or keys


def best_setting(grids: dict[str, dict[str, float]], keys: list[str] | None = None
                 ) -> tuple[str, float]:
    """The setting (of ``keys``, default all) with the best F1 averaged over the sets (each
    set counts once, whatever its number of particles); ties: the first in grid order."""
    keys = keys or list(next(iter(grids.values())))
    mean = {k: float(np.mean([grid[k] for grid in grids.values()])) for k in keys}
    best = max(keys, key=mean.__getitem__)
    return best, mean[best]


def shipped_setting() -> str | None:
    """The shipped general model's extraction (threshold, minimum region size) as a grid key;
    None when it picks at a threshold relative to each micrograph (its export's
    ``relative_threshold``), which no fixed setting of the grid is."""
    from cryoparticle.models.packaged import export_facts, packaged_checkpoint
    from cryoparticle.models.segmenter import load_segmenter
    from cryoparticle.picking.settings import Extraction

    if float(export_facts(packaged_checkpoint()).get("relative_threshold") or 0) > 0:
        return None
    facts = load_segmenter(packaged_checkpoint()).inference_facts()
    extraction = Extraction.from_config(facts.get("extraction"))  # as predict.py reads it
    return setting_key(extraction.min_size_fraction, float(facts["picking_threshold"]))


def unseen_calibration(grids: dict[str, dict[str, float]], shipped: str | None = None,
                       empty: dict[str, dict[str, float]] | None = None,
                       empty_limit: float | None = None) -> dict[str, Any]:
    """Extraction settings for sets never seen in training: the best on average over the
    held-out sets (what to store in a model for new data), and, to say what that choice is
    worth on a set that took no part in it, each held-out set scored at the setting chosen on
    the *other* held-out sets (nested; needs two sets or more). ``shipped``: a setting (the
    shipped model's) whose F1 on each set is reported too, when the grid holds it. ``empty``
    (:func:`empty_grid` of each set's model) and ``empty_limit``: choose only among the
    settings that pick at most that many false particles per 100 particle areas on empty
    micrographs (:func:`allowed_settings`; nested: by the other sets' models)."""
    chosen, mean = best_setting(grids, allowed_settings(grids, empty, empty_limit))
    out: dict[str, Any] = {"chosen": chosen, "mean_f1": mean,
                           "f1": {name: grid[chosen] for name, grid in grids.items()},
                           "nested": {}}
    if empty is not None:
        out["empty_limit"] = empty_limit
        out["empty_picks_per_100_areas"] = {name: empty[name][chosen] for name in grids}
    if shipped is not None and all(shipped in grid for grid in grids.values()):
        out["shipped"] = {"setting": shipped,
                          "f1": {name: grid[shipped] for name, grid in grids.items()}}
        if empty is not None:
            out["shipped"]["empty_picks_per_100_areas"] = {name: empty[name][shipped]
                                                           for name in grids}
    if len(grids) > 1:
        for name, grid in grids.items():
            others = {k: v for k, v in grids.items() if k != name}
            setting, _ = best_setting(others, allowed_settings(others, empty, empty_limit))
            out["nested"][name] = {"setting": setting, "f1": grid[setting]}
            if empty is not None:
                out["nested"][name]["empty_picks_per_100_areas"] = empty[name][setting]
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| held out | picker | threshold | P | R | F1 | best F1 (at) | AP |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['held_out']} | {r['picker']} | {r['threshold']:.2f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | **{r['f1']:.3f}** | "
                     f"{r['best_f1']:.3f} ({r['best_threshold']:.2f}) | {r['ap']:.3f} |")
    return "\n".join(lines) + "\n"


def calibration_markdown(calibration: dict[str, Any]) -> str:
    shipped = calibration.get("shipped")
    empty = calibration.get("empty_picks_per_100_areas")
    limit = calibration.get("empty_limit")
    lines = [f"Extraction for unseen sets ({calibration['variant']}): best on average over the "
             f"held-out sets `{calibration['chosen']}` (mean F1 {calibration['mean_f1']:.3f})"
             + (f" among the settings with at most {limit:g} false picks per 100 particle "
                "areas on empty micrographs" if empty is not None and limit is not None else "")
             + (f"; the shipped model's `{shipped['setting']}`." if shipped else "."),
             "", "| held out | F1 at it | setting chosen on the other held-out sets | F1 at that |"
             + (" F1 at the shipped setting |" if shipped else "")
             + (" empty-ice picks / 100 areas: chosen, nested" if empty is not None else "")
             + (", shipped |" if empty is not None and shipped else
                " |" if empty is not None else ""),
             "|---|---|---|---|" + ("---|" if shipped else "") + ("---|" if empty else "")]

    def picks(record: dict[str, Any] | None, name: str) -> str:
        values = (record or {}).get("empty_picks_per_100_areas")
        value = values.get(name) if isinstance(values, dict) else values
        return "–" if value is None else f"{value:.2f}"

    for name, f1 in calibration["f1"].items():
        nested = calibration["nested"].get(name)
        lines.append(f"| {name} | {f1:.3f} | "
                     + (f"`{nested['setting']}` | **{nested['f1']:.3f}** |" if nested
                        else "– | – |")
                     + (f" {shipped['f1'][name]:.3f} |" if shipped else "")
                     + (f" {picks(calibration, name)}, {picks(nested, name)}"
                        + (f", {picks(shipped, name)}" if shipped else "") + " |"
                        if empty is not None else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held-out", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--variants", nargs="+", default=["full"], choices=CHOICES,
                        help="simulation variants of benchmarks/sim_ablation.py (default: full)")
    parser.add_argument("--topaz", type=Path, default=None,
                        help="the topaz executable (pip install topaz-em); omitted: not run")
    parser.add_argument("--empty-n", type=int, default=0,
                        help="micrographs without particles of each kind (simulated empty ice, "
                        "white noise) each held-out model picks, and the extraction is then "
                        "chosen under --empty-limit (default 0: none, every setting allowed)")
    parser.add_argument("--empty-limit", type=float, default=1.0,
                        help="choose the extraction among the settings with at most this many "
                        "false picks per 100 particle areas on them (default 1)")
    parser.add_argument("--ensemble-seeds", type=int, nargs="+", default=[],
                        help="measure the ensemble of the --seed training and trainings with "
                        "these seeds (default: none, the --seed model alone)")
    add_training_options(parser, "leave_one_out")
    args = parser.parse_args(argv)
    if args.empty_n < 0 or args.empty_limit < 0:
        parser.error("--empty-n and --empty-limit must be ≥ 0")
    if args.seed in args.ensemble_seeds or len(set(args.ensemble_seeds)) < len(
            args.ensemble_seeds):
        parser.error("--ensemble-seeds must differ from each other and from --seed")
    require_datasets(args.data_dir)
    args.work_dir = args.work_dir.resolve()
    os.environ["CRYOPARTICLE_DATA"] = str(args.data_dir.resolve())
    plan = {d: held_out_overrides(d, args.data_dir) for d in args.held_out}  # checked first
    load_before = load_average()
    rows = []
    grids: dict[str, dict[str, float]] = {}
    empty: dict[str, dict[str, float]] = {}
    for held_out, data_overrides in plan.items():
        for i, variant in enumerate(args.variants):
            label = f"{DATASETS[held_out][0]}_{variant}"
            overrides = ["experiment=general", f"trainer.max_epochs={args.epochs}",
                         f"seed={args.seed}", *data_overrides, *variant_overrides(variant),
                         *args.overrides]
            best, train_s = train_run(args.work_dir / "runs" / label, overrides,
                                      checkpoint=args.checkpoint)
            members, member_s = ensemble_members(label, overrides, args)
            train_s += member_s
            if members:
                label += "_ensemble" + "".join(f"_{seed}" for seed in args.ensemble_seeds)
            run = args.work_dir / "runs" / label
            threshold = calibrate(label, held_out, export(best, run / "exported_val.ckpt",
                                                          members=members), args)
            ckpt = export(best, run / "exported.ckpt", threshold, members)
            results = score(label, held_out, ckpt, args.topaz if i == 0 else None, args)
            if i == 0:
                grids[held_out] = grid_f1(label, held_out, ckpt, args)
                if args.empty_n > 0:
                    empty[held_out] = empty_grid(label, ckpt, args)
            keep = ("threshold", "precision", "recall", "f1", "best_f1", "best_threshold", "ap")
            for picker, r in results.items():
                name = variant if picker.startswith("ours") else picker
                rows.append({"held_out": held_out, "picker": name, "train_minutes":
                             train_s / 60 if picker.startswith("ours") else None,
                             **{k: r[k] for k in keep}})
                print(f"{held_out} {name}: F1 {r['f1']:.3f}, best {r['best_f1']:.3f}, "
                      f"AP {r['ap']:.3f}", flush=True)
    report = {"recipe": {"experiment": "general", "epochs": args.epochs, "seed": args.seed,
                         "ensemble_seeds": args.ensemble_seeds,
                         "checkpoint": args.checkpoint,
                         "variants": {v: variant_overrides(v) for v in args.variants},
                         "extra_overrides": args.overrides,
                         "scoring": "benchmarks/real_transfer.py --micrographs all"},
              "machine": {"load_average_before": load_before}, "rows": rows,
              "unseen_calibration": {"variant": args.variants[0],
                                     "min_size_fractions": list(GRID_MIN_SIZES),
                                     "thresholds": list(GRID_THRESHOLDS),
                                     **unseen_calibration(
                                         grids, shipped_setting(), empty or None,
                                         args.empty_limit if empty else None)}}
    text = markdown(rows) + "\n" + calibration_markdown(report["unseen_calibration"])
    write_report(args.results_dir, args.out, report, text,
                 {"DATA_DIR": args.data_dir, "WORK_DIR": args.work_dir})
    print(text)
    return report


if __name__ == "__main__":
    main()
