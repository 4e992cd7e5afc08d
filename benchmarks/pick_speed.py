"""How fast does ``predict.py`` pick a 4096² micrograph on CPU, in how much memory, and how
well? And Topaz, on the same micrographs?

    python benchmarks/pick_speed.py [--data-dir DIR | --micrographs 'GLOB'] [--n 3]
                                    [--micrograph-pixel-size-a 1.77] [--ckpt CKPT]
                                    [--threads N] [--work-dir DIR] [--profile auto|py-spy|
                                    cprofile|none] [--topaz topaz_venv/bin/topaz | --no-topaz]
                                    [--lightning] [--json benchmarks/results/pick_speed.json]

Micrographs: ``--micrographs`` (default: the EMPIAR-10017 4096² JPGs under ``--data-dir``,
``DATA_DIR/empiar-10017/micrographs/*.jpg``, 1.77 Å/px, if present; else ``--n`` simulated
4096² micrographs at 1.77 Å/px). The first ``--n`` are converted once (not timed) to float32
MRC with the pixel size in the header, so that both pickers read the same files (Topaz's own
JPEG reader fails on these files).

Checkpoint: ``--ckpt``, else none is given to ``predict.py``, which then uses the shipped
general model (``cryoparticle/models/weights/general.ckpt``), with the threshold, extraction
options and diameter estimation stored in it.

Ours, end to end (read → bin to the checkpoint's pixel size → segment → extract → write STAR,
BOX and CSV): one ``python predict.py input=MIC ... trainer.accelerator=cpu num_threads=N
num_workers=0`` process **per micrograph**, so every time includes the process start-up
(imports, Hydra, checkpoint); reported per micrograph, with the median over
the micrographs: the process's wall time, predict's own stage timings (``read_s`` = read +
bin + normalise, ``segment_s``, ``extract_s``, ``write_s``, from ``predict_summary.json``),
and the peak memory: the process's peak RSS (``os.wait4``, exact) and the peak PSS of its
process tree (sampled from ``/proc`` every 20 ms; PSS counts pages shared by forked workers
once). Also one process on all ``--n`` micrographs (start-up paid once: ``batch``).

``--lightning``: each micrograph is also picked through Lightning's ``Trainer.predict``
(``+trainer.deterministic=false``: any Trainer option beyond the one-device defaults sends
``predict.py`` there), alternating with the default one-device loop, which never imports
Lightning: the medians of both and whether their picks are identical.

Where our time goes: one more run on the first micrograph under a sampling profiler
(``--profile``: py-spy at 100 Hz when ``py-spy`` is on the PATH, else cProfile), its samples
grouped into start-up imports, configuration, checkpoint loading,
reading/binning, network, extraction and writing, plus the functions with the most own time.

Topaz (``pip install topaz-em`` into its own venv, see the README), the same micrographs, one
micrograph per process too: ``topaz preprocess -s 4 -d -1 -j N`` (downsample 4× to 7.08 Å/px
and GMM-normalise), then ``topaz extract -m resnet16_u64 -r 14 -x 4 -d -1 -j N`` (its shipped
pretrained model, radius 14 px ≈ the 190 Å particle at 7.08 Å/px, coordinates scaled back to
the micrograph; its default extraction threshold −6 writes every candidate with its score),
timed separately; ratio = ours / Topaz, medians per micrograph (targets: ≤ 0.5 against
``topaz extract`` alone, peak memory ≤ 2 GB).

Accuracy of the same picks, when the micrographs have CryoPPP masks (``NAME_mask.*`` in the
``masks/`` folder beside theirs, the EMPIAR-10017 layout of ``--data-dir``): truth = the disc
centres of the masks, picks and truth on the striped border artefact left out, one-to-one
matching within half the particle diameter (108 px at 1.77 Å/px), pooled over the micrographs
(:mod:`cryoparticle.picking.evaluate`; the same truth, border and radius as
``benchmarks/real_transfer.py``). Ours: the picks ``predict.py`` wrote, i.e. at the
checkpoint's stored threshold; Topaz: the picks with score ≥ 0 (p ≥ 0.5)
threshold (and its best F1 over its scores). Each micrograph's role in the general model's
training (``data=general``: train / val / test) is recorded: F1 on training micrographs is
optimistic for ours; ``benchmarks/real_transfer.py --micrographs test`` is the held-out figure.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "benchmarks"):  # run as a script from anywhere
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from _common import (DATA_DIR_HELP, DATASETS, DEFAULT_DATA_DIR, general_split,  # noqa: E402
                     inside, mask_truth, write_results)

DATASET = "EMPIAR-10017"
EMPIAR_PIXEL_SIZE_A = DATASETS[DATASET][1]
PARTICLE_DIAMETER_A = DATASETS[DATASET][2] * EMPIAR_PIXEL_SIZE_A   # CryoPPP's 108 px
TARGET_RATIO = 0.5
TARGET_PEAK_RSS_GB = 2.0
TOPAZ_SCALE = 4          # 1.77 Å/px × 4 = 7.08 Å/px
TOPAZ_RADIUS_PX = 14     # ≈ 190 Å / 7.08 Å/px / 2
TOPAZ_THRESHOLD = 0.0    # score 0 = probability 0.5 (topaz extract writes down to −6)
PROFILE_HZ = 100


def load() -> dict[str, Any]:
    one, five, fifteen = os.getloadavg()
    return {"loadavg_1_5_15": [round(one, 2), round(five, 2), round(fifteen, 2)],
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def machine(threads: int) -> dict[str, Any]:
    import numpy as np
    import torch

    return {"cpu_count": os.cpu_count(), "threads": threads,
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__,
            # 1: no .pyc is written, so modules without one are compiled at every start-up
            "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE")}


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


def fresh_dir(folder: Path) -> Path:
    """``folder``, emptied (created if missing)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def prepare_micrographs(pattern: str, n: int, pixel_size_a: float | None, work: Path
                        ) -> tuple[list[Path], dict[str, Any], dict[str, Any] | None]:
    """``n`` micrographs as float32 MRC (pixel size in the header) in ``work/mrc``; their
    record; and their truth (``{"truth", "borders", "radius_px", "split"}``) when every one has
    a CryoPPP mask in the ``masks/`` folder beside its own (else None)."""
    import numpy as np
    import pandas as pd

    from cryoparticle.io.mrc import read_micrograph, write_mrc

    folder = fresh_dir(work / "mrc")
    sources = sorted(glob.glob(pattern))[:n]
    info: dict[str, Any] = {"pattern": pattern}
    if sources:
        info["source"] = "files"
        out, truths, borders, split = [], [], {}, {}
        for source in sources:
            image, header_px = read_micrograph(source)
            px = pixel_size_a or header_px or EMPIAR_PIXEL_SIZE_A
            stem = Path(source).stem
            path = folder / f"{stem}.mrc"
            write_mrc(path, image, px)
            out.append(path)
            masks = sorted((Path(source).parent.parent / "masks").glob(f"{stem}_mask.*"))
            if masks and truths is not None:
                truth, borders[stem] = mask_truth(image, masks[0], PARTICLE_DIAMETER_A / px, 1,
                                                  stem)
                truths.append(truth)
                split[stem] = general_split(DATASET, stem)
            else:
                truths = None
        info.update(files=[str(s) for s in sources], shape=list(image.shape), pixel_size_a=px)
        truth = None if not truths else {
            "truth": inside(pd.concat(truths, ignore_index=True), borders),
            "borders": borders, "radius_px": PARTICLE_DIAMETER_A / px / 2, "split": split}
        return out, info, truth
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
    return out, info, None


