"""Run every benchmark that produces a README number, one after the other, and summarise them.

    python benchmarks/run_all.py --quick|--full [--only crf_speed pick_speed ...]
                                 [--results-dir DIR] [--data-dir DIR]
                                 [--topaz PATH] [--aspire-python PATH] [--dry-run]

``--quick``: reduced settings (fewer repeats, sizes, networks, epochs and crops than the
README's tables, the ablation and held-out trainings scored on fewer micrographs, Topaz not run
on the held-out set of ``leave_one_out``; the JSON of each benchmark records its command, so
quick numbers are never mistaken for full ones), meant for about 30 minutes on a 2-core CPU
(the README gives the measured total); results in ``benchmarks/results/quick/`` unless
``--results-dir``; the scripts that cache trainings work in ``benchmarks/work/<name>_quick``,
never in a full run's folder. ``--full``: every script's own defaults
(the README's settings; a GPU is used where the script can use one), results in
``benchmarks/results/``. The peers stay optional: Topaz is compared when ``--topaz`` or a
``topaz`` on the PATH exists, ASPIRE when ``--aspire-python`` is given; otherwise their
comparisons are skipped (``--no-topaz`` / ``--no-aspire``). Benchmarks on real data
(``crf_effect``, ``real_data_cv``, ``real_transfer``, ``contrast_stats``, ``polarity``,
``sim_ablation``, ``leave_one_out``, ``particle_size``, ``relative_threshold``,
``diameter_cues``, ``coverage_weighting``) are skipped when ``--data-dir`` has no EMPIAR-10017
folder. ``quickstart`` times the README's first commands (``--quick``: its training runs 2
epochs instead of the default 10).

Each benchmark runs as its own process (``python benchmarks/<name>.py ...``); a failing one is
reported and the others still run. ``--dry-run`` prints the commands and runs nothing. The
summary (name, status, minutes, results file, headline figure) is printed at the end and
written to ``run_all.json`` in the results folder. Exit status: 1 if any benchmark failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import DATA_DIR_HELP, DEFAULT_DATA_DIR, ROOT, load_average, write_results  # noqa: E402


def _dig(record: dict[str, Any], *keys: Any) -> Any:
    value: Any = record
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        else:
            return None
    return value


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _crf_speed(r: dict[str, Any]) -> str:
    last = _dig(r, "sizes", -1) or {}
    return (f"{last.get('size')}²: ours {_fmt(_dig(last, 'ours', 'seconds'), '.2f')} s, "
            f"speed-up {_fmt(last.get('speedup'), '.1f')}×, "
            f"agreement {_fmt(last.get('agreement'), '.4f')}")


def _pick_speed(r: dict[str, Any]) -> str:
    text = (f"ours {_fmt(_dig(r, 'ours', 's_per_micrograph_median'), '.2f')} s/micrograph, "
            f"{_fmt(_dig(r, 'ours', 'particles_per_micrograph'), '.0f')} picks, F1 "
            f"{_fmt(_dig(r, 'ours', 'accuracy', 'f1'), '.3f')}")
    ratio = _dig(r, "ratio", "vs_extract")
    return text + (f", {ratio:.2f}× topaz extract (F1 "
                   f"{_fmt(_dig(r, 'topaz', 'accuracy', 'f1'), '.3f')})"
                   if ratio is not None else "")


def _simulate_speed(r: dict[str, Any]) -> str:
    mps = _dig(r, "micrographs_4096", "micrographs_per_s")
    cps = _dig(r, "crops_loader", "crops_per_s")
    return f"4096²: {_fmt(mps, '.2f')} micrographs/s, loader {_fmt(cps, '.0f')} crops/s"


def _train_throughput(r: dict[str, Any]) -> str:
    nets = r.get("networks") or {}
    steps = ", ".join(f"{name} {_fmt(_dig(v, 'crops_per_s'), '.0f')}" for name, v in nets.items())
    return (f"crops/s: {steps}; pipeline {_fmt(_dig(r, 'pipeline', 'crops_per_s'), '.0f')}")


def _f1_per_group(r: dict[str, Any], spec: str, label: Callable[[str], str]) -> str:
    """``F1 (picker/picker): group f1/f1, ...`` of ``r["results"][group][picker]["f1"]``."""
    groups = r.get("results") or {}
    parts = [label(group) + " " + "/".join(_fmt(v.get("f1"), spec) for v in pickers.values())
             for group, pickers in groups.items()]
    names = "/".join(next(iter(groups.values()), {}).keys())
    return f"F1 ({names}): " + ", ".join(parts)


def _real_transfer(r: dict[str, Any]) -> str:
    return _f1_per_group(r, ".3f", lambda dataset: dataset.removeprefix("EMPIAR-"))


def _contrast_stats(r: dict[str, Any]) -> str:
    first = next(iter((r.get("summary") or {}).items()), (None, {}))
    return f"{first[0]}: median {_fmt(_dig(first[1], 'quantiles', 'p50'), '+.2f')}"


def _quickstart(r: dict[str, Any]) -> str:
    text = (f"pick {_fmt(_dig(r, 'pick', 'seconds'), '.1f')} s (F1 "
            f"{_fmt(_dig(r, 'pick', 'f1'), '.3f')}), simulate "
            f"{_fmt(_dig(r, 'simulate', 'seconds'), '.1f')} s")
    if "train" in r:
        text += (f", train {_fmt(_dig(r, 'train', 'minutes'), '.1f')} min (test IoU "
                 f"{_fmt(_dig(r, 'train', 'test', 'iou'), '.3f')})")
    return text


def _method_claim(r: dict[str, Any]) -> str:
    return f"all five pixel metrics > 90 %: {_dig(r, 'verdict', 'all five') or 'n/a'}"


def _noise_sweep(r: dict[str, Any]) -> str:
    return _f1_per_group(r, ".2f", lambda snr: f"SNR {snr}:")


def _sim_ablation(r: dict[str, Any]) -> str:
    return "mean best F1: " + ", ".join(f"{row['variant']} {_fmt(row.get('mean_best_f1'), '.3f')}"
                                        for row in r.get("rows") or [])


def _leave_one_out(r: dict[str, Any]) -> str:
    return "held-out F1 (best): " + ", ".join(
        f"{row['held_out']} {row['picker'].split(' ')[0]} {_fmt(row.get('f1'), '.3f')} "
        f"({_fmt(row.get('best_f1'), '.3f')})" for row in r.get("rows") or [])


def _coverage_weighting(r: dict[str, Any]) -> str:
    choice = _dig(r, "summary", "choice") or {}
    shipped = choice.get("shipped") or {}
    at_shipped = shipped.get("f1") or {}
    mean_shipped = (sum(at_shipped.values()) / len(at_shipped)) if at_shipped else None
    return (f"expected F1 over CryoPPP coverages: best `{choice.get('chosen')}` "
            f"{_fmt(choice.get('mean_f1'), '.3f')}, shipped `{shipped.get('setting')}` "
            f"{_fmt(mean_shipped, '.3f')}")


def _crf_effect(r: dict[str, Any]) -> str:
    """Pick F1 without a CRF and with each CRF, first network, first test set."""
    network, results = next(iter((_dig(r, "domains", "synthetic") or {}).items()), (None, {}))
    test_set, by_crf = next(iter((results.get("sets") or {}).items()), (None, {}))
    if not by_crf:
        return "n/a"
    return f"pick F1 ({network}, {test_set}): " + ", ".join(
        f"{crf} {_fmt(m.get('pick_f1'), '.3f')}" for crf, m in by_crf.items())


def _real_data_cv(r: dict[str, Any]) -> str:
    return "CV pick F1: " + ", ".join(
        f"{row['network']} {row['init']} {row['target']} "
        f"{_fmt(_dig(row, 'metrics', 'pick_f1'), '.3f')} (folds {len(row.get('folds') or [])})"
        for row in r.get("rows") or [])


def _particle_size(r: dict[str, Any]) -> str:
    rows = r.get("rows") or []
    modes = list((rows[0].get("modes") or {}) if rows else [])
    return "mean F1 over sets and sizes: " + ", ".join(
        f"{m} {_fmt(sum(row['modes'][m]['f1'] for row in rows) / len(rows), '.3f')}"
        for m in modes)


def _diameter_cues(r: dict[str, Any]) -> str:
    exponents = r.get("size_exponents") or {}
    if not exponents:
        return "no size exponent (one scale)"
    return "size exponent: " + ", ".join(
        f"{cue} {_fmt(exponents[cue]['mean'], '.2f')}"
        for cue in ("estimate", "equivalent@0.25", "log_sigma") if cue in exponents)


def _polarity(r: dict[str, Any]) -> str:
    """F1 on the inverted micrographs with polarity=dark and auto, per set."""
    return "inverted F1 dark → auto: " + ", ".join(
        f"{name} {_fmt(_dig(row, 'runs', 'inverted dark', 'f1'), '.3f')} → "
        f"{_fmt(_dig(row, 'runs', 'inverted auto', 'f1'), '.3f')}"
        for name, row in (r.get("results") or {}).items())


def _relative_threshold(r: dict[str, Any]) -> str:
    """Each family's rule with the best score (own coverage and thinned, on held-out maps)."""
    families = r.get("families") or {}
    return "best score: " + ", ".join(
        f"{f['best_on_average']} {_fmt(f.get('best_score'), '.3f')}"
        for f in families.values() if f.get("best_on_average"))


