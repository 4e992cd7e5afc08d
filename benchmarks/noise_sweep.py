"""Picking against noise: our networks and Topaz trained on the same synthetic micrographs,
tested at fixed SNRs.

    python benchmarks/noise_sweep.py [--networks unet] [--snrs 1 0.3 0.1 0.03 0.01 0.005]
        [--train-snr 0.005 1] [--n-train 24] [--n-val 4] [--train-size 768]
        [--n-test 3] [--test-size 1024] [--epochs 6] [--samples 512] [--crop 128]
        [--topaz TOPAZ] [--topaz-epochs 2] [--topaz-epoch-size 25] [--topaz-threads 0]
        [--seed 12345] [--work-dir benchmarks/work/noise_sweep]
        [--json benchmarks/results/noise_sweep.json] [--markdown ...md] [--plot ...png]

1. Training set, written once to ``<work>/train/{train,val}/`` by the simulator's dataset
   writer (``python -m cryoparticle.simulate``: MRC, mask PNG, RELION coordinates): the default
   simulator (β-galactosidase, 7.08 Å/px, ≈ 27 px particles, contaminants), SNR drawn per
   micrograph log-uniformly in ``--train-snr`` (one model covers the sweep).
2. Our networks: ``train.py data=folder`` on exactly those micrographs (the ``val`` ones choose
   the checkpoint and calibrate the stored picking threshold). Topaz (``--topaz``): ``topaz
   train`` (:mod:`_topaz`, resnet8, its pretrained start, seeded) on the same micrographs —
   train and val, Topaz has no validation use for them — and coordinates. Finished trainings
   are reused (``DONE`` files).
3. Test micrographs: ``--n-test`` per SNR of ``--snrs``, same simulator, seeds disjoint from
   training (written under ``<work>/test/``, reused).
4. Per SNR, pooled over its micrographs, matching one-to-one within half the diameter
   (:func:`~cryoparticle.picking.evaluate.precision_recall_f1`) against the simulated centres:
   ours — pick precision/recall/F1 at the checkpoint's stored threshold, the best F1 over
   extraction thresholds 0.05–0.95 (:data:`real_transfer.THRESHOLDS`), AP of the picks
   extracted at 0.05 ranked by score, pixel IoU of ``P ≥ 0.5`` against the masks; Topaz —
   P/R/F1 at score 0 (p = 0.5), best F1 over its scores, AP of every candidate (−6 and up);
   no pixel IoU.

Writes the JSON (settings, command, machine load), a Markdown table and a PNG plot (pick F1
against SNR, log axis; solid: own threshold, dashed: best threshold).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, Path(__file__).resolve().parent):
    if str(_path) not in sys.path:  # run as a script from anywhere
        sys.path.insert(0, str(_path))

from _common import train_run, write_results

SNRS = (1.0, 0.3, 0.1, 0.03, 0.01, 0.005)
AP_THRESHOLD = 0.05
TEST_SEED = 90_001     # test micrograph i at SNR s: seed (TEST_SEED, round(s × 10⁶), i)


def snr_value(text: str) -> float:
    """One SNR from the command line (a positive number)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"SNR {text!r} is not a number") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"SNR must be a positive number, got {text}")
    return value


def check_snrs(values: list[float]) -> list[float]:
    """The SNRs of the sweep, highest first, each once."""
    if not values:
        raise ValueError("no SNR given")
    return sorted(set(values), reverse=True)


def snr_label(snr: float) -> str:
    return f"{snr:g}"


# --------------------------------------------------------------------------------- data