def checkpoint_facts(ckpt: Path | None) -> dict[str, Any]:
    """The network, pixel size, tiling, threshold and export options the checkpoint carries
    (``None``: the shipped general model ``predict.py`` uses by default)."""
    import torch

    from cryoparticle.models.packaged import resolve_checkpoint

    path = resolve_checkpoint(ckpt)
    facts = torch.load(path, map_location="cpu", weights_only=True).get("cryoparticle") or {}
    return {"path": str(path), "shipped_default": ckpt is None,
            **{k: facts.get(k) for k in ("network", "pixel_size_a", "particle_diameter_a",
                                         "tile_size", "tile_overlap", "picking_threshold",
                                         "export")}}


# ------------------------------------------------------------------------------ accuracy


def accuracy(picks: Any, truth: dict[str, Any] | None, threshold: float | None
             ) -> dict[str, Any] | None:
    """Pooled precision/recall/F1 (and per micrograph) of ``picks`` with ``score >=
    threshold`` (None: all) against the truth of :func:`prepare_micrographs`, off the border."""
    if truth is None:
        return None
    from cryoparticle.picking.evaluate import evaluate_micrographs

    picks = inside(picks, truth["borders"])
    table, pooled = evaluate_micrographs(picks, truth["truth"], truth["radius_px"], threshold,
                                         micrographs=list(truth["borders"]))
    per = {row["micrograph"]: {"split": truth["split"][row["micrograph"]],
                               **{k: row[k] for k in ("n_picks", "n_truth", "precision",
                                                      "recall", "f1")}}
           for row in table.to_dict(orient="records")}
    keys = ("n_picks", "n_truth", "tp", "precision", "recall", "f1", "ap", "best_f1",
            "best_threshold")
    return {"threshold": threshold, "radius_px": truth["radius_px"],
            **{k: pooled[k] for k in keys}, "per_micrograph": per}