def _keys(r: dict[str, Any]) -> str:
    return ", ".join(k for k in r if k not in ("machine", "load_before", "load_after"))[:60]


def _empty_picks(r: dict[str, Any]) -> str:
    rows = r.get("rows") or {}
    parts = []
    for name, row in rows.items():
        ours = row.get("predict_picks_per_micrograph")   # as predict.py picked
        if ours is None:
            ours = row["picks_per_micrograph"].get(f"{row['threshold_used']:g}")
        topaz = (row.get("topaz") or {}).get("picks_per_micrograph", {}).get("0")
        parts.append(f"{name} {ours:.0f}" + (f"/{topaz:.0f}" if topaz is not None else ""))
    return "false picks per empty micrograph (ours/Topaz): " + ", ".join(parts)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script: its arguments per mode and its headline figure."""

    name: str
    quick: list[str]
    full: list[str] = field(default_factory=list)
    #: Needs the EMPIAR-10017 data under ``--data-dir``.
    real_data: bool = False
    #: The JSON option of the script (``--json``) and further result files (``--markdown``).
    outputs: tuple[str, ...] = ("--json",)
    headline: Callable[[dict[str, Any]], str] = _keys
    #: The modes in which the script gets ``--topaz`` (when Topaz is given): the optional peer
    #: in the same run. ``pick_speed`` gets ``--no-topaz`` otherwise.
    topaz_modes: tuple[str, ...] = ()


#: real_data_cv's README rows: ``experiment=empiar10017`` as it is (U-Net, refined targets,
#: robust normalisation, 12 epochs, checkpoint by validation pick F1) and the same with discs and
#: a 2 px ignore ring (quick: refined only, 3 epochs, one fold).
_CV_RECIPE = ["--networks", "unet", "--targets", "refined", "ring"]
_CV_QUICK = ["--networks", "unet", "--targets", "refined"]

BOTH = ("quick", "full")

BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("simulate_speed", ["--repeats", "2", "--crops", "10", "--loader-crops", "32"],
              headline=_simulate_speed),
    Benchmark("crf_speed", ["--sizes", "1024", "4096", "--repeats", "3", "--threads", "1",
                            "--workers", "1"],
              ["--sizes", "1024", "2048", "4096", "--repeats", "3", "--threads", "1",
               "--workers", "1", "--train-step", "--train-repeats", "5"],
              headline=_crf_speed),
    Benchmark("pick_speed", ["--n", "1"], headline=_pick_speed, topaz_modes=BOTH),
    Benchmark("train_throughput", ["--networks", "unet", "deeplabv3", "--steps", "3",
                                   "--pipeline-batches", "3"], headline=_train_throughput),
    Benchmark("crf_effect", ["--networks", "unet", "--snrs", "0.1", "--n-test", "2",
                             "--test-size", "512", "--n-real-test", "1", "--epochs", "1",
                             "--real-epochs", "1", "--samples", "64", "--rnn-epochs", "1",
                             "--feature-channels", "1",
                             "--work-dir", "benchmarks/work/crf_effect_quick"],
              real_data=True, outputs=("--json", "--markdown"), headline=_crf_effect),
    Benchmark("real_data_cv", ["--folds", "5", "--only-folds", "0", "--epochs", "3",
                               "--work-dir", "benchmarks/work/real_data_cv_quick", *_CV_QUICK],
              ["--folds", "5", *_CV_RECIPE], real_data=True,
              outputs=("--json", "--markdown"),
              headline=_real_data_cv),
    Benchmark("real_transfer", ["--micrographs", "test"], ["--micrographs", "test"],
              real_data=True, outputs=(), headline=_real_transfer, topaz_modes=BOTH),
    Benchmark("contrast_stats", ["--n", "40"], real_data=True, headline=_contrast_stats),
    Benchmark("polarity", ["--micrographs", "test",
                           "--work-dir", "benchmarks/work/polarity_quick"],
              ["--micrographs", "all"], real_data=True, outputs=(), headline=_polarity),
    Benchmark("quickstart", ["--train-overrides", "trainer.max_epochs=2"],
              headline=_quickstart),
    Benchmark("method_claim", ["--networks", "unet", "--epochs", "1", "--samples", "32",
                               "--rnn-samples", "16", "--n-test", "1", "--test-size", "512",
                               "--work-dir", "benchmarks/work/method_claim_quick"],
              outputs=("--json", "--markdown"), headline=_method_claim),
    Benchmark("noise_sweep", ["--n-train", "2", "--n-val", "1", "--train-size", "256",
                              "--n-test", "1", "--test-size", "256", "--epochs", "1",
                              "--samples", "16", "--snrs", "1", "0.01", "--topaz-epochs", "1",
                              "--topaz-epoch-size", "2",
                              "--work-dir", "benchmarks/work/noise_sweep_quick"],
              ["--epochs", "2", "--samples", "384", "--topaz-epochs", "2",
               "--topaz-epoch-size", "25"],
              outputs=("--json", "--markdown", "--plot"), headline=_noise_sweep,
              topaz_modes=BOTH),
    # quick: no seed repeat, scored on the 3 test micrographs, 256 crops (a smoke run: the
    # README's table needs --full)
    Benchmark("sim_ablation", ["--variants", "full", "no_looks", "--epochs", "1",
                               "--repeat-seeds", "0", "--micrographs", "test",
                               "--work-dir", "benchmarks/work/sim_ablation_quick",
                               "--", "data.train_samples_per_epoch=256"],
              real_data=True, outputs=(), headline=_sim_ablation),
    Benchmark("empty_picks", ["--n", "1", "--size", "512",
                              "--work-dir", "benchmarks/work/empty_picks_quick"],
              outputs=(), headline=_empty_picks, topaz_modes=BOTH),
    Benchmark("leave_one_out", ["--held-out", "EMPIAR-10059", "--epochs", "1",
                                "--work-dir", "benchmarks/work/leave_one_out_quick",
                                "--", "data.train_samples_per_epoch=256"],
              real_data=True, outputs=(), headline=_leave_one_out,
              topaz_modes=("full",)),   # Topaz on the 10 held-out micrographs: 10+ min here
    # after leave_one_out: its held-out models
    Benchmark("particle_size", ["--datasets", "EMPIAR-10059", "--scales", "0.6", "1.6",
                                "--modes", "estimated", "matched",
                                "--loo-work-dir", "benchmarks/work/leave_one_out_quick",
                                "--work-dir", "benchmarks/work/particle_size_quick",
                                "--predict", "threshold=0.125",
                                "extraction.min_size_fraction=0.2"],
              ["--predict", "threshold=0.125", "extraction.min_size_fraction=0.2"],
              real_data=True, outputs=(), headline=_particle_size),
    # after leave_one_out: its held-out models' maps (thinned where it wrote empty maps)
    Benchmark("relative_threshold", ["--datasets", "EMPIAR-10059",
                                     "--loo-work-dir", "benchmarks/work/leave_one_out_quick",
                                     "--work-dir", "benchmarks/work/relative_threshold_quick"],
              ["--loo-work-dir", "benchmarks/work/leave_one_out"],
              real_data=True, outputs=(), headline=_relative_threshold),
    # after particle_size: its estimated runs' probability maps
    Benchmark("diameter_cues", ["--datasets", "EMPIAR-10059", "--scales", "0.6", "1.6",
                                "--particle-size-work-dir",
                                "benchmarks/work/particle_size_quick",
                                "--work-dir", "benchmarks/work/diameter_cues_quick"],
              real_data=True, outputs=(), headline=_diameter_cues),
    # after leave_one_out: its held-out models and their probability maps
    Benchmark("coverage_weighting", ["--datasets", "EMPIAR-10059", "--empty-n", "1",
                                     "--empty-kinds", "empiar10017", "white_noise",
                                     "--choose-by", "empiar10017", "white_noise",
                                     "--loo-work-dir", "benchmarks/work/leave_one_out_quick",
                                     "--work-dir", "benchmarks/work/coverage_weighting_quick"],
              real_data=True, outputs=(), headline=_coverage_weighting),
)
NAMES = tuple(b.name for b in BENCHMARKS)


def has_real_data(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds the EMPIAR-10017 micrographs the real-data benchmarks use."""
    return any((data_dir / "empiar-10017" / "micrographs").glob("*.jpg"))