def training_set(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Write (or reuse) the training micrographs; their manifest facts."""
    from omegaconf import OmegaConf

    from cryoparticle.config import simulator_config
    from cryoparticle.simulate.dataset_writer import write_dataset

    lo, hi = args.train_snr
    sim = simulator_config(overrides=[f"noise.snr=[{lo},{hi}]"])
    cfg = OmegaConf.create({"out_dir": str(root), "n_micrographs": args.n_train + args.n_val,
                            "micrograph_size": args.train_size, "seed": args.seed,
                            "splits": {"train": args.n_train, "val": args.n_val, "test": 0},
                            "write_instances": False, "overwrite": False})
    cfg.simulator = sim
    counts = write_dataset(cfg)
    return {"root": root, "counts": counts, "pixel_size_a": float(sim.pixel_size_a),
            "particle_diameter_a": float(sim.volume.particle_diameter_a)}


def read_folder(folder: Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Micrographs written by the dataset writer in ``folder``: image, mask, truth."""
    from cryoparticle.io.coords import read_star
    from cryoparticle.io.mrc import read_mask, read_mrc

    out = []
    for path in sorted(folder.glob("*.mrc")):
        if names is not None and path.stem not in names:
            continue
        image, _ = read_mrc(path, mmap=False)
        out.append({"name": path.stem, "path": path, "image": np.asarray(image, np.float32),
                    "mask": read_mask(folder / f"{path.stem}_mask.png"),
                    "truth": read_star(folder / f"{path.stem}.star").assign(
                        micrograph=path.stem)})
    return out


def test_set(snr: float, n: int, size: int, folder: Path) -> list[dict[str, Any]]:
    """``n`` test micrographs at ``snr`` (seeds ``(TEST_SEED, round(snr × 10⁶), i)``: disjoint
    from the training seeds ``(seed, i)``), written once."""
    from cryoparticle.config import simulator_config
    from cryoparticle.simulate.dataset_writer import micrograph_paths, write_micrograph
    from cryoparticle.simulate.micrograph import MicrographSimulator

    names = [f"snr{snr_label(snr)}_{i:02d}" for i in range(n)]
    todo = [(i, name) for i, name in enumerate(names)
            if not (folder / f"{name}.json").is_file()]
    if todo:
        sim = MicrographSimulator(simulator_config(overrides=[f"noise.snr={snr}"]))
        for i, name in todo:
            mic = sim.simulate((TEST_SEED, round(snr * 1e6), i), size, size, name=name)
            write_micrograph(mic, micrograph_paths(folder, name, False))
    return read_folder(folder, names)


def guard_work_dir(work: Path, settings: dict[str, Any]) -> None:
    """Refuse a work folder whose finished runs were made with other ``settings`` (a resumed
    run reuses trainings and test micrographs; the SNR list may change)."""
    import json

    from cryoparticle.io.atomic import write_text_atomic

    path = work / "settings.json"
    mine = json.loads(json.dumps(settings, default=str))
    if path.is_file():
        theirs = json.loads(path.read_text())
        if theirs != mine:
            changed = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
            sys.exit(f"{work}: holds a run with other settings ({', '.join(changed)}); give "
                     "another --work-dir or delete it")
    else:
        work.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(mine, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- scoring


def score_ours(picks: pd.DataFrame, sweep: dict[float, pd.DataFrame], low: pd.DataFrame,
               truth: pd.DataFrame, radius: float, threshold: float,
               intersection: int, union: int) -> dict[str, Any]:
    """Our picker's metrics on one test set: at the stored ``threshold`` (``picks``), the best
    F1 over the extraction thresholds of ``sweep`` (ties: nearest the stored one), AP of
    ``low`` (extracted at :data:`AP_THRESHOLD`) and the pixel IoU from the pooled counts."""
    from cryoparticle.picking.evaluate import average_precision, precision_recall_f1

    at = precision_recall_f1(picks, truth, radius)
    f1 = {float(t): precision_recall_f1(p, truth, radius)["f1"] for t, p in sweep.items()}
    best = max(f1, key=lambda t: (f1[t], -abs(t - threshold))) if f1 else threshold
    return {"threshold": float(threshold), "precision": at["precision"],
            "recall": at["recall"], "f1": at["f1"], "best_f1": f1.get(best, at["f1"]),
            "best_threshold": best, "ap": average_precision(low, truth, radius),
            "pixel_iou": intersection / union if union else float("nan"),
            "n_picks": len(picks), "n_truth": len(truth)}


def score_topaz(picks: pd.DataFrame, truth: pd.DataFrame, radius: float) -> dict[str, Any]:
    """Topaz's metrics: at score 0 (p = 0.5), best over its scores, AP of every candidate
    (:func:`real_transfer.scores`); no pixel IoU."""
    from real_transfer import scores

    s = scores(picks, truth, radius, 0.0)
    return {k: s[k] for k in ("threshold", "precision", "recall", "f1", "best_f1",
                              "best_threshold", "ap", "n_picks", "n_truth")} | {
        "pixel_iou": float("nan")}


def evaluate_ours(ckpt: Path, data: list[dict[str, Any]], diameter_px: float
                  ) -> dict[str, Any]:
    """One checkpoint on one test set, as ``predict.py`` would pick (stored threshold and
    extraction options), images standardised as ``data=folder`` trains."""
    import torch
    from real_transfer import THRESHOLDS

    from cryoparticle.data.preprocess import standardise
    from cryoparticle.models.segmenter import load_segmenter
    from cryoparticle.picking.extract import extract_particles

    model = load_segmenter(ckpt).eval()
    facts = model.inference_facts()
    threshold = float(facts["picking_threshold"])
    options = dict(facts.get("extraction") or {})
    picks, low, sweep = [], [], {float(t): [] for t in THRESHOLDS}
    inter = union = 0
    for d in data:
        with torch.inference_mode():
            logits = model.predict_logits(torch.from_numpy(standardise(d["image"]))[None])
        prob = logits.float().softmax(0)[1].numpy()

        def found(t: float, d: dict[str, Any] = d, prob: np.ndarray = prob) -> pd.DataFrame:
            return extract_particles(prob, diameter_px, threshold=t, micrograph=d["name"],
                                     **options)

        picks.append(found(threshold))
        low.append(found(AP_THRESHOLD))
        for t, tables in sweep.items():
            tables.append(found(t))
        valid = d["mask"] != 255
        pred, true = prob >= 0.5, d["mask"] == 1
        inter += int((pred & true & valid).sum())
        union += int(((pred | true) & valid).sum())
    truth = pd.concat([d["truth"] for d in data], ignore_index=True)
    return score_ours(pd.concat(picks, ignore_index=True),
                      {t: pd.concat(v, ignore_index=True) for t, v in sweep.items()},
                      pd.concat(low, ignore_index=True), truth, diameter_px / 2, threshold,
                      inter, union)


# ----------------------------------------------------------------------------- reports


def markdown(record: dict[str, Any]) -> str:
    lines = ["| SNR | picker | threshold | P | R | F1 | best F1 (at) | AP | pixel IoU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for snr, pickers in record["results"].items():
        for picker, r in pickers.items():
            iou = "–" if not np.isfinite(r["pixel_iou"]) else f"{r['pixel_iou']:.3f}"
            lines.append(f"| {snr} | {picker} | {r['threshold']:.2f} | {r['precision']:.3f} | "
                         f"{r['recall']:.3f} | **{r['f1']:.3f}** | {r['best_f1']:.3f} "
                         f"({r['best_threshold']:.2f}) | {r['ap']:.3f} | {iou} |")
    return "\n".join(lines) + "\n"


def f1_curves(record: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """picker → {snr, f1, best_f1} lists in the order of the SNRs (for the plot)."""
    out: dict[str, dict[str, list[float]]] = {}
    for snr, pickers in record["results"].items():
        for picker, r in pickers.items():
            curve = out.setdefault(picker, {"snr": [], "f1": [], "best_f1": []})
            curve["snr"].append(float(snr))
            curve["f1"].append(r["f1"])
            curve["best_f1"].append(r["best_f1"])
    return out


def plot(record: dict[str, Any], path: Path) -> None:
    """Pick F1 against SNR (log axis), one colour per picker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cryoparticle.io.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for i, (picker, c) in enumerate(f1_curves(record).items()):
        colour = f"C{i}"
        ax.plot(c["snr"], c["f1"], "o-", color=colour, label=f"{picker} (own threshold)")
        ax.plot(c["snr"], c["best_f1"], "s--", color=colour, alpha=0.6,
                label=f"{picker} (best threshold)")
    ax.set_xscale("log")
    ax.set_xlabel("SNR (var. of the noiseless particle image / var. of the noise)")
    ax.set_ylabel("pick F1 (match within d/2)")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Synthetic β-galactosidase, 7.08 Å/px: picking against noise", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# -------------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", nargs="*", default=["unet"],
                   help="our networks (conf/model/*.yaml); none: Topaz only")
    p.add_argument("--snrs", nargs="+", type=snr_value, default=list(SNRS))
    p.add_argument("--train-snr", nargs=2, type=snr_value, default=[0.005, 1.0],
                   metavar=("LO", "HI"), help="training SNR range (log-uniform per micrograph)")
    p.add_argument("--n-train", type=int, default=24)
    p.add_argument("--n-val", type=int, default=4)
    p.add_argument("--train-size", type=int, default=768, help="training micrographs, px²")
    p.add_argument("--n-test", type=int, default=3, help="test micrographs per SNR")
    p.add_argument("--test-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--samples", type=int, default=512, help="training crops per epoch")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--topaz", type=Path, default=None,
                   help="the topaz executable (pip install topaz-em); omitted: not run")
    p.add_argument("--topaz-model", default="resnet8")
    p.add_argument("--topaz-epochs", type=int, default=2)
    p.add_argument("--topaz-epoch-size", type=int, default=25)
    p.add_argument("--topaz-minibatch", type=int, default=256)
    p.add_argument("--topaz-radius", type=int, default=3,
                   help="topaz train -r: pixels around each centre counted positive")
    p.add_argument("--topaz-threads", type=int, default=0)
    p.add_argument("--topaz-workers", type=int, default=0,
                   help="topaz preprocess -t: parallel processes")
    p.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / "work" / "noise_sweep")
    results = ROOT / "benchmarks" / "results"
    p.add_argument("--json", type=Path, default=results / "noise_sweep.json")
    p.add_argument("--markdown", type=Path, default=results / "noise_sweep.md")
    p.add_argument("--plot", type=Path, default=results / "noise_sweep.png")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    try:
        snrs = check_snrs(args.snrs)
    except ValueError as exc:
        sys.exit(f"--snrs: {exc}")
    if min(args.n_train, args.n_val, args.n_test) < 1:
        sys.exit("--n-train, --n-val and --n-test must be ≥ 1")
    if not args.networks and args.topaz is None:
        sys.exit("nothing to measure: give --networks and/or --topaz")
    from cryoparticle.io.atomic import write_text_atomic

    load_start = os.getloadavg()
    start = time.perf_counter()
    work = args.work_dir.resolve()
    guard_work_dir(work, {k: v for k, v in vars(args).items()
                          if k not in ("snrs", "networks", "json", "markdown", "plot",
                                       "work_dir", "topaz", "topaz_threads",
                                       "topaz_workers")})
    train = training_set(args, work / "train")
    diameter_px = train["particle_diameter_a"] / train["pixel_size_a"]
    print(f"training set: {train['counts']}", flush=True)
    ckpts, train_s = {}, {}
    for net in args.networks:
        ckpt, seconds = train_run(work / "runs" / net, [
            "data=folder", f"data.root={train['root']}", f"model={net}", f"seed={args.seed}",
            f"data.crop_size={args.crop}", f"data.batch_size={args.batch}",
            f"data.train_samples_per_epoch={args.samples}", f"trainer.max_epochs={args.epochs}",
            f"data.pixel_size_a={train['pixel_size_a']}",
            f"data.particle_diameter_a={train['particle_diameter_a']}"])
        ckpts[f"ours: {net}"], train_s[f"ours: {net}"] = ckpt, seconds
    topaz_model, topaz_settings, factor = None, None, 1
    if args.topaz is not None:
        from _topaz import TopazTraining, bin_factor, preprocess, train_topaz

        topaz_settings = TopazTraining(
            model=args.topaz_model, num_epochs=args.topaz_epochs,
            epoch_size=args.topaz_epoch_size, minibatch_size=args.topaz_minibatch,
            train_radius_px=args.topaz_radius, threads=args.topaz_threads, seed=args.seed)
        factor = bin_factor(train["pixel_size_a"])
        micrographs = [p for split in ("train", "val")
                       for p in sorted((train["root"] / split).glob("*.mrc"))]
        truth = pd.concat([d["truth"] for split in ("train", "val")
                           for d in read_folder(train["root"] / split)], ignore_index=True)
        pre = work / "topaz" / "pre_train"
        images = [pre / f"{p.stem}.mrc" for p in micrographs]
        if not all(p.is_file() for p in images):
            preprocess(args.topaz, micrographs, factor, pre, args.topaz_threads,
                       args.topaz_workers, skip_existing=True)
        topaz_model, seconds = train_topaz(args.topaz, images, truth, factor,
                                           work / "topaz" / args.topaz_model, topaz_settings)
        train_s[f"Topaz {args.topaz_model}"] = seconds
    record: dict[str, Any] = {
        "command": "python benchmarks/noise_sweep.py " + " ".join(sys.argv[1:] if argv is None
                                                                   else argv),
        "settings": {"snrs": snrs, "train_snr_log_uniform": args.train_snr,
                     "n_train": args.n_train, "n_val": args.n_val,
                     "train_size_px": args.train_size, "n_test_per_snr": args.n_test,
                     "test_size_px": args.test_size, "epochs": args.epochs,
                     "samples_per_epoch": args.samples, "crop_px": args.crop,
                     "batch": args.batch, "seed": args.seed,
                     "simulator": "default (β-galactosidase 5A1A, 7.08 Å/px)",
                     "pixel_size_a": train["pixel_size_a"], "diameter_px": diameter_px,
                     "match_radius_px": diameter_px / 2, "ap_threshold_ours": AP_THRESHOLD,
                     "topaz": None if topaz_settings is None else {
                         **topaz_settings.record(), "bin_factor": factor,
                         "train_micrographs": "train + val (ours: val selects the checkpoint)",
                         "default_threshold": 0.0}},
        "train_s": train_s, "results": {}}
    for snr in snrs:
        data = test_set(snr, args.n_test, args.test_size,
                        work / "test" / f"snr{snr_label(snr)}")
        truth = pd.concat([d["truth"] for d in data], ignore_index=True)
        row: dict[str, Any] = {}
        for picker, ckpt in ckpts.items():
            row[picker] = evaluate_ours(ckpt, data, diameter_px)
        if topaz_model is not None:
            from _topaz import extract, extract_radius, preprocess

            from cryoparticle.io.coords import read_topaz

            out = work / "topaz" / "picks" / f"snr{snr_label(snr)}"
            picks_file = out / "picks.txt"
            if picks_file.is_file() and picks_file.stat().st_mtime >= topaz_model.stat().st_mtime:
                picks = read_topaz(picks_file, diameter_px)
            else:
                images = preprocess(args.topaz, [d["path"] for d in data], factor, out / "pre",
                                    args.topaz_threads, args.topaz_workers, skip_existing=True)
                picks = extract(args.topaz, topaz_model, images,
                                extract_radius(diameter_px, factor), factor, picks_file,
                                diameter_px, args.topaz_threads)
            row[f"Topaz {args.topaz_model}"] = score_topaz(picks, truth, diameter_px / 2)
        record["results"][snr_label(snr)] = row
        for picker, r in row.items():
            print(f"SNR {snr:<6g} {picker:16s} F1 {r['f1']:.3f} (P {r['precision']:.3f} "
                  f"R {r['recall']:.3f}) best {r['best_f1']:.3f} AP {r['ap']:.3f} "
                  f"IoU {r['pixel_iou']:.3f}", flush=True)
    record["wall_s"] = time.perf_counter() - start
    record["machine"] = {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                         "load_average_1min": {"start": load_start[0],
                                               "end": os.getloadavg()[0]}}
    write_results(args.json, record, {"WORK_DIR": args.work_dir})
    text = markdown(record)
    write_text_atomic(args.markdown, text)
    plot(record, args.plot)
    print(text)
    return record


if __name__ == "__main__":
    main()