# ------------------------------------------------------------------------------ pickers


STAGES = ("read_s", "segment_s", "extract_s", "write_s", "total_s")


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def predict_cmd(ckpt: Path | None, inputs: list[Path], out: Path, threads: int,
                *extra: str) -> list[str]:
    files = ",".join(map(str, inputs))
    return ([str(ROOT / "predict.py")] + ([f"ckpt_path={ckpt}"] if ckpt else [])
            + [f"input=[{files}]", f"output_dir={out}", "trainer.accelerator=cpu",
               f"num_threads={threads}", "num_workers=0", "progress_bar=false", *extra])


#: A Trainer option that sends ``predict.py`` through Lightning's ``Trainer.predict`` (any
#: option beyond the one-device defaults does) without changing what it computes.
LIGHTNING_OVERRIDE = "+trainer.deterministic=false"


def compare_lightning(ckpt: Path | None, mics: list[Path], work: Path, threads: int
                      ) -> dict[str, Any]:
    """Each micrograph picked by ``predict.py``'s one-device loop (the default) and through
    Lightning's ``Trainer.predict`` (:data:`LIGHTNING_OVERRIDE`), alternating, one process
    each: medians of the process time and of the peak RSS, and the picks compared (the same
    number, coordinates within 0.01 px: threaded float sums may differ in the last digits)."""
    import numpy as np

    from cryoparticle.io.coords import read_star

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    runs: dict[str, list[dict[str, float]]] = {"loop": [], "lightning": []}
    same, largest = True, 0.0
    for mic in mics:
        stars = {}
        for path, extra in (("loop", ()), ("lightning", (LIGHTNING_OVERRIDE,))):
            out = fresh_dir(work / "paths" / path / mic.stem)
            result = measured([sys.executable, *predict_cmd(ckpt, [mic], out, threads, *extra)],
                              work, env)
            if result["rc"] != 0:
                sys.exit(f"predict.py failed (exit {result['rc']}):\n{result['output_tail']}")
            runs[path].append({"process_s": result["wall_s"],
                               "peak_rss_gb": result["peak_rss_largest_process_gb"]})
            stars[path] = read_star(out / f"{mic.stem}.star")[["x", "y"]].to_numpy(float)
        if stars["loop"].shape != stars["lightning"].shape:
            same = False
        elif len(stars["loop"]):
            largest = max(largest, float(np.abs(stars["loop"] - stars["lightning"]).max()))
    same = same and largest <= 0.01
    medians = {path: {key: _median([r[key] for r in rows]) for key in rows[0]}
               for path, rows in runs.items()}
    return {**medians, "saved_s_median": medians["lightning"]["process_s"]
            - medians["loop"]["process_s"], "same_picks": same,
            "largest_coordinate_difference_px": largest,
            "lightning_override": LIGHTNING_OVERRIDE, "runs": runs}


