"""How fast does ``predict.py`` pick a 4096² micrograph on CPU, and in how much memory? And Topaz?

    python benchmarks/pick_speed.py [--data-dir DIR | --micrographs 'GLOB'] [--n 3]
                                    [--micrograph-pixel-size-a 1.77] [--ckpt CKPT]
                                    [--threads N] [--workers 1] [--work-dir DIR]
                                    [--topaz topaz_venv/bin/topaz | --no-topaz]
                                    [--json benchmarks/results/pick_speed.json]

Micrographs: ``--micrographs`` (default: the EMPIAR-10017 4096² JPGs under ``--data-dir``,
``DATA_DIR/empiar-10017/micrographs/*.jpg``, 1.77 Å/px, if present; else ``--n`` simulated
4096² micrographs at 1.77 Å/px). The first ``--n`` are converted once (not timed) to float32
MRC with the pixel size in the header, so that both pickers read the same files (Topaz's own JPEG reader fails on these files).

Checkpoint: ``--ckpt``, else a quick one is trained first (not timed) with the standard
network (U-Net, ResNet-18 encoder, 512-px inference tiles overlapping by 32) at 7.08 Å/px::

    python train.py debug=tiny print_config=false data.crop_size=256 model.tile_size=512 \\
        model.tile_overlap=32 data.train_samples_per_epoch=96 data.batch_size=8 \\
        trainer.max_epochs=3 data.eval_micrograph_size=256 test=false logger=csv \\
        hydra.run.dir=WORK/train

Ours, end to end (read → bin to the checkpoint's pixel size → segment → extract → write STAR,
BOX and CSV): ``python predict.py ... trainer.accelerator=cpu num_threads=N num_workers=W`` in
a subprocess; reported: the process's wall time per micrograph (start-up included), the steady
state per micrograph from its summary (the predict loop's wall time / micrographs), the mean
time of each stage, and the peak memory: the largest process's peak RSS
(``getrusage(RUSAGE_CHILDREN)``, exact) and the peak memory of the whole process tree, the
DataLoader workers included, sampled from ``/proc`` every 20 ms as the sum of the processes'
PSS (proportional set size: pages shared by forked workers are counted once, which a sum of
RSS would count in every process).

Topaz (``pip install topaz-em`` into its own venv, see the README), the same micrographs:
``topaz preprocess -s 4 -d -1 -j N`` (downsample 4× to 7.08 Å/px and GMM-normalise), then
``topaz extract -m resnet16_u64 -r 14 -x 4 -d -1 -j N`` (its shipped pretrained model,
radius 14 px ≈ the 190 Å particle at 7.08 Å/px, coordinates scaled back to the micrograph),
timed separately; ratio = ours / Topaz per micrograph (targets: ≤ 0.5 against ``topaz
extract`` alone, peak RSS ≤ 2 GB).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from _common import DATA_DIR_HELP, DEFAULT_DATA_DIR, write_results  # noqa: E402

EMPIAR_PIXEL_SIZE_A = 1.77
TARGET_RATIO = 0.5
TARGET_PEAK_RSS_GB = 2.0
TOPAZ_SCALE = 4          # 1.77 Å/px × 4 = 7.08 Å/px
TOPAZ_RADIUS_PX = 14     # ≈ 190 Å / 7.08 Å/px / 2
QUICK_TRAIN = ["debug=tiny", "print_config=false", "data.crop_size=256",
               "model.tile_size=512", "model.tile_overlap=32",
               "data.train_samples_per_epoch=96", "data.batch_size=8", "trainer.max_epochs=3",
               "data.eval_micrograph_size=256", "test=false", "logger=csv"]


def load() -> dict[str, Any]:
    one, five, fifteen = os.getloadavg()
    return {"loadavg_1_5_15": [round(one, 2), round(five, 2), round(fifteen, 2)],
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def machine(threads: int) -> dict[str, Any]:
    import numpy as np
    import torch

    return {"cpu_count": os.cpu_count(), "threads": threads,
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__}


# ------------------------------------------------------------------------------ measuring


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                out += [int(c) for c in handle.read().split()]
    except OSError:
        pass
    return out


def _memory_bytes(pid: int) -> int:
    """PSS of ``pid`` (``/proc/PID/smaps_rollup``), else its RSS; 0 when it is gone."""
    for name, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(name) as handle:
                for line in handle:
                    if line.startswith(key):
                        return int(line.split()[1]) * 1024
        except OSError:
            continue
    return 0


def tree_memory(pid: int) -> int:
    """Memory (PSS) summed over ``pid`` and all its descendants (bytes, from /proc)."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _memory_bytes(p)
        stack += _children(p)
    return total


