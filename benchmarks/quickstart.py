"""The README's first commands, timed as a user runs them, with the quality of what they produce.

    python benchmarks/quickstart.py [--work-dir benchmarks/work/quickstart] [--skip-train]
                                    [--train-overrides trainer.max_epochs=2 ...]
                                    [--json benchmarks/results/quickstart.json]

1. **Pick** (README command 1): ``python predict.py input=examples/empiar10017_example.mrc
   output_dir=OUT write_overlay=true`` with the packaged general model — seconds of the whole
   process (start-up included), the number of picks, and their precision/recall/F1 against the
   example's expert picks by the README's own check, ``python -m cryoparticle.picking.evaluate
   --picks OUT --truth examples/truth``.
2. **Simulate** (command 2, first half): ``python -m cryoparticle.simulate out_dir=OUT
   n_micrographs=10`` — seconds.
3. **Train** (command 2, second half, skipped by ``--skip-train``): ``python train.py`` with
   the embedded default (plus ``--train-overrides``; the quick mode of ``run_all.py`` trains
   fewer epochs) — minutes, and the test metrics the run reports (particle IoU, F1, precision,
   recall of the best checkpoint on the simulated test micrographs).

Each command runs in a fresh output folder under ``--work-dir``; the JSON records every command,
the machine and its load average.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import ROOT, load_average, write_results  # noqa: E402

EXAMPLE = ROOT / "examples" / "empiar10017_example.mrc"
EXAMPLE_TRUTH = ROOT / "examples" / "truth"


def timed(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` from the repository root, its output to ``log``; its wall-clock seconds.
    A failing command stops the benchmark with the log's name."""
    print("  $", " ".join(cmd[1:] if cmd[0] == sys.executable else cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"command failed (exit {result.returncode}); see {log}")
    return seconds


def fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def test_metrics(run_dir: Path) -> dict[str, float]:
    """The ``test/*`` metrics of a ``train.py`` run, from its CSV logger's ``metrics.csv``."""
    found: dict[str, float] = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                for key, value in row.items():
                    if key and key.startswith("test/") and value not in ("", None):
                        found[key.removeprefix("test/")] = float(value)
    if not found:
        sys.exit(f"{run_dir}: no test/* metrics in csv/version_*/metrics.csv")
    return found


def pick(work: Path) -> dict[str, Any]:
    out = fresh(work / "picks")
    cmd = [sys.executable, "predict.py", f"input={EXAMPLE.relative_to(ROOT)}",
           f"output_dir={out}", "write_overlay=true"]
    seconds = timed(cmd, work / "predict.log")
    report = work / "evaluate.json"
    eval_cmd = [sys.executable, "-m", "cryoparticle.picking.evaluate", "--picks", str(out),
                "--truth", str(EXAMPLE_TRUTH.relative_to(ROOT)), "--json", str(report)]
    timed(eval_cmd, work / "evaluate.log")
    pooled = json.loads(report.read_text())["pooled"]
    written = sorted(p.name for p in out.iterdir())
    return {"command": cmd, "evaluate_command": eval_cmd, "seconds": seconds,
            "files": written, "picks": int(pooled["n_picks"]), "truth": int(pooled["n_truth"]),
            "precision": pooled["precision"], "recall": pooled["recall"], "f1": pooled["f1"]}


def simulate(work: Path, n: int) -> dict[str, Any]:
    out = fresh(work / "simulated")
    cmd = [sys.executable, "-m", "cryoparticle.simulate", f"out_dir={out}", f"n_micrographs={n}"]
    seconds = timed(cmd, work / "simulate.log")
    return {"command": cmd, "seconds": seconds,
            "micrographs": len(list(out.glob("*/*.mrc")))}


def train(work: Path, overrides: list[str]) -> dict[str, Any]:
    run_dir = fresh(work / "train")
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", "logger=csv", *overrides]
    seconds = timed(cmd, work / "train.log")
    return {"command": cmd, "seconds": seconds, "minutes": seconds / 60.0,
            "test": test_metrics(run_dir)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path,
                        default=ROOT / "benchmarks" / "work" / "quickstart")
    parser.add_argument("--n-micrographs", type=int, default=10,
                        help="micrographs of the simulate command (the README's 10)")
    parser.add_argument("--skip-train", action="store_true", help="time pick and simulate only")
    parser.add_argument("--train-overrides", nargs="*", default=[],
                        help="Hydra overrides added to `python train.py` (default: none)")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "benchmarks" / "results" / "quickstart.json")
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    import torch

    record: dict[str, Any] = {
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "load_before": load_average()}
    print("pick (README command 1)", flush=True)
    record["pick"] = pick(work)
    p = record["pick"]
    print(f"  {p['seconds']:.1f} s, {p['picks']} picks, P {p['precision']:.3f} "
          f"R {p['recall']:.3f} F1 {p['f1']:.3f} against {p['truth']} expert picks", flush=True)
    print("simulate (README command 2)", flush=True)
    record["simulate"] = simulate(work, args.n_micrographs)
    print(f"  {record['simulate']['seconds']:.1f} s for "
          f"{record['simulate']['micrographs']} micrographs", flush=True)
    if not args.skip_train:
        print("train (README command 2)", flush=True)
        record["train"] = train(work, args.train_overrides)
        t = record["train"]
        print(f"  {t['minutes']:.1f} min, test IoU {t['test'].get('iou', float('nan')):.3f} "
              f"F1 {t['test'].get('f1', float('nan')):.3f}", flush=True)
    record["load_after"] = load_average()
    write_results(args.json, record, {"WORK_DIR": work})
    print(f"wrote {args.json}")
    return record


if __name__ == "__main__":
    main()