def run_ours(ckpt: Path | None, mics: list[Path], work: Path, threads: int
             ) -> tuple[dict[str, Any], Any]:
    """``predict.py`` once per micrograph, then once on all: times, memory, stages; and the
    picks of the per-micrograph runs."""
    import pandas as pd

    from cryoparticle.io.coords import read_star

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    runs, picks = [], []
    for mic in mics:
        out = fresh_dir(work / "ours" / mic.stem)
        load_1min = os.getloadavg()[0]
        result = measured([sys.executable, *predict_cmd(ckpt, [mic], out, threads)], work, env)
        if result["rc"] != 0:
            sys.exit(f"predict.py failed (exit {result['rc']}):\n{result['output_tail']}")
        summary = json.loads((out / "predict_summary.json").read_text())
        stages = {k: summary["micrographs"][0][k] for k in STAGES}
        picks.append(read_star(out / f"{mic.stem}.star", micrograph=mic.stem))
        runs.append({"micrograph": mic.stem, "process_s": result["wall_s"],
                     "in_loop_s": summary["wall_s"], "startup_s": result["wall_s"]
                     - summary["wall_s"], "stages_s": stages, "n_picks": len(picks[-1]),
                     "peak_rss_gb": result["peak_rss_largest_process_gb"],
                     "peak_pss_tree_gb": result["peak_pss_tree_gb"],
                     "diameter_a": summary["micrographs"][0]["particle_diameter_a"],
                     "threshold": summary["threshold"],   # fixed, or a relative one's floor
                     # what the micrograph was picked at (its relative threshold) and in
                     "micrograph_threshold": summary["micrographs"][0].get("threshold"),
                     "polarity": summary["micrographs"][0].get("polarity"),
                     "loadavg_1min_at_start": load_1min,
                     "cmd": result["cmd"]})
    out = fresh_dir(work / "ours" / "batch")
    batch = measured([sys.executable, *predict_cmd(ckpt, mics, out, threads)], work, env)
    if batch["rc"] != 0:
        sys.exit(f"predict.py failed (exit {batch['rc']}):\n{batch['output_tail']}")
    record = {
        "per_micrograph": runs,
        "s_per_micrograph_median": _median([r["process_s"] for r in runs]),
        "startup_s_median": _median([r["startup_s"] for r in runs]),
        "stages_s_median": {k: _median([r["stages_s"][k] for r in runs]) for k in STAGES},
        "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
        "peak_pss_tree_gb": max(r["peak_pss_tree_gb"] for r in runs),
        "particles_per_micrograph": sum(r["n_picks"] for r in runs) / len(runs),
        "threshold": runs[0]["threshold"],
        "micrograph_thresholds": [r["micrograph_threshold"] for r in runs],
        "polarities": [r["polarity"] for r in runs],
        "batch": {"n": len(mics), "s_per_micrograph": batch["wall_s"] / len(mics),
                  "peak_rss_gb": batch["peak_rss_largest_process_gb"],
                  "peak_pss_tree_gb": batch["peak_pss_tree_gb"], "cmd": batch["cmd"]}}
    return record, pd.concat(picks, ignore_index=True)


