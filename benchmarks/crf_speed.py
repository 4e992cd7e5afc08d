"""Dense CRF speed: our mean-field CRF (PyTorch, grid filters) against pydensecrf, same CRF.

    python benchmarks/crf_speed.py [--sizes 1024 2048 4096] [--threads 1] [--workers 1]
                                   [--repeats 3]
                                   [--dense-max-size 4096] [--train-step] [--train-repeats 5]
                                   [--json benchmarks/results/crf_speed.json]

(a) For each size: a micrograph simulated by the project's simulator (7.08 Å/px, seed 0) and a
    coarse, noisy two-class segmentation of it as the unary (the true mask smoothed, scaled and
    corrupted by per-pixel Gaussian noise — about a third of the particle pixels wrong, as an
    untrained or weak network would give). Both CRFs get the parameters of ``conf/crf/dense.yaml``
    (= ``conf/crf/meanfield.yaml``) and 10 iterations; ours also ``meanfield.yaml``'s grid options
    (``*_cells_per_sigma``, e.g. the binned intensity axis of its fused large-image path). Each runs in its own fresh process (so
    that its peak memory is its own): ours ``--repeats`` times (the median is reported; the first
    call included), pydensecrf once (its lattice construction and its inference timed apart).
    Reported: seconds, speed-up, label agreement and mean |ΔQ| between the two, particle IoU of
    the unary and of each CRF, peak resident memory of the process and its increase over the
    inputs. ``--threads``: torch threads for ours (pydensecrf is single-threaded; 1 is the
    like-for-like comparison and the robust one on a shared machine); ``--workers``: ours'
    band-parallel threads (``MeanFieldCRF(workers=...)``, with ``--threads 1``). With a CUDA device, ours
    is also timed on it (after a warm-up call; peak CUDA memory).
(b) ``--train-step``: one optimisation step (forward, loss, backward, Adam) of the default
    network (``model=unet``) and of ``model=deeplabv3`` on a batch of 4 crops of 512², without a
    CRF and with ``crf=rnn``: the median of ``--train-repeats`` steps after a warm-up, and the
    ratio (target ≤ 1.5).

Targets at 4096²: ≥ 30× faster than pydensecrf, ≥ 99 % label agreement, ≤ 4 GB.
Prints a table and writes everything, with the machine load, to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from _common import write_results

from cryoparticle.config import crf_params

TARGET_SPEEDUP_4096 = 30.0
TARGET_AGREEMENT = 0.99
TARGET_MEMORY_GB = 4.0
TARGET_TRAIN_RATIO = 1.5
N_ITERATIONS = 10


def load() -> dict[str, Any]:
    one, five, fifteen = os.getloadavg()
    return {"loadavg_1_5_15": [round(one, 2), round(five, 2), round(fifteen, 2)],
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def make_scene(size: int, path: Path) -> dict[str, Any]:
    """Simulate a micrograph and a coarse noisy unary; save them to ``path`` (npz)."""
    import torch.nn.functional as F

    from cryoparticle.config import simulator_config
    from cryoparticle.simulate.micrograph import MicrographSimulator

    t0 = time.perf_counter()
    micrograph = MicrographSimulator(simulator_config()).simulate(0, size)
    seconds = time.perf_counter() - t0
    mask = torch.from_numpy((micrograph.mask == 1).astype(np.float32))[None, None]
    g = torch.Generator().manual_seed(size)
    soft = F.avg_pool2d(F.avg_pool2d(mask, 5, 1, 2, count_include_pad=False), 5, 1, 2,
                        count_include_pad=False)
    logit = 3.0 * (2 * soft - 1) + 2.5 * torch.randn(mask.shape, generator=g)
    prob = torch.cat([torch.sigmoid(-logit), torch.sigmoid(logit)], dim=1)[0]
    np.savez(path, image=micrograph.image.astype(np.float32), prob=prob.numpy(),
             mask=(micrograph.mask == 1))
    return {"simulate_s": round(seconds, 2), "particles": len(micrograph.particles),
            "particle_fraction": round(float(mask.mean()), 4)}


def meanfield_options() -> dict[str, Any]:
    """The implementation options of ``conf/crf/meanfield.yaml`` (grid resolutions, the
    ``*_cells_per_sigma`` keys): ours runs as ``crf=meanfield`` does."""
    from omegaconf import OmegaConf

    from cryoparticle.config import CONF_DIR

    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "crf" / "meanfield.yaml"))
    return {k: v for k, v in cfg.items() if k.endswith("_cells_per_sigma")}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------- workers


def worker(kind: str, scene: Path, out: Path, threads: int, repeats: int, workers: int = 1
           ) -> None:
    """Run one CRF on a saved scene in this (fresh) process; write timings and marginals."""
    torch.set_num_threads(threads)
    data = np.load(scene)
    prob, image = data["prob"], data["image"]
    params = crf_params("dense", n_iterations=N_ITERATIONS)
    result: dict[str, Any] = {"kind": kind, "threads": torch.get_num_threads()}
    if kind == "ours":
        from cryoparticle.crf.meanfield import MeanFieldCRF

        crf = MeanFieldCRF(**params, **meanfield_options(), workers=workers)
        result["workers"] = workers
        logits = torch.from_numpy(prob).clamp_min(1e-30).log()[None]
        img = torch.from_numpy(image)[None, None]
        base = rss_mb()
        times = []
        with torch.no_grad():
            for _ in range(repeats):
                t0 = time.perf_counter()
                q1 = crf(logits, img)[0, 1].exp()
                times.append(time.perf_counter() - t0)
        result.update(seconds=statistics.median(times), all_seconds=times,
                      peak_rss_mb=peak_rss_mb(), input_rss_mb=base)
        q1 = q1.numpy()
    elif kind == "ours_cuda":
        from cryoparticle.crf.meanfield import MeanFieldCRF

        device = torch.device("cuda")
        crf = MeanFieldCRF(**params, **meanfield_options()).to(device)
        logits = torch.from_numpy(prob).clamp_min(1e-30).log()[None].to(device)
        img = torch.from_numpy(image)[None, None].to(device)
        times = []
        with torch.no_grad():
            crf(logits, img)                                     # warm-up
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            for _ in range(repeats):
                t0 = time.perf_counter()
                q1 = crf(logits, img)[0, 1].exp()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        result.update(seconds=statistics.median(times), all_seconds=times,
                      peak_cuda_mb=torch.cuda.max_memory_allocated() / 2**20,
                      device=torch.cuda.get_device_name())
        q1 = q1.cpu().numpy()
    else:  # pydensecrf, as cryoparticle.crf.dense.dense_crf does it, timed by stage
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax

        from cryoparticle.crf.dense import rgb_levels

        base = rss_mb()
        c, h, w = prob.shape
        t0 = time.perf_counter()
        crf = dcrf.DenseCRF2D(w, h, c)
        crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(prob,
                                                                   clip=params["unary_clip"])))
        crf.addPairwiseGaussian(sxy=params["spatial_sxy"], compat=params["spatial_weight"])
        crf.addPairwiseBilateral(sxy=params["bilateral_sxy"], srgb=params["bilateral_srgb"],
                                 rgbim=rgb_levels(image, params["percentiles"]),
                                 compat=params["bilateral_weight"])
        t1 = time.perf_counter()
        q = np.asarray(crf.inference(params["n_iterations"]), dtype=np.float32).reshape(c, h, w)
        t2 = time.perf_counter()
        result.update(seconds=t2 - t0, lattice_seconds=t1 - t0, inference_seconds=t2 - t1,
                      peak_rss_mb=peak_rss_mb(), input_rss_mb=base)
        q1 = q[1]
    np.save(out.with_suffix(".npy"), q1.astype(np.float32))
    out.write_text(json.dumps(result))


def run_worker(kind: str, scene: Path, tmp: Path, threads: int, repeats: int, workers: int = 1
               ) -> tuple[dict[str, Any], np.ndarray]:
    out = tmp / f"{scene.stem}_{kind}.json"
    cmd = [sys.executable, __file__, "--worker", kind, "--scene", str(scene), "--out", str(out),
           "--threads", str(threads), "--repeats", str(repeats), "--workers", str(workers)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads(out.read_text()), np.load(out.with_suffix(".npy"))


# -------------------------------------------------------------------------------- training


def train_step_overhead(repeats: int, crop: int = 512, batch: int = 4) -> list[dict[str, Any]]:
    """Median seconds of a training step without a CRF and with crf=rnn, per network."""
    from hydra.utils import instantiate

    from cryoparticle.config import compose

    rows = []
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, crop, crop, generator=g)
    y = (torch.rand(batch, crop, crop, generator=g) > 0.9).long()
    for model in ("unet", "deeplabv3"):
        row: dict[str, Any] = {"model": model, "crop": crop, "batch": batch,
                               "threads": torch.get_num_threads()}
        for crf in ("none", "rnn"):
            torch.manual_seed(0)
            cfg = compose("train", [f"model={model}", f"crf={crf}"])
            seg = instantiate(cfg.model, pixel_size_a=7.08, particle_diameter_a=190.0).train()
            opt = torch.optim.Adam([p for p in seg.parameters() if p.requires_grad], lr=1e-4)
            times = []
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                loss = seg.criterion(seg(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i:                                             # the first is a warm-up
                    times.append(time.perf_counter() - t0)
            row[f"{crf}_s"] = statistics.median(times)
            row[f"{crf}_all_s"] = times
        row["ratio"] = row["rnn_s"] / row["none_s"]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ main


def iou(labels: np.ndarray, mask: np.ndarray) -> float:
    return float((labels & mask).sum() / max(1, (labels | mask).sum()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for ours")
    parser.add_argument("--workers", type=int, default=1, help="band threads for ours")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-max-size", type=int, default=4096,
                        help="skip pydensecrf above this size")
    parser.add_argument("--train-step", action="store_true")
    parser.add_argument("--train-repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/crf_speed.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scene", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.scene, args.out, args.threads, args.repeats, args.workers)
        return {}

    report: dict[str, Any] = {
        "benchmark": "crf_speed",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "cuda": torch.cuda.is_available()},
        "load_before": load(), "params": crf_params("dense", n_iterations=N_ITERATIONS),
        "ours_options": meanfield_options(),
        "targets": {"speedup_4096": TARGET_SPEEDUP_4096, "agreement": TARGET_AGREEMENT,
                    "memory_gb": TARGET_MEMORY_GB, "train_step_ratio": TARGET_TRAIN_RATIO},
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "sizes": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for size in args.sizes:
            scene = tmp / f"scene{size}.npz"
            row: dict[str, Any] = {"size": size, **make_scene(size, scene)}
            data = np.load(scene)
            mask = data["mask"]
            row["unary_iou"] = iou(data["prob"][1] > 0.5, mask)
            ours, q_ours = run_worker("ours", scene, tmp, args.threads, args.repeats,
                                      args.workers)
            row["ours"] = ours
            row["ours_iou"] = iou(q_ours > 0.5, mask)
            if torch.cuda.is_available():
                row["ours_cuda"], q_cuda = run_worker("ours_cuda", scene, tmp, 1, args.repeats)
                row["cuda_agreement_with_cpu"] = float(((q_cuda > 0.5) == (q_ours > 0.5)).mean())
            if size <= args.dense_max_size:
                dense, q_dense = run_worker("dense", scene, tmp, 1, 1)
                row["pydensecrf"] = dense
                row["pydensecrf_iou"] = iou(q_dense > 0.5, mask)
                row["speedup"] = dense["seconds"] / ours["seconds"]
                row["agreement"] = float(((q_ours > 0.5) == (q_dense > 0.5)).mean())
                row["mean_abs_dq"] = float(np.abs(q_ours - q_dense).mean())
            report["sizes"].append(row)
            print_row(row)
    if args.train_step:
        report["train_step"] = train_step_overhead(args.train_repeats)
        for r in report["train_step"]:
            print(f"train step {r['model']:>9} {r['batch']}×{r['crop']}²: none "
                  f"{r['none_s']:.2f} s, crf=rnn {r['rnn_s']:.2f} s, ratio {r['ratio']:.2f} "
                  f"(target ≤ {TARGET_TRAIN_RATIO})")
    report["load_after"] = load()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_results(args.json, report)
    print(f"wrote {args.json}")
    return report


def print_row(row: dict[str, Any]) -> None:
    ours = row["ours"]
    line = (f"{row['size']:>5}²  ours {ours['seconds']:7.2f} s ({ours['threads']} thr × "
            f"{ours['workers']} workers, peak "
            f"{ours['peak_rss_mb'] / 1024:.2f} GB, +{(ours['peak_rss_mb'] - ours['input_rss_mb'])/ 1024:.2f})")
    if "pydensecrf" in row:
        d = row["pydensecrf"]
        line += (f" | pydensecrf {d['seconds']:7.2f} s (lattice {d['lattice_seconds']:.1f} + "
                 f"inference {d['inference_seconds']:.1f}; peak {d['peak_rss_mb'] / 1024:.2f} GB)"
                 f" | {row['speedup']:5.1f}× | agreement {100 * row['agreement']:.3f} % | "
                 f"mean|ΔQ| {row['mean_abs_dq']:.4f}")
    line += f" | IoU unary {row['unary_iou']:.3f} ours {row['ours_iou']:.3f}"
    if "pydensecrf_iou" in row:
        line += f" pydensecrf {row['pydensecrf_iou']:.3f}"
    if "ours_cuda" in row:
        line += f" | CUDA {row['ours_cuda']['seconds']:.3f} s"
    print(line, flush=True)


if __name__ == "__main__":
    main()