def command(bench: Benchmark, mode: str, results_dir: Path, data_dir: Path,
            topaz: Path | None, aspire_python: Path | None) -> list[str]:
    """The command line of one benchmark in ``mode`` (``quick`` or ``full``)."""
    args = list(bench.quick if mode == "quick" else bench.full)
    passed_on: list[str] = []    # after "--": the script hands them to train.py, last
    if "--" in args:
        args, passed_on = args[:args.index("--")], args[args.index("--"):]
    cmd = [sys.executable, str(HERE / f"{bench.name}.py"), *args]
    suffix = {"--json": ".json", "--markdown": ".md", "--plot": ".png"}
    for option in bench.outputs:
        cmd += [option, str(results_dir / f"{bench.name}{suffix[option]}")]
    peer = topaz if mode in bench.topaz_modes else None
    if bench.name == "pick_speed":
        cmd += ["--data-dir", str(data_dir)]
        cmd += ["--topaz", str(peer)] if peer is not None else ["--no-topaz"]
    elif bench.name == "simulate_speed":
        cmd += (["--aspire-python", str(aspire_python)] if aspire_python is not None
                else ["--no-aspire"])
    elif bench.name in ("crf_effect", "real_data_cv", "contrast_stats"):
        cmd += ["--data-dir", str(data_dir)]
    elif bench.name in ("real_transfer", "sim_ablation", "leave_one_out", "particle_size",
                        "diameter_cues", "coverage_weighting", "relative_threshold",
                        "polarity"):
        cmd += ["--data-dir", str(data_dir), "--results-dir", str(results_dir),
                "--out", bench.name]
    elif bench.name == "empty_picks":
        cmd += ["--results-dir", str(results_dir), "--out", bench.name]
    elif bench.name == "train_throughput" and mode == "full":
        import torch

        cmd += ["--device", "cuda" if torch.cuda.is_available() else "cpu"]
    if peer is not None and bench.name != "pick_speed":
        cmd += ["--topaz", str(peer)]   # the optional peer in the same run
    return cmd + passed_on