def run_topaz(topaz: Path, mics: list[Path], work: Path, threads: int
              ) -> tuple[dict[str, Any], Any]:
    """``topaz preprocess`` then ``topaz extract`` once per micrograph: times, memory; and
    every candidate it wrote (scores ≥ −6, coordinates of the original micrographs)."""
    import pandas as pd

    from cryoparticle.io.coords import read_topaz

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    runs, picks = [], []
    for mic in mics:
        folder = fresh_dir(work / "topaz" / mic.stem)
        load_1min = os.getloadavg()[0]
        pre = measured([str(topaz), "preprocess", "-s", str(TOPAZ_SCALE), "-d", "-1", "-j",
                        str(threads), "-o", str(folder / "pre"), str(mic)], work, env)
        if pre["rc"] != 0:
            sys.exit(f"topaz preprocess failed:\n{pre['output_tail']}")
        picks_file = folder / "picks.txt"
        ext = measured([str(topaz), "extract", "-m", "resnet16_u64", "-r",
                        str(TOPAZ_RADIUS_PX), "-x", str(TOPAZ_SCALE), "-d", "-1", "-j",
                        str(threads), "-o", str(picks_file),
                        *map(str, sorted((folder / "pre").glob("*.mrc")))], work, env)
        if ext["rc"] != 0:
            sys.exit(f"topaz extract failed:\n{ext['output_tail']}")
        found = read_topaz(picks_file)
        picks.append(found)
        runs.append({"micrograph": mic.stem, "preprocess_s": pre["wall_s"],
                     "extract_s": ext["wall_s"], "total_s": pre["wall_s"] + ext["wall_s"],
                     "n_candidates": len(found),
                     "n_picks_at_0": int((found["score"] >= TOPAZ_THRESHOLD).sum()),
                     "peak_rss_gb": max(pre["peak_rss_largest_process_gb"],
                                        ext["peak_rss_largest_process_gb"]),
                     "peak_pss_tree_gb": max(pre["peak_pss_tree_gb"], ext["peak_pss_tree_gb"]),
                     "loadavg_1min_at_start": load_1min, "cmd": [pre["cmd"], ext["cmd"]]})
    record = {
        "per_micrograph": runs,
        "preprocess_s_median": _median([r["preprocess_s"] for r in runs]),
        "extract_s_median": _median([r["extract_s"] for r in runs]),
        "s_per_micrograph_median": _median([r["total_s"] for r in runs]),
        "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
        "peak_pss_tree_gb": max(r["peak_pss_tree_gb"] for r in runs),
        "particles_per_micrograph_at_0": sum(r["n_picks_at_0"] for r in runs) / len(runs),
        "settings": {"scale": TOPAZ_SCALE, "radius_px": TOPAZ_RADIUS_PX,
                     "model": "resnet16_u64", "extract_threshold": -6,
                     "evaluated_threshold": TOPAZ_THRESHOLD}}
    return record, pd.concat(picks, ignore_index=True)


# ------------------------------------------------------------------------------ profile

#: Stage of a profiler sample: the first rule (in this order) with a function on the sample's
#: stack (``(qualified name ends with, file name)``); samples matching none are ``other``.
#: Imports count as start-up wherever they happen (e.g. segmentation_models_pytorch's, when
#: the checkpoint's network is built).
PROFILE_STAGES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("start-up: imports", (("_find_and_load", "<frozen importlib._bootstrap>"),)),
    ("network (segment)", (("predict_record", "segment.py"), ("predict_step", "module.py"))),
    ("writing", (("_finish", "writers.py"), ("write_relion_coordinates", "coords.py"),
                 ("write_box", "coords.py"), ("write_cryoppp_csv", "coords.py"),
                 ("write_topaz", "coords.py"))),
    ("extraction", (("_pick", "writers.py"),)),
    ("reading/binning", (("__getitem__", "inputs.py"),)),
    ("checkpoint loading", (("load_picker", "predict.py"),)),
)


def _frame(frame: str) -> tuple[str, str]:
    """``(qualified name, file name)`` of a py-spy frame ``name (path:line)``."""
    name, _, where = frame.partition(" (")
    return name, Path(where.rstrip(")").rsplit(":", 1)[0]).name


