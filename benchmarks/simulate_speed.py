"""How fast does the simulator make training data? Micrographs/s, crops/s, profile, ASPIRE peer.

    python benchmarks/simulate_speed.py [--repeats 5] [--workers 2] [--crops 40]
                                        [--json benchmarks/results/simulate_speed.json]
                                        [--aspire-python aspire_venv/bin/python | --no-aspire]

Measures, each after a warm-up call:

(a) full-frame micrographs/s: 4096² with exactly 300 β-galactosidase particles at 1.77 Å/px
    (``pixel_size_a=1.77 particles.count=300``, contaminants on), the median of ``--repeats``
    ``simulate()`` calls, simulator construction timed separately; and the same for the default
    dataset micrograph (1024² at 7.08 Å/px, particle count drawn from the density);
(b) on-the-fly 512² crops/s from :class:`SyntheticCropDataset` (default config): in this
    process, and through a ``DataLoader`` with ``--workers`` workers (``seed_worker``);
(c) where one 4096² ``simulate()`` spends its time: cProfile (top entries by self time) and
    torch.profiler (top ops by self CPU time);
(d) ASPIRE's ``MicrographSimulation`` on the same setting, run by ``benchmarks/_aspire_sim.py``
    in ASPIRE's own interpreter (``--aspire-python``), with the ratio ours / ASPIRE.

Prints a table (rich if installed) and writes everything, with the machine load, to ``--json``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
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

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # torch.profiler: no GPU-probe messages
import numpy as np
import torch

from cryoparticle.config import simulator_config
from cryoparticle.data.datasets import SyntheticCropDataset, seed_worker
from cryoparticle.simulate.micrograph import MicrographSimulator
from _common import write_results

FULL_FRAME_PIXEL_SIZE_A = 1.77
TARGET_FULL_MPS = 0.5     # micrographs/s at 4096²
TARGET_CROPS_PS = 20.0    # crops/s at 512²


def load() -> dict[str, Any]:
    """Machine load now: the 1/5/15-minute load averages and the CPU count."""
    one, five, fifteen = os.getloadavg()
    return {"loadavg_1_5_15": [round(one, 2), round(five, 2), round(fifteen, 2)],
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__}


# --------------------------------------------------------------------------- (a) micrographs


def time_micrographs(overrides: list[str], size: int, repeats: int) -> tuple[dict, MicrographSimulator,
                                                                             list[dict]]:
    """Construction time, warm-up, then ``repeats`` timed ``simulate()`` calls (distinct seeds)."""
    cfg = simulator_config(overrides=overrides)
    t0 = time.perf_counter()
    sim = MicrographSimulator(cfg)
    construct_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mic = sim.simulate(10_000, size)
    warmup_s = time.perf_counter() - t0
    ctfs = [mic.metadata["ctf"]]
    times, counts = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        mic = sim.simulate(i, size)
        times.append(time.perf_counter() - t0)
        counts.append(mic.metadata["n_particles"])
        ctfs.append(mic.metadata["ctf"])
    median_s = statistics.median(times)
    return ({"overrides": overrides, "size": size, "pixel_size_a": sim.pixel_size_a,
             "volume_box": int(sim.volume.shape[0]), "construct_s": construct_s,
             "warmup_s": warmup_s, "times_s": times, "median_s": median_s,
             "micrographs_per_s": 1.0 / median_s, "particles": counts,
             "min_distance_px": float(cfg.particles.min_distance_a) / sim.pixel_size_a},
            sim, ctfs)


# --------------------------------------------------------------------------- (b) crops


def time_crops_single(sim: MicrographSimulator, n: int, crop: int,
                      threads: int | None = None) -> dict:
    """Crops/s in this process; ``threads`` sets torch's intra-op threads for the run."""
    ds = SyntheticCropDataset(sim, length=n + 1, crop_size=crop, seed=0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        ds[n]  # warm-up
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            image, mask = ds[i]
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    assert image.shape == (1, crop, crop) and mask.shape == (crop, crop)
    return {"crops": n, "crop_size": crop, "torch_threads": threads or before,
            "total_s": sum(times),
            "median_s": statistics.median(times), "crops_per_s": n / sum(times),
            "crops_per_s_median": 1.0 / statistics.median(times)}


def time_crops_loader(sim: MicrographSimulator, n: int, crop: int, workers: int,
                      batch_size: int) -> dict:
    from torch.utils.data import DataLoader

    ds = SyntheticCropDataset(sim, length=n, crop_size=crop, seed=1)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        worker_init_fn=seed_worker if workers else None,
                        generator=torch.Generator().manual_seed(0),
                        persistent_workers=False)
    # Warm-up: worker start-up and the first batch of every worker (they start together, so
    # those batches arrive almost at once); the rate is measured over the batches after them.
    warm_batches = max(1, min(workers, len(loader) - 1))
    t0 = time.perf_counter()
    seen = warm = 0
    t_warm = t0
    for b, (images, _) in enumerate(loader):
        seen += len(images)
        if b + 1 == warm_batches:
            t_warm, warm = time.perf_counter(), seen
    t_end = time.perf_counter()
    steady = seen - warm
    return {"crops": seen, "crop_size": crop, "workers": workers, "batch_size": batch_size,
            "warmup_batches": warm_batches, "startup_and_warmup_s": t_warm - t0,
            "total_s": t_end - t0,
            "crops_per_s": steady / (t_end - t_warm) if steady else float("nan"),
            "crops_per_s_incl_startup": seen / (t_end - t0)}


