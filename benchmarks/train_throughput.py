"""Is the data pipeline the bottleneck? Crops/s of the pipeline alone and of full training steps.

    python benchmarks/train_throughput.py [--networks unet fcn deeplabv3 ...] [--steps 10]
        [--crop 128] [--batch 16] [--workers 2] [--device cpu|cuda]
        [--json benchmarks/results/train_throughput.json]

For each network (the ``conf/model/<name>.yaml`` config, backbone overridable with
``--backbone``): the median time of ``--steps`` optimiser steps (forward, loss, backward, Adam)
on one batch held in memory, as crops/s; and once, the crops/s of the default on-the-fly
synthetic pipeline (``SyntheticDataModule`` train loader, ``--workers`` workers, augmentation on).
The pipeline keeps up when its crops/s exceed the training step's. Also the crops/s of the
general model's simulation (``data=synthetic_general``, its own crop size, robust normalisation
and augmentation), in this process and through ``--workers`` workers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from cryoparticle.config import compose, instantiate  # noqa: E402
from _common import write_results  # noqa: E402


def pipeline_crops_per_s(crop: int | None, batch: int, workers: int, batches: int,
                         data: str = "synthetic") -> dict[str, Any]:
    """Crops/s of an on-the-fly training loader (``conf/data/<data>.yaml``: simulation,
    normalisation, augmentation); ``crop`` None keeps the config's crop size."""
    cfg = compose("train", [f"data={data}", f"data.batch_size={batch}",
                            f"data.num_workers={workers}",
                            f"data.train_samples_per_epoch={batch * (batches + 1)}",
                            *([f"data.crop_size={crop}"] if crop else [])])
    dm = instantiate(cfg.data)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # warm-up: worker start
    t0 = time.perf_counter()
    n = 0
    for images, _ in it:
        n += images.shape[0]
    dt = time.perf_counter() - t0
    return {"data": data, "crop_size": int(cfg.data.crop_size), "crops": n, "seconds": dt,
            "crops_per_s": n / dt, "workers": workers}


def step_crops_per_s(model_name: str, backbone: str | None, crop: int, batch: int, steps: int,
                     device: str) -> dict[str, Any]:
    """Crops/s of full training steps (forward, the configured loss, backward, Adam)."""
    overrides = [f"model={model_name}"] + ([f"model.network.backbone={backbone}"] if backbone else [])
    cfg = compose("train", overrides)
    model = instantiate(cfg.model, pixel_size_a=7.08, particle_diameter_a=190.0).to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, crop, crop, device=device)
    y = (torch.rand(batch, crop, crop, device=device) > 0.9).long()
    times = []
    for i in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model.criterion(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"network": OmegaConf.to_container(cfg.model.network), "median_step_s": med,
            "crops_per_s": batch / med, "steps": steps}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", nargs="+", default=["unet", "fcn", "deeplabv3", "deeplabv3plus",
                                                     "unetplusplus"])
    p.add_argument("--backbone", default=None, help="override every network's backbone")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pipeline-batches", type=int, default=10)
    p.add_argument("--general-batches", type=int, default=6,
                   help="batches of data=synthetic_general (the general model's simulation, "
                        "its own crop size) timed in-process and through --workers workers; "
                        "0 skips")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/train_throughput.json")
    args = p.parse_args(argv)

    result: dict[str, Any] = {"benchmark": "train_throughput", "device": args.device,
                              "torch_threads": torch.get_num_threads(),
                              "loadavg_before": os.getloadavg(), "crop": args.crop,
                              "batch": args.batch}
    result["pipeline"] = pipeline_crops_per_s(args.crop, args.batch, args.workers,
                                              args.pipeline_batches)
    if args.general_batches:
        result["pipeline_general"] = {
            mode: pipeline_crops_per_s(None, args.batch, workers, args.general_batches,
                                       "synthetic_general")
            for mode, workers in (("in_process", 0), ("loader", args.workers))}
    result["networks"] = {}
    for name in args.networks:
        result["networks"][name] = step_crops_per_s(name, args.backbone, args.crop, args.batch,
                                                    args.steps, args.device)
    result["loadavg_after"] = os.getloadavg()

    pipe = result["pipeline"]["crops_per_s"]
    print(f"{'what':<28}{'crops/s':>10}{'step s':>10}  pipeline keeps up?")
    print(f"{'data pipeline':<28}{pipe:>10.1f}{'':>10}")
    for mode, r in result.get("pipeline_general", {}).items():
        label = f"general {r['crop_size']}², {r['workers']} workers"
        print(f"{label:<28}{r['crops_per_s']:>10.1f}")
    for name, r in result["networks"].items():
        label = f"{name} ({r['network']['backbone']})"
        ok = "yes" if pipe >= r["crops_per_s"] else "NO: data-bound"
        print(f"{label:<28}{r['crops_per_s']:>10.1f}{r['median_step_s']:>10.3f}  {ok}")
    write_results(args.json, result)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
