"""What each ingredient of the general simulation buys on real micrographs: an ablation.

    python benchmarks/sim_ablation.py [--data-dir DIR] [--variants full no_looks ...]
        [--epochs 8] [--seed 12345] [--repeat-seeds 1] [--repeat full calibrated_contrast ...]
        [--micrographs all|test]
        [--work-dir benchmarks/work/sim_ablation] [--out sim_ablation]
        [--results-dir benchmarks/results]

Every variant trains the same simulation-only picker (``experiment=general`` with the real
source switched off: ``data.weights.real=0 data.eval_sources=[sim]``, 192² crops, U-Net
ResNet-18, checkpoint and threshold chosen on simulated validation micrographs only), with one
ingredient of ``conf/simulator/general.yaml`` removed (or, for ``calibrated_contrast``, one
that was taken out of it added back), and is scored zero-shot on every real
micrograph of the shared sets (EMPIAR-10017, -10059, -10947; ``--micrographs test``: only
``data=general``'s test micrograph of each, the quick run's setting) exactly as
``benchmarks/real_transfer.py`` scores pickers (Hungarian matching within half a diameter,
pooled per dataset): F1 at the stored threshold, best F1 over thresholds, AP. No real pixel
is seen in training or model selection. ``--repeat-seeds N`` retrains the full mix (and the
variants named by ``--repeat``) with N other seeds: the spread between the full mix's seeds is
the noise floor the differences must clear.

Runs are cached in ``--work-dir`` (a finished training has ``DONE``, a scored variant its JSON):
a rerun resumes. Writes ``<results-dir>/<out>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_training_options, load_average, require_datasets,  # noqa: E402
                     train_run, write_report)


SIM = "data.sources.sim.simulator"
BASE = ["experiment=general", "data.weights.real=0", "data.eval_sources=[sim]",
        "data.crop_size=192"]

#: name -> (what is removed, overrides that remove it from conf/simulator/general.yaml)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "full": ("nothing: conf/simulator/general.yaml as shipped", []),
    "no_looks": ("preprocessing looks (denoise, contrast stretch/CLAHE, 8-bit, JPEG, binning)",
                 [f"{SIM}.look.denoise.probabilities="
                  "{none: 1.0, gaussian: 0.0, wiener: 0.0, learned: 0.0}",
                  f"{SIM}.look.contrast.probabilities="
                  "{none: 1.0, clip: 0.0, equalise: 0.0, clahe: 0.0}",
                  f"{SIM}.look.quantise.probability=0.0",
                  f"{SIM}.look.upsample_factors=[1]",
                  f"{SIM}.look.upsample_probabilities=[1.0]"]),
    "fixed_snr": ("the SNR range (0.005-0.5 log-uniform -> 0.1)", [f"{SIM}.noise.snr=0.1"]),
    "one_protein": ("apoferritin and random blobs (beta-galactosidase only)",
                    [f"{SIM}.volume.species="
                     "[{source: default, particle_diameter_a: 190.0, weight: 1.0}]"]),
    "white_noise": ("coloured noise and ice gradients (detector MTF, 1/f background)",
                    [f"{SIM}.noise.mtf_at_nyquist=1.0", f"{SIM}.noise.pink_fraction=0.0",
                     f"{SIM}.noise.ice_gradient=0.0"]),
    "no_crowding": ("crowding and aggregation (coverage 3-60 % -> 475-950 particles/um²)",
                    [f"{SIM}.particles.coverage=null",
                     f"{SIM}.particles.aggregation.probability=0.0"]),
    "fixed_size": ("pixel-size jitter (±30 % particle size in pixels)",
                   [f"{SIM}.pixel_size_scale=1.0"]),
}
#: name -> (what is added, overrides that add it): ingredients the mix no longer has
ADDED: dict[str, tuple[str, list[str]]] = {
    "calibrated_contrast": (
        "(added) the contrast calibration: low-frequency gain -0.2-0.4, 5 % inverted "
        "(in the mix until the ablation showed it hurts)",
        [f"++{SIM}.contrast.low_frequency_gain=[-0.2,0.4]",
         f"++{SIM}.contrast.low_frequency_cutoff_diameters=0.5",
         f"++{SIM}.contrast.flip_probability=0.05"]),
}
ALL_REMOVED = "all_removed"
CHOICES = [*VARIANTS, *ADDED, ALL_REMOVED]
_SINGLE = {**VARIANTS, **ADDED}


def variant_overrides(name: str) -> list[str]:
    """The overrides of a variant; ``all_removed`` = every ingredient removed at once."""
    if name == ALL_REMOVED:
        return [o for v in VARIANTS.values() for o in v[1]]
    return _SINGLE[name][1]


def plan_runs(variants: list[str], seed: int, repeat: list[str], repeat_seeds: int
              ) -> list[tuple[str, str, int]]:
    """``(label, variant, seed)`` of every training: each variant with ``seed``, then each
    ``repeat`` variant with the ``repeat_seeds`` following seeds (label ``VARIANT_seedS``)."""
    runs = [(v, v, seed) for v in variants]
    runs += [(f"{v}_seed{seed + i}", v, seed + i) for v in repeat
             for i in range(1, repeat_seeds + 1)]
    return runs


def score_variant(label: str, ckpt: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Zero-shot scores of one checkpoint on the real micrographs ``args.micrographs`` (cached
    as JSON, one file per selection)."""
    import real_transfer

    cache = label if args.micrographs == "all" else f"{label}_{args.micrographs}"
    return real_transfer.cached_main(
        args.work_dir / "scores", cache,
        ["--data-dir", str(args.data_dir), "--ckpt", f"{label}={ckpt}",
         "--micrographs", args.micrographs, "--work", str(args.work_dir / "transfer")])["results"]