# --------------------------------------------------------------------------- (c) profile


def _short(func: tuple[str, int, str]) -> str:
    path, line, name = func
    if path == "~":
        return name  # built-in: "<built-in method torch.fft.rfft2>" etc.
    p = Path(path)
    parts = p.parts
    for anchor in ("cryoparticle", "torch", "numpy", "scipy", "pandas"):
        if anchor in parts:
            return f"{'/'.join(parts[parts.index(anchor):])}:{line}({name})"
    return f"{p.name}:{line}({name})"


def profile_cprofile(sim: MicrographSimulator, size: int, top: int) -> dict:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    sim.simulate(123, size)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    entries = [{"function": _short(func), "calls": int(nc), "self_s": tt, "cum_s": ct,
                "self_pct": 100.0 * tt / wall}
               for func, (cc, nc, tt, ct, _callers) in rows]
    return {"wall_s": wall, "top_by_self_time": entries}


def profile_torch(sim: MicrographSimulator, size: int, top: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sim.simulate(123, size)
    wall = time.perf_counter() - t0
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    entries = [{"op": e.key, "calls": int(e.count), "self_s": e.self_cpu_time_total / 1e6,
                "self_pct": 100.0 * e.self_cpu_time_total / 1e6 / wall}
               for e in events[:top]]
    total_ops = sum(e.self_cpu_time_total for e in events) / 1e6
    return {"wall_s": wall, "torch_ops_self_s": total_ops,
            "outside_torch_ops_s": max(wall - total_ops, 0.0), "top_by_self_cpu": entries}


# --------------------------------------------------------------------------- (d) ASPIRE


def run_aspire(python: Path | None, size: int, particles: int, ctfs: list[dict],
               sim: MicrographSimulator, repeats: int, timeout_s: int) -> dict:
    """Time ASPIRE's MicrographSimulation in its own interpreter; errors become ``{"error"}``."""
    if python is None:
        return {"error": "no ASPIRE interpreter: give --aspire-python (a venv with "
                         "`pip install aspire`)"}
    python = Path(python)
    if not python.exists():
        return {"error": f"{python}: no such interpreter"}
    try:
        check = subprocess.run([str(python), "-c", "import aspire; print(aspire.__version__)"],
                               check=False, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{python}: cannot run ({exc})"}
    if check.returncode != 0:
        tail = (check.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"{python}: cannot import aspire ({tail})"}
    script = Path(__file__).resolve().parent / "_aspire_sim.py"
    with tempfile.TemporaryDirectory(prefix="aspire_bench_") as tmp:
        # The same map and box our simulator projects (packaged volume at this pixel size,
        # cropped to the tight box), and our micrographs' CTF parameters.
        np.save(Path(tmp) / "volume.npy", np.ascontiguousarray(sim.volume, dtype=np.float32))
        (Path(tmp) / "ctf.json").write_text(json.dumps(ctfs))
        cmd = [str(python), str(script), "--volume", "volume.npy", "--ctf", "ctf.json",
               "--pixel-size", str(sim.pixel_size_a), "--size", str(size),
               "--particles", str(particles), "--snr", str(float(sim.cfg.noise.snr)),
               "--repeats", str(repeats), "--interparticle-distance",
               str(round(float(sim.cfg.particles.min_distance_a) / sim.pixel_size_a))]
        try:  # cwd = tmp: ASPIRE writes a logs/ folder into its working directory
            r = subprocess.run(cmd, check=False, cwd=tmp, capture_output=True, text=True,
                               timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"ASPIRE run exceeded {timeout_s} s", "command": cmd}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        return {"error": f"exit {r.returncode}: {tail}"}
    out = json.loads(lines[-1])
    out["interpreter"] = str(python)
    return out


# --------------------------------------------------------------------------- report


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) and np.isfinite(x) else str(x)


def _ok(value: float, target: float) -> str:
    return "✓" if value >= target else "✗"


def summary_rows(res: dict) -> list[tuple[str, str, str, str]]:
    """(measurement, value, target, note) rows of the main table."""
    full, dflt = res["micrographs_4096"], res["micrographs_1024"]
    single, loader = res["crops_single"], res["crops_loader"]
    single1 = res["crops_single_1thread"]
    full_note = (f"median {full['median_s']:.2f} s of {len(full['times_s'])} "
                 f"(min {min(full['times_s']):.2f}, max {max(full['times_s']):.2f})")
    dflt_note = (f"median {dflt['median_s']:.3f} s; "
                 f"{statistics.mean(dflt['particles']):.0f} particles on average")
    loader_note = (f"batch {loader['batch_size']}, {loader['crops']} crops, after "
                   f"{loader['warmup_batches']} warm-up batches; incl. start-up "
                   f"{_fmt(loader['crops_per_s_incl_startup'])}/s")
    full_label = (f"{full['size']}² @{full['pixel_size_a']:g} Å/px, "
                  f"{full['particles'][0]} particles: micrographs/s")
    rows = [
        (full_label, _fmt(full["micrographs_per_s"]),
         f"≥ {TARGET_FULL_MPS} {_ok(full['micrographs_per_s'], TARGET_FULL_MPS)}", full_note),
        ("  simulator construction (full-frame setting)", f"{full['construct_s']:.2f} s", "",
         f"volume box {full['volume_box']}³; warm-up call {full['warmup_s']:.2f} s"),
        ("1024² @7.08 Å/px (default): micrographs/s", _fmt(dflt["micrographs_per_s"]), "",
         dflt_note),
        ("  simulator construction (default)", f"{dflt['construct_s']:.2f} s", "",
         f"volume box {dflt['volume_box']}³"),
        (f"512² crops/s, single process ({single['torch_threads']} torch threads)",
         _fmt(single["crops_per_s"]),
         f"≥ {TARGET_CROPS_PS:g} {_ok(single['crops_per_s'], TARGET_CROPS_PS)}",
         f"{single['crops']} crops, median {1e3 * single['median_s']:.0f} ms each"),
        ("512² crops/s, single process (1 torch thread)", _fmt(single1["crops_per_s"]),
         f"≥ {TARGET_CROPS_PS:g} {_ok(single1['crops_per_s'], TARGET_CROPS_PS)}",
         f"{single1['crops']} crops, median {1e3 * single1['median_s']:.0f} ms each"),
        (f"512² crops/s, DataLoader {loader['workers']} workers", _fmt(loader["crops_per_s"]),
         f"≥ {TARGET_CROPS_PS:g} {_ok(loader['crops_per_s'], TARGET_CROPS_PS)}", loader_note),
    ]
    asp = res["aspire"]
    if "error" in asp or "skipped" in asp:
        rows.append(("ASPIRE MicrographSimulation", "—", "",
                     str(asp.get("error") or asp.get("skipped"))[:120]))
        return rows
    asp_note = (f"v{asp['aspire_version']}; median images[i] {asp['median_s']:.2f} s + "
                f"construction {asp['construct_s']:.2f} s / {asp['micrograph_count']}")
    ratio_note = ("ours: median simulate(); ASPIRE: median images[i] + construction "
                  "(centre placement) / count")
    excl_note = (f"ASPIRE images[i] alone: "
                 f"{_fmt(asp['micrographs_per_s_excl_construction'])} micrographs/s")
    rows += [
        (f"ASPIRE MicrographSimulation {asp['size']}²: micrographs/s", _fmt(asp["micrographs_per_s"]), "",
         asp_note),
        ("  ratio ours / ASPIRE (micrographs/s)", f"{res['ratio_ours_over_aspire']:.1f}×", "",
         ratio_note),
        ("  ratio ours / ASPIRE, ASPIRE construction excluded",
         f"{res['ratio_ours_over_aspire_excl_construction']:.1f}×", "", excl_note),
    ]
    return rows


def print_report(res: dict) -> None:
    rows = summary_rows(res)
    cp, tp = res["profile"]["cprofile"], res["profile"]["torch"]
    loads = ", ".join(f"{k.removeprefix('load_')} {res[k]['loadavg_1_5_15'][0]}"
                      for k in ("load_before", "load_before_crops", "load_before_profile",
                                "load_before_aspire", "load_after") if k in res)
    header = (f"1-min load avg: {loads}; {res['machine']['cpu_count']} CPUs, "
              f"torch threads {res['machine']['torch_threads']}")
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:  # plain text
        print(header)
        for r in rows:
            print(f"{r[0]:<52} {r[1]:>10}  {r[2]:<8} {r[3]}")
        print(f"\ncProfile of one {res['micrographs_4096']['size']}² simulate() ({cp['wall_s']:.2f} s), top by self time:")
        for e in cp["top_by_self_time"]:
            print(f"  {e['self_s']:7.3f} s {e['self_pct']:5.1f}%  {e['calls']:6d}  {e['function']}")
        print(f"\ntorch.profiler ({tp['wall_s']:.2f} s), top ops by self CPU time:")
        for e in tp["top_by_self_cpu"]:
            print(f"  {e['self_s']:7.3f} s {e['self_pct']:5.1f}%  {e['calls']:6d}  {e['op']}")
        return
    console = Console(width=160)
    t = Table(title="Simulator speed", caption=header)
    for col, kw in (("measurement", {}), ("value", {"justify": "right"}), ("target", {}),
                    ("notes", {})):
        t.add_column(col, **kw)
    for r in rows:
        t.add_row(*(escape(cell) for cell in r))
    console.print(t)
    size = res["micrographs_4096"]["size"]
    t = Table(title=f"cProfile: one {size}² simulate() ({cp['wall_s']:.2f} s), top by self time")
    for col in ("self s", "% wall", "calls", "cum s", "function"):
        t.add_column(col, justify="left" if col == "function" else "right")
    for e in cp["top_by_self_time"]:
        t.add_row(f"{e['self_s']:.3f}", f"{e['self_pct']:.1f}", str(e["calls"]),
                  f"{e['cum_s']:.3f}", escape(e["function"]))
    console.print(t)
    t = Table(title=f"torch.profiler: one {size}² simulate() ({tp['wall_s']:.2f} s), top ops by "
                    f"self CPU; {tp['outside_torch_ops_s']:.2f} s outside torch ops")
    for col in ("self s", "% wall", "calls", "op"):
        t.add_column(col, justify="left" if col == "op" else "right")
    for e in tp["top_by_self_cpu"]:
        t.add_row(f"{e['self_s']:.3f}", f"{e['self_pct']:.1f}", str(e["calls"]), escape(e["op"]))
    console.print(t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed simulate() calls per setting")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--crops", type=int, default=40, help="512² crops timed in-process")
    p.add_argument("--loader-crops", type=int, default=96, help="crops through the DataLoader")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop-size", type=int, default=512)
    p.add_argument("--size", type=int, default=4096, help="full-frame micrograph side (px)")
    p.add_argument("--particles", type=int, default=300, help="particles per full frame")
    p.add_argument("--top", type=int, default=8, help="profile entries shown")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/simulate_speed.json")
    p.add_argument("--aspire-python", type=Path, default=None,
                   help="the python of a venv with ASPIRE, e.g. aspire_venv/bin/python made by "
                        "`python -m venv aspire_venv && aspire_venv/bin/pip install aspire` "
                        "(default: no ASPIRE comparison)")
    p.add_argument("--aspire-repeats", type=int, default=None, help="default: --repeats")
    p.add_argument("--aspire-timeout", type=int, default=1800, help="seconds")
    p.add_argument("--no-aspire", action="store_true", help="skip the ASPIRE comparison")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.crops < 1 or args.loader_crops < 1:
        p.error("--repeats, --crops and --loader-crops must be ≥ 1")

    res: dict[str, Any] = {"benchmark": "simulate_speed", "machine": machine(),
                           "load_before": load(),
                           "targets": {"micrographs_per_s_4096": TARGET_FULL_MPS,
                                       "crops_per_s_512": TARGET_CROPS_PS}}
    t_all = time.perf_counter()
    print(f"(a) {args.size}² @{FULL_FRAME_PIXEL_SIZE_A} Å/px, {args.particles} particles ...",
          flush=True)
    full_frame = [f"pixel_size_a={FULL_FRAME_PIXEL_SIZE_A}", f"particles.count={args.particles}"]
    full, full_sim, ctfs = time_micrographs(full_frame, args.size, args.repeats)
    res["micrographs_4096"] = full
    print("(a) 1024² @7.08 Å/px (default) ...", flush=True)
    dflt, dflt_sim, _ = time_micrographs([], 1024, args.repeats)
    res["micrographs_1024"] = dflt
    res["load_before_crops"] = load()
    print(f"(b) {args.crop_size}² crops ...", flush=True)
    res["crops_single"] = time_crops_single(dflt_sim, args.crops, args.crop_size)
    res["crops_single_1thread"] = time_crops_single(dflt_sim, args.crops, args.crop_size, 1)
    res["crops_loader"] = time_crops_loader(dflt_sim, args.loader_crops, args.crop_size,
                                            args.workers, args.batch_size)
    res["load_before_profile"] = load()
    print(f"(c) profiling one {args.size}² simulate() ...", flush=True)
    res["profile"] = {"cprofile": profile_cprofile(full_sim, args.size, args.top),
                      "torch": profile_torch(full_sim, args.size, args.top)}
    res["load_before_aspire"] = load()
    if args.no_aspire:
        res["aspire"] = {"skipped": "--no-aspire"}
    else:
        print("(d) ASPIRE MicrographSimulation ...", flush=True)
        res["aspire"] = run_aspire(args.aspire_python, args.size, args.particles, ctfs, full_sim,
                                   args.aspire_repeats or args.repeats, args.aspire_timeout)
        if "micrographs_per_s" in res["aspire"]:
            asp = res["aspire"]
            res["ratio_ours_over_aspire"] = full["micrographs_per_s"] / asp["micrographs_per_s"]
            res["ratio_ours_over_aspire_excl_construction"] = (
                full["micrographs_per_s"] / asp["micrographs_per_s_excl_construction"])
    res["load_after"] = load()
    res["total_s"] = time.perf_counter() - t_all
    res["meets_targets"] = {
        "micrographs_per_s_4096": full["micrographs_per_s"] >= TARGET_FULL_MPS,
        "crops_per_s_512_single": res["crops_single"]["crops_per_s"] >= TARGET_CROPS_PS,
        "crops_per_s_512_single_1thread": (res["crops_single_1thread"]["crops_per_s"]
                                           >= TARGET_CROPS_PS),
        "crops_per_s_512_loader": res["crops_loader"]["crops_per_s"] >= TARGET_CROPS_PS}
    print()
    print_report(res)
    write_results(args.json, res, {"ASPIRE_PYTHON": args.aspire_python})
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