def measured(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; its wall time, exit code, output tail, the peak RSS of its largest process
    (``os.wait4``: the child's own peak or its largest waited-for descendant's, exact) and
    the peak PSS summed over its whole process tree (sampled)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak, output = [0], []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_memory(proc.pid))
            done.wait(0.02)

    threads = [threading.Thread(target=sample, daemon=True),
               threading.Thread(target=lambda: output.append(proc.stdout.read()), daemon=True)]
    for thread in threads:
        thread.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    for thread in threads:
        thread.join()
    return {"cmd": cmd, "rc": proc.returncode, "wall_s": wall,
            "peak_rss_largest_process_gb": usage.ru_maxrss * 1024 / 1e9,  # KiB on Linux
            "peak_pss_tree_gb": peak[0] / 1e9, "output_tail": "".join(output)[-3000:]}


# ------------------------------------------------------------------------------ inputs


def prepare_micrographs(pattern: str, n: int, pixel_size_a: float | None, work: Path
                        ) -> tuple[list[Path], dict[str, Any]]:
    """``n`` micrographs as float32 MRC (pixel size in the header) in ``work/mrc``."""
    import numpy as np

    from cryoparticle.io.mrc import read_micrograph, write_mrc

    folder = work / "mrc"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    sources = sorted(glob.glob(pattern))[:n]
    info: dict[str, Any] = {"pattern": pattern}
    if sources:
        info["source"] = "files"
        out = []
        for source in sources:
            image, header_px = read_micrograph(source)
            px = pixel_size_a or header_px or EMPIAR_PIXEL_SIZE_A
            path = folder / f"{Path(source).stem}.mrc"
            write_mrc(path, image, px)
            out.append(path)
        info.update(files=[str(s) for s in sources], shape=list(image.shape), pixel_size_a=px)
        return out, info
    from cryoparticle.config import simulator_config
    from cryoparticle.simulate.micrograph import MicrographSimulator

    px = pixel_size_a or EMPIAR_PIXEL_SIZE_A
    sim = MicrographSimulator(simulator_config(overrides=[f"pixel_size_a={px}"]))
    out = []
    for i in range(n):
        mic = sim.simulate((2024, i), 4096, name=f"sim_{i:03d}")
        path = folder / f"sim_{i:03d}.mrc"
        write_mrc(path, np.asarray(mic.image, dtype=np.float32), px)
        out.append(path)
    info.update(source="simulated", shape=[4096, 4096], pixel_size_a=px)
    return out, info