def _package(where: str) -> str:
    """Top-level package of a module file as py-spy names it: relative to its ``sys.path``
    entry (``torch/nn/modules/conv.py`` → ``torch``), or absolute (the folder after
    ``site-packages``); ``cryoparticle`` for this project's modules."""
    parts = [part for part in where.replace("\\", "/").split("/") if part]
    if "cryoparticle" in parts:
        return "cryoparticle"
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts[:-1]:
            return parts[parts.index(anchor) + 1].removesuffix(".py")
    return parts[0].removesuffix(".py") if parts else where


def _imported_package(frames: list[str]) -> str | None:
    """The first package other than cryoparticle whose import a sample is in (cryoparticle
    when only its own modules; None when no import)."""
    seen_import, found = False, None
    for frame in frames:
        if frame.startswith("_find_and_load ("):
            seen_import = True
        elif seen_import and frame.startswith("<module> ("):
            found = _package(frame.partition(" (")[2].rsplit(":", 1)[0])
            if found != "cryoparticle":
                return found
    return found


def _stage(frames: list[tuple[str, str]]) -> str:
    for stage, markers in PROFILE_STAGES:
        if any(name.endswith(m_name) and where == m_file for name, where in frames
               for m_name, m_file in markers):
            return stage
    return "other (interpreter, Hydra, set-up)"


def summarise_pyspy(raw: Path, hz: int) -> dict[str, Any]:
    """Seconds per stage (:data:`PROFILE_STAGES`), import seconds per top-level package
    imported (the 8 largest) and the 12 functions with the most own time, from py-spy's
    ``--format raw`` output (``process;frame;...;frame COUNT`` per line)."""
    stages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    imports: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        package = _imported_package(stack.split(";")[1:])
        if package is not None:
            imports[package] += int(count)
        frames = [_frame(f) for f in stack.split(";")[1:]]  # the first is the process
        total += int(count)
        stages[_stage(frames)] += int(count)
        if frames:
            own["{} ({})".format(*frames[-1])] += int(count)
    return {"tool": f"py-spy record -r {hz}", "sampled_s": total / hz,
            "stages_s": {k: round(v / hz, 2) for k, v in stages.most_common()},
            "imports_s_by_package": {k: round(v / hz, 2) for k, v in imports.most_common(8)},
            "top_own_s": {k: round(v / hz, 2) for k, v in own.most_common(12)}}


def summarise_cprofile(stats_file: Path) -> dict[str, Any]:
    """The 12 functions with the most cumulative and with the most own time (cProfile)."""
    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]

    def name(key: tuple[str, int, str]) -> str:
        return f"{key[2]} ({Path(key[0]).name})"

    cumulative = sorted(stats.items(), key=lambda kv: -kv[1][3])[:12]
    own = sorted(stats.items(), key=lambda kv: -kv[1][2])[:12]
    return {"tool": "cProfile", "top_cumulative_s": {name(k): round(v[3], 2)
                                                     for k, v in cumulative},
            "top_own_s": {name(k): round(v[2], 2) for k, v in own}}