def row(label: str, removed: str, results: dict[str, Any], train_s: float) -> dict[str, Any]:
    per = {ds: r[f"ours: {label}"] for ds, r in results.items()}
    keep = ("f1", "precision", "recall", "best_f1", "best_threshold", "ap", "threshold")
    return {"variant": label, "removed": removed, "train_minutes": train_s / 60,
            "datasets": {ds: {k: v[k] for k in keep} for ds, v in per.items()},
            "mean_f1": float(np.mean([v["f1"] for v in per.values()])),
            "mean_best_f1": float(np.mean([v["best_f1"] for v in per.values()]))}


def markdown(rows: list[dict[str, Any]], floor: float | None) -> str:
    datasets = list(rows[0]["datasets"])
    full = next((r for r in rows if r["variant"] == "full"), None)
    head = ("| removed (or added) | " + " | ".join(f"{d} F1 (best)" for d in datasets)
            + " | mean F1 | mean best F1 | Δ mean best F1 vs full |")
    lines = [head, "|" + "---|" * (len(datasets) + 4)]
    for r in rows:
        cells = [f"{v['f1']:.3f} ({v['best_f1']:.3f})" for v in r["datasets"].values()]
        delta = "–" if full is None or r is full else \
            f"{r['mean_best_f1'] - full['mean_best_f1']:+.3f}"
        lines.append(f"| {r['variant']}: {r['removed']} | " + " | ".join(cells)
                     + f" | {r['mean_f1']:.3f} | **{r['mean_best_f1']:.3f}** | {delta} |")
    if floor is not None:
        lines.append(f"\nSeed-to-seed spread of the full mix (mean best F1, max − min): "
                     f"{floor:.3f}. Smaller differences are noise.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=CHOICES, choices=CHOICES)
    parser.add_argument("--repeat-seeds", type=int, default=1, metavar="N",
                        help="retrain the --repeat variants with N more seeds (the noise floor)")
    parser.add_argument("--repeat", nargs="+", default=["full"],
                        choices=CHOICES, metavar="VARIANT",
                        help="the variants --repeat-seeds retrains (default: full)")
    parser.add_argument("--micrographs", choices=["all", "test"], default="all",
                        help="score on every real micrograph, or on data=general's test "
                             "micrograph of each set (faster, noisier)")
    add_training_options(parser, "sim_ablation")
    args = parser.parse_args(argv)
    require_datasets(args.data_dir)
    args.work_dir = args.work_dir.resolve()
    load_before = load_average()
    runs = plan_runs(args.variants, args.seed, args.repeat, args.repeat_seeds)
    rows = []
    for label, variant, seed in runs:
        overrides = [*BASE, f"trainer.max_epochs={args.epochs}", f"seed={seed}",
                     *variant_overrides(variant), *args.overrides]
        ckpt, train_s = train_run(args.work_dir / "runs" / label, overrides,
                                  checkpoint=args.checkpoint)
        removed = ("every ingredient below" if variant == ALL_REMOVED
                   else _SINGLE[variant][0])
        removed += "" if seed == args.seed else f", seed {seed}"
        rows.append(row(label, removed, score_variant(label, ckpt, args), train_s))
        print(f"{label}: mean F1 {rows[-1]['mean_f1']:.3f}, "
              f"mean best F1 {rows[-1]['mean_best_f1']:.3f}", flush=True)
    fulls = [r["mean_best_f1"] for r, (_, variant, _) in zip(rows, runs) if variant == "full"]
    floor = float(max(fulls) - min(fulls)) if len(fulls) > 1 else None
    report = {"recipe": {"base": BASE, "epochs": args.epochs, "seed": args.seed,
                         "checkpoint": args.checkpoint,
                         "extra_overrides": args.overrides,
                         "scoring": "benchmarks/real_transfer.py --micrographs "
                                    + args.micrographs},
              "variants": {v: variant_overrides(v) for v in args.variants},
              "seed_spread_mean_best_f1": floor,
              "machine": {"load_average_before": load_before}, "rows": rows}
    text = markdown(rows, floor)
    write_report(args.results_dir, args.out, report, text,
                 {"DATA_DIR": args.data_dir, "WORK_DIR": args.work_dir})
    print(text)
    return report


if __name__ == "__main__":
    main()
