"""Cross-validation of real-data pickers on the 10 shared EMPIAR-10017 micrographs.

    python benchmarks/real_data_cv.py [--data-dir ../shared/data] [--folds 5] [--only-folds 0 1]
                                      [--networks unet fcn deeplabv3]
                                      [--targets refined disc ring core far]
                                      [--epochs 12] [--samples 320] [--seed 12345]
                                      [--init scratch | --init NAME=CKPT] [--topaz TOPAZ]
                                      [--topaz-train [--topaz-epochs 10] [--topaz-epoch-size 1000]
                                       [--topaz-model resnet8] [--topaz-radius 3]]
                                      [--train-micrographs N [N ...]]
                                      [--work-dir benchmarks/work/real_data_cv]
                                      [--json benchmarks/results/real_data_cv.json]
                                      [--markdown benchmarks/results/real_data_cv.md]
                                      [-- extra train.py overrides]

The micrographs, sorted by name, are cut into ``--folds`` folds (5: 2 test micrographs each).
For every fold, network and target, ``train.py experiment=empiar10017`` trains on the other
micrographs (the first of them after the test fold, cyclically, validates and calibrates the
picking threshold; the rest train) into ``<work>/<network>/<target>/fold<k>`` — a finished run
is reused. Targets: ``refined`` (particle-shaped inside each disc; the recipe's, default),
``disc`` (CryoPPP discs), ``ring`` (discs with a 2 px ignore ring), ``far`` (discs, background
farther than one diameter from every pick ignored), ``core`` (a disc of half the diameter, the
rest of each disc ignored, extraction of regions down to 0.05 disc areas: the general model's
target).

Each best checkpoint picks its test micrographs as ``predict.py`` does (binned to the
checkpoint's pixel size, tiled network, :func:`~cryoparticle.picking.extract.extract_particles`)
at the threshold stored in the checkpoint. Truth: the micrograph's CryoPPP CSV where there is
one, else centres recovered from its disc mask (:func:`~cryoparticle.data.masks.centres_from_mask`,
99 % agreement with the CSV at this scale). Picks and truth on the striped border
(:mod:`cryoparticle.data.borders`) are excluded. Metrics, pooled over all test micrographs of
all folds (:mod:`cryoparticle.picking.evaluate`, match radius half a diameter): pick precision,
recall and F1 at the stored threshold (and the stored extraction options, as ``predict.py``);
AP of the picks extracted at threshold 0.05 ranked by score; pixel IoU of ``P ≥ 0.5`` against
the disc masks (border ignored); the F1 of each fold's own test micrographs; and the pooled F1
at the best of :data:`SHARED_THRESHOLDS` used for every fold (chosen with the truth: what a
better threshold calibration could gain at most).

``--train-micrographs N`` trains on the first N (sorted) of each fold's training micrographs
(same validation and test micrographs; runs in ``.../<target>/n<N>/fold<k>``), for a curve of
F1 against the number of labelled micrographs; ``N = 0`` trains nothing and scores the
``--init`` checkpoint itself (zero-shot).

``--init NAME=CKPT`` fine-tunes every run from a checkpoint's network (``model.finetune_from``),
e.g. a simulation-only one (no real pixel seen: an honest start for a cross-validation on real
micrographs; the shipped general model has seen 8 of these 10); runs go to
``<work>/<NAME>/...``. ``--topaz`` adds Topaz's shipped general picker (``resnet16_u64``, run once
on all 10 micrographs as :mod:`real_transfer` runs it) scored on every fold's test micrographs
with the same truth, border and matching: at score 0 (p = 0.5), best F1 and AP in the JSON.
``--topaz-train`` adds Topaz trained per fold (:mod:`_topaz`: ``topaz train``, resnet8 from
its pretrained weights, seeded, on the fold's 8 non-test micrographs — our train + validation
ones — binned 4× with the CryoPPP centres recovered from the masks, as :mod:`real_transfer`
reads them; ``<work>/topaz_train/<model>/fold<k>``, reused) and extracted on the fold's test
micrographs, scored the same way. ``--networks`` with no name runs only the Topaz rows (truth
read at ``experiment=empiar10017``'s 7.08 Å/px without a checkpoint, :func:`peer_fold`): give
``--json``/``--markdown`` of their own so the U-Net results are kept.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from _common import DATA_DIR_HELP, DEFAULT_DATA_DIR, train_run, write_results  # noqa: E402

TARGETS = {"disc": ["data.target.kind=disc", "data.target.ring_px=0"],
           "refined": ["data.target.kind=refined", "data.target.ring_px=0"],
           "ring": ["data.target.kind=disc", "data.target.ring_px=2"],
           "far": ["data.target.kind=disc", "data.target.ring_px=0",
                   "data.target.far_ignore_px=27"],
           # cores: a quarter of a disc's area, so extraction keeps regions of 0.05 disc areas
           # (as experiment=general)
           "core": ["data.target.kind=core", "data.target.ring_px=0",
                    "+model.extraction={min_size_fraction: 0.05, min_distance_fraction: 0.5}"]}
AP_THRESHOLD = 0.05
#: Thresholds at which every fold is also extracted: the pooled F1 at the best one shared by all
#: folds (chosen with the truth) bounds what a better threshold calibration could gain.
SHARED_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def folds(names: list[str], n_folds: int) -> list[dict[str, list[str]]]:
    """Test folds of consecutive sorted names; validation: the next name after the fold."""
    if not 2 <= n_folds <= len(names) // 2:
        sys.exit(f"--folds must be in 2..{len(names) // 2} for {len(names)} micrographs")
    parts = np.array_split(np.arange(len(names)), n_folds)
    out = []
    for part in parts:
        test = [names[i] for i in part]
        val = [names[(int(part[-1]) + 1) % len(names)]]
        out.append({"test": test, "val": val,
                    "train": [n for n in names if n not in test and n not in val]})
    return out




def in_frame(table: Any, mic: Any, name: str) -> Any:
    """A peer's picks of micrograph ``name`` (pixels of the original JPG) in the frame of the
    loaded micrograph ``mic`` (binned pixels, as the truth), off its striped border."""
    from PIL import Image

    from cryoparticle.data.borders import BorderWidths, drop_border_picks

    with Image.open(mic.metadata["image_path"]) as original:
        scale = mic.image.shape[-1] / original.size[0]
    theirs = table[table["micrograph"] == name]
    theirs = theirs.assign(x=theirs["x"] * scale, y=theirs["y"] * scale)
    return drop_border_picks(theirs, mic.image.shape[-2:],
                             BorderWidths(**mic.metadata["border_px"]))


def peer_fold(dataset_root: Path, test: list[str], tables: dict[str, Any],
              pixel_size_a: float = 7.08) -> dict[str, Any]:
    """Without a checkpoint: the truth of ``test`` as :func:`evaluate_fold` reads it (at
    ``experiment=empiar10017``'s 7.08 Å/px, border dropped) and each peer's picks
    (``tables``: label → particle table in pixels of the original micrographs) in that frame."""
    import pandas as pd

    from cryoparticle.data.borders import BorderWidths, drop_border_picks
    from cryoparticle.data.cryoppp_module import CryoPPPDataModule

    data = CryoPPPDataModule([{"root": dataset_root, "empiar_id": 10017}],
                             pixel_size_a=pixel_size_a, split={"test": test}, split_file=None)
    truth: list[Any] = []
    peers: dict[str, list[Any]] = {label: [] for label in tables}
    for name in test:
        mic = data.load(f"empiar-10017/{name}", train=False)
        widths = BorderWidths(**mic.metadata["border_px"])
        truth.append(drop_border_picks(mic.particles.assign(micrograph=name),
                                       mic.image.shape[-2:], widths))
        for label, table in tables.items():
            peers[label].append(in_frame(table, mic, name))
    return {"truth": pd.concat(truth, ignore_index=True),
            "diameter_px": float(data.particle_diameter_a) / pixel_size_a,
            **{label: pd.concat(v, ignore_index=True) for label, v in peers.items()}}


def evaluate_fold(ckpt: Path, dataset_root: Path, test: list[str],
                  topaz: Any = None) -> dict[str, Any]:
    """Picks, truth and pixel counts of one checkpoint on its test micrographs; with ``topaz``
    (picks in pixels of the original micrographs, with scores), also Topaz's picks there in the
    same frame, border and truth (``"topaz"``); ``topaz`` is a ``pandas.DataFrame``."""
    import pandas as pd

    from cryoparticle.data.borders import BorderWidths, drop_border_picks
    from cryoparticle.data.cryoppp_module import CryoPPPDataModule
    from cryoparticle.models.segmenter import load_segmenter
    from cryoparticle.picking.extract import extract_particles

    model = load_segmenter(ckpt).eval()
    hp = model.hparams
    data = CryoPPPDataModule([{"root": dataset_root, "empiar_id": 10017}],
                             pixel_size_a=float(hp.pixel_size_a),
                             normalisation=hp.normalisation,   # as the checkpoint was trained
                             split={"test": test}, split_file=None)
    diameter = float(hp.particle_diameter_a) / float(hp.pixel_size_a)
    threshold = float(hp.picking_threshold)
    options = dict(model.inference_facts().get("extraction") or {})  # as predict.py extracts
    picks, low, truth, inter, union, peer = [], [], [], 0, 0, []
    shared: dict[float, list[Any]] = {t: [] for t in SHARED_THRESHOLDS}
    for name in test:
        mic = data.load(f"empiar-10017/{name}", train=False)
        if topaz is not None:
            peer.append(in_frame(topaz, mic, name))
        with torch.inference_mode():
            logits = model.predict_logits(torch.from_numpy(mic.image)[None])
        prob = logits.float().softmax(0)[1].numpy()
        widths = BorderWidths(**mic.metadata["border_px"])
        for out, t in ((picks, threshold), (low, AP_THRESHOLD),
                       *((shared[t], t) for t in SHARED_THRESHOLDS)):
            found = extract_particles(prob, diameter, threshold=t, micrograph=name, **options)
            out.append(drop_border_picks(found, prob.shape, widths))
        truth.append(drop_border_picks(mic.particles.assign(micrograph=name), prob.shape, widths))
        valid = mic.mask != 255
        pred, true = prob >= 0.5, mic.mask == 1
        inter += int((pred & true & valid).sum())
        union += int(((pred | true) & valid).sum())
    extra = {"topaz": pd.concat(peer, ignore_index=True)} if peer else {}
    return {**extra, "picks": pd.concat(picks, ignore_index=True),
            "low": pd.concat(low, ignore_index=True),
            "shared": {t: pd.concat(v, ignore_index=True) for t, v in shared.items()},
            "truth": pd.concat(truth, ignore_index=True), "intersection": inter, "union": union,
            "threshold": threshold, "diameter_px": diameter}


def pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
    import pandas as pd

    from cryoparticle.picking.evaluate import average_precision, precision_recall_f1

    picks = pd.concat([r["picks"] for r in results], ignore_index=True)
    low = pd.concat([r["low"] for r in results], ignore_index=True)
    truth = pd.concat([r["truth"] for r in results], ignore_index=True)
    radius = results[0]["diameter_px"] / 2
    prf = precision_recall_f1(picks, truth, radius)
    union = sum(r["union"] for r in results)
    shared = {t: precision_recall_f1(pd.concat([r["shared"][t] for r in results],
                                               ignore_index=True), truth, radius)["f1"]
              for t in results[0]["shared"]}
    best = max(shared, key=shared.get)
    return {"precision": prf["precision"], "recall": prf["recall"], "pick_f1": prf["f1"],
            "ap": average_precision(low, truth, radius),
            "pixel_iou": sum(r["intersection"] for r in results) / union if union else 0.0,
            "n_truth": int(len(truth)), "n_picks": int(len(picks)),
            "thresholds": [r["threshold"] for r in results],
            "f1_at_shared_threshold": {f"{t:g}": f for t, f in shared.items()},
            "best_shared_threshold": best,
            "best_shared_f1": shared[best]}


def pooled_topaz(results: list[dict[str, Any]], key: str = "topaz") -> dict[str, float]:
    """Topaz's picks (``key`` of each fold's result) pooled over the folds' test micrographs,
    scored as :func:`real_transfer.scores` scores it: at score 0 (p = 0.5), its best F1
    over its scores, and the AP of every candidate."""
    import pandas as pd
    from real_transfer import scores

    every = pd.concat([r[key] for r in results], ignore_index=True)
    truth = pd.concat([r["truth"] for r in results], ignore_index=True)
    s = scores(every, truth, results[0]["diameter_px"] / 2, 0.0)
    return {"precision": s["precision"], "recall": s["recall"], "pick_f1": s["f1"],
            "best_f1": s["best_f1"], "best_threshold": s["best_threshold"], "ap": s["ap"],
            "pixel_iou": float("nan"), "n_truth": int(s["n_truth"]), "n_picks": s["n_picks"],
            "thresholds": [0.0]}


def topaz_trained_row(args: argparse.Namespace, dataset: Path, all_folds: list[dict],
                      chosen: list[int], settings: Any) -> dict[str, Any]:
    """Topaz trained per fold on the fold's 8 non-test micrographs (CryoPPP centres from the
    masks, as :mod:`real_transfer` reads them), extracted on its test micrographs, scored
    with :func:`peer_fold`'s truth and :func:`pooled_topaz`. Finished trainings and picks in
    ``<work>/topaz_train`` are reused."""
    from _topaz import bin_factor, extract, extract_radius, preprocess, train_topaz
    from real_transfer import dataset_inputs

    from cryoparticle.io.coords import read_topaz

    work = args.work_dir.resolve() / "topaz_train"
    inputs = dataset_inputs("EMPIAR-10017", args.data_dir, "all", work / "inputs")
    factor = bin_factor(inputs["pixel_size_a"])
    radius = extract_radius(inputs["diameter_px"], factor)
    images: dict[str, Path] = {}
    # run_topaz's preprocessed micrographs (the same topaz preprocess command) when there
    for pre in (args.work_dir.resolve() / "topaz" / "picks" / "pre", work / "pre"):
        images = {p.stem: pre / f"{p.stem}.mrc" for p in inputs["paths"]}
        if all(p.is_file() for p in images.values()):
            break
    else:
        preprocess(args.topaz, inputs["paths"], factor, pre, args.topaz_threads)
    results, seconds = [], []
    for k in chosen:
        fold = all_folds[k]
        run = work / settings.model / f"fold{k}"
        train_names = fold["train"] + fold["val"]
        model, train_s = train_topaz(args.topaz, [images[n] for n in train_names],
                                     inputs["truth"], factor, run, settings)
        picks_file = run / "picks_test.txt"
        if picks_file.is_file() and picks_file.stat().st_mtime >= model.stat().st_mtime:
            picks = read_topaz(picks_file, inputs["diameter_px"])
        else:
            picks = extract(args.topaz, model, [images[n] for n in fold["test"]], radius,
                            factor, picks_file, inputs["diameter_px"], args.topaz_threads)
        result = peer_fold(dataset, fold["test"], {"trained": picks})
        results.append(result)
        seconds.append(train_s)
        print(f"  Topaz {settings.model} fold {k}: {pooled_topaz([result], 'trained')}",
              flush=True)
    return {"network": f"Topaz {settings.model} (trained on the fold)",
            "init": "Topaz pretrained" if settings.pretrained else "scratch",
            "target": f"picks, r={settings.train_radius_px}", "folds": chosen,
            "metrics": pooled_topaz(results, "trained"), "train_s": seconds,
            "splits": [all_folds[k] for k in chosen]}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| picker | start | target | folds | pick P | pick R | pick F1 | F1 per fold | "
             "F1 at the best shared threshold | AP | pixel IoU | train min/fold |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        minutes = f"{np.mean(r['train_s']) / 60:.1f}" if r["train_s"] else "–"
        iou = "–" if np.isnan(m["pixel_iou"]) else f"{m['pixel_iou']:.3f}"
        start = r.get("init", "scratch")
        per_fold = " / ".join(f"{f:.3f}" for f in r.get("fold_f1") or []) or "–"
        best = m.get("best_shared_threshold")    # Topaz rows: best_f1 over its own scores
        shared = (f"{m['best_shared_f1']:.3f} ({best:g})" if best is not None else
                  f"{m['best_f1']:.3f} ({m['best_threshold']:g})" if "best_f1" in m else "–")
        if "train_micrographs" in r:
            start += f", {r['train_micrographs']} train mics"
        lines.append(f"| {r['network']} | {start} | {r['target']} | "
                     f"{len(r['folds'])} | {m['precision']:.3f} | {m['recall']:.3f} | "
                     f"**{m['pick_f1']:.3f}** | {per_fold} | {shared} | {m['ap']:.3f} | "
                     f"{iou} | {minutes} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", "--shared", dest="data_dir", type=Path,
                        default=DEFAULT_DATA_DIR, help=DATA_DIR_HELP)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", type=int, nargs="+", default=None)
    parser.add_argument("--networks", nargs="*", default=["unet"],
                        help="our networks (none given: only the Topaz rows)")
    parser.add_argument("--targets", nargs="+", default=["refined"], choices=sorted(TARGETS),
                        help="training targets (default: the recipe's, refined)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--init", default="scratch", metavar="scratch|NAME=CKPT",
                        help="the networks' starting weights: scratch, or a checkpoint to "
                             "fine-tune (model.finetune_from), e.g. sim-only=PATH; it names "
                             "the runs' folder and the table's 'start' column")
    parser.add_argument("--train-micrographs", type=int, nargs="+", default=None, metavar="N",
                        help="train on the first N (by name) of each fold's training "
                             "micrographs (default: all), one row per N; 0: no training, "
                             "the --init checkpoint picks the test micrographs as it is")
    parser.add_argument("--topaz", type=Path, default=None,
                        help="the topaz executable (pip install topaz-em): its shipped general "
                             "picker on the same test micrographs, same truth and matching")
    parser.add_argument("--no-topaz-shipped", dest="topaz_shipped", action="store_false",
                        help="with --topaz: skip its shipped picker (minutes on the 10 "
                             "4096² micrographs); --topaz-train only")
    parser.add_argument("--topaz-train", action="store_true",
                        help="also Topaz (--topaz) trained on each fold's 8 other micrographs "
                             "with their CryoPPP picks, extracted on the fold's test ones")
    parser.add_argument("--topaz-model", default="resnet8")
    parser.add_argument("--topaz-epochs", type=int, default=10)
    parser.add_argument("--topaz-epoch-size", type=int, default=1000,
                        help="parameter updates per Topaz epoch")
    parser.add_argument("--topaz-minibatch", type=int, default=256)
    parser.add_argument("--topaz-threads", type=int, default=0,
                        help="PyTorch threads of topaz train/extract (0: its default)")
    parser.add_argument("--topaz-radius", type=int, default=3,
                        help="topaz train -r: pixels around each pick counted positive "
                             "(binned frame)")
    parser.add_argument("--work-dir", type=Path,
                        default=ROOT / "benchmarks" / "work" / "real_data_cv")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "benchmarks" / "results" / "real_data_cv.json")
    parser.add_argument("--markdown", type=Path,
                        default=ROOT / "benchmarks" / "results" / "real_data_cv.md")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (after --)")
    args = parser.parse_args(argv)
    if args.topaz_train and args.topaz is None:
        sys.exit("--topaz-train needs --topaz TOPAZ (the topaz executable)")
    if not args.networks and (args.topaz is None or not (args.topaz_shipped
                                                         or args.topaz_train)):
        sys.exit("nothing to measure: give --networks and/or --topaz")

    from cryoparticle.io.atomic import write_text_atomic

    dataset = (args.data_dir / "empiar-10017").resolve()
    names = sorted(p.stem for p in (dataset / "micrographs").glob("*.jpg"))
    if not names:
        sys.exit(f"{dataset}: no micrographs")
    all_folds = folds(names, args.folds)
    chosen = args.only_folds if args.only_folds is not None else list(range(args.folds))
    init, init_overrides, init_ckpt = "scratch", [], None
    if args.init != "scratch":
        init, _, path = args.init.partition("=")
        if not path or not Path(path).is_file():
            sys.exit(f"--init {args.init}: expected NAME=CKPT of an existing checkpoint")
        init_ckpt = Path(path).resolve()
        init_overrides = [f"model.finetune_from={init_ckpt}"]
    most = min(len(f["train"]) for f in all_folds)
    subsets: list[int | None] = [None]   # None: all of each fold's training micrographs
    if args.train_micrographs is not None:
        for n in args.train_micrographs:
            if not 0 <= n <= most:
                sys.exit(f"--train-micrographs {n}: must be in 0..{most}")
        if 0 in args.train_micrographs and init_ckpt is None:
            sys.exit("--train-micrographs 0 evaluates the --init checkpoint: "
                     "give --init NAME=CKPT")
        subsets = [None if n == most else n for n in args.train_micrographs]
    topaz = None
    if args.topaz is not None and args.topaz_shipped:  # once, on every micrograph
        from real_transfer import dataset_inputs, run_topaz

        from cryoparticle.io.coords import read_topaz

        inputs = dataset_inputs("EMPIAR-10017", args.data_dir, "all",
                                args.work_dir / "topaz" / "inputs")
        done = args.work_dir / "topaz" / "picks_all.txt"   # a rerun reuses Topaz's picks
        if done.is_file():
            topaz = read_topaz(done, inputs["diameter_px"])
        else:
            topaz, _ = run_topaz(args.topaz, inputs, args.work_dir / "topaz" / "picks")
            shutil.copyfile(args.work_dir / "topaz" / "picks" / "picks.txt", done)
    rows, peer = [], []
    if not args.networks and topaz is not None:  # Topaz's shipped picker alone
        results = [peer_fold(dataset, all_folds[k]["test"], {"topaz": topaz}) for k in chosen]
        peer.append({"network": "Topaz resnet16_u64 (shipped)", "init": "shipped",
                     "target": "–", "folds": chosen, "metrics": pooled_topaz(results),
                     "train_s": [], "splits": [all_folds[k] for k in chosen]})
    topaz_settings = None
    if args.topaz_train:
        from _topaz import TopazTraining

        topaz_settings = TopazTraining(
            model=args.topaz_model, num_epochs=args.topaz_epochs,
            epoch_size=args.topaz_epoch_size, minibatch_size=args.topaz_minibatch,
            train_radius_px=args.topaz_radius, threads=args.topaz_threads, seed=args.seed)
        peer.append(topaz_trained_row(args, dataset, all_folds, chosen, topaz_settings))
    for net, target, n_train in itertools.product(args.networks, args.targets, subsets):
        results, seconds, splits, fold_f1 = [], [], [], []
        for k in chosen:
            fold = dict(all_folds[k])
            run_dir = args.work_dir.resolve() / init / net / target / f"fold{k}"
            if n_train is not None:  # a subset of the training micrographs
                fold["train"] = fold["train"][:n_train]
                run_dir = run_dir.parent / f"n{n_train}" / f"fold{k}"
            overrides = ["experiment=empiar10017", f"model={net}", f"seed={args.seed}",
                         f"data.datasets.0.root={dataset}",
                         f"data.split.test=[{','.join(fold['test'])}]",
                         f"data.split.val=[{','.join(fold['val'])}]",
                         *([f"data.split.train=[{','.join(fold['train'])}]"]
                           if n_train else []),
                         f"trainer.max_epochs={args.epochs}",
                         f"data.train_samples_per_epoch={args.samples}",
                         *TARGETS[target], *init_overrides, *args.overrides]
            if n_train == 0:
                ckpt, train_s = init_ckpt, 0.0
            else:
                ckpt, train_s = train_run(run_dir, overrides)
            result = evaluate_fold(ckpt, dataset, fold["test"], topaz)
            results.append(result)
            seconds.append(train_s)
            splits.append(fold)
            fold_metrics = pooled([result])
            fold_f1.append(fold_metrics["pick_f1"])
            print(f"  {net}/{target} fold {k}: {fold_metrics}", flush=True)
        metrics = pooled(results)
        if topaz is not None and not peer:
            peer.append({"network": "Topaz resnet16_u64 (shipped)", "init": "shipped",
                         "target": "–", "folds": chosen, "metrics": pooled_topaz(results),
                         "train_s": [], "splits": [all_folds[k] for k in chosen]})
        n_used = most if n_train is None else n_train
        rows.append({"network": net, "init": init, "target": target, "folds": chosen,
                     "train_micrographs": n_used, "metrics": metrics,
                     "fold_f1": fold_f1, "train_s": seconds,
                     "splits": splits})
        print(f"{net}/{target}/{n_used} train: {metrics}", flush=True)
    report = {"dataset": "EMPIAR-10017 (10 CryoSegNet JPGs, CryoPPP picks)",
              "n_folds": args.folds, "epochs": args.epochs, "samples": args.samples,
              "seed": args.seed, "init": args.init.partition("=")[0],
              "extra_overrides": args.overrides,
              "topaz_training": (None if topaz_settings is None else
                                 {**topaz_settings.record(), "frame": "binned 4x (7.08 A/px)",
                                  "train_micrographs": "the fold's 8 others (our train + val)",
                                  "default_threshold": 0.0}),
              "machine": {"cpu_count": __import__("os").cpu_count(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "rows": rows + peer}
    write_results(args.json, report, {"DATA_DIR": args.data_dir, "WORK_DIR": args.work_dir})
    write_text_atomic(args.markdown, markdown(rows + peer))
    print(markdown(rows + peer))
    return report


if __name__ == "__main__":
    main()