def profile_one(ckpt: Path | None, mic: Path, work: Path, threads: int, how: str
                ) -> dict[str, Any] | None:
    """``predict.py`` on ``mic`` under py-spy or cProfile (``how``; ``auto``: py-spy when on
    the PATH); the summary, with the wall time of the profiled run."""
    if how == "none":
        return None
    pyspy = shutil.which("py-spy")
    if how == "auto":
        how = "py-spy" if pyspy else "cprofile"
    out = fresh_dir(work / "profile")
    args = predict_cmd(ckpt, [mic], out / "picks", threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if how == "py-spy" and pyspy:
        raw = out / "profile.txt"
        result = measured([pyspy, "record", "-r", str(PROFILE_HZ), "-f", "raw", "-o", str(raw),
                           "--", sys.executable, *args], work, env)
        if result["rc"] == 0 and raw.is_file():
            return {**summarise_pyspy(raw, PROFILE_HZ), "wall_s": result["wall_s"],
                    "micrograph": mic.stem}
        print(f"py-spy failed (exit {result['rc']}); profiling with cProfile", file=sys.stderr)
    stats_file = out / "profile.pstats"
    result = measured([sys.executable, "-m", "cProfile", "-o", str(stats_file), *args], work,
                      env)
    if result["rc"] != 0 or not stats_file.is_file():
        return {"error": result["output_tail"][-500:]}
    return {**summarise_cprofile(stats_file), "wall_s": result["wall_s"],
            "micrograph": mic.stem}


def topaz_version(topaz: Path) -> str | None:
    try:
        result = subprocess.run([str(topaz), "--version"], capture_output=True, text=True,
                                check=False)
    except OSError:
        return None
    return (result.stdout or result.stderr).strip() or None


# ------------------------------------------------------------------------------ report


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "–" if value is None else format(value, fmt)


def _f1(acc: dict[str, Any] | None) -> str:
    if not acc:
        return "–"
    return f"{acc['f1']:.3f} (P {acc['precision']:.3f} R {acc['recall']:.3f})"


def picked_at(ours: dict[str, Any]) -> str:
    """The thresholds ``predict.py`` picked at: the stored fixed one, or each micrograph's
    relative one (their range), and the polarity when it was not dark."""
    values = [float(t) for t in ours.get("micrograph_thresholds") or [] if t is not None]
    if values and (max(values) > ours["threshold"] + 1e-9 or min(values) < ours["threshold"]):
        text = f"thresholds {min(values):.3g}–{max(values):.3g}, relative"
    else:
        text = f"threshold {ours['threshold']:g}, stored"
    light = sum(p == "light" for p in ours.get("polarities") or [])
    return text + (f"; {light} light" if light else "")


def print_table(record: dict[str, Any]) -> None:
    ours, topaz = record["ours"], record.get("topaz")
    rows = [("ours: s / micrograph, process (start-up incl.), median",
             _num(ours["s_per_micrograph_median"])),
            ("ours: start-up s (process − predict loop), median", _num(ours["startup_s_median"])),
            *[(f"ours: {k[:-2]} s, median", _num(v)) for k, v in ours["stages_s_median"].items()],
            ("ours: s / micrograph, one process on all", _num(ours["batch"]["s_per_micrograph"])),
            ("ours: peak RSS, process (GB)", _num(ours["peak_rss_gb"])),
            ("ours: peak PSS, process tree (GB)", _num(ours["peak_pss_tree_gb"])),
            ("ours: particles / micrograph", _num(ours["particles_per_micrograph"], ".0f")),
            (f"ours: F1 as picked ({picked_at(ours)})", _f1(ours.get("accuracy")))]
    if ours.get("paths"):
        paths = ours["paths"]
        rows += [("ours: s / micrograph, one-device loop / Trainer.predict, median",
                  f"{paths['loop']['process_s']:.2f} / {paths['lightning']['process_s']:.2f}"),
                 ("ours: peak RSS GB, one-device loop / Trainer.predict",
                  f"{paths['loop']['peak_rss_gb']:.2f} / {paths['lightning']['peak_rss_gb']:.2f}"),
                 ("ours: same picks both ways", str(paths["same_picks"]))]
    if topaz:
        rows += [("topaz preprocess: s / micrograph, median", _num(topaz["preprocess_s_median"])),
                 ("topaz extract: s / micrograph, median", _num(topaz["extract_s_median"])),
                 ("topaz: peak RSS, process (GB)", _num(topaz["peak_rss_gb"])),
                 ("topaz: particles / micrograph (score ≥ 0)",
                  _num(topaz["particles_per_micrograph_at_0"], ".0f")),
                 ("topaz: F1 at score 0 (p = 0.5)", _f1(topaz.get("accuracy"))),
                 ("ratio ours / topaz extract (medians)",
                  _num(record["ratio"]["vs_extract"], ".3f")),
                 ("ratio ours / topaz preprocess+extract (medians)",
                  _num(record["ratio"]["vs_preprocess_extract"], ".3f"))]
    profile = record.get("profile") or {}
    rows += [(f"profile: {k}", _num(v)) for k, v in (profile.get("stages_s") or {}).items()]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"pick_speed: {record['micrographs']['n']} × "
                            f"{record['micrographs']['shape']} on CPU "
                            f"({record['machine']['threads']} threads, load "
                            f"{record['load_before']['loadavg_1_5_15'][0]})")
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
    parser.add_argument("--ckpt", type=Path, default=None,
                        help="checkpoint (default: none given, so predict.py's default, the "
                             "shipped general model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--profile", choices=["auto", "py-spy", "cprofile", "none"],
                        default="auto", help="profile one micrograph (auto: py-spy if on the "
                                             "PATH, else cProfile)")
    parser.add_argument("--topaz", type=Path, default=None,
                        help="the topaz executable (default: topaz on the PATH)")
    parser.add_argument("--no-topaz", action="store_true")
    parser.add_argument("--lightning", action="store_true",
                        help="also pick each micrograph through Lightning's Trainer.predict, "
                             "alternating with the default one-device loop: the start-up the "
                             "loop saves")
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
    mics, info, truth = prepare_micrographs(args.micrographs, args.n,
                                            args.micrograph_pixel_size_a, work)
    record["micrographs"] = {**info, "n": len(mics),
                             "general_split": truth["split"] if truth else None}
    record["checkpoint"] = checkpoint_facts(args.ckpt)
    print(f"ours: predict.py on {len(mics)} micrographs ...", flush=True)
    record["ours"], our_picks = run_ours(args.ckpt, mics, work, args.threads)
    record["ours"]["accuracy"] = accuracy(our_picks, truth, None)
    if args.lightning:
        print("ours: one-device loop against Trainer.predict ...", flush=True)
        record["ours"]["paths"] = compare_lightning(args.ckpt, mics, work, args.threads)
    print("ours: profiling one micrograph ...", flush=True)
    record["profile"] = profile_one(args.ckpt, mics[0], work, args.threads, args.profile)
    if not args.no_topaz and args.topaz.exists():
        print("topaz: preprocess + extract ...", flush=True)
        record["topaz"], topaz_picks = run_topaz(args.topaz, mics, work, args.threads)
        record["topaz"]["accuracy"] = accuracy(topaz_picks, truth, TOPAZ_THRESHOLD)
        record["topaz_version"] = topaz_version(args.topaz)
        ours, topaz = record["ours"], record["topaz"]
        record["ratio"] = {
            "vs_extract": ours["s_per_micrograph_median"] / topaz["extract_s_median"],
            "vs_preprocess_extract": ours["s_per_micrograph_median"]
            / topaz["s_per_micrograph_median"]}
    elif not args.no_topaz:
        print(f"topaz not found at {args.topaz}: create it with `python -m venv "
              "--system-site-packages topaz_venv && topaz_venv/bin/pip install topaz-em` and "
              "pass --topaz topaz_venv/bin/topaz, or pass --no-topaz", file=sys.stderr)
    record["load_after"] = load()
    peak = max(record["ours"]["peak_pss_tree_gb"], record["ours"]["peak_rss_gb"])
    record["meets_targets"] = {
        "peak_rss": peak <= TARGET_PEAK_RSS_GB,
        "ratio": (record["ratio"]["vs_extract"] <= TARGET_RATIO if "ratio" in record else None)}
    print_table(record)
    write_results(args.json, record, {"DATA_DIR": args.data_dir, "WORK_DIR": work})
    print(f"wrote {args.json}")
    return record


if __name__ == "__main__":
    main()