def plan(args: argparse.Namespace) -> list[tuple[Benchmark, list[str] | None, str]]:
    """``(benchmark, command or None, reason skipped)`` for each selected benchmark."""
    mode = "quick" if args.quick else "full"
    real = has_real_data(args.data_dir)
    topaz = args.topaz
    if topaz is None and shutil.which("topaz"):
        topaz = Path(shutil.which("topaz"))  # type: ignore[arg-type]
    if topaz is not None and not Path(topaz).exists():
        topaz = None
    rows = []
    for bench in BENCHMARKS:
        if args.only and bench.name not in args.only:
            continue
        if bench.real_data and not real:
            rows.append((bench, None, f"no EMPIAR-10017 data under {args.data_dir}"))
            continue
        rows.append((bench, command(bench, mode, args.results_dir, args.data_dir, topaz,
                                    args.aspire_python), ""))
    return rows


def summary_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the runs."""
    header = ("benchmark", "status", "min", "results", "headline")
    lines = [[r["name"], r["status"], _fmt(r.get("minutes"), ".1f"), r.get("json") or "",
              r.get("headline") or r.get("reason") or ""] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    out = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true",
                      help="reduced settings (meant for ~30 min on a 2-core CPU; the README "
                           "gives the measured total)")
    mode.add_argument("--full", action="store_true", help="the README's settings (GPU)")
    p.add_argument("--only", nargs="+", choices=NAMES, default=None, metavar="NAME",
                   help=f"run only these ({', '.join(NAMES)})")
    p.add_argument("--results-dir", type=Path, default=None,
                   help="default: benchmarks/results/quick (--quick), benchmarks/results (--full)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=DATA_DIR_HELP)
    p.add_argument("--topaz", type=Path, default=None, help="topaz executable (optional peer)")
    p.add_argument("--aspire-python", type=Path, default=None,
                   help="python of a venv with ASPIRE (optional peer)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    if args.results_dir is None:
        args.results_dir = HERE / "results" / ("quick" if args.quick else "")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[dict[str, Any]] = []
    start, load_before = time.perf_counter(), load_average()
    for bench, cmd, reason in plan(args):
        json_path = args.results_dir / f"{bench.name}.json"
        if cmd is None:
            print(f"skip {bench.name}: {reason}", flush=True)
            rows.append({"name": bench.name, "status": "skipped", "reason": reason})
            continue
        shown = " ".join(cmd[1:]).replace(str(ROOT) + "/", "")
        if args.dry_run:
            print(f"{bench.name}: python {shown}", flush=True)
            continue
        args.results_dir.mkdir(parents=True, exist_ok=True)
        print(f"== {bench.name}: python {shown}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        row: dict[str, Any] = {"name": bench.name, "status": "ok" if rc == 0 else f"failed ({rc})",
                               "minutes": (time.perf_counter() - t0) / 60, "command": shown,
                               "json": str(json_path.relative_to(ROOT)
                                           if json_path.is_relative_to(ROOT) else json_path)}
        if rc == 0 and json_path.exists():
            try:
                row["headline"] = bench.headline(json.loads(json_path.read_text()))
            except (ValueError, TypeError, KeyError) as err:
                row["headline"] = f"(unreadable results: {err})"
        rows.append(row)
    if args.dry_run:
        return 0
    total, load_after = (time.perf_counter() - start) / 60, load_average()
    print()
    print(summary_table(rows))
    print(f"total {total:.1f} min (load average before {load_before}, after "
          f"{load_after}, {os.cpu_count()} CPUs)")
    write_results(args.results_dir / "run_all.json",
                  {"mode": "quick" if args.quick else "full", "total_minutes": total,
                   "cpu_count": os.cpu_count(), "load_before": load_before,
                   "load_after": load_after, "runs": rows},
                  {"DATA_DIR": args.data_dir})
    return int(any(r["status"].startswith("failed") for r in rows))


if __name__ == "__main__":
    sys.exit(main())