def quick_checkpoint(work: Path) -> Path:
    run_dir = work / "train"
    cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", *QUICK_TRAIN]
    print("training a quick checkpoint:", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(f"training failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    found = sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    if not found:
        sys.exit(f"training wrote no checkpoint in {run_dir}")
    return found[-1]


def checkpoint_facts(ckpt: Path) -> dict[str, Any]:
    """The network, pixel size, tiling and threshold the checkpoint carries."""
    import torch

    facts = torch.load(ckpt, map_location="cpu", weights_only=True).get("cryoparticle") or {}
    return {k: facts.get(k) for k in ("network", "pixel_size_a", "particle_diameter_a",
                                      "tile_size", "tile_overlap", "picking_threshold")}


# ------------------------------------------------------------------------------ pickers


def run_ours(ckpt: Path, mics: list[Path], work: Path, threads: int, workers: int
             ) -> dict[str, Any]:
    out = work / "ours"
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, str(ROOT / "predict.py"), f"ckpt_path={ckpt}",
           f"input={mics[0].parent}", f"output_dir={out}", "trainer.accelerator=cpu",
           f"num_threads={threads}", f"num_workers={workers}", "progress_bar=false"]
    result = measured(cmd, work, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if result["rc"] != 0:
        sys.exit(f"predict.py failed (exit {result['rc']}):\n{result['output_tail']}")
    summary = json.loads((out / "predict_summary.json").read_text())
    per = summary["micrographs"]
    n = len(mics)
    stages = {k: sum(m[k] for m in per) / n for k in ("read_s", "segment_s", "extract_s",
                                                      "write_s", "total_s")}
    return {**result, "n": n, "s_per_micrograph_process": result["wall_s"] / n,
            "s_per_micrograph_steady": summary["wall_s"] / n, "stages_s": stages,
            "particles_per_micrograph": summary["particles_per_micrograph"],
            "threshold": summary["threshold"], "bin_factor": per[0]["bin_factor"]}


def run_topaz(topaz: Path, mics: list[Path], work: Path, threads: int) -> dict[str, Any]:
    pre, picks = work / "topaz_pre", work / "topaz_picks.txt"
    if pre.exists():
        shutil.rmtree(pre)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    n = len(mics)
    preprocess = measured([str(topaz), "preprocess", "-s", str(TOPAZ_SCALE), "-d", "-1",
                           "-j", str(threads), "-o", str(pre), *map(str, mics)], work, env)
    if preprocess["rc"] != 0:
        sys.exit(f"topaz preprocess failed:\n{preprocess['output_tail']}")
    extract = measured([str(topaz), "extract", "-m", "resnet16_u64", "-r", str(TOPAZ_RADIUS_PX),
                        "-x", str(TOPAZ_SCALE), "-d", "-1", "-j", str(threads), "-o", str(picks),
                        *map(str, sorted(pre.glob("*.mrc")))], work, env)
    if extract["rc"] != 0:
        sys.exit(f"topaz extract failed:\n{extract['output_tail']}")
    n_picks = max(0, len(picks.read_text().splitlines()) - 1)
    return {"preprocess": {**preprocess, "s_per_micrograph": preprocess["wall_s"] / n},
            "extract": {**extract, "s_per_micrograph": extract["wall_s"] / n},
            "s_per_micrograph_total": (preprocess["wall_s"] + extract["wall_s"]) / n,
            "particles_per_micrograph": n_picks / n,
            "settings": {"scale": TOPAZ_SCALE, "radius_px": TOPAZ_RADIUS_PX,
                         "model": "resnet16_u64", "threshold": -6}}


def topaz_version(topaz: Path) -> str | None:
    try:
        result = subprocess.run([str(topaz), "--version"], capture_output=True, text=True,
                                check=False)
    except OSError:
        return None
    return (result.stdout or result.stderr).strip() or None


# ------------------------------------------------------------------------------ report


def _gb(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def print_table(record: dict[str, Any]) -> None:
    ours, topaz = record["ours"], record.get("topaz")
    rows = [("ours: s / micrograph, steady state", f"{ours['s_per_micrograph_steady']:.2f}"),
            ("ours: s / micrograph, process (start-up incl.)",
             f"{ours['s_per_micrograph_process']:.2f}"),
            *[(f"ours: mean {k[:-2]} s", f"{v:.2f}") for k, v in ours["stages_s"].items()],
            ("ours: peak RSS, largest process (GB)", _gb(ours["peak_rss_largest_process_gb"])),
            ("ours: peak PSS, process tree (GB)", _gb(ours["peak_pss_tree_gb"])),
            ("ours: particles / micrograph", f"{ours['particles_per_micrograph']:.0f}")]
    if topaz:
        rows += [("topaz preprocess: s / micrograph",
                  f"{topaz['preprocess']['s_per_micrograph']:.2f}"),
                 ("topaz extract: s / micrograph", f"{topaz['extract']['s_per_micrograph']:.2f}"),
                 ("topaz extract: peak PSS, tree (GB)",
                  _gb(topaz["extract"]["peak_pss_tree_gb"])),
                 ("topaz: particles / micrograph", f"{topaz['particles_per_micrograph']:.0f}"),
                 ("ratio ours / topaz extract (process)",
                  f"{record['ratio']['process_vs_extract']:.3f}"),
                 ("ratio ours / topaz preprocess+extract (process)",
                  f"{record['ratio']['process_vs_preprocess_extract']:.3f}"),
                 ("ratio ours (steady) / topaz extract",
                  f"{record['ratio']['steady_vs_extract']:.3f}")]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"pick_speed: {record['micrographs']['n']} × "
                            f"{record['micrographs']['shape']} on CPU "
                            f"({record['machine']['threads']} threads)")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for key, value in rows:
            table.add_row(key, value)
        Console().print(table)
    except ImportError:  # pragma: no cover
        for key, value in rows:
            print(f"{key:55s} {value:>10s}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=DATA_DIR_HELP)
    parser.add_argument("--micrographs", default=None,
                        help="glob of real micrographs (default: the EMPIAR-10017 JPGs of "
                             "--data-dir if present; else simulated 4096² micrographs)")
    parser.add_argument("--n", type=int, default=3, help="micrographs to pick")
    parser.add_argument("--micrograph-pixel-size-a", type=float, default=None,
                        help="Å/px of --micrographs (default: header, else 1.77)")
    parser.add_argument("--ckpt", type=Path, default=None, help="checkpoint (default: train one)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workers", type=int, default=1, help="predict.py num_workers")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--topaz", type=Path, default=None,
                        help="the topaz executable (default: topaz on the PATH)")
    parser.add_argument("--no-topaz", action="store_true")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" /
                        "pick_speed.json")
    args = parser.parse_args(argv)
    if args.micrographs is None:
        args.micrographs = str(args.data_dir / "empiar-10017" / "micrographs" / "*.jpg")
    if args.topaz is None:
        args.topaz = Path(shutil.which("topaz") or "topaz")

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="pick_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"benchmark": "pick_speed", "machine": machine(args.threads),
                              "load_before": load(),
                              "targets": {"ratio_vs_topaz_extract": TARGET_RATIO,
                                          "peak_rss_gb": TARGET_PEAK_RSS_GB}}
    mics, info = prepare_micrographs(args.micrographs, args.n, args.micrograph_pixel_size_a,
                                     work)
    record["micrographs"] = {**info, "n": len(mics)}
    ckpt = args.ckpt or quick_checkpoint(work)
    record["checkpoint"] = {"path": str(ckpt), "trained_here": args.ckpt is None,
                            "quick_train_overrides": QUICK_TRAIN if args.ckpt is None else None,
                            **checkpoint_facts(ckpt)}
    print(f"ours: predict.py on {len(mics)} micrographs ...", flush=True)
    record["ours"] = run_ours(ckpt, mics, work, args.threads, args.workers)
    if not args.no_topaz and args.topaz.exists():
        print("topaz: preprocess + extract ...", flush=True)
        record["topaz"] = run_topaz(args.topaz, mics, work, args.threads)
        record["topaz_version"] = topaz_version(args.topaz)
        ours, topaz = record["ours"], record["topaz"]
        record["ratio"] = {
            "process_vs_extract": ours["s_per_micrograph_process"]
            / topaz["extract"]["s_per_micrograph"],
            "process_vs_preprocess_extract": ours["s_per_micrograph_process"]
            / topaz["s_per_micrograph_total"],
            "steady_vs_extract": ours["s_per_micrograph_steady"]
            / topaz["extract"]["s_per_micrograph"]}
    elif not args.no_topaz:
        print(f"topaz not found at {args.topaz}: create it with `python -m venv "
              "--system-site-packages topaz_venv && topaz_venv/bin/pip install topaz-em` and "
              "pass --topaz topaz_venv/bin/topaz, or pass --no-topaz", file=sys.stderr)
    record["load_after"] = load()
    peak = max(record["ours"]["peak_pss_tree_gb"],
               record["ours"]["peak_rss_largest_process_gb"])
    record["meets_targets"] = {
        "peak_rss": peak <= TARGET_PEAK_RSS_GB,
        "ratio": (record["ratio"]["process_vs_extract"] <= TARGET_RATIO
                  if "ratio" in record else None)}
    print_table(record)
    write_results(args.json, record, {"DATA_DIR": args.data_dir, "WORK_DIR": work})
    print(f"wrote {args.json}")
    return record


if __name__ == "__main__":
    main()
