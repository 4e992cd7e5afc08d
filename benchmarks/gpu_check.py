"""The Python pieces of ``benchmarks/gpu_check.sh``: dense CRF time and pick throughput.

    python benchmarks/gpu_check.py crf  [--size 4096] [--repeats 3] [--device cuda] --json OUT
    python benchmarks/gpu_check.py pick [--ckpt CKPT] [--n 8] [--size 4096]
                                        [--pixel-size-a 1.77] [--device cuda] --json OUT

``crf``: :class:`~cryoparticle.crf.meanfield.MeanFieldCRF` with the parameters of
``crf=dense`` (10 iterations, two classes) on the simulated micrograph and noisy unary of
``benchmarks/crf_speed.py``, after one warm-up call; the median of ``--repeats`` calls (seconds,
synchronised), the peak device memory; target ≤ 0.1 s at 4096² on a GPU.

``pick``: ``--n`` micrographs of ``--size``² simulated at ``--pixel-size-a`` and written as MRC
(not timed), then ``predict.py`` on all of them in one process on ``--device``; micrographs/s of
the whole process (start-up included) and of its steady state (the predict loop's wall time from
``predict_summary.json``), picks per micrograph. ``--ckpt``: default the packaged general model
(``cryoparticle/models/weights/general.ckpt``) when it exists.

Both write a JSON record (``--json``) and print one line. ``--device cpu`` with small sizes is
what the tests run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import write_results  # noqa: E402

TARGET_CRF_S_4096 = 0.1
N_ITERATIONS = 10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def crf_time(size: int, repeats: int, device: torch.device, work: Path) -> dict[str, Any]:
    """Seconds of our dense CRF on one ``size``² micrograph (median of ``repeats``)."""
    from crf_speed import make_scene

    from cryoparticle.config import crf_params
    from cryoparticle.crf.meanfield import MeanFieldCRF

    scene_path = work / f"scene_{size}.npz"
    scene = make_scene(size, scene_path)
    data = np.load(scene_path)
    crf = MeanFieldCRF(**crf_params("dense", n_iterations=N_ITERATIONS)).to(device)
    logits = torch.from_numpy(data["prob"]).clamp_min(1e-30).log()[None].to(device)
    image = torch.from_numpy(data["image"])[None, None].to(device)
    times = []
    with torch.no_grad():
        crf(logits, image)                                   # warm-up
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(repeats):
            t0 = time.perf_counter()
            log_q = crf(logits, image)
            _sync(device)
            times.append(time.perf_counter() - t0)
    labels = log_q[0].argmax(0).cpu().numpy().astype(bool)
    mask = data["mask"]
    record: dict[str, Any] = {
        "size": size, "iterations": N_ITERATIONS, "device": str(device),
        "seconds": statistics.median(times), "all_seconds": times,
        "particle_iou": float((labels & mask).sum() / max(1, (labels | mask).sum())),
        "target_s_4096": TARGET_CRF_S_4096, **scene}
    if device.type == "cuda":
        record.update(device_name=torch.cuda.get_device_name(device),
                      peak_memory_gb=torch.cuda.max_memory_allocated(device) / 1e9)
    if size == 4096:
        record["meets_target"] = record["seconds"] <= TARGET_CRF_S_4096
    return record


def default_checkpoint() -> Path | None:
    """The packaged general model, if this installation has it."""
    path = ROOT / "cryoparticle" / "models" / "weights" / "general.ckpt"
    return path if path.is_file() else None


def simulate_micrographs(n: int, size: int, pixel_size_a: float, folder: Path) -> list[Path]:
    """``n`` simulated ``size``² micrographs as float32 MRC (pixel size in the header)."""
    from cryoparticle.config import simulator_config
    from cryoparticle.io.mrc import write_mrc
    from cryoparticle.simulate.micrograph import MicrographSimulator

    folder.mkdir(parents=True, exist_ok=True)
    sim = MicrographSimulator(simulator_config(overrides=[f"pixel_size_a={pixel_size_a}"]))
    paths = []
    for i in range(n):
        mic = sim.simulate((2025, i), size, name=f"sim_{i:03d}")
        path = folder / f"sim_{i:03d}.mrc"
        write_mrc(path, np.asarray(mic.image, dtype=np.float32), pixel_size_a)
        paths.append(path)
    return paths


def pick_throughput(ckpt: Path, n: int, size: int, pixel_size_a: float, device: str,
                    work: Path) -> dict[str, Any]:
    """Micrographs/s of ``predict.py`` on ``n`` simulated micrographs in one process."""
    mics = simulate_micrographs(n, size, pixel_size_a, work / "mrc")
    out = work / "picks"
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    cmd = [sys.executable, str(ROOT / "predict.py"), f"ckpt_path={ckpt}",
           f"input={mics[0].parent}", f"output_dir={out}", f"trainer.accelerator={accelerator}",
           "progress_bar=false", "overwrite=true"]
    if accelerator == "cpu":
        cmd += ["num_workers=0", "num_threads=1"]
    t0 = time.perf_counter()
    result = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise SystemExit(f"predict.py failed (exit {result.returncode}):\n{tail}")
    summary = json.loads((out / "predict_summary.json").read_text())
    return {"ckpt": str(ckpt), "n": n, "size": size, "pixel_size_a": pixel_size_a,
            "device": device, "process_wall_s": wall,
            "micrographs_per_s_process": n / wall,
            "micrographs_per_s_steady": n / summary["wall_s"],
            "particles_per_micrograph": summary["particles_per_micrograph"],
            "written": sorted(p.name for p in out.glob("*.star"))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="check", required=True)
    crf = sub.add_parser("crf", help="dense CRF seconds")
    crf.add_argument("--size", type=int, default=4096)
    crf.add_argument("--repeats", type=int, default=3)
    pick = sub.add_parser("pick", help="predict.py micrographs/s")
    pick.add_argument("--ckpt", type=Path, default=None,
                      help="checkpoint (default: the packaged general model, if present)")
    pick.add_argument("--n", type=int, default=8)
    pick.add_argument("--size", type=int, default=4096)
    pick.add_argument("--pixel-size-a", type=float, default=1.77)
    for parser in (crf, pick):
        parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        parser.add_argument("--json", type=Path, required=True)
        parser.add_argument("--work-dir", type=Path, default=None,
                            help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    if args.check == "pick":
        args.ckpt = args.ckpt or default_checkpoint()
        if args.ckpt is None:
            p.error("no --ckpt and no packaged general model "
                    "(cryoparticle/models/weights/general.ckpt)")
        if not Path(args.ckpt).is_file():
            p.error(f"{args.ckpt}: no such checkpoint")
    if args.size < 64 or getattr(args, "n", 1) < 1 or getattr(args, "repeats", 1) < 1:
        p.error("--size must be ≥ 64, --n and --repeats ≥ 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        load = [round(v, 2) for v in os.getloadavg()]
        if args.check == "crf":
            record = crf_time(args.size, args.repeats, torch.device(args.device), work)
            print(f"crf {args.size}² on {args.device}: {record['seconds']:.3f} s "
                  f"(target ≤ {TARGET_CRF_S_4096} s at 4096²)", flush=True)
        else:
            record = pick_throughput(Path(args.ckpt).resolve(), args.n, args.size,
                                     args.pixel_size_a, args.device, work)
            print(f"pick {args.n} × {args.size}² on {args.device}: "
                  f"{record['micrographs_per_s_process']:.2f} micrographs/s (process), "
                  f"{record['micrographs_per_s_steady']:.2f} (steady), "
                  f"{record['particles_per_micrograph']:.0f} picks/micrograph", flush=True)
        record = {"check": args.check, "loadavg_1_5_15": load, **record}
        write_results(args.json, record)
    return record


if __name__ == "__main__":
    main()
